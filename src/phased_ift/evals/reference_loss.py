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
(`reference_loss`), of every checkpoint of `design.evaluation_cells` (`reference_loss_all`), and the benchmark
`BENCHMARK` (`evals.Benchmark`): its summary entries (mean loss with a bootstrap CI per file and test set), report
section, verdict lines (`final_losses`: the last phase's loss per test set, arm and seed, which the win-rate lines
also quote) and the answer's per-prompt values. The forward passes run in `modeling.sequence_losses`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from phased_ift import shutdown
from phased_ift.blocks import fmt_ci, fmt_num, table
from phased_ift.config import Config
from phased_ift.config_choices import BENCHMARKS
from phased_ift.data import Example, load_reference_answers, load_test_set, normalize_text
from phased_ift.phases.design import evaluation_cells
from phased_ift.errors import PhasedIFTError
from phased_ift.evals.benchmark import Benchmark, EffectMetric, PerPrompt, is_final, read_result, unless_dry_run
from phased_ift.phasedir import finished_checkpoint
from phased_ift.modeling import load_for_inference
from phased_ift.config_choices import testset_key
from phased_ift.modeling import inference_dtype, render, sequence_losses, tokenize_example, weights_fingerprint
from phased_ift.rundir import RunDir
from phased_ift.runio import atomic_write_json
from phased_ift.sharding import Launch, ShardFiles, await_ranks, current_launch, shard, unshard
from phased_ift.stats import mean_with_ci


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
        ckpt = finished_checkpoint(run, c.arm, c.phase, c.seed)
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
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    parts = d.get("testsets") if isinstance(d, dict) and d.get("checkpoint") == fingerprint else None
    if not isinstance(parts, dict) or any(parts.get(n, {}).get("ids") != want for n, want in ids.items()):
        return None
    return parts


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


# ---------------------------------------------------------------------------------------------------------------
# The benchmark: summary, report section, verdict lines, the answer's per-prompt values
# ---------------------------------------------------------------------------------------------------------------


def summarize(run: RunDir, cfg: Config) -> dict[str, Any]:
    """{"reference_loss": mean reference-answer loss with a bootstrap CI per evaluation file and test set}: entries
    {"arm", "seed", "phase", "testset", "n", "mean", "ci"}. Test sets without any reference answer (n = 0) are left
    out; their count stays in the file.

    Raises:
        PhasedIFTError: a file that is not valid JSON (names it and the fix).
    """
    rc, out = cfg.report, []
    for e in run.evaluation_files():
        data = read_result(e.path)
        for name, t in sorted((data.get("testsets") or {}).items()):
            if not t.get("n"):  # no prompt of this test set has a reference answer (IFEval): nothing to show
                continue
            per = t.get("per_example") or []
            m = mean_with_ci(per, rc.bootstrap, rc.confidence, rc.seed)
            if not per:  # no per-example losses: keep the stored mean, no interval
                m = {"n": t.get("n"), "mean": t.get("mean_loss"), "ci": None}
            out.append({"arm": e.arm, "seed": e.seed, "phase": e.phase, "testset": name, **m})
    return {"reference_loss": out}


def _missing(cfg: Config) -> str:
    return ("No offline evaluation (evaluation/*/reference_loss.json): enable evaluation.reference_loss and run the "
            "evaluation step.")


def _blocks(s: dict, plots: dict[str, str], cl: str) -> list[tuple]:
    """The offline evaluation: loss of the reference answers with CIs."""
    return [("p", f"Mean per-token loss (nats) of the reference answers given the prompt; lower = closer to the "
                  f"reference model's answers. {cl} by bootstrap over examples."),
            table(["arm", "seed", "phase", "test set", "examples", "mean loss", cl],
                  [[x["arm"], x["seed"], x["phase"], x["testset"], x["n"], x["mean"], fmt_ci(x["ci"])]
                   for x in s["reference_loss"]])]


def final_losses(summary: dict) -> dict[tuple, dict]:
    """{(testset, arm, seed): the summary entry of that arm's last phase}."""
    last: dict = {}
    for e in summary.get("reference_loss", []):
        key = (e["testset"], e["arm"], e["seed"])
        if key not in last or e["phase"] > last[key]["phase"]:
            last[key] = e
    return last


def quoted_losses(refs: dict[tuple, dict], c: dict) -> tuple[dict, dict] | None:
    """The final reference-loss entries (of `final_losses`) of both arms of a win-rate comparison `c`, which its
    verdict line quotes (`report.verdicts.verdict_lines`); None unless both arms have a mean on its test set."""
    ra, rb = refs.get((c["testset"], c["arm_a"], c["seed"])), refs.get((c["testset"], c["arm_b"], c["seed"]))
    return (ra, rb) if ra and rb and ra["mean"] is not None and rb["mean"] is not None else None


def covered(summary: dict) -> set[tuple[str, int]]:
    """The (test set, seed) pairs whose final reference losses the win-rate lines quote (`quoted_losses`)."""
    refs = final_losses(summary)
    return {(c["testset"], c["seed"]) for c in summary.get("comparisons", []) if quoted_losses(refs, c)}


def _verdicts(summary: dict, rank: Any) -> list[str]:
    """One line per (test set, seed) that no win-rate line covers: the final reference loss of every arm."""
    refs = final_losses(summary)
    several = len({c["seed"] for c in summary.get("comparisons", [])} | {seed for _, _, seed in refs}) > 1
    lines = []
    for ts, seed in sorted({(ts, seed) for ts, _, seed in refs} - covered(summary)):
        entries = sorted((e for (t, _, sd), e in refs.items() if (t, sd) == (ts, seed)), key=lambda e: rank(e["arm"]))
        parts = [f"{e['arm']} {fmt_num(e['mean'])} {fmt_ci(e['ci'])}" for e in entries]
        lines.append(f"reference loss on {ts} (final checkpoints{f', seed {seed}' if several else ''}; lower = "
                     "closer to the reference answers): " + " vs ".join(parts) + ".")
    return lines


def per_prompt(run: RunDir, cfg: Config, judgements: list[dict]) -> PerPrompt:
    """The answer's values: {(arm, seed): {(test set, index): the reference answer's mean token loss}} of the final
    checkpoints (nats, lower is better)."""
    out: PerPrompt = {}
    for e in run.evaluation_files():
        if not is_final(cfg, run, e.arm, e.phase):
            continue
        for name, t in (read_result(e.path).get("testsets") or {}).items():
            for i, loss in enumerate(t.get("per_example") or []):
                if loss is not None:
                    out.setdefault((e.arm, e.seed), {})[(name, i)] = float(loss)
    return out


BENCHMARK = Benchmark(
    BENCHMARKS["reference_loss"], "reference-answer loss", run=unless_dry_run(reference_loss_all),
    summarize=summarize, missing=_missing, blocks=_blocks, heading="Offline evaluation: loss of reference answers",
    verdicts=_verdicts, effects=(EffectMetric("reference loss", per_prompt, lower_is_better=True),),
    enabled=lambda cfg: cfg.evaluation.reference_loss)
