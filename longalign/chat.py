"""Chat formats: the paper's two prompt formats, the tokenizer's own chat template, and the labels.

A conversation is a list of {"role": "system"|"user"|"assistant", "content": str}: an optional system
turn first, then user/assistant turns alternating, starting with a user turn.

Formats (`template`), as the paper trains them (rounds joined by "\\n\\n", i counts from 1):

    chatglm        [Round {i}]\\n\\n问：{user}\\n\\n答：{assistant}
    llama          [INST]{user}[/INST]{assistant}
    chat_template  whatever tokenizer.apply_chat_template renders

A system turn is a paragraph before round 1 in `chatglm` ("{system}\\n\\n[Round 1]..."), and Llama-2's
"<<SYS>>\\n{system}\\n<</SYS>>\\n\\n" at the start of the first user turn in `llama`.

Tokenization is per segment: a conversation is cut into alternating pieces of context (format text and
user turns) and answers, each piece is tokenized on its own (all pieces of a batch of conversations in
one fast-tokenizer call), and the ids are concatenated:

    pieces   [Round 1]\\n\\n问：{user}\\n\\n答：  |  {answer}  |  \\n\\n[Round 2]\\n\\n问：{user}\\n\\n答：  |  {answer}
    ids      prefix + ids(piece 0)         + ids(answer) + [eos] + ids(piece 2)              + ids(answer) + [eos]
    labels   -100 ...                        answer ids    eos     -100 ...                      answer ids    eos

so the label boundaries are exact without character offsets. Tokenizing the pieces separately can differ
from tokenizing the whole string at the piece boundaries (a BPE merge across "答：" and the answer's
first character cannot happen); that is the point: at generation time the model reads exactly the
prompt ids and writes the answer from a token boundary, and `encode_prompt` builds the prompt from the
same pieces, so what the model sees when it answers equals what it was trained on. `prefix` is the
tokenizer's own special prefix (`<s>` for Llama, `[gMASK]sop` for ChatGLM3), or its BOS token when it
adds none itself; for `chat_template` the template writes its own special tokens as text.

Under `chat_template` the data is rendered as the template renders a non-thinking answer (enable_thinking=False,
in training and at generation), each answer's target is its text and the template's end-of-turn marker, and the
context before each answer is exactly its generation prompt. A template that writes an answer differently once a
later user turn follows (Qwen3 drops the empty think block of earlier answers) gives one training sequence per
answer; one that writes no end-of-turn marker (GLM-4), or whose answer does not follow its generation prompt, is
refused (docs/models.md, "Chat templates").
"""

from collections.abc import Sequence

IGNORE_INDEX = -100
TEMPLATES = ("chatglm", "llama", "chat_template")
ROLES = ("system", "user", "assistant")

# --model_name_or_path aliases: the paper's long-context base models (the paper's tokenizers; pre_tokenize only needs
# the tokenizer) and the format each was trained with.
MODEL_ALIASES = {"chatglm": "THUDM/LongAlign-6B-64k-base", "llama": "THUDM/LongAlign-7B-64k-base"}
ALIAS_TEMPLATES = {"chatglm": "chatglm", "llama": "llama"}

# ShareGPT's speaker names -> our roles. Anything else is an unknown role.
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "chatgpt": "assistant",
                  "bard": "assistant", "bing": "assistant", "assistant": "assistant", "system": "system"}


def default_template(model: str) -> str:
    """The alias's paper format; the tokenizer's own template for anything else."""
    return ALIAS_TEMPLATES.get(model, "chat_template")


def sharegpt_to_messages(conversations: Sequence) -> list[dict]:
    """[{"from": "human"|"gpt"|"system", "value": str}] -> [{"role", "content"}] (unknown speakers keep
    their name as the role, so a later check reports them instead of silently dropping them)."""
    out = []
    for turn in conversations:
        if not isinstance(turn, dict):
            out.append(turn)  # left for the caller's check to report
            continue
        speaker = turn.get("from")
        role = SHAREGPT_ROLES.get(speaker.lower(), speaker) if isinstance(speaker, str) else speaker
        out.append({"role": role, "content": turn.get("value")})
    return out


