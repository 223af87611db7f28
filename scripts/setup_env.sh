# Sourced by quickstart.sh and test.sh: create (or reuse) .venv, install the pinned requirements and the
# repository itself (editable).
# Idempotent: a stamp holding the hash of the requirement files skips pip when nothing changed.
# Usage: source scripts/setup_env.sh [requirements-dev.txt]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
reqs=("$ROOT/requirements.txt")
for extra in "$@"; do reqs+=("$ROOT/$extra"); done

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV"
  python3 -m venv "$VENV"
fi
# the stamp also covers pyproject.toml and this checkout's path (the editable install points at it)
want="$( { cat "${reqs[@]}" "$ROOT/pyproject.toml"; echo "$ROOT"; } | sha256sum | cut -d' ' -f1)"
stamp="$VENV/.installed-${want:0:16}"
if [ ! -f "$stamp" ]; then
  echo "[setup] installing ${reqs[*]##*/} (first run: a few minutes)"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  # --no-compile: pip would byte-compile every module of every package (70 of the 120 s of a fresh install here);
  # the modules the scripts import are compiled below, in one import.
  # torch first, by its exact pin: a bare or ranged torch pulled in by another package could
  # otherwise fetch a multi-GB CUDA build on a machine that only needs the CPU one.
  "$VENV/bin/python" -m pip install --quiet --no-compile "$(grep -E '^torch==' "$ROOT/requirements.txt")"
  pip_args=()
  for r in "${reqs[@]}"; do pip_args+=(-r "$r"); done
  "$VENV/bin/python" -m pip install --quiet --no-compile "${pip_args[@]}"
  # the repository itself, editable (pyproject.toml): `longalign` and the root modules import from any directory
  "$VENV/bin/python" -m pip install --quiet --no-deps -e "$ROOT"
  # Byte-compile what the scripts import (~30 s, once), so no later process compiles it again: without this
  # every script would pay ~10 s of compiling where PYTHONDONTWRITEBYTECODE is set (it is lifted for this import).
  env -u PYTHONDONTWRITEBYTECODE "$VENV/bin/python" -c "import torch, transformers, datasets, accelerate, lm_eval, \
openai, gguf, sentencepiece, matplotlib.pyplot, lm_eval.evaluator, lm_eval.tasks, lm_eval.models.huggingface; \
from transformers import AutoTokenizer, AutoModelForCausalLM, LlamaForCausalLM, Trainer, TrainingArguments" 2>/dev/null
  touch "$stamp"  # only after every install succeeded
else
  echo "[setup] $VENV is up to date"
fi
export PATH="$VENV/bin:$PATH"
# Also on PYTHONPATH (which comes before the editable install): a .venv shared by several checkouts still
# runs each checkout's own code.
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
# DeepSpeed JIT-builds its CPU ops (cpu_adam, shm_comm) on first use; torch caches them by name in one folder per
# user, so two checkouts with their own .venv would rebuild each other's in turn (~1 min each): keep them per
# environment.
export TORCH_EXTENSIONS_DIR="$VENV/torch_extensions"
# Offline by design: nothing in the quickstart or the tests talks to a hub.
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_NO_ADVISORY_WARNINGS=1 TOKENIZERS_PARALLELISM=false
