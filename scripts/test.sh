#!/usr/bin/env bash
# Set up (scripts/setup.sh), then lint, format check, type check and the whole test suite.
# Slow tests run the real default model; they are part of the suite (deselect with -m "not slow").
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export SAESTEER_DATA_DIR=${SAESTEER_DATA_DIR:-$(cd .. && pwd)/shared/data}
echo "== ruff"; ruff check src tests bench
ruff format --check src tests bench
echo "== mypy"; mypy
echo "== pytest"
set +e
python -m pytest -q "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then echo "no tests collected"; exit 1; fi
exit "$rc"
