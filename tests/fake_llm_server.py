"""A fault-injecting OpenAI-compatible server for tests: in-process, loopback only, random port, one thread each.

    with FakeLLMServer(reply="3") as srv:              # srv.base_url == "http://127.0.0.1:<port>/v1"
        srv.queue(Status(429), Status(500), Reply("4"))  # the next three requests, in arrival order
        ...
        srv.bodies                                      # every request body received (JSON dicts)
        srv.max_in_flight                               # the most requests it was handling at once

Behaviours (queued per request; when the queue is empty the default reply is used):
    Reply(text, digits=None)  200 with `text`; when the request asks for logprobs, the first token carries
                              top_logprobs with the probabilities `digits` ({"1": p1, ...}) or a one-hot on `text`.
                              On /v1/completions (a text completion): `finish_reason` and `prompt_tokens` (default
                              None: the prompt's token-id count, or 0 (unknown) for a text prompt) are what usage
                              reports
    Status(code)              an OpenAI-style error body with that HTTP status (429, 500, 401, 404, ...)
    Delay(seconds, then)      sleep, then behave as `then` (default: the default reply); beyond the client timeout
    Garbage()                 200 with a body that is not JSON
    Raw(body, content_type)   200 with exactly `body` (str), e.g. truncated JSON or `{"foo": 1}`; content_type
                              defaults to application/json
Run as a script (`python tests/fake_llm_server.py --port 8765 --latency 0.2`) for benchmarks by hand.
"""

from __future__ import annotations

import argparse
import json
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable


@dataclass
class Reply:
    text: str
    digits: dict | None = None
    finish_reason: str = "stop"
    prompt_tokens: int | None = None
    logprobs: dict | None = None  # a text completion's `logprobs` object as sent (e.g. echoed prompt logprobs)
    completion_tokens: int | None = None  # usage.completion_tokens of a text completion (None: ~len(text) / 4)


@dataclass
class Status:
    code: int


@dataclass
class Delay:
    seconds: float
    then: Any = None


@dataclass
class Garbage:
    pass


@dataclass
class Raw:
    body: str
    content_type: str = "application/json"


