"""The summary: every number of a run's report, read from the run-dir files into one JSON-serialisable dict.

Owns `summarize_run` (the dict written to report/summary.json, from which report.md/html are rendered) and the
readers of each part of the run dir: data/ (counts, reject reasons), scores/ and phases/manifest.json (difficulty
statistics, phase boundaries), checkpoints/*/seed_*/phase_*/losses.jsonl (training loss), generations/ (answer
lengths), judgements/ (`read_judgements`: win rates, CIs, length control) and agreement tables; the entries of each
benchmark of `evals.BENCHMARKS` (evaluation/, grades/: reference loss, IFEval, MT-Bench, SeqEval) are its own
`Benchmark.summarize`'s, with its `missing` note. Paths are found and read back into (arm, seed, phase, test set) by
`RunDir`; the manifest is read by `phases.read_manifest`. Statistics come from `stats.py`, win-rate counts from
`winrate.aggregate`.

Each part is optional: a missing part gives a note saying what is missing and how to get it, never an error.
"""

from __future__ import annotations

import collections
import json
from pathlib import Path
from typing import Any

import numpy as np

from phased_ift import stats
from phased_ift.config import Config
from phased_ift.errors import PhasedIFTError
from phased_ift.evals import BENCHMARKS
from phased_ift.lengthcontrol import length_controlled_win_rate
from phased_ift.phasedir import PhaseDir, step_offsets
from phased_ift.phases.split import read_manifest
from phased_ift.report.answer import summarize_effects
from phased_ift.report.verdicts import verdict_lines
from phased_ift.rundir import RunDir
from phased_ift.runio import read_jsonl
from phased_ift.winrate import VERDICTS, aggregate


def _rows(path: Path) -> list[dict]:
    try:
        return list(read_jsonl(path, tolerate_torn_tail=True))
    except json.JSONDecodeError as e:
        raise PhasedIFTError(f"{path}: line {e.lineno} is not valid JSON ({e.msg}); fix or delete the file and "
                             f"re-run the step that writes it.") from None


def read_judgements(run: RunDir) -> list[dict]:
    """Every non-empty judgement file as {"arm_a", "arm_b", "seed", "phase" (None = final), "testset", "path",
    "rows"}, in `RunDir.judgement_files` order.

    Raises:
        PhasedIFTError: a row without a valid "verdict" (names the file and line).
    """
    out = []
    for j in run.judgement_files():
        f = j.path
        rows = _rows(f)
        for i, r in enumerate(rows, 1):
            if r.get("verdict") not in VERDICTS:
                raise PhasedIFTError(
                    f"{f}: line {i} has verdict {r.get('verdict')!r}, expected one of {list(VERDICTS)}; "
                    f"delete the file and re-run `phased-ift pairwise` (cached replies cost nothing).")
        if rows:
            out.append({"arm_a": j.arm, "arm_b": j.arm_b, "seed": j.seed, "phase": j.phase, "testset": j.testset,
                        "path": f, "rows": rows})
    return out


def _config_summary(cfg: Config) -> dict:
    j = cfg.judge
    return {
        "model": cfg.model.name_or_path, "template": cfg.model.template, "scorer": cfg.scoring.scorer,
        "phases": cfg.phases.k, "phase_method": cfg.phases.method, "thresholds": list(cfg.phases.thresholds),
        "arms": list(cfg.train.arms), "train_method": cfg.train.method, "epochs": cfg.train.epochs,
        "learning_rate": cfg.train.learning_rate, "batch_size": cfg.train.batch_size, "seeds": list(cfg.train.seeds),
        "test_sets": list(cfg.generate.test_sets), "test_limit": cfg.generate.limit,
        "max_new_tokens": cfg.generate.max_new_tokens,
        "judge": f"{j.model} at {j.base_url}" if j.enabled else "none",
        "bootstrap": cfg.report.bootstrap, "confidence": cfg.report.confidence, "bootstrap_seed": cfg.report.seed,
    }


