"""Verdicts: the honest one-sentence reading of each comparison, and the number formats the report shares.

Owns `comparison_verdict` (one comparison of the summary -> one sentence), `verdict_lines` (the lines printed at the
end of `phased-ift run` / `phased-ift report`, also the report's "Verdicts" section, with the IFEval, MT-Bench,
SeqEval and judge-check lines) and `fmt_num` / `fmt_ci` (how
every number and interval of report.md/html is written). Reads only the summary dict of `summary.summarize_run`
(or summary.json loaded back); no files.
"""

from __future__ import annotations

import math
from typing import Any

from phased_ift.judgecheck import QUALIFY, qualified


DESCRIPTIVE = ("Per test set and seed (descriptive: these lines make no claim; the tested answer is above, with "
               "Holm's correction):")


def fmt_ci(ci: list | None) -> str:
    """An interval as "[lo, hi]" with 3 decimals, "[n/a]" when there is none."""
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "[n/a]"


def fmt_num(x: Any, nd: int = 3) -> str:
    """A table cell: "n/a" for None/NaN, floats with `nd` decimals (significant digits when tiny), else str."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if isinstance(x, float):
        return f"{x:.{nd}g}" if x != 0 and abs(x) < 10 ** -nd else f"{x:.{nd}f}"
    return str(x)


def comparison_verdict(c: dict, length_warning_ratio: float = 1.2, several_seeds: bool = False) -> str:
    """One descriptive sentence for one comparison (arm A vs arm B on a test set, one seed), from its summary entry.

    Says the win rate with its Wilson interval, the length-controlled rate and a warning when the arm with the higher
    win rate answers much longer (LLM judges favour longer answers; Dubois et al. 2024). It makes no claim: these
    lines are one seed and one test set each, outside Holm's family; the tested answer is the "Did it help?" section
    (`effects.paired_effect`, pooled over seeds and test sets).
    """
    a, b = c["arm_a"], c["arm_b"]
    head = f"{a} vs {b} on {c['testset']}" + (f" (seed {c['seed']})" if several_seeds else "")
    if c["win_rate"] is None:
        return f"{head}: no parsed verdict among {c['n']} prompts ({c['unparseable']} unparseable), no win rate."
    text = f"{head}: win rate {c['win_rate']:.3f} {fmt_ci(c['win_rate_ci'])} over {c['n_parsed']} prompts"
    if c["unparseable"]:
        text += f" ({c['unparseable']} unparseable)"
    if c.get("lc_win_rate") is not None:
        text += f"; length-controlled {c['lc_win_rate']:.3f} {fmt_ci(c['lc_ci'])}"
    la, lb = c.get("mean_len_a"), c.get("mean_len_b")
    if la and lb and c["win_rate"] != 0.5:
        (w, lw), (o, lo) = ((a, la), (b, lb)) if c["win_rate"] > 0.5 else ((b, lb), (a, la))
        if lw >= length_warning_ratio * lo:
            text += (f". Warning: {w}, ahead here, answers {lw / lo:.1f}x longer ({lw:.0f} vs {lo:.0f} words) and "
                     f"judges favour long answers; the length-controlled rate removes the length-explained part, "
                     f"including any length difference that {w} itself causes")
    return text + "."


def verdict_lines(summary: dict, length_warning_ratio: float | None = None) -> list[str]:
    """Short verdicts for the CLI's final printout: first the answer (`report.answer`: each arm against the
    baseline per metric, paired, pooled over seeds, with the minimum detectable effect), then one per final comparison (with the reference loss of both
    arms when the offline evaluation covered that test set), the spread across seeds, the judge's check
    (`judge_check_line`) when there are win rates, other reference losses, then IFEval (`ifeval_verdicts`) and
    MT-Bench (`mt_bench_verdicts`) and SeqEval (`seqeval_verdicts`) per seed.

    Args:
        summary: the dict of `summarize_run` (or summary.json loaded back).
        length_warning_ratio: default: the run's report.length_warning_ratio from the summary (else 1.2).

    Returns:
        the answer's sentences, then DESCRIPTIVE (a line saying the following make no claim), then lines such as
        "phased vs one-off on vicuna: win rate 0.540 [0.432, 0.645] over 80 prompts; ...; reference loss phased
        1.234 [1.201, 1.266] vs one-off 1.250 [1.219, 1.281] (lower = closer to the reference answers)." and, for
        test sets without a judged
        comparison, "reference loss on alpaca_eval (final checkpoints; ...): phased 1.234 [...] vs one-off ...".
    """
    ratio = length_warning_ratio or summary.get("length_warning_ratio") or 1.2
    lines = [e["sentence"] for e in summary.get("effects", [])]
    n_answer = len(lines)
    comps = summary.get("comparisons", [])
    refs = _final_reference_losses(summary)
    several = len({c["seed"] for c in comps} | {seed for _, _, seed in refs}) > 1
    covered = set()
    for c in comps:
        line = comparison_verdict(c, ratio, several)
        ra, rb = refs.get((c["testset"], c["arm_a"], c["seed"])), refs.get((c["testset"], c["arm_b"], c["seed"]))
        if ra and rb and ra["mean"] is not None and rb["mean"] is not None:
            covered.add((c["testset"], c["seed"]))
            line = (line[:-1] + f"; reference loss {c['arm_a']} {ra['mean']:.3f} {fmt_ci(ra['ci'])} vs {c['arm_b']} "
                    f"{rb['mean']:.3f} {fmt_ci(rb['ci'])} (lower = closer to the reference answers).")
        lines.append(line)
    for sp in summary.get("seed_spread", []):
        w = sp["win_rate"]
        if w["mean"] is not None:
            lines.append(f"{sp['arm_a']} vs {sp['arm_b']} on {sp['testset']}: mean win rate {w['mean']:.3f} across "
                         f"{w['n_seeds']} seeds (std {fmt_num(w['std'])}, min {w['min']:.3f}, max {w['max']:.3f}).")
    if not comps and summary.get("notes", {}).get("judge"):  # what to run for win rates: with the answer, before
        lines.insert(n_answer, summary["notes"]["judge"])     # the descriptive lines, not among them
        n_answer += 1
    if comps:
        lines.append(judge_check_line(summary.get("judge_check") or {}))
    order = summary.get("run", {}).get("config", {}).get("arms", [])
    rank = lambda arm: (order.index(arm) if arm in order else len(order), arm)  # noqa: E731
    for ts, seed in sorted({(ts, seed) for ts, _, seed in refs} - covered):
        entries = sorted((e for (t, _, sd), e in refs.items() if (t, sd) == (ts, seed)), key=lambda e: rank(e["arm"]))
        parts = [f"{e['arm']} {fmt_num(e['mean'])} {fmt_ci(e['ci'])}" for e in entries]
        lines.append(f"reference loss on {ts} (final checkpoints{f', seed {seed}' if several else ''}; lower = "
                     "closer to the reference answers): " + " vs ".join(parts) + ".")
    lines += ifeval_verdicts(summary, rank) + mt_bench_verdicts(summary, rank) + seqeval_verdicts(summary, rank)
    if len(lines) > n_answer:
        lines.insert(n_answer, DESCRIPTIVE)
    return lines


def seqeval_verdicts(summary: dict, rank: Any = None) -> list[str]:
    """One line per seed: the SeqEval following rate and mean quality of every arm's final checkpoint with CIs."""
    finals = [r for r in summary.get("seqeval", []) if r.get("final") and r["following"]["mean"] is not None]
    lines = []
    for seed in sorted({r["seed"] for r in finals}):
        rs = sorted((r for r in finals if r["seed"] == seed), key=lambda r: rank(r["arm"]) if rank else r["arm"])
        parts = [f"{r['arm']} {fmt_num(r['following']['mean'])} {fmt_ci(r['following']['ci'])} (quality "
                 f"{fmt_num(r['quality']['mean'], 2)} {fmt_ci(r['quality']['ci'])}"
                 + (f"; {r['unparsed']} unparsed" if r["unparsed"] else "") + ")" for r in rs]
        lines.append(f"SeqEval following rate (final checkpoints, seed {seed}; every task attempted, LLM judge; "
                     "quality 1-5): " + ", ".join(parts) + ".")
    return lines


