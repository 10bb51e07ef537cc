"""The summary's "did it help?" part: each arm against the baseline on every metric the run has, paired on the
same prompts and pooled over seeds (`effects.paired_effect`), with the minimum detectable effect and one verdict
sentence per comparison.

Owns `effect_metrics` (the `evals.EffectMetric`s of every benchmark of `evals.BENCHMARKS`, each saying how
to read its per-prompt values of a final checkpoint from the run dir and which direction is better, then the
pairwise win rate, read here from the judgements) and `summarize_effects`, which turns them into
summary["effects"]. A benchmark's metric is one `EffectMetric` in its `Benchmark.effects`. The statistics are
`effects.py`'s.

Metrics (per prompt, final checkpoints only):
  reference loss  mean token loss of the reference answer (nats, lower is better), prompts = (test set, index);
  IFEval          prompt-level strict accuracy, 1 or 0 per prompt (Zhou et al. 2023), prompts = IFEval keys (the
                  view on prompts with two or more instructions, `ifeval.instruction_count_view`, is reported in
                  the IFEval section but is no comparison here: a subgroup of the same prompts would enlarge the
                  family Holm's correction covers without new evidence);
  SeqEval         the following verdict, 1 or 0 per answer, and the quality rating 1-5 (Hu et al. 2024, SeqEval;
                  single-answer LLM judge, `seqeval`), prompts = SeqEval ids; unparsed verdicts are missing;
  win rate        the pairwise verdict against the baseline (win 1, tie 0.5, loss 0; unparseable missing), minus
                  0.5, so the difference is the win rate over 0.5 (Pang et al. 2024, section 4), prompts = (test
                  set, id).
"""

from __future__ import annotations

import numpy as np

from phased_ift import effects
from phased_ift.config import Config
from phased_ift.phases.design import baseline_arm
from phased_ift.evals import BENCHMARKS, EffectMetric, PerPrompt
from phased_ift.rundir import RunDir
from phased_ift.winrate import verdict_values


def _win_rates(run: RunDir, cfg: Config, judgements: list[dict]) -> PerPrompt:
    base = baseline_arm(list(cfg.train.arms))
    out: PerPrompt = {}
    for j in judgements:
        if j["phase"] is not None or base not in (j["arm_a"], j["arm_b"]) or j["arm_a"] == j["arm_b"]:
            continue
        arm, flip = (j["arm_a"], False) if j["arm_b"] == base else (j["arm_b"], True)
        values = verdict_values([r["verdict"] for r in j["rows"]])
        cell = out.setdefault((arm, j["seed"]), {})
        for r, v in zip(j["rows"], values):
            cell[(j["testset"], str(r["id"]))] = (0.5 - v) if flip else (v - 0.5)
    return out


WIN_RATE = EffectMetric("win rate", _win_rates, paired=False, offset=0.5)


def effect_metrics() -> list[EffectMetric]:
    """The answer's metrics: every benchmark's (`Benchmark.effects`, registry order), then the pairwise win rate."""
    return [m for b in BENCHMARKS.values() for m in b.effects] + [WIN_RATE]


def _matrix(values: PerPrompt, arm: str, base: str | None) -> tuple[list[int], np.ndarray, int] | None:
    """(seeds, the (S, N) differences on the prompts every seed has, prompts left out) or None."""
    seeds = sorted(sd for a, sd in values if a == arm and (base is None or (base, sd) in values))
    if not seeds:
        return None
    cells = [values[(arm, sd)] for sd in seeds]
    bases = [values[(base, sd)] for sd in seeds] if base else [{}] * len(seeds)
    keys = set.intersection(*(set(c) & set(b) if base else set(c) for c, b in zip(cells, bases)))
    union = set.union(*(set(c) | set(b) for c, b in zip(cells, bases)))
    if not keys:
        return None
    order = sorted(keys)
    d = np.array([[c[k] - (b[k] if base else 0.0) for k in order] for c, b in zip(cells, bases)], dtype=float)
    if np.isnan(d).all(axis=1).any():
        return None
    return seeds, d, len(union) - len(keys)