def _summarize_data(run: RunDir) -> dict:
    n_train = sum(1 for _ in read_jsonl(run.train_data)) if run.train_data.is_file() else None
    reasons: collections.Counter = collections.Counter()
    if run.rejects.is_file():
        reasons.update(str(r.get("reason", "?")) for r in _rows(run.rejects))
    return {"n_train": n_train, "n_rejects": sum(reasons.values()) if run.rejects.is_file() else None,
            "reject_reasons": dict(reasons.most_common())}


def _summarize_difficulty(run: RunDir, cfg: Config, manifest: dict | None) -> dict | None:
    scorer = (manifest or {}).get("scorer") or cfg.scoring.scorer
    path = run.scores(scorer)
    if not path.is_file():
        return None
    rows = _rows(path)
    scores = [float(r["score"]) for r in rows if r.get("score") is not None]
    boundaries: list[float] = []
    if manifest and manifest.get("method") == "thresholds" and manifest.get("thresholds"):
        boundaries = [float(t) for t in manifest["thresholds"]]
    elif manifest:
        boundaries = [float(p["score_min"]) for p in manifest.get("phases", [])[1:] if p.get("score_min") is not None]
    out = {"scorer": scorer, "file": str(path.relative_to(run.root)), "n": len(rows), "n_scored": len(scores),
           "n_failed": len(rows) - len(scores), "boundaries": boundaries, "histogram": None}
    if scores:
        a = np.asarray(scores)
        out.update(mean=float(a.mean()), median=float(np.median(a)), min=float(a.min()), max=float(a.max()))
        # Judge scores (1-5, halves from averaged samples) get one bar per half point; continuous scores 30 bins.
        halves = np.allclose(a, np.round(a * 2) / 2) and np.ptp(a) <= 10
        bins = np.arange(a.min() - 0.25, a.max() + 0.5, 0.5) if halves else 30
        counts, edges = np.histogram(a, bins=bins)
        out["histogram"] = {"edges": edges.tolist(), "counts": counts.tolist()}
    return out


def _summarize_training(run: RunDir) -> dict:
    """{arm: {seed: [{"phase", "steps", "first_loss", "last_loss", "mean_loss", "offset", "points": [[x, loss]]}]}}.

    x is the cumulative optimizer step across phases: phase k's steps are shifted by its step offset
    (`phasedir.step_offsets`: the DONE global_steps of phases 1..k-1, as the tracking runs of `train.loop`); "steps"
    is the phase's `PhaseDir.global_step` (its last logged step when it has no DONE).
    """
    out: dict = {}
    for cell in run.checkpoint_cells():
        arm, seed, phase, ph = cell.arm, cell.seed, cell.phase, PhaseDir(cell.path)
        if not ph.losses_file.is_file():
            continue
        pts = [(int(r["step"]), float(r["loss"])) for r in ph.losses() if r.get("loss") is not None and "step" in r]
        phases = out.setdefault(arm, {}).setdefault(str(seed), [])
        offset = step_offsets([run.checkpoint(arm, k, seed) for k in range(1, phase + 1)])[-1]
        losses = [l for _, l in pts]
        steps = ph.global_step or max((s for s, _ in pts), default=0)
        phases.append({"phase": phase, "steps": steps, "offset": offset,
                       "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
                       "mean_loss": float(np.mean(losses)) if losses else None,
                       "points": [[offset + s, l] for s, l in pts]})
    return out


def _summarize_lengths(run: RunDir) -> list[dict]:
    """Answer lengths of every generations file (`stats.length_stats`), in `RunDir.generation_files` order."""
    out = []
    for g in run.generation_files():
        rows = _rows(g.path)
        words = [len(str(r.get("output", "")).split()) for r in rows]
        out.append({"arm": g.arm, "seed": g.seed, "phase": g.phase, "testset": g.testset,
                    **stats.length_stats(words, [r.get("output_tokens") for r in rows])})
    return out


