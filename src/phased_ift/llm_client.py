"""OpenAI-compatible client of the LLM judges and the server generation backend: bounded concurrency, retries
with backoff, the response cache.

Works with any server that speaks `/v1/chat/completions` (OpenAI, vLLM, llama.cpp's `python -m llama_cpp.server`,
...), through the `openai` package. Used by the difficulty judge (`scoring/judge.py`) and the pairwise judge
(`judge.py`). A request with `prompt` instead of `messages` goes to `/v1/completions` (text completions: the
`server` generation backend of `generate.py` sends the already rendered prompt). The cache is a `kvcache.KVCache`
table (`open_response_cache`):

    client = LLMClient(cfg.scoring.judge, run.llm_cache)
    results = client.chat_many([{"messages": [{"role": "user", "content": "..."}]}], desc="difficulty")
    client.close()

Guarantees:
  * Every successful response (the ChatCompletion JSON as the server sent it) is written to the sqlite cache (WAL
    mode) the moment it arrives, keyed by the sha256 of the canonical request (base_url, model, messages, sampling
    parameters, `cache_extra`; never the API key). A run killed with kill -9 loses only the requests in flight; running it again
    sends only the requests not yet answered.
  * At most `endpoint.concurrency` requests are in flight. 429, 5xx, timeouts and connection errors are retried up
    to `endpoint.max_retries` times with exponential backoff and jitter (honouring a short `Retry-After`).
  * A 200 reply that is not a chat completion is a transient server fault, retried the same way: a body that is
    not JSON (truncated, a proxy's HTML page) or JSON without a non-empty `choices` list whose first item holds a
    `message` object (with string or null content; for a text completion: a string `text`). It is never cached, each retry is counted in
    `stats["retries"]`, and it is a failure only when the retries run out. The body is parsed here, not by the
    SDK, whose non-strict parse lets such bodies through in several shapes (see `_parse_completion`).
  * A reply that IS a chat completion is a result as it is, even when it holds no usable verdict (empty content,
    text without a score): cached, never retried or coerced; the caller counts it as unparseable (re-asking at
    temperature 0 would give the same text).
  * One bad item never stops a batch: it comes back as `LLMResult(ok=False, error=...)`. Only errors that would
    fail every request stop the run with `PhasedIFTError`: 401/403 (wrong or missing key; the message names the
    environment variable, never the key), 404 (wrong model or base_url), and a server that cannot be reached:
    a request whose every attempt failed to connect (not a timeout) when no request of this client has reached
    the server yet, or `CONNECT_GIVEUPS_IN_ROW` such requests in a row (the server died mid-run). Without that
    stop, a dead server costs every item its full retry budget (~30 s each with the defaults); with it, the
    answers so far are cached and the same command resumes once the server is back.
  * SIGTERM / SIGINT (`shutdown`): no request is sent or retried after it; the requests in flight are finished and
    cached, the results answered up to the first missing one are handed on, then `iter_chat` raises
    `shutdown.Stopped`. The same command sends only what was never answered.
  * The API key is read from `os.environ[endpoint.api_key_env]` and is scrubbed from every error text. A local
    server (127.0.0.1, localhost) may run without the variable: a dummy key is sent.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import urlparse

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, ProgressColumn, TextColumn, TimeRemainingColumn
from rich.text import Text

from phased_ift import shutdown
from phased_ift.config import EndpointConfig
from phased_ift.errors import PhasedIFTError
from phased_ift.kvcache import KVCache
from phased_ift.progress import LoggedProgress

# Request fields a caller may set per request; anything missing comes from the endpoint config.
# `prompt` (a string or token ids) instead of `messages`: a text completion. `extra_body`: server-specific fields
# merged into the JSON body (e.g. vLLM's stop_token_ids). `cache_extra`: part of the cache key, never sent (e.g. the
# fingerprint of the weights a server serves under a fixed name).
REQUEST_FIELDS = ("messages", "prompt", "temperature", "max_tokens", "logprobs", "top_logprobs", "n", "seed", "stop",
                  "extra_body", "cache_extra")
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "0.0.0.0"}
DUMMY_KEY = "sk-no-key-required"  # sent to local servers when the key variable is unset; they ignore it
BACKOFF_CAP_S = 60.0
CONNECT_GIVEUPS_IN_ROW = 3  # requests in a row that never connected: the server is gone, stop the run


@dataclass
class LLMResult:
    """One chat completion (or its failure).

    Attributes:
        ok: True when the server answered with a completion.
        text: the first choice's message content (None on failure).
        logprobs: per generated token `{"token", "logprob", "top_logprobs": [{"token", "logprob"}]}`, or None when
            not requested / not returned.
        error: why the request failed (None when ok); never contains the API key.
        cached: True when the answer came from the sqlite cache (no request sent).
        usage: `{"prompt_tokens", "completion_tokens"}` as reported by the server (0 when it reports none).
        finish_reason: the first choice's `finish_reason` ("stop", "length", ...; None when not reported).
    """

    ok: bool
    text: str | None
    logprobs: list | None
    error: str | None
    cached: bool
    usage: dict = field(default_factory=lambda: {"prompt_tokens": 0, "completion_tokens": 0})
    finish_reason: str | None = None


class _Fatal(Exception):
    """Raised inside a worker for errors that would fail every request (401/403/404)."""


class _Malformed(ValueError):
    """A 200 reply that is not a chat completion (not JSON, or JSON without a `choices` list holding a `message`):
    a transient server fault, retried like a 5xx and never cached."""


class _RateColumn(ProgressColumn):
    """Requests per second (rich has a transfer-speed column for bytes only)."""

    def render(self, task: Any) -> Text:
        speed = task.finished_speed or task.speed
        return Text("-- req/s" if speed is None else f"{speed:.2f} req/s", style="progress.data.speed")


def canonical_request(endpoint: EndpointConfig, request: dict) -> dict:
    """The request as sent, resolved against the endpoint defaults (the cache key is computed from it).

    Args:
        endpoint: gives base_url, model and default temperature / max_tokens.
        request: `{"messages": [...] or "prompt": str | [int], "temperature"?, "max_tokens"?, "logprobs"?,
            "top_logprobs"?, "n"?, "seed"?, "stop"?, "extra_body"?, "cache_extra"?}`.

    Returns:
        dict with base_url, model, messages and the sampling parameters that are set (None values dropped).

    Raises:
        PhasedIFTError: unknown request field, or not exactly one of a non-empty `messages` and `prompt`.
    """
    unknown = set(request) - set(REQUEST_FIELDS)
    if unknown:
        raise PhasedIFTError(f"LLM request has unknown fields {sorted(unknown)}; allowed: {list(REQUEST_FIELDS)}.")
    if bool(request.get("messages")) == bool(request.get("prompt")):
        raise PhasedIFTError("an LLM request needs exactly one of a non-empty `messages` list (chat) and a non-empty "
                             "`prompt` (text completion).")
    canon = {
        "base_url": endpoint.base_url.rstrip("/"),
        "model": endpoint.model,
        "temperature": endpoint.temperature,
        "max_tokens": endpoint.max_tokens,
    }
    canon.update({k: v for k, v in request.items() if v is not None})
    return canon


def request_key(canon: dict) -> str:
    """sha256 hex digest of the canonical request JSON (sorted keys, no whitespace)."""
    text = json.dumps(canon, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def estimate_tokens(text: str) -> int:
    """Rough token count (~4 characters per token, the usual English rule of thumb for BPE tokenizers)."""
    return (len(text) + 3) // 4


def _completion_problem(data: Any) -> str | None:
    """Why a parsed 200 body is not a chat completion, or None when it is one: a JSON object whose `choices` is a
    non-empty list whose first item holds a `message` object with a string (or null) `content`, or (a text
    completion) a string `text`."""
    if not isinstance(data, dict):
        return f"a JSON {type(data).__name__}, not an object"
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices:
        return "no `choices` list" if not isinstance(choices, list) else "an empty `choices` list"
    choice = choices[0]
    if isinstance(choice, dict) and "message" not in choice and isinstance(choice.get("text"), str):
        return None
    if not isinstance(choice, dict) or not isinstance(choice.get("message"), dict):
        return "the first choice holds no `message` object"
    content = choice["message"].get("content")
    if content is not None and not isinstance(content, str):
        return f"the message content is a {type(content).__name__}, not a string"
    return None


def _retry_after(error: Exception) -> float | None:
    """The Retry-After header of a failed response in seconds, None when absent or not a number."""
    headers = getattr(getattr(error, "response", None), "headers", None) or {}
    try:
        return float(headers.get("retry-after", ""))
    except ValueError:
        return None


def _parse_completion(body: str) -> dict:
    """A 200 body as a ChatCompletion dict. Raises `_Malformed` when it is not JSON or not a chat completion
    (`_completion_problem`): a transient server fault that `LLMClient` retries."""
    try:
        data = json.loads(body)
    except ValueError as e:
        raise _Malformed(f"malformed response body (not JSON: {e}): {body[:60]!r}") from None
    problem = _completion_problem(data)
    if problem:
        raise _Malformed(f"malformed response body (not a chat completion: {problem}): {body[:60]!r}")
    return data


def _logprobs_of(choice: dict) -> list | None:
    """The first choice's per-token logprobs in `LLMResult.logprobs`'s shape (a text completion's: + "text_offset")."""
    content = choice.get("logprobs")
    if isinstance(content, dict) and isinstance(content.get("token_logprobs"), list):
        return _text_logprobs(content)
    content = content.get("content") if isinstance(content, dict) else None
    if not content or not isinstance(content, list):
        return None
    return [{"token": t.get("token"), "logprob": t.get("logprob"),
             "top_logprobs": [{"token": a.get("token"), "logprob": a.get("logprob")}
                              for a in (t.get("top_logprobs") or [])]} for t in content]


def _text_logprobs(lp: dict) -> list:
    """A text completion's `logprobs` object as `LLMResult.logprobs` entries (see `_logprobs_of`)."""
    values = lp["token_logprobs"]
    blank = [None] * len(values)
    tokens, offsets, tops = (lp.get(key) or blank for key in ("tokens", "text_offset", "top_logprobs"))
    return [{"token": t, "logprob": v, "text_offset": o,
             "top_logprobs": [{"token": a, "logprob": b} for a, b in (top.items() if isinstance(top, dict) else ())]}
            for t, v, o, top in zip(tokens, values, offsets, tops)]


def _result_from_response(resp: Any, cached: bool) -> LLMResult:
    """Turn a ChatCompletion JSON (just received and checked by `_parse_completion`, or from the cache) into an
    LLMResult. A reply that is a chat completion is a result as it is, even with empty content."""
    problem = _completion_problem(resp)
    if problem:  # only a cache entry written by hand gets here: received bodies were checked
        return LLMResult(False, None, None, f"not a chat completion: {problem}", cached)
    choice = resp["choices"][0]
    text = choice["message"].get("content") if "message" in choice else choice["text"]
    logprobs = _logprobs_of(choice)
    usage = resp.get("usage") if isinstance(resp.get("usage"), dict) else {}
    usage = {"prompt_tokens": usage.get("prompt_tokens") or 0, "completion_tokens": usage.get("completion_tokens") or 0}
    finish = choice.get("finish_reason") if isinstance(choice.get("finish_reason"), str) else None
    if text is None:
        return LLMResult(False, None, logprobs, "server returned a choice without message content", cached, usage,
                         finish)
    return LLMResult(True, text, logprobs, None, cached, usage, finish)


CACHE_TABLE = "responses"


def open_response_cache(path: Path | str) -> KVCache:
    """The LLM cache: canonical request key -> ChatCompletion JSON, a `KVCache` table "responses" with the request
    JSON beside each answer (column "request", for a person reading the file; it never holds the API key, which is
    no part of a request). The same table and keys as the files written before KVCache, so those are still read.
    """
    return KVCache(path, CACHE_TABLE, value_column="response", note_column="request")


class LLMClient:
    """Chat completions against one OpenAI-compatible endpoint, cached and retried (see the module docstring).

    Args:
        endpoint: base_url, model, api_key_env, concurrency, timeout (s), max_retries, temperature, max_tokens.
        cache_path: sqlite file (e.g. `RunDir.llm_cache`); created when missing.
        console: where the progress bar and the final line go (default: stderr).
        backoff: base of the exponential backoff in seconds (default: `endpoint.backoff`): retry r waits
            backoff * 2**r * U(0.5, 1.5), capped at 60 s.
        check: `check(canonical request, response JSON) -> message | None`, run on each reply received before it
            is cached: a message stops the run like a 401 (a fault of the server's setup that every request
            shares, e.g. a prompt tokenised differently); that reply is not cached. store=False: nothing is cached.

    Attributes:
        stats: cumulative `{"requests", "distinct", "sent", "cache_hits", "failures", "retries", "prompt_tokens",
            "completion_tokens"}`; tokens count only responses received in this process (cache hits cost nothing).
    """

    def __init__(
        self,
        endpoint: EndpointConfig,
        cache_path: Path | str,
        console: Console | None = None,
        backoff: float | None = None,
        check: Callable[[dict, dict], str | None] | None = None, store: bool = True,
    ) -> None:
        if not endpoint.enabled:
            raise PhasedIFTError(
                "LLM endpoint has no base_url; set e.g. scoring.judge.base_url=http://127.0.0.1:8000/v1 and "
                "scoring.judge.model=<name> (or choose an offline scorer)."
            )
        self.endpoint = endpoint
        self.cache = open_response_cache(cache_path)
        self.console = console or Console(stderr=True)
        self.backoff = endpoint.backoff if backoff is None else backoff
        self.check, self.store = check, store
        self.stats = dict.fromkeys(("requests", "distinct", "sent", "cache_hits", "failures", "retries",
                                    "prompt_tokens", "completion_tokens"), 0)
        self._stats_lock = threading.Lock()
        self._reached, self._connect_giveups = False, 0  # see _note_connection
        self._client: Any = None
        self._key: str | None = None

    # ---------------------------------------------------------------------------------------------- helpers
    def _api_key(self) -> str:
        key = os.environ.get(self.endpoint.api_key_env)
        if key:
            return key
        host = urlparse(self.endpoint.base_url).hostname or ""
        if host in LOCAL_HOSTS:
            return DUMMY_KEY
        raise PhasedIFTError(
            f"environment variable {self.endpoint.api_key_env} is not set, and {self.endpoint.base_url} is not a "
            f"local server; export {self.endpoint.api_key_env}=<your key> (or point api_key_env at the variable "
            f"that holds it)."
        )

    def _openai(self) -> Any:
        if self._client is None:
            import openai

            self._key = self._api_key()
            # Retries are ours (with a cache write per answer and a fatal stop on 401/404), so the SDK's are off.
            self._client = openai.OpenAI(
                base_url=self.endpoint.base_url, api_key=self._key, timeout=self.endpoint.timeout, max_retries=0
            )
        return self._client

    def _scrub(self, text: str) -> str:
        """Remove the API key from an error text (401 texts, which may echo a masked key, are never shown)."""
        key = self._key or os.environ.get(self.endpoint.api_key_env) or ""
        if len(key) >= 4:
            text = text.replace(key, "***")
        return text[:500]

    def _count(self, **inc: int) -> None:
        with self._stats_lock:
            for k, v in inc.items():
                self.stats[k] += v

    def _note_connection(self, reached: bool) -> bool:
        """Record whether a request reached the server (any HTTP answer) or gave up without ever connecting;
        True when the run must stop because the server cannot be reached (see the module docstring)."""
        with self._stats_lock:
            if reached:
                self._reached, self._connect_giveups = True, 0
                return False
            self._connect_giveups += 1
            return not self._reached or self._connect_giveups >= CONNECT_GIVEUPS_IN_ROW

    def _unreachable_message(self, last: str) -> str:
        return (f"{self.endpoint.base_url} cannot be reached ({last}): is the server running? Start it (e.g. "
                f"`python -m llama_cpp.server --model FILE.gguf --port 8000`) or fix base_url, then run the same "
                f"command again: answers received so far are cached and are not asked again.")

    def _fatal_message(self, status: int) -> str:
        ep = self.endpoint
        if status in (401, 403):
            return (
                f"{ep.base_url} refused the API key (HTTP {status}). The key is read from the environment variable "
                f"{ep.api_key_env}: check that it is exported and valid for this server (the key itself is never "
                f"shown)."
            )
        return (
            f"{ep.base_url} answered HTTP 404 for model {ep.model!r}: the model name or the base_url is wrong. "
            f"Check the endpoint's `model` (list the server's models at {ep.base_url.rstrip('/')}/models) and "
            f"that base_url ends with the API prefix, usually /v1."
        )

    def _backoff_s(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait before retry `attempt + 1`: jittered exponential backoff, at least the server's
        Retry-After when that is within BACKOFF_CAP_S."""
        wait = min(BACKOFF_CAP_S, self.backoff * 2**attempt) * random.uniform(0.5, 1.5)
        if retry_after is not None and 0 <= retry_after <= BACKOFF_CAP_S:
            wait = max(wait, retry_after)
        return wait

    def _checked(self, canon: dict, data: dict, stop: threading.Event) -> dict:
        """`data`, after the caller's `check`; raises _Fatal (and stops the other workers) on its message."""
        problem = self.check(canon, data) if self.check else None
        if problem:
            stop.set()
            raise _Fatal(problem)
        return data

    def _send(self, canon: dict, key: str, stop: threading.Event) -> LLMResult | None:
        """One request with retries; caches the answer. Raises _Fatal on 401/403/404 and an unreachable server.
        None: not sent (or not retried) because the run stops (a fatal error, or SIGTERM / SIGINT)."""
        import openai

        client = self._openai()
        params = {k: v for k, v in canon.items() if k not in ("base_url", "cache_extra")}
        api = client.completions if "prompt" in params else client.chat.completions
        last = "not sent"
        connected = False  # whether any attempt reached the server (a timeout or an HTTP error counts)
        for attempt in range(self.endpoint.max_retries + 1):
            if stop.is_set() or shutdown.requested():
                return None
            if attempt:
                self._count(retries=1)
            retry_after = None
            try:
                # The raw body, parsed here: the SDK's parse of a bad body varies (JSONDecodeError, a str, a list, a
                # ChatCompletion whose choices is None), see `_parse_completion`.
                raw = api.with_raw_response.create(**params)
                connected = True
                self._note_connection(True)
                data = self._checked(canon, _parse_completion(raw.text), stop)
                result = _result_from_response(data, cached=False)
                self._count(sent=1, prompt_tokens=result.usage["prompt_tokens"],
                            completion_tokens=result.usage["completion_tokens"])
                if result.ok and self.store:
                    self.cache.put(key, data, note=canon)
                return result
            except (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError) as e:
                stop.set()  # here, not in the consumer's thread: the other workers send nothing more from now on
                raise _Fatal(self._fatal_message(e.status_code)) from None
            except (openai.RateLimitError, openai.InternalServerError, openai.APITimeoutError,
                    openai.APIConnectionError) as e:
                last, retry_after = f"{type(e).__name__}: {self._scrub(str(e))}", _retry_after(e)
                # a timeout or an HTTP error means the server was reached; a refused connection does not
                connected = connected or not (isinstance(e, openai.APIConnectionError)
                                              and not isinstance(e, openai.APITimeoutError))
                if connected:
                    self._note_connection(True)
            except _Malformed as e:  # truncated JSON, a proxy's HTML page, `{"foo": 1}`: transient
                last = self._scrub(str(e))
            except openai.APIResponseValidationError as e:  # the same fault (raised only with strict validation)
                last = f"malformed response body (not a chat completion): {self._scrub(str(e))}"
            except openai.APIStatusError as e:  # other 4xx (e.g. 400 context too long): retrying cannot help
                self._note_connection(True)
                self._count(sent=1)
                return LLMResult(False, None, None, f"HTTP {e.status_code}: {self._scrub(str(e))}", False)
            except (openai.APIError, ValueError, TypeError) as e:  # e.g. a request the SDK refuses: not transient
                self._count(sent=1)
                return LLMResult(False, None, None, f"{type(e).__name__}: {self._scrub(str(e))}", False)
            if attempt < self.endpoint.max_retries:
                stop.wait(self._backoff_s(attempt, retry_after))
        if not connected and self._note_connection(False):
            stop.set()
            raise _Fatal(self._unreachable_message(last))
        self._count(sent=1)
        return LLMResult(False, None, None, f"gave up after {self.endpoint.max_retries + 1} attempts: {last}", False)

    def _lookup(self, keys: list[str], canons: list[dict]) -> tuple[dict[str, LLMResult], dict[str, dict]]:
        """(cached results by key, canonical requests still to send by key), each distinct key once."""
        hits = self.cache.get_many(keys)
        results: dict[str, LLMResult] = {}
        todo: dict[str, dict] = {}
        for key, canon in zip(keys, canons):
            if key in results or key in todo:
                continue
            if key in hits:
                results[key] = _result_from_response(hits[key], cached=True)
            else:
                todo[key] = canon
        return results, todo

    def _progress(self, report: bool) -> LoggedProgress:
        return LoggedProgress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), _RateColumn(),
            TextColumn("eta"), TimeRemainingColumn(), console=self.console, transient=False, disable=not report,
        )

    # ---------------------------------------------------------------------------------------------- public
    def estimate(self, requests: list[dict]) -> dict:
        """What `chat_many(requests)` would cost, without sending anything.

        Returns:
            `{"requests", "cached", "to_send", "prompt_tokens", "completion_tokens"}`: distinct requests, how many
            the cache already answers, and for the rest the estimated prompt tokens (~chars/4 plus 4 per message
            for the chat template) and the completion-token upper bound (max_tokens x n).
        """
        seen: set[str] = set()
        cached = to_send = prompt = completion = 0
        for req in requests:
            canon = canonical_request(self.endpoint, req)
            key = request_key(canon)
            if key in seen:
                continue
            seen.add(key)
            if key in self.cache:
                cached += 1
                continue
            to_send += 1
            if "prompt" in canon:  # a text completion: token ids count as they are
                p = canon["prompt"]
                prompt += estimate_tokens(p) if isinstance(p, str) else len(p)
            else:
                prompt += sum(estimate_tokens(str(m.get("content", ""))) + 4 for m in canon["messages"])
            completion += int(canon.get("max_tokens") or 0) * int(canon.get("n") or 1)
        return {"requests": len(seen), "cached": cached, "to_send": to_send, "prompt_tokens": prompt,
                "completion_tokens": completion}

    def cached(self, requests: list[dict]) -> list[LLMResult | None]:
        """The cached answer of each request, None where `chat_many` would send it; sends nothing (a dry run of a
        multi-step pipeline walks its cached steps with it)."""
        keys = [request_key(canonical_request(self.endpoint, r)) for r in requests]
        hits = self.cache.get_many(keys)
        return [_result_from_response(hits[k], cached=True) if k in hits else None for k in keys]

    def summary(self, desc: str, since: dict[str, int] | None = None) -> str:
        """One line of counts: requests (distinct), sent, cache hits, failures, retries, tokens; since a copy of
        `self.stats` taken earlier, else over the client's life."""
        d = {k: v - (since or {}).get(k, 0) for k, v in self.stats.items()}
        return (f"{desc}: {d['requests']} requests ({d['distinct']} distinct), sent {d['sent']}, cache hits "
                f"{d['cache_hits']}, failures {d['failures']}, retries {d['retries']}, tokens {d['prompt_tokens']} "
                f"prompt + {d['completion_tokens']} completion")

    def chat_many(self, requests: list[dict], desc: str = "requests", report: bool = True) -> list[LLMResult]:
        """Answer chat requests (or text completions: `prompt` instead of `messages`), from the cache when possible,
        else from the server with bounded concurrency.

        Args:
            requests: as `canonical_request` takes them; missing fields come from the endpoint config. Identical
                requests are sent once.
            desc: label of the progress bar and the final summary line.
            report: show a progress bar and print the summary line (`summary`); False for a caller with its own
                progress display, which prints `summary(desc)` itself.

        Returns:
            One LLMResult per request, in input order.

        Raises:
            PhasedIFTError: 401/403 (names `endpoint.api_key_env`), 404 (wrong model or base_url), missing key for a
                remote server, malformed request. Answers received before the stop stay cached.
        """
        return list(self.iter_chat(requests, desc, report))

    def iter_chat(self, requests: list[dict], desc: str = "requests", report: bool = True) -> Iterator[LLMResult]:
        """`chat_many` as a stream: each result is yielded, in input order, as soon as it and every one before it
        is answered, while the workers go on with the requests after it.

        A slow or retried request holds back only the output after it, never the other workers, so a caller that
        writes rows as they come (the score step) keeps all `concurrency` workers busy for the whole run, with no
        stall at the end of each batch. Same arguments, cache, retries and errors as `chat_many`; with `report`
        the summary line is printed just before the last result is yielded (or when the stream stops early), so a
        consumer that takes exactly one result per request need not exhaust it.
        """
        canons = [canonical_request(self.endpoint, r) for r in requests]
        keys = [request_key(c) for c in canons]
        results, todo = self._lookup(keys, canons)
        before = dict(self.stats)
        self._count(requests=len(keys), distinct=len(results) + len(todo), cache_hits=len(results))
        stop = threading.Event()
        fatal: str | None = None
        done = 0  # results yielded so far; the summary went out with the last one when 0 < done == len(keys)

        def ready() -> Iterator[LLMResult]:
            """The answered results from `done` on, in order, up to the first one still missing."""
            nonlocal done
            while not fatal and done < len(keys) and keys[done] in results:
                done += 1
                if done == len(keys) and report:  # with the last result: a consumer need not exhaust the stream
                    self.console.print(self.summary(desc, since=before))
                yield results[keys[done - 1]]

        try:
            if todo:
                self._openai()  # fail fast on a missing key before starting threads
                progress = self._progress(report)
                with progress, ThreadPoolExecutor(max_workers=self.endpoint.concurrency) as pool:
                    task = progress.add_task(desc, total=len(todo))
                    futures = {pool.submit(self._send, canon, key, stop): key for key, canon in todo.items()}
                    try:
                        for fut in shutdown.as_completed(futures, stop.set):  # a signal stops the workers
                            key = futures[fut]
                            try:
                                res = fut.result()
                            except _Fatal as e:  # _send has already set `stop` for the other workers
                                fatal, res = fatal or str(e), None
                            if res is None:  # a fatal error, or not sent because the run stops
                                continue
                            results[key] = res
                            self._count(failures=int(not res.ok))
                            progress.advance(task)
                            yield from ready()
                    except BaseException:  # Ctrl-C or the consumer stopped early: stop the workers (answers are cached)
                        stop.set()
                        pool.shutdown(wait=False, cancel_futures=True)
                        raise
            yield from ready()
            if shutdown.requested() and not fatal and done < len(keys):  # the answers in flight are cached too
                raise shutdown.Stopped(f"{desc} after {done} of {len(keys)} results; every answer received is cached")
        finally:
            if report and not 0 < done == len(keys):
                self.console.print(self.summary(desc, since=before))
        if fatal:
            raise PhasedIFTError(fatal)

    def close(self) -> None:
        """Close the HTTP client and the cache connection."""
        if self._client is not None:
            self._client.close()
            self._client = None
        self.cache.close()

    def __enter__(self) -> "LLMClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
