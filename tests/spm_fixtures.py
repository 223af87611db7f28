"""SentencePiece fixtures for the tokenizer tests: a BPE model trained here, a ChatGLM3-shaped checkpoint
folder around it, THUDM's reference tokenizer loaded from ../shared, and varied messages to compare on.

The model is trained like ChatGLM3's and Llama-2's (BPE, byte fallback, identity normalization, spaces kept,
digits split) on English-like filler, Chinese, the paper's `[Round i]` format and words that contain `sop`
and `eop` (so those are also ordinary pieces: the special tokens must still get their own ids).
"""

import io
import json
import os
import random
from pathlib import Path

import script_module

from tools import synthetic

ROOT = Path(__file__).resolve().parents[1]
# THUDM's tokenization_chatglm.py (Apache-2.0) is never copied into the repository: the tests load it from the
# shared folder next to the checkout (LONGALIGN_SHARED overrides where that is) and skip without it.
SHARED = Path(os.environ.get("LONGALIGN_SHARED", ROOT.parent / "shared"))
REFERENCE = SHARED / "reference" / "chatglm3" / "tokenization_chatglm.py"

# 300 common Chinese characters (a frequency-list head), enough for Chinese pieces and unknown-char fallback.
HANZI = ("的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年得就那要下以生会自着去之过家学对可里后"
         "小么心多天而能好都然没日于起还发成事只作当想看文无开手十用主行方又如前所本见经头面公同三已老从动两长知"
         "民样现分将外但身些与高意进把法此实回二理美点月明其种声全工己话儿者向情部正名定女问力机给等几很业最间新"
         "什打便位因重被走电四第门相次东政海口使教西再平真听世气信北少关并内加化由却代军产入先山五太水万市眼体别"
         "处总才场师书比住员九笑性通目华报立马命张活难神数件安表原车白应路期叫死常提感金何更反合放做系计或司利受"
         "光王果亲界及今京务制解各任至清物台象记边共风战干接它许八特觉望直服毛林题建南度统色字请交爱让认算论百吃")


def training_lines(seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    lex = synthetic.Lexicon(seed)
    zh = lambda n: "".join(rng.choice(HANZI) for _ in range(n))  # noqa: E731
    lines = []
    for i in range(1500):
        lines.append(lex.paragraph(rng, rng.randint(5, 40)))
        lines.append(f"{zh(rng.randint(4, 30))}，{zh(rng.randint(3, 15))}。")
        lines.append(f"[Round {i % 9 + 1}]\n\n问：{zh(8)}？\n\n答：{lex.sentence(rng)} {rng.randint(0, 99999)}")
        lines.append(rng.choice(["isopropyl", "kasop", "tesopa", "peop", "sopra", "meop"]) + " " + lex.sentence(rng))
        lines.append("def f(x):\n    return x  # " + lex.sentence(rng))
    return lines


def train_sentencepiece(path: Path, vocab_size: int = 2000) -> Path:
    """A SentencePiece BPE model file (about a second)."""
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(training_lines()), model_writer=buf, model_type="bpe", vocab_size=vocab_size,
        byte_fallback=True, normalization_rule_name="identity", remove_extra_whitespaces=False, split_digits=True,
        allow_whitespace_only_pieces=True, character_coverage=0.9995, num_threads=1, minloglevel=2,
        unk_id=0, bos_id=1, eos_id=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())
    return path


def chatglm_checkpoint(folder: Path, model_file: Path) -> Path:
    """A folder shaped like ChatGLM3-6B's tokenizer files: tokenizer.model and a tokenizer_config.json that
    asks for THUDM's remote code (which is not there: nothing may need it)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.model").write_bytes(model_file.read_bytes())
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "auto_map": {"AutoTokenizer": ["tokenization_chatglm.ChatGLMTokenizer", None]},
        "tokenizer_class": "ChatGLMTokenizer", "padding_side": "left", "remove_space": False,
        "do_lower_case": False, "clean_up_tokenization_spaces": False}))
    return folder


def reference_module():
    """THUDM's tokenization_chatglm.py as a module, or None where ../shared is absent."""
    if not REFERENCE.is_file():
        return None
    return script_module.load(REFERENCE, "reference_tokenization_chatglm")


def patched_reference_class(module):
    """The reference with the one fix transformers 5 needs: `_pad` accepts (and ignores) padding_side,
    which the reference asserts is "left" anyway."""

    class Patched(module.ChatGLMTokenizer):
        def _pad(self, encoded_inputs, max_length=None, padding_strategy=module.PaddingStrategy.DO_NOT_PAD,
                 pad_to_multiple_of=None, padding_side=None, return_attention_mask=None):
            return super()._pad(encoded_inputs, max_length, padding_strategy, pad_to_multiple_of, return_attention_mask)

    return Patched


def messages(seed: int = 1) -> dict[str, list[str]]:
    """Texts to compare on, by kind."""
    rng = random.Random(seed)
    lex = synthetic.Lexicon(seed)
    zh = lambda n: "".join(rng.choice(HANZI) for _ in range(n))  # noqa: E731
    spaced = [" {}", "{} ", "  {}", "{}  x", "a  {}", "\t{}", "{}\n\n", "    {}", " \n {}"]
    out = {
        "plain": [lex.paragraph(rng, rng.randint(3, 60)) for _ in range(40)]
                 + [rng.choice(spaced).format(lex.sentence(rng)) for _ in range(30)]
                 + [f"Year {rng.randint(0, 10**6)}, {rng.random():.4f} per cent." for _ in range(5)]
                 + ["def f(x):\n    if x:\n        return  x\n", "", " ", "  ", "\n", "\t", "▁", " ▁ x"],
        "chinese": [f"{zh(rng.randint(1, 40))}{rng.choice(['。', '，', '？', '！', ''])}" for _ in range(30)]
                   + [f"{zh(5)} {lex.sentence(rng)} {zh(3)}" for _ in range(10)],
        "rare": ["emoji 😀 and ß, é (e\u0301), ü", "Ω≈ç√∫ ∑", "\u200b zero width", "tab\tand\r\nCRLF", "ｆｕｌｌｗｉｄｔｈ"],
        "round": [f"[Round {i}]\n\n问：{rng.choice([zh(12), lex.sentence(rng)])}\n\n答：" for i in range(1, 11)]
                 + [f"[Round {i}]\n\n问：{zh(6)}\n\n答：{lex.sentence(rng)}\n\n[Round {i + 1}]\n\n问：{zh(4)}\n\n答："
                    for i in range(1, 11)],
        "special_text": ["[gMASK]sop<|user|>\n hi", "isopropyl sop eop", "[MASK] [sMASK] <|assistant|>",
                         "<|system|>\nYou are terse.<|observation|>", "</s> <s> <unk>", "sop", "eop"],
    }
    return out
