"""ChatGLM3's tokenizer without remote code (longalign/tokenization.py) == THUDM's tokenization_chatglm.py, id for
id: plain text, Chinese, rare characters, the paper's [Round i] format, special-token text, the special ids,
pairs, padding, and the whole training encoding (longalign.chat, --template chatglm; pre_tokenize.py on a
ChatGLM3-shaped folder). The reference is loaded from ../shared at run time (skipped without it), on a
SentencePiece model trained here. Also: a tokenizer that is remote code and fails ends in one sentence."""

import json

import pytest
import spm_fixtures as fx

from longalign import chat
from longalign.scriptargs import UserError
from longalign.tokenization import CHATGLM_SPECIAL_TOKENS, chatglm_tokenizer, load_tokenizer
from tools import synthetic

REF = fx.reference_module()
needs_reference = pytest.mark.skipif(REF is None, reason=f"THUDM's reference tokenizer not found at {fx.REFERENCE}")


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    return fx.train_sentencepiece(tmp_path_factory.mktemp("spm") / "tokenizer.model")


@pytest.fixture(scope="module")
def checkpoint(model_file, tmp_path_factory):
    return fx.chatglm_checkpoint(tmp_path_factory.mktemp("chatglm3"), model_file)


@pytest.fixture(scope="module")
def ours(checkpoint):
    return load_tokenizer(str(checkpoint))  # no trust_remote_code: the folder asks for THUDM's code


@pytest.fixture(scope="module")
def ref(model_file):
    if REF is None:
        pytest.skip(f"THUDM's reference tokenizer not found at {fx.REFERENCE}")
    return fx.patched_reference_class(REF)(vocab_file=str(model_file))


def test_the_loader_picks_the_chatglm_build(ours, checkpoint):
    from transformers import AutoTokenizer

    assert type(ours).__name__ in ("TokenizersBackend", "PreTrainedTokenizerFast")
    with pytest.raises(ValueError, match="trust_remote_code"):  # what a plain AutoTokenizer call meets
        AutoTokenizer.from_pretrained(checkpoint, trust_remote_code=False)


@needs_reference
def test_messages_are_id_identical_to_the_reference(ours, ref, model_file):
    """Every message: our ids == the reference's, with and without special tokens, and the same decoding.
    The reference's ids are sp.encode's except where an ordinary piece spells a special token (this
    vocabulary has a piece `eop`): it looks pieces up by text, so ours do too."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(model_file))
    counts, quirk = {}, 0
    for kind, texts in fx.messages().items():
        same = 0
        for text in texts:
            plain = ref(text, add_special_tokens=False)["input_ids"]
            same += (ours(text)["input_ids"] == ref(text)["input_ids"]
                     and ours(text, add_special_tokens=False)["input_ids"] == plain
                     and ours.decode(plain) == ref.decode(plain))
            quirk += plain != sp.encode(text)
        counts[kind] = (same, len(texts))
    print(f"chatglm parity (id-identical / messages): {counts}; {quirk} where the reference is not sp.encode")
    assert all(same == n for same, n in counts.values()), counts
    assert sp.piece_to_id("eop") != sp.unk_id() and quirk == 2  # "isopropyl sop eop" and "eop"


@needs_reference
def test_special_tokens_pairs_and_padding(ours, ref):
    V = ref.tokenizer.sp_model.vocab_size()
    assert ours.convert_ids_to_tokens(ref.tokenizer.sp_model.piece_to_id("eop")).startswith("<piece ")
    assert [ours.convert_tokens_to_ids(t) for t in CHATGLM_SPECIAL_TOKENS] == \
        [ref.get_command(t) for t in CHATGLM_SPECIAL_TOKENS] == list(range(V, V + 9))
    assert len(ours) == ref.vocab_size == V + 9
    for name in ("eos_token_id", "pad_token_id"):
        assert getattr(ours, name) == getattr(ref, name), name
    assert ours.padding_side == ref.padding_side == "left"
    assert chat.special_prefix(ours) == chat.special_prefix(ref) == [ref.get_command("[gMASK]"), ref.get_command("sop")]
    assert ours("问", "答")["input_ids"] == ref("问", "答")["input_ids"]  # [gMASK] sop A B </s>
    batch = ["a b", "[Round 1]\n\n问：你好\n\n答：", "x"]
    mine, theirs = ours(batch, padding=True), ref(batch, padding=True)
    assert mine["input_ids"] == theirs["input_ids"] and mine["attention_mask"] == theirs["attention_mask"]
    text = "say [gMASK]sop <|user|> eop"  # special-token text is plain text, as in the original
    assert ours(text)["input_ids"] == ref(text)["input_ids"] and ours(text)["input_ids"].count(V + 3) == 1


@needs_reference
def test_training_encoding_equals_the_reference(ours, ref, tmp_path):
    """longalign.chat's store encoding (what pre_tokenize.py writes) with either tokenizer is the same."""
    synthetic.write_chat_data(tmp_path, num_long=6, num_short=40, long_min_words=200, seed=3)
    convs = [json.loads(x)["messages"] for f in ("long.jsonl", "sharegpt.jsonl")
             for x in (tmp_path / "raw" / f).read_text().splitlines()]
    zh = fx.HANZI
    convs += [[{"role": "system", "content": "你是助手。"}, {"role": "user", "content": zh[:40] + "？"},
               {"role": "assistant", "content": zh[40:60] + "。"}, {"role": "user", "content": "  two  spaces "},
               {"role": "assistant", "content": " leading space and </s> text"}]]
    mine = chat.encode_conversations(convs, "chatglm", ours)
    theirs = chat.encode_conversations(convs, "chatglm", ref)
    same = sum(a == b for a, b in zip(mine, theirs, strict=True))
    print(f"chatglm training encoding: {same}/{len(convs)} conversations id-identical to the reference")
    assert same == len(convs)
    prompt = chat.encode_prompt(convs[-1][:-1], "chatglm", ours)
    assert prompt == chat.encode_prompt(convs[-1][:-1], "chatglm", ref) == mine[-1][0][:len(prompt)]