def check_messages(messages, need_answer: bool = True) -> str | None:
    """None if `messages` is a well-formed conversation, else a short reason (the skip reasons of
    pre_tokenize.py). need_answer: the last turn must be an assistant turn (training); without it, the
    last turn must be a user turn (a prompt for generation)."""
    if not isinstance(messages, list):
        return "messages_not_a_list"
    if not messages:
        return "empty_messages"
    for m in messages:
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            return "turn_not_an_object"
        if m["role"] not in ROLES:
            return "unknown_role"
        if not isinstance(m["content"], str):
            return "content_not_a_string"
    turns = messages[1:] if messages[0]["role"] == "system" else messages
    expected = ["user", "assistant"] * (len(turns) // 2 + 1)
    if not turns or [m["role"] for m in turns] != expected[:len(turns)]:
        return "roles_out_of_order"
    if need_answer and turns[-1]["role"] != "assistant":
        return "no_final_answer"
    if not need_answer and turns[-1]["role"] != "user":
        return "no_final_user_turn"
    return None


# ---------------------------------------------------------------------------------------------
# Pieces: a conversation as [(text, is_answer), ...], context and answers alternating.

def _paper_pieces(messages: list[dict], template: str) -> list[tuple[str, bool]]:
    system = messages[0]["content"] if messages[0]["role"] == "system" else None
    turns = messages[1:] if system is not None else messages
    pieces: list[tuple[str, bool]] = []
    context = ""
    for i, m in enumerate(turns):
        if m["role"] == "assistant":
            pieces += [(context, False), (m["content"], True)]
            context = ""
            continue
        rnd = i // 2 + 1
        user = m["content"]
        if template == "chatglm":
            head = f"{system}\n\n" if (system is not None and rnd == 1) else ""
            context += ("\n\n" if rnd > 1 else "") + f"{head}[Round {rnd}]\n\n问：{user}\n\n答："
        elif template == "llama":
            if system is not None and rnd == 1:
                user = f"<<SYS>>\n{system}\n<</SYS>>\n\n{user}"
            context += ("\n\n" if rnd > 1 else "") + f"[INST]{user}[/INST]"
        else:
            raise ValueError(f"unknown paper format {template!r}; choose one of {TEMPLATES}")
    if context:
        pieces.append((context, False))
    return pieces


def _render(tokenizer, messages: list[dict], add_generation_prompt: bool) -> str:
    # enable_thinking=False: the SFT data answers without reasoning, so it is rendered as the template renders
    # a non-thinking answer (Qwen3: after an empty think block, which its non-thinking generation prompt writes;
    # SmolLM3: the /no_think system header and an empty think block in every turn). Training and generation both
    # render through here. Templates without the switch ignore it.
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                         enable_thinking=False)


PROBE = {"role": "user", "content": "\u2063"}  # a later turn, rendered after an answer to see where its turn ends


