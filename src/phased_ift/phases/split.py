"""Split scored instruction data into K phases of increasing difficulty, plus the paper's control orderings.

    phases = split_into_phases(examples, scores, k=3, method="thresholds", thresholds=[2.5, 3.5])
    rand = random_control(phases, seed=0)      # same phase sizes, examples assigned at random
    rev = reverse_control(phases)               # hard -> easy
    union = difficulty_sorted(phases)           # one list, easy -> hard (the `sorted` / `competence` arms)
    rep = replay_phases(phases, 0.1, seed=0)    # phase k + 10% of phases < k (the `replay` arm)

From the command line, `phased-ift split CONFIG` reads `data/train.jsonl` and `scores/<scorer>.jsonl` from the run
dir and writes `phases/phase_<k>.jsonl`, the control files of the configured arms (`phases/random/...`,
`phases/reverse/...`) and `phases/manifest.json` last (its presence means the split is complete).

Source: Pang et al., "Phased Instruction Fine-Tuning" (ACL Findings 2024), Section 3: GPT-4 difficulty scores on a
1-5 scale, stages by score (stage 3 = score >= 3.5 in the paper's Alpaca setup); the "random" control keeps the
stage sizes but assigns examples to stages at random.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

from phased_ift.data import Example, example_head, with_meta, write_examples
from phased_ift.errors import PhasedIFTError
from phased_ift.runio import JsonlIndex, atomic_write_json, no_cycle_collection, read_score_values, write_lines
from phased_ift.sit.mix import phase_mix_counts
from phased_ift.stats import round_half_up

ControlBuilder = Callable[[Sequence[Sequence[Example]], int], "list[list[Example]]"]

METHODS = ("thresholds", "quantiles")


def _tiebreak(seed: int, example_id: str) -> str:
    # A seeded hash of the id: ties between equal scores are broken the same way on every run and machine,
    # independent of the input order, and differently for another seed.
    return hashlib.sha256(f"{seed}:{example_id}".encode()).hexdigest()


def _phase_bounds(k: int, method: str, thresholds: Sequence[float] | None) -> list[str]:
    if method == "thresholds":
        t = list(thresholds or [])
        lo = ["-inf"] + [f"{x:g}" for x in t]
        hi = [f"{x:g}" for x in t] + ["inf"]
        return [f"[{a}, {b})" for a, b in zip(lo, hi)]
    return [f"quantile {i}/{k}" for i in range(1, k + 1)]


def split_into_phases(
    examples: Sequence[Example],
    scores: dict[str, float],
    k: int,
    method: str = "thresholds",
    thresholds: Sequence[float] | None = None,
    seed: int = 0,
) -> list[list[Example]]:
    """Stratify examples into K phases of increasing difficulty (easy -> hard).

    Args:
        examples: the training examples; each id must have a score in `scores`.
        scores: example id -> difficulty score (higher = harder; the paper: GPT-4 score 1-5).
        k: number of phases (>= 1).
        method: "thresholds": phase i (1-based) holds t[i-2] <= score < t[i-1] (K-1 increasing boundaries, the
            paper's stages, e.g. [2.5, 3.5] puts score >= 3.5 in phase 3); "quantiles": K equal-size phases by rank
            (sizes differ by at most one, earlier phases get the extra example).
        thresholds: the K-1 boundaries for method="thresholds".
        seed: seeds the tie-breaking between equal scores (a hash of seed and id, so the result does not depend
            on the input order).

    Returns:
        K lists of Examples (copies with `meta["score"]` set), each sorted by (score, tie-break) ascending.

    Raises:
        PhasedIFTError: unknown method, wrong number of thresholds, an example without a score, or an empty phase
            (the message names the phase, its score range and how to fix it).
    """
    _check_split_args(examples, scores, k, method, thresholds)
    # Example(...), not dataclasses.replace: the same copy, about 3x faster (1M examples at scale)
    scored = [Example(e.id, e.messages, {**e.meta, "score": float(scores[e.id])}) for e in examples]
    scored.sort(key=lambda e: (e.meta["score"], _tiebreak(seed, e.id)))
    phases: list[list[Example]]
    if method == "thresholds":
        phases = [[] for _ in range(k)]
        for e in scored:
            phases[sum(e.meta["score"] >= x for x in thresholds or [])].append(e)
    else:
        n = len(scored)
        sizes = [n // k + (1 if i < n % k else 0) for i in range(k)]
        phases, start = [], 0
        for size in sizes:
            phases.append(scored[start:start + size])
            start += size
    _check_no_empty_phase(phases, scored, k, method, thresholds)
    return phases


def _check_split_args(examples: Sequence[Example], scores: dict[str, float], k: int, method: str,
                      thresholds: Sequence[float] | None) -> None:
    """The PhasedIFTErrors of `split_into_phases` raised before splitting (method, k, thresholds, scores)."""
    if method not in METHODS:
        raise PhasedIFTError(f"phases: method {method!r} is not one of {list(METHODS)}.")
    if k < 1:
        raise PhasedIFTError(f"phases: k must be >= 1, got {k}.")
    if method == "thresholds":
        t = list(thresholds or [])
        if len(t) != k - 1 or any(b <= a for a, b in zip(t, t[1:])):
            raise PhasedIFTError(
                f"phases: method=thresholds with k={k} needs {k - 1} increasing thresholds, got {t}; "
                f"e.g. phases.thresholds=[2.5,3.5] for the paper's 3 stages."
            )
    missing = [e.id for e in examples if e.id not in scores]
    if missing:
        raise PhasedIFTError(
            f"phases: {len(missing)} examples have no score (first: {missing[:3]}); score them first "
            f"(`phased-ift score`) or remove them from the data."
        )


def _check_no_empty_phase(phases: list[list[Example]], scored: list[Example], k: int, method: str,
                          thresholds: Sequence[float] | None) -> None:
    """Raise PhasedIFTError naming the first empty phase, its score range, the observed scores and the fix."""
    bounds = _phase_bounds(k, method, thresholds)
    for i, ph in enumerate(phases):
        if not ph:
            observed = (
                f"scores range from {scored[0].meta['score']:g} to {scored[-1].meta['score']:g} over {len(scored)} "
                f"examples" if scored else "there are no scored examples"
            )
            fix = (
                "choose thresholds inside the observed score range (phases.thresholds=[...]) or use "
                "phases.method=quantiles for equal-size phases"
                if method == "thresholds"
                else "use fewer phases (phases.k) or more data"
            )
            raise PhasedIFTError(
                f"phases: phase {i + 1} of {k} (scores {bounds[i]}) would be empty; {observed}. Fix: {fix}."
            )


def random_control(phases: Sequence[Sequence[Example]], seed: int = 0) -> list[list[Example]]:
    """The paper's random control: the same phase sizes, examples assigned to phases uniformly at random.

    Args:
        phases: the difficulty phases (easy -> hard).
        seed: RNG seed of the assignment.

    Returns:
        K lists with len(result[i]) == len(phases[i]); the union equals the union of `phases`.
    """
    pool = [e for ph in phases for e in ph]
    random.Random(seed).shuffle(pool)
    out, start = [], 0
    for ph in phases:
        out.append(pool[start:start + len(ph)])
        start += len(ph)
    return out


def reverse_control(phases: Sequence[Sequence[Example]]) -> list[list[Example]]:
    """Hard -> easy: the phases in reverse order, each phase's examples in descending difficulty."""
    return [list(reversed(ph)) for ph in reversed(phases)]


def difficulty_sorted(phases: Sequence[Sequence[Example]]) -> list[Example]:
    """The union of the phases sorted easy -> hard: ascending `meta["score"]`, ties in the split's order.

    The sort is stable over the phases joined in order, so equal scores keep the split's seeded tie-break (each
    phase file is sorted by (score, tie-break) and the phases cover increasing score ranges). An example without
    `meta["score"]` (data not split yet, as in a plan) counts as score 0.

    Returns:
        One list of all examples, monotone non-decreasing in score. Source: the `sorted` arm (design.py).
    """
    union = [e for ph in phases for e in ph]
    return sorted(union, key=lambda e: float(e.meta.get("score", 0.0)))


def replay_count(ratio: float, n_earlier: int) -> int:
    """Examples replayed into a phase: round(ratio x n_earlier), halves rounded up (floor(r * n + 0.5))."""
    return round_half_up(ratio * n_earlier)


def replay_phases(phases: Sequence[Sequence[Example]], ratio: float, seed: int) -> list[list[Example]]:
    """Experience replay across phases: phase k keeps its examples and gets `replay_count(ratio, n_<k)` more,
    drawn without replacement from the union of phases 1..k-1 (n_<k examples), appended after its own.

    The draw of phase k is seeded by (seed, k): the same seed gives the same examples, another seed others.
    Phase 1 is unchanged. The examples are not copied: a replayed example is the same Example as in its phase.

    Args:
        phases: the phases in training order (easy -> hard for `replay`).
        ratio: the replayed fraction of the earlier phases, 0 <= ratio < 1 (train.replay_ratio).
        seed: the training seed.

    Returns:
        K lists; len(result[k]) = len(phases[k]) + replay_count(ratio, sum(len(p) for p in phases[:k])).

    Raises:
        PhasedIFTError: ratio outside [0, 1).

    Source: replay of earlier data against forgetting in sequential training (e.g. Robins 1995, "Catastrophic
    forgetting, rehearsal and pseudorehearsal"; de Masson d'Autume et al. 2019, "Episodic memory in lifelong
    language learning").
    """
    if not 0 <= ratio < 1:
        raise PhasedIFTError(f"replay: train.replay_ratio must be in [0, 1), got {ratio}; e.g. 0.1 replays 10% of "
                             f"the earlier phases' examples.")
    out, earlier = [], []
    for k, ph in enumerate(phases, 1):
        m = replay_count(ratio, len(earlier))
        out.append(list(ph) + random.Random(f"replay:{seed}:{k}").sample(earlier, m))
        earlier += list(ph)
    return out


def phase_stats(phase: Sequence[Example]) -> dict[str, float]:
    """count, score_min, score_max, score_mean of a phase (its examples carry meta["score"])."""
    s = [e.meta["score"] for e in phase]
    return {
        "count": len(s),
        "score_min": min(s) if s else math.nan,
        "score_max": max(s) if s else math.nan,
        "score_mean": sum(s) / len(s) if s else math.nan,
    }


def _current_manifest(run, scorer: str, k: int, method: str, thresholds: Sequence[float] | None, seed: int,
                      controls: Sequence[str]) -> dict | None:
    """The existing manifest when it was written with the same settings and lists every requested control."""
    if not run.phases_manifest.is_file():
        return None
    manifest = read_manifest(run)
    same = (manifest.get("method"), manifest.get("k"), manifest.get("scorer"), manifest.get("seed")) == (
        method, k, scorer, seed) and list(manifest.get("thresholds") or []) == list(thresholds or [])
    if same and all(c in manifest.get("controls", {}) for c in controls):
        return manifest
    return None


def _read_scores(scores_path) -> tuple[dict[str, float], list[str]]:
    """(id -> score, ids whose score is null) of a scores file (`runio.read_score_values`: a later row of an id
    wins)."""
    values = read_score_values(scores_path)
    return {i: v for i, v in values.items() if v is not None}, [i for i, v in values.items() if v is None]


# meta fields a split's stand-in example keeps (`phase_mix_counts` reads them; the score is added by the split)
_STUB_META = ("sequential", "replaces")


def _stub(line: bytes) -> Example:
    """A data/train.jsonl row (a line's bytes) as the split's stand-in: its id and the meta of `_STUB_META`, no
    messages (`data.example_head`: the messages are not decoded)."""
    rid, meta = example_head(line)
    return Example(rid, [], {k: meta[k] for k in _STUB_META if k in meta})


def _stubs(data: JsonlIndex, path) -> dict[str, int]:
    """{id: row position} of the stand-ins in `data.values`.

    Raises:
        PhasedIFTError: an id that occurs twice (the data step makes ids unique).
    """
    at: dict[str, int] = {}
    for p, e in enumerate(data.values):
        if e.id in at:
            raise PhasedIFTError(f"phases: id {e.id!r} occurs twice in {path} (rows {at[e.id] + 1} and {p + 1}); ids "
                                 f"must be unique: delete the file and re-run the data step (`phased-ift score`).")
        at[e.id] = p
    return at


def _write_phase_files(run, phases: list[list[Example]], controls: Mapping[str, ControlBuilder], seed: int,
                       manifest: dict, full: Callable[[Example], bytes] | None = None) -> None:
    """The phase files and control files; their entries go into `manifest` ("phases", "controls"), with the
    sequential examples of each phase and the originals they replace (`sit.mix.phase_mix_counts`). `full` turns a
    stand-in example into the line written (the split's `_stub`s, `write_examples`' bytes of the whole example;
    None: the examples are written as given). With `full`, a control file's row whose stand-in is one a phase file
    holds (the same object: builders regroup the phases' examples) is copied from the phase file's bytes
    (`_PhaseRows`), the line `full` gave there, instead of being built again."""
    rows = _PhaseRows(full) if full is not None else None

    def write(path: Path, ph: list[Example], phase: int = 0) -> Path:
        if rows is None:
            return write_examples(path, ph)
        write_lines(path, rows.record(phase, ph) if phase else map(rows.line, ph))
        return path

    try:
        for i, (ph, mix) in enumerate(zip(phases, phase_mix_counts(phases)), 1):
            path = write(run.phase_file(i), ph, i)
            if rows is not None:
                rows.written(i, path)
            manifest["phases"].append({"k": i, **phase_stats(ph), **mix, "file": str(path.relative_to(run.root))})
        for c, build in controls.items():
            ctl = build(phases, seed)
            manifest["controls"][c] = []
            for i, ph in enumerate(ctl, 1):
                path = write(run.phase_file(i, c), ph)
                manifest["controls"][c].append({"k": i, "count": len(ph), "file": str(path.relative_to(run.root))})
    finally:
        if rows is not None:
            rows.close()


class _PhaseRows:
    """The line of each stand-in written to a phase file: `record` notes where each one goes (phase, byte offset,
    length) while the file is written, `line(e)` reads it back from there (one `os.pread`), or builds it with `full`
    for a stand-in no phase file holds. About 100 bytes of memory per example."""

    def __init__(self, full: Callable[[Example], bytes]) -> None:
        self.full = full
        self.at: dict[int, tuple[int, int, int]] = {}  # id(stand-in) -> (phase, offset, length)
        self.files: dict[int, int] = {}  # phase -> read descriptor of its written file

    def record(self, phase: int, ph: Sequence[Example]) -> Iterator[bytes]:
        pos = 0
        for e in ph:
            line = self.full(e)
            self.at[id(e)] = (phase, pos, len(line))
            pos += len(line)
            yield line

    def written(self, phase: int, path: Path) -> None:
        self.files[phase] = os.open(path, os.O_RDONLY)

    def line(self, e: Example) -> bytes:
        found = self.at.get(id(e))
        if found is None:
            return self.full(e)
        phase, offset, length = found
        return os.pread(self.files[phase], length, offset)

    def close(self) -> None:
        for fd in self.files.values():
            os.close(fd)
        self.files.clear()


def write_split(run, scorer: str, k: int, method: str, thresholds: Sequence[float] | None, seed: int,
                controls: Mapping[str, ControlBuilder], console=None) -> dict:
    """Read data/train.jsonl + scores/<scorer>.jsonl, write the phase files, control files and manifest (last).

    Rows of the scores file whose score is null (scoring failures) are excluded from every phase, counted in the
    manifest (`n_failed_scores`) and reported in the log; examples absent from the scores file likewise
    (`n_unscored`). Skips the work when the manifest exists and lists every requested control. Every file is
    written atomically (`runio`), the manifest last.

    Memory: (id, score) per example and the line offsets of data/train.jsonl, not the examples: the split and the
    control builders work on stand-ins (id, meta score / sequential / replaces, no messages), and each phase file
    is written by reading its examples back from data/train.jsonl (`runio.JsonlIndex`), one row at a time, with
    the score set in each row's bytes (`data.with_meta`: the messages are not decoded).

    Args:
        run: the `RunDir`.
        scorer: name of the scores file (scores/<scorer>.jsonl).
        k, method, thresholds, seed: see `split_into_phases`.
        controls: the control arms to write, {arm name: builder `(phases, seed) -> phases`} (the arms own them:
            `design.controls(arms)`); each goes to phases/<name>/phase_<k>.jsonl. A builder sees the stand-ins
            above (it may reorder and regroup them, not read their messages).
        console: a rich Console for the log line (optional).

    Returns:
        The manifest dict (format in docs/architecture.md).

    Raises:
        PhasedIFTError: missing train data or scores file, an id twice in data/train.jsonl, an empty phase.
    """
    manifest = _current_manifest(run, scorer, k, method, thresholds, seed, controls)
    if manifest is not None:
        return manifest
    if not run.train_data.is_file():
        raise PhasedIFTError(f"phases: {run.train_data} does not exist; run `phased-ift score` (or `run`) first.")
    scores_path = run.scores(scorer)
    if not scores_path.is_file():
        raise PhasedIFTError(f"phases: {scores_path} does not exist; run `phased-ift score` first.")
    scores, failed = _read_scores(scores_path)
    with no_cycle_collection(), JsonlIndex(run.train_data, keep=_stub, raw=True) as data:
        at = _stubs(data, run.train_data)
        failed_set = set(failed)
        kept = [e for e in data.values if e.id in scores]
        n_failed = sum(e.id in failed_set and e.id not in scores for e in data.values)
        n_unscored = len(data.values) - len(kept) - n_failed
        phases = split_into_phases(kept, scores, k, method, thresholds, seed)

        def full(e: Example) -> bytes:  # the row of data/train.jsonl with the split's score, as write_examples'
            return data.line(at[e.id], lambda line: with_meta(line, score=e.meta["score"]))

        manifest = _write_manifest(run, phases, controls, full, scorer=scorer, method=method,
                                   thresholds=thresholds, seed=seed, n_failed=n_failed, n_unscored=n_unscored)
    if console is not None:
        sizes = ", ".join(str(p["count"]) for p in manifest["phases"])
        excluded = (f"; excluded {n_failed} examples whose scoring failed (score null) and {n_unscored} without a "
                    f"score row") if (n_failed or n_unscored) else ""
        console.print(f"split: {manifest['n_examples']} examples into {k} phases ({sizes}) by {method}{excluded} -> "
                      f"{run.phases_manifest}")
    return manifest


def write_phases(run, phases: Sequence[Sequence[Example]], controls: Mapping[str, ControlBuilder], *, scorer: str,
                 method: str, thresholds: Sequence[float] | None, seed: int, n_failed: int = 0,
                 n_unscored: int = 0) -> dict:
    """Write phases that are already split (`split_into_phases`, or `phased_ift.split` of the Python API) as the
    split step does: phases/phase_<k>.jsonl, the control files of `controls`, then phases/manifest.json (last).

    Args:
        run: the `RunDir`.
        phases: K lists of Examples, easy -> hard, each example with meta["score"] (`phase_stats` reads it).
        controls: {arm name: builder}, as for `write_split`.
        scorer, method, thresholds, seed: how the phases were made, recorded in the manifest (`write_split`
            skips its work when they match the config).
        n_failed, n_unscored: examples left out because their scoring failed / they had no score row.

    Returns:
        The manifest dict (format in docs/architecture.md).

    Raises:
        KeyError: an example without meta["score"] (a programming error: phases come from a split).
    """
    return _write_manifest(run, phases, controls, None, scorer=scorer, method=method, thresholds=thresholds,
                           seed=seed, n_failed=n_failed, n_unscored=n_unscored)


def _write_manifest(run, phases: Sequence[Sequence[Example]], controls: Mapping[str, ControlBuilder],
                    full: Callable[[Example], bytes] | None, *, scorer: str, method: str,
                    thresholds: Sequence[float] | None, seed: int, n_failed: int, n_unscored: int) -> dict:
    """`write_phases` with `full` (see `_write_phase_files`): the phase files, control files, then the manifest."""
    manifest = {
        "method": method, "k": len(phases), "thresholds": list(thresholds or []), "seed": seed, "scorer": scorer,
        "n_examples": sum(len(p) for p in phases), "n_failed_scores": n_failed, "n_unscored": n_unscored,
        "phases": [], "controls": {},
    }
    _write_phase_files(run, [list(p) for p in phases], controls, seed, manifest, full)
    atomic_write_json(run.phases_manifest, manifest, indent=2)
    return manifest


def read_manifest(run) -> dict:
    """phases/manifest.json of a run dir (format in docs/architecture.md): the one parser of the manifest.

    Raises:
        PhasedIFTError: the split has not run (no manifest) or the manifest is not JSON.
    """
    path = run.phases_manifest
    if not path.is_file():
        raise PhasedIFTError(f"{path} does not exist; run `phased-ift split CONFIG` first.")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise PhasedIFTError(f"{path} is not valid JSON ({e}); delete it and re-run `phased-ift split CONFIG`."
                             ) from None
