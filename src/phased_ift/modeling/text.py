"""Prompt rendering and tokenisation, shared by training, scoring, generation and evaluation, so a model sees the
same text at training and at evaluation time: `render` (chat template or the paper's template), `tokenize_example`
(labels -100 on the prompt), `pad_batch`, and the IFD tokenisation (`tokenize_for_ifd`).
"""

from __future__ import annotations

from typing import Any, Sequence

from phased_ift.errors import PhasedIFTError

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
    bos = tokenizer.bos_token_id
    if bos is not None and getattr(tokenizer, "add_bos_token", False) and (not p_ids or p_ids[0] != bos):
        p_ids = [bos] + p_ids
    if len(p_ids) + len(r_ids) > max_length:
        keep_p = min(len(p_ids), max(max_length // 2, max_length - len(r_ids)))
        p_ids = p_ids[len(p_ids) - keep_p:]
        r_ids = r_ids[: max_length - keep_p]
    ids = p_ids + r_ids
    return {"input_ids": ids, "labels": [-100] * len(p_ids) + r_ids, "attention_mask": [1] * len(ids)}


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

