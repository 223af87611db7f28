#!/usr/bin/env bash
# The test suite: offline, CPU, under 10 minutes on 2 cores. Extra arguments go to pytest,
# e.g. `bash scripts/test.sh -k packing -x`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh requirements-dev.txt
ruff check .
# DeepSpeed's CPU ops, built once per environment (into $TORCH_EXTENSIONS_DIR, setup_env.sh) before the tests start:
# 1-2 minutes on a fresh machine, then ~1 s; never inside a test's time limit.
python - <<'PY'
from deepspeed.accelerator import get_accelerator
for name in ("CPUAdamBuilder", "ShareMemCommBuilder"):  # ZeRO-3's offloaded optimizer, the gloo shared-memory comm
    get_accelerator().create_op_builder(name).load(verbose=False)
PY
python -m pytest -q "$@"