def mt_bench_verdicts(summary: dict, rank: Any = None) -> list[str]:
    """One line per seed: the MT-Bench mean rating (1-10, both turns) of every arm's final checkpoint with its CI."""
    finals = [r for r in summary.get("mt_bench", []) if r.get("final") and r["overall"] is not None]
    lines = []
    for seed in sorted({r["seed"] for r in finals}):
        rs = sorted((r for r in finals if r["seed"] == seed), key=lambda r: rank(r["arm"]) if rank else r["arm"])
        parts = [f"{r['arm']} {r['overall']:.2f} {fmt_ci(r['overall_ci'])}"
                 + (f" ({r['unparsed']} unparsed)" if r["unparsed"] else "") for r in rs]
        lines.append(f"MT-Bench mean rating (final checkpoints, seed {seed}; 1-10, single-answer grading): "
                     + ", ".join(parts) + ".")
    return lines


def judge_check_line(jc: dict) -> str:
    """How far the win rates' judge can be trusted: its judge-check agreement with GPT-4 (FastChat's "without tie"
    convention, next to the "longer answer wins" rule on the same pairs) and position consistency with CIs, and
    whether it qualifies (both lower CI bounds >= `judgecheck.QUALIFY`); or a warning that it was never checked."""
    who = f"judge {jc.get('judge')} (template {jc.get('template')})"
    c = jc.get("matched")
    if not c:
        return (f"{who} has not been checked against GPT-4's preferences: run `phased-ift judge-check CONFIG "
                "--limit 100` before trusting the win rates above.")
    ag, pc = c["agreement"], c["position_consistency"]
    text = (f"{who}: agreement with GPT-4 without ties {fmt_num(ag['mean'])} {fmt_ci(ag['ci'])} (the 'longer answer "
            f"wins' rule: {fmt_num(c['length_rule_agreement']['mean'])}), position consistency {fmt_num(pc['mean'])} "
            f"{fmt_ci(pc['ci'])}, on {c['n_pairs']} pairs of {c['annotations']}")
    ok = c["qualified"] if c.get("qualified") is not None else qualified(c)
    return text + (f"; both lower CI bounds reach {QUALIFY}, so the judge qualifies." if ok else
                   f"; a lower CI bound is below {QUALIFY}, so the judge is not shown to be good enough and the win "
                   f"rates above say little.")


