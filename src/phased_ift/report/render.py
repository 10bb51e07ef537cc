"""Rendering: the summary dict -> one list of blocks -> report.md (markdown) and report.html (self-contained).

Owns the report's sections and their order (`report_blocks`, one function per section) and the two renderers
(`render_markdown`, `render_html`). Every number in a table comes from the summary dict of `summary.summarize_run`,
so report.md/html and summary.json always agree. Blocks are tuples: ("h1"|"h2"|"p"|"pre", text),
("list", items), ("table", headers, rows) with rows of str cells, ("img", file name in report/, alt text).
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from phased_ift import stats
from phased_ift.effects import MIN_SEEDS
from phased_ift.evals import BENCHMARKS
from phased_ift.blocks import fmt_ci, fmt_num, table
from phased_ift.report.verdicts import judge_check_line


def report_blocks(s: dict, plots: dict[str, str]) -> list[tuple]:
    """The report as blocks: ("h1"|"h2"|"p"|"pre", text), ("list", items), ("table", headers, rows), ("img", file, alt).

    Every number in a table comes from the summary dict `s`; `plots` maps "difficulty" / "training" / "trend" to
    the PNG file names written next to the report (a missing key: that plot is left out).
    """
    cl = f"{int(round(s['run']['config']['confidence'] * 100))}% CI"
    benchmarks = [block for b in BENCHMARKS.values() for block in _benchmark_blocks(b, s, plots, cl)]
    return (_verdict_blocks(s) + _answer_blocks(s, cl) + _run_blocks(s) + _difficulty_blocks(s, plots)
            + _training_blocks(s, plots) + _win_rate_blocks(s, cl) + _trend_blocks(s, plots, cl) + _length_blocks(s)
            + benchmarks + _agreement_blocks(s))


def _benchmark_blocks(b, s: dict, plots: dict[str, str], cl: str) -> list[tuple]:
    """A benchmark's section: its heading, then its `blocks`, or its `missing` note when its list is empty."""
    body = b.blocks(s, plots, cl) if s.get(b.name) else [("p", s["notes"].get(b.name, ""))]
    return [("h2", b.heading)] + body


def _verdict_blocks(s: dict) -> list[tuple]:
    """Title and verdicts."""
    return [("h1", "Phased instruction fine-tuning: report"), ("h2", "Verdicts"),
            ("list", s["verdicts"] or ["Nothing to compare yet."])]


def _run_blocks(s: dict) -> list[tuple]:
    """The config summary and the data counts."""
    B: list[tuple] = [("h2", "The run")]
    B.append(table(["setting", "value"], [[k, json.dumps(v) if isinstance(v, list) else str(v)]
                                           for k, v in s["run"]["config"].items()]))
    d = s["data"]
    B.append(table(["data", "count"], [["training examples", d["n_train"]], ["rejected records", d["n_rejects"]]]
                    + [[f"rejected: {r}", n] for r, n in d["reject_reasons"].items()]))
    return B