def _unparseable(d: np.ndarray) -> dict | None:
    """For a win rate: missing cells (unparseable verdicts) of the comparison and the sensitivity matrix with each
    of them counted as a loss for the arm (-0.5), or None when nothing is missing."""
    missing = int(np.isnan(d).sum())
    if not missing:
        return None
    return {"count": missing, "rate": missing / d.size, "as_loss": np.where(np.isnan(d), -0.5, d)}


def summarize_effects(run: RunDir, cfg: Config, judgements: list[dict]) -> list[dict]:
    """summary["effects"]: for each metric of `effect_metrics()` with data and each arm other than the baseline,
    {"metric", "arm", "baseline", "seeds", "unpaired" (prompts not answered under every seed and both arms,
    left out), **`effects.paired_effect`, "mde": `effects.minimum_detectable_effect`, "variance": the
    components, "lower_is_better", "offset", "p_holm" (Holm-adjusted over the run's claims about the arms),
    "n_comparisons", "p_holm_conditional" / "n_conditional" (Holm over the run's conditional results),
    "unparseable" (win rates: {"count", "rate", "as_loss": the claim's or conditional result with every
    unparseable verdict counted as a loss for the arm}, else None), "sentence": `effects.effect_sentence`}.

    Args:
        judgements: `report.summary.read_judgements(run)` (read once by the summary).

    Raises:
        PhasedIFTError: an input file that exists but is malformed (names the file).
    """
    rc = cfg.report
    arms = list(cfg.train.arms)
    base = baseline_arm(arms)
    draws = max(rc.bootstrap, 10000)  # the conditional sign-flip test's Monte Carlo draws (report.bootstrap's help)
    out = []
    for metric in effect_metrics():
        values = metric.read(run, cfg, judgements)
        for arm in arms:
            if arm == base:
                continue
            m = _matrix(values, arm, base if metric.paired else None)
            if m is None:
                continue
            seeds, d, unpaired = m
            eff = effects.paired_effect(d, draws, rc.confidence, rc.seed)
            vc = effects.variance_components(d)
            mde = effects.minimum_detectable_effect(eff, vc, rc.confidence)
            miss = None if metric.paired else _unparseable(d)
            if miss:
                alt = effects.paired_effect(miss.pop("as_loss"), draws, rc.confidence, rc.seed)
                res = alt if alt["claim"] else alt["conditional"]
                miss["as_loss"] = {"difference": res["difference"], "p_value": res["p_value"],
                                   "significant": res["significant"], "claim": alt["claim"]}
            out.append({"metric": metric.name, "arm": arm, "baseline": base, "seeds": seeds, "unpaired": unpaired,
                        **eff, "mde": mde, "variance": vc, "lower_is_better": metric.lower_is_better,
                        "offset": metric.offset, "unparseable": miss})
    # Every arm x metric with a claim is one comparison of the family Holm's correction controls; the conditional
    # results (these training runs) form a family of their own.
    claims = effects.holm_adjust([e["p_value"] if e["claim"] else None for e in out])
    conds = effects.holm_adjust([e["conditional"]["p_value"] if not e["claim"] else None for e in out])
    n_claims, n_conds = sum(e["claim"] for e in out), sum(not e["claim"] and e["conditional"]["estimable"] for e in out)
    for e, ph, pc in zip(out, claims, conds):
        e["p_holm"], e["n_comparisons"] = (ph, n_claims) if e["claim"] else (None, n_claims)
        e["p_holm_conditional"], e["n_conditional"] = (None if e["claim"] else pc), n_conds
        e["sentence"] = effects.effect_sentence(
            e["arm"], e["baseline"], e["metric"], e, e["mde"], e["lower_is_better"], e["offset"],
            holm=(ph, n_claims) if e["claim"] else None,
            holm_conditional=None if e["claim"] else (pc, n_conds)) + _unparseable_text(e)
    return out


def _unparseable_text(e: dict) -> str:
    u = e.get("unparseable")
    if not u:
        return ""
    alt = u["as_loss"]
    p = "n/a" if alt["p_value"] is None else f"{alt['p_value']:.2g}"
    test = "the claim's test" if alt["claim"] else "conditional on these runs"
    return (f" {u['count']} unparseable verdict{'s' if u['count'] > 1 else ''} ({u['rate']:.1%} of the cells) were "
            f"left out; counted as losses for {e['arm']}: {e['offset'] + alt['difference']:.3f} ({test}, p = {p} "
            f"before Holm's correction).")
