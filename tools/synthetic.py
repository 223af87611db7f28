"""Offline fixtures made by the project itself: a tokenizer, a tiny Llama, and chat data.

Nothing here is downloaded or copied: the words are made from syllables, the tokenizer is trained on
them in a fraction of a second, and the model is random. Tests and the quickstart use these instead
of the hub.

Run as:
    python -m tools.synthetic --output_dir data/demo [--num_long 48 --long_min_words 500 --num_short 400]

Writes:
    <out>/raw/long.jsonl      long conversations: a document hiding one fact + a question about it
                              (LongAlign-10k stand-in; lengths span an 8x range, long-tailed)
    <out>/raw/sharegpt.jsonl  short multi-turn chats, some with a system turn (ShareGPT stand-in)
    <out>/tokenizer/          byte-level BPE, loads with AutoTokenizer.from_pretrained
    <out>/tiny-llama/         random LlamaForCausalLM (+ the tokenizer), loads with from_pretrained
    <out>/haystack/           plain-text files of filler for the Needle test

Every line is {"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}, the
input format of pre_tokenize.py.
"""

import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path

from longalign.scriptargs import parse_args, run_main

# ---------------------------------------------------------------------------------------------
# Words and sentences. Pseudo-words from syllables give an open vocabulary that no tokenizer has
# memorised, so a model can only answer a question about a document by reading the document.

_ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "st", "tr", "gl"]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ou"]
_CODAS = ["", "", "n", "r", "s", "l", "m", "k"]


def make_words(rng: random.Random, n: int, syllables: tuple[int, int] = (1, 3)) -> list[str]:
    """n distinct pseudo-words of 1-3 syllables."""
    words: set[str] = set()
    while len(words) < n:
        k = rng.randint(*syllables)
        words.add("".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(k)))
    return sorted(words)


class Lexicon:
    """A fixed, seeded vocabulary of nouns, verbs, adjectives and names (all made up)."""

    def __init__(self, seed: int = 0):
        rng = random.Random(seed)
        pool = make_words(rng, 1400)
        rng.shuffle(pool)
        self.nouns, self.verbs = pool[:600], pool[600:900]
        self.adjectives, self.names = pool[900:1100], [w.capitalize() for w in pool[1100:1400]]

    def sentence(self, rng: random.Random) -> str:
        """One filler sentence, about 6-10 words."""
        a, b = rng.sample(self.nouns, 2)
        s = f"The {rng.choice(self.adjectives)} {a} {rng.choice(self.verbs)}s the {b}"
        if rng.random() < 0.5:
            s += f" near the {rng.choice(self.adjectives)} {rng.choice(self.nouns)}"
        return s + "."

    def paragraph(self, rng: random.Random, num_words: int) -> str:
        """Filler of about num_words words (whole sentences)."""
        out, count = [], 0
        while count < num_words:
            s = self.sentence(rng)
            out.append(s)
            count += s.count(" ") + 1
        return " ".join(out)


# ---------------------------------------------------------------------------------------------
# The fact to retrieve. The same shape serves the quickstart's Needle test, so a tiny model trained
# on these conversations can visibly learn long-context retrieval.

def fact_sentence(name: str, code: str) -> str:
    """The code is written after a "#": a token that marks where it starts, so that copying it is a
    plain induction (find the earlier "#", copy what follows) which a 2-layer model learns in minutes;
    without it the start of the code is ambiguous in this tokenizer and copying did not form."""
    return f"The secret code of {name} is #{code}."


def fact_question(name: str) -> str:
    return f"What is the secret code of {name}?"