def _answer_blocks(s: dict, cl: str) -> list[tuple]:
    """Did it help? Each arm against the baseline per metric, paired on the same prompts, pooled over seeds: the
    claims about the arms (crossed model) and, apart, the results conditional on these training runs. The sentences
    are listed once, under Verdicts."""
    B: list[tuple] = [("h2", "Did it help? Each arm against the baseline")]
    eff = s.get("effects") or []
    if not eff:
        B.append(("p", "No metric with per-prompt values for an arm and the baseline yet (reference loss, IFEval or "
                       "judged win rates of the final checkpoints)."))
        return B
    claims = [e for e in eff if e["claim"]]
    others = [e for e in eff if not e["claim"]]
    B.append(("p", "Difference arm - baseline on the same prompts (the win rate's: over 0.5) of the final "
                   "checkpoints, pooled over training seeds. The sentences are under Verdicts; docs/report.md says "
                   "how each test is done and what its simulated error rates are."))
    if claims:
        B.append(("p", f"Claims about the arms (>= {MIN_SEEDS} seeds: they generalise over training seeds and "
                       f"prompts): {cl} and p from the crossed random-effects model (Clark's min F' as a t-test, "
                       f"Satterthwaite df); p (Holm): adjusted over the {len(claims)} claims (Holm 1979). MDE: the "
                       f"smallest difference the test detects with 80% power (Bloom 1995), and what half of it "
                       f"needs."))
        B.append(table(["arm", "baseline", "metric", "seeds x prompts", "difference", cl, "df", "p", "p (Holm)",
                         "MDE", "for half the MDE"],
                        [[e["arm"], e["baseline"], _metric(e), f"{e['n_seeds']} x {e['n_prompts']}", e["difference"],
                          fmt_ci(e["ci"]), e["df"], e["p_value"], e.get("p_holm"), e["mde"]["mde"],
                          e["mde"].get("advice") or "n/a"] for e in claims]))
    if others:
        B.append(("p", f"No claim about the arms (fewer than {MIN_SEEDS} seeds or too few prompts). Conditional on "
                       f"these training runs: the mean of each prompt's seed-averaged difference, a t {cl} over "
                       f"prompts and a sign-flip test (exact mid-p on 0/1, verdict and rating differences; Monte "
                       f"Carlo otherwise); p (Holm) over these {len(others)} results. A difference here says these "
                       f"runs differ on these prompts, not that one arm is better."))
        B.append(table(["arm", "baseline", "metric", "seeds x prompts", "why no claim", "difference", cl, "p",
                         "p (Holm)", "what a claim takes"],
                        [[e["arm"], e["baseline"], _metric(e), f"{e['n_seeds']} x {e['n_prompts']}", e["reason"],
                          e["difference"], fmt_ci(e["conditional"]["ci"]), e["conditional"]["p_value"],
                          e.get("p_holm_conditional"), e["mde"].get("advice") or "n/a"] for e in others]))
    return B


def _metric(e: dict) -> str:
    return e["metric"] + (" (lower is better)" if e["lower_is_better"] else "")


