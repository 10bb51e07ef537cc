"""The report: every number of a run in report/summary.json, and report.md + a self-contained report.html.

    phased-ift report configs/quickstart.yaml          # or, from Python:
    build_report(RunDir("runs/quickstart"), cfg)

Reads only run-dir files (formats in docs/architecture.md): data/, scores/, phases/manifest.json,
checkpoints/*/seed_*/phase_*/losses.jsonl, generations/, judgements/, evaluation/. Each part is optional: a
missing part gives a line in the report saying what is missing and how to get it, never an error.

The summary dict is built first; the markdown and HTML tables are rendered from it, so the report and
summary.json always agree. Statistics live in `stats.py` (bootstrap CIs, length control); win-rate counts and
point estimates come from `judge.aggregate`. Plots use matplotlib's Agg canvas (no display needed) and are
inlined into the HTML as base64 PNGs, so report.html is one file that opens anywhere.
"""

from __future__ import annotations

import base64
import collections
import html
import io
import json
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from phased_ift import stats
from phased_ift.config import Config
from phased_ift.data import read_jsonl
from phased_ift.errors import PhasedIFTError
from phased_ift.judge import VERDICTS, aggregate
from phased_ift.rundir import RunDir

_SEED_DIR = re.compile(r"seed_(-?\d+)$")
_PHASE_DIR = re.compile(r"phase_(\d+)$")

# --------------------------------------------------------------------------------------------------------------
# Reading the run dir
# --------------------------------------------------------------------------------------------------------------


def _rows(path: Path) -> list[dict]:
    try:
        return list(read_jsonl(path, tolerate_torn_tail=True))
    except json.JSONDecodeError as e:
        raise PhasedIFTError(f"{path}: line {e.lineno} is not valid JSON ({e.msg}); fix or delete the file and "
                             f"re-run the step that writes it.") from None


def _seed_of(path: Path) -> int | None:
    m = _SEED_DIR.match(path.name)
    return int(m.group(1)) if m else None


def _phase_of(path: Path) -> int | None:
    m = _PHASE_DIR.match(path.name)
    return int(m.group(1)) if m else None


def read_judgements(run: RunDir) -> list[dict]:
    """Every judgement file as {"arm_a", "arm_b", "seed", "phase" (None = final), "testset", "path", "rows"}.

    Raises:
        PhasedIFTError: a row without a valid "verdict" (names the file and line).
    """
    out = []
    root = run.root / "judgements"
    for pair_dir in sorted(p for p in root.glob("*__vs__*") if p.is_dir()):
        arm_a, arm_b = pair_dir.name.split("__vs__", 1)
        for seed_dir in sorted(p for p in pair_dir.iterdir() if _seed_of(p) is not None):
            files = [(None, f) for f in seed_dir.glob("*.jsonl")]
            files += [(_phase_of(d), f) for d in seed_dir.iterdir() if _phase_of(d) is not None
                      for f in d.glob("*.jsonl")]
            for phase, f in sorted(files, key=lambda t: (t[0] or 0, str(t[1]))):
                rows = _rows(f)
                for i, r in enumerate(rows, 1):
                    if r.get("verdict") not in VERDICTS:
                        raise PhasedIFTError(
                            f"{f}: line {i} has verdict {r.get('verdict')!r}, expected one of {list(VERDICTS)}; "
                            f"delete the file and re-run `phased-ift judge` (cached replies cost nothing).")
                if rows:
                    out.append({"arm_a": arm_a, "arm_b": arm_b, "seed": _seed_of(seed_dir), "phase": phase,
                                "testset": f.stem, "path": f, "rows": rows})
    return out


def _arm_seed_phase_dirs(base: Path) -> Iterable[tuple[str, int, int, Path]]:
    for arm_dir in sorted(p for p in base.glob("*") if p.is_dir()):
        for seed_dir in sorted(p for p in arm_dir.iterdir() if _seed_of(p) is not None):
            for phase_dir in sorted((p for p in seed_dir.iterdir() if _phase_of(p) is not None), key=_phase_of):
                yield arm_dir.name, _seed_of(seed_dir), _phase_of(phase_dir), phase_dir


# --------------------------------------------------------------------------------------------------------------
# The summary (every number of the report)
# --------------------------------------------------------------------------------------------------------------


