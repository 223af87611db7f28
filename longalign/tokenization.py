"""Load the tokenizer of any stage: one function, and SentencePiece tokenizers exact without remote code.

    tokenizer = load_tokenizer("path/to/checkpoint")   # or a hub id, or the alias chatglm / llama

pre_tokenize.py, train.py, the evaluation scripts and the chat demo all load through `load_tokenizer`, so
training and inference tokenize alike. Two kinds of checkpoint are built here from their `tokenizer.model`
(SentencePiece) instead of through transformers' classes:

- **ChatGLM** (the paper's ChatGLM3-6B / LongAlign-6B-64k, chosen when tokenizer_config.json names THUDM's
  `ChatGLMTokenizer`, or for the `chatglm` alias). Its tokenizer ships as remote code whose first call fails
  under transformers 5 (`_pad()` got an unexpected keyword argument 'padding_side'). It is a SentencePiece
  model plus 9 special tokens that follow its V pieces:

      [MASK] V   [gMASK] V+1   [sMASK] V+2   sop V+3   eop V+4   <|system|> V+5   <|user|> V+6
      <|assistant|> V+7   <|observation|> V+8

  text -> sp.encode(text) (SentencePiece's dummy prefix included), with special tokens: [gMASK] sop + ids;
  EOS = SentencePiece's `</s>`, padding = `<unk>` on the left, as THUDM's tokenization_chatglm.py does.
  Special-token text inside a text stays plain text (the original's default): "isopropyl" never
  contains the special `sop`. tests/test_chatglm_tokenizer.py proves it id for id against THUDM's code,
  including its one quirk: where an ordinary piece of the vocabulary spells a special token (a piece `eop`),
  the original looks pieces up by their text and returns the special's id (sp.encode, and so its chat
  builder `build_chat_input`, returns the piece's id). The orphaned piece id decodes as `<piece N>`.
- **Llama-family SentencePiece** (tokenizer_config.json names `LlamaTokenizer(Fast)` and the folder has
  `tokenizer.model`: Llama-2, Mistral-7B-v0.1, the paper's LongAlign-7B/13B). transformers 5.24's
  LlamaTokenizer, from tokenizer.model or even from an exact tokenizer.json, does not encode like
  SentencePiece (runs of spaces, and a piece's leading space, come out differently); these models were
  trained on SentencePiece's ids, so the ids are built exactly: <s> + sp.encode(text).

Both keep SentencePiece's own pipeline (transformers' `SpmConverter.build_tokenizer_from_spm_proto`:
normalizer spec, BPE merges ranked by piece score, byte fallback) and return a `PreTrainedTokenizerFast`
that saves as an ordinary tokenizer.json folder. Everything else goes through AutoTokenizer; a
tokenizer that is its own code and fails, or needs --trust_remote_code, ends in one sentence (UserError).

Run as (writes a tokenizer folder from a SentencePiece model file, e.g. for bench/bench_tokenize.py):
    python -m longalign.tokenization path/to/tokenizer.model output_dir [--kind llama|chatglm]
    (or with the flags: --model_file path/to/tokenizer.model --output_dir output_dir)
"""

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from longalign.chat import MODEL_ALIASES
from longalign.scriptargs import UserError, missing_path, parse_args, run_main

CHATGLM_SPECIAL_TOKENS = ("[MASK]", "[gMASK]", "[sMASK]", "sop", "eop",
                          "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>")
LLAMA_CLASSES = ("LlamaTokenizer", "LlamaTokenizerFast")
_UNKNOWN, _CONTROL = 2, 3  # SentencePiece piece types (sentencepiece_model.proto)


# ---------------------------------------------------------------------------------------------
# SentencePiece model file -> fast tokenizer

def read_sentencepiece(model_file: str | Path):
    """The SentencePiece ModelProto of a tokenizer.model file."""
    from google.protobuf.message import DecodeError
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString(Path(model_file).read_bytes())
    except DecodeError as e:
        raise UserError(f"{model_file} is not a SentencePiece model ({type(e).__name__}); point to the "
                        "checkpoint's tokenizer.model") from None
    if proto.trainer_spec.model_type != 2:  # 2 = BPE, what ChatGLM and Llama use
        raise UserError(f"{model_file} is a SentencePiece model of type {proto.trainer_spec.model_type}, not BPE; "
                        "load this checkpoint's tokenizer through its tokenizer.json instead")
    return proto


