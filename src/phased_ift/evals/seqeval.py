"""SeqEval: does a model carry out every task of a sequential instruction? Single-answer LLM-judge grading.

    phased-ift run CONFIG generate.test_sets=[seqeval] judge.base_url=... judge.model=gpt-4-turbo

Source: Hu, Yu, Chen, Ponti, "Fine-tuning Large Language Models with Sequential Instructions" (arXiv 2403.07794,
SeqEval). SeqEval is the 805 AlpacaEval prompts rewritten by 1-4 rounds of the Seq-Instruct pipeline into chains of
tasks (`data.TEST_SETS["seqeval"]`: seqins/seqEval.json, meta["iteration"] = the depth; 804 usable, upstream record
547 is empty). The paper judges each answer with GPT-4-Turbo on two metrics, both here:

  * following rate: the share of answers that attempt every task of the instruction, a binary verdict per answer
    (`templates/seqeval-following.txt`, "[[YES]]" / "[[NO]]", `parse_following`);
  * quality: a 1-5 rating per answer (`templates/seqeval-quality.txt`, "[[x]]", `parse_quality`).

The paper's judge prompts are not published (GitHub hanxuhu/SeqIns at aec462d has the prompts and a generation
script, eval/alpaca_farm/run_seq_eval.py, but no judge prompt or scoring code); the two packaged templates are
written from the paper's definitions and say so in their headers. `evaluation.seqeval_following_template` /
`evaluation.seqeval_quality_template` take your own .txt files (placeholders {instruction}, {answer}).

Requests: system + user prompt, temperature 0, `judge.grade_max_tokens`, on the judge endpoint `judge`, through
the LLM client's cache. Rows go to `grades/<arm>/seed_<s>/phase_<k>/seqeval.jsonl` (`grading.grade_file`: resumable,
failed requests asked again), one per (answer, metric):

    {"id", "metric": "following"|"quality", "iteration": 1-4, "template", "rating": 1.0|0.0 (following) or 1-5
     (quality) | null, "reply", "judge", "unparsed": bool, "failed": bool, "error"}

Numbers (`summarize_seqeval`): the following rate and the mean quality over parsed verdicts, each with a percentile
bootstrap CI over prompts, overall and by iteration depth; unparsed and failed verdicts are counted apart, never
scored. The paired comparison between arms on the same prompts is the report's (`report.answer.effect_metrics`,
from `per_prompt_values`).

Owns: the SeqEval judge prompts and their parsers, the grade items and rows, the grader `GRADER`, the aggregation
(`summarize_seqeval`, `per_prompt_values`), the report's reader (`read_seqeval`) and its benchmark `BENCHMARK`
(`evals.Benchmark`: summary entries, report section, verdict lines, the answer's two metrics).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

from phased_ift.evals import grading
from phased_ift.prompts import PromptTemplate, read_template
from phased_ift.blocks import fmt_ci, fmt_num, table
from phased_ift.config import Config
from phased_ift.config_choices import BENCHMARKS
from phased_ift.data import load_test_set
from phased_ift.errors import PhasedIFTError
from phased_ift.evals.benchmark import EffectMetric, PerPrompt, is_final, mark_final
from phased_ift.generation import read_generations, settings_path
from phased_ift.rundir import RunDir
from phased_ift.runio import read_jsonl
from phased_ift.stats import mean_with_ci

TESTSET = "seqeval"
METRICS = ("following", "quality")
QUALITY_MIN, QUALITY_MAX = 1.0, 5.0
PACKAGED = "seqeval-following, seqeval-quality"
PLACEHOLDERS = ("{instruction}", "{answer}")
_VERDICT = re.compile(r"\[\[\s*(yes|no)\s*\]\]", re.IGNORECASE)


# ---------------------------------------------------------------------------------------------------------------
# Parsers and prompts
# ---------------------------------------------------------------------------------------------------------------


def parse_following(reply: str | None) -> float | None:
    """The following verdict of a judge reply: 1.0 for "[[YES]]" (every task attempted), 0.0 for "[[NO]]"
    (case and inner spaces ignored, anywhere in the reply); None (unparsed) when the reply has neither, or both
    (an ambiguous reply must not become a result; the same tag repeated is fine)."""
    found = {m.group(1).lower() for m in _VERDICT.finditer(reply or "")}
    return (1.0 if found == {"yes"} else 0.0) if len(found) == 1 else None


def parse_quality(reply: str | None) -> float | None:
    """The 1-5 quality rating of a judge reply: FastChat's rule (`grading.parse_rating`: the first "[[x]]", else
    the first "[x]"), then x must lie in [1, 5]; None (unparsed) otherwise."""
    x = grading.parse_rating(reply)
    return x if x is not None and QUALITY_MIN <= x <= QUALITY_MAX else None


PARSERS = {"following": parse_following, "quality": parse_quality}


def load_prompts(following: str = "seqeval-following", quality: str = "seqeval-quality") -> dict[str, PromptTemplate]:
    """The two judge prompts by metric, packaged names or .txt paths (format: `prompts.read_template`).

    Raises:
        PhasedIFTError: unknown name, missing file, or a file without the markers or placeholders.
    """
    out = {}
    for metric, name in (("following", following), ("quality", quality)):
        out[metric] = read_template(name, f"evaluation.seqeval_{metric}_template", PACKAGED, PLACEHOLDERS)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Grade items and rows
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GradeItem:
    """One verdict to ask: answer `id`, `metric`, the prompt's depth `iteration`, the template name, the messages."""

    id: str
    metric: str
    iteration: int | None
    template: str
    messages: list = field(hash=False, compare=False)

    @property
    def key(self) -> tuple[str, str]:
        """(id, metric): the key of its grade row."""
        return (self.id, self.metric)


