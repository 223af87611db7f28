#!/usr/bin/env bash
# The test suite: offline, CPU, under 10 minutes on 2 cores. Extra arguments go to pytest,
# e.g. `bash scripts/test.sh -k packing -x`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh requirements-dev.txt
ruff check .
python -m pytest -q "$@"
