"""A real Llama-family SentencePiece tokenizer: Mistral-7B-v0.1's tokenizer.model (32k, Llama-2-style), which the
PyPI wheel of mistral-common ships (fetched once into data/cache/, skipped without network). In a folder shaped
like a Llama-2/Mistral checkpoint, longalign.tokenization encodes exactly like SentencePiece (transformers'
own LlamaTokenizer does not); --template llama places answers, labels and the EOS right and decodes back; the
Needle test places its needle at the asked depth; and our store differs from the other encodings only in the
kinds bench/bench_tokenize.py --compare names."""

import json
from pathlib import Path

import pytest
import script_module
import spm_fixtures as fx

from longalign import chat
from longalign.assets import AssetError, pypi_file
from longalign.chat import IGNORE_INDEX
from longalign.tokenization import load_tokenizer
from tools import needle_check, synthetic

ROOT = Path(__file__).resolve().parents[1]
MISTRAL = ("mistral-common==1.13.1", "mistral_common/data/tokenizer.model.v1")


def _module(path: Path, name: str):
    return script_module.load(path, name)


@pytest.fixture(scope="module")
def model_file():
    try:
        return pypi_file(*MISTRAL, ROOT / "data" / "cache")
    except AssetError as e:
        pytest.skip(f"Mistral's tokenizer.model could not be fetched: {e}")


@pytest.fixture(scope="module")
def mistral_dir(model_file, tmp_path_factory):
    """The tokenizer files of a Llama-2 / Mistral-7B-v0.1 checkpoint (no tokenizer.json)."""
    folder = tmp_path_factory.mktemp("mistral")
    (folder / "tokenizer.model").write_bytes(model_file.read_bytes())
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False, "bos_token": "<s>",
        "eos_token": "</s>", "unk_token": "<unk>", "pad_token": None, "legacy": True,
        "clean_up_tokenization_spaces": False, "model_max_length": 32768}))
    return folder


@pytest.fixture(scope="module")
def tok(mistral_dir):
    return load_tokenizer(str(mistral_dir))


@pytest.fixture(scope="module")
def conversations(tmp_path_factory):
    path = tmp_path_factory.mktemp("chats")
    synthetic.write_chat_data(path, num_long=6, num_short=34, long_min_words=300, seed=5)
    return [json.loads(x)["messages"] for f in ("long.jsonl", "sharegpt.jsonl")
            for x in (path / "raw" / f).read_text().splitlines()]


def test_sentencepiece_parity(tok, model_file, mistral_dir, conversations, tmp_path):
    """<s> + sp.encode(text) for every text; transformers' LlamaTokenizer on the same folder is not
    (negative control: runs of spaces and a leading space come out differently)."""
    import sentencepiece as spm
    from transformers import AutoTokenizer

    sp = spm.SentencePieceProcessor(model_file=str(model_file))
    texts = [t for ts in fx.messages().values() for t in ts]
    texts += [t for c in conversations for t, _ in chat.conversation_pieces(c, "llama")]
    ours = tok(texts, split_special_tokens=True)["input_ids"]  # special-token text as text, as chat.py asks
    assert ours == [[sp.bos_id()] + sp.encode(t) for t in texts], "not SentencePiece's ids"
    assert tok("a</s>")["input_ids"][-1] == tok.eos_token_id  # by default parsed, as chat templates need
    assert [tok.decode(ids, skip_special_tokens=True) for ids in ours] == [sp.decode(ids) for ids in ours]
    stock = AutoTokenizer.from_pretrained(mistral_dir)
    differ = sum(a != b for a, b in zip(stock(texts, split_special_tokens=True)["input_ids"], ours, strict=True))
    print(f"mistral: load_tokenizer == sp.encode on {len(texts)}/{len(texts)} texts; "
          f"transformers' {type(stock).__name__} differs on {differ}")
    assert differ > 0
    tok.save_pretrained(tmp_path / "saved")  # what train.py writes next to the model reloads exactly
    assert AutoTokenizer.from_pretrained(tmp_path / "saved")(texts, split_special_tokens=True)["input_ids"] == ours