def grade_items(rows: Sequence[dict], depths: dict[str, int | None],
                prompts: dict[str, PromptTemplate]) -> list[GradeItem]:
    """Both verdicts (following, then quality) of every answer of one checkpoint, in answer order.

    Args:
        rows: generation rows of seqeval.jsonl (`generate`: "id", "instruction", "output").
        depths: answer id -> iteration depth (the test set's meta["iteration"]).
    Raises:
        PhasedIFTError: an answer whose id is not a SeqEval prompt (names the id and the fix).
    """
    items = []
    for r in rows:
        rid = str(r["id"])
        if rid not in depths:
            raise PhasedIFTError(f"SeqEval answer {rid!r} is not a prompt of the seqeval test set; delete the seqeval "
                                 "generations of this checkpoint and run `phased-ift generate` again.")
        for metric in METRICS:
            p = prompts[metric]
            msgs = p.render({"{instruction}": r["instruction"], "{answer}": r["output"]})
            items.append(GradeItem(rid, metric, depths[rid], p.name, msgs))
    return items


def make_grade_row(item: GradeItem, result: Any, judge: str) -> dict[str, Any]:
    """The grade row of one verdict from its `LLMResult`; see the module docstring."""
    head = {"id": item.id, "metric": item.metric, "iteration": item.iteration, "template": item.template}
    return grading.grade_row(head, result, judge, PARSERS[item.metric])


# ---------------------------------------------------------------------------------------------------------------
# The grader (its benchmark is registered in evals.BENCHMARKS)
# ---------------------------------------------------------------------------------------------------------------


def depths() -> dict[str, int | None]:
    """SeqEval prompt id -> iteration depth (1-4), from the test set."""
    return {str(e.id): e.meta.get("iteration") for e in load_test_set(TESTSET)}


def _prepare(cfg: Config) -> tuple[dict[str, PromptTemplate], dict[str, int | None]]:
    ev = cfg.evaluation
    return load_prompts(ev.seqeval_following_template, ev.seqeval_quality_template), depths()


def _cell_items(cfg: Config, run: RunDir, cell: Any, prepared: tuple, dry_run: bool) -> tuple[list[GradeItem], int]:
    """(the grade items of one checkpoint's seqeval answers, 1 when they are not generated yet in a dry run)."""
    path = run.generations(cell.arm, cell.phase, TESTSET, cell.seed)
    if dry_run and not settings_path(path).is_file():
        return [], 1
    prompts, depth = prepared
    return grade_items(read_generations(path), depth, prompts), 0


def _describe(rows: list[dict], items: list[GradeItem]) -> str:
    s = summarize_seqeval(rows, n_boot=100, expected=[it.key for it in items])
    fr, q = s["following"], s["quality"]
    return (f"following rate {_fmt(fr['mean'], 3)} ({fr['n']} verdicts), quality {_fmt(q['mean'], 2)} ({q['n']}), "
            f"{s['unparsed']} unparsed")


def _fmt(x: float | None, digits: int) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


GRADER = grading.Grader(testset=TESTSET, label="SeqEval", part="metric", prepare=_prepare, cell_items=_cell_items,
                        make_row=make_grade_row, describe=_describe,
                        requests=lambda prompts: len(METRICS) * len(prompts))


