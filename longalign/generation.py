"""Generation helpers shared by LongBench-Chat, the Needle test and the chat demo.

- `truncate_text_middle`: keep the head and the tail of an over-long input (the middle of a long
  document matters least, and the question usually sits at the end), measured with the model's own
  tokenizer.
- `prompt_ids`: the exact ids the model reads (chat.encode_prompt: the training tokenization).
- `choose_template`: which chat format the model sees. The originals applied no template to models
  they did not know by name, the most common reason for bad reproduced scores; here `auto` takes the
  tokenizer's chat template when it has one, else the paper's format for the model family.
- `Generator`: answers a conversation in-process (HF `generate`) or through any OpenAI-compatible
  server (vLLM, TGI, ...), seeded per call so a resumed run writes what an uninterrupted one would.
- `JsonlTable`: a resumable JSONL file keyed by case: finished rows are kept and never redone, a
  half-written last line (a killed run) is dropped, and the file never holds two rows for one key.
- `GenerationArgs`, `check_settings`: the flags every evaluation script shares for answering (its `Args`
  inherits them), and the guard that keeps a resumed folder from mixing results of other settings.
"""

import json
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from longalign.chat import encode_prompt, middle_cut
from longalign.models import LLAMA_FAMILY
from longalign.scriptargs import UserError
from longalign.tokenization import load_tokenizer

TEMPLATES = ("auto", "chat_template", "llama", "chatglm", "none")
# greedy decoding: the sampling filters do not apply, and None keeps generate() from warning about the checkpoint's
GREEDY = {"temperature": None, "top_p": None, "top_k": None}


# ---------------------------------------------------------------------------------------------
# Middle truncation

def truncate_text_middle(text: str, tokenizer, max_length: int) -> tuple[str, int, bool]:
    """(text that fits in max_length tokens, tokens before truncation, whether it was truncated):
    the first max_length//2 and the last max_length - max_length//2 tokens (chat.middle_cut)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) <= max_length:
        return text, len(ids), False
    return tokenizer.decode(middle_cut(ids, max_length), skip_special_tokens=True), len(ids), True


# ---------------------------------------------------------------------------------------------
# Chat format

def choose_template(requested: str, tokenizer, model_type: str | None) -> tuple[str, str]:
    """(template, why) for --template auto|chat_template|llama|chatglm|none."""
    if requested not in TEMPLATES:
        raise UserError(f"--template {requested} is not one of {'|'.join(TEMPLATES)}; pick one of them")
    has_own = bool(getattr(tokenizer, "chat_template", None))
    if requested == "chat_template" and not has_own:
        raise UserError("--template chat_template was asked but the tokenizer has no chat template; "
                        "use --template auto, llama, chatglm or none")
    if requested != "auto":
        return requested, "chosen by --template"
    if has_own:
        return "chat_template", "auto: the tokenizer has a chat template"
    if model_type == "chatglm":
        return "chatglm", "auto: no chat template, ChatGLM model -> the paper's [Round i] format"
    if model_type in LLAMA_FAMILY:
        return "llama", f"auto: no chat template, {model_type} model -> the paper's [INST] format"
    return "none", f"auto: no chat template and no paper format for model type {model_type!r} -> raw text"


def prompt_ids(messages: list[dict], template: str, tokenizer) -> list[int]:
    """The ids the model reads before it answers the last user turn: exactly the pieces and the
    tokenization of training (chat.encode_prompt); `none` = the raw text with the tokenizer's specials."""
    if template == "none":
        return tokenizer("\n\n".join(m["content"] for m in messages))["input_ids"]
    return encode_prompt(messages, template, tokenizer)


# ---------------------------------------------------------------------------------------------
# The flags of every script that answers with a model, and the settings a resumed folder was made with

@dataclass(kw_only=True)
class GenerationArgs:
    """Which tokenizer and chat format, in-process or through a server: LongBench-Chat, LongBench and MT-Bench
    inherit these into their own `Args` (keyword-only, so a script's required fields may come after them)."""

    tokenizer: str | None = field(default=None, metadata={
        "help": "tokenizer folder if the model folder has none (default: the model's)"})
    template: str = field(default="auto", metadata={
        "help": "chat format: auto (the tokenizer's chat template, else the paper's format of the model "
                "family) | chat_template | llama | chatglm | none"})
    gen_base_url: str | None = field(default=None, metadata={
        "help": "generate through this OpenAI-compatible server (e.g. vLLM, http://host:8000/v1) instead of in-process"})
    gen_model: str | None = field(default=None, metadata={"help": "model name served at --gen_base_url"})
    trust_remote_code: bool = field(default=False, metadata={
        "help": "allow a tokenizer that is the checkpoint's own code (not needed for ChatGLM3)"})
    batch_size: int = field(default=1, metadata={
        "help": "in-process greedy decoding: answer this many inputs as one left-padded batch (the same answers "
                "up to float rounding; a CPU decodes 8 short answers in about the time of one). 1 = one at a "
                "time: at 64k tokens a batch multiplies the KV cache"})

    def __post_init__(self):
        if self.template not in TEMPLATES:
            raise UserError(f"--template {self.template} is not one of {'|'.join(TEMPLATES)}; pick one")
        if self.batch_size < 1:
            raise UserError(f"--batch_size {self.batch_size} must be >= 1")