@needs_reference
def test_negative_controls(model_file, ref):
    """Without the dummy prefix on every text (transformers' non-legacy SentencePiece scheme) a text with a
    leading space differs; and the unpatched reference fails exactly as the issue reports."""
    from tokenizers import Tokenizer
    from transformers.convert_slow_tokenizer import SpmConverter

    from longalign.tokenization import read_sentencepiece

    proto = read_sentencepiece(model_file)
    non_legacy = SpmConverter.build_tokenizer_from_spm_proto(proto, {p.piece: i for i, p in enumerate(proto.pieces)},
                                                             legacy=False)
    texts = [t for ts in fx.messages().values() for t in ts]
    differ = sum(Tokenizer.encode(non_legacy, t, add_special_tokens=False).ids
                 != ref(t, add_special_tokens=False)["input_ids"] for t in texts)
    assert differ > 0
    with pytest.raises(TypeError, match="padding_side"):
        REF.ChatGLMTokenizer(vocab_file=str(model_file))("a")


@needs_reference
def test_pre_tokenize_on_a_chatglm3_folder_without_remote_code(checkpoint, ref, tmp_path):
    import pre_tokenize
    from longalign.store import TokenizedStore

    synthetic.write_chat_data(tmp_path, num_long=3, num_short=12, long_min_words=200, seed=4)
    meta = pre_tokenize.main(["--model", str(checkpoint), "--template", "chatglm", "--datanum", "all",
                              "--long_file", str(tmp_path / "raw" / "long.jsonl"),
                              "--short_file", str(tmp_path / "raw" / "sharegpt.jsonl"),
                              "--out_dir", str(tmp_path / "store"), "--max_length", "100000"])
    convs = [json.loads(x)["messages"] for f in ("long.jsonl", "sharegpt.jsonl")
             for x in (tmp_path / "raw" / f).read_text().splitlines()]
    store = TokenizedStore(tmp_path / "store")
    stored = sorted(store[i]["input_ids"].tolist() for i in range(len(store)))
    assert stored == sorted(ids for ids, _ in chat.encode_conversations(convs, "chatglm", ref))
    assert meta["special_prefix"] == chat.special_prefix(ref) and meta["eos_token_id"] == ref.eos_token_id


