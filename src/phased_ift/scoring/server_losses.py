"""The `ifd-server` scorer: IFD (Cherry LLM) with the response losses read from an OpenAI-compatible
/v1/completions server's echoed prompt-token logprobs (vLLM, llama.cpp's `python -m llama_cpp.server`) instead of a
local forward pass.

Owns: the request of each sequence (`echo_request`), the loss read back from a reply (`echoed_response_loss`), the
check that stops a run on a server that does not echo prompt logprobs or reads the text as other tokens, and the
rows. The tokens are the local `ifd` scorer's: `modeling.tokenize_for_ifd` with `scoring.model`'s tokenizer
(template, max_length and truncation included); each sequence is sent as the text those ids decode to (checked to
tokenise back to exactly them), so the server scores the same tokens. Requests go through `llm_client.LLMClient`
(`scoring.server`: concurrency, retries); the per-example losses are cached in the `ifd` scorer's
`losses.LossCache` (<cache_dir>/losses.sqlite) under a key holding the server's base_url and model, so a re-run asks
nothing already answered; the replies themselves (~50 KB each with the prompt echoed) are not stored.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator, Sequence

from phased_ift import modeling
from phased_ift.config import EndpointConfig
from phased_ift.data import Example
from phased_ift.errors import PhasedIFTError
from phased_ift.llm_client import LLMClient, LLMResult
from phased_ift.scoring.losses import LossCache, cached_loss_rows
from phased_ift.scoring.registry import ScoreContext

CHUNK_PER_WORKER = 4  # examples per chunk = this x concurrency: rows reach the scores file every few seconds


def echo_request(text: str, eos_id: int | None) -> dict:
    """The `LLMClient` request that asks a server for the logprob of every token of `text`: a text completion with
    `echo: true`, `logprobs: 1`, `max_tokens: 1`, greedy, `add_special_tokens: false` (vLLM would add a BOS the
    text may already hold; llama.cpp ignores the field) and the end token forced (`logit_bias` +100 on `eos_id`):
    llama.cpp (which needs max_tokens >= 1: 0 means "up to the context") then lists no generated entry and vLLM
    lists exactly one, counted in `usage.completion_tokens`, so the prompt's entries are known by count.

    Source: the OpenAI completions API (`echo`, `logprobs`, `logit_bias`); vLLM `serving_completion.py` (echo: the
    prompt's logprobs, the first None, then the generated ones); llama-cpp-python `Llama._create_completion` (echo
    with logits_all: the prompt's logprobs without its BOS tokens, then the generated ones but a BOS or the end).
    """
    extra: dict[str, Any] = {"echo": True, "add_special_tokens": False}
    if eos_id is not None:
        extra["logit_bias"] = {str(eos_id): 100}
    return {"prompt": text, "max_tokens": 1, "temperature": 0.0, "logprobs": 1, "extra_body": extra}


def echoed_response_loss(logprobs: Sequence[dict] | None, usage: dict, n_ids: int, n_bos: int, starts_bos: bool,
                         n_response: int) -> tuple[float, int] | str:
    """Mean loss (nats per token) of the last `n_response` prompt tokens from a reply's echoed logprobs.

    The reply lists the prompt's tokens (vLLM: all `n_ids`; llama.cpp: all but its `n_bos` BOS tokens), then the
    `usage.completion_tokens` generated ones. The response tokens are the last `n_response` prompt entries. The
    boundary is counted in tokens, not read from `text_offset`: llama.cpp's offsets leave out the text of special
    tokens (measured with SmolLM2: the response's first token at offset 23 of a 54-character prompt) and vLLM's add
    up per-token decoded strings (a character split over two tokens counts twice), while the count is exact
    wherever the server read the same ids: `usage.prompt_tokens` must be `n_ids`.

    Args:
        logprobs: `LLMResult.logprobs` of a text completion: [{"token", "logprob" (None for the first), ...}].
        usage: `LLMResult.usage` ({"prompt_tokens", "completion_tokens"}; 0 = not reported).
        n_ids: the sequence's token count (local tokenizer); n_bos: how many of them are the BOS token;
            starts_bos: whether the first of them is.
        n_response: response tokens to score (>= 1), the local `tokenize_for_ifd` labels.
    Returns:
        (mean loss in nats = -mean(logprob), n_response), or why not (a string): the server read another number
        of tokens, echoed another number of entries, or gave no logprob for a response token.
    Raises:
        PhasedIFTError: `SHIFTED_ECHO`: a llama.cpp reply (BOS entries left out) for a text that does not start
            with the BOS token, whose logprobs llama-cpp-python pairs with the next position's (measured: "Hello
            world, how are you" without a BOS echoes ' are' with the top candidate ' you').
    """
    got = usage.get("prompt_tokens") or n_ids
    entries = list(logprobs or [])
    entries = entries[: len(entries) - int(usage.get("completion_tokens") or 0)]
    if got != n_ids or len(entries) not in (n_ids, n_ids - n_bos) or len(entries) <= n_response:
        return (f"the server read {got} prompt tokens with {len(entries)} echoed logprobs where scoring.model's "
                f"tokenizer has {n_ids} tokens ({n_bos} BOS): it tokenises this text differently")
    if n_bos and len(entries) == n_ids - n_bos and not starts_bos:
        raise PhasedIFTError(SHIFTED_ECHO)
    values = [e.get("logprob") for e in entries[-n_response:]]
    if any(not isinstance(v, (int, float)) for v in values):
        return "the server gave no logprob for a response token"
    return -sum(values) / n_response, n_response


SHIFTED_ECHO = ("the server looks like llama-cpp-python (it leaves BOS tokens out of the echo), which pairs each "
                "echoed logprob with the next position's when the text does not start with the BOS token, as the "
                "unconditioned sequence of IFD does (it starts with the assistant header): its IFD would be wrong. "
                "Use vLLM (`vllm serve`) for scorer=ifd-server, or scorer=ifd (local model).")


def no_echo_message(endpoint: EndpointConfig) -> str:
    """The one-line error for a server that answers without the prompt's token logprobs."""
    return (f"{endpoint.base_url} (model {endpoint.model!r}) returned no prompt-token logprobs for an echo request "
            "(/v1/completions with echo: true, logprobs: 1): scorer ifd-server needs them. llama.cpp: start "
            "`python -m llama_cpp.server --model FILE.gguf --logits_all true`; vLLM (`vllm serve MODEL`) returns "
            "them; otherwise use scorer=ifd (local model).")


def _echo_check(endpoint: EndpointConfig):
    """The `LLMClient` check of a reply: the one-line `no_echo_message` (the run stops, nothing cached) when it holds
    no echoed prompt-token logprobs."""

    def check(canon: dict, data: dict) -> str | None:
        choice = data["choices"][0]
        lp = choice.get("logprobs") if isinstance(choice, dict) else None
        n = len(lp.get("token_logprobs") or []) if isinstance(lp, dict) else 0
        if n - int((data.get("usage") or {}).get("completion_tokens") or 0) <= 0:
            return no_echo_message(endpoint)
        return None

    return check


def _ask(client: LLMClient, probe: LLMClient, requests: list[dict], first: bool) -> list[LLMResult]:
    """The answers of `requests`; on the run's first chunk the first request goes alone without retries, so a
    server that refuses echo logprobs (llama.cpp without logits_all: HTTP 500) stops the run at once."""
    if first and requests:
        head = probe.chat_many(requests[:1], report=False)
        if not head[0].ok and "logits_all" in (head[0].error or ""):
            raise PhasedIFTError(no_echo_message(client.endpoint))
        if head[0].ok:
            return head + client.chat_many(requests[1:], report=False)
    return client.chat_many(requests, report=False)


def _prepare(tok, examples: Sequence[Example], template: str,
             max_length: int) -> list[tuple[list[dict], list[tuple[int, int, int]]] | str]:
    """Per example: ([cond request, uncond request], [`_counts`] of each) or an error
    string (`tokenize_for_ifd`'s, or a text that does not tokenise back to the same ids)."""
    out: list = []
    for ex in examples:
        t = modeling.tokenize_for_ifd(tok, ex, template, max_length)
        if isinstance(t, str):
            out.append(t)
            continue
        texts = [tok.decode(f["input_ids"], skip_special_tokens=False, clean_up_tokenization_spaces=False) for f in t]
        if modeling.encode_texts(tok, texts) != [list(f["input_ids"]) for f in t]:
            out.append("the rendered text does not tokenise back to the ifd tokens as one string")
            continue
        out.append(([echo_request(x, tok.eos_token_id) for x in texts],
                    [_counts(f, tok.bos_token_id) for f in t]))
    return out


def _counts(feats: dict, bos: int | None) -> tuple[int, int, bool, int]:
    """(ids, BOS ids, whether the first id is BOS, response tokens) of one `tokenize_for_ifd` sequence."""
    ids = list(feats["input_ids"])
    return (len(ids), ids.count(bos) if bos is not None else 0, bool(ids) and ids[0] == bos,
            sum(1 for x in feats["labels"] if x != -100))


def _losses(prepared: list, results: Iterator[LLMResult]) -> list[dict[str, Any]]:
    """`response_losses`-shaped dicts from the prepared examples and their answers (two per prepared example)."""
    out = []
    for p in prepared:
        if isinstance(p, str):
            out.append({"error": p})
            continue
        losses = [echoed_response_loss(r.logprobs, r.usage, *counts) if r.ok else f"server: {r.error}"
                  for counts, r in zip(p[1], (next(results), next(results)))]
        bad = next((x for x in losses if isinstance(x, str)), None)
        out.append({"error": bad} if bad else {"loss_cond": losses[0][0], "loss_uncond": losses[1][0],
                                               "n_tokens": losses[0][1]})
    return out


def score_ifd_server(examples: list[Example], ctx: ScoreContext) -> Iterator[dict[str, Any]]:
    """IFD = mean loss(response | prompt) / mean loss(response | assistant header only), as `ifd`
    (`losses.score_ifd`: Li et al. 2024), the per-token losses = -logprob from `scoring.server`'s echoed prompt
    logprobs. The server must serve `scoring.model` (or model.name_or_path), whose tokenizer renders the text.
    Extras: loss_cond, loss_uncond, n_tokens.

    Raises:
        PhasedIFTError: scoring.server has no base_url; the server echoes no prompt logprobs (llama.cpp without
            logits_all) or reads the text as other tokens (one line naming the server); the client's stops
            (key, 404, unreachable server). A failed example is a null-score row.
    """
    sc = ctx.cfg.scoring
    ep = sc.server
    if not ep.enabled:
        raise PhasedIFTError("scorer ifd-server needs scoring.server.base_url and scoring.server.model, e.g. "
                             "scoring.server.base_url=http://127.0.0.1:8000/v1 scoring.server.model=<served name> "
                             "(docs/scoring.md, 'IFD from a server').")
    name = sc.model or ctx.cfg.model.name_or_path
    template = ctx.cfg.model.template
    ctx.stats.setdefault("model", name)
    ctx.stats.setdefault("server", f"{ep.base_url} {ep.model}")
    cache = LossCache(ctx.cache_dir / "losses.sqlite",
                      ["server", ep.base_url.rstrip("/"), ep.model, name, template, sc.max_length])
    return _rows(examples, ctx, cache, name, template)


def _rows(examples: list[Example], ctx: ScoreContext, cache: LossCache, name: str,
          template: str) -> Iterator[dict[str, Any]]:
    ep, max_length = ctx.cfg.scoring.server, ctx.cfg.scoring.max_length
    tok = client = probe = None  # made on the first example the cache does not hold
    first = True

    def compute(todo: list[Example]) -> list[dict[str, Any]]:
        nonlocal tok, client, probe, first
        if client is None:
            tok = modeling.load_tokenizer(name)
            client = LLMClient(ep, ctx.cache_dir / "llm.sqlite", check=_echo_check(ep), store=False)
            probe = LLMClient(dataclasses.replace(ep, max_retries=0), ctx.cache_dir / "llm.sqlite",
                              check=_echo_check(ep), store=False)
        prepared = _prepare(tok, todo, template, max_length)
        requests = [r for p in prepared if not isinstance(p, str) for r in p[0]]
        new = _losses(prepared, iter(_ask(client, probe, requests, first)))
        first = False
        return new

    try:
        yield from cached_loss_rows(examples, cache, CHUNK_PER_WORKER * ep.concurrency, True, compute, ctx.stats)
    finally:
        cache.close()
        for c in (client, probe):
            if c is not None:
                c.close()
        if client is not None:
            ctx.log(client.summary("ifd-server requests"))
