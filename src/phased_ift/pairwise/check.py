"""A judge you can check: the configured pairwise judge against GPT-4's known preferences.

    phased-ift judge-check CONFIG [--annotations FILE] [--limit 100] [--seed 0]

AlpacaEval validates an annotator against reference annotations before anyone trusts it; FastChat reports judge
agreement and position bias. This module does the same for whatever `judge` / `pairwise.template` a config
names (GPT-4, a vLLM server, llama.cpp): it judges answer pairs whose GPT-4 preference is known, in both orders
and with the paper's reconciliation rule (`judge.judge_pairs`, so the same cache, retries and rows), then measures:

  * agreement with GPT-4 in FastChat's two conventions (`fastchat/llm_judge/compute_agreement.py`, the numbers
    of Zheng et al. 2023, "Judging LLM-as-a-Judge with MT-Bench and Chatbot Arena", setups S1 and S2), over the
    pairs the judge parsed (GPT-4's preference is always known):
      - "agreement" (FastChat's "without tie", S2): pairs where GPT-4 or the judge says tie are dropped; the share
        of the rest where both name the same answer. The comparable number, and the one the report reads;
      - "agreement_with_tie" (FastChat's "with tie", S1): tie is a third choice; the share of pairs where both make
        the same choice (1, 2 or tie).
    The judge's tie includes the pairs the reconciliation rule turned into a tie (two orders that disagree), so
    position inconsistency lowers the with-tie number and shrinks the without-tie number's n;
  * the same two numbers for the rule "the longer answer wins" as if it were a second judge on the same parsed
    pairs, with the same tie credit (equal lengths are its tie: a tie choice with tie, dropped without), so a
    reader sees what the judge adds beyond length;
  * Cohen's kappa (scikit-learn) over {answer 1, answer 2, tie} on the pairs both parsed;
  * position consistency: the same winner (or tie) in both orders, over pairs whose two orders parsed;
  * the first-shown answer's win rate: the first-shown answer's wins (ties count half) over the parsed orders,
    pooled over pairs (0.5 = no position bias); its CI resamples pairs, both orders of a pair together
    (`stats.ratio_with_ci`), so a perfectly consistent judge, whose every pair gives exactly 0.5, gets [0.5, 0.5];
  * the longer answer's win rate among the judge's decided pairs of unequal length, next to GPT-4's on the same
    pairs;
  * the unparseable rate (pairs where either order did not parse);
  * "qualified": True only when the lower CI bounds of agreement (without tie) and of position consistency are
    both >= `QUALIFY` (0.7), the bar the report applies: the judge is shown to be good enough, not just estimated
    to be;
  * requests, tokens and seconds.
Every rate has a percentile-bootstrap 95% CI over pairs (`stats.mean_with_ci`, `stats.ratio_with_ci`).

The published anchor: with the default annotations (text_davinci_003 vs alpaca-7b, AlpacaEval's GPT-4 annotator)
the run also gives alpaca-7b's win rate against text_davinci_003 under the configured judge, next to AlpacaEval's
published 26.46 % (standard error 1.54; `src/alpaca_eval/leaderboards/data_AlpacaEval/alpaca_eval_gpt4_leaderboard
.csv`, tatsu-lab/alpaca_eval commit cd543a1) and to the same number recomputed from the file (`stats.
preference_win_rate`, equal to AlpacaEval's `pairwise_to_winrate`: a test checks it).

AlpacaEval's preference encoding (alpaca_eval.metrics.helpers.describe_head2head): 1 = output_1 (the reference
model) preferred, 2 = output_2 preferred, 1.5 or 0 = draw.

Output: `<run_dir>/judge_check/<tag>/judgements.jsonl` (rows of `judge.make_row`, arm_a = "output_1") and
`judge_check.json` (`check_metrics` plus the judge, template, annotations file, anchor and cost).

Owns: reading annotation files, the check's metrics and anchor, and the `judge-check` command's body.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from phased_ift.config import Config
from phased_ift.data import data_home
from phased_ift.errors import PhasedIFTError
from phased_ift.pairwise.judge import judge_pairs, load_template, order_outcomes, reply_tokens
from phased_ift.winrate import aggregate
from phased_ift.llm_client import LLMClient
from phased_ift.rundir import RunDir
from phased_ift.runio import atomic_write_json, read_jsonl
from phased_ift.stats import bootstrap_ci, mean_with_ci, preference_win_rate, ratio_with_ci

DEFAULT_ANNOTATIONS = "alpaca_eval/alpaca-7b/alpaca_eval_gpt4/annotations.json"
# AlpacaEval's published GPT-4-annotator result for alpaca-7b vs text_davinci_003 (leaderboard CSV, commit cd543a1).
PUBLISHED = {"alpaca-7b": {"win_rate": 26.459627329192543, "standard_error": 1.535711469748,
                           "source": "tatsu-lab/alpaca_eval@cd543a1 src/alpaca_eval/leaderboards/data_AlpacaEval/"
                                     "alpaca_eval_gpt4_leaderboard.csv"}}
_FIELDS = ("instruction", "output_1", "output_2", "preference")
# The bar a checked judge must clear, on the lower 95% CI bounds of agreement (without tie) and position
# consistency, for `check_metrics(...)["qualified"]`.
QUALIFY = 0.7


def load_annotations(path: str | Path | None = None, limit: int = 0, seed: int = 0) -> list[dict]:
    """AlpacaEval annotation records {instruction, output_1, output_2, preference, ...} with an "id" (their index
    in the file), a seeded sample of `limit` kept in file order (0 = all).

    Raises:
        PhasedIFTError: missing file, not a JSON list, a record without a needed field or with a preference that
            is not 0, 1, 1.5 or 2 (names the file and record index).
    """
    path = Path(path) if path else data_home() / DEFAULT_ANNOTATIONS
    if not path.is_file():
        raise PhasedIFTError(f"annotations file {path} does not exist; give --annotations FILE (an AlpacaEval "
                             f"annotations.json), or put {DEFAULT_ANNOTATIONS} under the data home.")
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise PhasedIFTError(f"{path}: not valid JSON ({e.msg}, line {e.lineno}).") from None
    if not isinstance(records, list):
        raise PhasedIFTError(f"{path}: expected a JSON list of annotation records.")
    out = []
    for i, rec in enumerate(records):
        missing = [f for f in _FIELDS if not isinstance(rec, dict) or f not in rec]
        if missing or rec["preference"] not in (0, 1, 1.5, 2) or not all(
                isinstance(rec[f], str) for f in _FIELDS[:3]):
            raise PhasedIFTError(f"{path}: record {i} needs string instruction/output_1/output_2 and a preference "
                                 f"of 0, 1, 1.5 or 2 (missing: {missing or 'none'}); fix or remove it.")
        out.append({**rec, "id": str(i)})
    if limit and limit < len(out):
        keep = sorted(random.Random(seed).sample(range(len(out)), limit))
        out = [out[i] for i in keep]
    return out


def gpt4_choice(preference: float) -> str:
    """AlpacaEval preference -> "1" (output_1), "2" (output_2) or "tie" (1.5, and 0: AlpacaEval's old draw)."""
    return {1: "1", 2: "2"}.get(preference, "tie")  # type: ignore[call-overload]


def check_metrics(rows: Sequence[dict], annotations: Sequence[dict], n_resamples: int = 2000,
                  confidence: float = 0.95, seed: int = 0) -> dict:
    """The check's numbers (module docstring) from judgement rows (arm_a = output_1) and their annotations.

    Returns:
        {"n_pairs", "agreement", "agreement_with_tie", "length_rule_agreement", "length_rule_agreement_with_tie",
         "kappa", "position_consistency", "first_shown_win_rate", "longer_win_rate", "gpt4_longer_win_rate",
         "unparseable_rate", "qualified", "qualification_threshold"}: each rate a dict {"n", "mean", "ci"} over its
        pairs ("mean" None when no pair qualifies; `stats.mean_with_ci`), first_shown_win_rate with "n_orders" too
        (its n counts pairs with a parsed order); kappa {"n", "value", "ci"}; "qualified" a bool (`QUALIFY`).
    """
    kw = {"n_resamples": n_resamples, "confidence": confidence, "seed": seed}
    ann = {a["id"]: a for a in annotations}
    judge_of = {"win": "1", "loss": "2", "tie": "tie"}
    first_of = ({"win": 1.0, "tie": 0.5, "loss": 0.0}, {"loss": 1.0, "tie": 0.5, "win": 0.0})  # order 1, order 2
    agree, agree_tie, rule, rule_tie = [], [], [], []
    first_num, first_den, longer, gpt4_longer, consistent, unparsed, pairs = [], [], [], [], [], [], []
    for r in rows:
        a = ann[r["id"]]
        g, v = gpt4_choice(a["preference"]), r["verdict"]
        la, lb = r["len_a"], r["len_b"]
        unparsed.append(float(v == "unparseable"))
        o1, o2 = order_outcomes(r)  # order 1 shows output_1 first
        shown = [first_of[k][o] for k, o in enumerate((o1, o2)) if o != "unparseable"]
        if shown:  # one cluster per pair: both orders of a pair are resampled together
            first_num.append(sum(shown))
            first_den.append(float(len(shown)))
        if "unparseable" not in (o1, o2):
            consistent.append(float(o1 == o2))
        if v == "unparseable":
            continue
        j = judge_of[v]
        length = "1" if la > lb else "2" if la < lb else "tie"  # the rule "the longer answer wins"
        pairs.append((g, j))
        agree_tie.append(float(j == g))
        rule_tie.append(float(length == g))
        if "tie" not in (g, j):
            agree.append(float(j == g))
        if "tie" not in (g, length):
            rule.append(float(length == g))
        if j != "tie" and length != "tie":
            longer.append(float(j == length))
            if g != "tie":
                gpt4_longer.append(float(g == length))
    first = ratio_with_ci(first_num, first_den, **kw)
    out = {"n_pairs": len(rows), "agreement": mean_with_ci(agree, **kw),
           "agreement_with_tie": mean_with_ci(agree_tie, **kw), "length_rule_agreement": mean_with_ci(rule, **kw),
           "length_rule_agreement_with_tie": mean_with_ci(rule_tie, **kw), "kappa": kappa_with_ci(pairs, **kw),
           "position_consistency": mean_with_ci(consistent, **kw),
           "first_shown_win_rate": {"n": first["n"], "n_orders": int(sum(first_den)), "mean": first["value"],
                                    "ci": first["ci"]},
           "longer_win_rate": mean_with_ci(longer, **kw), "gpt4_longer_win_rate": mean_with_ci(gpt4_longer, **kw),
           "unparseable_rate": mean_with_ci(unparsed, **kw)}
    out["qualified"] = qualified(out)
    out["qualification_threshold"] = QUALIFY
    return out


def qualified(result: dict, threshold: float = QUALIFY) -> bool:
    """True when the lower CI bounds of agreement (without tie) and of position consistency are both >= threshold;
    False when either has no CI (too few pairs)."""
    lows = [(result.get(k) or {}).get("ci") for k in ("agreement", "position_consistency")]
    return all(ci is not None and ci[0] >= threshold for ci in lows)


def kappa_with_ci(pairs: Sequence[tuple[str, str]], n_resamples: int = 2000, confidence: float = 0.95,
                  seed: int = 0) -> dict:
    """Cohen's kappa (scikit-learn's `cohen_kappa_score`) of (GPT-4, judge) choices with a bootstrap CI over pairs:
    {"n", "value", "ci"} (value None for no pairs, or when both raters use one category only)."""
    from sklearn.metrics import cohen_kappa_score

    if not pairs:
        return {"n": 0, "value": None, "ci": None}
    g, j = [p[0] for p in pairs], [p[1] for p in pairs]

    def kappa(a: Sequence[str], b: Sequence[str]) -> float:
        if len(set(a) | set(b)) < 2:
            return float("nan")
        with np.errstate(invalid="ignore", divide="ignore"):
            return float(cohen_kappa_score(a, b, labels=["1", "2", "tie"]))

    value = kappa(g, j)
    def resampled(idx: np.ndarray) -> np.ndarray:  # (B, N) resampled pair indices -> B kappas (scikit-learn)
        return np.array([kappa([g[i] for i in row], [j[i] for i in row]) for row in idx.astype(int)])

    # The shared percentile bootstrap over pairs; resamples where kappa is undefined (NaN) are dropped there.
    ci = bootstrap_ci(np.arange(len(pairs), dtype=float), resampled, n_resamples, confidence, seed)
    return {"n": len(pairs), "value": None if np.isnan(value) else value, "ci": list(ci) if ci else None}


def anchor(rows: Sequence[dict], annotations: Sequence[dict]) -> dict:
    """output_2's win rate against output_1 (%, the paper's rule: wins + ties/2 over parsed pairs) under the
    configured judge, next to GPT-4's on the same pairs (`stats.preference_win_rate`) and, for alpaca-7b,
    AlpacaEval's published number (all 805 pairs)."""
    agg = aggregate(rows)
    generator = str(annotations[0].get("generator_2", "output_2")) if annotations else "output_2"
    ours = None if agg["win_rate"] is None else 100 * (1 - agg["win_rate"])
    return {"model": generator, "baseline": str(annotations[0].get("generator_1", "output_1")) if annotations else "",
            "judge_win_rate": ours, "n_parsed": agg["n_parsed"],
            "gpt4_win_rate": preference_win_rate([a["preference"] for a in annotations]),
            "published": PUBLISHED.get(generator)}


def run_judge_check(cfg: Config, annotations_path: str | None = None, limit: int = 0, seed: int = 0,
                    console: Any = None) -> dict:
    """Judge the annotation pairs with the configured judge (both orders) and write judge_check.json.

    Args:
        cfg: the config (judge endpoint, pairwise.template, run_dir, report's bootstrap settings).
        annotations_path: an AlpacaEval annotations.json (default: the data home's alpaca-7b one).
        limit, seed: a seeded sample of that many pairs (0 = all).
    Returns:
        the dict written to `<run_dir>/judge_check/<tag>/judge_check.json`.
    Raises:
        PhasedIFTError: no judge endpoint configured; see `load_annotations`, `judge.judge_pairs`.
    """
    from rich.console import Console

    console = console or Console(stderr=True)
    j, template_name = cfg.judge, cfg.pairwise.template
    if not j.enabled:
        raise PhasedIFTError("judge-check needs a judge: set judge.base_url and judge.model (e.g. a local "
                             "llama.cpp server, judge.base_url=http://127.0.0.1:8000/v1 judge.model=local).")
    annotations = load_annotations(annotations_path, limit, seed)
    tag = f"{Path(annotations_path or DEFAULT_ANNOTATIONS).parent.parent.name}_{template_name}" + (
        f"_n{limit}_seed{seed}" if limit else "")
    run = RunDir(cfg.run_dir)
    out_dir = run.judge_check(tag)
    rows_a = [{"id": a["id"], "instruction": a["instruction"], "output": a["output_1"]} for a in annotations]
    rows_b = [{"id": a["id"], "instruction": a["instruction"], "output": a["output_2"]} for a in annotations]
    t0 = time.perf_counter()
    with LLMClient(j, run.llm_cache, console=console) as client:
        template = load_template(template_name)
        res = judge_pairs(client, rows_a, rows_b, "output_1", "output_2", out_dir / "judgements.jsonl", template,
                          tag, temperature=j.temperature, max_tokens=reply_tokens(cfg, template),
                          console=console)
        cost = {**client.stats, "seconds": time.perf_counter() - t0}
    rows = list(read_jsonl(out_dir / "judgements.jsonl"))
    rc = cfg.report
    result = {"judge": j.model, "base_url": j.base_url, "template": template_name,
              "annotations": str(annotations_path or DEFAULT_ANNOTATIONS), "limit": limit, "seed": seed,
              "failed": res["failed"], **check_metrics(rows, annotations, rc.bootstrap, rc.confidence, rc.seed),
              "anchor": anchor(rows, annotations), "cost": cost}
    atomic_write_json(out_dir / "judge_check.json", result, indent=1)
    return result


def format_check(result: dict) -> list[str]:
    """Plain-text lines of a judge check: each rate with its CI, the anchor and the cost."""
    def rate(m: dict, key: str = "mean") -> str:
        v = m.get(key)
        return "n/a" if v is None else f"{v:.3f}" + (f" [{m['ci'][0]:.3f}, {m['ci'][1]:.3f}]" if m.get("ci") else "")

    lines = [f"judge check: {result['judge']} ({result['template']}) on {result['n_pairs']} pairs of "
             f"{result['annotations']}"]
    for key, label in [("agreement", "agreement with GPT-4, without tie (FastChat S2)"),
                       ("length_rule_agreement", "  'longer answer wins' rule, without tie"),
                       ("agreement_with_tie", "agreement with GPT-4, with tie (FastChat S1)"),
                       ("length_rule_agreement_with_tie", "  'longer answer wins' rule, with tie"),
                       ("position_consistency", "position consistency (same winner both orders)"),
                       ("first_shown_win_rate", "first-shown answer wins (n = pairs)"),
                       ("longer_win_rate", "longer answer wins (judge)"),
                       ("gpt4_longer_win_rate", "  longer answer wins (GPT-4, same pairs)"),
                       ("unparseable_rate", "unparseable")]:
        lines.append(f"  {label:50s} {rate(result[key])}  (n={result[key]['n']})")
    lines.append(f"  {'Cohen kappa':50s} {rate(result['kappa'], 'value')}  (n={result['kappa']['n']})")
    bar = result.get("qualification_threshold", QUALIFY)
    lines.append(f"  qualified: {'yes' if result.get('qualified') else 'no'} (lower CI bounds of agreement without "
                 f"tie and of position consistency both >= {bar:g})")
    a = result["anchor"]
    pub = a.get("published")
    ours = "n/a" if a["judge_win_rate"] is None else f"{a['judge_win_rate']:.1f} %"
    lines.append(f"  anchor: {a['model']} vs {a['baseline']} win rate under this judge {ours} (parsed "
                 f"{a['n_parsed']}); GPT-4 on these pairs {a['gpt4_win_rate']['win_rate']:.1f} %"
                 + (f"; AlpacaEval published {pub['win_rate']:.2f} % (SE {pub['standard_error']:.2f}, all 805)"
                    if pub else ""))
    c = result["cost"]
    lines.append(f"  cost: {c['requests']} requests ({c['sent']} sent, {c['cache_hits']} cached), "
                 f"{c['prompt_tokens']} prompt + {c['completion_tokens']} completion tokens, {c['seconds']:.0f} s")
    return lines
