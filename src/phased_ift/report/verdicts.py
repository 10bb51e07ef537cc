"""Verdicts: the honest one-sentence reading of each comparison.

Owns `comparison_verdict` (one comparison of the summary -> one sentence), `verdict_lines` (the lines printed at the
end of `phased-ift run` / `phased-ift report`, also the report's "Verdicts" section: the answer, the win-rate
lines, the judge-check line, then each benchmark's own lines, `Benchmark.verdicts`) and `judge_check_line`. The
number formats are `blocks.fmt_num` / `blocks.fmt_ci` (re-exported). Reads only the summary dict of
`summary.summarize_run` (or summary.json loaded back); no files.
"""

from __future__ import annotations

from phased_ift.blocks import fmt_ci, fmt_num  # noqa: F401 (the report's number formats)
from phased_ift.evals import BENCHMARKS, reference_loss
from phased_ift.pairwise.check import QUALIFY, qualified


DESCRIPTIVE = ("Per test set and seed (descriptive: these lines make no claim; the tested answer is above, with "
               "Holm's correction):")


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
    (`judge_check_line`) when there are win rates, then each benchmark's lines (`Benchmark.verdicts`, registry
    order: the reference loss of test sets no win-rate line covers, IFEval, MT-Bench and SeqEval per seed).

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
    refs = reference_loss.final_losses(summary)
    several = len({c["seed"] for c in comps} | {seed for _, _, seed in refs}) > 1
    for c in comps:
        line = comparison_verdict(c, ratio, several)
        quoted = reference_loss.quoted_losses(refs, c)
        if quoted:
            ra, rb = quoted
            line = (line[:-1] + f"; reference loss {c['arm_a']} {ra['mean']:.3f} {fmt_ci(ra['ci'])} vs {c['arm_b']} "
                    f"{rb['mean']:.3f} {fmt_ci(rb['ci'])} (lower = closer to the reference answers).")
        lines.append(line)
    for sp in summary.get("seed_spread", []):
        w = sp["win_rate"]
        if w["mean"] is not None:
            lines.append(f"{sp['arm_a']} vs {sp['arm_b']} on {sp['testset']}: mean win rate {w['mean']:.3f} across "
                         f"{w['n_seeds']} seeds (std {fmt_num(w['std'])}, min {w['min']:.3f}, max {w['max']:.3f}).")
    if not comps and summary.get("notes", {}).get("pairwise"):  # what to run for win rates: with the answer, before
        lines.insert(n_answer, summary["notes"]["pairwise"])     # the descriptive lines, not among them
        n_answer += 1
    if comps:
        lines.append(judge_check_line(summary.get("judge_check") or {}))
    order = summary.get("run", {}).get("config", {}).get("arms", [])
    rank = lambda arm: (order.index(arm) if arm in order else len(order), arm)  # noqa: E731
    for benchmark in BENCHMARKS.values():  # the reference loss of test sets no win-rate line covers, IFEval, ...
        lines += benchmark.verdicts(summary, rank)
    if len(lines) > n_answer:
        lines.insert(n_answer, DESCRIPTIVE)
    return lines


def judge_check_line(jc: dict) -> str:
    """How far the win rates' judge can be trusted: its judge-check agreement with GPT-4 (FastChat's "without tie"
    convention, next to the "longer answer wins" rule on the same pairs) and position consistency with CIs, and
    whether it qualifies (both lower CI bounds >= `pairwise.check.QUALIFY`); or a warning that it was never checked."""
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