def long_conversation(rng: random.Random, lex: Lexicon, num_words: int) -> dict:
    """A document of ~num_words words with one fact at a random depth, then a question about it.

    One in four gets a second round (a follow-up about another fact in the same document), as
    LongAlign-10k has a few multi-turn samples.
    """
    names = rng.sample(lex.names, 2)
    codes = [str(rng.randint(1000, 9999)) for _ in names]
    sentences = lex.paragraph(rng, num_words).split(". ")
    rounds = 2 if rng.random() < 0.25 else 1
    for name, code in list(zip(names, codes, strict=True))[:rounds]:
        at = rng.randint(0, len(sentences))
        sentences.insert(at, fact_sentence(name, code)[:-1])
    document = ". ".join(sentences)
    if not document.endswith("."):
        document += "."
    messages = [
        {"role": "user", "content": f"{document}\n\nRead the document above and answer. {fact_question(names[0])}"},
        {"role": "assistant", "content": fact_sentence(names[0], codes[0])},
    ]
    if rounds == 2:
        messages += [
            {"role": "user", "content": fact_question(names[1])},
            {"role": "assistant", "content": fact_sentence(names[1], codes[1])},
        ]
    return {"messages": messages}


def short_conversation(rng: random.Random, lex: Lexicon) -> dict:
    """A ShareGPT-like chat: 1-4 rounds, lengths long-tailed (log-normal), some with a system turn."""
    messages = []
    if rng.random() < 0.2:
        messages.append({"role": "system", "content": f"You are a {rng.choice(lex.adjectives)} assistant."})
    for _ in range(rng.choice([1, 1, 1, 2, 2, 3, 4])):
        q_words = max(4, int(rng.lognormvariate(math.log(15), 0.6)))
        a_words = max(4, int(rng.lognormvariate(math.log(40), 0.6)))
        topic = rng.choice(lex.nouns)
        messages.append({"role": "user", "content": f"Tell me about the {topic}. {lex.paragraph(rng, q_words)}"})
        messages.append({"role": "assistant", "content": f"The {topic} is {rng.choice(lex.adjectives)}. "
                                                         f"{lex.paragraph(rng, a_words)}"})
    return {"messages": messages}


def long_lengths(rng: random.Random, n: int, min_words: int, span: float = 8.0) -> list[int]:
    """n lengths in [min_words, span*min_words], long-tailed towards the short end like LongAlign-10k
    (most samples near 8k, a tail to 64k): log-uniform in length, squared towards the minimum."""
    return [int(min_words * span ** (rng.random() ** 2)) for _ in range(n)]


def write_jsonl(path: Path, rows) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def write_chat_data(out: Path, num_long: int, num_short: int, long_min_words: int, seed: int = 0) -> dict:
    """Write raw/long.jsonl and raw/sharegpt.jsonl; return the word counts for a summary."""
    rng, lex = random.Random(seed), Lexicon(seed)
    lengths = long_lengths(rng, num_long, long_min_words)
    write_jsonl(out / "raw" / "long.jsonl", (long_conversation(rng, lex, n) for n in lengths))
    write_jsonl(out / "raw" / "sharegpt.jsonl", (short_conversation(rng, lex) for _ in range(num_short)))
    return {"num_long": num_long, "num_short": num_short,
            "long_words_min": min(lengths, default=0), "long_words_max": max(lengths, default=0)}


