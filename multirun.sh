#!/usr/bin/env bash
# The main job: pretrain every task of the default sweep, evaluate each, and build the table.
#   ./multirun.sh                              # default sweep on the embedded synthetic data
#   ./multirun.sh data=cifar10_jpeg            # extra Hydra overrides apply to every job
#   ./multirun.sh experiment=table_cifar10_cpu # a preset (this repository's presets: conf/)
#   TASKS=none,rotation,supervised VIT_TASKS= ./multirun.sh
# It is `pretextlab sweep` (src/pretextlab/sweep.py: what it runs, how re-runs skip finished jobs and
# refuse changed ones) run in this checkout's .venv, from the checkout, with the checkout's own
# presets (conf/) on Hydra's search path. TASKS, VIT_TASKS, VIT_BACKBONE, VIT_ARGS and SWEEP_DIR set
# its defaults; the sweep directory is outputs/sweeps/sweep-<key of the command>.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$ROOT/scripts/bootstrap.sh"
cd "$ROOT"
exec python -m pretextlab.sweep --config-dir "$ROOT/conf" "$@"
