"""Plots of the report: matplotlib Figure objects on the Agg canvas (no display, no global pyplot state).

Owns the PNGs of report/: `plot_difficulty` (difficulty.png), `plot_training` (training_loss.png), `plot_trend`
(win_rate_trend.png) and `plot_benchmark_trend` (<benchmark>_trend.png, e.g. IFEval's). Each takes parts of the summary dict
(`summary.summarize_run`) and a path or binary file object to write the PNG to; nothing else is read.
"""

from __future__ import annotations

import collections
import math
from pathlib import Path


def _figure(nplots: int = 1, width: float = 7.0, height: float = 4.0):
    from matplotlib.figure import Figure

    cols = min(nplots, 3)
    rows = math.ceil(nplots / cols)
    fig = Figure(figsize=(width * cols / max(1, cols ** 0.5), height * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[nplots:]:
        ax.set_visible(False)
    return fig, axes[:nplots]


def plot_difficulty(d: dict, path: Path) -> Path:
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


def plot_benchmark_trend(points: list[dict], label: str, ylabel: str, path: Path) -> Path:
    """A benchmark's value after each phase (`evals.Benchmark.trend`: {"arm", "seed", "phase", "mean", "ci"}), one
    line per arm and seed, CI error bars (the paper's Figure 1 view with that benchmark's measure); a y range of
    [0, 1] when every value is a rate."""
    fig, (ax,) = _figure()
    lines = collections.defaultdict(list)
    for e in points:
        if e["mean"] is not None:
            lines[(e["arm"], e["seed"])].append(e)
    for i, ((arm, seed), es) in enumerate(sorted(lines.items())):
        es.sort(key=lambda e: e["phase"])
        shift = 0.06 * (i - (len(lines) - 1) / 2)
        y = [x["mean"] for x in es]
        lo = [x["mean"] - (x["ci"] or [x["mean"]] * 2)[0] for x in es]
        hi = [(x["ci"] or [x["mean"]] * 2)[1] - x["mean"] for x in es]
        ax.errorbar([e["phase"] + shift for e in es], y, yerr=[lo, hi], marker="o", capsize=3,
                    label=f"{arm} (seed {seed})")
    rates = all(0 <= e["mean"] <= 1 for es in lines.values() for e in es)
    ax.set(title=f"{label} after each phase", xlabel="phase", ylabel=ylabel, **({"ylim": (0, 1)} if rates else {}))
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110, format="png")
    return path