def write_haystack(out: Path, num_files: int = 4, words_per_file: int = 20000, seed: int = 1) -> None:
    """Filler essays for the Needle test (the offline stand-in for the original's essays)."""
    rng, lex = random.Random(seed), Lexicon(0)
    out.mkdir(parents=True, exist_ok=True)
    for i in range(num_files):
        paragraphs = [lex.paragraph(rng, 120) for _ in range(words_per_file // 120)]
        (out / f"essay_{i:02d}.txt").write_text("\n\n".join(paragraphs) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# Tokenizer: byte-level BPE (any text round-trips), digits split one by one so that copying a code
# is a token-by-token task, special tokens for a chat template of its own.

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>"]

# A chat template in the style of today's models, with {% generation %} around what the assistant
# writes so that transformers can return the assistant-token mask.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for m in messages %}"
    "{% if m['role'] == 'assistant' %}<|assistant|>\n{% generation %}{{ m['content'] }}{{ eos_token }}{% endgeneration %}\n"
    "{% else %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

# A chat template in the style of today's hybrid-thinking models (Qwen3), in our own wording: the answer after the
# last user turn opens with a think block (empty for an answer without reasoning), earlier answers are written
# without one, and the generation prompt writes the empty block when thinking is switched off.
THINKING_CHAT_TEMPLATE = (
    "{%- set last = namespace(user=-1) -%}"
    "{%- for m in messages -%}{%- if m.role == 'user' -%}{%- set last.user = loop.index0 -%}{%- endif -%}{%- endfor -%}"
    "{%- for m in messages -%}"
    "{{ '<|' + m.role + '|>\\n' }}"
    "{%- if m.role == 'assistant' and loop.index0 > last.user -%}{{ '<think></think>\\n' }}{%- endif -%}"
    "{{ m.content + eos_token + '\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|assistant|>\\n' }}"
    "{%- if enable_thinking is defined and not enable_thinking -%}{{ '<think></think>\\n' }}{%- endif -%}{%- endif -%}"
)


def train_tokenizer(out: Path, vocab_size: int = 1024, seed: int = 0):
    """Train and save the tokenizer (about 0.1 s); return it loaded through AutoTokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    rng, lex = random.Random(seed), Lexicon(seed)
    corpus = [lex.paragraph(rng, 60) for _ in range(300)]
    corpus += [fact_sentence(name, str(rng.randint(1000, 9999))) for name in lex.names]
    corpus += ["Read the document above and answer. Question: Tell me about " + w for w in lex.nouns[:50]]

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer=trainer)

    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", additional_special_tokens=SPECIAL_TOKENS[4:])
    fast.chat_template = CHAT_TEMPLATE
    fast.model_max_length = 1 << 20
    out.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out)
    return AutoTokenizer.from_pretrained(out)


# ---------------------------------------------------------------------------------------------
# Model: a random Llama small enough for CPU tests, big enough to have GQA and several layers.

def build_tiny_llama(out: Path, tokenizer, hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4,
                     num_kv_heads: int = 2, max_position_embeddings: int = 65536, seed: int = 0):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=hidden_size * 2 + hidden_size // 2,
        num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings, rms_norm_eps=1e-5, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return model


def build_tiny_model(out: Path, tokenizer, family: str, seed: int = 0, **overrides):
    """A random 2-layer model of any transformers `family` (model_type; hidden 64, 4 heads / 2 KV heads, tied
    embeddings unless `overrides` say otherwise) from transformers' own config class, saved with `tokenizer`;
    returns `out`."""
    import torch
    import transformers

    config = transformers.AutoConfig.for_model(family, **dict(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=4096,
        tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id) | overrides)
    torch.manual_seed(seed)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@dataclass
class Args:
    output_dir: str = field(metadata={"help": "output folder (alias --out)"})
    num_long: int = field(default=48, metadata={"help": "long conversations (LongAlign-10k stand-in)"})
    long_min_words: int = field(default=500, metadata={"help": "shortest long document in words; the longest is 8x this (8k-64k in the paper)"})
    num_short: int = field(default=400, metadata={"help": "short chats (ShareGPT stand-in)"})
    vocab_size: int = field(default=1024, metadata={"help": "BPE vocabulary size"})
    hidden_size: int = field(default=64, metadata={"help": "tiny Llama hidden size"})
    num_layers: int = field(default=2, metadata={"help": "tiny Llama layers"})
    seed: int = field(default=0, metadata={"help": "seed of the chats, tokenizer and weights"})


def main(argv=None) -> None:
    (args,) = run_main(lambda a: parse_args((Args,), a, aliases={"--out": "--output_dir"}), argv)
    out = Path(args.output_dir)

    counts = write_chat_data(out, args.num_long, args.num_short, args.long_min_words, args.seed)
    write_haystack(out / "haystack")
    tokenizer = train_tokenizer(out / "tokenizer", args.vocab_size, args.seed)
    build_tiny_llama(out / "tiny-llama", tokenizer, args.hidden_size, args.num_layers, seed=args.seed)
    print(f"synthetic: {counts['num_long']} long ({counts['long_words_min']}-{counts['long_words_max']} words), "
          f"{counts['num_short']} short chats, tokenizer vocab {len(tokenizer)}, tiny-llama -> {out}")


if __name__ == "__main__":
    main()
