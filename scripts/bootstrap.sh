#!/usr/bin/env bash
# Create (once) and reuse .venv with pretextlab and its dependencies. Sourced by the top-level scripts.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${PRETEXTLAB_VENV:-$ROOT/.venv}"
STAMP="$VENV/.pretextlab-installed"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "[bootstrap] creating $VENV" >&2
  "$PY" -m venv "$VENV"
fi
# Reinstall only when the dependency list changed.
want="$(sha256sum "$ROOT/pyproject.toml" | cut -c1-16)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$want" ]; then
  echo "[bootstrap] installing pretextlab and its dependencies into $VENV (first time: a few minutes)" >&2
  "$VENV/bin/python" -m pip install --quiet --upgrade pip >&2
  # torch/torchvision first and pinned to the releases this machine serves from disk; any
  # release in pyproject's ranges works for users elsewhere.
  "$VENV/bin/python" -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1" >&2 \
    || "$VENV/bin/python" -m pip install --quiet "torch>=2.2" "torchvision>=0.17" >&2
  "$VENV/bin/python" -m pip install --quiet -e "$ROOT[dev,tensorboard,slurm]" >&2
  echo "$want" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
