"""MT-Bench single-answer grading: each answer of each arm gets a 1-10 rating from an LLM judge, per turn.

    phased-ift evaluate CONFIG generate.test_sets=[mt_bench] judge.base_url=... judge.model=gpt-4-0613

Source: Zheng et al. 2023, "Judging LLM-as-a-Judge with MT-Bench and Chatbot Arena" (NeurIPS Datasets and
Benchmarks), and its code, FastChat's llm_judge (lm-sys/FastChat, `fastchat/llm_judge/common.py`,
`gen_judgment.py --mode single`, `show_result.py`). The rules below are FastChat's:

  * Templates from `<data home>/fastchat/judge_prompts.jsonl` (`load_judge_prompts`): `single-v1` grades turn 1,
    `single-v1-multi-turn` turn 2 (the whole conversation, judged on the second answer). Questions of the
    categories `NEED_REF_CATS` (math, reasoning, coding, arena-hard-200) use `single-math-v1` /
    `single-math-v1-multi-turn` with GPT-4's reference answer
    (`<data home>/fastchat/mt_bench/reference_answer/gpt-4.jsonl`, `choices[0].turns`).
  * Messages: [system = the template's system_prompt, user = its prompt_template filled with `str.format`];
    temperature 0, max_tokens `judge.grade_max_tokens` (2048), on the pairwise judge's endpoint `judge`.
  * Rating: the first `[[x]]` in the reply, else the first `[x]` (`parse_rating`); no match is *unparsed*
    (FastChat's -1): counted apart, never turned into a score. Means are over the parsed ratings, per turn and
    over both turns' rows together (show_result's "Average").

Rows go to `grades/<arm>/seed_<s>/phase_<k>/mt_bench.jsonl` (`RunDir.grades`), one per (question id, turn):

    {"id", "turn": 1|2, "category", "template", "rating": float|null, "reply": str|null, "judge": model name,
     "unparsed": bool, "failed": bool, "error": str|null}

A request that failed after the client's retries is written with `failed: true` (no rating) and is asked again
by the next run; the last row of an (id, turn) counts. Every request also goes through the LLM cache. The grade
file, its resume and the step's loop are `evals.grading`'s, shared with SeqEval's grader.

Owns: the MT-Bench judge prompts and reference answers, the grading prompts, grade rows, the grader `GRADER`
(`grade_file` and `grade_all` are its entry points), the aggregation (`summarize_grades`, `read_grades`,
`mt_bench_table`) and its benchmark `BENCHMARK` (`evals.Benchmark`: summary entries, report section, verdict lines).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from phased_ift.evals import grading
from phased_ift.blocks import fmt_ci, fmt_num, table
from phased_ift.config import Config
from phased_ift.config_choices import BENCHMARKS
from phased_ift.data import data_home, load_test_set
from phased_ift.errors import PhasedIFTError
from phased_ift.evals.benchmark import mark_final
from phased_ift.generation import read_generations, settings_path, turn_key
from phased_ift.evals.grading import parse_rating, requests_of  # noqa: F401  (FastChat's parser: API)
from phased_ift.prompts import PromptTemplate
from phased_ift.rundir import RunDir
from phased_ift.runio import read_jsonl
from phased_ift.stats import mean_with_ci, ratio_with_ci

TESTSET = "mt_bench"
TURNS = (1, 2)
NEED_REF_CATS = ("math", "reasoning", "coding", "arena-hard-200")  # FastChat common.NEED_REF_CATS
PROMPTS_FILE = "fastchat/judge_prompts.jsonl"
REFERENCE_FILE = "fastchat/mt_bench/reference_answer/gpt-4.jsonl"
TEMPLATE_NAMES = {(False, 1): "single-v1", (True, 1): "single-math-v1",
                  (False, 2): "single-v1-multi-turn", (True, 2): "single-math-v1-multi-turn"}


# ---------------------------------------------------------------------------------------------------------------
# Judge prompts, reference answers, grading messages, the rating parser
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GradeTemplate(PromptTemplate):
    """One single-answer judge prompt of FastChat's judge_prompts.jsonl (a `prompts.PromptTemplate` read from
    FastChat's file, not the .txt template format): `system` (system_prompt), `user` (prompt_template, with
    FastChat's `str.format` placeholders, so `messages` formats it as FastChat does and always sends the system
    message), `output_format` ("[[rating]]")."""

    output_format: str = "[[rating]]"

    def messages(self, **fields: str) -> list[dict]:
        """[system, user] chat messages; `fields` fill the placeholders (values are inserted once, never
        re-scanned, so braces in answers are safe).

        Raises:
            PhasedIFTError: the template has a placeholder that `fields` lacks.
        """
        try:
            user = self.user.format(**fields)
        except (KeyError, IndexError) as e:
            raise PhasedIFTError(f"judge prompt {self.name!r} has a placeholder {e} that grading does not fill; "
                                 f"restore {PROMPTS_FILE} from FastChat (fastchat/llm_judge/data).") from None
        return [{"role": "system", "content": self.system}, {"role": "user", "content": user}]


def _data_path(relative: str) -> Path:
    return data_home() / relative


def load_judge_prompts(path: str | Path | None = None) -> dict[str, GradeTemplate]:
    """The four single-answer templates of FastChat's judge_prompts.jsonl, by name (`TEMPLATE_NAMES`).

    Args:
        path: default `<data home>/fastchat/judge_prompts.jsonl`.
    Raises:
        PhasedIFTError: the file is missing, or lacks one of the four templates (names file and fix).
    """
    path = Path(path) if path is not None else _data_path(PROMPTS_FILE)
    fix = (f"copy fastchat/llm_judge/data/judge_prompts.jsonl of lm-sys/FastChat to {path} (see "
           "fastchat/PROVENANCE.md in the data home), or set PHASED_IFT_DATA_HOME to the folder that holds it")
    if not path.is_file():
        raise PhasedIFTError(f"MT-Bench grading needs the judge prompts {path}, which is missing; {fix}.")
    found = {r["name"]: r for r in read_jsonl(path) if isinstance(r, dict) and "name" in r}
    missing = [n for n in TEMPLATE_NAMES.values() if n not in found]
    if missing:
        raise PhasedIFTError(f"{path} lacks the judge prompts {missing}; {fix}.")
    return {n: GradeTemplate(n, found[n]["system_prompt"], found[n]["prompt_template"],
                             found[n].get("output_format", "[[rating]]")) for n in TEMPLATE_NAMES.values()}


@dataclass(frozen=True)
class References:
    """GPT-4's MT-Bench reference answers: question id -> [turn 1 answer, turn 2 answer]. `answers` is empty
    when `path` does not exist; the error comes when a question needs one (`turns`)."""

    path: Path
    answers: dict[str, list[str]] = field(default_factory=dict)

    def turns(self, qid: str, category: str) -> list[str]:
        """The reference answers of question `qid`.

        Raises:
            PhasedIFTError: the file is missing or has no answer for `qid` (names file and fix).
        """
        if qid in self.answers:
            return self.answers[qid]
        what = "is missing" if not self.path.is_file() else f"has no answer for question {qid}"
        raise PhasedIFTError(
            f"MT-Bench question {qid} ({category}) is graded against GPT-4's reference answer, but {self.path} "
            f"{what}; copy fastchat/llm_judge/data/mt_bench/reference_answer/gpt-4.jsonl of lm-sys/FastChat "
            "there (see fastchat/PROVENANCE.md in the data home).")


def load_references(path: str | Path | None = None) -> References:
    """GPT-4's reference answers (`References`); a missing file gives an empty set (errors come per question).

    Args:
        path: default `<data home>/fastchat/mt_bench/reference_answer/gpt-4.jsonl`.
    """
    path = Path(path) if path is not None else _data_path(REFERENCE_FILE)
    if not path.is_file():
        return References(path)
    return References(path, {str(r["question_id"]): list(r["choices"][0]["turns"]) for r in read_jsonl(path)})


def template_name(category: str, turn: int) -> str:
    """FastChat's choice of judge prompt for a question's category and turn (1 or 2)."""
    return TEMPLATE_NAMES[(category in NEED_REF_CATS, turn)]


def grade_messages(template: GradeTemplate, questions: Sequence[str], answers: Sequence[str],
                   references: Sequence[str] | None = None) -> list[dict]:
    """The messages that grade the last of `answers` (turn = len(answers)), filled as FastChat's
    `run_judge_single`: turn 1 {question, answer}, turn 2 {question_1, question_2, answer_1, answer_2}, plus
    ref_answer_1 (and ref_answer_2 for turn 2) from `references`."""
    turn = len(answers)
    refs = {f"ref_answer_{i + 1}": references[i] for i in range(turn)} if references is not None else {}
    if turn == 1:
        return template.messages(question=questions[0], answer=answers[0], **refs)
    return template.messages(question_1=questions[0], question_2=questions[1], answer_1=answers[0],
                             answer_2=answers[1], **refs)


# ---------------------------------------------------------------------------------------------------------------
# Grading one checkpoint's answers
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GradeItem:
    """One answer to grade: question `id`, `turn`, its `category`, the template name and the request messages."""

    id: str
    turn: int
    category: str
    template: str
    messages: list = field(hash=False, compare=False)

    @property
    def key(self) -> tuple[str, int]:
        """(id, turn): the key of its grade row (`grading.grade_file`)."""
        return (self.id, self.turn)


def grade_items(turn1_rows: Sequence[dict], turn2_rows: Sequence[dict], categories: dict[str, str],
                prompts: dict[str, GradeTemplate], references: References) -> list[GradeItem]:
    """What to grade for one checkpoint: every turn-1 answer, then every turn-2 answer (asked after the model's
    own turn-1 answer), with FastChat's template and, for `NEED_REF_CATS`, the reference answers.

    Args:
        turn1_rows, turn2_rows: generation rows of mt_bench.jsonl / mt_bench_turn2.jsonl (`generate`); turn 1's
            question is `instruction`, turn 2's `question`. turn2_rows may be empty (turn 1 only).
        categories: question id -> category (the test set's meta["category"]).
    Raises:
        PhasedIFTError: an id without a category, a turn-2 row without its turn-1 answer, a missing reference.
    """
    first = {str(r["id"]): r for r in turn1_rows}
    items = []
    for turn, rows in ((1, turn1_rows), (2, turn2_rows)):
        for r in rows:
            qid = str(r["id"])
            if qid not in categories:
                raise PhasedIFTError(f"MT-Bench answer {qid!r} (turn {turn}) is not a question of the mt_bench test "
                                     "set; regenerate the answers with `phased-ift generate`.")
            if qid not in first:
                raise PhasedIFTError(f"MT-Bench question {qid}: a turn-2 answer without a turn-1 answer; delete the "
                                     "mt_bench generations of this checkpoint and run `phased-ift generate` again.")
            cat, name = categories[qid], template_name(categories[qid], turn)
            refs = references.turns(qid, cat) if cat in NEED_REF_CATS else None
            questions = [first[qid]["instruction"]] + ([r["question"]] if turn == 2 else [])
            answers = [first[qid]["output"]] + ([r["output"]] if turn == 2 else [])
            items.append(GradeItem(qid, turn, cat, name, grade_messages(prompts[name], questions, answers, refs)))
    return items


def make_grade_row(item: GradeItem, result: Any, judge: str) -> dict[str, Any]:
    """The grade row of one answer from its `LLMResult` (`ok`, `text`, `error`); see the module docstring."""
    head = {"id": item.id, "turn": item.turn, "category": item.category, "template": item.template}
    return grading.grade_row(head, result, judge, parse_rating)


def latest_rows(rows: Iterable[dict]) -> dict[tuple[str, int], dict]:
    """The last row of each (id, turn), in order of first appearance (a retry supersedes a failed row)."""
    return {(k[0], int(k[1])): r for k, r in grading.latest_rows(rows, "turn").items()}


def grade_file(client: Any, items: Sequence[GradeItem], out_path: str | Path, judge: str,
               max_tokens: int = 2048, desc: str = "grade mt_bench") -> dict[str, Any]:
    """Grade `items`, appending one row per (id, turn) to `out_path` as each reply arrives (resumable):
    `grading.grade_file` with MT-Bench's rows.

    (id, turn) pairs with a row that is not `failed` are skipped; failed ones are asked again.

    Args:
        client: an `llm_client.LLMClient` (anything with `iter_chat(requests, desc)` yielding results in order).
        judge: the judge model's name, stored in each row.
    Returns:
        {"path", "graded" (new rows with a rating), "unparsed", "failed" (new rows of each), "skipped_done"}.
    Raises:
        PhasedIFTError: the file holds grades of another judge model (they would be mixed).
    """
    return grading.grade_file(client, items, out_path, judge, make_grade_row, "turn", max_tokens, desc)


# ---------------------------------------------------------------------------------------------------------------
# The grading step (the evaluate step runs it through evals.BENCHMARKS when mt_bench is a test set)
# ---------------------------------------------------------------------------------------------------------------


def _prepare(cfg: Config) -> tuple[dict[str, GradeTemplate], References, dict[str, str]]:
    """(the judge prompts, the reference answers, question id -> category), loaded once per step."""
    prompts, refs = load_judge_prompts(), load_references()
    return prompts, refs, {str(e.id): str(e.meta.get("category", "")) for e in load_test_set(TESTSET)}


def _cell_items(cfg: Config, run: RunDir, cell: Any, prepared: tuple, dry_run: bool) -> tuple[list[GradeItem], int]:
    """(both turns' grade items of one checkpoint, answer files not generated yet: counted in a dry run only; a
    missing turn-2 file grades turn 1 alone there)."""
    prompts, refs, cats = prepared
    g1, g2 = (run.generations(cell.arm, cell.phase, turn_key(TESTSET, t), cell.seed) for t in TURNS)
    if dry_run and not settings_path(g1).is_file():
        return [], 2
    rows2 = read_generations(g2) if not dry_run or settings_path(g2).is_file() else []
    return grade_items(read_generations(g1), rows2, cats, prompts, refs), int(dry_run and not rows2)


def _describe(rows: list[dict], items: list[GradeItem]) -> str:
    """The numbers of one checkpoint's log line: graded (means per turn and overall), unparsed."""
    s = summarize_grades(rows, n_boot=100, expected=[it.key for it in items])
    means = ", ".join(f"turn {t} {_fmt(s[f'turn_{t}']['mean'])}" for t in TURNS)
    return f"{s['graded']} graded ({means}, overall {_fmt(s['overall']['mean'])}), {s['unparsed']} unparsed"


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


GRADER = grading.Grader(testset=TESTSET, label="MT-Bench", part="turn", prepare=_prepare, cell_items=_cell_items,
                        make_row=make_grade_row, describe=_describe,
                        requests=lambda qs: len(qs) + sum(len(q.meta.get("later_turns") or ()) for q in qs))


def grade_all(cfg: Config, run: RunDir, dry_run: bool = False, console: Any = None) -> None:
    """Grade both turns of every `design.evaluation_cells` checkpoint's MT-Bench answers
    -> grades/<arm>/seed_<s>/phase_<k>/mt_bench.jsonl (`grading.grade_all` with `GRADER`; the evaluate step runs
    it through `evals.BENCHMARKS`).

    Nothing to do unless "mt_bench" is in generate.test_sets. No judge endpoint: logs how to set one and returns.
    dry_run prints the distinct request count, cache hits and estimated tokens and sends nothing.

    Raises:
        PhasedIFTError: missing judge prompts or a needed reference answer; missing generations (not in dry_run).
    """
    grading.grade_all(GRADER, cfg, run, dry_run, console)


# ---------------------------------------------------------------------------------------------------------------
# Aggregation (pure) and the report's reader
# ---------------------------------------------------------------------------------------------------------------


def _clustered_mean(pairs: Sequence[tuple[str, float]], n_boot: int, confidence: float, seed: int) -> dict:
    """Mean of ratings pooled over turns, with a bootstrap CI that resamples *questions* (a question's two
    ratings stay together; `stats.ratio_with_ci` of rating sums over rating counts per question):
    {"n" (ratings), "n_questions", "mean", "ci": [lo, hi] | None}."""
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for q, rating in pairs:
        sums[q], counts[q] = sums.get(q, 0.0) + rating, counts.get(q, 0) + 1
    qids = sorted(sums)
    r = ratio_with_ci([sums[q] for q in qids], [counts[q] for q in qids], n_boot, confidence, seed)
    return {"n": len(pairs), "n_questions": len(qids), "mean": r["value"], "ci": r["ci"]}


def summarize_grades(rows: Iterable[dict], n_boot: int = 2000, confidence: float = 0.95, seed: int = 0,
                     expected: Iterable[tuple[str, int]] | None = None) -> dict[str, Any]:
    """MT-Bench scores of one checkpoint from its grade rows (the last row of each (id, turn) counts).

    Means are over parsed ratings only (unparsed and failed rows are counted, never scored), as FastChat's
    show_result: per turn, and overall = the mean of all parsed rows of both turns. CIs are percentile bootstraps
    (`stats`): per turn over questions (`mean_with_ci`); overall and per category over questions, each question's
    ratings of both turns kept together (`bootstrap_ci`).

    Args:
        expected: the (id, turn) pairs that should have a grade (e.g. from the answer files); those without any
            row are `missing`. None: missing is 0.
    Returns:
        {"graded", "unparsed", "failed", "missing" (counts of (id, turn) pairs),
         "turn_1", "turn_2": {"n", "mean", "ci": [lo, hi] | None, "unparsed", "failed", "missing"},
         "overall": {"n", "n_questions", "mean", "ci"},
         "categories": {category: {"n", "n_questions", "mean", "ci"}} (sorted by name),
         "judges": [judge model names in the rows]}; means and CIs are None when nothing is graded.
    """
    latest = latest_rows(rows)
    lost = set(expected or ()) - set(latest)
    kinds = {k: "failed" if r.get("failed") else "unparsed" if r.get("rating") is None else "graded"
             for k, r in latest.items()}
    rated = [(k, float(r["rating"])) for k, r in latest.items() if kinds[k] == "graded"]
    out: dict[str, Any] = {n: sum(v == n for v in kinds.values()) for n in ("graded", "unparsed", "failed")}
    out["missing"] = len(lost)
    for t in TURNS:
        out[f"turn_{t}"] = {**mean_with_ci([x for (_, turn), x in rated if turn == t], n_boot, confidence, seed),
                            "unparsed": sum(v == "unparsed" and k[1] == t for k, v in kinds.items()),
                            "failed": sum(v == "failed" and k[1] == t for k, v in kinds.items()),
                            "missing": sum(k[1] == t for k in lost)}
    out["overall"] = _clustered_mean([(q, x) for (q, _), x in rated], n_boot, confidence, seed)
    cats = sorted({str(latest[k].get("category")) for k, _ in rated})
    out["categories"] = {c: _clustered_mean([(q, x) for (q, t), x in rated if latest[(q, t)].get("category") == c],
                                            n_boot, confidence, seed) for c in cats}
    out["judges"] = sorted({str(r.get("judge")) for r in latest.values()})
    return out


def read_grades(run: RunDir, cfg: Config) -> dict[str, dict[int, dict[int, dict[str, Any]]]]:
    """The MT-Bench summaries of every grades/<arm>/seed_<s>/phase_<k>/mt_bench.jsonl on disk.

    Bootstrap settings from `cfg.report` (bootstrap, confidence, seed). `missing` counts the answers of the
    checkpoint's mt_bench / mt_bench_turn2 generation files that have no grade row (0 when the files are gone).

    Returns:
        {arm: {seed: {phase: summarize_grades(...)}}} (int seeds and phases; {} when nothing is graded).
    Raises:
        JsonlDecodeError: a line other than the last of a grades file is not JSON.
    """
    r = cfg.report
    out: dict[str, dict[int, dict[int, dict[str, Any]]]] = {}
    for loc in run.grade_files():
        if loc.testset != TESTSET:
            continue
        expected = []
        for t in TURNS:
            g = run.generations(loc.arm, loc.phase, turn_key(TESTSET, t), loc.seed)
            if g.is_file():
                expected += [(str(x["id"]), t) for x in read_jsonl(g, tolerate_torn_tail=True)]
        rows = read_jsonl(loc.path, tolerate_torn_tail=True)
        out.setdefault(loc.arm, {}).setdefault(loc.seed, {})[loc.phase] = summarize_grades(
            rows, r.bootstrap, r.confidence, r.seed, expected)
    return out


def mt_bench_table(part: dict[str, dict[int, dict[int, dict[str, Any]]]]) -> list[dict[str, Any]]:
    """Rows of a table of `read_grades`'s result, one per (arm, seed, phase) in its order:
    {"arm", "seed", "phase", "turn_1", "turn_1_ci", "turn_2", "turn_2_ci", "overall", "overall_ci", "graded",
    "unparsed", "failed", "missing", "categories": {category: mean}} (means None when nothing is graded)."""
    rows = []
    for arm, seeds in part.items():
        for seed, phases in seeds.items():
            for phase, s in phases.items():
                row: dict[str, Any] = {"arm": arm, "seed": seed, "phase": phase}
                for key in ("turn_1", "turn_2", "overall"):
                    row[key], row[f"{key}_ci"] = s[key]["mean"], s[key]["ci"]
                row.update({k: s[k] for k in ("graded", "unparsed", "failed", "missing")})
                row["categories"] = {c: v["mean"] for c, v in s["categories"].items()}
                rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------------------------
# The benchmark: summary, report section, verdict lines
# ---------------------------------------------------------------------------------------------------------------


def summarize(run: RunDir, cfg: Config) -> dict[str, list[dict]]:
    """{"mt_bench": one row per graded checkpoint (`mt_bench_table`: mean rating per turn and overall with CIs,
    counts, per-category means) plus "final" (the arm's last phase)}."""
    return {"mt_bench": mark_final(mt_bench_table(read_grades(run, cfg)), cfg, run)}


def _blocks(s: dict, plots: dict[str, str], cl: str) -> list[tuple]:
    """MT-Bench: mean single-answer rating per turn and overall with CIs, counts, and the per-category means."""
    rows = s["mt_bench"]
    B: list[tuple] = []
    B.append(("p", "FastChat's single-answer prompts (single-v1; single-math-v1 with GPT-4's reference answer for "
                   "math, reasoning and coding; the multi-turn variants for turn 2), ratings 1-10 parsed as FastChat "
                   f"does. Unparsed and failed grades are counted, never scored. {cl}: bootstrap over questions."))
    ci = lambda r, k: f"{fmt_num(r[k])} {fmt_ci(r[k + '_ci'])}"  # noqa: E731
    B.append(table(["arm", "seed", "phase", f"turn 1 [{cl}]", f"turn 2 [{cl}]", f"overall [{cl}]", "graded",
                     "unparsed", "failed", "missing"],
                    [[r["arm"], r["seed"], r["phase"], ci(r, "turn_1"), ci(r, "turn_2"), ci(r, "overall"), r["graded"],
                      r["unparsed"], r["failed"], r["missing"]] for r in rows]))
    cats = sorted({c for r in rows for c in r["categories"]})
    finals = [r for r in rows if r.get("final")]
    if cats and finals:
        B.append(("p", "Mean rating per category (final checkpoints, both turns)."))
        B.append(table(["category"] + [f"{r['arm']} s{r['seed']}" for r in finals],
                        [[c] + [r["categories"].get(c) for r in finals] for c in cats]))
    return B


def _verdicts(summary: dict, rank: Any = None) -> list[str]:
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


BENCHMARK = grading.graded_benchmark(
    GRADER, BENCHMARKS[TESTSET], summarize=summarize, blocks=_blocks,
    heading="Multi-turn chat: MT-Bench (single-answer grading)", verdicts=_verdicts,
    missing=lambda cfg: ("No MT-Bench grades (grades/*/seed_*/phase_*/mt_bench.jsonl): add mt_bench to "
                         "generate.test_sets, configure judge (an OpenAI-compatible endpoint) and run "
                         "`phased-ift evaluate CONFIG`."))
