"""The one argument layer of every entry script: dataclasses + an optional YAML of defaults, kind errors.

Every script declares its flags as dataclass fields (with `help`), parsed by transformers'
HfArgumentParser. Scripts that ship a config file (the Needle test's config-*.yaml, like the original)
read it first as defaults; any flag on the command line overrides the file. On top of HfArgumentParser:

    a misspelled flag   error: unrecognized argument --bach_method (did you mean --batch_method?)   exit 2
    --help              the script's docstring, then every flag with the default that will REALLY apply
                        (the config file's value where it sets one), required flags marked
    aliases             older spellings of a flag (the original LongAlign's `--model`, ...) parse as it, on
                        the command line and as keys of the config file
    positional          a script may take its first values without their flags (`python -m
                        longalign.tokenization tokenizer.model OUT`): they fill the named flags in order
    UserError           raised while parsing or running: one sentence on stderr, exit 2, no traceback
"""

import argparse
import dataclasses
import difflib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import yaml

# One vocabulary across the scripts (docs/cli.md): a model is --model_name_or_path, an output folder
# --output_dir, one output file --output_file, an input folder --..._dir. The other spellings that commands
# already written use (the original LongAlign's and this repository's earlier ones) stay accepted, in every
# script that has the flag they stand for.
VOCABULARY_ALIASES = {
    "--model": "--model_name_or_path",       # the original pre_tokenize.py and LongBench_Chat/eval.py; chat_demo.py
    "--model_path": "--model_name_or_path",  # the original LongBench_Chat/eval.py; Needle_test/pred.py
    "--out_dir": "--output_dir",             # pre_tokenize.py, download_data.py, Needle_test/*.py, bench_batching.py
    "--train_file": "--train_dir",           # the original sort_and_group.py and train.py: it names a folder
    "--out": "--output_file",                # Needle_test/vis.py, bench/bench_sp_memory.py
}


class UserError(Exception):
    """A mistake the user can fix (missing file, bad flag, malformed input): no traceback, exit 2."""


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The docstring as written (its `Run as:` lines keep their layout), then each flag's help and default."""

    def _get_help_string(self, action):
        text = (action.help or "").replace("%", "%%")  # a literal % in a help text ("50 %") is not a format
        if action.required:
            return text + " (required)"
        if action.default is not argparse.SUPPRESS and action.option_strings and action.nargs != 0:
            text += " (default: %(default)s)"
        return text


def _build_parser(dataclass_types, doc: str | None, aliases: dict[str, str] | None):
    from transformers import HfArgumentParser

    class _Parser(HfArgumentParser):
        def error(self, message):  # argparse's own errors (bad choice, bad type, missing flag): one line, exit 2
            if message.startswith("the following arguments are required: "):
                flags = [f.split("/")[0] for f in message.split(": ", 1)[1].split(", ")]  # not the dashed alias
                message = f"{' and '.join(flags)} {'is' if len(flags) == 1 else 'are'} required"
            raise UserError(f"{message} (see --help)")

    # allow_abbrev=False: argparse would otherwise take `--templat` (or `--max_len`) silently as the one flag it
    # starts; a flag is spelled in full or named in the error with the spelling meant
    parser = _Parser(dataclass_types, description=doc, formatter_class=_HelpFormatter, add_help=False,
                     allow_abbrev=False)
    parser.add_argument("-h", "--help", action="store_true", help="show this message and exit")
    # --help lists a script's own flags first, then those it inherits from shared groups (GenerationArgs,
    # JudgeArgs), which dataclasses would otherwise put first
    own = {name for t in (dataclass_types if isinstance(dataclass_types, list | tuple) else [dataclass_types])
           for name in vars(t).get("__annotations__", {})}
    for group in parser._action_groups:
        group._group_actions.sort(key=lambda a: (a.dest != "help", a.dest not in own))  # stable: each part keeps its order
    shared = {a: f for a, f in VOCABULARY_ALIASES.items()
              if f in parser._option_string_actions and a not in parser._option_string_actions}
    for alias, flag in (shared | (aliases or {})).items():
        action = parser._option_string_actions.get(flag)
        if action is None:
            raise ValueError(f"alias {alias} names an unknown flag {flag}")
        action.option_strings.append(alias)
        parser._option_string_actions[alias] = action
    return parser


def _unknown(parser, extra: list[str]) -> UserError:
    """The first unknown argument of `extra`, with the nearest known flag."""
    flags = [s for s in parser._option_string_actions if s.startswith("--")]
    arg = next((a for a in extra if a.startswith("-")), extra[0]).split("=")[0]
    if not arg.startswith("-"):
        return UserError(f"unexpected argument {arg!r}: every value follows its flag (see --help)")
    near = difflib.get_close_matches(arg, flags, n=1, cutoff=0.6)
    near = [parser._option_string_actions[f].option_strings[0] for f in near]  # the flag's name, not an alias
    hint = f" (did you mean {near[0]}?)" if near else "; see --help for the flags"
    return UserError(f"unrecognized argument {arg}{hint}")