def test_llama_template_labels_and_decoding(tok, conversations):
    """Label spans decode to the answers + </s>; the whole sequence decodes to the format's text with the
    space that SentencePiece's dummy prefix puts before each separately encoded piece; prompts == training."""
    store = chat.encode_conversations(conversations, "llama", tok)
    for messages, (ids, labels) in zip(conversations, store, strict=True):
        assert ids[0] == tok.bos_token_id and labels[0] == IGNORE_INDEX
        spans, run = [], []
        for t, lab in zip(ids + [0], labels + [IGNORE_INDEX], strict=True):
            if lab != IGNORE_INDEX:
                assert lab == t
                run.append(t)
            elif run:
                spans, run = spans + [run], []
        answers = [m["content"] for m in messages if m["role"] == "assistant"]
        assert [tok.decode(s) for s in spans] == [a + "</s>" for a in answers]
        assert all(s[-1] == tok.eos_token_id and s.count(tok.eos_token_id) == 1 for s in spans)
        pieces = chat.conversation_pieces(messages, "llama")
        assert tok.decode(ids) == "<s>" + "".join(" " + t + ("</s>" if a else "") for t, a in pieces)
        prompt = chat.encode_prompt(messages[:-1], "llama", tok)
        assert ids[:len(prompt)] == prompt and labels[len(prompt)] != IGNORE_INDEX


def test_needle_placement(mistral_dir, tok, tmp_path):
    prompt = _module(ROOT / "Needle_test" / "prompt.py", "needle_prompt_real")
    needle, question = synthetic.fact_sentence("Zorbalin", "4821"), synthetic.fact_question("Zorbalin")
    synthetic.write_haystack(tmp_path / "hay", num_files=1, words_per_file=2500)
    prompt.main(["--tokenizer", str(mistral_dir), "--haystack_dir", str(tmp_path / "hay"), "--needle", needle,
                 "--retrieval_question", question, "--context_lengths", "500,2000", "--depth_percents",
                 "0,10,25,50,75,90,100", "--final_context_length_buffer", "50", "--out_dir", str(tmp_path / "p")])
    rows = [json.loads(x) for x in (tmp_path / "p" / "prompts.jsonl").read_text().splitlines()]
    assert len(rows) == 14
    for r in rows:
        context = r["messages"][-1]["content"].split("\n\nRead the document above and answer.")[0]
        error, start, n_ctx = needle_check.placement_error(tok, context, needle, r["depth_percent"])
        assert error <= 2.0 and n_ctx == r["context_length"] - 50, (r["depth_percent"], error, n_ctx)
        ids = tok(context, add_special_tokens=False)["input_ids"]
        n_needle = len(tok(needle, add_special_tokens=False)["input_ids"])
        assert tok.decode(ids[start:start + n_needle]).strip() == needle


def test_store_vs_one_call_vs_the_original_method(tok, conversations):
    """The comparison in the README (bench_tokenize.py --compare): every difference is of a named kind."""
    bench = _module(ROOT / "bench" / "bench_tokenize.py", "bench_tokenize_real")
    rows = bench.compare(conversations, "llama", tok)
    bench.print_comparison(rows, "llama", "Mistral-7B-v0.1 (mistral-common 1.13.1)")
    n, multi = rows["n"], rows["multi_round"]
    assert rows["prompt_is_training_context"] == n
    assert rows["one_call_other"] == 0 and rows["one_call_answer_split"] == n - rows["one_call_identical"] > 0
    # synthetic answers have no surrounding whitespace: only multi-round conversations differ, by the EOS of
    # earlier answers and the "\n\n" before later rounds that its markers stripped
    assert rows["original_identical"] == rows["original_identical_single_round"] == n - multi
    assert rows["original_no_eos"] == rows["original_stripped"] == multi > 0


def test_tokens_the_config_adds(model_file):
    """Tokens after the 32k pieces keep their ids; one that is also a piece cannot, and says so."""
    from longalign.scriptargs import UserError
    from longalign.tokenization import llama_tokenizer

    added = {"32000": {"content": "<pad>", "special": True}, "32001": {"content": "<|im_end|>", "special": True}}
    tok = llama_tokenizer(model_file, {"added_tokens_decoder": added, "pad_token": "<pad>", "add_eos_token": True})
    assert tok.convert_tokens_to_ids(["<pad>", "<|im_end|>"]) == [32000, 32001] and len(tok) == 32002
    assert tok.pad_token_id == 32000 and tok("a")["input_ids"][-1] == tok.eos_token_id
    with pytest.raises(UserError, match="is a piece of the SentencePiece vocabulary"):
        llama_tokenizer(model_file, {"added_tokens_decoder": {"32000": {"content": "▁the"}}})
