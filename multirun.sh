#!/usr/bin/env bash
# The main job: pretrain every task of the default sweep, evaluate each, and build the table.
#   ./multirun.sh                              # default sweep on the embedded synthetic data
#   ./multirun.sh data=cifar10_jpeg            # extra Hydra overrides apply to every job
#   ./multirun.sh experiment=table_cifar10_cpu # a preset
#   TASKS=none,rotation,supervised VIT_TASKS= ./multirun.sh
# Convolutional tasks run on the configured backbone (convnet by default); transformer tasks (MAE)
# run on $VIT_BACKBONE in a second multirun into the same sweep directory, so one table shows all.
# Each of the two gets a random-init row (task=none) of its own backbone, added when not listed.
# Re-running the same command reuses its sweep directory: finished jobs are skipped and
# interrupted ones resume from their last checkpoint. Jobs whose directory holds finished results of
# a different config are refused (left as they were): the script then exits 2 naming them, without
# rebuilding the table. The same command started twice at once shares the jobs out: a job that one
# is running is skipped by the other (which exits 2 saying so; run it again afterwards).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$ROOT/scripts/bootstrap.sh"
cd "$ROOT"
TASKS="${TASKS-none,rotation,jigsaw,colorization,context,inpainting,supervised}"
VIT_TASKS="${VIT_TASKS-mae}"
VIT_BACKBONE="${VIT_BACKBONE:-vit_tiny}"
# Extra overrides for the transformer jobs only, applied before the user's (which win). A ViT step
# costs far more than a small convnet step on CPU, so the default keeps MAE's pretraining short.
VIT_ARGS="${VIT_ARGS-data.num_pretrain=2000 trainer.max_epochs=3}"
# Every backbone of the sweep gets its own random-init row (task=none): the table compares each row
# with the random init of its own backbone, never another's.
with_floor() { case ",$1," in *,none,*) printf '%s' "$1" ;; *) printf 'none,%s' "$1" ;; esac; }
[ -n "$TASKS" ] && TASKS="$(with_floor "$TASKS")"
[ -n "$VIT_TASKS" ] && VIT_TASKS="$(with_floor "$VIT_TASKS")"
# The sweep directory is named by the command, so the same command finds the same directory.
key="$(printf '%s\n' "$TASKS" "$VIT_TASKS" "$VIT_BACKBONE" "$VIT_ARGS" "$@" | sha256sum | cut -c1-10)"
SWEEP_DIR="${SWEEP_DIR:-$ROOT/outputs/sweeps/sweep-$key}"
export PRETEXTLAB_SWEEP_ID="${PRETEXTLAB_SWEEP_ID:-$(basename "$SWEEP_DIR")}"
echo "[multirun] sweep directory: $SWEEP_DIR" >&2
start=$(date +%s)
# Both multiruns run even when the first one fails; the table is built only when both succeeded. A
# multirun exits 2 when any job was refused (finished results of a different config) or held by
# another process, naming them: then the table would show old rows as if new, so it is not rebuilt.
status=0
if [ -n "$TASKS" ]; then
  python -m pretextlab.train -m "task=$TASKS" "hydra.sweep.dir=$SWEEP_DIR" "$@" || status=$?
fi
if [ -n "$VIT_TASKS" ]; then
  # The user's backbone choice applies to the convolutional tasks only.
  vit_args=()
  for arg in "$@"; do
    case "$arg" in backbone=*|backbone.*) ;; *) vit_args+=("$arg") ;; esac
  done
  # shellcheck disable=SC2086  (VIT_ARGS is a list of overrides)
  python -m pretextlab.train -m "task=$VIT_TASKS" "backbone=$VIT_BACKBONE" \
    "hydra.sweep.dir=$SWEEP_DIR" "hydra.sweep.subdir=\${hydra.job.num}_\${task.name}_\${backbone.name}" \
    $VIT_ARGS ${vit_args[@]+"${vit_args[@]}"} || status=$?
fi
if [ "$status" -ne 0 ]; then
  echo "[multirun] some jobs were not run or the sweep failed (exit $status): $SWEEP_DIR/table.md was not rebuilt" >&2
  exit "$status"
fi
python -m pretextlab.table "$SWEEP_DIR"
echo "[multirun] done in $(( $(date +%s) - start )) s; table: $SWEEP_DIR/table.md" >&2
