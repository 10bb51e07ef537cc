"""The inference passes other modules run (they never call torch themselves): greedy generation
(`generate_greedy`), per-example losses of responses (`sequence_losses`, `token_losses`, `response_losses` for
ifd/loss scoring) and sentence embeddings (`encode_sentences`).
"""

from __future__ import annotations

from typing import Any, Sequence

from phased_ift.modeling.precision import resolve_autocast
from phased_ift.modeling.text import pad_batch, tokenize_for_ifd


def generate_greedy(model, prompts: Sequence[list[int]], max_new_tokens: int, stop_ids: Sequence[int],
                    pad_id: int) -> list[list[int]]:
    """Greedy decoding of a batch with transformers `generate`: prompts left-padded, each row stops at any stop id.

    Args: prompts (B token-id lists), max_new_tokens (budget), stop_ids (end a row), pad_id (left padding).
    Returns:
        B lists of the ids generated after the prompt (<= max_new_tokens; a stopped row has its stop id, then
        possibly pad_id).
    """
    import torch
    from transformers import GenerationConfig

    feats = [{"input_ids": p, "attention_mask": [1] * len(p)} for p in prompts]
    batch = pad_batch(feats, pad_id, side="left")
    gen_cfg = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                               eos_token_id=list(stop_ids), pad_token_id=pad_id)
    device = next(model.parameters()).device
    with torch.inference_mode():
        out = model.generate(input_ids=batch["input_ids"].to(device),
                             attention_mask=batch["attention_mask"].to(device), generation_config=gen_cfg)
    return out[:, batch["input_ids"].shape[1]:].tolist()


def sequence_losses(model, features: Sequence[dict[str, list[int]]], pad_id: int,
                    batch_size: int = 8) -> tuple[list[float], list[int]]:
    """Summed loss and labelled-token count of every tokenised example (`token_losses`, no gradients).

    Examples are sorted by length so a batch holds similar lengths (less padding), right-padded (padding does not
    change the loss), and the results put back in input order.

    Args: features (`tokenize_example` rows: input_ids, labels -100 = no loss, attention_mask), pad_id, batch_size
        (examples per forward pass).
    Returns:
        (loss_sum per example in nats, labelled tokens per example), lists in input order.
    """
    import torch

    order = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]))
    sums, counts = [0.0] * len(features), [0] * len(features)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            loss_sum, n_tok = token_losses(model, pad_batch([features[i] for i in idx], pad_id, side="right"))
            for j, i in enumerate(idx):
                sums[i], counts[i] = float(loss_sum[j]), int(n_tok[j])
    return sums, counts


def token_losses(model, batch: dict[str, Any]) -> tuple[Any, Any]:
    """Per-example summed loss and number of labelled tokens.

    Only the positions from the batch's first labelled token on go through the LM head (`logits_to_keep`): with a
    49k-262k vocabulary the head and the softmax cost as much as several layers, and prompt positions need neither.

    Args:
        batch: tensors input_ids/attention_mask/labels [B, T] (labels -100 where no loss), on any device: they
            are moved to the model's.
    Returns:
        (loss_sum [B] float32 nats, n_tokens [B] int64), on the model's device; mean loss per token =
        loss_sum / n_tokens.
    """
    import torch
    import torch.nn.functional as F

    labels = batch["labels"][:, 1:]  # the logits at position t predict token t + 1
    mask = labels != -100
    T = batch["input_ids"].shape[1]
    first = int(mask.any(0).float().argmax()) if bool(mask.any()) else T - 1  # on the batch's device: no GPU sync
    dev = model.device
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"].to(dev), attention_mask=batch["attention_mask"].to(dev),
                       logits_to_keep=T - first).logits  # positions first .. T-1
    logits = logits[:, :-1].float()
    labels, mask = labels[:, first:].to(dev), mask[:, first:].to(dev)
    loss = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100, reduction="none")
    return (loss * mask).sum(1), mask.sum(1)




def response_losses(model, tokenizer, examples: Sequence[Any], *, template: str = "chat", max_length: int = 512,
                    batch_size: int = 8, unconditioned: bool = True, stats: dict | None = None,
                    autocast: str = "none") -> list[dict[str, Any]]:
    """Per-token mean response losses of each example, batched by length.

    All sequences (conditioned and, when asked, unconditioned) are sorted by length and cut into batches of
    `batch_size`, so a batch holds sequences of similar length and little padding; pad tokens are right-padded
    and masked, so they do not change any value (a causal model never attends to later positions).

    Args:
        examples: Examples ending with an assistant response.
        batch_size: sequences per forward pass; 1 gives the reference one-at-a-time loop (Cherry LLM).
        unconditioned: also compute the loss of the response alone (for IFD).
        stats: if given, "tokens" and "pad_tokens" are added to it (padding fraction = pad_tokens / tokens).
        autocast: "bf16" / "fp16" run the forward passes under that autocast (the weights stay as loaded, the
            losses are computed from fp32 logits); "none" computes in the model's dtype; "auto" as
            `precision.resolve_autocast`.
    Returns:
        One dict per example, in order: {"loss_cond": float nats, "loss_uncond": float|None, "n_tokens": int} or
        {"error": str}.
    """
    import torch

    autocast = resolve_autocast(autocast)[0]
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(autocast)
    feats: list[tuple[int, str, dict]] = []  # (example index, "cond"|"uncond", features)
    out: list[dict[str, Any]] = [{} for _ in examples]
    for i, ex in enumerate(examples):
        t = tokenize_for_ifd(tokenizer, ex, template, max_length)
        if isinstance(t, str):
            out[i] = {"error": t}
            continue
        feats.append((i, "cond", t[0]))
        if unconditioned:
            feats.append((i, "uncond", t[1]))
    feats.sort(key=lambda f: len(f[2]["input_ids"]))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    model.eval()
    for b in range(0, len(feats), batch_size):
        chunk = feats[b: b + batch_size]
        batch = pad_batch([f[2] for f in chunk], pad_id)
        with torch.inference_mode(), torch.autocast(model.device.type, amp or torch.bfloat16, enabled=amp is not None):
            loss_sum, n_tok = token_losses(model, batch)
        if stats is not None:
            stats["tokens"] = stats.get("tokens", 0) + batch["input_ids"].numel()
            stats["pad_tokens"] = stats.get("pad_tokens", 0) + int((batch["attention_mask"] == 0).sum())
        for (i, kind, _), s, n in zip(chunk, loss_sum.tolist(), n_tok.tolist()):
            out[i]["loss_" + kind] = s / n
            if kind == "cond":
                out[i]["n_tokens"] = int(n)
    for o in out:
        if "error" not in o:
            o.setdefault("loss_uncond", None)
    return out




def encode_sentences(encoder, texts: Sequence[str], batch_size: int = 64):
    """Unit-length sentence embeddings of `texts`: numpy float32 [N, dim] (dim 384 for MiniLM-L6)."""
    import numpy as np

    return encoder.encode(list(texts), batch_size=batch_size, normalize_embeddings=True,
                          convert_to_numpy=True).astype(np.float32)
