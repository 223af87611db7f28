"""An LLM judge behind any OpenAI-compatible endpoint (GPT-4, a vLLM server, a local test server).

The judge reads a filled-in prompt and answers with a rating written as `[[n]]` (1-10). Rules, the
same for LongBench-Chat and the Needle test:

- the API key comes only from the environment (OPENAI_API_KEY), never from a file or a flag;
- every request has a timeout, and the `openai` client retries timeouts, 429s and 5xx with
  exponential backoff (0.5 s, 1 s, 2 s, ... capped at 8 s, or the server's Retry-After), `max_retries`
  times, so "429, then 500, then 500" on one request still succeeds;
- the score is the number in the LAST `[[...]]` of the reply (a judge often quotes the format
  "[[rating]]" before it gives its rating);
- a reply without a usable score is asked again, up to `max_reasks` more times; after that, or when the
  API keeps failing past the retries, the judgement is recorded as failed with the reason. Never a
  crash, never a silent zero.
"""

import os
import re
import time
from dataclasses import dataclass, field

from longalign.scriptargs import UserError

# The last [[...]] that holds a rating wins; a rating is "7", "7.", "7.5" or "7/10" within the scale. A judge that
# rates and then quotes the format ("Rating: [[7]] ... in the format [[rating]]") is read as 7, as FastChat reads it.
_RATING = re.compile(r"\[\[([^\[\]]*)\]\]")
_NUMBER = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*(?:/\s*10\s*)?$")


def parse_score(reply: str | None, low: float = 1, high: float = 10) -> float | None:
    """The rating in the last `[[...]]` of reply that holds one in [low, high], or None if none does."""
    for inside in reversed(_RATING.findall(reply or "")):
        m = _NUMBER.match(inside)
        if m and low <= float(m.group(1)) <= high:
            return float(m.group(1))
    return None


def api_key(alternative: str = "") -> str:
    """OPENAI_API_KEY; scripts call it before they generate anything, so a missing key is not found an hour in.
    alternative: another way out to name in the message (", or pass --do_judge false ...")."""
    key = os.environ.get("OPENAI_API_KEY")
    if not key:
        raise UserError(f"OPENAI_API_KEY is not set; export it (any non-empty value for a local judge server) "
                        f"before running the judge{alternative}")
    return key


def make_client(base_url: str | None = None, timeout: float = 120.0, max_retries: int = 6):
    """An `openai.OpenAI` client: key from OPENAI_API_KEY, base URL from the argument or
    OPENAI_BASE_URL (else api.openai.com)."""
    from openai import OpenAI

    return OpenAI(api_key=api_key(), base_url=base_url or os.environ.get("OPENAI_BASE_URL") or None,
                  timeout=timeout, max_retries=max_retries)


@dataclass(kw_only=True)
class JudgeArgs:
    """The judge's flags, shared by LongBench-Chat and MT-Bench (their `Args` inherit them)."""

    judge_model: str = field(default="gpt-4", metadata={"help": "judge model name (the paper's: gpt-4)"})
    judge_base_url: str | None = field(default=None, metadata={
        "help": "judge endpoint (OpenAI-compatible); default OPENAI_BASE_URL, else api.openai.com. "
                "The key is read from OPENAI_API_KEY only"})
    judge_timeout: float = field(default=120.0, metadata={"help": "seconds before a judge request is abandoned and retried"})
    judge_max_retries: int = field(default=6, metadata={"help": "retries of one request on timeouts, 429 and 5xx (backoff)"})
    judge_max_reasks: int = field(default=5, metadata={"help": "re-asks when a reply has no [[rating]]; then the judgement fails"})
    retry_failed: bool = field(default=True, metadata={"help": "on a re-run, judge again the judgements that failed"})
    concurrency: int = field(default=4, metadata={"help": "parallel requests to the judge (and to --gen_base_url)"})


@dataclass
class Judgement:
    score: float | None        # None = failed
    reply: str | None          # the last reply received (None if the API never answered)
    failure: str | None        # why it failed, None if scored
    asks: int                  # replies requested (1 + re-asks); API retries are inside each ask
    system_fingerprint: str | None
    seconds: float

    def as_record(self) -> dict:
        return {"score": self.score, "failure": self.failure, "judge_reply": self.reply, "asks": self.asks,
                "system_fingerprint": self.system_fingerprint, "seconds": round(self.seconds, 3)}


def judge(client, model: str, prompt: str, system_prompt: str | None = None, max_reasks: int = 5,
          temperature: float = 0.0, max_tokens: int | None = None) -> Judgement:
    """Ask the judge to rate; re-ask on unparsable replies; never raises for API trouble."""
    import openai

    messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + \
        [{"role": "user", "content": prompt}]
    t0, reply, fingerprint = time.monotonic(), None, None
    for ask in range(1, max_reasks + 2):
        try:
            resp = client.chat.completions.create(model=model, messages=messages, temperature=temperature,
                                                  max_tokens=max_tokens)
        except openai.APIError as e:  # retries already exhausted inside the client (or a 4xx)
            return Judgement(None, reply, f"API error after retries: {type(e).__name__}: {str(e)[:200]}",
                             ask, fingerprint, time.monotonic() - t0)
        fingerprint = getattr(resp, "system_fingerprint", None)
        reply = resp.choices[0].message.content if resp.choices else None
        score = parse_score(reply)
        if score is not None:
            return Judgement(score, reply, None, ask, fingerprint, time.monotonic() - t0)
    return Judgement(None, reply, f"no [[rating]] in {max_reasks + 1} replies", max_reasks + 1, fingerprint,
                     time.monotonic() - t0)
