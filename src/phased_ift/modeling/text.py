"""Prompt rendering and tokenisation, shared by training, scoring, generation and evaluation, so a model sees the
same text at training and at evaluation time: `render` (chat template or the paper's template), `tokenize_example`
(labels -100 on the prompt), `pad_batch`, and the IFD tokenisation (`tokenize_for_ifd`).

The batched forms give the same output as the per-example ones for many examples at a time: `render_batch` (one
`apply_chat_template` call per chunk, so the template's checks and set-up run once, not per example),
`tokenize_batch` / `token_lengths` (one batched tokenizer call: a fast tokenizer's `encode_batch`). Training's rows
and the plan's token counts use them; `tokenizer_fingerprint` names what a token count depends on;
`tokenized_ahead` tokenises the next batch on a second thread while the caller handles this one.
"""

from __future__ import annotations

import hashlib
import json
from importlib import metadata
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar

from phased_ift.errors import PhasedIFTError

T = TypeVar("T")
R = TypeVar("R")

# The paper's template (xubuvd/PhasedSFT): <s>User: {instruction}\n{input}</s>\nAssistant: {response}</s>
PAPER_PROMPT = "{bos}User: {instruction}{eos}\nAssistant: "
PAPER_RESPONSE = "{response}{eos}"



def render(tokenizer, messages: Sequence[dict[str, str]], template: str = "chat") -> tuple[str, str]:
    """Render chat turns into (prompt_text, response_text).

    The last assistant turn is the response (may be absent: response_text = "" for generation). With
    template="chat" the tokenizer's chat template renders the turns and the response text includes the end-of-turn
    tokens, so the model learns to stop. With template="paper" the PhasedSFT template is used.

    Raises:
        PhasedIFTError: template="chat" but the tokenizer has no chat template (e.g. a base model).
    """
    msgs = list(messages)
    has_response = bool(msgs) and msgs[-1]["role"] == "assistant"
    prompt_msgs = msgs[:-1] if has_response else msgs
    if template == "paper":
        bos = tokenizer.bos_token or ""
        eos = tokenizer.eos_token or ""
        system = "".join(m["content"] + "\n" for m in prompt_msgs if m["role"] == "system")
        turns = [m for m in prompt_msgs if m["role"] != "system"]
        prompt = bos
        for m in turns:
            if m["role"] == "user":
                prompt += PAPER_PROMPT.format(bos="", instruction=system + m["content"], eos=eos)
                system = ""
            else:
                prompt += PAPER_RESPONSE.format(response=m["content"], eos=eos) + "\n"
        response = PAPER_RESPONSE.format(response=msgs[-1]["content"], eos=eos) if has_response else ""
        return prompt, response
    if template != "chat":
        raise PhasedIFTError(f"unknown prompt template {template!r}; use 'chat' or 'paper'.")
    if not getattr(tokenizer, "chat_template", None):
        raise PhasedIFTError(
            "this tokenizer has no chat template (a base model?); set model.template=paper to use the paper's "
            "'User: ... Assistant: ...' template."
        )
    prompt = tokenizer.apply_chat_template(prompt_msgs, tokenize=False, add_generation_prompt=True)
    if not has_response:
        return prompt, ""
    full = tokenizer.apply_chat_template(msgs, tokenize=False)
    if not full.startswith(prompt):
        raise PhasedIFTError("the chat template renders the prompt differently with and without the answer; "
                             "use model.template=paper for this tokenizer.")
    return prompt, full[len(prompt):]


def tokenize_example(tokenizer, prompt: str, response: str, max_length: int) -> dict[str, list[int]]:
    """Token ids with labels = -100 on the prompt (loss on response tokens only).

    Special tokens come from the rendered text (add_special_tokens=False), except a BOS the tokenizer always adds
    (e.g. Gemma) when the text has none. Over-long examples keep at most half the budget for the prompt (its end)
    and cut the response's tail.

    Returns:
        {"input_ids": [T], "labels": [T], "attention_mask": [T]}, T <= max_length.
    """
    p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    r_ids = tokenizer(response, add_special_tokens=False)["input_ids"] if response else []
    return _assemble(tokenizer, p_ids, r_ids, max_length)


