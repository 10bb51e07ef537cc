"""The sequential mix: which sequential examples join the training set, which original each one replaces, and
what each arm trains on.

With `sit.source` set, the data step writes data/train.jsonl = the N originals + S = round(sit.ratio x N)
sequential examples (`mix_into`; `mix_stream`, the data step's, passes the originals through one at a time when the
pool comes from a file). Each sequential example carries `meta["sequential"]` ("offline", "llm" or
"file") and `meta["replaces"]`: the id of the one original it stands in for (its first source when that is an
original of the run not taken yet, else a seeded pick among the rest). Everything after the data step sees all
N + S: the score step scores the sequential examples like every other example and the split places them by
difficulty (the manifest counts them per phase, `phase_mix_counts`).

At training time each arm takes its view of the phases (`arm_phases`, called by `design.Arm.assemble`):
  * an arm with `Arm.mix` (`sit`, `sit-phased`): every sequential example, and every original except the replaced
    ones: N examples, of which S are sequential, so its budget in example-epochs is one-off's (replace, not add);
  * every other arm: the originals only, exactly the examples (and, for one-off, the order) of a run without SIT.
A sequential example whose scoring failed is left out of the split, and then its original is not replaced.

Sources of the pool (`sit.source`): "offline" (`sit.compose`), "generated" (<run_dir>/sit/sequential.jsonl of
`phased-ift sit-generate`) or a file in any readable format (e.g. an earlier run's sit/sequential.jsonl, or the
SIT data in Alpaca format); a pool larger than S is sampled (seeded, data order kept), a smaller one is used whole
and the shortfall is said.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Iterator, Sequence

from phased_ift.config import SitConfig
from phased_ift.data import Example, read_examples, read_file, unique_id
from phased_ift.errors import PhasedIFTError
from phased_ift.rundir import RunDir
from phased_ift.sit.compose import compose
from phased_ift.stats import round_half_up

SOURCES = ("none", "offline", "generated")  # or a file path


def is_sequential(e: Example) -> bool:
    """Whether an example is a sequential one of the mix (`meta["sequential"]` set)."""
    return bool(e.meta.get("sequential"))


def mix_size(n_original: int, ratio: float) -> int:
    """S, the sequential examples in a mix of n originals: round(ratio x n), halves up."""
    return round_half_up(ratio * n_original)


def sequential_pool(sit: SitConfig, originals: Sequence[Example], run: RunDir
                    ) -> tuple[list[Example], list[dict[str, Any]]]:
    """(candidate sequential examples, rejects of a pool file) for `sit.source`.

    Raises:
        PhasedIFTError: source "generated" before `phased-ift sit-generate` wrote sit/sequential.jsonl; an
            unreadable pool file.
    """
    if sit.source == "offline":
        return compose(originals, mix_size(len(originals), sit.ratio), sit.kind, sit.iterations, sit.seed), []
    if sit.source == "generated":
        path = run.sit("sequential.jsonl")
        if not path.is_file():
            raise PhasedIFTError(f"sit.source=generated but {path} does not exist; run `phased-ift sit-generate "
                                 f"CONFIG` first (it needs sit.generator.base_url and sit.generator.model).")
        return read_examples(path), []
    result = read_file(sit.source, "auto", source=sit.source)
    pool = [e if is_sequential(e) else replace(e, meta={**e.meta, "sequential": "file"}) for e in result.examples]
    return pool, result.rejects


def _unique_ids(pool: list[Example], taken: set[str]) -> list[Example]:
    """Pool examples with ids that clash with the originals' (or each other's) prefixed "sit:" (then "#2", ...)."""
    out = []
    for e in pool:
        rid = unique_id(e.id, taken, "sit")
        out.append(e if rid == e.id else replace(e, id=rid))
    return out


def assign_replacements(originals: Sequence[Example] | Sequence[str], chosen: Sequence[Example], seed: int
                        ) -> list[Example]:
    """Copies of `chosen` with `meta["replaces"]`: one distinct original each (see the module docstring).

    Args:
        originals: the originals, or their ids (all it reads).

    Raises:
        ValueError: more sequential examples than originals (the caller caps S at N).
    """
    ids = [e if isinstance(e, str) else e.id for e in originals]
    known, taken = set(ids), set()
    picks: list[str | None] = []
    for e in chosen:
        first = next((s for s in e.meta.get("source_ids") or [] if s in known and s not in taken), None)
        picks.append(first)
        if first is not None:
            taken.add(first)
    free = [i for i in ids if i not in taken]
    random.Random(f"sit-mix:{seed}").shuffle(free)
    if sum(p is None for p in picks) > len(free):
        raise ValueError("more sequential examples than originals to replace")
    return [replace(e, meta={**e.meta, "replaces": p if p is not None else free.pop()}) for e, p in zip(chosen, picks)]


def mix_into(originals: list[Example], sit: SitConfig, run: RunDir
             ) -> tuple[list[Example], list[dict[str, Any]], str]:
    """The data step's training set with the sequential mix: (originals + S sequential examples, rejects of the
    pool file, one line saying what was mixed in).

    sit.source = none: the originals, no rejects, no line.

    Raises:
        PhasedIFTError: see `sequential_pool`; a pool without any usable example.
    """
    if sit.source == "none":
        return list(originals), [], ""
    pool, rejects = sequential_pool(sit, originals, run)
    chosen, note = _choose(pool, rejects, [e.id for e in originals], sit)
    return list(originals) + chosen, rejects, note


@dataclass
class MixStream:
    """What `mix_stream` found, complete once its examples are exhausted: the pool file's rejects and the line
    saying what was mixed in ("" with sit.source none or without originals)."""

    rejects: list[dict[str, Any]] = field(default_factory=list)
    note: str = ""


def mix_stream(originals: Iterable[Example], sit: SitConfig, run: RunDir) -> tuple[Iterator[Example], MixStream]:
    """`mix_into` as a stream, for the data step: (the originals one at a time, then the S sequential examples;
    the MixStream filled at the end). A pool from a file or from sit-generate needs only the originals' ids, so
    the originals pass through one at a time; sit.source=offline composes its examples from the originals' texts
    and holds them all (as `mix_into`). The same examples, in the same order, as `mix_into`.

    Raises (while iterating):
        PhasedIFTError: see `mix_into`.
    """
    found = MixStream()

    def examples() -> Iterator[Example]:
        if sit.source == "none":
            yield from originals
            return
        if sit.source == "offline":
            held = list(originals)
            if not held:
                return
            mixed, found.rejects, found.note = mix_into(held, sit, run)
            yield from mixed
            return
        ids = []
        for e in originals:
            ids.append(e.id)
            yield e
        if ids:
            pool, found.rejects = sequential_pool(sit, (), run)
            chosen, found.note = _choose(pool, found.rejects, ids, sit)
            yield from chosen

    return examples(), found


def _choose(pool: list[Example], rejects: list[dict[str, Any]], ids: Sequence[str], sit: SitConfig
            ) -> tuple[list[Example], str]:
    """(the S sequential examples of the pool with their `replaces`, the note) for originals with these ids."""
    target = min(mix_size(len(ids), sit.ratio), len(ids))
    if not pool:
        raise PhasedIFTError(f"sit.source={sit.source}: no sequential example to mix in ({len(rejects)} records "
                             f"rejected). Check the source, or set sit.source=offline.")
    if len(pool) > target:
        keep = sorted(random.Random(f"sit-pool:{sit.seed}").sample(range(len(pool)), target))
        pool = [pool[i] for i in keep]
    chosen = assign_replacements(ids, _unique_ids(pool, set(ids)), sit.seed)
    short = (f"; the pool had only {len(chosen)} of the {target} asked for (share "
             f"{len(chosen) / max(len(ids), 1):.1%})") if len(chosen) < target else ""
    note = (f"\nsit: {len(chosen)} sequential examples ({sit.source}) mixed into {len(ids)} originals, ratio "
            f"{sit.ratio:g}{short}; each replaces one original for the arms that train on the mix (sit, "
            f"sit-phased), the other arms drop them")
    return chosen, note


def arm_phases(phases: Sequence[Sequence[Example]], mix: bool) -> list[list[Example]]:
    """An arm's view of phase data (see the module docstring): with `mix`, the sequential examples and the
    originals they do not replace; without, the originals only. Phase order and order inside phases are kept."""
    if not mix:
        return [[e for e in ph if not is_sequential(e)] for ph in phases]
    replaced = {e.meta.get("replaces") for ph in phases for e in ph if is_sequential(e)}
    return [[e for e in ph if e.id not in replaced] for ph in phases]


def phase_mix_counts(phases: Sequence[Sequence[Example]]) -> list[dict[str, int]]:
    """Per phase: {"sequential": sequential examples in it, "replaced": its originals that a sequential example of
    the split replaces}. A mix arm's phase k has count - replaced examples, `sequential` of them sequential."""
    replaced = {e.meta.get("replaces") for ph in phases for e in ph if is_sequential(e)}
    return [{"sequential": sum(is_sequential(e) for e in ph), "replaced": sum(e.id in replaced for e in ph)}
            for ph in phases]