def _difficulty_blocks(s: dict, plots: dict[str, str]) -> list[tuple]:
    """Score statistics, the histogram, the phase table and the control arms' phase sizes."""
    notes = s["notes"]
    B: list[tuple] = [("h2", "Difficulty and phases")]
    diff = s["difficulty"]
    if diff:
        B.append(table(["scorer", "scored", "failed", "mean", "median", "min", "max"],
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
        seq = any(p.get("sequential") for p in ph["phases"])  # sit.source: the sequential share per phase
        B.append(table(["phase", "examples", "score min", "score max", "score mean"]
                        + (["sequential", "share in sit-phased"] if seq else []),
                        [[p.get("k"), p.get("count"), p.get("score_min"), p.get("score_max"), p.get("score_mean")]
                         + ([p["sequential"], f"{p['sequential'] / max(p['count'] - p.get('replaced', 0), 1):.1%}"]
                            if seq else []) for p in ph["phases"]]))
        for arm, cphases in ph["controls"].items():
            B.append(("p", f"Control arm {arm}: phase sizes " + ", ".join(str(p.get("count")) for p in cphases) + "."))
    else:
        B.append(("p", notes["phases"]))
    return B


def _training_blocks(s: dict, plots: dict[str, str]) -> list[tuple]:
    """Per arm, seed and phase: steps and losses, and the loss plot."""
    B: list[tuple] = [("h2", "Training loss")]
    if s["training"]:
        B.append(table(["arm", "seed", "phase", "steps", "first loss", "last loss", "mean loss"],
                        [[arm, seed, p["phase"], p["steps"], p["first_loss"], p["last_loss"], p["mean_loss"]]
                         for arm, seeds in sorted(s["training"].items()) for seed, ps in sorted(seeds.items())
                         for p in ps]))
        if "training" in plots:
            B.append(("img", plots["training"], "training loss per arm, phases marked"))
    else:
        B.append(("p", s["notes"]["training"]))
    return B


def _win_rate_blocks(s: dict, cl: str) -> list[tuple]:
    """The final comparisons, their spread across seeds and the win rate by length difference."""
    notes = s["notes"]
    B: list[tuple] = [("h2", "Win rates (pairwise judge, both answer orders)")]
    if s["comparisons"]:
        B.append(("p", f"Win rate = (wins + ties/2) / parsed pairs; centred = (wins + ties/2) / all pairs - 0.5 "
                       f"(the paper's number, unparseable pairs counted); {cl}: Wilson score interval, ties counted "
                       f"half (descriptive: one seed and test set each; the tested answer is 'Did it help?'); "
                       "LC = length-controlled win rate, the rate a logistic regression on the length difference "
                       "predicts at equal length (AlpacaEval 2's idea); it also removes any length difference the arm "
                       "itself causes, so it reads as the preference at equal length, not as the arm's whole effect."))
        B.append(("p", judge_check_line(s.get("judge_check") or {})))
        B.append(_final_table(s["comparisons"], cl))
    else:
        B.append(("p", notes["pairwise"]))
    if s["seed_spread"]:
        B.append(("h2", "Across training seeds"))
        B.append(table(["comparison", "test set", "seeds", "mean win rate", "std", "min", "max", "mean LC", "std LC"],
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
        B.append(table(["comparison", "test set", "seed"] + names,
                        [[f"{c['arm_a']} vs {c['arm_b']}", c["testset"], c["seed"]]
                         + [f"{fmt_num(b['win_rate'])} ({b['n']})" for b in c["length_bins"]]
                         for c in s["comparisons"] if c.get("length_bins")]))
    return B


def _trend_blocks(s: dict, plots: dict[str, str], cl: str) -> list[tuple]:
    """The win rate after each phase: plot and table."""
    B: list[tuple] = [("h2", "Win rate after each phase")]
    if s["trend"]:
        if "trend" in plots:
            B.append(("img", plots["trend"], "win rate per phase with confidence intervals"))
        B.append(_final_table(s["trend"], cl, with_phase=True))
    else:
        B.append(("p", s["notes"].get("trend") or s["notes"].get("pairwise", "")))
    return B


def _length_blocks(s: dict) -> list[tuple]:
    """Answer lengths per arm, seed, phase and test set."""
    B: list[tuple] = [("h2", "Answer lengths")]
    if s["lengths"]:
        B.append(table(["arm", "seed", "phase", "test set", "answers", "mean words", "median words", "mean tokens",
                         "median tokens"],
                        [[x["arm"], x["seed"], x["phase"], x["testset"], x["n"], x["mean_words"], x["median_words"],
                          x["mean_tokens"], x["median_tokens"]] for x in s["lengths"]]))
    else:
        B.append(("p", s["notes"]["lengths"]))
    return B


def _agreement_blocks(s: dict) -> list[tuple]:
    """Scorer-agreement tables found in the run dir (none: no section)."""
    B: list[tuple] = []
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
        f"{fmt_num(c['win_rate'])} {fmt_ci(c['win_rate_ci'])}", f"{fmt_num(c['centred'])} {fmt_ci(c['centred_ci'])}",
        f"{fmt_num(c['lc_win_rate'])} {fmt_ci(c['lc_ci'])}", c["mean_len_a"], c["mean_len_b"]] for c in comps]
    return table(headers, rows)


def _generic_table(data: Any) -> tuple:
    """Render whatever an agreement file holds: [{col: v}], {row: {col: v}} or {key: scalar}, scalar columns as
    cells (nested values stay in summary.json); anything else as JSON."""
    scalar = lambda v: not isinstance(v, (dict, list))  # noqa: E731
    if isinstance(data, dict) and data and all(isinstance(v, dict) for v in data.values()):
        data = [{"": k, **v} for k, v in data.items()]
    if isinstance(data, list) and data and all(isinstance(v, dict) for v in data):
        cols = [c for c in dict.fromkeys(k for v in data for k in v) if all(scalar(v.get(c)) for v in data)]
        return table(cols, [[v.get(c) for c in cols] for v in data])
    if isinstance(data, dict) and data and all(scalar(v) for v in data.values()):
        return table(["key", "value"], [[k, v] for k, v in data.items()])
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
