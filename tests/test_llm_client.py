"""LLMClient against the in-process fault-injecting server (tests/fake_llm_server.py): retries, failure markers,
fatal auth/404 stops that never show the key, the sqlite cache, bounded concurrency, estimates."""

from __future__ import annotations

import io
import json
import sqlite3
import sys
from pathlib import Path

import pytest
from rich.console import Console

sys.path.insert(0, str(Path(__file__).parent))
from fake_llm_server import Delay, FakeLLMServer, Garbage, Raw, Reply, Status  # noqa: E402

from phased_ift.config import EndpointConfig  # noqa: E402
from phased_ift.errors import PhasedIFTError  # noqa: E402
from phased_ift.llm_client import LLMClient, canonical_request, request_key  # noqa: E402

SECRET = "sk-test-SECRET-9f8e7d6c5b4a"
KEY_ENV = "PHASED_IFT_TEST_KEY"


@pytest.fixture
def server():
    with FakeLLMServer(reply="3") as srv:
        yield srv


@pytest.fixture
def secret_env(monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    return SECRET


def _client(srv, tmp_path, **kw) -> tuple[LLMClient, io.StringIO]:
    ep = EndpointConfig(base_url=srv.base_url, model=kw.pop("model", "fake-model"), api_key_env=KEY_ENV,
                        concurrency=kw.pop("concurrency", 2), max_retries=kw.pop("max_retries", 3),
                        timeout=kw.pop("timeout", 5.0), **kw)
    buf = io.StringIO()
    return LLMClient(ep, tmp_path / "cache" / "llm.sqlite", console=Console(file=buf, width=200),
                     backoff=0.01), buf


def _req(text: str, **kw) -> dict:
    return {"messages": [{"role": "user", "content": text}], **kw}


def test_retries_429_and_500_then_succeeds(server, tmp_path, secret_env):
    server.queue(Status(429), Status(500), Reply("4"))
    client, out = _client(server, tmp_path, concurrency=1)
    [res] = client.chat_many([_req("q")])
    assert res.ok and res.text == "4" and not res.cached and res.error is None
    assert server.count == 3
    assert client.stats["retries"] == 2 and client.stats["sent"] == 1 and client.stats["failures"] == 0
    assert res.usage["prompt_tokens"] > 0 and res.usage["completion_tokens"] >= 1
    assert "sent 1, cache hits 0, failures 0, retries 2" in out.getvalue()


def test_gives_up_after_max_retries_with_failure_marker_and_no_cache(server, tmp_path, secret_env):
    server.queue(Status(500), Status(500), Status(500))
    client, out = _client(server, tmp_path, concurrency=1, max_retries=2)
    [res] = client.chat_many([_req("q")])
    assert not res.ok and res.text is None
    assert "gave up after 3 attempts" in res.error and "InternalServerError" in res.error
    assert server.count == 3 and client.stats["failures"] == 1
    assert "failures 1" in out.getvalue()
    # Failures are not cached: the next run asks again (and now gets the default reply).
    [res2] = client.chat_many([_req("q")])
    assert res2.ok and res2.text == "3" and server.count == 4


def test_timeout_is_retried(server, tmp_path, secret_env):
    server.queue(Delay(2.0))
    client, _ = _client(server, tmp_path, concurrency=1, timeout=0.3)
    [res] = client.chat_many([_req("slow")])
    assert res.ok and res.text == "3"
    assert server.count == 2 and client.stats["retries"] == 1


def test_garbage_body_is_a_failure_marker_and_other_items_succeed(server, tmp_path, secret_env):
    server.queue(Garbage(), Garbage())
    client, _ = _client(server, tmp_path, concurrency=1, max_retries=1)
    res = client.chat_many([_req("a"), _req("b"), _req("c")])
    assert [r.ok for r in res] == [False, True, True]
    assert "not JSON" in res[0].error
    assert [r.text for r in res[1:]] == ["3", "3"]


def _cached_rows(tmp_path) -> list[dict]:
    con = sqlite3.connect(tmp_path / "cache" / "llm.sqlite")
    try:
        return [json.loads(r[0]) for r in con.execute("SELECT response FROM responses")]
    except sqlite3.OperationalError:  # no table yet: nothing was ever cached
        return []
    finally:
        con.close()


# 200 replies that are no chat completion, each a transient server fault. What the openai SDK (non-strict, its
# default) makes of them differs: truncated JSON raises json.JSONDecodeError; with a non-JSON content type it returns
# the text as a str; `{"foo": 1}` becomes a ChatCompletion whose `choices` is None; `[1, 2]` comes back as a list.
MALFORMED = {
    "truncated-json": Raw('{"id": "chatcmpl-x", "object": "chat.completion", "choices": [{"index": 0, "mess'),
    "truncated-json-text-html": Raw('{"id": "chatcmpl-x", "choices": [{"in', content_type="text/html"),
    "json-not-a-completion": Raw('{"foo": 1}'),
    "json-list": Raw("[1, 2]"),
    "choices-null": Raw('{"id": "chatcmpl-x", "choices": null}'),
    "choices-empty": Raw('{"id": "chatcmpl-x", "choices": []}'),
    "choice-without-message": Raw('{"choices": [{"index": 0, "finish_reason": "stop"}]}'),
    "choices-not-objects": Raw('{"choices": ["3"]}'),
    "content-not-a-string": Raw('{"choices": [{"index": 0, "message": {"role": "assistant", "content": 3}}]}'),
}


@pytest.mark.parametrize("bad", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_200_body_is_retried_and_never_cached(server, tmp_path, secret_env, bad):
    server.queue(bad, Reply("4"))
    client, out = _client(server, tmp_path, concurrency=1)
    [res] = client.chat_many([_req("q")])
    assert res.ok and res.text == "4" and res.error is None
    assert server.count == 2 and client.stats["retries"] == 1 and client.stats["failures"] == 0
    assert "failures 0, retries 1" in out.getvalue()
    [row] = _cached_rows(tmp_path)  # the good reply only
    assert row["choices"][0]["message"]["content"] == "4"
    client.close()
    client2, _ = _client(server, tmp_path, concurrency=1)
    [again] = client2.chat_many([_req("q")])
    assert again.cached and again.text == "4" and server.count == 2


@pytest.mark.parametrize("bad", [MALFORMED["truncated-json"], MALFORMED["json-not-a-completion"]],
                         ids=["truncated-json", "json-not-a-completion"])
def test_malformed_200_body_without_retries_fails_the_item_and_caches_nothing(server, tmp_path, secret_env, bad):
    server.queue(bad)
    client, _ = _client(server, tmp_path, concurrency=1, max_retries=0)
    res = client.chat_many([_req("q"), _req("other")])
    assert not res[0].ok and res[0].text is None and "malformed response body" in res[0].error
    assert "gave up after 1 attempts" in res[0].error
    assert res[1].ok and res[1].text == "3"  # the other item is unaffected
    assert client.stats["failures"] == 1 and client.stats["retries"] == 0 and server.count == 2
    assert [r["choices"][0]["message"]["content"] for r in _cached_rows(tmp_path)] == ["3"]
    [res2] = client.chat_many([_req("q")])  # not cached: asked again (now the default reply)
    assert res2.ok and not res2.cached and server.count == 3


def test_empty_content_is_a_normal_answer_cached_as_is_never_retried(server, tmp_path, secret_env):
    server.queue(Reply(""))
    client, _ = _client(server, tmp_path, concurrency=1)
    [res] = client.chat_many([_req("q")])
    assert res.ok and res.text == "" and res.error is None  # no verdict in it: the caller counts it unparseable
    assert server.count == 1 and client.stats["retries"] == 0 and client.stats["failures"] == 0
    [row] = _cached_rows(tmp_path)
    assert row["choices"][0]["message"]["content"] == ""
    client.close()
    client2, _ = _client(server, tmp_path, concurrency=1)
    [again] = client2.chat_many([_req("q")])
    assert again.cached and again.ok and again.text == "" and server.count == 1


@pytest.mark.parametrize("status", [401, 403])
def test_auth_error_stops_naming_the_env_var_never_the_key(server, tmp_path, secret_env, status):
    server.queue(Status(status))
    client, out = _client(server, tmp_path, concurrency=1)
    with pytest.raises(PhasedIFTError) as ei:
        client.chat_many([_req("q1"), _req("q2")])
    client.close()
    msg = str(ei.value)
    assert KEY_ENV in msg and f"HTTP {status}" in msg
    assert SECRET not in msg and SECRET not in out.getvalue()
    assert server.auth_headers[0] == f"Bearer {SECRET}"  # the key was really used
    assert server.count <= 2  # stopped, not retried
    for f in tmp_path.rglob("*"):
        if f.is_file():
            assert SECRET.encode() not in f.read_bytes(), f"API key leaked into {f}"


def test_404_names_model_and_base_url(server, tmp_path, secret_env):
    server.queue(Status(404))
    client, _ = _client(server, tmp_path, concurrency=1, model="gpt-nope")
    with pytest.raises(PhasedIFTError, match="gpt-nope") as ei:
        client.chat_many([_req("q")])
    assert "base_url" in str(ei.value) and server.count == 1


def test_missing_key_remote_server_is_an_error_local_gets_dummy(server, tmp_path, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    ep = EndpointConfig(base_url="https://api.example.invalid/v1", model="m", api_key_env=KEY_ENV)
    with pytest.raises(PhasedIFTError, match=f"{KEY_ENV} is not set"):
        LLMClient(ep, tmp_path / "c.sqlite").chat_many([_req("q")])
    client, _ = _client(server, tmp_path)
    [res] = client.chat_many([_req("q")])
    assert res.ok and server.auth_headers == ["Bearer sk-no-key-required"]


def test_cache_second_run_sends_zero_requests_and_keeps_order(server, tmp_path, secret_env):
    server.reply = lambda body: str(len(body["messages"][0]["content"]))  # reply depends on the request
    reqs = [_req("x" * n) for n in (1, 2, 3, 4)] + [_req("x")]  # the last one duplicates the first
    client, _ = _client(server, tmp_path, concurrency=3)
    first = client.chat_many(reqs)
    assert [r.text for r in first] == ["1", "2", "3", "4", "1"]
    assert server.count == 4  # the duplicate was sent once
    client.close()
    client2, out = _client(server, tmp_path, concurrency=3)
    second = client2.chat_many(reqs)
    assert [r.text for r in second] == ["1", "2", "3", "4", "1"] and all(r.cached for r in second)
    assert server.count == 4 and client2.stats["sent"] == 0 and client2.stats["cache_hits"] == 4
    assert "sent 0, cache hits 4" in out.getvalue()
    con = sqlite3.connect(tmp_path / "cache" / "llm.sqlite")
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert con.execute("SELECT COUNT(*) FROM responses").fetchone()[0] == 4


def test_request_defaults_come_from_endpoint_and_key_covers_sampling_params(server, tmp_path, secret_env):
    client, _ = _client(server, tmp_path, temperature=0.0, max_tokens=7)
    client.chat_many([_req("q"), _req("q", temperature=0.9, max_tokens=3, seed=1)])
    bodies = sorted(server.bodies, key=lambda b: b["temperature"])
    assert (bodies[0]["temperature"], bodies[0]["max_tokens"], bodies[0]["model"]) == (0.0, 7, "fake-model")
    assert (bodies[1]["temperature"], bodies[1]["max_tokens"], bodies[1]["seed"]) == (0.9, 3, 1)
    ep = client.endpoint
    assert request_key(canonical_request(ep, _req("q"))) != request_key(canonical_request(ep, _req("q", seed=1)))
    assert SECRET not in str(canonical_request(ep, _req("q")))
    with pytest.raises(PhasedIFTError, match="unknown fields"):
        client.chat_many([_req("q", stream=True)])


def test_concurrency_is_bounded(tmp_path, secret_env):
    with FakeLLMServer(reply="3", latency=0.15) as srv:
        client, _ = _client(srv, tmp_path, concurrency=3)
        res = client.chat_many([_req(f"q{i}") for i in range(12)])
    assert all(r.ok for r in res) and srv.count == 12
    assert srv.max_in_flight == 3


def test_iter_chat_yields_in_order_and_a_slow_request_holds_back_only_the_output(server, tmp_path, secret_env):
    server.reply = lambda body: body["messages"][0]["content"]
    server.queue(Delay(1.5))  # whichever request arrives first takes 1.5 s
    client, out = _client(server, tmp_path, concurrency=2)
    sent_when_yielded = []
    texts = []
    for res in client.iter_chat([_req(f"q{i}") for i in range(12)], desc="stream"):
        texts.append(res.text)
        sent_when_yielded.append(server.count)
    assert texts == [f"q{i}" for i in range(12)]
    slow = int(server.bodies[0]["messages"][0]["content"][1:])  # q0 or q1, both start at once
    # while the slow one was out, the other worker went on with every later request (no wait at a batch end)
    assert sent_when_yielded[slow] == 12
    assert "stream: 12 requests (12 distinct), sent 12" in out.getvalue()


def test_iter_chat_stopped_early_sends_no_more_and_a_rerun_sends_only_the_rest(tmp_path, secret_env):
    import time

    with FakeLLMServer(reply="3", latency=0.05) as srv:
        client, _ = _client(srv, tmp_path, concurrency=2)
        stream = client.iter_chat([_req(f"q{i}") for i in range(40)])
        assert [next(stream).ok for _ in range(3)] == [True] * 3
        stream.close()  # the consumer stops (e.g. Ctrl-C in the score step)
        time.sleep(0.3)
        sent = srv.count
        assert 3 <= sent < 12  # queued requests were cancelled, at most the two in flight finished
        client.close()
        client2, _ = _client(srv, tmp_path, concurrency=2)
        assert all(r.ok for r in client2.chat_many([_req(f"q{i}") for i in range(40)]))
        assert srv.count == 40 and client2.stats["cache_hits"] == sent  # nothing asked twice


def test_iter_chat_yields_the_answers_before_a_fatal_error_then_stops(server, tmp_path, secret_env):
    server.queue(Reply("2"), Status(401))
    client, out = _client(server, tmp_path, concurrency=1)
    stream = client.iter_chat([_req("a"), _req("b"), _req("c")], desc="d")
    assert next(stream).text == "2"
    with pytest.raises(PhasedIFTError, match=KEY_ENV):
        next(stream)
    assert server.count == 2 and SECRET not in out.getvalue()  # "c" was never sent


def test_logprobs_are_returned_in_the_documented_shape(server, tmp_path, secret_env):
    server.queue(Reply("4", digits={"4": 0.75, "3": 0.25}))
    client, _ = _client(server, tmp_path)
    [res] = client.chat_many([_req("q", logprobs=True, top_logprobs=5)])
    assert res.logprobs[0]["token"] == "4"
    top = {a["token"]: round(2.718281828 ** a["logprob"], 3) for a in res.logprobs[0]["top_logprobs"]}
    assert top == {"4": 0.75, "3": 0.25}
    assert server.bodies[0]["logprobs"] is True and server.bodies[0]["top_logprobs"] == 5


def test_estimate_counts_cached_and_tokens(server, tmp_path, secret_env):
    client, _ = _client(server, tmp_path, max_tokens=10)
    client.chat_many([_req("a" * 40)])
    est = client.estimate([_req("a" * 40), _req("b" * 400), _req("b" * 400)])
    assert est == {"requests": 2, "cached": 1, "to_send": 1, "prompt_tokens": 400 // 4 + 4, "completion_tokens": 10}
    assert server.count == 1  # estimating sends nothing


def test_a_cache_file_written_before_kvcache_is_still_read(server, tmp_path, secret_env):
    """The table layout of older runs' cache/llm.sqlite: same table, same keys, so their answers are cache hits."""
    probe, _ = _client(server, tmp_path / "probe")
    canon = canonical_request(probe.endpoint, _req("asked by an old run"))
    probe.close()
    path = tmp_path / "cache" / "llm.sqlite"
    path.parent.mkdir(parents=True)
    con = sqlite3.connect(path)  # the DDL and row format of the ResponseCache this replaced
    con.execute("CREATE TABLE responses (key TEXT PRIMARY KEY, request TEXT NOT NULL, response TEXT NOT NULL, "
                "created REAL NOT NULL)")
    answer = {"choices": [{"message": {"role": "assistant", "content": "5"}}],
              "usage": {"prompt_tokens": 9, "completion_tokens": 1}}
    con.execute("INSERT INTO responses VALUES (?, ?, ?, 0.0)",
                (request_key(canon), json.dumps(canon, sort_keys=True), json.dumps(answer)))
    con.commit()
    con.close()
    client, _ = _client(server, tmp_path)
    old, new = client.chat_many([_req("asked by an old run"), _req("new question")])
    assert old.cached and old.text == "5" and not new.cached and server.count == 1
    client.close()
    con = sqlite3.connect(path)
    assert con.execute("SELECT COUNT(*) FROM responses").fetchone()[0] == 2
    con.close()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_server_that_never_answers_stops_the_run_after_one_request(tmp_path, secret_env):
    """Connection refused on every attempt of the first request: a PhasedIFTError naming base_url, not one retry
    budget per item (20 items against a dead server used to take 20 x ~30 s)."""
    ep = EndpointConfig(base_url=f"http://127.0.0.1:{_free_port()}/v1", model="m", api_key_env=KEY_ENV,
                        concurrency=1, max_retries=2, timeout=2.0)
    client = LLMClient(ep, tmp_path / "c.sqlite", console=Console(file=io.StringIO()), backoff=0.01)
    with pytest.raises(PhasedIFTError, match=r"cannot be reached .*is the server running") as e:
        client.chat_many([_req(f"q{i}") for i in range(20)])
    assert ep.base_url in str(e.value) and SECRET not in str(e.value)
    assert client.stats["retries"] == 2  # one request's retries (max_retries=2), then the stop


def test_a_server_that_dies_mid_run_stops_after_three_requests_and_a_rerun_resumes(tmp_path, secret_env):
    srv = FakeLLMServer(reply="3").start()
    port = srv._server.server_address[1]
    client, _ = _client(srv, tmp_path, concurrency=1, max_retries=1, timeout=2.0)
    reqs = [_req(f"q{i}") for i in range(10)]
    got = []
    with pytest.raises(PhasedIFTError, match="cannot be reached"):
        for i, res in enumerate(client.iter_chat(reqs)):
            got.append(res)
            if i == 3:
                srv.stop()  # the server dies after answering 4 requests
    assert [r.text for r in got[:4]] == ["3"] * 4
    assert sum(1 for r in got if not r.ok) <= 2  # give-ups before the stop, never the whole rest
    client.close()
    with FakeLLMServer(reply="3", port=port) as again:  # back on the same URL: only the unanswered are sent
        client2, _ = _client(again, tmp_path, concurrency=1)
        out = client2.chat_many(reqs)
        # the worker may have had one or two more answers in hand when the server stopped (it goes on while the
        # consumer handles result 4): every one of them is cached and none is sent again
        hits = client2.stats["cache_hits"]
        assert all(r.ok for r in out) and hits >= 4 and again.count == len(reqs) - hits


def test_text_completion_requests_go_to_completions_with_extra_body_and_cache_extra(server, tmp_path, secret_env):
    """`prompt` instead of `messages`: /v1/completions, extra_body merged into the body, cache_extra in the key only;
    the chat keys of existing caches are unchanged (no new field in a chat request's canonical form)."""
    client, _ = _client(server, tmp_path)
    req = {"prompt": "<|im_start|>user\nHi", "max_tokens": 5, "extra_body": {"stop_token_ids": [2]},
           "cache_extra": "weights-1"}
    server.queue(Reply(" hello", finish_reason="length"))
    [r] = client.chat_many([req], report=False)
    assert r.ok and r.text == " hello" and r.finish_reason == "length" and not r.cached
    body = server.bodies[0]
    assert body["prompt"] == req["prompt"] and body["stop_token_ids"] == [2] and "cache_extra" not in body
    assert "messages" not in body and body["max_tokens"] == 5
    assert client.chat_many([req], report=False)[0].cached and server.count == 1
    client.chat_many([{**req, "cache_extra": "weights-2"}], report=False)
    assert server.count == 2  # another fingerprint: asked again
    canon = canonical_request(client.endpoint, _req("x"))
    assert set(canon) == {"base_url", "model", "temperature", "max_tokens", "messages"}
    with pytest.raises(PhasedIFTError, match="exactly one of a non-empty `messages`"):
        canonical_request(client.endpoint, {**_req("x"), "prompt": "x"})
    assert client.estimate([{"prompt": [1, 2, 3]}])["prompt_tokens"] == 3
    client.close()


def test_check_stops_the_run_before_the_reply_is_cached(server, tmp_path, secret_env):
    ep = EndpointConfig(base_url=server.base_url, model="m", api_key_env=KEY_ENV, max_retries=0)
    client = LLMClient(ep, tmp_path / "c.sqlite", console=Console(file=io.StringIO()),
                       check=lambda canon, data: "bad setup" if data["choices"][0]["text"] == "x" else None)
    server.queue(Reply("x"))
    with pytest.raises(PhasedIFTError, match="bad setup"):
        client.chat_many([{"prompt": "p"}], report=False)
    assert len(client.cache) == 0
    assert client.chat_many([{"prompt": "p"}], report=False)[0].text == "3" and len(client.cache) == 1
    client.close()
