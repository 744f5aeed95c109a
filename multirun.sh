#!/usr/bin/env bash
# The main job: pretrain every task of the default sweep, evaluate each, and build the table.
#   ./multirun.sh                              # default sweep on the embedded synthetic data
#   ./multirun.sh data=cifar10_jpeg            # extra Hydra overrides apply to every job
#   TASKS=none,rotation,supervised ./multirun.sh
# Re-running the same command reuses its sweep directory: finished jobs are skipped and
# interrupted ones resume from their last checkpoint.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$ROOT/scripts/bootstrap.sh"
cd "$ROOT"
TASKS="${TASKS:-none,rotation,supervised}"
# The sweep directory is named by the overrides, so the same command finds the same directory.
key="$(printf '%s\n' "$TASKS" "$@" | sha256sum | cut -c1-10)"
SWEEP_DIR="${SWEEP_DIR:-$ROOT/outputs/sweeps/sweep-$key}"
export PRETEXTLAB_SWEEP_ID="$(basename "$SWEEP_DIR")"
echo "[multirun] sweep directory: $SWEEP_DIR" >&2
start=$(date +%s)
python -m pretextlab.train -m "task=$TASKS" "hydra.sweep.dir=$SWEEP_DIR" "$@"
python -m pretextlab.table "$SWEEP_DIR"
echo "[multirun] done in $(( $(date +%s) - start )) s; table: $SWEEP_DIR/table.md" >&2
