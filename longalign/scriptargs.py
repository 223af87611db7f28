"""Argument parsing shared by the evaluation scripts: dataclasses + an optional YAML of defaults.

Every script declares its flags as dataclass fields (with `help`), parsed by transformers'
HfArgumentParser. Scripts that ship a config file (the Needle test's config-*.yaml, like the original)
read it first as defaults; any flag on the command line overrides the file. A user error raised while
parsing or running (`UserError`) ends the script with one sentence on stderr and exit code 2.
"""

import sys
from collections.abc import Callable
from pathlib import Path

import yaml


class UserError(Exception):
    """A mistake the user can fix (missing file, bad flag, malformed input): no traceback, exit 2."""


def parse_args(dataclass_types, argv=None, default_config: str | Path | None = None) -> tuple:
    """Parse argv into the given dataclasses, with defaults taken from `--config` (a flat YAML mapping of
    field name -> value; the script's own config file when the flag is not given)."""
    from transformers import HfArgumentParser

    parser = HfArgumentParser(dataclass_types)
    parser.add_argument("--config", default=None if default_config is None else str(default_config),
                        help="YAML file of defaults (field: value); flags on the command line override it")
    # Read --config first so its values become the parser's defaults, then parse for real.
    config, _ = parser.parse_known_args(argv)
    if config.config:
        parser.set_defaults(**read_config(Path(config.config), parser))
    *parsed, _namespace = parser.parse_args_into_dataclasses(args=argv)
    return tuple(parsed)


def read_config(path: Path, parser) -> dict:
    if not path.is_file():
        raise UserError(f"config file {path} does not exist; pass --config with an existing YAML file")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise UserError(f"{path} is not valid YAML ({str(e).splitlines()[0]}); fix the file") from None
    if not isinstance(values, dict):
        raise UserError(f"{path} must be a mapping of flag names to values; fix the file")
    known = {a.dest for a in parser._actions}
    unknown = sorted(set(values) - known)
    if unknown:
        raise UserError(f"{path} has unknown key(s) {', '.join(unknown)}; use the script's flag names (see --help)")
    return values


def comma_list(value, cast=int, name: str = "value") -> list:
    """A list from YAML (already a list) or from a flag ("1000,4000")."""
    items = value if isinstance(value, list | tuple) else [v for v in str(value).split(",") if v.strip()]
    try:
        return [cast(v) for v in items]
    except ValueError:
        raise UserError(f"--{name} must be a comma-separated list of {cast.__name__}, got {value!r}") from None


def run_main(main: Callable[[list[str] | None], object], argv=None):
    """Call main(argv); a UserError becomes one line on stderr and exit code 2."""
    try:
        return main(argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