def _template_answers(messages: list[dict], tokenizer) -> list[tuple[str, str, str]]:
    """(generation prompt, answer text, the conversation rendered up to that answer) for each assistant turn.

    The prompt is the conversation before the answer rendered with the generation prompt; the conversation
    ending with the answer must start with it (else ValueError: the template writes an answer somewhere its
    generation prompt does not lead to). The answer text is what follows the prompt up to the end of the turn:
    the answer's content and the end-of-turn marker that the template writes after it whatever comes next,
    found where a user turn follows it (the next answer's prompt; after the last answer, a probe turn): e.g.
    `4821.<|im_end|>`, `4821.<|end|>`, not the newline after it nor an EOS that only a conversation's end gets.
    2n + 1 renderings for n answers."""
    turns = [k for k, m in enumerate(messages) if m["role"] == "assistant"]
    prompts = [_render(tokenizer, messages[:k], True) for k in turns]
    out, specials = [], set(tokenizer.get_added_vocab())
    for i, k in enumerate(turns):
        prompt, alone = prompts[i], _render(tokenizer, messages[:k + 1], False)
        # the same answer with a user turn after it: the next answer's prompt, or the conversation and a probe turn
        later = prompts[i + 1] if i + 1 < len(turns) else _render(tokenizer, messages[:k + 1] + [PROBE], False)
        content, rest = messages[k]["content"].strip(), alone[len(prompt):]
        at, there = rest.find(content), later.find(content, _common(prompt, later))
        if not alone.startswith(prompt) or not content or at < 0 or there < 0:
            raise ValueError("the tokenizer's chat template does not write an answer right after its generation "
                             "prompt, so answers cannot be located; use --template chatglm or llama")
        end = at + len(content)
        after = rest[end:]
        stop = _whole_tokens(after, _common(after, later[there + len(content):]), specials)
        if not after[:stop].strip():
            raise ValueError("the tokenizer's chat template writes no end-of-turn marker after an answer (GLM-4 "
                             "ends one with the next turn's <|user|>), so the model would not learn to stop; use "
                             "--template chatglm or llama")
        out.append((prompt, rest[:end + stop].rstrip(), alone))
    return out


def _common(a: str, b: str) -> int:
    """The length of the common prefix of a and b (a binary search of C-speed comparisons)."""
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if a[:mid] == b[:mid] else (lo, mid - 1)
    return lo


def _whole_tokens(text: str, n: int, specials: set[str]) -> int:
    """n, or less so that text[:n] does not end inside a special token (`<|end|>\n<|` -> `<|end|>\n`)."""
    longest = max(map(len, specials), default=0)
    for i in range(max(0, n - longest + 1), n):
        if any(text[i:j] in specials for j in range(n + 1, min(len(text), i + longest) + 1)):
            return i
    return n


def _cut(text: str, answers: list[tuple[str, str, str]] | None, users: list[str]) -> list[tuple[str, bool]]:
    """`text` as pieces, cut at each answer that it writes where the answer's own rendering does (right after the
    answer's generation prompt), marked as answers. If one of them is written otherwise (Qwen3 leaves out an
    answer's empty think block once a later user turn follows it), or `answers` is None, the text is cut around
    the user turns instead, all of it context, so that truncation (which middle-cuts the longest context piece)
    cuts a turn."""
    pieces, at, located = [], 0, answers is not None
    for prompt, answer, _ in answers or []:
        start = len(prompt)
        if start < at or not text.startswith(prompt) or not text.startswith(answer, start):
            located = False
            break
        pieces += [(text[at:start], False), (answer, True)]
        at = start + len(answer)
    if located:
        return pieces + ([(text[at:], False)] if at < len(text) else [])
    pieces, at = [], 0
    for user in users:
        start = text.find(user.strip(), at)
        if user.strip() and start >= 0:
            pieces += [(text[at:start], False), (user.strip(), False)]
            at = start + len(user.strip())
    return [p for p in pieces + [(text[at:], False)] if p[0]]


def _template_prompt(messages: list[dict], tokenizer) -> list[tuple[str, bool]]:
    """The generation prompt of a conversation ending with a user turn, as pieces (cut as training cuts it)."""
    users = [m["content"] for m in messages if m["role"] == "user"]
    try:
        answers = _template_answers(messages, tokenizer)
    except ValueError:  # an earlier answer no training sequence can hold (an empty one, say): nothing to match
        answers = None
    return _cut(_render(tokenizer, messages, True), answers, users)


