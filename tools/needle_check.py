"""Checking Needle-test placement independently of Needle_test/prompt.py, for any tokenizer.

prompt.py finds sentence ends by decoding token ids and measures the needle by re-encoding text
prefixes. The check here measures the other way: it locates the needle as a character offset in the
final text and counts the tokens that the tokenizer's offset mapping puts entirely before it. It also
trains small tokenizers of other algorithms than the fixture's byte-level BPE (Unigram with a
SentencePiece-style metaspace, like Llama-2 and ChatGLM3; WordPiece with BERT's lowercasing and
punctuation splitting), so placement is tested on tokenizers whose period tokens look nothing alike.

Run as (the figures in the README):
    python -m tools.needle_check --lengths 1000,4000,16000
"""

import random
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from longalign.scriptargs import parse_args, run_main
from tools import synthetic

KINDS = ("bpe", "unigram", "wordpiece")


def corpus(seed: int = 0) -> list[str]:
    """Haystack-like paragraphs plus fact sentences (so names, digits and capitals are in the vocabulary)."""
    rng, lex = random.Random(seed), synthetic.Lexicon(0)
    facts = [synthetic.fact_sentence(n, str(rng.randint(1000, 9999))) for n in lex.names]
    return [lex.paragraph(rng, 80) for _ in range(200)] + facts + [synthetic.fact_question(n) for n in lex.names]


def train_tokenizer(kind: str, out: Path, vocab_size: int = 800):
    """Train a tokenizer of the given algorithm (well under a second) and save it for AutoTokenizer."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if kind == "bpe":  # the project's fixture tokenizer (byte-level BPE, digits split)
        return synthetic.train_tokenizer(out, vocab_size=vocab_size)
    if kind == "unigram":
        tok = Tokenizer(models.Unigram())
        tok.pre_tokenizer, tok.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
        trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=["<unk>"], unk_token="<unk>",
                                          show_progress=False)
        unk = "<unk>"
    elif kind == "wordpiece":
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True)
        tok.pre_tokenizer, tok.decoder = pre_tokenizers.BertPreTokenizer(), decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=["[UNK]"], show_progress=False)
        unk = "[UNK]"
    else:
        raise ValueError(f"unknown tokenizer kind {kind}; one of {KINDS}")
    tok.train_from_iterator(corpus(), trainer=trainer)
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token=unk, model_max_length=1 << 20).save_pretrained(out)
    return AutoTokenizer.from_pretrained(out)


def tokens_before(tokenizer, text: str, char_offset: int) -> int:
    """How many tokens of `text` end at or before char_offset (by the tokenizer's offset mapping)."""
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    return sum(1 for _, end in offsets if end <= char_offset)


def placement_error(tokenizer, context: str, needle: str, depth: float) -> tuple[float, int, int]:
    """(error in % of the context, measured needle start, context tokens). The intended start is depth %
    of the haystack tokens (the context without the needle)."""
    at = context.find(needle)
    assert at >= 0, "needle not in context"
    n_ctx = len(tokenizer(context, add_special_tokens=False)["input_ids"])
    n_needle = len(tokenizer(needle, add_special_tokens=False)["input_ids"])
    start = tokens_before(tokenizer, context, at)
    return 100 * abs(start - depth / 100 * (n_ctx - n_needle)) / n_ctx, start, n_ctx


@dataclass
class Args:
    lengths: str = field(default='1000,4000,16000', metadata={"help": "context lengths in tokens"})
    depths: str = field(default='0,10,20,30,40,50,60,70,80,90,100', metadata={"help": "needle depths in percent"})
    haystack_dir: str = field(default='', metadata={"help": "folder of .txt files (default: the synthetic haystack)"})


def main(argv=None):
    import importlib.util
    import json

    (args,) = run_main(lambda a: parse_args((Args,), a), argv)
    spec = importlib.util.spec_from_file_location(
        "needle_prompt", Path(__file__).resolve().parents[1] / "Needle_test" / "prompt.py")
    prompt = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(prompt)
    needle, question = synthetic.fact_sentence("Zorbalin", "4821"), synthetic.fact_question("Zorbalin")
    depths = [float(d) for d in args.depths.split(",")]
    print(f"{'tokenizer':10s} {'length':>6s}  max |error| % of context per depth ({args.depths})")
    with tempfile.TemporaryDirectory() as tmp:
        for kind in KINDS:
            tok = train_tokenizer(kind, Path(tmp) / kind)
            prompt.main(["--tokenizer", str(Path(tmp) / kind), "--needle", needle, "--retrieval_question", question,
                         "--context_lengths", args.lengths, "--depth_percents", args.depths,
                         "--haystack_dir", args.haystack_dir, "--out_dir", str(Path(tmp) / f"p-{kind}")])
            rows = [json.loads(x) for x in (Path(tmp) / f"p-{kind}" / "prompts.jsonl").read_text().splitlines()]
            for n in [int(x) for x in args.lengths.split(",")]:
                errs = [placement_error(tok, r["messages"][-1]["content"].split("\n\nRead the document")[0], needle,
                                        r["depth_percent"])[0] for r in rows if r["context_length"] == n]
                print(f"{kind:10s} {n:6d}  " + " ".join(f"{e:.2f}" for e in errs) + f"   max {max(errs):.2f}")
    return depths


if __name__ == "__main__":
    main()
