"""The Seq-Instruct pipeline: sequential instructions written by an LLM through the project's client
(`llm_client.LLMClient`: sqlite cache, bounded concurrency, retries, dry-run estimate), and the `sit` step behind
`phased-ift sit-generate CONFIG [--dry-run]`.

Follows SIT's released pipeline (Hu et al. 2024, arXiv 2403.07794; github.com/hanxuhu/SeqIns at commit
aec462d7aa819de5b1d70a1d512e91d72bb2830a, self-seq/extract_input.py, self-seq/check_input_position.py,
self-seq/gpt-query.py, self-seq/template.py, self-seq/instruct_template.py). For each instruction:
  (a) separate the instruction from its input (few-shot; skipped when the record has its input apart, as Alpaca
      records do, unless sit.separate=always). Like upstream's check_input_position, the instruction becomes the
      prompt minus the extracted input when that input is an exact part of the prompt, else the whole prompt;
  (b) classify (few-shot): A split into two sub-tasks, B add a prefix task, C add a suffix task, D keep as is;
  (c) rewrite with the option's few-shot prompt: the new sequential instruction;
  (d) ask the same LLM for the response to the new instruction (+ the input);
  (e) repeat (b)-(d) on the new instruction up to sit.iterations rounds, so chains grow; D ends a chain.
The few-shot examples of every prompt are shuffled per request, seeded by (sit.seed, step, example id, round), so
a re-run builds the same requests and the cache answers them: a re-run (after kill -9 too) sends no request twice.
Every prompt is a template file (`templates/sit-*.txt`, format in `load_step_template`); `sit.templates` names
replacements.

Checks, each a reject with its reason (`CATEGORIES`), never a silent drop: an unparseable separation,
classification or rewrite; a rewrite that equals its instruction, that keeps less than `sit.min_keep` of its
instruction's content words ("dropped original task"), or whose added task only asks to read / understand /
repeat / analyse the given text ("trivial added task": the paper's rule for prefix tasks); an empty response; a
failed request (asked again by the next run). A rejected round ends the chain; its earlier rounds are kept.

Outputs (<run_dir>/sit/, written atomically, summary.json last):
  sequential.jsonl  one Example per instruction rewritten at least once: id "sit-llm:<source id>", the last
                    accepted instruction (+ input) and its response; meta {"source": "sit:llm", "sequential": "llm",
                    "source_ids": [id], "option": last option, "options": [per round], "iteration": rounds kept,
                    "original_instruction", "separation": data|llm|whole, "generator": model}
  kept.jsonl        instructions classified D in the first round: {"id", "option": "D", "iteration": 1,
                    "instruction", "input", "reply"} (upstream keeps them unchanged; they are not sequential)
  rejects.jsonl     {"source": "sit-generate", "line": null, "record", "reason", "id", "step", "iteration",
                    "reply"}
  summary.json      counts: sources, per-round options, sequential by iteration, kept, rejects by reason, requests
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Any, Sequence

from rich.console import Console

from phased_ift.config import Config, SitConfig
from phased_ift.config_checks import check_sit_templates
from phased_ift.data import Example, combine_results, load_source, normalize_text, write_examples
from phased_ift.errors import PhasedIFTError
from phased_ift.prompts import PromptTemplate, read_template
from phased_ift.llm_client import LLMClient, LLMResult
from phased_ift.rundir import RunDir
from phased_ift.runio import atomic_write_json, write_jsonl

STEP_TEMPLATES = {"separate": "sit-separate", "classify": "sit-classify", "rewrite_a": "sit-rewrite-a",
                  "rewrite_b": "sit-rewrite-b", "rewrite_c": "sit-rewrite-c", "respond": "sit-respond"}
_PLACEHOLDERS = {"separate": ("{prompt}",), "respond": ("{instruction}",)}  # the others: {instruction}
_NAMES = ("examples", "instruction", "input", "prompt")  # the placeholders a step template may hold
CATEGORIES = ("unparsed separation", "unparsed classification", "unparsed rewrite", "unchanged instruction",
              "dropped original task", "trivial added task", "empty response", "request failed")
OPTIONS = ("A", "B", "C", "D")

# ------------------------------------------------------------------------------------------------ templates


@dataclass(frozen=True)
class StepTemplate(PromptTemplate):
    """One step's prompt (a `prompts.PromptTemplate`): user text with placeholders, and the step's few-shot examples
    (shuffled per request)."""

    step: str = ""
    examples: tuple[str, ...] = ()

    def messages(self, values: dict[str, str], rng: random.Random) -> list[dict[str, str]]:
        """The chat messages for `values` ({instruction}, {input}, {prompt}); {examples} = the few-shot examples in
        an order drawn from `rng`, joined with blank lines. One pass, so no inserted text is scanned again."""
        shots = list(self.examples)
        rng.shuffle(shots)
        vals = {**values, "examples": "\n\n".join(shots)}
        return self.render({f"{{{k}}}": v for k, v in vals.items() if k in _NAMES})


def load_step_template(step: str, name_or_path: str) -> StepTemplate:
    """A step's template: a packaged name (`STEP_TEMPLATES`) or a .txt file in `prompts.read_template`'s format, whose
    user text may end with few-shot examples, each after a line `<<example>>`, that go where `{examples}` stands.

    Raises:
        PhasedIFTError: unknown name or missing file, no `<<user>>` marker, a missing placeholder ({instruction};
            separate: {prompt}), or examples without an `{examples}` placeholder.
    """
    setting = f"sit.templates.{step}"
    tpl = read_template(name_or_path, setting, ", ".join(STEP_TEMPLATES.values()), ())
    user, *shots = re.split(r"^<<example>>[ \t]*$", tpl.user, flags=re.MULTILINE)
    for key in _PLACEHOLDERS.get(step, ("{instruction}",)) + (("{examples}",) if shots else ()):
        if key not in user:
            raise PhasedIFTError(f"{setting} ({name_or_path}): the user prompt lacks the placeholder {key}; add it "
                                 f"where the {key.strip('{}')} should go.")
    return StepTemplate(tpl.name, tpl.system, user.strip("\n").rstrip(), step,
                        tuple(s.strip("\n") for s in shots if s.strip()))


def load_templates(names: dict[str, str]) -> dict[str, StepTemplate]:
    """Every step's template: `STEP_TEMPLATES` with the entries of `names` (sit.templates) replacing theirs.

    Raises:
        PhasedIFTError: an unknown step name in `names`; see `load_step_template`.
    """
    check_sit_templates(names)  # checked when the config loaded; again for names given since
    return {step: load_step_template(step, names.get(step, default)) for step, default in STEP_TEMPLATES.items()}


# ------------------------------------------------------------------------------------------------ parsers

_OPTION = re.compile(r"(?i:option)\s*(?:(?i:is))?\s*[:\-]?\s*\(?\**([ABCD])\b")
_STOP = set("a an the of to in on for and or with by as at from into is are be this that these those it its your "
            "you their then first also please following given below above each any all which what how".split())
# Stems of added words that set no task of their own (SeqIns' rewrite prompts: "something like reading,
# familiarizing, repeating, analyzing or understanding the original instruction is not considered a good choice").
_TRIVIAL = ("read", "unders", "famili", "repeat", "analyz", "analys", "review", "carefu", "consid", "look", "go",
            "throug", "examin", "study", "note", "noting", "inform", "input", "text", "instru", "task", "origin",
            "provid", "detail", "content", "prompt", "questi", "step", "finall", "next", "after", "before", "based",
            "comple", "perfor", "proper", "thorou")


def parse_option(text: str | None) -> str | None:
    """The option (A-D) in a classifier reply: the last "option is: X" / "option: X" / "(Option X)" (X upper-case,
    so "option is a good one" is no answer), or a reply that is one letter ("C", "C."); else None. Upstream's
    extract_classification falls back to D on a reply without an option; here that reply is a reject."""
    if not text:
        return None
    bare = re.fullmatch(r"\W*([ABCD])\W*", text.strip())
    if bare:
        return bare.group(1)
    found = _OPTION.findall(text)
    return found[-1] if found else None


def parse_rewrite(text: str | None) -> str | None:
    """The new instruction in a rewriter reply (upstream's extract_instruction): the text after the last
    "#New Instruction#" (else "New instruction"), case-insensitive, cut at "###", with colons, '#', spaces and
    quotes stripped; None when there is no marker or nothing after it."""
    if not text:
        return None
    low = text.lower()
    marker = next((m for m in ("#new instruction#", "new instruction") if m in low), None)
    if marker is None:
        return None
    out = text[low.rindex(marker) + len(marker):]
    out = out.split("###", 1)[0].strip(":# \n\t").strip().strip("\"“”'‘’").strip()
    return out or None


def parse_separation(text: str | None) -> tuple[str, str] | None:
    """(instruction, input) in a separation reply "Instruction: ...###\\nInput: ...###" (upstream's
    extract_instruction_input), quotes stripped; None without an "Instruction:" part or with an empty one."""
    if not text:
        return None
    low = text.lower()
    if "instruction:" not in low:
        return None
    instr = text[low.index("instruction:") + len("instruction:"):]
    instr = re.split(r"(?i)input:|###|explanation:", instr, maxsplit=1)[0]
    inp = text[low.index("input:") + len("input:"):].split("###", 1)[0] if "input:" in low else ""
    clean = [s.strip(" \n\t#").strip("\"“”").strip() for s in (instr, inp)]
    return (clean[0], clean[1]) if clean[0] else None


def _stems(text: str) -> set[str]:
    return {w[:6] for w in re.findall(r"[a-z0-9]+", text.lower()) if w not in _STOP}


def check_rewrite(instruction: str, new: str | None, min_keep: float) -> str | None:
    """Why a rewrite is rejected ("<category>: <detail>"), or None when it is accepted (see the module docstring:
    unparsed, unchanged, dropped original task, trivial added task). Words are compared by 6-letter stems."""
    if new is None:
        return "unparsed rewrite: no '#New Instruction#' in the reply"
    if normalize_text(new).strip(" .") == normalize_text(instruction).strip(" ."):
        return "unchanged instruction: the rewrite adds no task"
    old, now = _stems(instruction), _stems(new)
    kept = len(old & now) / len(old) if old else 1.0
    if kept < min_keep:
        return (f"dropped original task: the rewrite keeps {kept:.0%} of the instruction's content words "
                f"(sit.min_keep = {min_keep:g})")
    added = now - old
    if not added or all(w.startswith(_TRIVIAL) for w in added):
        return f"trivial added task: the added words {sorted(added)} set no task of their own (read, understand, ...)"
    return None


# ------------------------------------------------------------------------------------------------ the pipeline


@dataclass
class _Chain:
    """One source instruction on its way: the current instruction, input and response, options per round."""

    source: Example
    instruction: str
    input: str
    separation: str
    original: str = ""
    response: str = ""
    options: list[str] = field(default_factory=list)
    active: bool = True


def _input_line(inp: str) -> str:
    return f"Input: '{inp}'" if inp else ""  # upstream's INPUT_TEMPLATE


def _user_text(instruction: str, inp: str) -> str:
    return instruction + ("\n\n" + inp if inp else "")


@dataclass
class Generation:
    """What `generate_sequential` produced: the sequential Examples, the kept (option D) rows, the reject rows and
    the counts (`summary.json`); `pending` counts the chains a dry run could not follow past the cache."""

    records: list[Example]
    kept: list[dict]
    rejects: list[dict]
    counts: dict[str, Any]
    pending: int = 0
    estimate: dict[str, int] = field(default_factory=dict)


class _Run:
    """The state of one pipeline run: templates, the ask function (real or dry), rows and counts."""

    def __init__(self, sit: SitConfig, client: LLMClient, dry_run: bool) -> None:
        self.sit, self.client, self.dry_run = sit, client, dry_run
        self.templates = load_templates(dict(sit.templates))
        self.kept: list[dict] = []
        self.rejects: list[dict] = []
        self.rounds: list[dict] = []
        self.pending = 0  # dry run: chains waiting for a request that is not cached
        self.pending_later = 0  # dry run: requests after the answers still to be sent
        self.estimate = {"cached": 0, "to_send": 0, "prompt_tokens": 0, "completion_tokens": 0}

    def request(self, step: str, chain: _Chain, rnd: int, values: dict[str, str], max_tokens: int) -> dict:
        rng = random.Random(f"sit:{self.sit.seed}:{step}:{chain.source.id}:{rnd}")
        return {"messages": self.templates[step].messages(values, rng), "max_tokens": max_tokens}

    def ask(self, requests: list[dict], desc: str) -> list[LLMResult | None]:
        """Answers in order; in a dry run only the cached ones (None: would be sent, counted in the estimate)."""
        if not requests:
            return []
        if not self.dry_run:
            return self.client.chat_many(requests, desc=desc)
        answers = self.client.cached(requests)
        est = self.client.estimate([r for r, a in zip(requests, answers) if a is None])
        self.estimate["cached"] += sum(a is not None for a in answers)
        for k in ("to_send", "prompt_tokens", "completion_tokens"):
            self.estimate[k] += est[k]
        return answers

    def reject(self, chain: _Chain, step: str, rnd: int, reason: str, reply: str | None) -> None:
        chain.active = False
        self.rejects.append({"source": "sit-generate", "line": None, "record": chain.source.to_dict(),
                             "reason": reason, "id": chain.source.id, "step": step, "iteration": rnd,
                             "reply": reply})

    def answered(self, chain: _Chain, res: LLMResult | None, step: str, rnd: int, later: int) -> str | None:
        """The reply text, or None after recording why there is none (a failed request is a reject; a dry run's
        unasked request makes the chain pending, with `later` requests after it)."""
        if res is None:
            chain.active = False
            self.pending += 1
            self.pending_later += later
            return None
        if not res.ok:
            self.reject(chain, step, rnd, f"request failed: {res.error}", None)
            return None
        return res.text or ""

    # ---- (a) separation
    def separate(self, chains: list[_Chain]) -> None:
        todo = [c for c in chains if self.sit.separate == "always" or (self.sit.separate == "auto" and not c.input)]
        reqs = [self.request("separate", c, 0, {"prompt": c.instruction}, self.sit.max_tokens)
                for c in todo]
        for c, res in zip(todo, self.ask(reqs, "sit: separate instruction and input")):
            text = self.answered(c, res, "separate", 0, 3 * self.sit.iterations)
            if text is None:
                continue
            parsed = parse_separation(text)
            if parsed is None:
                self.reject(c, "separate", 0, "unparsed separation: no 'Instruction:' part in the reply", text)
                continue
            prompt, inp = _user_text(c.instruction, c.input), parsed[1]
            rest = prompt.replace(inp, "", 1).strip() if inp and inp in prompt else ""
            c.instruction, c.input, c.separation = (rest, inp, "llm") if rest else (prompt, "", "whole")
            c.original = c.instruction

    # ---- (b) classify, (c) rewrite, (d) respond: one round
    def round(self, chains: list[_Chain], rnd: int) -> None:
        later = 3 * (self.sit.iterations - rnd)
        stats: dict[str, Any] = {"round": rnd, "asked": 0, "options": {o: 0 for o in OPTIONS}, "accepted": 0}
        active = [c for c in chains if c.active]
        stats["asked"] = len(active)
        reqs = [self.request("classify", c, rnd, {"instruction": c.instruction, "input": _input_line(c.input)},
                             self.sit.max_tokens) for c in active]
        rewrite: list[tuple[_Chain, str]] = []
        for c, res in zip(active, self.ask(reqs, f"sit round {rnd}: classify")):
            text = self.answered(c, res, "classify", rnd, 2 + later)
            if text is None:
                continue
            option = parse_option(text)
            if option is None:
                self.reject(c, "classify", rnd, "unparsed classification: no option A-D in the reply", text)
                continue
            stats["options"][option] += 1
            if option == "D":
                c.active = False
                if rnd == 1:
                    self.kept.append({"id": c.source.id, "option": "D", "iteration": 1, "instruction": c.instruction,
                                      "input": c.input, "reply": text})
                continue
            rewrite.append((c, option))
        stats["accepted"] = self._rewrite_and_respond(rewrite, rnd, later)
        self.rounds.append(stats)

    def _rewrite_and_respond(self, todo: list[tuple[_Chain, str]], rnd: int, later: int) -> int:
        """Steps (c) and (d) of a round; returns the chains that grew by one task."""
        reqs = [self.request(f"rewrite_{o.lower()}", c, rnd, {"instruction": c.instruction,
                                                              "input": _input_line(c.input)},
                             self.sit.max_tokens) for c, o in todo]
        respond: list[tuple[_Chain, str, str]] = []
        for (c, option), res in zip(todo, self.ask(reqs, f"sit round {rnd}: rewrite")):
            text = self.answered(c, res, "rewrite", rnd, 1 + later)
            if text is None:
                continue
            new = parse_rewrite(text)
            why = check_rewrite(c.instruction, new, self.sit.min_keep)
            if why:
                self.reject(c, "rewrite", rnd, why, text)
                continue
            respond.append((c, option, new or ""))
        reqs = [self.request("respond", c, rnd, {"instruction": _user_text(new, c.input)},
                             self.sit.response_max_tokens) for c, _, new in respond]
        grown = 0
        for (c, option, new), res in zip(respond, self.ask(reqs, f"sit round {rnd}: respond")):
            text = self.answered(c, res, "respond", rnd, later)
            if text is None:
                continue
            if not text.strip():
                self.reject(c, "respond", rnd, "empty response: the generator answered the new instruction with "
                                               "no text", text)
                continue
            c.instruction, c.response = new, text.strip()
            c.options.append(option)
            grown += 1
        return grown


def _record(c: _Chain, model: str) -> Example:
    system = [m for m in c.source.messages if m["role"] == "system"][:1]
    meta: dict[str, Any] = {"source": "sit:llm", "sequential": "llm", "source_ids": [c.source.id],
                            "option": c.options[-1], "options": list(c.options), "iteration": len(c.options),
                            "original_instruction": c.original, "separation": c.separation, "generator": model}
    if c.input:
        meta["input"] = c.input
    return Example(f"sit-llm:{c.source.id}", system + [{"role": "user", "content": _user_text(c.instruction, c.input)},
                                                        {"role": "assistant", "content": c.response}], meta)


def _chain_of(e: Example) -> _Chain:
    inp = str(e.meta.get("input") or "")
    full = e.instruction
    instr = full[: len(full) - len(inp)].rstrip() if inp and full.endswith(inp) else full
    inp = inp if instr != full else ""
    return _Chain(e, instr, inp, "data" if inp else "whole", original=instr)


def _counts(run: _Run, chains: list[_Chain], records: list[Example]) -> dict[str, Any]:
    reasons: dict[str, int] = {}
    for r in run.rejects:
        cat = r["reason"].split(":", 1)[0]
        reasons[cat] = reasons.get(cat, 0) + 1
    depth: dict[str, int] = {}
    for e in records:
        depth[str(e.meta["iteration"])] = depth.get(str(e.meta["iteration"]), 0) + 1
    return {"sources": len(chains), "separated_by_llm": sum(c.separation == "llm" for c in chains),
            "rounds": run.rounds, "sequential": len(records), "by_iteration": depth, "kept": len(run.kept),
            "rejects": len(run.rejects), "reject_reasons": reasons,
            "sources_without_output": len(chains) - len(records) - len(run.kept)}


def generate_sequential(examples: Sequence[Example], sit: SitConfig, cache_path: Any, dry_run: bool = False,
                        console: Console | None = None) -> Generation:
    """Run the Seq-Instruct pipeline (module docstring) on `examples` with the generator `sit.generator`.

    Args:
        examples: the source instructions (their first user turn; Alpaca records keep their input apart in
            meta["input"]).
        sit: the `sit` config section (generator, iterations, templates, seed, separate, min_keep, ...).
        cache_path: the LLM cache (sqlite; <run_dir>/cache/llm.sqlite).
        dry_run: send nothing: follow each chain as far as the cache answers it and estimate the rest.

    Returns:
        `Generation` (records in source order).

    Raises:
        PhasedIFTError: no generator endpoint, a bad template, 401/403/404 from the server.
    """
    if not sit.generator.enabled:
        raise PhasedIFTError("sit-generate needs a generator: set sit.generator.base_url and sit.generator.model "
                             "(e.g. a vLLM server: sit.generator.base_url=http://127.0.0.1:8000/v1), or use "
                             "sit.source=offline, which needs no LLM.")
    client = LLMClient(sit.generator, cache_path, console=console or Console(stderr=True))
    try:
        run = _Run(sit, client, dry_run)
        chains = [_chain_of(e) for e in examples]
        run.separate(chains)
        for rnd in range(1, sit.iterations + 1):
            run.round(chains, rnd)
    finally:
        client.close()
    records = [_record(c, sit.generator.model) for c in chains if c.options]
    counts = _counts(run, chains, records)
    counts["requests"] = dict(client.stats)
    return Generation(records, run.kept, run.rejects, counts, run.pending,
                      {**run.estimate, "later": run.pending_later})


# ------------------------------------------------------------------------------------------------ the `sit` step


def source_examples(cfg: Config) -> list[Example]:
    """The instructions sit-generate rewrites: data.train's sources, combined as the data step combines them, then
    a seeded sample of `sit.limit` (data order kept; 0 = all)."""
    results = [load_source(ds, dedupe=cfg.data.dedupe) for ds in cfg.data.train]
    examples, _ = combine_results(results, dedupe=cfg.data.dedupe)
    if cfg.sit.limit and cfg.sit.limit < len(examples):
        keep = sorted(random.Random(f"sit-limit:{cfg.sit.seed}").sample(range(len(examples)), cfg.sit.limit))
        examples = [examples[i] for i in keep]
    return examples


def _settings(cfg: Config, examples: Sequence[Example]) -> dict[str, Any]:
    """What the sit/ files depend on; a finished summary.json with other settings is made again (from the cache)."""
    import hashlib

    s, g = cfg.sit, cfg.sit.generator
    ids = hashlib.sha256("\n".join(e.id for e in examples).encode()).hexdigest()
    return {"generator": {"base_url": g.base_url, "model": g.model, "temperature": g.temperature},
            "max_tokens": s.max_tokens, "response_max_tokens": s.response_max_tokens,
            "iterations": s.iterations, "templates": dict(s.templates), "seed": s.seed, "separate": s.separate,
            "min_keep": s.min_keep, "sources": len(examples), "source_ids_sha256": ids}


def _print_counts(console: Console, c: dict[str, Any], out: Any) -> None:
    depth = ", ".join(f"{k}: {v}" for k, v in sorted(c["by_iteration"].items()))
    reasons = ", ".join(f"{k} {v}" for k, v in c["reject_reasons"].items()) or "none"
    console.print(f"sit-generate: {c['sources']} instructions -> {c['sequential']} sequential examples (by "
                  f"iteration: {depth or '-'}), {c['kept']} kept as is (option D), {c['rejects']} rejected rounds "
                  f"({reasons}); {c['sources_without_output']} instructions gave nothing -> {out}", highlight=False)


def generate_step(cfg: Config, run: RunDir, dry_run: bool = False, console: Console | None = None) -> dict | None:
    """The `sit` step (`phased-ift sit-generate CONFIG`): the Seq-Instruct pipeline on data.train's instructions
    -> <run_dir>/sit/ (sequential.jsonl, kept.jsonl, rejects.jsonl, then summary.json). A no-op unless
    sit.source=generated; skipped when summary.json holds the same settings. `dry_run` prints the estimate.

    Returns:
        The summary dict ({"settings", "counts"}), None when off or in a dry run.
    Raises:
        PhasedIFTError: see `generate_sequential`; unreadable sources.
    """
    import json

    if cfg.sit.source != "generated":
        return None
    console = console or Console(stderr=True)
    examples = source_examples(cfg)
    settings, summary_path = _settings(cfg, examples), run.sit("summary.json")
    done = json.loads(summary_path.read_text(encoding="utf-8")) if summary_path.is_file() else {}
    if not dry_run and done.get("settings") == settings:
        console.print(f"sit-generate: done ({done['counts']['sequential']} sequential examples in "
                      f"{run.sit('sequential.jsonl')})", highlight=False)
        return done
    gen = generate_sequential(examples, cfg.sit, run.llm_cache, dry_run=dry_run, console=console)
    if dry_run:
        e, g = gen.estimate, cfg.sit.generator
        console.print(f"sit-generate dry run: {len(examples)} instructions, up to {cfg.sit.iterations} round(s), "
                      f"generator {g.model} at {g.base_url}: {e['cached']} answers cached, {e['to_send']} requests to "
                      f"send next (~{e['prompt_tokens']} prompt + <= {e['completion_tokens']} completion tokens, "
                      f"estimate), then at most {e['later']} more for the {gen.pending} chains that go on (each "
                      f"round: classify, rewrite, respond)", highlight=False)
        return None
    write_examples(run.sit("sequential.jsonl"), gen.records)
    write_jsonl(run.sit("kept.jsonl"), gen.kept)
    write_jsonl(run.sit("rejects.jsonl"), gen.rejects)
    summary = {"settings": settings, "counts": gen.counts}
    atomic_write_json(summary_path, summary, indent=2)
    _print_counts(console, gen.counts, summary_path.parent)
    return summary


def plan_row(cfg: Config, p: dict | None = None) -> tuple[str, str, str]:
    """The `sit` step's row of `phased-ift run --dry-run`'s plan."""
    s = cfg.sit
    if s.source != "generated":
        return ("offline compositions, made in the data step" if s.source == "offline" else
                f"off (sit.source={s.source})"), "", ""
    n = f"{s.limit:,}" if s.limit else "all"
    return (f"Seq-Instruct with {s.generator.model}", f"{n} instructions x <= {1 + 3 * s.iterations} requests "
            f"(`phased-ift sit-generate CONFIG --dry-run`: the estimate)", "sit/sequential.jsonl")
