#!/usr/bin/env bash
# The test command: sets up .venv if needed, then runs the whole suite (CI runs
# exactly this). Extra arguments go to pytest, e.g. `bash tests/run.sh -k rotate`.
set -euo pipefail
cd "$(dirname "$0")/.."
.ci/setup-venv
exec .venv/bin/python -m pytest -q -ra "$@"
