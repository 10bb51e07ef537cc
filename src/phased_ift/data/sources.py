"""Named data: the sources (`SOURCES`) and test sets (`TEST_SETS`) resolved under the data home, loading them
(seeded `limit` samples, prompt-only test sets, reference answers), combining sources into one training set, and
`check_file` behind `phased-ift data check` / `phased-ift data sources` (the CLI prints what these return).

Named sources and test sets resolve under the data home (`data_home()`: $PHASED_IFT_DATA_HOME, else ./data, else
../shared/data).
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, NamedTuple

from phased_ift.data.example import Example, normalize_text, unique_id
from phased_ift.data.formats import ReadResult, _register, iter_file, message_key, read_file
from phased_ift.data.loading import _looks_like_hub_id, _reject_row
from phased_ift.errors import PhasedIFTError
from phased_ift.runio import write_jsonl

DATA_HOME_ENV = "PHASED_IFT_DATA_HOME"


class SourceInfo(NamedTuple):
    """A named data file: `path` relative to the data home, its format, a one-line description, and for files that
    are not in the offline snapshot the upstream record count (dry-run plans use it when the file is missing)."""

    path: str
    format: str
    description: str
    records: int = 0


class TestSetInfo(NamedTuple):
    """A named test set: a file under the data home, its format, and the value of the record's `dataset`
    field to keep (None = all records). `known_rejects`: {line of the record in the file: the reject reason} of
    records the upstream file is known to hold unusable (e.g. SeqEval's empty instruction at position 547); they
    are left out by `load_test_set` (and still listed by `phased-ift data check` / `data sources`), while any
    other reject, or a known one that changed, stops loading. Keyed by the reject row's `line` (for a JSON array:
    the line the record starts on)."""

    path: str
    format: str
    subset: str | None
    description: str
    known_rejects: dict[int, str] = {}


SOURCES: dict[str, SourceInfo] = {}
for _name, _info in [
    ("alpagasus/random_9k", SourceInfo("alpagasus/random_9k.json", "alpaca",
                                       "random 9,229 of Alpaca 52K, original outputs (AlpaGasus)")),
    ("alpagasus/claude_t45", SourceInfo("alpagasus/claude_t45.json", "alpaca",
                                        "Alpaca examples rated >= 4.5 by Claude (AlpaGasus), 5,305")),
    ("alpagasus/helpfulness_t45", SourceInfo("alpagasus/helpfulness_t45.json", "alpaca",
                                             "Alpaca examples rated >= 4.5 on helpfulness (AlpaGasus), 2,022")),
    ("cherry_llm/alpaca_5_percent", SourceInfo("cherry_llm/cherry_alpaca_5_percent.json", "alpaca",
                                               "top-IFD 5% of Alpaca (Cherry LLM), 3,111")),
    ("llama_factory/alpaca_en_demo", SourceInfo("llama_factory/alpaca_en_demo.json", "alpaca",
                                                "999 Alpaca instructions with GPT-4-style responses (LLaMA-Factory)")),
    ("phasedsft/stage3", SourceInfo("phasedsft/en-alpaca52k-stage3.jsonl", "phasedsft",
                                    "the paper's hardest phase: 6,889 Alpaca examples, GPT-4 score 3.5-5")),
    ("phasedsft/stages_all", SourceInfo("phasedsft/en-alpaca52k-stages-all.jsonl", "phasedsft",
                                        "Alpaca 52K with the paper's GPT-4 scores (PhasedSFT Alpaca-scored/; "
                                        "not in the offline snapshot: download it)", records=52002)),
    ("car/selected", SourceInfo("car/CaR_selected_result.json", "alpaca", "CaR-selected Alpaca subset, 1,013")),
    ("long_is_more/filtered_1k_longest", SourceInfo("long_is_more/filtered_alpaca_1k_longest.json", "sharegpt",
                                                    "1k Alpaca examples with the longest responses")),
    ("long_is_more/refined_1k_longest", SourceInfo("long_is_more/refined_alpaca_1k_longest.json", "sharegpt",
                                                   "the same 1k with GPT-refined responses")),
    ("long_is_more/filtered_1k_score", SourceInfo("long_is_more/filtered_alpaca_1k_score.json", "sharegpt",
                                                  "1k Alpaca examples with AlpaGasus score >= 4.5 (score in meta)")),
    ("alpaca_eval/gpt4", SourceInfo("alpaca_eval/gpt4/model_outputs.json", "testset",
                                    "AlpacaEval 805 prompts with GPT-4 answers (meta.reference)")),
    ("alpaca_eval/text_davinci_003", SourceInfo("alpaca_eval/text_davinci_003/model_outputs.json", "testset",
                                                "AlpacaEval 805 prompts with text-davinci-003 answers")),
    ("alpaca_eval/alpaca-7b", SourceInfo("alpaca_eval/alpaca-7b/model_outputs.json", "testset",
                                         "AlpacaEval 805 prompts with Alpaca-7B (one-off IFT) answers")),
]:
    _register(SOURCES, _name, _info)

TEST_SETS: dict[str, TestSetInfo] = {}
for _name, _ts in [
    ("vicuna", TestSetInfo("alpagasus/vicuna_test_set.jsonl", "testset", None, "Vicuna 80 questions")),
    ("koala", TestSetInfo("alpagasus/koala_test_set.jsonl", "testset", None, "Koala 180 prompts")),
    ("sinstruct", TestSetInfo("alpagasus/sinstruct_test_set.jsonl", "testset", None,
                              "Self-Instruct 252 user-oriented instructions")),
    ("wizardlm", TestSetInfo("alpagasus/wizardlm_test_set.jsonl", "testset", None,
                             "WizardLM 218 (meta: Skill, Difficulty 1-10)")),
    ("oasst", TestSetInfo("alpaca_eval/gpt4/model_outputs.json", "testset", "oasst", "OASST 188 (AlpacaEval subset)")),
    ("helpful_base", TestSetInfo("alpaca_eval/gpt4/model_outputs.json", "testset", "helpful_base",
                                 "Anthropic helpful-base 129 (AlpacaEval subset)")),
    ("alpaca_eval", TestSetInfo("alpaca_eval/gpt4/model_outputs.json", "testset", None, "all 805 AlpacaEval prompts")),
    ("lima", TestSetInfo("cherry_llm/lima_test_set.jsonl", "testset", None, "LIMA 300 test prompts")),
    ("ifeval", TestSetInfo("ifeval/input_data.jsonl", "testset", None,
                           "IFEval 541 prompts with verifiable instructions (meta: instruction_id_list, kwargs)")),
    ("mt_bench", TestSetInfo("fastchat/mt_bench/question.jsonl", "testset", None,
                             "MT-Bench 80 two-turn questions (meta: category, later_turns)")),
    ("seqeval", TestSetInfo("seqins/seqEval.json", "testset", None,
                            "SeqEval (Hu et al. 2024): the AlpacaEval prompts rewritten into sequential instructions, "
                            "804 of 805 (meta: iteration, the rewrite depth 1-4; upstream record 547 is empty)",
                            known_rejects={2190: "empty instruction: 'instruction' is empty"})),  # record 547
]:
    _register(TEST_SETS, _name, _ts)


def data_home() -> Path:
    """The folder that named sources and test sets resolve under.

    Order: $PHASED_IFT_DATA_HOME, else ./data if it exists, else ../shared/data (relative to the current directory)
    if it exists.

    Raises:
        PhasedIFTError: the variable points to a missing folder, or no candidate exists.
    """
    env = os.environ.get(DATA_HOME_ENV)
    if env:
        home = Path(env).expanduser()
        if not home.is_dir():
            raise PhasedIFTError(f"{DATA_HOME_ENV}={env} is not a directory. Point it at the folder that holds the "
                                 f"data sets (e.g. alpagasus/random_9k.json), or unset it to use ./data.")
        return home
    for candidate in (Path("data"), Path("..") / "shared" / "data"):
        if candidate.is_dir():
            return candidate.resolve()
    raise PhasedIFTError(f"no data home: set {DATA_HOME_ENV} to the folder that holds the data sets, or put them "
                         f"under ./data (e.g. ./data/alpagasus/random_9k.json); `phased-ift data sources` lists the "
                         f"expected files.")


def _unknown_name(name: str, kind: str, names: Iterable[str]) -> PhasedIFTError:
    import difflib

    names = list(names)
    close = difflib.get_close_matches(name, names, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return PhasedIFTError(f"unknown {kind} {name!r}.{hint} Known: {', '.join(names)}; or give a file path.")


def _named_path(rel: str, name: str) -> Path:
    path = data_home() / rel
    if not path.exists():
        raise PhasedIFTError(f"{name!r} resolves to {path}, which does not exist. Put the file there (same relative "
                             f"path '{rel}' under the data home), or set {DATA_HOME_ENV} to the folder that holds "
                             f"'{rel}'.")
    return path


def source_path(name: str) -> Path:
    """The file of a named source under the data home.

    Raises:
        PhasedIFTError: unknown name (with close matches), or the file is missing (says where to put it).
    """
    if name not in SOURCES:
        raise _unknown_name(name, "data source", SOURCES)
    return _named_path(SOURCES[name].path, name)


def source_provenance(source: str) -> dict[str, str]:
    """What the PROVENANCE.md beside a source's file records: {"upstream": ..., "license": ...} (the text after
    "- Upstream repository:" and "- License:", the data home's format), for a named source or a file path.

    Returns:
        The fields found; {} when the source has no PROVENANCE.md (or no data home). Never raises.
    """
    try:
        path = source_path(source) if source in SOURCES else Path(source)
    except PhasedIFTError:
        return {}
    prov = path.parent / "PROVENANCE.md"
    if not prov.is_file():
        return {}
    keys = {"- upstream repository:": "upstream", "- license:": "license"}
    found = {}
    for line in prov.read_text(encoding="utf-8", errors="replace").splitlines():
        for prefix, key in keys.items():
            if line.lower().startswith(prefix) and key not in found:
                found[key] = line[len(prefix):].strip().replace("`", "")
    return found


def _sample(examples: list[Example], limit: int, seed: int) -> list[Example]:
    """A seeded sample of `limit` examples kept in file order (all of them when limit is 0 or >= len)."""
    keep = _sample_positions(len(examples), limit, seed)
    return examples if keep is None else [examples[i] for i in keep]


def _sample_positions(n: int, limit: int, seed: int) -> list[int] | None:
    """The positions (increasing) of the seeded `limit` sample of n items; None: all of them (limit 0 or >= n)."""
    if not limit or limit >= n:
        return None
    return sorted(random.Random(seed).sample(range(n), limit))


def load_source(ds: Any, *, dedupe: bool = True) -> ReadResult:
    """Read one configured source (`config.DataSource`): a named source or a path, then the seeded `limit` sample.

    Args:
        ds: DataSource with name or path, format, columns, split, limit, seed. A named source's registered format
            is used unless ds.format is set explicitly.
        dedupe: reject duplicate examples inside the file (cfg.data.dedupe).

    Returns:
        ReadResult; `examples` is the sample (file order kept), `rejects` and `total` cover the whole file.

    Raises:
        PhasedIFTError: see `read_file` and `source_path`.
    """
    examples, result = stream_source(ds, dedupe=dedupe)
    result.examples = list(examples)
    return result


def stream_source(ds: Any, *, dedupe: bool = True) -> tuple[Iterator[Example], ReadResult]:
    """`load_source` as a stream (`formats.iter_file`): (the sample's Examples one at a time, the ReadResult whose
    rejects and total are complete once they are exhausted; its `examples` stays empty). Nothing is read before
    the first `next()`.

    A `limit` sample reads the file twice: once to count the usable records (the sample is drawn from their
    number, `_sample_positions`, as `_sample` draws it), then to yield the sampled ones; neither pass holds the examples.

    Raises:
        PhasedIFTError: see `read_file` and `source_path` (while iterating).
    """
    if ds.name:
        path: Any = source_path(ds.name)
        fmt = ds.format if ds.format != "auto" else SOURCES[ds.name].format
    else:
        path, fmt = ds.path, ds.format
    result = ReadResult([], [], fmt, ds.name or ds.path)

    def read() -> tuple[Iterator[Example], ReadResult]:
        return iter_file(path, fmt, columns=ds.columns or None, split=ds.split, source=ds.name or ds.path,
                         dedupe=dedupe)

    def examples() -> Iterator[Example]:
        keep = None
        if ds.limit:
            positions = _sample_positions(sum(1 for _ in read()[0]), ds.limit, ds.seed)  # `_sample`'s draw
            keep = None if positions is None else set(positions)
        stream, found = read()
        yield from (e for i, e in enumerate(stream) if keep is None or i in keep)
        result.rejects, result.format, result.total, result.duplicates = (found.rejects, found.format, found.total,
                                                                          found.duplicates)

    return examples(), result


def _as_prompt(example: Example, testset: str) -> Example:
    meta = {**example.meta, "testset": testset}
    if example.response:
        meta.setdefault("reference", example.response)
    return Example(example.id, example.prompt_messages, meta)


def load_test_set(name_or_path: str, limit: int = 0, seed: int = 0) -> list[Example]:
    """Prompt-only Examples of a named test set (see `TEST_SETS`) or of any data file.

    Each Example holds the prompt turns only; meta["testset"] is the name (the file stem for a path) and
    meta["reference"] a reference answer when the file has one (AlpacaEval outputs, Self-Instruct instances,
    the response of a training-format file).

    Args:
        name_or_path: vicuna (80), koala (180), sinstruct (252), wizardlm (218), oasst (188), helpful_base (129),
            alpaca_eval (805), lima (300), ifeval (541), mt_bench (80; turn 2 in meta["later_turns"]), seqeval
            (804; meta["iteration"]), or a file path in any readable format.
        limit: keep a seeded random sample of this many prompts (0 = all), in file order.
        seed: seed of that sample.

    Raises:
        PhasedIFTError: unknown name (lists the names), missing file, or records that cannot be used (a test set
            is never silently shortened: run `phased-ift data check` on the file to see the rejects). Only the
            upstream defects listed in the test set's `known_rejects` are left out (its description counts them).
    """
    if name_or_path in TEST_SETS:
        info = TEST_SETS[name_or_path]
        path, fmt, label = _named_path(info.path, name_or_path), info.format, name_or_path
    elif Path(name_or_path).exists():
        info, path, fmt, label = None, Path(name_or_path), "auto", Path(name_or_path).stem
    else:
        raise _unknown_name(name_or_path, "test set", TEST_SETS)
    result = read_file(path, fmt, source=label, require_response=False)
    known = info.known_rejects if info is not None else {}
    unexpected = [r for r in result.rejects if known.get(r["line"]) != r["reason"]]
    if unexpected:
        first = unexpected[0]
        raise PhasedIFTError(f"test set {label} ({path}): {len(unexpected)} of {result.total} records cannot be "
                             f"used (first: line {first['line']}: {first['reason']}). Run `phased-ift data check "
                             f"{path}` to see them all, then fix or remove them.")
    examples = result.examples
    if info is not None and info.subset:
        examples = [e for e in examples if e.meta.get("dataset") == info.subset]
    return _sample([_as_prompt(e, label) for e in examples], limit, seed)


def load_reference_answers(name: str = "alpaca_eval/gpt4") -> dict[str, str]:
    """Reference answers keyed by `normalize_text(instruction)`.

    Args:
        name: a named source (default: AlpacaEval's GPT-4 answers, 805) or a file path; the answer is the
            record's meta["reference"] or its response. Empty answers are left out (text_davinci_003 has 2).

    Raises:
        PhasedIFTError: see `read_file` / `source_path`.
    """
    if name in SOURCES:
        result = read_file(source_path(name), SOURCES[name].format, source=name, require_response=False)
    else:
        result = read_file(name, "auto", source=name, require_response=False)
    refs: dict[str, str] = {}
    for e in result.examples:
        answer = e.meta.get("reference") or e.response
        if isinstance(answer, str) and answer.strip():
            refs.setdefault(normalize_text(e.instruction), answer)
    return refs


def find_reference(example: Example, references: dict[str, str]) -> str | None:
    """The reference answer for a (test-set) Example, matched by normalised instruction text; None if absent."""
    return references.get(normalize_text(example.instruction))


def combine_results(results: list[ReadResult], dedupe: bool = True) -> tuple[list[Example], list[dict[str, Any]]]:
    """Concatenate sources in order: rejects of every source, plus cross-source duplicates (when `dedupe`).

    Ids stay unique: an id already used by an earlier source is prefixed with this source's name
    ("<source>:<id>"; "#2", "#3"... if even that is taken).

    Returns:
        (examples, rejects) with rejects as in `read_file` (cross-source duplicates have line None).
    """
    examples, rejects = combine_streams([(iter(r.examples), r) for r in results], dedupe)
    return list(examples), rejects


def combine_streams(streams: Iterable[tuple[Iterator[Example], ReadResult]], dedupe: bool = True
                    ) -> tuple[Iterator[Example], list[dict[str, Any]]]:
    """`combine_results` as a stream, over (examples, ReadResult) pairs such as `stream_source`'s: (the combined
    Examples one at a time, the rejects list: complete once they are exhausted, in `combine_results`' order: each
    source's own rejects, then its cross-source duplicates). Holds the ids and a 16-byte digest per example."""
    rejects: list[dict[str, Any]] = []
    streams = list(streams)

    def examples() -> Iterator[Example]:
        seen_ids: set[str] = set()
        seen_messages: dict[bytes, tuple[str, str]] = {}
        for n, (stream, result) in enumerate(streams):
            duplicates = []
            # a digest is needed to check against earlier sources and to be checked by later ones (a single source
            # has deduped itself while it was read)
            check, keep = dedupe and n > 0, dedupe and n < len(streams) - 1
            for e in stream:
                key = message_key(e.messages) if check or keep else b""
                if check and key in seen_messages:
                    first_id, first_source = seen_messages[key]
                    duplicates.append(_reject_row(result.source, None, e.to_dict(), f"duplicate example: same "
                                                  f"messages as id {first_id!r} from source {first_source!r}"))
                    continue
                rid = unique_id(e.id, seen_ids, result.source)
                if keep:
                    seen_messages.setdefault(key, (rid, result.source))
                yield Example(rid, e.messages, e.meta) if rid != e.id else e
            rejects.extend(result.rejects)
            rejects.extend(duplicates)

    return examples(), rejects


# --------------------------------------------------------------------------------------------------------------
# `phased-ift data check` / `phased-ift data sources`
# --------------------------------------------------------------------------------------------------------------


def _resolve_check_target(path: str, fmt: str) -> tuple[Any, str, bool]:
    """(file, format, is a test set) for a file path, a named source or a test-set name."""
    if Path(path).exists() or Path(path).suffix:  # a missing *file* gets read_file's "no such file"
        return path, fmt, fmt == "testset"
    if path in SOURCES:
        info = SOURCES[path]
        return source_path(path), fmt if fmt != "auto" else info.format, info.format == "testset"
    if path in TEST_SETS:
        info_t = TEST_SETS[path]
        return _named_path(info_t.path, path), fmt if fmt != "auto" else info_t.format, True
    if _looks_like_hub_id(path) and path.split("/")[0] not in {n.split("/")[0] for n in SOURCES}:
        return path, fmt, False  # a Hugging Face hub id: read_file tries `datasets`
    raise _unknown_name(path, "file or named source", [*SOURCES, *TEST_SETS])



@dataclass
class CheckReport:
    """What `check_file` found.

    Attributes:
        target: the file (or dataset id) that was read; a named source resolves to its file.
        result: the ReadResult of the whole file.
        rejects_path: where the rejected records were written, or None when nothing was rejected.
    """

    target: Any
    result: ReadResult
    rejects_path: Path | None


def check_file(path: str, fmt: str = "auto", rejects: str | None = None) -> CheckReport:
    """Validate a data file: read it whole and write its rejected records out (`phased-ift data check` prints
    format, records, read, rejected and the reason histogram from the returned report).

    Args:
        path: a file, a named source (alpagasus/random_9k) or a test-set name (vicuna).
        fmt: format, as for `read_file`.
        rejects: where to write the rejected records (default ./<file stem>.rejects.jsonl); written only when
            something was rejected, as {"source", "line", "record", "reason"} rows.

    Returns:
        CheckReport (rejected records are reported, not fatal).

    Raises:
        PhasedIFTError: unreadable file, unknown name (the CLI prints it and exits with status 2).
    """
    target, fmt, testset = _resolve_check_target(path, fmt)
    result = read_file(target, fmt, source=path, require_response=not testset)
    out = None
    if result.rejects:
        out = Path(rejects) if rejects else Path.cwd() / f"{Path(str(target)).stem or 'data'}.rejects.jsonl"
        write_jsonl(out, result.rejects)
    return CheckReport(target, result, out)


class SourceStatus(NamedTuple):
    """One row of `phased-ift data sources`: read/rejected are None when the file is not present."""

    name: str
    kind: str  # "source" | "test set"
    format: str
    present: bool
    read: int | None
    rejected: int | None
    file: str  # path under the data home (+ " (dataset=<subset>)" for a test-set subset)


def source_status(home: Path) -> list[SourceStatus]:
    """Every named source and test set with its presence under `home` and records read/rejected (each present
    file is read whole; a test set counts only the records of its subset)."""
    rows: list[SourceStatus] = []
    for name, info in SOURCES.items():
        present = (home / info.path).exists()
        read = rejected = None
        if present:
            r = read_file(home / info.path, info.format, source=name)
            read, rejected = len(r.examples), len(r.rejects)
        rows.append(SourceStatus(name, "source", info.format, present, read, rejected, info.path))
    for name, ts in TEST_SETS.items():
        present = (home / ts.path).exists()
        read = rejected = None
        if present:
            r = read_file(home / ts.path, ts.format, source=name, require_response=False)
            kept = [e for e in r.examples if ts.subset is None or e.meta.get("dataset") == ts.subset]
            read, rejected = len(kept), len(r.rejects)
        rows.append(SourceStatus(name, "test set", ts.format, present, read, rejected,
                                 ts.path + (f" (dataset={ts.subset})" if ts.subset else "")))
    return rows
