#!/usr/bin/env bash
# Run the test suite in the project's .venv (created on first use). Extra args go to pytest,
# e.g. `scripts/test.sh -m slow` for the slow group, `scripts/test.sh -k jigsaw`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/bootstrap.sh"
cd "$ROOT"
if [ $# -eq 0 ]; then set -- -m "not slow"; fi
exec python -m pytest -q -p no:cacheprovider --timeout=600 "$@"
