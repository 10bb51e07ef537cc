"""Pairwise judging of two arms' answers in both orders, the paper's reconciliation rule, and win rates.

    phased-ift pairwise configs/quickstart.yaml judge.base_url=http://127.0.0.1:8080/v1 judge.model=x

A judge is data: a prompt template (`templates/pairwise.txt`, `templates/reference.txt`, `templates/pair-v2.txt`,
or a path to a .txt file) plus its parser. A template's answer placeholders choose its kind: {answer_1}/{answer_2}
is the paper's kind ("scores": the reply's first line is "s1 s2", `parse_scores`), {answer_a}/{answer_b} is
FastChat's ("verdict": the reply holds "[[A]]", "[[B]]" or "[[C]]", `parse_verdict`; pair-v2, Zheng et al. 2023).
Each prompt is judged twice, once with arm A's answer shown first, as "Assistant 1" / "Assistant A" (order "ab"),
and once with arm B's answer first (order "ba"), because LLM judges favour one position. Both kinds give each order
an outcome from arm A's side (win / tie / loss / unparseable), and the two orders are reconciled with the rule of
the paper's code (xubuvd/PhasedSFT, evaluation/win_tie_loss_stat.py):

    win  = A wins both orders, or wins one and ties one
    tie  = ties both, or wins one and loses one
    loss = the mirror of win
    unparseable = either order's reply does not parse (counted apart, never turned into a result)

Rows go to `judgements/<a>__vs__<b>/seed_<s>/[phase_<k>/]<testset>.jsonl` with both raw replies, so numbers can be
recomputed without paying again; every request also goes through the LLM cache, so a re-run sends nothing.

The verdict names, the reconciliation rule and `aggregate(rows)` (counts, the plain win rate over parsed pairs and
the paper's centred number) are `winrate.py`'s; this module re-exports them.

Owns: judge templates, the score and verdict parsers, judgement rows, judging one test set (`judge_pairs`) and
the pairwise step (`judge_all`: every comparison of `design.judge_jobs` on every test set, or its dry-run estimate).
The step is pairwise only: single-answer grading (MT-Bench, SeqEval) is a benchmark of the evaluate step
(`evals`). Which arms are compared is the design's (`design.judge_jobs`), not this module's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from phased_ift.phases import design  # design.judge_jobs: which arms are compared is the design's
from phased_ift.config import Config
from phased_ift.config_checks import check_judge_test_sets
from phased_ift.config_choices import JUDGE_FREE, testset_key
from phased_ift.data import load_reference_answers, normalize_text
from phased_ift.errors import PhasedIFTError
from phased_ift.generation import read_generations, settings_path
from phased_ift.prompts import PromptTemplate, read_template  # one template class and reader
from phased_ift.llm_client import LLMClient
from phased_ift.rundir import RunDir
from phased_ift.runio import AppendLog
from phased_ift.winrate import VERDICTS, aggregate, order_outcome, reconcile, verdict_outcome  # noqa: F401 (the API)

SCORE_MIN, SCORE_MAX = 1.0, 10.0
# The first non-empty line must hold exactly two numbers, separated by whitespace and/or one comma (the paper's
# parser replaces commas by spaces and splits). A trailing period is tolerated; anything else is not a score line.
_SCORE_LINE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:,\s*|\s+)(\d+(?:\.\d+)?)\s*\.?\s*$")
# Template kinds and their answer placeholders (first shown, second shown).
SCORES, VERDICT = "scores", "verdict"
ANSWER_KEYS = {SCORES: ("{answer_1}", "{answer_2}"), VERDICT: ("{answer_a}", "{answer_b}")}
PACKAGED = "pairwise, reference, pair-v2"
# FastChat's verdict tags (output_format "[[A]]") and the winner each names.
_VERDICT_TAGS = {"[[A]]": "A", "[[B]]": "B", "[[C]]": "tie"}


# ---------------------------------------------------------------------------------------------------------------
# Templates
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JudgeTemplate(PromptTemplate):
    """A pairwise judge prompt (a `prompts.PromptTemplate`): user text with {question} and the answer placeholders
    of its kind (`ANSWER_KEYS`: {answer_1}, {answer_2} for SCORES; {answer_a}, {answer_b} for VERDICT), and
    {reference} for reference templates."""

    kind: str = SCORES

    @property
    def needs_reference(self) -> bool:
        return "{reference}" in self.user

    def messages(self, question: str, answer_1: str, answer_2: str, reference: str | None = None) -> list[dict]:
        """Chat messages for one order (`answer_1` is shown first: Assistant 1 / Assistant A). Placeholders are
        replaced literally, in one pass over the template, so inserted text (a question or answer that contains
        "{answer_2}" or other braces) is never re-scanned."""
        if self.needs_reference and reference is None:
            raise ValueError(f"judge template {self.name!r} needs a reference answer")
        key_1, key_2 = ANSWER_KEYS[self.kind]
        values = {"{question}": question, "{reference}": reference or "", key_1: answer_1, key_2: answer_2}
        return self.render(values)


def load_template(name_or_path: str) -> JudgeTemplate:
    """Load a packaged judge template by name ("pairwise", "reference", "pair-v2") or a .txt file (format:
    `read_template`; the user text must contain {question} and the answer placeholders of one kind).

    The kind follows the answer placeholders: {answer_a} / {answer_b} make a VERDICT template (FastChat's
    "[[A]]" / "[[B]]" / "[[C]]" replies), {answer_1} / {answer_2} a SCORES template (the paper's "s1 s2" line).
    Packaged templates are read from the package, never from the data home.

    Raises:
        PhasedIFTError: unknown name, missing file, a file without the markers/placeholders, or one that mixes
            both kinds' placeholders.
    """
    tpl = read_template(name_or_path, "pairwise.template", PACKAGED, ("{question}",))
    user = tpl.user
    kind = VERDICT if any(k in user for k in ANSWER_KEYS[VERDICT]) else SCORES
    other = ANSWER_KEYS[SCORES if kind == VERDICT else VERDICT]
    for key in ANSWER_KEYS[kind]:
        if key not in user:
            raise PhasedIFTError(f"judge template {name_or_path}: the user prompt lacks the placeholder {key}; "
                                 f"add it where the {key.strip('{}')} should go.")
    if any(k in user for k in other):
        raise PhasedIFTError(f"judge template {name_or_path}: the user prompt mixes {' '.join(ANSWER_KEYS[kind])} "
                             f"with {' '.join(other)}; use {{answer_1}}/{{answer_2}} for a 's1 s2' score reply or "
                             "{answer_a}/{answer_b} for a [[A]]/[[B]]/[[C]] verdict reply, not both.")
    return JudgeTemplate(name=tpl.name, system=tpl.system, user=user, kind=kind)


# ---------------------------------------------------------------------------------------------------------------
# Parsing and judgement rows (pure functions; the reconciliation and aggregation are winrate.py's)
# ---------------------------------------------------------------------------------------------------------------


def parse_scores(reply: str | None) -> list[float] | None:
    """Parse a judge reply's first non-empty line "s1 s2" into [s1, s2].

    Follows the paper's parser (first line, commas read as spaces, exactly two numbers) and additionally requires
    both scores in [1, 10], the scale the prompt asks for.

    Returns:
        [score of Assistant 1, score of Assistant 2], or None when the reply is empty, the first line is not two
        numbers (e.g. "Assistant 1: 8"), or a score is out of range. None is "unparseable", never a made-up score.
    """
    if not reply:
        return None
    line = next((ln for ln in reply.splitlines() if ln.strip()), "")
    m = _SCORE_LINE.match(line)
    if not m:
        return None
    s1, s2 = float(m.group(1)), float(m.group(2))
    if not (SCORE_MIN <= s1 <= SCORE_MAX and SCORE_MIN <= s2 <= SCORE_MAX):
        return None
    return [s1, s2]


def parse_verdict(reply: str | None) -> str | None:
    """Parse a FastChat pair-v2 reply into the winner it names: "A" ("[[A]]"), "B" ("[[B]]") or "tie" ("[[C]]").

    Follows FastChat's `run_judge_pair` (fastchat/llm_judge/common.py, output_format "[[A]]"): the tag may stand
    anywhere in the reply (after the explanation), matched exactly as written (case-sensitive, no inner spaces), and
    a reply without any tag is an error there and None here. One deviation: FastChat checks `"[[A]]" in judgment`,
    then "[[B]]", then "[[C]]", so a reply holding both "[[A]]" and "[[B]]" becomes A. Here a reply that holds more
    than one distinct tag is None (unparseable): it is ambiguous (e.g. a judge that restates the format, or changes
    its mind), and an ambiguous reply must not become a result, least of all one chosen by the order of the checks.
    The same tag repeated is not ambiguous.

    Returns:
        "A", "B", "tie", or None when the reply is empty / None, has no tag (e.g. "[A]"), or has two distinct tags.
    """
    if not reply:
        return None
    found = {winner for tag, winner in _VERDICT_TAGS.items() if tag in reply}
    return found.pop() if len(found) == 1 else None


def word_count(text: str) -> int:
    """Answer length in whitespace-separated words (the unit of len_a/len_b)."""
    return len(text.split())


# ---------------------------------------------------------------------------------------------------------------
# Judging
# ---------------------------------------------------------------------------------------------------------------


def build_requests(template: JudgeTemplate, question: str, answer_a: str, answer_b: str,
                   reference: str | None = None, temperature: float = 0.0, max_tokens: int = 32) -> list[dict]:
    """The two requests of one pair: [order ab (A is Assistant 1), order ba (B is Assistant 1)]."""
    return [
        {"messages": template.messages(question, answer_a, answer_b, reference), "temperature": temperature,
         "max_tokens": max_tokens},
        {"messages": template.messages(question, answer_b, answer_a, reference), "temperature": temperature,
         "max_tokens": max_tokens},
    ]


def make_row(item_id: str, testset: str, arm_a: str, arm_b: str, answer_a: str, answer_b: str,
             reply_ab: str | None, reply_ba: str | None, kind: str = SCORES) -> dict[str, Any]:
    """One judgement row (docs/architecture.md format) from the raw replies of both orders.

    kind SCORES: ab scores are [s_a, s_b]; ba scores are [s_b, s_a] (Assistant 1 is arm B there). kind VERDICT:
    each order records the winner as the judge named it ("A" / "B" / "tie" / None); in order ba "A" is arm B.
    """
    key, parse = ("winner", parse_verdict) if kind == VERDICT else ("scores", parse_scores)
    ab, ba = {"raw": reply_ab, key: parse(reply_ab)}, {"raw": reply_ba, key: parse(reply_ba)}
    row = {"id": item_id, "testset": testset, "arm_a": arm_a, "arm_b": arm_b, "ab": ab, "ba": ba}
    return {**row, "verdict": reconcile(*order_outcomes(row)), "len_a": word_count(answer_a),
            "len_b": word_count(answer_b)}


def order_outcomes(row: dict[str, Any]) -> tuple[str, str]:
    """The outcome of each answer order of a judgement row, from arm A's side (order ab shows arm A first):
    from the parsed scores of a SCORES row or the named winner of a VERDICT row; "unparseable" where missing."""
    ab, ba = row["ab"], row["ba"]
    if "winner" in ab:
        return verdict_outcome(ab["winner"], "A"), verdict_outcome(ba["winner"], "B")
    s_ab, s_ba = ab.get("scores"), ba.get("scores")
    return (order_outcome(*(s_ab or (None, None))), order_outcome(*((s_ba[1], s_ba[0]) if s_ba else (None, None))))


def pair_answers(rows_a: Sequence[dict], rows_b: Sequence[dict], where: str) -> list[tuple[dict, dict]]:
    """Match two arms' generation rows by id (order of arm A).

    Raises:
        PhasedIFTError: the arms answered different prompts (e.g. generated with different limits/seeds).
    """
    by_id = {r["id"]: r for r in rows_b}
    missing = [r["id"] for r in rows_a if r["id"] not in by_id]
    if missing or len(rows_a) != len(rows_b):
        raise PhasedIFTError(
            f"{where}: the two arms' generations cover different prompts ({len(rows_a)} vs {len(rows_b)}; e.g. id "
            f"{missing[:3]} only in the first). Generate both with the same generate.limit/seed, or delete the "
            "stale generations and run `phased-ift generate` again."
        )
    return [(r, by_id[r["id"]]) for r in rows_a]


def judge_pairs(client: Any, rows_a: Sequence[dict], rows_b: Sequence[dict], arm_a: str, arm_b: str,
                out_path: str | Path, template: JudgeTemplate, testset: str,
                references: dict[str, str] | None = None, temperature: float = 0.0, max_tokens: int = 32,
                console: Any = None) -> dict[str, Any]:
    """Judge arm A's answers against arm B's, in both orders, appending one row per prompt to `out_path`.

    Resumable: ids already in `out_path` are skipped, each row is appended as soon as its two answers are in
    (rows survive kill -9), and every request goes through the client's cache, so re-judging a deleted file sends
    nothing. All requests of the test set go through one stream (`LLMClient.iter_chat`): one progress bar, one
    summary line, and no worker waits for a slow request of another prompt.

    Args:
        client: an `llm_client.LLMClient` (anything with `iter_chat(requests, desc)` yielding `LLMResult`s in
            request order).
        rows_a, rows_b: generation rows ({"id", "instruction", "output", ...}) of the two arms on one test set.
        template: a `JudgeTemplate` (its kind picks the reply parser and the row fields, see `make_row`); a
            reference template judges only prompts present in `references`.
        max_tokens: the reply budget; the pairwise step passes `reply_tokens` (a VERDICT reply needs room to explain).
        references: normalised instruction -> reference answer (`data.load_reference_answers`), for reference
            templates.
    Returns:
        {"path", "judged" (new rows), "failed" (prompts whose request failed after retries: no row written, a
        re-run retries them), "skipped_done", "no_reference" (prompts without a reference answer, not judged),
        **aggregate(all rows in the file)}.
    Raises:
        PhasedIFTError: mismatched generations; a reference template without any matching reference.
    """
    out_path = Path(out_path)
    pairs = pair_answers(rows_a, rows_b, where=f"judging {arm_a} vs {arm_b} on {testset}")
    with AppendLog(out_path) as log:  # a torn last line (kill -9) is cut off; ids already judged are known
        done = set(log.done)
        todo, no_ref = _pairs_to_judge(pairs, done, template, references, testset)
        reqs = []
        for ra, rb, ref in todo:  # two per prompt: A first, then B first
            reqs += build_requests(template, ra["instruction"], ra["output"], rb["output"], ref, temperature,
                                   max_tokens)
        stream = client.iter_chat(reqs, desc=f"judge {arm_a} vs {arm_b} / {testset}")  # starts at the first next()
        # which judge and template made each verdict, so rows from different judges are never pooled unawares
        source = {"judge": getattr(getattr(client, "endpoint", None), "model", None), "template": template.name}
        failed = _append_rows(stream, todo, log, testset, arm_a, arm_b, template.kind, source)
        all_rows = log.rows()
    if failed and console is not None:
        console.print(f"judge {arm_a} vs {arm_b} / {testset}: {len(failed)} prompts not judged because a request "
                      f"failed (first: {failed[0]['errors'][0]}); run the command again to retry them.",
                      highlight=False)
    return {"path": str(out_path), "judged": len(todo) - len(failed), "failed": len(failed),
            "skipped_done": len(done), "no_reference": no_ref, **aggregate(all_rows)}


def _pairs_to_judge(pairs: Sequence[tuple[dict, dict]], done: set, template: JudgeTemplate,
                    references: dict[str, str] | None, testset: str) -> tuple[list[tuple[dict, dict, Any]], int]:
    """The (row A, row B, reference or None) not judged yet, and how many prompts lack a needed reference.

    Raises:
        PhasedIFTError: a reference template and none of the prompts has a reference answer.
    """
    todo, no_ref = [], 0
    for ra, rb in pairs:
        if ra["id"] in done:
            continue
        ref = None
        if template.needs_reference:
            ref = _lookup_reference(references or {}, ra["instruction"])
            if ref is None:
                no_ref += 1
                continue
        todo.append((ra, rb, ref))
    if template.needs_reference and no_ref == len(pairs) and pairs:
        raise PhasedIFTError(
            f"judge template {template.name!r} needs reference answers, but none of the {len(pairs)} prompts of "
            f"{testset} has one in the reference set; use pairwise.template=pairwise or a test set from AlpacaEval "
            "(vicuna, oasst, helpful_base, alpaca_eval)."
        )
    return todo, no_ref


def _append_rows(stream: Iterator[Any], todo: Sequence[tuple[dict, dict, Any]], log: AppendLog, testset: str,
                 arm_a: str, arm_b: str, kind: str = SCORES, source: dict | None = None) -> list[dict]:
    """Append one row per prompt of `todo` (with the `source` fields: judge model, template name) as its two
    results (order ab, then ba) arrive from `stream`; returns the prompts whose requests failed,
    [{"id", "errors"}] (no row written for them)."""
    failed: list[dict] = []
    for ra, rb, _ in todo:
        r_ab, r_ba = next(stream), next(stream)
        if not (r_ab.ok and r_ba.ok):
            # A request that failed after the client's retries is not a verdict: no row is written, so the next
            # run asks again (answers that did arrive are cached); the failures are counted and logged.
            failed.append({"id": ra["id"], "errors": [r.error for r in (r_ab, r_ba) if not r.ok]})
            continue
        log.append({**make_row(ra["id"], testset, arm_a, arm_b, ra["output"], rb["output"], r_ab.text, r_ba.text,
                               kind), **(source or {})})
    return failed


def plan_requests(rows_a: Sequence[dict], rows_b: Sequence[dict], template: JudgeTemplate,
                  references: dict[str, str] | None = None, temperature: float = 0.0,
                  max_tokens: int = 32) -> list[dict]:
    """All requests `judge_pairs` would send for one test set (for a dry-run estimate; nothing is sent)."""
    reqs: list[dict] = []
    for ra, rb in pair_answers(rows_a, rows_b, where="dry run"):
        ref = _lookup_reference(references or {}, ra["instruction"]) if template.needs_reference else None
        if template.needs_reference and ref is None:
            continue
        reqs += build_requests(template, ra["instruction"], ra["output"], rb["output"], ref, temperature,
                               max_tokens)
    return reqs


def _lookup_reference(references: dict[str, str], instruction: str) -> str | None:
    return references.get(normalize_text(instruction))


# ---------------------------------------------------------------------------------------------------------------
# The pairwise step: every job of the design, every test set
# ---------------------------------------------------------------------------------------------------------------


def judge_all(cfg: Config, run: RunDir, dry_run: bool = False, console: Any = None) -> None:
    """Judge every `design.judge_jobs` comparison on every `pairwise_test_sets` test set, in both answer orders
    -> judgements/<a>__vs__<b>/seed_<s>/[phase_<k>/]<testset>.jsonl (rows: `make_row`), one log line per file.

    Reads the generations (generations/<arm>/seed_<s>/phase_<k>/<testset>.jsonl) and, for reference templates,
    the reference answers of evaluation.reference. No judge endpoint (judge.base_url/model): logs how to set
    one and returns. dry_run prints the distinct request count, cache hits and estimated tokens and sends
    nothing (test sets not generated yet are counted apart). Ends with sent / cache hits / failures / tokens.

    Args:
        cfg: the resolved `Config`; run: its `RunDir`; console: a rich Console (default: stderr).
    Raises:
        PhasedIFTError: see `judge_pairs` and `design.judge_jobs`; missing generations (not in dry_run).
    """
    from rich.console import Console

    console = console or Console(stderr=True)
    if not cfg.judge.enabled:
        console.print("pairwise: not configured (set judge.base_url and judge.model, e.g. "
                      "judge.base_url=https://api.openai.com/v1 judge.model=gpt-4-0613)", highlight=False)
        return
    template = load_template(cfg.pairwise.template)
    refs = load_reference_answers(cfg.evaluation.reference) if template.needs_reference else None
    client = LLMClient(cfg.judge, run.llm_cache, console=console)
    try:
        if dry_run:
            _plan_all(cfg, run, client, template, refs, console)
        else:
            _judge_files(cfg, run, client, template, refs, console)
            s = client.stats
            console.print(f"pairwise: sent {s['sent']}, cache hits {s['cache_hits']}, failures {s['failures']}, "
                          f"tokens {s['prompt_tokens']} prompt + {s['completion_tokens']} completion", highlight=False)
    finally:
        client.close()


def pairwise_test_sets(cfg: Config) -> list[str]:
    """The test-set keys the pairwise step compares pairwise: pairwise.test_sets, else every generate.test_sets key but
    the judge-free ones (`JUDGE_FREE`: IFEval is verified by program, `evals.ifeval`).

    Raises:
        PhasedIFTError: pairwise.test_sets names a test set that is not generated (checked when the config loaded;
            again for a config changed since: `config_checks.check_judge_test_sets`).
    """
    generated = [testset_key(n) for n in cfg.generate.test_sets]
    if not cfg.pairwise.test_sets:
        return [n for n in generated if n not in JUDGE_FREE]
    check_judge_test_sets(cfg.pairwise.test_sets, cfg.generate.test_sets)
    return list(cfg.pairwise.test_sets)


def reply_tokens(cfg: Config, template: JudgeTemplate) -> int:
    """Max completion tokens of one pairwise judge reply: judge.max_tokens for a SCORES template (only the
    first line is parsed, so the explanation may be cut), judge.grade_max_tokens for a VERDICT template (FastChat's
    judge explains first and gives its verdict last; FastChat asks for 2048 tokens)."""
    return cfg.judge.grade_max_tokens if template.kind == VERDICT else cfg.judge.max_tokens


def _job_files(cfg: Config, run: RunDir) -> list[tuple[Any, str, Path, Path, Path]]:
    """(job, test set, generations of arm A, generations of arm B, judgements out) for every job and pairwise test
    set (`pairwise_test_sets`)."""
    out = []
    for job in design.judge_jobs(cfg, run):
        for name in pairwise_test_sets(cfg):
            out.append((job, name, run.generations(job.arm_a, job.phase_a, name, job.seed),
                        run.generations(job.arm_b, job.phase_b, name, job.seed),
                        run.judgements(job.arm_a, job.arm_b, name, job.seed, job.phase)))
    return out


def _judge_files(cfg: Config, run: RunDir, client: Any, template: JudgeTemplate, refs: dict | None,
                 console: Any) -> None:
    """Judge every (job, test set) and log its counts and win rate."""
    j = cfg.judge
    for job, name, ga, gb, out in _job_files(cfg, run):
        res = judge_pairs(client, read_generations(ga), read_generations(gb), job.arm_a, job.arm_b, out, template,
                          name, references=refs, temperature=j.temperature, max_tokens=reply_tokens(cfg, template),
                          console=console)
        wr = "n/a" if res["win_rate"] is None else f"{res['win_rate']:.3f}"
        console.print(
            f"pairwise: {job.arm_a} vs {job.arm_b} seed {job.seed}"
            f"{'' if job.phase is None else ' phase ' + str(job.phase)} {name}: {res['wins']}W "
            f"{res['ties']}T {res['losses']}L {res['unparseable']} unparseable"
            f"{', ' + str(res['no_reference']) + ' without reference' if res['no_reference'] else ''}"
            f"{', ' + str(res['failed']) + ' FAILED (re-run to retry)' if res['failed'] else ''}, "
            f"win rate {wr} -> {out}", highlight=False)


def _plan_all(cfg: Config, run: RunDir, client: Any, template: JudgeTemplate, refs: dict | None, console: Any) -> None:
    """The dry run: count the requests of every generated (job, test set) and log the estimate."""
    j = cfg.judge
    planned: list[dict] = []
    missing = 0
    for _job, _name, ga, gb, _out in _job_files(cfg, run):
        if settings_path(ga).is_file() and settings_path(gb).is_file():
            planned += plan_requests(read_generations(ga), read_generations(gb), template, refs, j.temperature,
                                     reply_tokens(cfg, template))
        else:
            missing += 1
    est = client.estimate(planned)
    console.print(
        f"pairwise (dry run): {est['requests']} distinct requests, {est['cached']} cached, {est['to_send']} to "
        f"send, ~{est['prompt_tokens']} prompt + <= {est['completion_tokens']} completion tokens"
        f"{f'; {missing} test sets not generated yet (not counted)' if missing else ''}", highlight=False)
