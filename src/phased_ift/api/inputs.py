"""The API's inputs and first verbs: configs (`configure`), data (`load_data`), difficulty scores (`score` ->
`Scores`) and the split into phases (`split` -> `Phases`), on data in memory or in files.

Sources: `data.read_records` / `data.read_file` / `data.load_source` (loading, docs/data.md),
`scoring.score_examples` (the registry `scoring.SCORERS`, docs/scoring.md), `phases.split_into_phases`.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Union

from phased_ift.config import Config, DataSource, config_from_dict, config_to_dict, load_config
from phased_ift.config_loading import set_dotted
from phased_ift.data import SOURCES, Example, load_source, read_records
from phased_ift.errors import PhasedIFTError
from phased_ift.phases.split import split_into_phases
from phased_ift.rundir import RunDir
from phased_ift.scoring import read_scores, score_examples

# Data a verb accepts: Examples, records (dicts in a format of `data.FORMATS`), a datasets.Dataset or DatasetDict,
# or a path / named source (str or os.PathLike).
DataLike = Union[Sequence[Example], Sequence[Mapping[str, Any]], Any, str, os.PathLike]
# A config: a `Config`, a YAML file, a run dir with config.yaml, or None (the defaults of `phased-ift config`).
ConfigLike = Union[Config, str, os.PathLike, None]


class Scores(dict):
    """{example id: difficulty score, or None where scoring failed}, in the examples' order (higher = harder).

    Attributes:
        scorer: the registry name that scored (`scoring.SCORERS`), e.g. "ifd".
        errors: {id: reason} of the examples whose score is None (e.g. "response loss alone is 0: IFD undefined").
    """

    def __init__(self, scores: Mapping[str, float | None], scorer: str, errors: Mapping[str, str] | None = None):
        super().__init__(scores)
        self.scorer = scorer
        self.errors = dict(errors or {})


class Phases(list):
    """K lists of `Example`s, easy -> hard, each example with meta["score"] and each list sorted by score.

    Attributes:
        scorer: the scorer of the scores ("meta" when they came as a plain mapping: the run dir's scorer then reads
            meta["score"]).
        method, thresholds, seed: how the split was made (`phases.split_into_phases`).
        left_out: ids of examples whose score was None (not in any phase).
    """

    def __init__(self, phases: Sequence[Sequence[Example]], *, scorer: str = "meta", method: str = "quantiles",
                 thresholds: Sequence[float] = (), seed: int = 0, left_out: Sequence[str] = ()):
        super().__init__(list(p) for p in phases)
        self.scorer, self.method, self.thresholds, self.seed = scorer, method, list(thresholds), seed
        self.left_out = list(left_out)


# ---------------------------------------------------------------------------------------------------------------
# Config and data
# ---------------------------------------------------------------------------------------------------------------


def configure(config: ConfigLike = None, overrides: Mapping[str, Any] | None = None) -> Config:
    """A checked `Config` from `config` with dotted overrides applied.

    Args:
        config: a `Config`; a YAML file (e.g. "configs/quickstart.yaml"); a run dir holding config.yaml (its
            run_dir is set to that folder); or None for the defaults (`phased-ift config` lists every key).
        overrides: {dotted key: value}, e.g. {"train.epochs": 2, "model.name_or_path": "gemma-3-270m"}; a value of
            None leaves the key as it is.

    Returns:
        A new `Config` (the given one is not changed).

    Raises:
        PhasedIFTError: a missing file, a folder without config.yaml, an unknown key or a bad value (named).
    """
    if isinstance(config, Config):
        raw, where = config_to_dict(config), "config"
    elif config is None:
        raw, where = {}, "defaults"
    elif Path(config).is_dir():
        p = Path(config)
        if not (p / "config.yaml").is_file():
            raise PhasedIFTError(f"{p} is a folder without config.yaml; pass a YAML config or a run dir written by "
                                 f"`phased-ift run`.")
        raw, where = config_to_dict(load_config(p / "config.yaml")), str(p / "config.yaml")
        raw["run_dir"] = str(p)
    else:
        raw, where = config_to_dict(load_config(config)), str(config)
    for key, value in (overrides or {}).items():
        if value is not None:
            set_dotted(raw, key.split("."), value, f"{where}: override {key!r}")
    return config_from_dict(raw, where + (" (with overrides)" if overrides else ""))


def load_data(data: DataLike, *, format: str = "auto", columns: Mapping[str, str] | None = None,
              split: str = "train", strict: bool = True) -> list[Example]:
    """Instruction data as `Example`s (id, messages, meta), from memory or from a file.

    Args:
        data: `Example`s (returned as a list); records, e.g. [{"instruction", "input", "output"}, ...]; a
            `datasets.Dataset` or `DatasetDict` (its `split`); a file (json, jsonl, parquet, csv, a saved dataset
            dir, a hub id in the local cache); or a named source (`phased-ift data sources`).
        format: alpaca | phasedsft | sharegpt | messages | testset | hf | auto (detected from the records).
        columns: our field -> your column, e.g. {"instruction": "question", "output": "answer"}.
        split: the split of a `DatasetDict`, saved dataset or hub dataset.
        strict: raise when a record is rejected (empty response, duplicate, wrong type, ...); False: leave the
            rejected records out with a warning that counts them.

    Returns:
        The usable examples in input order; records without an id get "<source>-<index>" (index 0-based).

    Raises:
        PhasedIFTError: an unreadable file, an undetectable format, rejected records (strict), or no usable record.
    Source: `data.read_records` / `data.read_file` / `data.load_source` (docs/data.md lists the formats).
    """
    if isinstance(data, (str, os.PathLike)):
        result = _read_path(str(data), format, columns, split)
    else:
        if isinstance(data, Mapping):  # a DatasetDict (a dict of splits)
            if split not in data:
                raise PhasedIFTError(f"load_data: got a mapping without split {split!r} (keys: {sorted(data)[:5]}); "
                                     f"pass a list of records, a Dataset, or split= one of its splits.")
            data = data[split]
        items = list(data)
        if items and all(isinstance(x, Example) for x in items):
            return items
        source = "dataset" if hasattr(data, "column_names") else "records"
        result = read_records(items, format, dict(columns) if columns else None, source=source)
    return _usable(result, strict)


def _read_path(path: str, fmt: str, columns: Mapping[str, str] | None, split: str):
    """The ReadResult of a named source or a file path (`data.load_source`)."""
    if path in SOURCES:
        return load_source(DataSource(name=path, format=fmt, columns=dict(columns or {}), split=split))
    return load_source(DataSource(path=path, format=fmt, columns=dict(columns or {}), split=split))


def _usable(result, strict: bool) -> list[Example]:
    """The examples of a ReadResult; its rejects raise (strict) or warn."""
    if result.rejects:
        first = result.rejects[0]
        where = f"line {first['line']}: " if first.get("line") else ""
        msg = (f"load_data: {len(result.rejects)} of {result.total} records of {result.source} were rejected "
               f"(first: {where}{first['reason']})")
        if strict:
            raise PhasedIFTError(msg + "; fix them, or pass strict=False to leave them out (`phased-ift data check "
                                 "FILE` lists every reason).")
        warnings.warn(msg + "; they are left out (strict=False).", stacklevel=3)
    if not result.examples:
        raise PhasedIFTError(f"load_data: no usable record in {result.source}.")
    return result.examples


# ---------------------------------------------------------------------------------------------------------------
# Score and split
# ---------------------------------------------------------------------------------------------------------------


def score(data: DataLike, scorer: str | None = None, *, model: str | None = None, config: ConfigLike = None,
          run_dir: str | os.PathLike | None = None, overrides: Mapping[str, Any] | None = None,
          console: Any = None) -> Scores:
    """Difficulty scores of instruction data (higher = harder).

    Args:
        data: anything `load_data` takes (a `datasets.Dataset` of Alpaca rows, records, Examples, a file).
        scorer: a name in `scoring.SCORERS`: ifd (offline: loss(response | instruction) / loss(response), a
            ratio, ~0.3-1.2; Li et al. 2024, Cherry LLM), loss (nats per response token), length, learned, meta
            (a numeric meta field), judge (an LLM, 1-5; needs scoring.judge.base_url); default the config's
            scoring.scorer (ifd).
        model: the scoring model of ifd / loss: a named offline model (smollm2-135m-instruct, gemma-3-270m), a
            local checkpoint dir or a hub id in the local cache; sets model.name_or_path (scoring.model, when set
            in the config, wins).
        config: the settings of the scorer (scoring.batch_size, scoring.max_length in tokens, model.template ...).
        run_dir: keep scores/<scorer>.jsonl and the scorer's caches (cache/) there: a second call resumes and
            reuses them. None: a temporary folder, removed afterwards.
        overrides: more dotted config keys, e.g. {"scoring.batch_size": 4}.
        console: a rich Console for the progress bar; None = quiet.

    Returns:
        `Scores`: {id: float or None (failed; reason in `.errors`)} in the examples' order; `.scorer`.

    Raises:
        PhasedIFTError: an unknown scorer, duplicate ids, a model that cannot be loaded offline, a judge without
            endpoint; see `scoring.score_examples`.
    Source: `scoring.score_examples` (scorers: docs/scoring.md).
    """
    examples = load_data(data)
    cfg = configure(config, {"model.name_or_path": model, "scoring.scorer": scorer, **(overrides or {})})
    name = cfg.scoring.scorer
    with contextlib.ExitStack() as stack:
        folder = Path(run_dir) if run_dir is not None else Path(stack.enter_context(
            tempfile.TemporaryDirectory(prefix="phased-ift-score-")))
        out = RunDir(folder).scores(name)
        score_examples(examples, cfg, out, scorer=name, cache_dir=folder / "cache", console=console)
        rows = read_scores(out)
    result = Scores({e.id: rows[e.id].get("score") for e in examples}, name,
                    {e.id: str(rows[e.id].get("error")) for e in examples if rows[e.id].get("score") is None})
    if result.errors:
        first = next(iter(result.errors.items()))
        warnings.warn(f"score: {len(result.errors)} of {len(examples)} examples got no {name} score (first: "
                      f"{first[0]!r}: {first[1]}); `split` leaves them out.", stacklevel=2)
    return result


def split(data: DataLike, scores: Mapping[str, float | None] | str | os.PathLike, k: int = 3, *,
          method: str = "quantiles", thresholds: Sequence[float] | None = None, seed: int = 0) -> Phases:
    """Split scored examples into K phases of increasing difficulty (Pang et al. 2024, section 3).

    Args:
        data: the examples (anything `load_data` takes); every id needs an entry in `scores`.
        scores: {id: score or None} (`score`'s result, or your own numbers: higher = harder), or a scores jsonl
            ({"id", "score"} rows, e.g. <run_dir>/scores/ifd.jsonl). Examples whose score is None are left out
            (counted in `Phases.left_out`, with a warning).
        k: the number of phases (>= 1).
        method: "quantiles" (K equal-size phases by rank; sizes differ by at most one) or "thresholds" (phase i
            holds thresholds[i-2] <= score < thresholds[i-1]: the paper's GPT-4 score stages, e.g. [2.5, 3.5]).
        thresholds: the K-1 increasing boundaries of method="thresholds", in the scores' unit.
        seed: breaks ties between equal scores (a seeded hash of the id: independent of the input order).

    Returns:
        `Phases`: K lists, easy -> hard, each sorted by score, every example a copy with meta["score"].

    Raises:
        PhasedIFTError: an example without a score, an unknown method, wrong thresholds, an empty phase (the
            message names the phase, its score range and the fix).
    Source: `phases.split_into_phases`.
    """
    examples = load_data(data)
    scorer = getattr(scores, "scorer", "meta")
    if isinstance(scores, (str, os.PathLike)):
        scorer = Path(scores).stem
        scores = {i: r.get("score") for i, r in read_scores(scores).items()}
    failed = [e.id for e in examples if e.id in scores and scores[e.id] is None]
    if failed:
        warnings.warn(f"split: {len(failed)} examples without a score are left out (first: {failed[0]!r}).",
                      stacklevel=2)
    numbers = {i: float(s) for i, s in scores.items() if s is not None}
    left_out = set(failed)
    kept = [e for e in examples if e.id not in left_out]
    phases = split_into_phases(kept, numbers, k, method, thresholds, seed)
    return Phases(phases, scorer=scorer, method=method, thresholds=thresholds or (), seed=seed, left_out=failed)
