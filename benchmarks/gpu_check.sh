#!/usr/bin/env bash
# The GPU acceptance run, in one command; it stops itself after 6 minutes and writes one report.
#   benchmarks/gpu_check.sh                          # on a GPU machine -> ./gpu_check_report.json
#   benchmarks/gpu_check.sh --report /tmp/r.json     # elsewhere
#   benchmarks/gpu_check.sh --dry-run                # CPU, tiny sizes: keeps the script working (CI)
# What it runs and how to read the report: benchmarks/gpu_check.py and benchmarks/README.md.
# Exit status: 0 when every step passed, 1 when one failed (the report says which and why).
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON="$(command -v python3)"
# 360 s on a GPU (the contract); a dry run on a slow shared CPU gets 900 s.
LIMIT_S="${GPU_CHECK_LIMIT_S:-360}"
for arg in "$@"; do [ "$arg" = "--dry-run" ] && LIMIT_S="${GPU_CHECK_LIMIT_S:-900}"; done
# The script keeps its own clock and reports at the limit; this outer limit only catches a hung
# interpreter (the report, rewritten after each step, survives it).
exec timeout --kill-after=10 "$((LIMIT_S + 30))" "$PYTHON" "$ROOT/benchmarks/gpu_check.py" --limit-s "$LIMIT_S" "$@"