def test_save_and_reload_is_a_plain_folder(ours, tmp_path):
    from transformers import AutoTokenizer

    ours.save_pretrained(tmp_path / "saved")
    again = AutoTokenizer.from_pretrained(tmp_path / "saved")
    texts = [t for ts in fx.messages().values() for t in ts]
    assert again(texts)["input_ids"] == ours(texts)["input_ids"]
    assert (again.eos_token_id, again.pad_token_id, again.padding_side, again.split_special_tokens) == \
        (ours.eos_token_id, ours.pad_token_id, "left", True)
    assert load_tokenizer(str(tmp_path / "saved"))(texts[:5])["input_ids"] == ours(texts[:5])["input_ids"]


def test_train_saves_a_plain_tokenizer_folder(checkpoint, ours, tmp_path):
    """train.py writes the tokenizer of a ChatGLM3 checkpoint next to the model as tokenizer.json: evaluation
    then needs no remote code either."""
    from types import SimpleNamespace

    from transformers import AutoTokenizer

    import train

    train.save_tokenizer(SimpleNamespace(model_name_or_path=str(checkpoint), trust_remote_code=False),
                         SimpleNamespace(meta={}), str(tmp_path / "out"))
    texts = fx.messages()["round"]
    assert AutoTokenizer.from_pretrained(tmp_path / "out")(texts)["input_ids"] == ours(texts)["input_ids"]


def test_cli_writes_a_folder(model_file, tmp_path):
    from longalign.tokenization import main

    main([str(model_file), str(tmp_path / "glm"), "--kind", "chatglm"])
    again = load_tokenizer(str(tmp_path / "glm"))
    assert again("你好")["input_ids"] == chatglm_tokenizer(model_file)("你好")["input_ids"]


# ---------------------------------------------------------------------------------------------
# Remote code that fails: one sentence naming the fix

BROKEN = '''
from transformers import PreTrainedTokenizer


class BrokenTokenizer(PreTrainedTokenizer):
    """Written for transformers 4: its _pad lacks padding_side, as ChatGLM3's remote code does."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)

    @property
    def vocab_size(self):
        return 2

    def get_vocab(self):
        return {"<unk>": 0, "a": 1}

    def _tokenize(self, text):
        return list(text)

    def _convert_token_to_id(self, token):
        return 1 if token == "a" else 0

    def _convert_id_to_token(self, index):
        return "a" if index == 1 else "<unk>"

    def _pad(self, encoded_inputs, max_length=None, padding_strategy=None, pad_to_multiple_of=None,
             return_attention_mask=None):
        return encoded_inputs
'''


@pytest.fixture()
def broken_folder(tmp_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "tokenization_broken.py").write_text(BROKEN)
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "auto_map": {"AutoTokenizer": ["tokenization_broken.BrokenTokenizer", None]},
        "tokenizer_class": "BrokenTokenizer", "unk_token": "<unk>"}))
    return folder


def test_remote_code_failures_are_one_sentence(broken_folder, tmp_path, capsys):
    import pre_tokenize

    with pytest.raises(UserError, match="pass --trust_remote_code"):
        load_tokenizer(str(broken_folder))
    with pytest.raises(UserError, match=r"fails under transformers .*TypeError.*padding_side.*tokenizer\.json"):
        load_tokenizer(str(broken_folder), trust_remote_code=True)
    with pytest.raises(UserError, match="nothing_here does not exist; pass a local folder"):
        load_tokenizer(str(tmp_path / "nothing_here"))
    (tmp_path / "nothing_here").mkdir()
    with pytest.raises(UserError, match="no tokenizer could be loaded"):
        load_tokenizer(str(tmp_path / "nothing_here"))
    with pytest.raises(UserError, match="chatglm: no tokenizer.model"):  # the alias, offline
        load_tokenizer("chatglm")
    (tmp_path / "x.jsonl").write_text("")
    with pytest.raises(SystemExit) as e:
        pre_tokenize.main(["--model", str(broken_folder), "--trust_remote_code", "--template", "llama",
                           "--long_file", str(tmp_path / "x.jsonl"), "--short_file", "", "--out_dir", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith(f"error: --model_name_or_path {broken_folder}: the tokenizer code")
