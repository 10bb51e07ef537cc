"""Offline evaluation without a judge: the loss of GPT-4's reference answers under each checkpoint.

    phased-ift run configs/quickstart.yaml      # the evaluate step runs after generate when evaluation.reference_loss

For every prompt that has a GPT-4 answer in AlpacaEval (`data.load_reference_answers("alpaca_eval/gpt4")`,
matched by normalised instruction) the checkpoint's mean per-token cross-entropy of that answer given the prompt
is computed (nats/token; prompt rendered with `modeling.render` exactly as in training, loss on answer tokens
only). Lower means the model's distribution is closer to a strong model's answers. It is a cheap proxy, not a
win rate: it rewards GPT-4's style and length as much as its content.

Per-example values are kept, so the report can bootstrap a confidence interval. Output:
`evaluation/<arm>/seed_<s>/phase_<k>/reference_loss.json` (format in docs/architecture.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from phased_ift.data import Example
from phased_ift.errors import PhasedIFTError


def reference_loss(model_dir: str | Path, examples_with_reference: Sequence[Example], template: str,
                   batch_size: int = 8, max_length: int = 1024, loaded: tuple[Any, Any] | None = None) -> dict:
    """Mean per-token loss of reference answers given their prompts.

    Args:
        model_dir: checkpoint dir (full model or adapter), named model or hub id.
        examples_with_reference: Examples whose last message is the reference answer (role "assistant").
        template: "chat" or "paper" (`modeling.render`, as in training).
        batch_size: examples per forward pass (right padding; padding does not change the loss).
        max_length: tokens per prompt + answer; longer answers are cut at the tail (`tokenize_example`), counted
            in "truncated".
        loaded: an already loaded (model, tokenizer), reused across test sets.
    Returns:
        {"mean_loss": mean over examples of their per-token loss (nats; None when there are no examples),
         "token_mean_loss": total loss / total answer tokens, "n": examples, "per_example": [float] in input
         order, "answer_tokens": [int], "truncated": int, "ids": [str]}.
    Raises:
        PhasedIFTError: an example without a reference answer.
    """
    import torch

    from phased_ift.generate import load_for_inference
    from phased_ift.modeling import pad_batch, render, token_losses, tokenize_example

    for e in examples_with_reference:
        if not e.messages or e.messages[-1]["role"] != "assistant" or not e.messages[-1]["content"].strip():
            raise PhasedIFTError(f"reference loss: example {e.id!r} has no reference answer (last message must be "
                                 "the assistant's answer).")
    if not examples_with_reference:
        return {"mean_loss": None, "token_mean_loss": None, "n": 0, "per_example": [], "answer_tokens": [],
                "truncated": 0, "ids": []}
    model, tok = loaded if loaded is not None else load_for_inference(model_dir)
    feats, truncated = [], 0
    for e in examples_with_reference:
        prompt, response = render(tok, e.messages, template)
        f = tokenize_example(tok, prompt, response, max_length)
        full = len(tok(prompt, add_special_tokens=False)["input_ids"]) + len(
            tok(response, add_special_tokens=False)["input_ids"])
        truncated += full > len(f["input_ids"])
        feats.append(f)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    # Similar lengths per batch: less padding. Results are put back in input order.
    order = sorted(range(len(feats)), key=lambda i: len(feats[i]["input_ids"]))
    sums, counts = [0.0] * len(feats), [0] * len(feats)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            loss_sum, n_tok = token_losses(model, pad_batch([feats[i] for i in idx], pad_id, side="right"))
            for j, i in enumerate(idx):
                sums[i], counts[i] = float(loss_sum[j]), int(n_tok[j])
    # Every example keeps answer tokens (tokenize_example gives the prompt at most half the budget).
    per = [s / max(c, 1) for s, c in zip(sums, counts)]
    return {
        "mean_loss": sum(per) / len(per),
        "token_mean_loss": sum(sums) / max(sum(counts), 1),
        "n": len(per),
        "per_example": per,
        "answer_tokens": counts,
        "truncated": truncated,
        "ids": [str(e.id) for e in examples_with_reference],
    }


def attach_references(examples: Sequence[Example], references: dict[str, str]) -> list[Example]:
    """Prompt-only examples that have a reference answer, with it appended as the assistant turn.

    Matching is by `data.normalize_text(instruction)`; prompts without a reference are left out (the caller
    counts them: n_prompts - n).
    """
    from phased_ift.data import normalize_text

    out = []
    for e in examples:
        ref = references.get(normalize_text(e.instruction))
        if ref:
            out.append(Example(id=e.id, messages=list(e.prompt_messages) + [{"role": "assistant", "content": ref}],
                               meta=dict(e.meta)))
    return out