def grade_all(cfg: Config, run: RunDir, dry_run: bool = False, console: Any = None) -> None:
    """Grade every `design.evaluation_cells` checkpoint's SeqEval answers on both metrics
    -> grades/<arm>/seed_<s>/phase_<k>/seqeval.jsonl (`grading.grade_all` with `GRADER`; the evaluate step runs it
    through `evals.BENCHMARKS`). Nothing to do unless "seqeval" is in generate.test_sets; no judge endpoint: logs how
    to set one. dry_run prints the estimate and sends nothing.

    Raises:
        PhasedIFTError: a bad template; missing generations (not in dry_run); a grade file of another judge.
    """
    grading.grade_all(GRADER, cfg, run, dry_run, console)


# ---------------------------------------------------------------------------------------------------------------
# Aggregation (pure) and the report's reader
# ---------------------------------------------------------------------------------------------------------------


def per_prompt_values(rows: Iterable[dict], metric: str) -> dict[str, float]:
    """Answer id -> its parsed verdict of `metric` (following 1/0, quality 1-5); the last row of an (id, metric)
    counts, unparsed and failed ones are left out."""
    return {k[0]: float(r["rating"]) for k, r in grading.latest_rows(rows, "metric").items()
            if k[1] == metric and r.get("rating") is not None and not r.get("failed")}


def summarize_seqeval(rows: Iterable[dict], n_boot: int = 2000, confidence: float = 0.95, seed: int = 0,
                      expected: Iterable[tuple[str, str]] | None = None) -> dict[str, Any]:
    """SeqEval numbers of one checkpoint from its grade rows (the last row of each (id, metric) counts).

    The following rate is the mean of the 1/0 verdicts and quality the mean rating, over parsed verdicts only
    (unparsed and failed ones are counted, never scored), each with a percentile bootstrap CI over prompts
    (`stats.mean_with_ci`), overall and per iteration depth.

    Args:
        expected: the (id, metric) pairs that should have a verdict (from the answer file); those without any row
            are `missing`. None: missing is 0.
    Returns:
        {"n_prompts" (answers with a row), "graded", "unparsed", "failed", "missing" (counts of verdicts),
         "following", "quality": {"n", "mean", "ci": [lo, hi] | None, "unparsed", "failed", "missing"},
         "by_depth": [{"iteration", "n_prompts", "following": {"n", "mean", "ci"}, "quality": {...}}] (by depth),
         "judges": [judge model names]}; means and CIs are None when nothing is parsed.
    """
    rows = list(rows)
    latest = grading.latest_rows(rows, "metric")
    lost = set(expected or ()) - set(latest)
    kinds = {k: "failed" if r.get("failed") else "unparsed" if r.get("rating") is None else "graded"
             for k, r in latest.items()}
    out: dict[str, Any] = {"n_prompts": len({k[0] for k in latest})}
    out.update({n: sum(v == n for v in kinds.values()) for n in ("graded", "unparsed", "failed")})
    out["missing"] = len(lost)
    values = {m: per_prompt_values(rows, m) for m in METRICS}
    for m in METRICS:
        out[m] = {**mean_with_ci(list(values[m].values()), n_boot, confidence, seed),
                  **{n: sum(v == n and k[1] == m for k, v in kinds.items()) for n in ("unparsed", "failed")},
                  "missing": sum(k[1] == m for k in lost)}
    depth_of = {k[0]: r.get("iteration") for k, r in latest.items()}
    out["by_depth"] = []
    for d in sorted({x for x in depth_of.values() if x is not None}):
        ids = {i for i, x in depth_of.items() if x == d}
        out["by_depth"].append({"iteration": d, "n_prompts": len(ids), **{
            m: mean_with_ci([v for i, v in values[m].items() if i in ids], n_boot, confidence, seed)
            for m in METRICS}})
    out["judges"] = sorted({str(r.get("judge")) for r in latest.values()})
    return out


def read_seqeval(run: RunDir, cfg: Config) -> list[dict[str, Any]]:
    """The SeqEval summaries of every grades/<arm>/seed_<s>/phase_<k>/seqeval.jsonl on disk, in
    `RunDir.grade_files` order: [{"arm", "seed", "phase", **summarize_seqeval(...)}].

    Bootstrap settings from `cfg.report`. `missing` counts the verdicts of the checkpoint's seqeval answers
    (generations file) that have no grade row (0 when that file is gone).

    Raises:
        JsonlDecodeError: a line other than the last of a file is not JSON.
    """
    r = cfg.report
    out = []
    for loc in run.grade_files():
        if loc.testset != TESTSET:
            continue
        g = run.generations(loc.arm, loc.phase, TESTSET, loc.seed)
        answers = read_jsonl(g, tolerate_torn_tail=True) if g.is_file() else []
        expected = [(str(a["id"]), m) for a in answers for m in METRICS]
        rows = read_jsonl(loc.path, tolerate_torn_tail=True)
        out.append({"arm": loc.arm, "seed": loc.seed, "phase": loc.phase,
                    **summarize_seqeval(rows, r.bootstrap, r.confidence, r.seed, expected)})
    return out