def _template_rows(messages: list[dict], tokenizer) -> list[list[tuple[str, bool]]]:
    """The training sequences of a complete conversation under a chat template: every answer is a target right
    after exactly the pieces of its generation prompt (`_template_prompt` of the conversation before it).

    One sequence, the template's rendering of the whole conversation, when the template writes each answer
    there as it writes it when the conversation ends with it (most templates). Otherwise (Qwen3's template
    renders an answer after an empty think block only while no user turn follows it) one sequence cannot show
    an answer both ways, and each answer gets its own sequence: the conversation rendered up to it, earlier
    answers as context. That costs the earlier turns' tokens again, but every answer is trained exactly as
    the model sees the conversation when it writes it."""
    answers = _template_answers(messages, tokenizer)
    users = [m["content"] for m in messages if m["role"] == "user"]
    pieces = _cut(answers[-1][2], answers, users)  # (the last answer's rendering is the whole conversation's)
    if sum(answer for _, answer in pieces) == len(answers):
        return [pieces]
    rows = []
    for k, (prompt, answer, alone) in enumerate(answers):  # (roles alternate: k + 1 user turns before answer k)
        context = [(text, False) for text, _ in _cut(prompt, answers[:k], users[:k + 1])]
        tail = alone[len(prompt) + len(answer):]
        rows.append(context + [(answer, True)] + ([(tail, False)] if tail else []))
    return rows


def conversation_rows(messages: list[dict], template: str, tokenizer=None) -> list[list[tuple[str, bool]]]:
    """The training sequences of one complete conversation, as pieces: one, except under a chat template that
    renders an answer differently once a later turn follows (see `_template_rows`)."""
    if template == "chat_template":
        if getattr(tokenizer, "chat_template", None) is None:
            raise ValueError("the tokenizer has no chat template; use --template chatglm or llama")
        return _template_rows(messages, tokenizer)
    return [_paper_pieces(messages, template)]


def conversation_pieces(messages: list[dict], template: str, tokenizer=None,
                        add_generation_prompt: bool = False) -> list[tuple[str, bool]]:
    """The pieces of one conversation: with add_generation_prompt, of a conversation ending with a user turn,
    the generation prompt (its last piece is context); else of a complete conversation that is one training
    sequence (ValueError if it is several: use `conversation_rows`)."""
    if template == "chat_template" and add_generation_prompt:
        if getattr(tokenizer, "chat_template", None) is None:
            raise ValueError("the tokenizer has no chat template; use --template chatglm or llama")
        return _template_prompt(messages, tokenizer)
    rows = conversation_rows(messages, template, tokenizer)
    if len(rows) > 1:
        raise ValueError(f"this conversation is {len(rows)} training sequences under the chat template; "
                         "use conversation_rows")
    return rows[0]


def build_prompt(messages: list[dict], template: str, tokenizer) -> str:
    """The text the model sees before it answers the last user turn, special tokens written as text (the
    tokenizer's prefix, the EOS after each earlier answer in the paper formats; a chat template writes
    its own), i.e. the decoding of `encode_prompt`. For ids use `encode_prompt`, which tokenizes exactly
    as training did; `tokenizer(text, add_special_tokens=False)` can differ at piece boundaries."""
    pieces = conversation_pieces(messages, template, tokenizer, add_generation_prompt=True)
    if template == "chat_template":
        return "".join(text for text, _ in pieces)
    eos = tokenizer.eos_token
    return tokenizer.decode(special_prefix(tokenizer)) + "".join(text + eos if answer else text
                                                                for text, answer in pieces)


# ---------------------------------------------------------------------------------------------
# Token ids.

