#!/usr/bin/env bash
# Each shortcut fix of the jigsaw and context tasks, before and after, on CIFAR-10 at a reduced budget:
# pretrain, probe (linear, every stage), audit (pretext accuracy on the images and on content-free
# inputs), then print one table. "before" re-creates the old behaviour through config settings:
#   context-before  zero-padded training crop, layout cut at 32 px with no room (every label one position)
#   context-after   the defaults: reflect padding, cut from a 64 px upsample with 8 px of room
#   jigsaw-before   zero padding, 3x3 tiles fed as cut (8 px: stage maps 4/2/1/1), one mean/std per tile
#   jigsaw-reflect  as before with reflect padding only
#   jigsaw-after    the defaults: reflect, tiles resized to 16 px (maps 8/4/2/2), per-channel standardisation
# Usage (from the checkout; CIFAR-10 JPEG beside it, or PRETEXTLAB_CIFAR10=<folder>):
#   benchmarks/shortcut_ab.sh [OUT_DIR] [extra Hydra overrides...]
# Re-running skips finished runs (the same command finds the same run directories).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$(realpath -m "${1:-$ROOT/outputs/shortcut_ab}")"
shift $(( $# > 0 ? 1 : 0 ))
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
BASE=(-cd "$ROOT/conf" experiment=table_cifar10_cpu data.num_pretrain=2000 trainer.max_epochs=5 eval=linear logger=none)

declare -A RUNS=(
  [context-before]="task=context task.crop_padding_mode=constant task.min_cut_size=0 task.layout_room=0"
  [context-after]="task=context"
  [jigsaw-before]="task=jigsaw task.crop_padding_mode=constant task.tile_input_size=null task.normalize_per_channel=false"
  [jigsaw-reflect]="task=jigsaw task.tile_input_size=null task.normalize_per_channel=false"
  [jigsaw-after]="task=jigsaw"
)
ORDER=(context-before context-after jigsaw-before jigsaw-reflect jigsaw-after)

for name in "${ORDER[@]}"; do
  # shellcheck disable=SC2086  # the run's overrides are words
  "$PYTHON" -m pretextlab.train "${BASE[@]}" ${RUNS[$name]} "hydra.run.dir=$OUT/$name" "$@"
  "$PYTHON" -m pretextlab.audit "$OUT/$name" --images 2000 || true  # exit 1 = flagged: recorded, go on
done

"$PYTHON" - "$OUT" "${ORDER[@]}" <<'EOF'
import json
import sys
from pathlib import Path

out, names = Path(sys.argv[1]), sys.argv[2:]
print("| run | pretext val acc | audit: acc on images / content-free (chance) | probe val top-1 (stage) | probe test top-1 |")
print("|---|---|---|---|---|")
for name in names:
    r = json.loads((out / name / "results.json").read_text())
    a, lin = r.get("audit") or {}, r["eval"]["linear"]
    audit = (f"{100 * a['content_acc']:.1f} / {100 * a['content_free_acc']:.1f} ({100 * a['chance']:.1f})"
             + (" flagged" if a.get("flagged") else "")) if a.get("applicable", True) and a else "–"
    print(f"| {name} | {100 * r['pretext']['val_acc']:.1f} | {audit} | {100 * lin['val_top1']:.1f} "
          f"({lin['best_stage']}) | {100 * lin['top1']:.1f} |")
EOF
