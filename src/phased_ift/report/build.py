"""Building the report: the summary, the plots and the three files of report/, each written atomically.

Owns `build_report` (run dir + config -> report/summary.json, report.md, report.html and the PNGs) and the
atomic writes of report/. Always rebuilt from the run-dir files (cheap: no model, no API call), so the report
reflects the latest outputs. Summary: `summary.py`; plots: `plots.py`; markdown/HTML: `render.py`.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from phased_ift.config import Config
from phased_ift.evals import BENCHMARKS
from phased_ift.report.plots import plot_benchmark_trend, plot_difficulty, plot_training, plot_trend
from phased_ift.report.render import render_html, render_markdown, report_blocks
from phased_ift.report.summary import summarize_run
from phased_ift.rundir import RunDir
from phased_ift.runio import atomic_write_bytes, atomic_write_text


def _save_plot(plot, out: Path, *args) -> None:
    """Render `plot(*args, file)` into memory, then write the PNG atomically."""
    buf = io.BytesIO()
    plot(*args, buf)
    atomic_write_bytes(out, buf.getvalue())


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
    plots = _write_plots(s, out, cfg.report.confidence)
    s["plots"] = plots
    blocks = report_blocks(s, plots)
    atomic_write_text(out / "report.md", render_markdown(blocks))
    atomic_write_text(out / "report.html", render_html(blocks, out))
    atomic_write_text(out / "summary.json", json.dumps(s, indent=1, ensure_ascii=False, default=str))
    if console is not None:
        console.print(f"report: {out / 'report.html'} ({len(s['comparisons'])} comparisons, {len(plots)} plots)")
    return s


def _write_plots(s: dict, out: Path, confidence: float) -> dict[str, str]:
    """The PNGs the summary has data for -> {"difficulty" | "training" | "trend": file name in `out`}."""
    plots: dict[str, str] = {}
    if s["difficulty"] and s["difficulty"]["histogram"]:
        _save_plot(plot_difficulty, out / "difficulty.png", s["difficulty"])
        plots["difficulty"] = "difficulty.png"
    if s["training"]:
        _save_plot(plot_training, out / "training_loss.png", s["training"])
        plots["training"] = "training_loss.png"
    if s["trend"]:
        ci_label = f"{round(confidence * 100)}% CI"
        _save_plot(plot_trend, out / "win_rate_trend.png", s["trend"], ci_label)
        plots["trend"] = "win_rate_trend.png"
    for b in BENCHMARKS.values():  # a benchmark's value after each phase, when some checkpoint is not final
        points = b.trend(s) if b.trend is not None else []
        if any(not p["final"] for p in points):
            _save_plot(plot_benchmark_trend, out / f"{b.name}_trend.png", points, b.label,
                       f"{b.trend_label} ({round(confidence * 100)}% CI)")
            plots[f"{b.name}_trend"] = f"{b.name}_trend.png"
    return plots
