"""Generation helpers shared by LongBench-Chat, the Needle test and the chat demo.

- `middle_truncate`: keep the head and the tail of an over-long input (the middle of a long document
  matters least, and the question usually sits at the end), measured with the model's own tokenizer.
- `choose_template`: which chat format the model sees. The originals applied no template to models
  they did not know by name, the most common reason for bad reproduced scores; here `auto` takes the
  tokenizer's chat template when it has one, else the paper's format for the model family.
- `Generator`: answers a conversation in-process (HF `generate`) or through any OpenAI-compatible
  server (vLLM, TGI, ...), seeded per call so a resumed run writes what an uninterrupted one would.
- `JsonlTable`: a resumable JSONL file keyed by case: finished rows are kept and never redone, a
  half-written last line (a killed run) is dropped, and the file never holds two rows for one key.
"""

import json
import os
import threading
from collections.abc import Callable
from pathlib import Path

from longalign.scriptargs import UserError

TEMPLATES = ("auto", "chat_template", "llama", "chatglm", "none")
LLAMA_FAMILY = ("llama", "mistral", "mixtral")


# ---------------------------------------------------------------------------------------------
# Middle truncation

def middle_truncate(ids: list[int], max_length: int) -> list[int]:
    """ids if they fit, else the first max_length//2 and the last max_length - max_length//2."""
    if len(ids) <= max_length:
        return list(ids)
    head = max_length // 2
    return list(ids[:head]) + list(ids[len(ids) - (max_length - head):])


def truncate_text_middle(text: str, tokenizer, max_length: int) -> tuple[str, int, bool]:
    """(text that fits in max_length tokens, tokens before truncation, whether it was truncated).
    The two halves are decoded separately and joined, so no token is invented at the cut."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) <= max_length:
        return text, len(ids), False
    head = max_length // 2
    kept = (tokenizer.decode(ids[:head], skip_special_tokens=True)
            + tokenizer.decode(ids[len(ids) - (max_length - head):], skip_special_tokens=True))
    return kept, len(ids), True


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


def render_prompt(messages: list[dict], template: str, tokenizer) -> str:
    """The text the model reads before it answers the last user turn."""
    if template == "none":
        return "\n\n".join(m["content"] for m in messages)
    from longalign.chat import build_prompt

    return build_prompt(messages, template, tokenizer)


# ---------------------------------------------------------------------------------------------
# Generation, in-process or through a server

class Generator:
    """generate(messages) -> {"text", "prompt_tokens"}.

    In-process: loads model + tokenizer from model_path. Server: sends the messages to
    base_url/chat/completions as `server_model` (the server applies the model's chat template; the
    local tokenizer from model_path is still used for truncation).
    """

    def __init__(self, model_path: str, template: str = "auto", base_url: str | None = None,
                 server_model: str | None = None, max_new_tokens: int = 1024, temperature: float = 1.0,
                 seed: int = 42, trust_remote_code: bool = False, timeout: float = 600.0, max_retries: int = 6):
        from transformers import AutoConfig, AutoTokenizer

        self.max_new_tokens, self.temperature, self.seed = max_new_tokens, temperature, seed
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as e:
            raise UserError(f"cannot load a tokenizer from --model_path {model_path} ({str(e)[:120]}); "
                            "pass a local model folder or a hub id") from None
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
        config = AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code)
        self.template, self.template_reason = choose_template(template, self.tokenizer, config.model_type)
        self.model = load_causal_lm(model_path, trust_remote_code)

    def generate(self, messages: list[dict], streamer=None) -> dict:
        """streamer: a transformers streamer (e.g. TextStreamer) that prints tokens as they come (in-process)."""
        if self.client is not None:
            resp = self.client.chat.completions.create(
                model=self.server_model, messages=messages, max_tokens=self.max_new_tokens,
                temperature=self.temperature, seed=self.seed)
            usage = getattr(resp, "usage", None)
            return {"text": (resp.choices[0].message.content or "").strip(),
                    "prompt_tokens": getattr(usage, "prompt_tokens", None)}
        import torch

        prompt = render_prompt(messages, self.template, self.tokenizer)
        # A chat template writes its own special tokens (BOS included); the paper formats do not.
        enc = self.tokenizer(prompt, return_tensors="pt", add_special_tokens=self.template != "chat_template")
        enc = {k: v.to(self.model.device) for k, v in enc.items()}
        n = enc["input_ids"].shape[1]
        torch.manual_seed(self.seed)  # per call: a resumed run samples what an uninterrupted one would
        sample = self.temperature > 0
        with torch.no_grad():
            out = self.model.generate(
                **enc, max_new_tokens=self.max_new_tokens, do_sample=sample,
                temperature=self.temperature if sample else None, top_p=None if sample else None,
                top_k=None, pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
                streamer=streamer)
        return {"text": self.tokenizer.decode(out[0, n:], skip_special_tokens=True).strip(), "prompt_tokens": n}


def load_causal_lm(model_path: str, trust_remote_code: bool = False):
    """The model in eval mode on the GPU if there is one (bf16), else on the CPU (fp32)."""
    import torch
    from transformers import AutoModelForCausalLM

    cuda = torch.cuda.is_available()
    model = AutoModelForCausalLM.from_pretrained(model_path, trust_remote_code=trust_remote_code,
                                                 dtype=torch.bfloat16 if cuda else torch.float32)
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