def _backend(proto, added: list[tuple[int, str, bool]], single: list[str], pair: list[str], by_text: bool = False):
    """tokenizers.Tokenizer encoding like SentencePieceProcessor.encode, with `added` tokens at fixed ids
    (id, text, special) and the special-token templates `single`/`pair` ("$A", "$B" = the texts).
    by_text: an ordinary piece that spells an added token becomes the added token's id (ChatGLM's lookup)."""
    from tokenizers import Tokenizer
    from transformers.convert_slow_tokenizer import SpmConverter

    vocab = {p.piece: i for i, p in enumerate(proto.pieces)}
    # legacy=True: a dummy prefix on every text, as SentencePiece does (the non-legacy scheme omits it
    # after a leading space: " x" would lose its "▁" piece).
    backend = SpmConverter.build_tokenizer_from_spm_proto(proto, vocab, legacy=True)
    # tokenizers ignores the id an added token is given: it takes the model vocabulary's id for its text, else
    # the next free one. So tokens after the pieces are entered in the vocabulary at their ids (no merge can
    # produce them). ChatGLM's original maps a piece that spells one of them to the special token (by_text):
    # that text moves to the special's id and the piece's own id keeps a placeholder no input can produce.
    spec = json.loads(backend.to_str())
    vocab = spec["model"]["vocab"]
    for i, text, _ in added:
        if i >= len(proto.pieces) and (text not in vocab or by_text):
            if text in vocab:
                vocab[f"<piece {vocab[text]}>"] = vocab[text]
            vocab[text] = i
    spec["added_tokens"] = [{"id": i, "content": text, "single_word": False, "lstrip": False, "rstrip": False,
                             "normalized": False, "special": special} for i, text, special in added]
    ids = {text: i for i, text, _ in added}

    def template(items: list[str]) -> list[dict]:
        seq = {"$A": "A", "$B": "B"}
        type_id = 0
        out = []
        for item in items:
            type_id = 1 if item == "$B" else type_id
            out.append({"Sequence": {"id": seq[item], "type_id": type_id}} if item in seq
                       else {"SpecialToken": {"id": item, "type_id": type_id}})
        return out

    specials = {t for t in single + pair if not t.startswith("$")}
    spec["post_processor"] = {"type": "TemplateProcessing", "single": template(single), "pair": template(pair),
                              "special_tokens": {t: {"id": t, "ids": [ids[t]], "tokens": [t]} for t in specials}}
    backend = Tokenizer.from_str(json.dumps(spec))
    moved = [(text, backend.token_to_id(text), i) for i, text, _ in added if backend.token_to_id(text) != i]
    if moved:
        raise UserError(f"token {moved[0][0]!r} should have id {moved[0][2]} but is a piece of the SentencePiece "
                        f"vocabulary with id {moved[0][1]}; load this tokenizer through its tokenizer.json")
    return backend


def _control_pieces(proto) -> list[tuple[int, str, bool]]:
    """SentencePiece's <unk>, <s>, </s> as special added tokens at their own ids."""
    return [(i, p.piece, True) for i, p in enumerate(proto.pieces) if p.type in (_UNKNOWN, _CONTROL)]


def chatglm_tokenizer(model_file: str | Path):
    """ChatGLM3's tokenizer (THUDM's ChatGLMTokenizer) as a fast tokenizer, ids identical to the original."""
    from transformers import PreTrainedTokenizerFast

    proto = read_sentencepiece(model_file)
    V, spec = len(proto.pieces), proto.trainer_spec
    eos, unk = proto.pieces[spec.eos_id].piece, proto.pieces[spec.unk_id].piece
    added = _control_pieces(proto) + [(V + k, t, True) for k, t in enumerate(CHATGLM_SPECIAL_TOKENS)]
    # the original's build_inputs_with_special_tokens: [gMASK] sop A, and [gMASK] sop A B </s> for a pair
    backend = _backend(proto, added, ["[gMASK]", "sop", "$A"], ["[gMASK]", "sop", "$A", "$B", eos], by_text=True)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token=eos, unk_token=unk,
        pad_token=unk, padding_side="left",  # the original pads with <unk> (id 0), on the left
        clean_up_tokenization_spaces=False,
        split_special_tokens=True,  # the original's encode_special_tokens=False: special-token text is text
        extra_special_tokens=list(CHATGLM_SPECIAL_TOKENS))


def llama_tokenizer(model_file: str | Path, config: dict | None = None):
    """A Llama-family SentencePiece tokenizer: <s> + sp.encode(text), with the checkpoint's
    tokenizer_config.json settings (add_bos_token / add_eos_token, tokens added after the vocabulary,
    chat template, padding side, model_max_length)."""
    from transformers import PreTrainedTokenizerFast

    config = config or {}
    proto = read_sentencepiece(model_file)
    V, spec = len(proto.pieces), proto.trainer_spec
    bos, eos, unk = (proto.pieces[i].piece for i in (spec.bos_id, spec.eos_id, spec.unk_id))
    added = _control_pieces(proto)
    extra = sorted((int(i), t) for i, t in (config.get("added_tokens_decoder") or {}).items() if int(i) >= V)
    if [i for i, _ in extra] != list(range(V, V + len(extra))):
        raise UserError(f"{model_file}: tokenizer_config.json adds tokens at ids {[i for i, _ in extra]}, not right "
                        f"after the {V} SentencePiece pieces; load this tokenizer through its tokenizer.json")
    added += [(i, t["content"], bool(t.get("special", True))) for i, t in extra]
    head = [bos] if config.get("add_bos_token", True) else []
    tail = [eos] if config.get("add_eos_token", False) else []
    backend = _backend(proto, added, [*head, "$A", *tail], [*head, "$A", *tail, *head, "$B", *tail])
    pad = config.get("pad_token")
    kwargs = {k: config[k] for k in ("chat_template", "model_max_length") if config.get(k) is not None}
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=bos, eos_token=eos, unk_token=unk,
        pad_token=pad["content"] if isinstance(pad, dict) else pad,
        padding_side=config.get("padding_side", "left"), clean_up_tokenization_spaces=False, **kwargs)