def check_settings(out: Path, parts: dict[str, tuple[dict, bool]]) -> None:
    """parts: name ("generation", "judge") -> (its settings as flag -> value, whether results made with that
    part exist in `out`). A resumed run with other settings would mix two experiments in one file: refuse it,
    naming the flags; else record the settings in out/settings.json."""
    path = out / "settings.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    for part, (new, used) in parts.items():
        if used and old.get(part) and old[part] != new:
            diff = ", ".join(f"--{k} {old[part].get(k)!r} (now {v!r})" for k, v in new.items() if old[part].get(k) != v)
            raise UserError(f"{out} holds {part} results made with {diff}; use those settings or a new --output_dir")
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({part: new for part, (new, _) in parts.items()}, indent=1))


# ---------------------------------------------------------------------------------------------
# Generation, in-process or through a server

class Generator:
    """generate(messages) -> {"text", "prompt_tokens"}.

    In-process: loads model + tokenizer from model_path (the tokenizer from tokenizer_path if given). Server: sends the messages to
    base_url/chat/completions as `server_model` (the server applies the model's chat template; the
    local tokenizer from model_path is still used for truncation).
    """

    def __init__(self, model_path: str, template: str = "auto", base_url: str | None = None,
                 server_model: str | None = None, max_new_tokens: int = 1024, temperature: float = 1.0,
                 seed: int = 42, trust_remote_code: bool = False, timeout: float = 600.0, max_retries: int = 6,
                 tokenizer_path: str | None = None):
        from transformers import PreTrainedConfig

        self.max_new_tokens, self.temperature, self.seed = max_new_tokens, temperature, seed
        # the loader of every stage (ChatGLM3 without remote code; a failure is one sentence naming the fix)
        self.tokenizer = load_tokenizer(tokenizer_path or model_path, trust_remote_code=trust_remote_code)
        self.model, self.client, self.server_model = None, None, server_model
        if base_url:
            from openai import OpenAI

            if not server_model:
                raise UserError("--gen_base_url needs --gen_model, the model name the server serves")
            # vLLM and friends accept any key; the key, if any, still only comes from the environment.
            self.client = OpenAI(api_key=os.environ.get("OPENAI_API_KEY") or "EMPTY", base_url=base_url,
                                 timeout=timeout, max_retries=max_retries)
            self.template, self.template_reason = "server", f"the server's own chat template ({base_url})"
            return
        # The config as a plain dict: AutoConfig would need ChatGLM's remote code just to read model_type.
        model_type = PreTrainedConfig.get_config_dict(model_path)[0].get("model_type")
        self.template, self.template_reason = choose_template(template, self.tokenizer, model_type)
        self.model = load_causal_lm(model_path, trust_remote_code)

    @classmethod
    def from_args(cls, args, max_new_tokens: int = 1024, temperature: float = 1.0, seed: int = 42) -> "Generator":
        """The generator a script's flags ask for: --model_name_or_path and GenerationArgs' --tokenizer,
        --template, --gen_base_url, --gen_model, --trust_remote_code. Prints the chat format it chose."""
        gen = cls(args.model_name_or_path, args.template, args.gen_base_url, args.gen_model, max_new_tokens,
                  temperature, seed, args.trust_remote_code, tokenizer_path=args.tokenizer)
        print(f"template: {gen.template} ({gen.template_reason})")
        return gen

    def generate(self, messages: list[dict], streamer=None, max_new_tokens: int | None = None,
                 temperature: float | None = None) -> dict:
        """streamer: a transformers streamer (e.g. TextStreamer) that prints tokens as they come (in-process).
        max_new_tokens / temperature: this call's own (LongBench's per-task answer lengths, MT-Bench's
        per-category temperatures); None = the generator's."""
        max_new_tokens = self.max_new_tokens if max_new_tokens is None else max_new_tokens
        temperature = self.temperature if temperature is None else temperature
        if self.client is not None:
            resp = self.client.chat.completions.create(
                model=self.server_model, messages=messages, max_tokens=max_new_tokens,
                temperature=temperature, seed=self.seed)
            usage = getattr(resp, "usage", None)
            return {"text": (resp.choices[0].message.content or "").strip(),
                    "prompt_tokens": getattr(usage, "prompt_tokens", None)}
        import torch

        ids = torch.tensor([prompt_ids(messages, self.template, self.tokenizer)], device=self.model.device)  # (1, T)
        n = ids.shape[1]
        torch.manual_seed(self.seed)  # per call: a resumed run samples what an uninterrupted one would
        # Sampling as FastChat's llm_judge samples: only do_sample and the temperature are passed, so the
        # checkpoint's generation_config (its top_p, if any) and transformers' defaults (top_k = 50) filter the
        # vocabulary. Greedy: the filters do not apply, and passing None keeps generate from warning about them.
        sampling = {"temperature": temperature} if temperature > 0 else GREEDY
        with torch.no_grad():
            out = self.model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                do_sample=temperature > 0, **sampling,
                pad_token_id=self.pad_id, streamer=streamer)
        return {"text": self.tokenizer.decode(out[0, n:], skip_special_tokens=True).strip(), "prompt_tokens": n}

    @property
    def pad_id(self) -> int:
        """What generate() pads with (a finished row of a batch too): the pad token, else EOS."""
        return self.tokenizer.pad_token_id or self.tokenizer.eos_token_id

    def generate_batch(self, conversations: list[list[dict]], max_new_tokens: int | None = None,
                       temperature: float | None = None) -> list[dict]:
        """generate() for several conversations, in their order. In-process greedy decoding runs them as ONE
        left-padded batch: a decoding step reads every weight once whatever the batch, so a batch answers faster
        than one at a time (bench/bench_generation.py: 2.2-2.4x for 8 prompts, SmolLM2-135M, 2 CPU cores). The answers are one-at-a-time's up to float rounding (tests/test_generation.py:
        token-equal). Sampling (each call seeded on its own, so a sample never depends on its batch) and a
        server answer one call at a time."""
        temperature = self.temperature if temperature is None else temperature
        if self.client is not None or temperature > 0 or len(conversations) < 2:
            return [self.generate(m, max_new_tokens=max_new_tokens, temperature=temperature) for m in conversations]
        import torch

        max_new_tokens = self.max_new_tokens if max_new_tokens is None else max_new_tokens
        rows = [prompt_ids(m, self.template, self.tokenizer) for m in conversations]
        T = max(map(len, rows))
        ids = torch.full((len(rows), T), self.pad_id, dtype=torch.long)                  # (B, T), padded on the left
        mask = torch.zeros_like(ids)
        for i, row in enumerate(rows):
            ids[i, T - len(row):], mask[i, T - len(row):] = torch.tensor(row), 1
        with torch.no_grad():  # generate() counts positions from the mask: each row starts at position 0
            out = self.model.generate(
                input_ids=ids.to(self.model.device), attention_mask=mask.to(self.model.device),
                max_new_tokens=max_new_tokens, do_sample=False, **GREEDY, pad_token_id=self.pad_id)
        eos = self.model.generation_config.eos_token_id
        eos = set(eos if isinstance(eos, list) else [eos]) - {None}
        answers = []
        for i, row in enumerate(rows):
            new = out[i, T:].tolist()
            end = next((j + 1 for j, t in enumerate(new) if t in eos), len(new))  # a finished row is padded on
            answers.append({"text": self.tokenizer.decode(new[:end], skip_special_tokens=True).strip(),
                            "prompt_tokens": len(row)})
        return answers


