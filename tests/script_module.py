"""A script of this repository (or any .py file) as a module, for tests that call its functions directly: the
entry scripts live outside packages (scripts/, LongBench/, Needle_test/, ...), so they are loaded by path."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load(path: str | Path, name: str | None = None):
    """The module of `path` (relative to the repository root, or absolute), named `name` (default: its stem)."""
    path = ROOT / path
    spec = importlib.util.spec_from_file_location(name or path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