def ifeval_verdicts(summary: dict, rank: Any = None) -> list[str]:
    """One descriptive line per seed: IFEval prompt-level strict accuracy of every arm's final checkpoint with its
    CI, then each paired difference against the baseline with its CI and the mid-p McNemar p-value (the same
    difference, interval and p as the answer's result conditional on that run when the run has one seed). No
    "significant" here: the claim, if any, is the answer's, with Holm's correction."""
    finals = [e for e in summary.get("ifeval", []) if e.get("final")]
    lines = []
    for seed in sorted({e["seed"] for e in finals}):
        es = sorted((e for e in finals if e["seed"] == seed), key=lambda e: rank(e["arm"]) if rank else e["arm"])
        m = lambda e: e["prompt_level_strict"]  # noqa: E731
        parts = [f"{e['arm']} {fmt_num(m(e)['mean'])} {fmt_ci(m(e)['ci'])}" for e in es]
        line = (f"IFEval prompt-level strict accuracy (final checkpoints, seed {seed}, {es[0]['n_prompts']} prompts): "
                + ", ".join(parts))
        for c in (c for c in summary.get("ifeval_comparisons", []) if c["seed"] == seed):
            if c["difference"] is None:
                continue
            mc = c["mcnemar"]
            line += (f"; {c['arm_a']} - {c['arm_b']} {c['difference']:+.3f} {fmt_ci(c['ci'])}, mid-p McNemar p = "
                     f"{mc['p_value']:.3g} ({mc['a_only']} vs {mc['b_only']} discordant prompts)")
        lines.append(line + ".")
    return lines


def _final_reference_losses(summary: dict) -> dict[tuple, dict]:
    """{(testset, arm, seed): the reference-loss entry of that arm's last phase}."""
    last: dict = {}
    for e in summary.get("reference_loss", []):
        key = (e["testset"], e["arm"], e["seed"])
        if key not in last or e["phase"] > last[key]["phase"]:
            last[key] = e
    return last