def load_causal_lm(model_path: str, trust_remote_code: bool = False):
    """The model (our model files for llama/chatglm types, models.load_model) in eval mode, on the GPU
    in bf16 if there is one, else on the CPU in fp32."""
    import torch

    from longalign.models import load_model

    cuda = torch.cuda.is_available()
    kwargs = {"trust_remote_code": True} if trust_remote_code else {}
    model = load_model(model_path, dtype=torch.bfloat16 if cuda else torch.float32, **kwargs)
    return model.to("cuda" if cuda else "cpu").eval()


# ---------------------------------------------------------------------------------------------
# Resumable JSONL

def read_jsonl(path: Path, what: str) -> list[dict]:
    """All rows of a JSONL file another step wrote; a missing or broken file names that step."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist; run {what} first or fix the flag")
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            raise UserError(f"{path} line {n} is not valid JSON; run {what} again") from None
    return rows


class JsonlTable:
    """Rows of a JSONL file by key. Rows for which keep(row) is False (e.g. failed judgements that
    should be retried) are dropped when the file is opened, so a retry replaces them."""

    def __init__(self, path: str | Path, key: Callable[[dict], object], keep: Callable[[dict], bool] = None):
        self.path, self.key, self.lock = Path(path), key, threading.Lock()
        self.rows: dict = {}
        lines, dirty = [], False
        if self.path.exists():
            lines = self.path.read_text(encoding="utf-8").splitlines()
        for line in lines:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                dirty = True  # a line cut short by a killed run: redo that case
                continue
            if keep is not None and not keep(row):
                dirty = True
                continue
            dirty |= self.key(row) in self.rows
            self.rows[self.key(row)] = row
        if dirty:
            self._rewrite()

    def _rewrite(self):
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            for row in self.rows.values():
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        os.replace(tmp, self.path)

    def __contains__(self, key) -> bool:
        return key in self.rows

    def __len__(self) -> int:
        return len(self.rows)

    def append(self, row: dict) -> None:
        """Write one finished row (thread-safe); a key already present is a bug in the caller."""
        k = self.key(row)
        with self.lock:
            if k in self.rows:
                raise ValueError(f"{self.path} already holds a row for {k}")
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
            self.rows[k] = row