# ---------------------------------------------------------------------------------------------------------------
# The benchmark: summary, report section, verdict lines, the answer's per-prompt values
# ---------------------------------------------------------------------------------------------------------------


def summarize(run: RunDir, cfg: Config) -> dict[str, list[dict]]:
    """{"seqeval": one entry per graded checkpoint (`read_seqeval`: following rate and quality with CIs, overall and
    by iteration depth, counts) plus "final" (the arm's last phase)}."""
    return {"seqeval": mark_final(read_seqeval(run, cfg), cfg, run)}


def _missing(cfg: Config) -> str:
    asked = TESTSET in cfg.generate.test_sets
    return ("No SeqEval grades (grades/*/seed_*/phase_*/seqeval.jsonl): "
            + ("the SeqEval answers are generated (see Answer lengths); " if asked
               else "add seqeval to generate.test_sets, ")
            + "configure judge (an OpenAI-compatible endpoint) and run `phased-ift evaluate CONFIG` to grade "
            "their following rate and quality.")


def _blocks(s: dict, plots: dict[str, str], cl: str) -> list[tuple]:
    """SeqEval: following rate and quality per checkpoint with CIs and counts, and both by iteration depth."""
    rows = s["seqeval"]
    B: list[tuple] = []
    B.append(("p", "Following rate: the share of answers that attempt every task of the sequential instruction (a "
                   "[[YES]]/[[NO]] verdict per answer); quality: a 1-5 rating per answer (Hu et al. 2024, SeqEval). "
                   "The paper's judge prompts are not published; phased-ift's templates are written from its "
                   f"definitions. Unparsed and failed verdicts are counted, never scored. {cl}: bootstrap over "
                   "prompts. Depth = the number of Seq-Instruct rewrite rounds of the prompt (1-4)."))
    m = lambda x: f"{fmt_num(x['mean'])} {fmt_ci(x['ci'])}"  # noqa: E731
    B.append(table(["arm", "seed", "phase", "answers", f"following rate [{cl}]", f"quality [{cl}]", "unparsed",
                     "failed", "missing"],
                    [[r["arm"], r["seed"], r["phase"], r["n_prompts"], m(r["following"]), m(r["quality"]),
                      r["unparsed"], r["failed"], r["missing"]] for r in rows]))
    depths = sorted({d["iteration"] for r in rows for d in r["by_depth"]})
    if depths:
        B.append(("p", f"By iteration depth: following rate / quality [{cl}] (n = answers with a parsed verdict)."))
        cell = lambda d, k: (f"{m(d[k])} (n {d[k]['n']})" if d else "")  # noqa: E731
        B.append(table(["arm", "seed", "phase", "metric"] + [f"depth {d}" for d in depths],
                        [[r["arm"], r["seed"], r["phase"], k] + [cell(next((x for x in r["by_depth"]
                                                                          if x["iteration"] == d), None), k)
                                                              for d in depths]
                         for r in rows for k in ("following", "quality")]))
    return B


def _verdicts(summary: dict, rank: Any = None) -> list[str]:
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


def per_prompt(metric: str) -> Callable[[RunDir, Config, list[dict]], PerPrompt]:
    """The reader of one metric's values for the answer: {(arm, seed): {(id,): verdict or rating}} of the final
    checkpoints' grade files (unparsed and failed verdicts are missing)."""
    def read(run: RunDir, cfg: Config, judgements: list[dict]) -> PerPrompt:
        out: PerPrompt = {}
        for g in run.grade_files():
            if g.testset == TESTSET and is_final(cfg, run, g.arm, g.phase):
                rows = read_jsonl(g.path, tolerate_torn_tail=True)
                out[(g.arm, g.seed)] = {(i,): v for i, v in per_prompt_values(rows, metric).items()}
        return out
    return read


BENCHMARK = grading.graded_benchmark(
    GRADER, BENCHMARKS[TESTSET], summarize=summarize, missing=_missing, blocks=_blocks,
    heading="Sequential instructions: SeqEval (single-answer LLM judge)", verdicts=_verdicts,
    effects=(EffectMetric("SeqEval following rate", per_prompt("following")),
             EffectMetric("SeqEval quality (1-5)", per_prompt("quality"))))