def special_prefix(tokenizer) -> list[int]:
    """The ids the tokenizer puts before any text when it adds special tokens ([1] for Llama,
    [gMASK, sop] for ChatGLM3, [] for Qwen2), or [bos] if it adds none but has a BOS token."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    prefix = []
    for p in range(len(full) - len(plain) + 1):
        if full[p:p + len(plain)] == plain:
            prefix = list(full[:p])
            break
    if not prefix and tokenizer.bos_token_id is not None:
        prefix = [tokenizer.bos_token_id]
    return prefix


def token_ids(tokenizer, texts: list[str], split_special_tokens: bool = False) -> list[list[int]]:
    """Ids of many texts, no special tokens added. A fast tokenizer is called through its Rust backend's
    encode_batch_fast (all cores, no character offsets: the same ids as tokenizer(texts) without the
    offset bookkeeping); other tokenizers through their own batched call."""
    if not texts:
        return []
    backend = getattr(tokenizer, "_tokenizer", None)
    if backend is None or not hasattr(backend, "encode_batch_fast"):
        return tokenizer(texts, add_special_tokens=False, split_special_tokens=split_special_tokens)["input_ids"]
    before = backend.encode_special_tokens
    backend.encode_special_tokens = split_special_tokens
    try:
        return [e.ids for e in backend.encode_batch_fast(texts, add_special_tokens=False)]
    finally:
        backend.encode_special_tokens = before


def encode_pieces(batch: list[list[tuple[str, bool]]], template: str, tokenizer,
                  prefix: list[int] | None = None) -> list[tuple[list[list[int]], list[bool]]]:
    """Tokenize the pieces of many conversations in one batched call.

    Returns, per conversation, (token ids of each piece, is_answer of each piece); the special prefix is
    the first piece (context) and, in the paper formats, the EOS is the last token of each answer piece.
    The paper formats contain no special tokens, so any special-token text inside a user's or assistant's
    content is tokenized as plain text (split_special_tokens): a user cannot inject an EOS. A chat
    template writes its own special tokens as text, so there they are parsed (as apply_chat_template does).
    """
    paper = template != "chat_template"
    if prefix is None:
        prefix = special_prefix(tokenizer) if paper else []
    texts = [text for pieces in batch for text, _ in pieces]
    ids = token_ids(tokenizer, texts, split_special_tokens=paper)
    out, at = [], 0
    eos = [tokenizer.eos_token_id]
    for pieces in batch:
        piece_ids, is_answer = [list(prefix)], [False]
        for _text, answer in pieces:
            piece_ids.append(ids[at] + eos if (answer and paper) else ids[at])
            is_answer.append(answer)
            at += 1
        out.append((piece_ids, is_answer))
    return out


def join_pieces(piece_ids: list[list[int]], is_answer: list[bool]) -> tuple[list[int], list[int]]:
    """Concatenate piece ids into (input_ids, labels); labels are unshifted, IGNORE_INDEX off answers."""
    input_ids, labels = [], []
    for ids, answer in zip(piece_ids, is_answer, strict=True):
        input_ids += ids
        labels += ids if answer else [IGNORE_INDEX] * len(ids)
    return input_ids, labels


def encode_conversations(conversations: list[list[dict]], template: str, tokenizer
                         ) -> list[tuple[list[int], list[int]]]:
    """[(input_ids, labels)] of complete conversations, exactly as pre_tokenize.py stores them (before any
    truncation): one per conversation, in order, or several where `conversation_rows` makes several."""
    batch = [row for m in conversations for row in conversation_rows(m, template, tokenizer)]
    return [join_pieces(*e) for e in encode_pieces(batch, template, tokenizer)]


def encode_prompt(messages: list[dict], template: str, tokenizer) -> list[int]:
    """The prompt ids for generation: the same pieces and the same tokenization as training, ending
    where the model starts the answer to the last user turn."""
    pieces = conversation_pieces(messages, template, tokenizer, add_generation_prompt=True)
    return join_pieces(*encode_pieces([pieces], template, tokenizer)[0])[0]


def middle_cut(seq: Sequence, keep: int) -> Sequence:
    """Keep the first keep//2 and the last keep - keep//2 items (the paper's middle truncation)."""
    if len(seq) <= keep:
        return seq
    head = keep // 2
    return seq[:head] + seq[len(seq) - (keep - head):]