# ---------------------------------------------------------------------------------------------
# The one loader

def _file(path: str, name: str) -> str | None:
    """A file of a local folder or of a hub repository (from the cache offline); None if it has none."""
    from transformers.utils import cached_file

    try:
        return cached_file(path, name, _raise_exceptions_for_missing_entries=False,
                           _raise_exceptions_for_connection_errors=False)
    except (OSError, ValueError):
        return None


def tokenizer_class_names(config: dict) -> list[str]:
    """Class names a tokenizer_config.json asks for (tokenizer_class and the remote code's auto_map)."""
    auto = (config.get("auto_map") or {}).get("AutoTokenizer") or []
    names = [config.get("tokenizer_class")] + (auto if isinstance(auto, list) else [auto])
    return [n.rsplit(".", 1)[-1] for n in names if isinstance(n, str)]


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False):
    """The tokenizer of a checkpoint folder, a hub id or an alias (`chatglm`, `llama`); see the module
    docstring. Raises UserError with one sentence that names the fix when none can be loaded."""
    path = MODEL_ALIASES.get(name_or_path, name_or_path)
    if missing_path(path):
        raise UserError(f"{name_or_path} does not exist; pass a local folder with a tokenizer, or a hub id")
    config_file = _file(path, "tokenizer_config.json")
    try:
        config = json.loads(Path(config_file).read_text(encoding="utf-8")) if config_file else {}
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{name_or_path}: {config_file} is not valid JSON ({e}); fix or remove it") from None
    classes = tokenizer_class_names(config)
    chatglm = name_or_path == "chatglm" or "ChatGLMTokenizer" in classes
    if chatglm or any(c in LLAMA_CLASSES for c in classes):
        model_file = _file(path, "tokenizer.model")
        if model_file and chatglm:
            return chatglm_tokenizer(model_file)
        if model_file:
            try:
                return llama_tokenizer(model_file, config)
            except UserError as e:  # an unusual Llama folder: transformers' own class still loads it
                print(f"[tokenizer] {e}; using transformers' LlamaTokenizer (not SentencePiece-exact)", file=sys.stderr)
        elif chatglm:
            raise UserError(f"{name_or_path}: no tokenizer.model found in {path} (ChatGLM's tokenizer is a "
                            "SentencePiece model); pass the checkpoint folder, or a hub id with network access")
    return _auto_tokenizer(name_or_path, path, config, trust_remote_code)


def _auto_tokenizer(name: str, path: str, config: dict, trust_remote_code: bool):
    from transformers import AutoTokenizer, __version__

    remote = bool((config.get("auto_map") or {}).get("AutoTokenizer"))
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        if remote and not trust_remote_code:
            raise UserError(f"{name}: its tokenizer is code shipped with the checkpoint "
                            f"({', '.join(tokenizer_class_names(config))}); pass --trust_remote_code if you trust "
                            "it") from None
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{name}: no tokenizer could be loaded from {path} ({first[:160]}); pass a local folder "
                        "with a tokenizer, or a hub id with network access") from None
    except Exception as e:  # the checkpoint's own code can raise anything
        if not remote:
            raise
        raise _remote_failure(name, e, __version__) from None
    if remote:
        try:  # remote code often loads and then fails on its first call (ChatGLM3's _pad under transformers 5)
            tokenizer("a")
        except Exception as e:
            raise _remote_failure(name, e, __version__) from None
    return tokenizer


def _remote_failure(name: str, e: Exception, version: str) -> UserError:
    return UserError(f"{name}: the tokenizer code shipped with the checkpoint fails under transformers {version} "
                     f"({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}); use a checkpoint "
                     "whose folder has a tokenizer.json, or the transformers version that code was written for")


@dataclass
class BuildArgs:
    model_file: str = field(metadata={"help": "the SentencePiece tokenizer.model (or the first value, unflagged)"})
    output_dir: str = field(metadata={
        "help": "the folder to write, read by AutoTokenizer and load_tokenizer (or the second value, unflagged)"})
    kind: Literal["llama", "chatglm"] = field(default="llama", metadata={
        "help": "llama: <s> + text; chatglm: [gMASK] sop + text and ChatGLM3's 9 special tokens"})


def main(argv=None):
    return run_main(lambda a: write_folder(*parse_args(
        (BuildArgs,), a, doc=__doc__, positional=("--model_file", "--output_dir"))), argv)


def write_folder(args: BuildArgs) -> None:
    if not Path(args.model_file).is_file():
        raise UserError(f"--model_file {args.model_file} does not exist; pass a SentencePiece tokenizer.model")
    build = chatglm_tokenizer if args.kind == "chatglm" else llama_tokenizer
    build(args.model_file).save_pretrained(args.output_dir)
    print(f"{args.kind} tokenizer from {args.model_file} -> {args.output_dir}")


if __name__ == "__main__":
    main()