def _summarize_comparison(j: dict, rc: Any) -> dict:
    """Counts, win rates with CIs and length control of one judgement file (an entry of `read_judgements`)."""
    rows = j["rows"]
    verdicts = [r["verdict"] for r in rows]
    boot = dict(n_resamples=rc.bootstrap, confidence=rc.confidence, seed=rc.seed)
    out = {k: j[k] for k in ("arm_a", "arm_b", "seed", "phase", "testset")}
    out["file"] = str(j["path"])
    out.update(aggregate(rows))
    out.update(stats.win_rate_cis(verdicts, rc.confidence))
    have_len = all(r.get("len_a") is not None and r.get("len_b") is not None for r in rows)
    if have_len:
        la = [float(r["len_a"]) for r in rows]
        lb = [float(r["len_b"]) for r in rows]
        out["mean_len_a"], out["mean_len_b"] = float(np.mean(la)), float(np.mean(lb))
        lc = length_controlled_win_rate(verdicts, la, lb, **boot)
        out.update(lc_win_rate=lc["lc_win_rate"], lc_ci=lc["lc_ci"], length_slope=lc["slope"])
        out["length_bins"] = stats.length_binned_win_rates(verdicts, la, lb)
    else:
        out.update(mean_len_a=None, mean_len_b=None, lc_win_rate=None, lc_ci=None, length_slope=None,
                   length_bins=None)
    return out


def _summarize_judge_check(run: RunDir, cfg: Config) -> dict:
    """The configured judge and template, and the judge checks of the run dir (judge_check/*/judge_check.json)
    that match them (same endpoint model and template): {"judge", "template", "checks": [...], "matched": the
    largest matching check or None}."""
    j = cfg.judge
    checks = []
    for f in run.judge_check_files():
        try:
            checks.append(json.loads(f.read_text(encoding="utf-8")))
        except json.JSONDecodeError as e:
            raise PhasedIFTError(f"{f}: not valid JSON ({e}); delete it and re-run `phased-ift judge-check`.") from None
    keep = ("judge", "template", "annotations", "n_pairs", "agreement", "agreement_with_tie", "kappa",
            "position_consistency", "length_rule_agreement", "length_rule_agreement_with_tie", "unparseable_rate",
            "qualified")
    checks = [{k: c.get(k) for k in keep} for c in checks]
    template = cfg.pairwise.template
    matched = [c for c in checks if c["judge"] == j.model and c["template"] == template]
    return {"judge": j.model if j.enabled else None, "template": template, "checks": checks,
            "matched": max(matched, key=lambda c: c["n_pairs"] or 0) if matched else None}


def _agreement(run: RunDir) -> dict:
    """Scorer-agreement tables found in the run dir, keyed by path: agreement/<tag>/agreement.json (jsonl rows,
    written by `agreement.run_agreement`) and any scores/agreement*.json (JSON or jsonl)."""
    found = {}
    for f in run.agreement_files():
        text = f.read_text(encoding="utf-8")
        try:
            found[str(f.relative_to(run.root))] = json.loads(text)
        except json.JSONDecodeError:
            found[str(f.relative_to(run.root))] = _rows(f)
    return found


def summarize_run(run: RunDir, cfg: Config) -> dict:
    """Every number of the report, as a JSON-serialisable dict (written to report/summary.json).

    Keys: run, data, difficulty, phases, training, lengths, comparisons (final: phase None), trend (phase k),
    seed_spread, then each benchmark's keys (`evals.BENCHMARKS`: reference_loss; ifeval (per checkpoint; with
    by_instruction_count), ifeval_comparisons (final checkpoints, paired); mt_bench (per checkpoint); seqeval (per
    checkpoint, with by_depth)), judge_check, agreement, effects (each arm against the baseline per metric, paired
    and pooled over seeds:
    `report.answer.summarize_effects`), notes (what is missing and how to get it), verdicts.

    Raises:
        PhasedIFTError: an input file that exists but is malformed (names the file and line).
    """
    rc = cfg.report
    manifest = read_manifest(run) if run.phases_manifest.is_file() else None
    notes: dict[str, str] = {}
    s: dict[str, Any] = {"run": {"run_dir": str(run.root), "config": _config_summary(cfg)},
                         "data": _summarize_data(run)}
    _summarize_inputs(s, notes, run, cfg, manifest)
    _summarize_judgements(s, notes, run, cfg)
    for benchmark in BENCHMARKS.values():  # each benchmark's entries, and what to run when it has none
        s.update(benchmark.summarize(run, cfg))
        if not s[benchmark.name]:
            notes[benchmark.name] = benchmark.missing(cfg)
    s["judge_check"] = _summarize_judge_check(run, cfg)
    s["agreement"] = _agreement(run)
    s["effects"] = summarize_effects(run, cfg, read_judgements(run))
    s["notes"] = notes
    s["verdicts"] = verdict_lines(s, rc.length_warning_ratio)
    return s


