#!/usr/bin/env bash
# Set up (scripts/setup.sh), then lint, format check, type check and the whole test suite.
# Slow tests run the real default model; they are part of the suite (deselect with -m "not slow").
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# the app's browser test drives Debian's chromium through chromedriver; install them when missing
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
    echo "== installing chromium + chromium-driver (apt-get) for the browser test"
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    if ! { $SUDO apt-get update && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y chromium chromium-driver; }; then
        echo "scripts/test.sh: error: could not install chromium and chromium-driver with apt-get" >&2
        exit 1
    fi
fi
. .venv/bin/activate
# the interop anchors (SAELens, lm-evaluation-harness), so their equality tests run instead of skipping
python -m pip install -q -c .venv/torch-constraint.txt -c bench/constraints.txt sae-lens lm-eval
export SAESTEER_REQUIRE_INTEROP=1
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
