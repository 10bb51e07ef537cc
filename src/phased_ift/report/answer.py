"""The summary's "did it help?" part: each arm against the baseline on every metric the run has, paired on the
same prompts and pooled over seeds (`effects.paired_effect`), with the minimum detectable effect and one verdict
sentence per comparison.

Owns the registry `EFFECT_METRICS` (one `EffectMetric` per metric: how to read its per-prompt values of a final
checkpoint from the run dir, which direction is better) and `summarize_effects`, which turns them into
summary["effects"]. Adding a metric is one `EffectMetric` here plus its test. The statistics are `effects.py`'s;
the files are found through `RunDir` and read as `report.summary` reads them.

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

import json
from dataclasses import dataclass
from typing import Callable

import numpy as np

from phased_ift import effects
from phased_ift.config import Config
from phased_ift.design import ARMS, baseline_arm, final_phase
from phased_ift.errors import PhasedIFTError
from phased_ift.rundir import RunDir
from phased_ift.runio import read_jsonl
from phased_ift.seqeval import TESTSET, per_prompt_values
from phased_ift.winrate import verdict_values

# {(arm, seed): {prompt key: value}} of the final checkpoints
PerPrompt = dict[tuple[str, int], dict[tuple, float]]


@dataclass(frozen=True)
class EffectMetric:
    """One metric of the answer.

    Attributes:
        name: the metric in sentences and tables.
        read: (run, cfg, judgements) -> per-prompt values of each final (arm, seed); for `paired=False` the values are
            already differences against the baseline, keyed by the other arm.
        lower_is_better: the metric improves downwards.
        paired: the values are per arm, paired here as arm - baseline; False: already a comparison.
        offset: added to the difference when shown (0.5 for a win rate).
    """

    name: str
    read: Callable[[RunDir, Config, list[dict]], PerPrompt]
    lower_is_better: bool = False
    paired: bool = True
    offset: float = 0.0


def _load(path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise PhasedIFTError(f"{path}: not valid JSON ({e}); delete it and re-run the evaluate step.") from None


def _is_final(cfg: Config, run: RunDir, arm: str, phase: int) -> bool:
    return arm in ARMS and phase == final_phase(cfg, arm, run)


def _reference_losses(run: RunDir, cfg: Config, judgements: list[dict]) -> PerPrompt:
    out: PerPrompt = {}
    for e in run.evaluation_files():
        if not _is_final(cfg, run, e.arm, e.phase):
            continue
        for name, t in (_load(e.path).get("testsets") or {}).items():
            for i, loss in enumerate(t.get("per_example") or []):
                if loss is not None:
                    out.setdefault((e.arm, e.seed), {})[(name, i)] = float(loss)
    return out


def _ifeval(run: RunDir, cfg: Config, judgements: list[dict]) -> PerPrompt:
    """IFEval prompt-level strict accuracy: {(arm, seed): {(key,): 1.0 | 0.0}} of the final checkpoints."""
    out: PerPrompt = {}
    for e in run.evaluation_files("ifeval.json"):
        if _is_final(cfg, run, e.arm, e.phase):
            out[(e.arm, e.seed)] = {(str(r["key"]),): float(r["prompt_strict"])
                                    for r in _load(e.path).get("per_prompt") or []}
    return out


def _seqeval(metric: str) -> Callable[[RunDir, Config, list[dict]], PerPrompt]:
    """The reader of one SeqEval metric: {(arm, seed): {(id,): verdict}} of the final checkpoints' grade files."""
    def read(run: RunDir, cfg: Config, judgements: list[dict]) -> PerPrompt:
        out: PerPrompt = {}
        for g in run.grade_files():
            if g.testset == TESTSET and _is_final(cfg, run, g.arm, g.phase):
                rows = read_jsonl(g.path, tolerate_torn_tail=True)
                out[(g.arm, g.seed)] = {(i,): v for i, v in per_prompt_values(rows, metric).items()}
        return out
    return read


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


EFFECT_METRICS: list[EffectMetric] = [
    EffectMetric("reference loss", _reference_losses, lower_is_better=True),
    EffectMetric("IFEval prompt-level strict accuracy", _ifeval),
    EffectMetric("SeqEval following rate", _seqeval("following")),
    EffectMetric("SeqEval quality (1-5)", _seqeval("quality")),
    EffectMetric("win rate", _win_rates, paired=False, offset=0.5),
]


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
    """summary["effects"]: for each metric of `EFFECT_METRICS` with data and each arm other than the baseline,
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
    for metric in EFFECT_METRICS:
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