@dataclass
class FakeLLMServer:
    """See the module docstring. `reply` is the default text, or a callable body -> text; `latency` (seconds, or a
    callable body -> seconds for a spread of latencies) is added to every request (to show client-side concurrency)."""

    reply: str | Callable[[dict], str] = "3"
    completion_reply: Callable[[dict], "Reply"] | None = None  # the default answer on /v1/completions, by body
    latency: float | Callable[[dict], float] = 0.0
    port: int = 0
    bodies: list = field(default_factory=list)
    auth_headers: list = field(default_factory=list)
    max_in_flight: int = 0

    def __post_init__(self) -> None:
        self._queue: deque = deque()
        self._lock = threading.Lock()
        self._in_flight = 0
        self._server: ThreadingHTTPServer | None = None

    # -------------------------------------------------------------------------------------------- control
    def queue(self, *behaviours: Any) -> None:
        with self._lock:
            self._queue.extend(behaviours)

    @property
    def base_url(self) -> str:
        assert self._server is not None, "start() the server first"
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    @property
    def count(self) -> int:
        with self._lock:
            return len(self.bodies)

    def start(self) -> "FakeLLMServer":
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

            def do_GET(self) -> None:
                if self.path.rstrip("/").endswith("/models"):
                    self._json(200, {"object": "list", "data": [{"id": "fake", "object": "model"}]})
                else:
                    self._json(404, {"error": {"message": "not found"}})

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                with fake._lock:
                    fake.bodies.append(body)
                    fake.auth_headers.append(self.headers.get("authorization", ""))
                    fake._in_flight += 1
                    fake.max_in_flight = max(fake.max_in_flight, fake._in_flight)
                    behaviour = fake._queue.popleft() if fake._queue else None
                try:
                    latency = fake.latency(body) if callable(fake.latency) else fake.latency
                    if latency:
                        time.sleep(latency)
                    self._behave(behaviour, body, self.path.rstrip("/").endswith("/v1/completions"))
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout): fine
                    pass
                finally:
                    with fake._lock:
                        fake._in_flight -= 1

            def _behave(self, behaviour: Any, body: dict, text_completion: bool = False) -> None:
                if isinstance(behaviour, Delay):
                    time.sleep(behaviour.seconds)
                    behaviour = behaviour.then
                if behaviour is None and text_completion and fake.completion_reply is not None:
                    behaviour = fake.completion_reply(body)
                if behaviour is None:
                    text = fake.reply(body) if callable(fake.reply) else fake.reply
                    behaviour = Reply(text)
                if isinstance(behaviour, Status):
                    self._json(behaviour.code, {"error": {"message": f"fake error {behaviour.code}",
                                                          "type": "fake", "code": behaviour.code}})
                elif isinstance(behaviour, Garbage):
                    self._raw(b"<html>this is not json", "application/json")
                elif isinstance(behaviour, Raw):
                    self._raw(behaviour.body.encode(), behaviour.content_type)
                elif text_completion:
                    self._json(200, text_completion_of(body, behaviour))
                else:
                    self._json(200, completion(body, behaviour))

            def _json(self, code: int, obj: dict) -> None:
                self._raw(json.dumps(obj).encode(), "application/json", code)

            def _raw(self, raw: bytes, content_type: str, code: int = 200) -> None:
                self.send_response(code)
                self.send_header("content-type", content_type)
                self.send_header("content-length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> "FakeLLMServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def completion(body: dict, reply: Reply) -> dict:
    """An OpenAI ChatCompletion for `reply`, with logprobs when the request asked for them."""
    choice: dict = {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": reply.text}}
    if body.get("logprobs"):
        digits = reply.digits or {reply.text.strip()[:1]: 1.0}
        first = reply.text[:1] or " "
        top = [{"token": t, "logprob": math.log(p) if p > 0 else -100.0, "bytes": None}
               for t, p in sorted(digits.items(), key=lambda kv: -kv[1])][: int(body.get("top_logprobs") or 5)]
        content = [{"token": first, "logprob": math.log(digits.get(first, 1e-9)) if digits.get(first) else -20.0,
                    "bytes": None, "top_logprobs": top}]
        content += [{"token": ch, "logprob": 0.0, "bytes": None, "top_logprobs": []} for ch in reply.text[1:]]
        choice["logprobs"] = {"content": content}
    prompt_chars = sum(len(str(m.get("content", ""))) for m in body.get("messages", []))
    return {
        "id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()), "model": body.get("model"),
        "choices": [choice],
        "usage": {"prompt_tokens": prompt_chars // 4 + 1, "completion_tokens": max(1, len(reply.text) // 4),
                  "total_tokens": prompt_chars // 4 + 1 + max(1, len(reply.text) // 4)},
    }


def text_completion_of(body: dict, reply: Reply) -> dict:
    """An OpenAI text Completion (/v1/completions) for `reply`."""
    prompt = body.get("prompt", "")
    n_prompt = reply.prompt_tokens if reply.prompt_tokens is not None else (
        len(prompt) if isinstance(prompt, list) else 0)
    n_out = reply.completion_tokens if reply.completion_tokens is not None else max(1, len(reply.text) // 4)
    return {
        "id": "cmpl-fake", "object": "text_completion", "created": int(time.time()), "model": body.get("model"),
        "choices": [{"index": 0, "text": reply.text, "finish_reason": reply.finish_reason, "logprobs": reply.logprobs}],
        "usage": {"prompt_tokens": n_prompt, "completion_tokens": n_out, "total_tokens": n_prompt + n_out},
    }


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--latency", type=float, default=0.0, help="seconds added to every request")
    ap.add_argument("--reply", default="3")
    a = ap.parse_args()
    srv = FakeLLMServer(reply=a.reply, latency=a.latency, port=a.port).start()
    print(srv.base_url, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        srv.stop()
