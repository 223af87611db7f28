"""A local OpenAI-compatible server that misbehaves on purpose, to test judges and resumable runs.

It answers POST /v1/chat/completions on 127.0.0.1. What it does with a request is decided by a marker
that the test data puts in the question, so every case's fate is known in advance and stays the same
under concurrency:

    {{judge case=3 score=7 faults=429,500,slow,garbage}}

- `faults`: served in order to this case's first requests: `429` (rate limit, with a short
  Retry-After), `500` (server error), `slow` (the reply comes after `slow_s` seconds, past the client's
  timeout), `garbage` (a 200 reply with no rating in it). After them the case is answered normally.
- `score`: the rating of the normal reply, written as `[[7]]` at the end, after a decoy "[[rating]]"
  so that only a parser that takes the LAST [[...]] gets it right. `score=none`: every reply is
  garbage, so the judgement must end as failed.
- no marker: the reply of the rubric judge (tools/rubric_judge.py: token F1 of the answer against the
  reference answer in the prompt, mapped to 1-10; no rating if the prompt has neither).
- a request whose model name starts with `echo` is a generation request (LongBench-Chat's
  `--gen_base_url`): the reply repeats the last 80 characters of the user message; no faults.

It counts requests per case so tests can prove that a resumed run asked nothing again.

Run as:
    python -m tools.fault_server --port 8765      # then OPENAI_BASE_URL=http://127.0.0.1:8765/v1
"""

import json
import re
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from longalign.judge import parse_score
from longalign.scriptargs import parse_args, run_main
from tools import rubric_judge

MARKER = re.compile(r"\{\{judge ([^}]*)\}\}")
GARBAGE = "This answer is hard to rate; I would put it somewhere in the middle of the scale."


def marker(case: int, score: int | None, faults: tuple[str, ...] = ()) -> str:
    """The text to put in a test question so that this server treats the case as described."""
    s = "none" if score is None else str(score)
    return f"{{{{judge case={case} score={s} faults={','.join(faults)}}}}}"


class FaultServer:
    """Start with `with FaultServer() as srv:`; `srv.base_url` ends in /v1."""

    def __init__(self, port: int = 0, slow_s: float = 3.0, retry_after_ms: int = 20):
        self.slow_s, self.retry_after_ms = slow_s, retry_after_ms
        self.lock = threading.Lock()
        self.requests: Counter = Counter()   # key -> requests seen (judge cases by "case=N", else "other")
        self.served: Counter = Counter()     # fault kind or "ok" -> count
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()

    def reset_counts(self):
        with self.lock:
            self.requests.clear()
            self.served.clear()

    # -- deciding a reply ------------------------------------------------------------------------
    def decide(self, model: str, prompt: str) -> tuple[str, str]:
        """(kind, content): kind is one of 429, 500, slow, garbage, ok, echo, rubric."""
        if model.startswith("echo"):
            with self.lock:
                self.requests["echo"] += 1
            return "echo", "Answer: " + prompt[-80:]
        m = MARKER.search(prompt)
        if not m:
            content = rubric_judge.reply(prompt)
            kind = "rubric" if parse_score(content) is not None else "garbage"
            with self.lock:
                self.requests["other"] += 1
                self.served[kind] += 1
            return kind, content
        fields = dict(kv.split("=", 1) for kv in m.group(1).split())
        key = f"case={fields['case']}" if "case" in fields else "other"
        with self.lock:
            n = self.requests[key]
            self.requests[key] += 1
        faults = [f for f in fields.get("faults", "").split(",") if f]
        kind = faults[n] if n < len(faults) else "ok"
        score = fields["score"]
        if kind in ("ok", "slow") and score == "none":
            kind = "garbage"
        with self.lock:
            self.served[kind] += 1
        if kind == "garbage":
            return kind, GARBAGE
        return kind, (f"The answer is compared with the reference. The required format is [[rating]]. "
                      f"Rating: [[{score}]]")

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def _send(self, status: int, body: dict, headers: dict | None = None):
                data = json.dumps(body).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client timed out and left: exactly what a slow reply is for

            def do_POST(self):
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    return self._send(404, {"error": {"message": f"no route {self.path}"}})
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                model = body.get("model", "")
                users = [m.get("content", "") for m in body.get("messages", []) if m.get("role") == "user"]
                kind, content = server.decide(model, users[-1] if users else "")
                if kind in ("429", "500"):
                    return self._send(int(kind), {"error": {"message": f"injected {kind}", "type": "injected"}},
                                      {"retry-after-ms": str(server.retry_after_ms)})
                if kind == "slow":
                    time.sleep(server.slow_s)
                self._send(200, {
                    "id": f"chatcmpl-{int(time.time() * 1e6)}", "object": "chat.completion",
                    "created": int(time.time()), "model": model, "system_fingerprint": "fp_fault_server",
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": content}}],
                    "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
                })

        return Handler


def _interrupt(*_):
    raise KeyboardInterrupt


def serve(port: int, what: str, slow_s: float = 3.0, retry_after_ms: int = 20) -> None:
    """Serve until Ctrl-C or SIGTERM (kill PID), then print the request counts."""
    signal.signal(signal.SIGTERM, _interrupt)
    with FaultServer(port, slow_s, retry_after_ms) as srv:
        print(f"{what} at {srv.base_url} (Ctrl-C to stop)", flush=True)
        try:
            while srv.thread.is_alive():
                srv.thread.join(0.5)  # a short join, so the signal is handled promptly
        except KeyboardInterrupt:
            pass
        print(f"requests: {dict(srv.requests)}; served: {dict(srv.served)}", flush=True)


@dataclass
class Args:
    port: int = field(default=8765, metadata={"help": "port on 127.0.0.1"})
    slow_s: float = field(default=3.0, metadata={"help": "delay of a 'slow' reply in seconds"})
    retry_after_ms: int = field(default=20, metadata={"help": "Retry-After sent with 429/500"})


def main(argv=None):
    (args,) = run_main(lambda a: parse_args((Args,), a), argv)
    serve(args.port, "fault server", args.slow_s, args.retry_after_ms)


if __name__ == "__main__":
    main()