def _summarize_inputs(s: dict, notes: dict, run: RunDir, cfg: Config, manifest: dict | None) -> None:
    """s["difficulty"], s["phases"], s["training"], s["lengths"] and their notes when missing."""
    s["difficulty"] = _summarize_difficulty(run, cfg, manifest)
    if s["difficulty"] is None:
        notes["difficulty"] = "No difficulty scores found: run `phased-ift score CONFIG`."
    s["phases"] = {"method": manifest.get("method"), "k": manifest.get("k"), "thresholds": manifest.get("thresholds"),
                   "phases": manifest.get("phases", []), "controls": manifest.get("controls", {})} if manifest else None
    if manifest is None:
        notes["phases"] = "No phases/manifest.json: run `phased-ift split CONFIG`."
    s["training"] = _summarize_training(run)
    if not s["training"]:
        notes["training"] = "No losses.jsonl under checkpoints/: run `phased-ift train CONFIG`."
    s["lengths"] = _summarize_lengths(run)
    if not s["lengths"]:
        notes["lengths"] = "No generations found: run `phased-ift generate CONFIG`."


def _summarize_judgements(s: dict, notes: dict, run: RunDir, cfg: Config) -> None:
    """s["comparisons"] (final), s["trend"] (per phase), s["seed_spread"] and their notes when missing."""
    comps = [_summarize_comparison(j, cfg.report) for j in read_judgements(run)]
    s["comparisons"] = [c for c in comps if c["phase"] is None]
    s["trend"] = [c for c in comps if c["phase"] is not None]
    if not comps:
        notes["pairwise"] = (
            "No pairwise judgements, so no win rates. To get them, set judge.base_url and judge.model "
            "(any OpenAI-compatible server; the API key goes in the environment variable named by "
            "judge.api_key_env) and run `phased-ift pairwise CONFIG`."
            if not cfg.judge.enabled else
            f"A judge is configured ({cfg.judge.model}) but no judgements exist yet: run "
            "`phased-ift pairwise CONFIG`.")
    elif not s["trend"]:
        notes["trend"] = ("No per-phase judgements, so no win-rate trend plot: set generate.every_phase=true, then run "
                          "`phased-ift generate` and `phased-ift pairwise` again.")
    s["seed_spread"] = _seed_spread(s["comparisons"])
    if s["comparisons"] and not s["seed_spread"]:
        notes["seeds"] = ("One training seed per arm, so no spread across seeds: set train.seeds=[0,1,2] to see how "
                          "much the win rate moves between seeds.")


def _seed_spread(comparisons: list[dict]) -> list[dict]:
    """Per (arm A, arm B, test set) judged with several seeds: the spread of win rate, centred and LC rate."""
    groups: dict = collections.defaultdict(list)
    for c in comparisons:
        groups[(c["arm_a"], c["arm_b"], c["testset"])].append(c)
    return [
        {"arm_a": a, "arm_b": b, "testset": t, "seeds": [c["seed"] for c in cs],
         **{k: stats.seed_spread([c[k] for c in cs]) for k in ("win_rate", "centred", "lc_win_rate")}}
        for (a, b, t), cs in sorted(groups.items()) if len(cs) > 1]