def _assemble(tokenizer, p_ids: list[int], r_ids: list[int], max_length: int) -> dict[str, list[int]]:
    """The row of `tokenize_example` from the prompt's and the response's ids: the BOS the tokenizer always adds,
    the truncation (the prompt's end, at most half the budget when the response needs the rest)."""
    if _adds_bos(tokenizer, p_ids):
        p_ids = [tokenizer.bos_token_id] + p_ids
    if len(p_ids) + len(r_ids) > max_length:
        keep_p = min(len(p_ids), max(max_length // 2, max_length - len(r_ids)))
        p_ids = p_ids[len(p_ids) - keep_p:]
        r_ids = r_ids[: max_length - keep_p]
    ids = p_ids + r_ids
    return {"input_ids": ids, "labels": [-100] * len(p_ids) + r_ids, "attention_mask": [1] * len(ids)}


def _adds_bos(tokenizer, p_ids: list[int]) -> bool:
    """Whether `_assemble` puts the BOS before these prompt ids: the tokenizer always adds one (`add_bos_token`)
    and the prompt does not start with it already."""
    bos = tokenizer.bos_token_id
    return bool(bos is not None and getattr(tokenizer, "add_bos_token", False) and (not p_ids or p_ids[0] != bos))


def render_batch(tokenizer, conversations: Sequence[Sequence[dict[str, str]]],
                 template: str = "chat") -> list[tuple[str, str]]:
    """`render` of many conversations: the same (prompt_text, response_text) per conversation, in order.

    With template="chat" the prompts go through one `apply_chat_template` call and the full conversations (those
    that end with an assistant turn) through a second one: transformers renders a batch in one loop over its
    compiled template, where a call per conversation repeats the template lookup, the compile-cache lookup and the
    keyword set-up. A conversation with no prompt turn is rendered by `render` alone (its error is `render`'s).
    Measured on SmolLM2's template: 2.8x faster than `render` per conversation (2,000 Alpaca-style conversations).

    Raises:
        PhasedIFTError: as `render` (unknown template, no chat template, a template that renders the prompt
            differently with and without the answer).
    """
    convs = [list(m) for m in conversations]
    if template != "chat" or not convs:
        return [render(tokenizer, m, template) for m in convs]
    if not getattr(tokenizer, "chat_template", None):
        return [render(tokenizer, m, template) for m in convs]  # raises render's error
    has_resp = [bool(m) and m[-1]["role"] == "assistant" for m in convs]
    prompt_msgs = [m[:-1] if r else m for m, r in zip(convs, has_resp)]
    batched = [i for i, p in enumerate(prompt_msgs) if p]
    prompts = _chat_texts(tokenizer, [prompt_msgs[i] for i in batched], add_generation_prompt=True)
    with_resp = [i for i in batched if has_resp[i]]
    fulls = dict(zip(with_resp, _chat_texts(tokenizer, [convs[i] for i in with_resp], add_generation_prompt=False)))
    out: dict[int, tuple[str, str]] = {}
    for i, prompt in zip(batched, prompts):
        full = fulls.get(i)
        if full is not None and not full.startswith(prompt):
            raise PhasedIFTError("the chat template renders the prompt differently with and without the answer; "
                                 "use model.template=paper for this tokenizer.")
        out[i] = (prompt, full[len(prompt):] if full is not None else "")
    return [out[i] if i in out else render(tokenizer, convs[i], template) for i in range(len(convs))]


def _chat_texts(tokenizer, conversations: list[list[dict[str, str]]], add_generation_prompt: bool) -> list[str]:
    """The chat template's text of each conversation (one batched `apply_chat_template` call; [] for none)."""
    if not conversations:
        return []
    return list(tokenizer.apply_chat_template(conversations, tokenize=False,
                                              add_generation_prompt=add_generation_prompt))


def encode_texts(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """The token ids of each text, no special tokens added: `tokenizer(texts, add_special_tokens=False)`'s
    input_ids, in order ([] for no texts).

    A fast tokenizer whose backend is in the state transformers' call would put it in (no truncation, no padding,
    special tokens split as `split_special_tokens` says) is called directly with `encode_batch_fast` (tokenizers >=
    0.21: the same ids without the character offsets; 1.4x faster than the transformers call on Alpaca-length
    texts, benchmarks/bench_token_counts.py); any other tokenizer goes through the transformers call. The ids are
    the same either way (tests/test_tokencounts.py)."""
    if not texts:
        return []
    encode = _direct_encode(tokenizer)
    if encode is not None:
        return [e.ids for e in encode(list(texts), add_special_tokens=False)]
    return tokenizer(list(texts), add_special_tokens=False, return_attention_mask=False)["input_ids"]


def text_lengths(tokenizer, texts: Sequence[str]) -> list[int]:
    """len(ids) of each text's `encode_texts` ids, without building the id lists on the direct path (an
    `Encoding`'s length; the id lists cost about a sixth of a count)."""
    encode = _direct_encode(tokenizer) if texts else None
    if encode is not None:
        return [len(e) for e in encode(list(texts), add_special_tokens=False)]
    return [len(ids) for ids in encode_texts(tokenizer, texts)]


def _direct_encode(tokenizer):
    """The backend's batch encoder when `encode_texts` may call it directly (see there), else None."""
    backend = getattr(tokenizer, "backend_tokenizer", None) if getattr(tokenizer, "is_fast", False) else None
    if (backend is not None and backend.truncation is None and backend.padding is None
            and bool(getattr(backend, "encode_special_tokens", False))
            == bool(getattr(tokenizer, "split_special_tokens", False))):
        return getattr(backend, "encode_batch_fast", backend.encode_batch)
    return None


def _batch_ids(tokenizer, pairs: Sequence[tuple[str, str]]) -> tuple[list[list[int]], list[list[int]]]:
    """(prompt ids, response ids) of each (prompt, response) from one batched tokenizer call (no special tokens
    added; an empty response has no ids, as in `tokenize_example`). A fast tokenizer encodes a list with one
    `encode_batch` call, exactly as it encodes one string (a one-element batch)."""
    texts = [p for p, _ in pairs] + [r for _, r in pairs if r]
    ids = encode_texts(tokenizer, texts)
    p_ids, rest = ids[:len(pairs)], iter(ids[len(pairs):])
    return p_ids, [next(rest) if r else [] for _, r in pairs]


def tokenize_batch(tokenizer, pairs: Sequence[tuple[str, str]], max_length: int) -> list[dict[str, list[int]]]:
    """`tokenize_example` of many (prompt, response) pairs with one batched tokenizer call: the same rows, in order.

    Returns:
        One {"input_ids": [T], "labels": [T], "attention_mask": [T]} per pair, T <= max_length.
    """
    p_ids, r_ids = _batch_ids(tokenizer, pairs)
    return [_assemble(tokenizer, p, r, max_length) for p, r in zip(p_ids, r_ids)]


def token_lengths(tokenizer, pairs: Sequence[tuple[str, str]], max_length: int) -> list[int]:
    """The length T (tokens) of each pair's `tokenize_example` row, batched, without building the rows.

    T = min(P + R, max_length), P = the prompt's ids with the BOS `_assemble` adds, R = the response's ids: the
    truncation keeps k <= max_length prompt ids and min(R, max_length - k) response ids, which is max_length
    whenever P + R > max_length (tests/test_tokencounts.py checks it against the rows)."""
    p_ids, r_ids = _batch_ids(tokenizer, pairs)
    return [min(len(p) + _adds_bos(tokenizer, p) + len(r), max_length) for p, r in zip(p_ids, r_ids)]


def tokenized_ahead(batches: Iterable[T], work: Callable[[T], R]) -> Iterator[tuple[T, R]]:
    """(batch, work(batch)) for each batch, in order, with `work` of the next batch running on a second thread
    while the caller handles this one: a fast tokenizer's batch call releases the GIL, so on two cores the
    tokenising overlaps the caller's Python work (reading the next batch, building and writing rows). At most two
    batches are read ahead of the caller. `work`'s exception is raised at its batch.
    """
    stream = iter(batches)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenized-ahead") as pool:
        batch = next(stream, _END)
        pending = pool.submit(work, batch) if batch is not _END else None
        while pending is not None:
            following = next(stream, _END)
            ahead = pool.submit(work, following) if following is not _END else None
            yield batch, pending.result()
            batch, pending = following, ahead


_END = object()


def tokenizer_fingerprint(tokenizer) -> str:
    """A sha256 hex digest of everything a token count depends on besides the text: the tokenizer's class, its
    model (a fast tokenizer's serialised `tokenizer.json`, else its vocabulary), added and special tokens, the BOS
    rule, the chat template, and the installed transformers and tokenizers versions. Two tokenizers with the same
    digest give the same ids for the same text; a changed file or package gives a new digest (a cache keyed by it
    is then stale, never silently reused)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    model = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    parts = {
        "class": type(tokenizer).__name__, "model": hashlib.sha256(model.encode("utf-8")).hexdigest(),
        "special": {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())},
        "bos_token_id": tokenizer.bos_token_id, "add_bos_token": bool(getattr(tokenizer, "add_bos_token", False)),
        "split_special_tokens": bool(getattr(tokenizer, "split_special_tokens", False)),
        "chat_template": getattr(tokenizer, "chat_template", None),
        "versions": {pkg: _version(pkg) for pkg in ("transformers", "tokenizers")},
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "none"


def pad_batch(features: Sequence[dict[str, list[int]]], pad_id: int, side: str = "right") -> dict[str, Any]:
    """Pad a list of tokenised examples into tensors [B, T_max] (labels padded with -100)."""
    import torch

    T = max(len(f["input_ids"]) for f in features)
    out: dict[str, list[list[int]]] = {"input_ids": [], "attention_mask": [], "labels": []}
    for f in features:
        n = T - len(f["input_ids"])
        pads = {"input_ids": [pad_id] * n, "attention_mask": [0] * n, "labels": [-100] * n}
        for k in out:
            row = f.get(k, f["input_ids"] if k == "labels" else None)
            out[k].append(pads[k] + list(row) if side == "left" else list(row) + pads[k])
    return {k: torch.tensor(v, dtype=torch.long) for k, v in out.items()}



def _response_header(prompt: str, user_content: str) -> str:
    """The text between the last user message and the response (e.g. "<|im_end|>\\n<|im_start|>assistant\\n").

    Cherry LLM scores the response "alone" after the bare "### Response:" marker; this is the same marker for any
    template: the assistant-turn header that the rendered prompt puts before the response.
    """
    i = prompt.rfind(user_content) if user_content else -1
    return prompt[i + len(user_content):] if i >= 0 else ""


def tokenize_for_ifd(tokenizer, example: Any, template: str, max_length: int) -> tuple[dict, dict] | str:
    """Token ids of one example conditioned on its instruction and alone (after the assistant header only).

    Both sequences label the same response tokens: when the conditioned one is truncated (max_length), the
    unconditioned one keeps the same number of response tokens, so the two mean losses are over identical tokens.

    Args:
        example: a `data.Example` (its messages, instruction = first user turn, response = last assistant turn).
    Returns:
        (conditioned, unconditioned) features for `pad_batch`, or an error string (no response tokens).
    """
    prompt, response = render(tokenizer, example.messages, template)
    if not example.response.strip():
        return "empty response: no tokens to score"
    cond = tokenize_example(tokenizer, prompt, response, max_length)
    n_resp = sum(1 for t in cond["labels"] if t != -100)
    uncond = tokenize_example(tokenizer, _response_header(prompt, example.instruction), response, max_length)
    n_head = len(uncond["input_ids"]) - sum(1 for t in uncond["labels"] if t != -100)
    uncond = {k: v[: n_head + n_resp] for k, v in uncond.items()}
    if n_resp == 0 or n_head == 0:
        # n_head == 0: the first response token would have no context at all, so it could not be scored.
        return "no response token left to score (prompt fills max_length or empty header)"
    return cond, uncond

