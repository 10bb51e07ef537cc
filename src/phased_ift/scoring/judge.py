"""The `judge` scorer: ask an OpenAI-compatible model (`llm_client.LLMClient`) for a 1-5 difficulty score per
instruction; its requests are cached in <run_dir>/cache/llm.sqlite, and its dry run estimates their cost.

Pang et al. 2024 (Phased IFT, arXiv 2406.04371, Sec. 3.1) had gpt-4-0613 rate each Alpaca instruction from 1 (easy)
to 5 (hard) by the complexity of the task, of its input and of the output it requires. Their prompt is not in the
released code (xubuvd/PhasedSFT), so `templates/difficulty.txt` is written from that description: the same three
criteria, the same scale, an answer that is a single number. A custom template is a .txt file in the format of
`phased_ift.pairwise.judge.load_template` (`<<system>>` text, `<<user>>` text) whose user text contains `{instruction}` (the
first user turn: Alpaca instruction + input) and optionally `{response}` (the example's reference response).

Scores:
  * one sample (default, temperature from the endpoint, 0 in the paper): the parsed number; with
    `use_logprobs` and a server that returns `top_logprobs`, the expected score sum_d d * p(d) over the tokens
    "1".."5" at the position of the answer digit, renormalised over those five tokens (a smooth score, steadier
    than one sampled digit: ties at 3/4 are broken by the judge's own confidence);
  * `samples` > 1: that many requests per instruction (seed = 0..samples-1), score = the mean of the per-sample
    scores. Needs temperature > 0 to differ (a warning says so).
A reply with no parseable 1-5 number never becomes a score: the row keeps the raw text and an error, and is counted.

Run it through the pipeline (`phased-ift score CONFIG scoring.scorer=judge scoring.judge.base_url=...`) or directly:

    from phased_ift.scoring.judge import score_with_judge
    rows = score_with_judge(examples, cfg.scoring.judge, "runs/x/cache/llm.sqlite")
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Iterator, Sequence

from rich.console import Console

from phased_ift.config import Config, EndpointConfig
from phased_ift.data import Example
from phased_ift.errors import PhasedIFTError
from phased_ift.prompts import PromptTemplate, read_template
from phased_ift.llm_client import LLMClient, LLMResult
from phased_ift.scoring.registry import ScoreContext

SCALE = (1, 5)
TOP_LOGPROBS = 5  # the answer digit's top-5 alternatives cover the five scale tokens for a well-behaved judge

# A number not glued to other digits/decimals; "out of 5" and "/5" denominators are removed before matching.
_NUMBER = re.compile(r"(?<![\d.])(\d+(?:\.\d+)?)(?![\d]|\.\d)")
_DENOMINATOR = re.compile(r"(/\s*5(?:\.0)?|out\s+of\s+5(?:\.0)?|\b1\s*(?:-|–|to)\s*5\b)", re.IGNORECASE)


def load_difficulty_template(name_or_path: str = "difficulty") -> PromptTemplate:
    """Load the packaged difficulty template (by name) or a .txt template file.

    Returns:
        a `prompts.PromptTemplate` (its user text contains `{instruction}`, optionally `{response}`).

    Raises:
        PhasedIFTError: unknown name, missing file, missing `<<user>>` marker or `{instruction}` placeholder.
    """
    return read_template(name_or_path, "scoring.template", "difficulty", ("{instruction}",))


def parse_difficulty_reply(text: str | None) -> float | None:
    """The 1-5 score in a judge reply, or None when there is none or it is ambiguous.

    "4", " 4.", "Score: 4", "4/5", "I'd rate it 4 out of 5" -> 4.0; "3.5" -> 3.5; "" / "hard" / "7" /
    "3 or 4" -> None. Scale mentions ("1-5", "out of 5", "/5") are ignored.
    """
    if not text:
        return None
    values = {float(m) for m in _NUMBER.findall(_DENOMINATOR.sub(" ", text))}
    in_scale = {v for v in values if SCALE[0] <= v <= SCALE[1]}
    if len(in_scale) != 1 or len(values) != 1:
        return None
    return in_scale.pop()


def expected_score(logprobs: list | None) -> float | None:
    """Probability-weighted score over the tokens "1".."5" at the answer digit's position.

    Args:
        logprobs: `LLMResult.logprobs` (per generated token, with `top_logprobs`).

    Returns:
        sum_d d * p(d) / sum_d p(d) over d in 1..5 at the first generated token that is a scale digit (tokens
        compared after stripping whitespace, so " 4" and "4" merge), or None when no such position exists or
        no top_logprobs were returned there.
    """
    for tok in logprobs or []:
        if (tok.get("token") or "").strip() not in {"1", "2", "3", "4", "5"}:
            continue
        mass = {d: 0.0 for d in range(SCALE[0], SCALE[1] + 1)}
        for alt in tok.get("top_logprobs") or []:
            t = (alt.get("token") or "").strip()
            if t in {"1", "2", "3", "4", "5"} and alt.get("logprob") is not None:
                mass[int(t)] += math.exp(alt["logprob"])
        total = sum(mass.values())
        if total <= 0:
            return None
        return sum(d * p for d, p in mass.items()) / total
    return None


def build_requests(examples: list[Example], template: str = "difficulty", samples: int = 1,
                   use_logprobs: bool = True) -> list[dict]:
    """The chat requests for `examples`: `samples` per example, example-major (ex0 s0, ex0 s1, ..., ex1 s0, ...).

    With samples > 1 each sample carries `seed` = its index, so the samples are distinct cached requests.
    """
    if samples < 1:
        raise PhasedIFTError(f"scoring.samples must be >= 1, got {samples}.")
    tpl = load_difficulty_template(template)
    reqs = []
    for ex in examples:
        msgs = tpl.render({"{instruction}": ex.instruction, "{response}": ex.response})
        for s in range(samples):
            req: dict = {"messages": msgs}
            if use_logprobs:
                req.update(logprobs=True, top_logprobs=TOP_LOGPROBS)
            if samples > 1:
                req["seed"] = s
            reqs.append(req)
    return reqs


def estimate_judge(examples: list[Example], endpoint: EndpointConfig, cache_path: Path | str,
                   template: str = "difficulty", samples: int = 1, use_logprobs: bool = True) -> dict:
    """The cost of scoring `examples` without sending anything (for `--dry-run` and the pipeline's plan).

    Returns:
        `LLMClient.estimate`: `{"requests", "cached", "to_send", "prompt_tokens", "completion_tokens"}`
        (tokens estimated at ~4 characters per token; completion tokens are the max_tokens upper bound).
    """
    reqs = build_requests(examples, template, samples, use_logprobs)
    client = LLMClient(endpoint, cache_path, console=Console(quiet=True))
    try:
        return client.estimate(reqs)
    finally:
        client.close()


def _row(ex: Example, results: list[LLMResult], use_logprobs: bool) -> dict:
    raw = [r.text for r in results]
    parsed = [parse_difficulty_reply(r.text) if r.ok else None for r in results]
    failed_requests = [r.error for r in results if not r.ok]
    expected = [expected_score(r.logprobs) if (use_logprobs and p is not None) else None
                for r, p in zip(results, parsed)]
    valid = [(p, e) for p, e in zip(parsed, expected) if p is not None]
    samples = [int(p) if float(p).is_integer() else p for p in parsed if p is not None]
    exp_values = [e for _, e in valid if e is not None]
    # The expected score is used only when every valid sample has one, so a score never mixes the two kinds.
    exp_mean = sum(exp_values) / len(exp_values) if valid and len(exp_values) == len(valid) else None
    score = exp_mean if exp_mean is not None else (sum(p for p, _ in valid) / len(valid) if valid else None)
    error = None
    n_bad = len(results) - len(valid)
    if n_bad:
        if failed_requests:
            why = f"request failed: {failed_requests[0]}"
        else:
            first_bad = next(r.text for r, p in zip(results, parsed) if p is None)
            why = f"no single 1-5 number in the reply {first_bad[:80]!r}"
        error = why if not valid else f"{n_bad} of {len(results)} samples unusable ({why}); score from the rest"
    return {"id": ex.id, "score": score, "error": error, "raw": raw, "samples": samples, "expected": exp_mean}


def score_with_judge(examples: list[Example], endpoint: EndpointConfig, cache_path: Path | str,
                     template: str = "difficulty", samples: int = 1, use_logprobs: bool = True,
                     dry_run: bool = False, console: Console | None = None) -> list[dict]:
    """Score instruction difficulty 1-5 with an LLM judge (Pang et al. 2024, Sec. 3.1).

    Args:
        examples: the instructions to score (the first user turn is what the judge sees).
        endpoint: OpenAI-compatible endpoint (base_url, model, api_key_env, concurrency, temperature, ...).
        cache_path: sqlite cache of requests/responses (a re-run sends nothing already answered).
        template: packaged template name or a .txt path (see the module docstring).
        samples: requests per instruction; the score is the mean of their scores.
        use_logprobs: ask for top_logprobs and use the expected score over "1".."5" when the server returns them.
        dry_run: send nothing; print the estimate and return [].
        console: for the progress bar, warnings and summary lines.

    Returns:
        One row per example, in order (scores format of docs/architecture.md): `{"id", "score": float|None,
        "error": str|None, "raw": [reply texts, None for failed requests], "samples": [parsed numbers],
        "expected": float|None}`. score is None exactly when no sample gave a usable number (error says why).

    Raises:
        PhasedIFTError: bad template, no endpoint, 401/403/404 from the server, missing key for a remote server.
    """
    console = console or Console(stderr=True)
    if dry_run:
        est = estimate_judge(examples, endpoint, cache_path, template, samples, use_logprobs)
        console.print(
            f"judge dry run: {len(examples)} examples x {samples} sample(s) = {est['requests']} requests to "
            f"{endpoint.model} at {endpoint.base_url}; {est['cached']} cached, {est['to_send']} to send, "
            f"~{est['prompt_tokens']} prompt tokens + <= {est['completion_tokens']} completion tokens (estimate)"
        )
        return []
    return list(iter_judge_rows(examples, endpoint, cache_path, template, samples, use_logprobs, console=console))


def iter_judge_rows(examples: list[Example], endpoint: EndpointConfig, cache_path: Path | str,
                    template: str = "difficulty", samples: int = 1, use_logprobs: bool = True,
                    progress: bool = True, console: Console | None = None) -> Iterator[dict]:
    """`score_with_judge`'s rows, yielded in order as each example's samples are answered (for the score step,
    which writes rows to the scores file while the rest are still being asked).

    All requests go through one `LLMClient.iter_chat` stream, so the workers stay busy across the whole run: a
    slow or retried request delays only the rows from its example on, never the requests after it.

    Args:
        progress: show the client's request bar; False for a caller with its own bar. Either way one summary
            line of requests, cache hits, failures and tokens ends the run.
    Returns:
        An iterator over the rows of `score_with_judge`, in order.
    Raises:
        As `score_with_judge`.
    """
    console = console or Console(stderr=True)
    if samples > 1 and endpoint.temperature == 0:
        console.print(f"[yellow]warning: scoring.samples={samples} with temperature 0: the samples will be "
                      "(nearly) identical; set scoring.judge.temperature (e.g. 0.7) for a meaningful mean.")
    reqs = build_requests(examples, template, samples, use_logprobs)  # example-major: samples per example
    client = LLMClient(endpoint, cache_path, console=console)
    stream = client.iter_chat(reqs, desc="difficulty judge", report=progress)
    bad = 0
    try:
        for ex in examples:
            row = _row(ex, [next(stream) for _ in range(samples)], use_logprobs)
            bad += row["score"] is None
            yield row
    finally:
        stream.close()  # a consumer that stops early: the stream stops its workers before the client closes
        client.close()
    if not progress:
        console.print(client.summary("difficulty judge"))
    if bad:
        console.print(f"[yellow]difficulty judge: {bad} of {len(examples)} examples have no score "
                      "(unparseable reply or failed request; raw text and error kept in their rows)")


# ---------------------------------------------------------------------------------------------------------------
# The scorer and its dry run (registered in phased_ift/scoring/__init__.py)
# ---------------------------------------------------------------------------------------------------------------


def _check_judge(cfg: Config) -> None:
    if not cfg.scoring.judge.enabled:
        raise PhasedIFTError("scorer=judge needs an endpoint: set scoring.judge.base_url and scoring.judge.model "
                             "(e.g. scoring.judge.base_url=http://127.0.0.1:8000/v1), or pick an offline scorer "
                             "(scoring.scorer=ifd).")


def score_judge(examples: list[Example], ctx: ScoreContext) -> Iterator[dict]:
    """The LLM judge (1-5), streamed so rows reach the scores file while it runs (the score step's bar shows the
    progress); every request is also in the sqlite cache (<cache_dir>/llm.sqlite), so a re-run sends none twice.

    Raises:
        PhasedIFTError: no endpoint configured (scoring.judge.base_url / model), or as `score_with_judge`.
    """
    _check_judge(ctx.cfg)
    sc = ctx.cfg.scoring
    yield from iter_judge_rows(examples, sc.judge, ctx.cache_dir / "llm.sqlite", template=sc.template,
                               samples=sc.samples, use_logprobs=sc.use_logprobs, progress=False, console=ctx.console)


def dry_run_judge(examples: Sequence[Example], cfg: Config, cache_dir: Path, console=None) -> None:
    """Print the judge's request/token estimate for `examples` (`score_with_judge(..., dry_run=True)`)."""
    _check_judge(cfg)
    score_with_judge(list(examples), cfg.scoring.judge, cache_dir / "llm.sqlite", template=cfg.scoring.template,
                     samples=cfg.scoring.samples, use_logprobs=cfg.scoring.use_logprobs, dry_run=True, console=console)