def _config_summary(cfg: Config) -> dict:
    j = cfg.judge.judge
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

    x is the cumulative step across phases: phase k's steps are shifted by the last step of phases 1..k-1.
    """
    out: dict = {}
    for arm, seed, phase, d in _arm_seed_phase_dirs(run.root / "checkpoints"):
        f = d / "losses.jsonl"
        if not f.is_file():
            continue
        pts = [(int(r["step"]), float(r["loss"])) for r in _rows(f) if r.get("loss") is not None and "step" in r]
        phases = out.setdefault(arm, {}).setdefault(str(seed), [])
        offset = phases[-1]["offset"] + phases[-1]["steps"] if phases else 0
        losses = [l for _, l in pts]
        phases.append({"phase": phase, "steps": max((s for s, _ in pts), default=0), "offset": offset,
                       "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
                       "mean_loss": float(np.mean(losses)) if losses else None,
                       "points": [[offset + s, l] for s, l in pts]})
    return out


def _summarize_lengths(run: RunDir) -> list[dict]:
    out = []
    for arm, seed, phase, d in _arm_seed_phase_dirs(run.root / "generations"):
        for f in sorted(d.glob("*.jsonl")):
            rows = _rows(f)
            words = [len(str(r.get("output", "")).split()) for r in rows]
            out.append({"arm": arm, "seed": seed, "phase": phase, "testset": f.stem,
                        **stats.length_stats(words, [r.get("output_tokens") for r in rows])})
    return out


def _summarize_comparison(j: dict, rc: Any) -> dict:
    rows = j["rows"]
    verdicts = [r["verdict"] for r in rows]
    boot = dict(n_resamples=rc.bootstrap, confidence=rc.confidence, seed=rc.seed)
    out = {k: j[k] for k in ("arm_a", "arm_b", "seed", "phase", "testset")}
    out["file"] = str(j["path"])
    out.update(aggregate(rows))
    out.update(stats.win_rate_cis(verdicts, **boot))
    have_len = all(r.get("len_a") is not None and r.get("len_b") is not None for r in rows)
    if have_len:
        la = [float(r["len_a"]) for r in rows]
        lb = [float(r["len_b"]) for r in rows]
        out["mean_len_a"], out["mean_len_b"] = float(np.mean(la)), float(np.mean(lb))
        lc = stats.length_controlled_win_rate(verdicts, la, lb, **boot)
        out.update(lc_win_rate=lc["lc_win_rate"], lc_ci=lc["lc_ci"], length_slope=lc["slope"])
        out["length_bins"] = stats.length_binned_win_rates(verdicts, la, lb)
    else:
        out.update(mean_len_a=None, mean_len_b=None, lc_win_rate=None, lc_ci=None, length_slope=None,
                   length_bins=None)
    return out


def _summarize_reference_loss(run: RunDir, rc: Any) -> list[dict]:
    out = []
    for arm, seed, phase, d in _arm_seed_phase_dirs(run.root / "evaluation"):
        f = d / "reference_loss.json"
        if not f.is_file():
            continue
        try:
            data = json.loads(f.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise PhasedIFTError(f"{f}: not valid JSON ({e}); delete it and re-run the evaluation step.") from None
        for name, t in sorted((data.get("testsets") or {}).items()):
            per = t.get("per_example") or []
            m = stats.mean_with_ci(per, rc.bootstrap, rc.confidence, rc.seed)
            if not per:  # no per-example losses: keep the stored mean, no interval
                m = {"n": t.get("n"), "mean": t.get("mean_loss"), "ci": None}
            out.append({"arm": arm, "seed": seed, "phase": phase, "testset": name, **m})
    return out


def _agreement(run: RunDir) -> dict:
    """Scorer-agreement tables found in the run dir, keyed by path: agreement/<tag>/agreement.json (jsonl rows,
    written by `agreement.run_agreement`) and any scores/agreement*.json (JSON or jsonl)."""
    found = {}
    files = sorted(run.root.glob("agreement/*/agreement.json")) + sorted((run.root / "scores").glob("agreement*.json"))
    for f in files:
        text = f.read_text(encoding="utf-8")
        try:
            found[str(f.relative_to(run.root))] = json.loads(text)
        except json.JSONDecodeError:
            found[str(f.relative_to(run.root))] = _rows(f)
    return found


def summarize_run(run: RunDir, cfg: Config) -> dict:
    """Every number of the report, as a JSON-serialisable dict (written to report/summary.json).

    Keys: run, data, difficulty, phases, training, comparisons (final: phase None; trend: phase k),
    seed_spread, lengths, reference_loss, agreement, notes (what is missing and how to get it), verdicts.

    Raises:
        PhasedIFTError: an input file that exists but is malformed (names the file and line).
    """
    rc = cfg.report
    manifest = json.loads(run.phases_manifest.read_text(encoding="utf-8")) if run.phases_manifest.is_file() else None
    notes: dict[str, str] = {}
    s: dict[str, Any] = {"run": {"run_dir": str(run.root), "config": _config_summary(cfg)},
                         "data": _summarize_data(run)}
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

    comps = [_summarize_comparison(j, rc) for j in read_judgements(run)]
    s["comparisons"] = [c for c in comps if c["phase"] is None]
    s["trend"] = [c for c in comps if c["phase"] is not None]
    if not comps:
        notes["judge"] = (
            "No pairwise judgements, so no win rates. To get them, set judge.judge.base_url and judge.judge.model "
            "(any OpenAI-compatible server; the API key goes in the environment variable named by "
            "judge.judge.api_key_env) and run `phased-ift judge CONFIG`."
            if not cfg.judge.judge.enabled else
            f"A judge is configured ({cfg.judge.judge.model}) but no judgements exist yet: run "
            "`phased-ift judge CONFIG`.")
    elif not s["trend"]:
        notes["trend"] = ("No per-phase judgements, so no win-rate trend plot: set generate.every_phase=true, then run "
                          "`phased-ift generate` and `phased-ift judge` again.")

    groups: dict = collections.defaultdict(list)
    for c in s["comparisons"]:
        groups[(c["arm_a"], c["arm_b"], c["testset"])].append(c)
    s["seed_spread"] = [
        {"arm_a": a, "arm_b": b, "testset": t, "seeds": [c["seed"] for c in cs],
         **{k: stats.seed_spread([c[k] for c in cs]) for k in ("win_rate", "centred", "lc_win_rate")}}
        for (a, b, t), cs in sorted(groups.items()) if len(cs) > 1]
    if s["comparisons"] and not s["seed_spread"]:
        notes["seeds"] = ("One training seed per arm, so no spread across seeds: set train.seeds=[0,1,2] to see how "
                          "much the win rate moves between seeds.")

    s["reference_loss"] = _summarize_reference_loss(run, rc)
    if not s["reference_loss"]:
        notes["reference_loss"] = ("No offline evaluation (evaluation/*/reference_loss.json): enable "
                                   "evaluation.reference_loss and run the evaluation step.")
    s["agreement"] = _agreement(run)
    s["notes"] = notes
    s["verdicts"] = verdict_lines(s, rc.length_warning_ratio)
    return s


# --------------------------------------------------------------------------------------------------------------
# Verdicts
# --------------------------------------------------------------------------------------------------------------


def _ci(ci: list | None) -> str:
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "[n/a]"


def _num(x: Any, nd: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if isinstance(x, float):
        return f"{x:.{nd}g}" if x != 0 and abs(x) < 10 ** -nd else f"{x:.{nd}f}"
    return str(x)


def comparison_verdict(c: dict, length_warning_ratio: float = 1.2, several_seeds: bool = False) -> str:
    """One honest sentence for one comparison (arm A vs arm B on a test set), from its summary entry.

    Says the win rate with its CI, whether the CI excludes 0.5, the length-controlled rate, and warns when the
    preferred arm's answers are much longer (LLM judges favour longer answers; Dubois et al. 2024).
    """
    a, b = c["arm_a"], c["arm_b"]
    head = f"{a} vs {b} on {c['testset']}" + (f" (seed {c['seed']})" if several_seeds else "")
    if c["win_rate"] is None:
        return f"{head}: no parsed verdict among {c['n']} prompts ({c['unparseable']} unparseable), no win rate."
    ci = c["win_rate_ci"]
    text = f"{head}: win rate {c['win_rate']:.3f} {_ci(ci)} over {c['n_parsed']} prompts"
    if c["unparseable"]:
        text += f" ({c['unparseable']} unparseable)"
    if ci and ci[0] > 0.5:
        text += f"; the CI lies above 0.5, so {a} is preferred"
    elif ci and ci[1] < 0.5:
        text += f"; the CI lies below 0.5, so {b} is preferred"
    else:
        text += "; the CI includes 0.5, so no significant difference"
    if c.get("lc_win_rate") is not None:
        text += f"; length-controlled {c['lc_win_rate']:.3f} {_ci(c['lc_ci'])}"
    la, lb = c.get("mean_len_a"), c.get("mean_len_b")
    if la and lb and c["win_rate"] != 0.5:
        (w, lw), (o, lo) = ((a, la), (b, lb)) if c["win_rate"] > 0.5 else ((b, lb), (a, la))
        if lw >= length_warning_ratio * lo:
            text += (f". Warning: the preferred arm {w} answers {lw / lo:.1f}x longer ({lw:.0f} vs {lo:.0f} words); "
                     f"judges favour long answers, trust the length-controlled rate more")
    return text + "."


def verdict_lines(summary: dict, length_warning_ratio: float | None = None) -> list[str]:
    """Short verdicts for the CLI's final printout: one per final comparison (with the reference loss of both
    arms when the offline evaluation covered that test set), the spread across seeds, other reference losses.

    Args:
        summary: the dict of `summarize_run` (or summary.json loaded back).
        length_warning_ratio: default: the run's report.length_warning_ratio from the summary (else 1.2).

    Returns:
        lines such as "phased vs one-off on vicuna: win rate 0.540 [0.460, 0.620] over 80 prompts; the CI
        includes 0.5, so no significant difference; ...; reference loss phased 1.234 [1.201, 1.266] vs one-off
        1.250 [1.219, 1.281] (lower = closer to the reference answers)." and, for test sets without a judged
        comparison, "reference loss on alpaca_eval (final checkpoints; ...): phased 1.234 [...] vs one-off ...".
    """
    ratio = length_warning_ratio or summary.get("length_warning_ratio") or 1.2
    lines = []
    comps = summary.get("comparisons", [])
    refs = _final_reference_losses(summary)
    several = len({c["seed"] for c in comps} | {seed for _, _, seed in refs}) > 1
    covered = set()
    for c in comps:
        line = comparison_verdict(c, ratio, several)
        ra, rb = refs.get((c["testset"], c["arm_a"], c["seed"])), refs.get((c["testset"], c["arm_b"], c["seed"]))
        if ra and rb and ra["mean"] is not None and rb["mean"] is not None:
            covered.add((c["testset"], c["seed"]))
            line = (line[:-1] + f"; reference loss {c['arm_a']} {ra['mean']:.3f} {_ci(ra['ci'])} vs {c['arm_b']} "
                    f"{rb['mean']:.3f} {_ci(rb['ci'])} (lower = closer to the reference answers).")
        lines.append(line)
    for sp in summary.get("seed_spread", []):
        w = sp["win_rate"]
        if w["mean"] is not None:
            lines.append(f"{sp['arm_a']} vs {sp['arm_b']} on {sp['testset']}: mean win rate {w['mean']:.3f} across "
                         f"{w['n_seeds']} seeds (std {_num(w['std'])}, min {w['min']:.3f}, max {w['max']:.3f}).")
    if not comps and summary.get("notes", {}).get("judge"):
        lines.append(summary["notes"]["judge"])
    order = summary.get("run", {}).get("config", {}).get("arms", [])
    rank = lambda arm: (order.index(arm) if arm in order else len(order), arm)  # noqa: E731
    for ts, seed in sorted({(ts, seed) for ts, _, seed in refs} - covered):
        entries = sorted((e for (t, _, sd), e in refs.items() if (t, sd) == (ts, seed)), key=lambda e: rank(e["arm"]))
        parts = [f"{e['arm']} {_num(e['mean'])} {_ci(e['ci'])}" for e in entries]
        lines.append(f"reference loss on {ts} (final checkpoints{f', seed {seed}' if several else ''}; lower = "
                     "closer to the reference answers): " + " vs ".join(parts) + ".")
    return lines


def _final_reference_losses(summary: dict) -> dict[tuple, dict]:
    """{(testset, arm, seed): the reference-loss entry of that arm's last phase}."""
    last: dict = {}
    for e in summary.get("reference_loss", []):
        key = (e["testset"], e["arm"], e["seed"])
        if key not in last or e["phase"] > last[key]["phase"]:
            last[key] = e
    return last


# --------------------------------------------------------------------------------------------------------------
# Plots (matplotlib Figure objects with the Agg canvas: no global pyplot state)
# --------------------------------------------------------------------------------------------------------------


def _figure(nplots: int = 1, width: float = 7.0, height: float = 4.0):
    from matplotlib.figure import Figure

    cols = min(nplots, 3)
    rows = math.ceil(nplots / cols)
    fig = Figure(figsize=(width * cols / max(1, cols ** 0.5), height * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[nplots:]:
        ax.set_visible(False)
    return fig, axes[:nplots]


def plot_difficulty(d: dict, phases: dict | None, path: Path) -> Path:
    """Histogram of difficulty scores with the phase boundaries as dashed vertical lines."""
    fig, (ax,) = _figure()
    ax.stairs(d["histogram"]["counts"], d["histogram"]["edges"], fill=True, color="#4c72b0")
    for i, b in enumerate(d["boundaries"]):
        ax.axvline(b, color="#c44e52", linestyle="--", label="phase boundary" if i == 0 else None)
    ax.set(title=f"Difficulty scores ({d['scorer']}, n={d['n_scored']})", xlabel="difficulty score (higher = harder)",
           ylabel="examples")
    if d["boundaries"]:
        ax.legend()
    fig.savefig(path, dpi=110, format="png")
    return path


def plot_training(training: dict, path: Path) -> Path:
    """Training loss per arm (one panel each, one line per seed), x = cumulative step, phase boundaries dashed."""
    arms = sorted(training)
    fig, axes = _figure(len(arms))
    for ax, arm in zip(axes, arms):
        for seed, phases in sorted(training[arm].items()):
            pts = [p for ph in phases for p in ph["points"]]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], label=f"seed {seed}", linewidth=1.2)
        first_seed = sorted(training[arm])[0]
        for ph in training[arm][first_seed][1:]:
            ax.axvline(ph["offset"], color="grey", linestyle="--", linewidth=0.8)
        ax.set(title=arm, xlabel="cumulative step", ylabel="training loss")
        ax.legend()
    fig.suptitle("Training loss per arm (dashed lines: phase boundaries)")
    fig.savefig(path, dpi=110, format="png")
    return path


def plot_trend(trend: list[dict], ci_label: str, path: Path) -> Path:
    """Win rate after each phase (the paper's Figure 1), one panel per test set, CI error bars, 0.5 dotted."""
    testsets = sorted({c["testset"] for c in trend})
    fig, axes = _figure(len(testsets))
    for ax, ts in zip(axes, testsets):
        lines = collections.defaultdict(list)
        for c in trend:
            if c["testset"] == ts and c["win_rate"] is not None:
                lines[(c["arm_a"], c["arm_b"], c["seed"])].append(c)
        for i, ((a, b, seed), cs) in enumerate(sorted(lines.items())):
            cs.sort(key=lambda c: c["phase"])
            shift = 0.06 * (i - (len(lines) - 1) / 2)  # side by side, so overlapping error bars stay visible
            x = [c["phase"] + shift for c in cs]
            y = [c["win_rate"] for c in cs]
            lo = [c["win_rate"] - (c["win_rate_ci"] or [c["win_rate"]] * 2)[0] for c in cs]
            hi = [(c["win_rate_ci"] or [c["win_rate"]] * 2)[1] - c["win_rate"] for c in cs]
            ax.errorbar(x, y, yerr=[lo, hi], marker="o", capsize=3, label=f"{a} vs {b} (seed {seed})")
        ax.axhline(0.5, color="grey", linestyle=":")
        ax.set(title=f"{ts}: win rate after each phase", xlabel="phase", ylabel=f"win rate ({ci_label})", ylim=(0, 1))
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend(fontsize=8)
    fig.savefig(path, dpi=110, format="png")
    return path


# --------------------------------------------------------------------------------------------------------------
# Rendering: one list of blocks -> markdown and HTML
# --------------------------------------------------------------------------------------------------------------


def _table(headers: list[str], rows: list[list[Any]]) -> tuple:
    return ("table", headers, [[_num(v) if not isinstance(v, str) else v for v in r] for r in rows])


def report_blocks(s: dict, plots: dict[str, str]) -> list[tuple]:
    """The report as blocks: ("h1"|"h2"|"p"|"pre", text), ("list", items), ("table", headers, rows), ("img", file, alt).

    Every number in a table comes from the summary dict `s`.
    """
    cl = f"{int(round(s['run']['config']['confidence'] * 100))}% CI"
    notes = s["notes"]
    B: list[tuple] = [("h1", "Phased instruction fine-tuning: report")]
    B.append(("h2", "Verdicts"))
    B.append(("list", s["verdicts"] or ["Nothing to compare yet."]))

    B.append(("h2", "The run"))
    B.append(_table(["setting", "value"], [[k, json.dumps(v) if isinstance(v, list) else str(v)]
                                           for k, v in s["run"]["config"].items()]))
    d = s["data"]
    B.append(_table(["data", "count"], [["training examples", d["n_train"]], ["rejected records", d["n_rejects"]]]
                    + [[f"rejected: {r}", n] for r, n in d["reject_reasons"].items()]))

    B.append(("h2", "Difficulty and phases"))
    diff = s["difficulty"]
    if diff:
        B.append(_table(["scorer", "scored", "failed", "mean", "median", "min", "max"],
                        [[diff["scorer"], diff["n_scored"], diff["n_failed"], diff.get("mean"), diff.get("median"),
                          diff.get("min"), diff.get("max")]]))
        if "difficulty" in plots:
            B.append(("img", plots["difficulty"], "difficulty histogram with phase boundaries"))
    else:
        B.append(("p", notes["difficulty"]))
    if s["phases"]:
        ph = s["phases"]
        B.append(("p", f"Split: {ph['method']}, k = {ph['k']}" + (f", thresholds {ph['thresholds']}"
                                                                    if ph.get("thresholds") else "") + "."))
        B.append(_table(["phase", "examples", "score min", "score max", "score mean"],
                        [[p.get("k"), p.get("count"), p.get("score_min"), p.get("score_max"), p.get("score_mean")]
                         for p in ph["phases"]]))
        for arm, cphases in ph["controls"].items():
            B.append(("p", f"Control arm {arm}: phase sizes " + ", ".join(str(p.get("count")) for p in cphases) + "."))
    else:
        B.append(("p", notes["phases"]))

    B.append(("h2", "Training loss"))
    if s["training"]:
        B.append(_table(["arm", "seed", "phase", "steps", "first loss", "last loss", "mean loss"],
                        [[arm, seed, p["phase"], p["steps"], p["first_loss"], p["last_loss"], p["mean_loss"]]
                         for arm, seeds in sorted(s["training"].items()) for seed, ps in sorted(seeds.items())
                         for p in ps]))
        if "training" in plots:
            B.append(("img", plots["training"], "training loss per arm, phases marked"))
    else:
        B.append(("p", notes["training"]))

    B.append(("h2", "Win rates (pairwise judge, both answer orders)"))
    if s["comparisons"]:
        B.append(("p", f"Win rate = (wins + ties/2) / parsed pairs; centred = (wins + ties/2) / all pairs - 0.5 "
                       f"(the paper's number, unparseable pairs counted); {cl}: percentile bootstrap over prompts "
                       f"({s['run']['config']['bootstrap']} resamples, seed {s['run']['config']['bootstrap_seed']}); "
                       "LC = length-controlled win rate, the rate a logistic regression on the length difference "
                       "predicts at equal length (AlpacaEval 2's idea)."))
        B.append(_final_table(s["comparisons"], cl))
    else:
        B.append(("p", notes["judge"]))
    if s["seed_spread"]:
        B.append(("h2", "Across training seeds"))
        B.append(_table(["comparison", "test set", "seeds", "mean win rate", "std", "min", "max", "mean LC", "std LC"],
                        [[f"{x['arm_a']} vs {x['arm_b']}", x["testset"], x["win_rate"]["n_seeds"],
                          x["win_rate"]["mean"], x["win_rate"]["std"], x["win_rate"]["min"], x["win_rate"]["max"],
                          x["lc_win_rate"]["mean"], x["lc_win_rate"]["std"]] for x in s["seed_spread"]]))
    elif "seeds" in notes:
        B.append(("p", notes["seeds"]))
    if any(c.get("length_bins") for c in s["comparisons"]):
        B.append(("h2", "Win rate by length difference"))
        B.append(("p", "Cells: win rate of A (prompts) inside bins of (words A - words B) / mean words; the "
                       "'similar' bin is the length-matched comparison."))
        names = list(stats.LENGTH_BIN_NAMES)
        B.append(_table(["comparison", "test set", "seed"] + names,
                        [[f"{c['arm_a']} vs {c['arm_b']}", c["testset"], c["seed"]]
                         + [f"{_num(b['win_rate'])} ({b['n']})" for b in c["length_bins"]]
                         for c in s["comparisons"] if c.get("length_bins")]))

    B.append(("h2", "Win rate after each phase"))
    if s["trend"]:
        if "trend" in plots:
            B.append(("img", plots["trend"], "win rate per phase with confidence intervals"))
        B.append(_final_table(s["trend"], cl, with_phase=True))
    else:
        B.append(("p", notes.get("trend") or notes.get("judge", "")))

    B.append(("h2", "Answer lengths"))
    if s["lengths"]:
        B.append(_table(["arm", "seed", "phase", "test set", "answers", "mean words", "median words", "mean tokens",
                         "median tokens"],
                        [[x["arm"], x["seed"], x["phase"], x["testset"], x["n"], x["mean_words"], x["median_words"],
                          x["mean_tokens"], x["median_tokens"]] for x in s["lengths"]]))
    else:
        B.append(("p", notes["lengths"]))

    B.append(("h2", "Offline evaluation: loss of reference answers"))
    if s["reference_loss"]:
        B.append(("p", f"Mean per-token loss (nats) of the reference answers given the prompt; lower = closer to "
                       f"the reference model's answers. {cl} by bootstrap over examples."))
        B.append(_table(["arm", "seed", "phase", "test set", "examples", "mean loss", cl],
                        [[x["arm"], x["seed"], x["phase"], x["testset"], x["n"], x["mean"], _ci(x["ci"])]
                         for x in s["reference_loss"]]))
    else:
        B.append(("p", notes["reference_loss"]))

    if s["agreement"]:
        B.append(("h2", "Scorer agreement"))
        for name, data in s["agreement"].items():
            B.append(("p", f"From {name}:"))
            B.append(_generic_table(data))
    return B


def _final_table(comps: list[dict], cl: str, with_phase: bool = False) -> tuple:
    headers = ["comparison", "test set", "seed"] + (["phase"] if with_phase else []) + [
        "n", "win", "tie", "loss", "unparseable", f"win rate [{cl}]", f"centred [{cl}]", f"LC win rate [{cl}]",
        "mean words A", "mean words B"]
    rows = [[f"{c['arm_a']} vs {c['arm_b']}", c["testset"], c["seed"]] + ([c["phase"]] if with_phase else []) + [
        c["n"], c["wins"], c["ties"], c["losses"], c["unparseable"],
        f"{_num(c['win_rate'])} {_ci(c['win_rate_ci'])}", f"{_num(c['centred'])} {_ci(c['centred_ci'])}",
        f"{_num(c['lc_win_rate'])} {_ci(c['lc_ci'])}", c["mean_len_a"], c["mean_len_b"]] for c in comps]
    return _table(headers, rows)


def _generic_table(data: Any) -> tuple:
    """Render whatever an agreement file holds: [{col: v}], {row: {col: v}} or {key: scalar}, scalar columns as
    cells (nested values stay in summary.json); anything else as JSON."""
    scalar = lambda v: not isinstance(v, (dict, list))  # noqa: E731
    if isinstance(data, dict) and data and all(isinstance(v, dict) for v in data.values()):
        data = [{"": k, **v} for k, v in data.items()]
    if isinstance(data, list) and data and all(isinstance(v, dict) for v in data):
        cols = [c for c in dict.fromkeys(k for v in data for k in v) if all(scalar(v.get(c)) for v in data)]
        return _table(cols, [[v.get(c) for c in cols] for v in data])
    if isinstance(data, dict) and data and all(scalar(v) for v in data.values()):
        return _table(["key", "value"], [[k, v] for k, v in data.items()])
    return ("pre", json.dumps(data, indent=2, ensure_ascii=False))


def render_markdown(blocks: list[tuple]) -> str:
    """Markdown of the blocks (pipe tables; '|' inside a cell is escaped)."""
    out = []
    for b in blocks:
        kind = b[0]
        if kind == "h1":
            out.append(f"# {b[1]}\n")
        elif kind == "h2":
            out.append(f"## {b[1]}\n")
        elif kind == "p":
            out.append(f"{b[1]}\n")
        elif kind == "pre":
            out.append(f"```\n{b[1]}\n```\n")
        elif kind == "list":
            out.append("\n".join(f"- {x}" for x in b[1]) + "\n")
        elif kind == "img":
            out.append(f"![{b[2]}]({b[1]})\n")
        elif kind == "table":
            esc = lambda x: str(x).replace("|", "\\|").replace("\n", " ")  # noqa: E731
            out.append("\n".join(["| " + " | ".join(esc(h) for h in b[1]) + " |",
                                  "|" + "---|" * len(b[1])] + ["| " + " | ".join(esc(c) for c in r) + " |"
                                                               for r in b[2]]) + "\n")
    return "\n".join(out)


_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:0.8em 0;font-size:0.9em}th,td{border:1px solid #ccc;padding:3px 8px;
text-align:left}th{background:#f0f0f0}img{max-width:100%}h2{border-bottom:1px solid #ddd;margin-top:1.6em}
pre{background:#f6f6f6;padding:0.6em;overflow:auto}li{margin:0.3em 0}"""


def render_html(blocks: list[tuple], image_dir: Path) -> str:
    """A self-contained HTML page: inline CSS, PNGs inlined as base64 data URIs, no external assets."""
    e = html.escape
    out = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>phased-ift report</title>"
           f"<style>{_CSS}</style></head><body>"]
    for b in blocks:
        kind = b[0]
        if kind in ("h1", "h2", "p"):
            out.append(f"<{kind}>{e(b[1])}</{kind}>")
        elif kind == "pre":
            out.append(f"<pre>{e(b[1])}</pre>")
        elif kind == "list":
            out.append("<ul>" + "".join(f"<li>{e(x)}</li>" for x in b[1]) + "</ul>")
        elif kind == "img":
            data = base64.b64encode((image_dir / b[1]).read_bytes()).decode("ascii")
            out.append(f"<p><img alt='{e(b[2])}' src='data:image/png;base64,{data}'></p>")
        elif kind == "table":
            out.append("<table><tr>" + "".join(f"<th>{e(str(h))}</th>" for h in b[1]) + "</tr>"
                       + "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in r) + "</tr>" for r in b[2])
                       + "</table>")
    out.append("</body></html>")
    return "\n".join(out)


# --------------------------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------------------------


def _write_atomic(path: Path, data: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a report is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _save_plot(plot, out: Path, *args) -> None:
    buf = io.BytesIO()
    plot(*args, buf)
    _write_atomic(out, buf.getvalue())


def build_report(run: RunDir, cfg: Config, console: Any = None) -> dict:
    """Write report/summary.json, report/report.md, report/report.html and the PNG plots of a run dir.

    Always rebuilt from the run-dir files (cheap: no model, no API call), so it reflects the latest outputs.

    Args:
        run: the run dir to read.
        cfg: the resolved config (report.bootstrap/confidence/seed/length_warning_ratio, and what was configured).
        console: optional rich Console for the one-line log.

    Returns:
        The summary dict (also written to report/summary.json), including "verdicts" (see `verdict_lines`).

    Raises:
        PhasedIFTError: a malformed input file (names it and the line).
    """
    s = summarize_run(run, cfg)
    s["length_warning_ratio"] = cfg.report.length_warning_ratio
    out = run.report_dir
    out.mkdir(parents=True, exist_ok=True)
    plots: dict[str, str] = {}
    if s["difficulty"] and s["difficulty"]["histogram"]:
        _save_plot(plot_difficulty, out / "difficulty.png", s["difficulty"], s["phases"])
        plots["difficulty"] = "difficulty.png"
    if s["training"]:
        _save_plot(plot_training, out / "training_loss.png", s["training"])
        plots["training"] = "training_loss.png"
    if s["trend"]:
        ci_label = f"{round(cfg.report.confidence * 100)}% CI"
        _save_plot(plot_trend, out / "win_rate_trend.png", s["trend"], ci_label)
        plots["trend"] = "win_rate_trend.png"
    s["plots"] = plots
    blocks = report_blocks(s, plots)
    _write_atomic(out / "report.md", render_markdown(blocks))
    _write_atomic(out / "report.html", render_html(blocks, out))
    _write_atomic(out / "summary.json", json.dumps(s, indent=1, ensure_ascii=False, default=str))
    if console is not None:
        console.print(f"report: {out / 'report.html'} ({len(s['comparisons'])} comparisons, {len(plots)} plots)")
    return s
