"""Offline evaluation without a judge: the loss of GPT-4's reference answers under each checkpoint.

    phased-ift run configs/quickstart.yaml      # the evaluate step runs after generate when evaluation.reference_loss

For every prompt that has a GPT-4 answer in AlpacaEval (`data.load_reference_answers("alpaca_eval/gpt4")`,
matched by normalised instruction) the checkpoint's mean per-token cross-entropy of that answer given the prompt
is computed (nats/token; prompt rendered with `modeling.render` exactly as in training, loss on answer tokens
only). Lower means the model's distribution is closer to a strong model's answers. It is a cheap proxy, not a
win rate: it rewards GPT-4's style and length as much as its content.

Per-example values are kept, so the report can bootstrap a confidence interval. Output:
`evaluation/<arm>/seed_<s>/phase_<k>/reference_loss.json` (format in docs/architecture.md).

Under a launch of several processes (torchrun / `accelerate launch`) every rank runs the evaluate step: each
checkpoint's prompts are spread over the ranks (`sharding.shard`: rank r takes the prompts i with i % W == r), each
rank writes its loss sums to `reference_loss.shards/rank<r>-of-<W>.json` beside the output (atomically, once: a
killed launch keeps the finished ranks' files, checked against the checkpoint's weights fingerprint and the
prompt ids), and the main process merges them in prompt order into the file one process writes
(`_spread_reference_loss`).

Owns: matching prompts to reference answers (`attach_references`), the reference loss of one checkpoint
(`reference_loss`, all checkpoints: `reference_loss_all`) and the evaluate step's body (`evaluate_all`: every
metric of the `METRICS` registry over every checkpoint of `design.evaluation_cells`; IFEval's scoring is
`ifeval.py`'s). The forward passes run in `modeling.sequence_losses`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from phased_ift import shutdown
from phased_ift.config import Config
from phased_ift.data import Example, load_reference_answers, load_test_set, normalize_text
from phased_ift.design import evaluation_cells
from phased_ift.errors import PhasedIFTError
from phased_ift.generate import checkpoint_dir, load_for_inference, testset_key
from phased_ift.ifeval import ifeval_all
from phased_ift.modeling import inference_dtype, render, sequence_losses, tokenize_example, weights_fingerprint
from phased_ift.rundir import RunDir
from phased_ift.runio import atomic_write_json
from phased_ift.sharding import Launch, ShardFiles, await_ranks, current_launch, shard, unshard


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
    for e in examples_with_reference:
        if not e.messages or e.messages[-1]["role"] != "assistant" or not e.messages[-1]["content"].strip():
            raise PhasedIFTError(f"reference loss: example {e.id!r} has no reference answer (last message must be "
                                 "the assistant's answer).")
    if not examples_with_reference:
        return {"mean_loss": None, "token_mean_loss": None, "n": 0, "per_example": [], "answer_tokens": [],
                "truncated": 0, "ids": []}
    model, tok = loaded if loaded is not None else load_for_inference(model_dir)
    feats, truncated = _tokenize_references(tok, examples_with_reference, template, max_length)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    # Similar lengths per batch (less padding); the results come back in input order.
    sums, counts = sequence_losses(model, feats, pad_id, batch_size)
    return summarize_reference(sums, counts, truncated, [str(e.id) for e in examples_with_reference])


def summarize_reference(sums: Sequence[float], counts: Sequence[int], truncated: int, ids: Sequence[str]) -> dict:
    """The `reference_loss` dict from per-example loss sums (nats) and answer-token counts, in prompt order."""
    if not ids:
        return {"mean_loss": None, "token_mean_loss": None, "n": 0, "per_example": [], "answer_tokens": [],
                "truncated": 0, "ids": []}
    # Every example keeps answer tokens (tokenize_example gives the prompt at most half the budget).
    per = [s / max(c, 1) for s, c in zip(sums, counts)]
    return {
        "mean_loss": sum(per) / len(per),
        "token_mean_loss": sum(sums) / max(sum(counts), 1),
        "n": len(per),
        "per_example": per,
        "answer_tokens": list(counts),
        "truncated": truncated,
        "ids": list(ids),
    }


def _tokenize_references(tok, examples: Sequence[Example], template: str, max_length: int) -> tuple[list[dict], int]:
    """(`tokenize_example` rows of prompt + reference answer, how many were cut to max_length)."""
    feats, truncated = [], 0
    for e in examples:
        prompt, response = render(tok, e.messages, template)
        f = tokenize_example(tok, prompt, response, max_length)
        full = len(tok(prompt, add_special_tokens=False)["input_ids"]) + len(
            tok(response, add_special_tokens=False)["input_ids"])
        truncated += full > len(f["input_ids"])
        feats.append(f)
    return feats, truncated


def attach_references(examples: Sequence[Example], references: dict[str, str]) -> list[Example]:
    """Prompt-only examples that have a reference answer, with it appended as the assistant turn.

    Matching is by `data.normalize_text(instruction)`; prompts without a reference are left out (the caller
    counts them: n_prompts - n).
    """
    out = []
    for e in examples:
        ref = references.get(normalize_text(e.instruction))
        if ref:
            out.append(Example(id=e.id, messages=list(e.prompt_messages) + [{"role": "assistant", "content": ref}],
                               meta=dict(e.meta)))
    return out


def evaluate_all(cfg: Config, run: RunDir, console: Any = None) -> None:
    """The evaluate step: every judge-free metric of `METRICS`, in order (each skips finished files and logs what
    it does or why it is off): the reference-answer loss (`reference_loss_all`) and IFEval (`ifeval.ifeval_all`,
    when `ifeval` is among generate.test_sets).

    Args:
        cfg: the config; run: the `RunDir`; console: a rich Console (default: stderr).
    """
    from rich.console import Console

    console = console or Console(stderr=True)
    for metric in METRICS.values():
        metric(cfg, run, console)


def _ifeval(cfg: Config, run: RunDir, console: Any) -> None:
    ifeval_all(cfg, run, console)


def reference_loss_all(cfg: Config, run: RunDir, console: Any = None) -> None:
    """Offline evaluation: loss of the reference answers (`evaluation.reference`) under every checkpoint of
    `design.evaluation_cells` -> evaluation/<arm>/seed_<s>/phase_<k>/reference_loss.json.

    Prompts: those of generate.test_sets that have a reference (matched by normalised instruction, counts
    logged), or a seeded evaluation.limit sample of alpaca_eval. Existing files are skipped; with
    evaluation.reference_loss false nothing runs (logged).

    Args:
        cfg: the config (`evaluation`, `generate`, `model`, `train` sections); run: the `RunDir`.
    Raises:
        PhasedIFTError: no prompt has a reference answer; a checkpoint has not finished training.
    """
    from rich.console import Console

    console = console or Console(stderr=True)
    ev = cfg.evaluation
    if not ev.reference_loss:
        console.print("evaluate: evaluation.reference_loss is false; skipped", highlight=False)
        return
    sets, matched = _reference_prompts(cfg, console)
    launch = current_launch()
    for c in evaluation_cells(cfg, run):
        out = run.evaluation(c.arm, c.phase, c.seed)
        if out.is_file():
            continue
        shutdown.check(f"before the reference loss of {c.arm} seed {c.seed} phase {c.phase}")
        ckpt = checkpoint_dir(run, c.arm, c.phase, c.seed)
        result = {"arm": c.arm, "phase": c.phase, "seed": c.seed, "reference": ev.reference, "testsets": {}}
        if launch.spread:
            spread = _spread_reference_loss(cfg, ckpt, out, matched, launch)
            if spread is None:
                continue  # a rank > 0: the main process has written `out`
        else:
            loaded = load_for_inference(ckpt, dtype=inference_dtype(cfg.model.dtype, cfg.model.autocast))
        for name, ex in matched.items():
            r = spread[name] if launch.spread else reference_loss(ckpt, ex, cfg.model.template, ev.batch_size,
                                                                   ev.max_length, loaded=loaded)
            result["testsets"][name] = {**r, "n_prompts": len(sets[name])}
        atomic_write_json(out, result, indent=1)
        if launch.spread:
            ShardFiles(out, launch.world).clear(merged=True)
        means = ", ".join(f"{n} {t['mean_loss']:.3f}" for n, t in result["testsets"].items() if t["n"])
        console.print(f"evaluate: {c.arm} seed {c.seed} phase {c.phase}: reference loss {means} -> {out}",
                      highlight=False)


def _spread_reference_loss(cfg: Config, ckpt: Path, out: Path, matched: dict[str, list[Example]],
                           launch: Launch) -> dict[str, dict] | None:
    """One rank's part of a checkpoint's reference loss under a launch of several processes (module docstring);
    `launch` is this process's `sharding.Launch`, `matched` the prompts with their reference answers per test set.

    Rank r computes (or finds from a killed launch) its part, `reference_loss.shards/rank<r>-of-<W>.json`:
    {"checkpoint": weights fingerprint, "testsets": {name: {"ids", "sums" (nats), "counts" (answer tokens),
    "truncated" (int)}}}. Ranks > 0 then wait until the main process has written `out` and return None; the main
    process waits for every part (`sharding.await_ranks`) and returns {test set: `reference_loss`'s dict}.

    Raises:
        sharding.ShardStalled: a rank's part did not appear within $PHASED_IFT_SHARD_TIMEOUT_S of the last one.
    """
    files, world = ShardFiles(out, launch.world), launch.world
    expect = [{name: [str(e.id) for e in shard(ex, Launch(r, world))] for name, ex in matched.items()}
              for r in range(world)]
    fingerprint = _fingerprint(ckpt)
    if _read_part(files.result(launch.rank), expect[launch.rank], fingerprint) is None:
        mine = {name: shard(ex, launch) for name, ex in matched.items()}
        part = {"checkpoint": fingerprint, "testsets": _reference_parts(cfg, ckpt, mine)}
        if not out.is_file():  # else the main process merged a killed launch's parts meanwhile: nothing to add
            atomic_write_json(files.result(launch.rank), part)
    if not launch.main:
        await_ranks(lambda: [] if out.is_file() else [0], lambda r: [files.result(q) for q in range(world)] + [out],
                    f"{out} (the main process merges)", world)
        return None
    await_ranks(lambda: [r for r in range(world) if _read_part(files.result(r), expect[r], fingerprint) is None],
                lambda r: [files.result(r)], str(out), world)
    parts = [_read_part(files.result(r), expect[r], fingerprint) or {} for r in range(world)]
    return {name: summarize_reference(unshard([p[name]["sums"] for p in parts]),
                                      unshard([p[name]["counts"] for p in parts]),
                                      sum(p[name]["truncated"] for p in parts),
                                      unshard([p[name]["ids"] for p in parts]))
            for name in matched}


def _reference_parts(cfg: Config, ckpt: Path, examples: dict[str, list[Example]]) -> dict[str, dict]:
    """{test set: {"ids", "sums", "counts", "truncated"}} of these examples under the checkpoint (loaded only when
    some test set has examples)."""
    ev = cfg.evaluation
    loaded = None
    parts = {}
    for name, ex in examples.items():
        sums, counts, truncated = [], [], 0
        if ex:
            loaded = loaded or load_for_inference(ckpt, dtype=inference_dtype(cfg.model.dtype, cfg.model.autocast))
            model, tok = loaded
            feats, truncated = _tokenize_references(tok, ex, cfg.model.template, ev.max_length)
            pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
            sums, counts = sequence_losses(model, feats, pad_id, ev.batch_size)
        parts[name] = {"ids": [str(e.id) for e in ex], "sums": sums, "counts": counts, "truncated": truncated}
    return parts


def _fingerprint(ckpt: Path) -> str | None:
    return weights_fingerprint(str(ckpt))


def _read_part(path: Path, ids: dict[str, list[str]], fingerprint: str | None) -> dict[str, dict] | None:
    """A rank's part when it is there and is of this checkpoint and these prompts, else None."""
    import json

    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    parts = d.get("testsets") if isinstance(d, dict) and d.get("checkpoint") == fingerprint else None
    if not isinstance(parts, dict) or any(parts.get(n, {}).get("ids") != want for n, want in ids.items()):
        return None
    return parts


# The judge-free metrics of the evaluate step, in the order they run: name -> body(cfg, run, console).
METRICS: dict[str, Any] = {"reference_loss": reference_loss_all, "ifeval": _ifeval}


def _reference_prompts(cfg: Config, console: Any) -> tuple[dict[str, list[Example]], dict[str, list[Example]]]:
    """({test set: prompts}, {test set: the prompts that have a reference answer, with it attached}); logs the
    counts per test set.

    Raises:
        PhasedIFTError: no prompt of any test set has a reference answer.
    """
    ev, g = cfg.evaluation, cfg.generate
    refs = load_reference_answers(ev.reference)
    if ev.limit:
        sets = {"alpaca_eval": load_test_set("alpaca_eval", limit=ev.limit, seed=cfg.seed)}
    else:
        sets = {testset_key(n): load_test_set(n, limit=g.limit, seed=g.seed) for n in g.test_sets}
    matched = {name: attach_references(ex, refs) for name, ex in sets.items()}
    for name, ex in sets.items():
        console.print(f"evaluate: {name}: {len(matched[name])} of {len(ex)} prompts have a reference answer "
                      f"({ev.reference})", highlight=False)
    if not any(matched.values()):
        raise PhasedIFTError(f"evaluate: none of the prompts of {list(sets)} has a reference answer in "
                             f"{ev.reference}; add vicuna/oasst/helpful_base/alpaca_eval to generate.test_sets or "
                             "set evaluation.limit=N to use a sample of alpaca_eval.")
    return sets, matched
