"""Building the report: the summary, the plots and the three files of report/, each written atomically.

Owns `build_report` (run dir + config -> report/summary.json, report.md, report.html and the PNGs) and the
atomic writes of report/. Always rebuilt from the run-dir files (cheap: no model, no API call), so the report
reflects the latest outputs. Summary: `summary.py`; plots: `plots.py`; markdown/HTML: `render.py`.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from phased_ift.report.plots import plot_difficulty, plot_training, plot_trend
from phased_ift.report.render import render_html, render_markdown, report_blocks
from phased_ift.report.summary import summarize_run
from phased_ift.rundir import RunDir

if TYPE_CHECKING:
    from phased_ift.config import Config


def _write_atomic(path: Path, data: str | bytes) -> Path:
    """Write `data` to `path` through a temporary file in the same dir and a rename (mode 0644)."""
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
    """Render `plot(*args, file)` into memory, then write the PNG atomically."""
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
    plots = _write_plots(s, out, cfg.report.confidence)
    s["plots"] = plots
    blocks = report_blocks(s, plots)
    _write_atomic(out / "report.md", render_markdown(blocks))
    _write_atomic(out / "report.html", render_html(blocks, out))
    _write_atomic(out / "summary.json", json.dumps(s, indent=1, ensure_ascii=False, default=str))
    if console is not None:
        console.print(f"report: {out / 'report.html'} ({len(s['comparisons'])} comparisons, {len(plots)} plots)")
    return s


def _write_plots(s: dict, out: Path, confidence: float) -> dict[str, str]:
    """The PNGs the summary has data for -> {"difficulty" | "training" | "trend": file name in `out`}."""
    plots: dict[str, str] = {}
    if s["difficulty"] and s["difficulty"]["histogram"]:
        _save_plot(plot_difficulty, out / "difficulty.png", s["difficulty"], s["phases"])
        plots["difficulty"] = "difficulty.png"
    if s["training"]:
        _save_plot(plot_training, out / "training_loss.png", s["training"])
        plots["training"] = "training_loss.png"
    if s["trend"]:
        ci_label = f"{round(confidence * 100)}% CI"
        _save_plot(plot_trend, out / "win_rate_trend.png", s["trend"], ci_label)
        plots["trend"] = "win_rate_trend.png"
    return plots