def parse_args(dataclass_types, argv=None, default_config: str | Path | None = None, doc: str | None = None,
               aliases: dict[str, str] | None = None, positional: tuple[str, ...] = ()) -> tuple:
    """Parse argv into the given dataclasses, with defaults taken from `--config` (a flat YAML mapping of
    field name -> value; the script's own config file when the flag is not given).

    doc: shown first by --help (pass the script's __doc__); aliases: {"--old_name": "--flag"};
    positional: flags ("--model_file", ...) that the leading values without a flag fill, in order.
    """
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    argv = _place_positionals(argv, positional)
    if doc is None:  # the running script's own docstring: purpose, `Run as:`, inputs, outputs
        doc = getattr(sys.modules.get("__main__"), "__doc__", None)
    parser = _build_parser(dataclass_types, doc, aliases)
    # a short usage line (TrainingArguments alone has ~100 flags): the required ones, then the rest below
    parser.usage = " ".join(["%(prog)s", *(f"{a.option_strings[0]} {a.dest.upper()}" for a in parser._actions
                                          if a.required), "[flags]"])
    if "--config" not in parser._option_string_actions:
        parser.add_argument("--config", default=None if default_config is None else str(default_config),
                            help="YAML file of defaults (field: value); flags on the command line override it")
    # Read --config first so its values become the parser's defaults (and --help shows them), then parse.
    # Required flags wait for the second pass: --help needs none, and the config file may supply them.
    required = [a for a in parser._actions if a.required]
    for action in required:
        action.required = False
    early, extra = parser.parse_known_args(argv)
    if early.config:
        config = read_config(Path(early.config), parser, VOCABULARY_ALIASES | (aliases or {}))
        parser.set_defaults(**config)
        required = [a for a in required if a.dest not in config]
    for action in required:
        action.required = True
    if early.help:
        parser.print_help()
        raise SystemExit(0)
    if extra:
        raise _unknown(parser, extra)
    namespace = parser.parse_args(argv)
    values = vars(namespace)
    parsed = []
    for dtype in parser.dataclass_types:
        names = {f.name for f in dataclasses.fields(dtype) if f.init}
        parsed.append(dtype(**{k: v for k, v in values.items() if k in names}))
    return tuple(parsed)


def _place_positionals(argv: list[str], flags: tuple[str, ...]) -> list[str]:
    """The leading values without a flag, given to `flags` in order (`a b --kind x` -> `--f1 a --f2 b --kind x`)."""
    leading = []
    for arg in argv[:len(flags)]:
        if arg.startswith("-"):
            break
        leading.append(arg)
    return [x for flag, value in zip(flags[:len(leading)], leading, strict=True) for x in (flag, value)] + argv[len(leading):]


def read_config(path: Path, parser, aliases: dict[str, str] | None = None) -> dict:
    if not path.is_file():
        raise UserError(f"config file {path} does not exist; pass --config with an existing YAML file")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise UserError(f"{path} is not valid YAML ({str(e).splitlines()[0]}); fix the file") from None
    if not isinstance(values, dict):
        raise UserError(f"{path} must be a mapping of flag names to values; fix the file")
    known = {a.dest for a in parser._actions}
    renamed = {old.lstrip("-"): new.lstrip("-") for old, new in (aliases or {}).items()}
    values = {renamed[k] if k not in known and renamed.get(k) in known else k: v  # a key with an older name
              for k, v in values.items()}
    unknown = sorted(set(values) - known)
    if unknown:
        raise UserError(f"{path} has unknown key(s) {', '.join(unknown)}; use the script's flag names (see --help)")
    return values


def missing_path(name_or_path) -> bool:
    """A model or tokenizer argument that is written as a path (absolute, ./ or ../, or deeper than org/name)
    and does not exist: say so, rather than pass it on as a hub id and print the hub's complaint about it."""
    path = Path(str(name_or_path))
    return not path.exists() and (path.is_absolute() or str(name_or_path).startswith(".") or len(path.parts) > 2)


def comma_list(value, cast=int, name: str = "value") -> list:
    """A list from YAML (already a list) or from a flag ("1000,4000")."""
    items = value if isinstance(value, list | tuple) else [v for v in str(value).split(",") if v.strip()]
    try:
        return [cast(v) for v in items]
    except ValueError:
        raise UserError(f"--{name} must be a comma-separated list of {cast.__name__}, got {value!r}") from None


def fail(sentence: str) -> NoReturn:
    """A user error: one line on stderr ("error: ..."), exit code 2, no traceback."""
    print(f"error: {sentence}", file=sys.stderr)
    raise SystemExit(2)


def run_main(main: Callable[[list[str] | None], object], argv=None):
    """Call main(argv); a UserError becomes one line on stderr and exit code 2."""
    try:
        return main(argv)
    except UserError as e:
        fail(str(e))
