"""The report: every number of a run in report/summary.json, and report.md + a self-contained report.html.

    phased-ift report configs/quickstart.yaml          # or, from Python:
    build_report(RunDir("runs/quickstart"), cfg)

Reads only run-dir files (formats in docs/architecture.md): data/, scores/, phases/manifest.json,
checkpoints/*/seed_*/phase_*/losses.jsonl, generations/, judgements/, evaluation/, agreement/. Each part is
optional: a missing part gives a line in the report saying what is missing and how to get it, never an error.

The summary dict is built first; the markdown and HTML tables are rendered from it, so the report and
summary.json always agree. Statistics live in `stats.py` (bootstrap CIs, length control); win-rate counts and
point estimates come from `winrate.aggregate`. Plots use matplotlib's Agg canvas (no display needed) and are
inlined into the HTML as base64 PNGs, so report.html is one file that opens anywhere.

The package (each module owns one part):
    summary.py    summarize_run and the readers of each part of the run dir (read_judgements, ...)
    verdicts.py   comparison_verdict, verdict_lines, and the number formats (fmt_num, fmt_ci)
    plots.py      plot_difficulty, plot_training, plot_trend (matplotlib)
    render.py     report_blocks (one function per section), render_markdown, render_html
    build.py      build_report: summary -> plots -> report.md, report.html, summary.json (atomic writes)

This module re-exports the public names, so `from phased_ift.report import build_report` keeps working.
"""

from phased_ift.report.build import build_report
from phased_ift.report.plots import plot_difficulty, plot_training, plot_trend
from phased_ift.report.render import render_html, render_markdown, report_blocks
from phased_ift.report.summary import read_judgements, summarize_run
from phased_ift.report.verdicts import comparison_verdict, fmt_ci, fmt_num, verdict_lines

__all__ = ["build_report", "comparison_verdict", "fmt_ci", "fmt_num", "plot_difficulty", "plot_training",
           "plot_trend", "read_judgements", "render_html", "render_markdown", "report_blocks", "summarize_run",
           "verdict_lines"]
