"""Phases: thresholds/quantiles split, controls, empty-phase errors, the split step's files and manifest."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from phased_ift.config import config_from_dict
from phased_ift.data import Example, read_examples, write_examples
from phased_ift.errors import PhasedIFTError
from phased_ift.phases.split import random_control, reverse_control, split_into_phases
from phased_ift.rundir import RunDir
from phased_ift.runio import write_jsonl


def _examples(n: int) -> list[Example]:
    return [Example(f"e{i}", [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}])
            for i in range(n)]


def test_thresholds_follow_the_paper_boundaries():
    ex = _examples(6)
    scores = {"e0": 1.0, "e1": 2.49, "e2": 2.5, "e3": 3.49, "e4": 3.5, "e5": 5.0}
    phases = split_into_phases(ex, scores, 3, "thresholds", [2.5, 3.5])
    assert [[e.id for e in ph] for ph in phases] == [["e0", "e1"], ["e2", "e3"], ["e4", "e5"]]
    assert phases[2][0].meta["score"] == 3.5
    assert "score" not in ex[0].meta  # inputs are not mutated


def test_quantiles_equal_size_and_deterministic_ties():
    ex = _examples(10)
    scores = {e.id: 3.0 for e in ex}  # all tied: the split must not depend on the input order
    a = split_into_phases(ex, scores, 3, "quantiles", seed=1)
    b = split_into_phases(list(reversed(ex)), scores, 3, "quantiles", seed=1)
    c = split_into_phases(ex, scores, 3, "quantiles", seed=2)
    assert [len(p) for p in a] == [4, 3, 3]
    assert [[e.id for e in p] for p in a] == [[e.id for e in p] for p in b]
    assert [[e.id for e in p] for p in a] != [[e.id for e in p] for p in c]


def test_quantiles_are_ordered_by_score():
    ex = _examples(9)
    scores = {f"e{i}": float(9 - i) for i in range(9)}
    phases = split_into_phases(ex, scores, 3, "quantiles")
    assert [sorted(e.meta["score"] for e in p) for p in phases] == [[1, 2, 3], [4, 5, 6], [7, 8, 9]]


def test_empty_phase_names_phase_range_and_fix():
    ex = _examples(4)
    scores = {e.id: 4.0 for e in ex}
    with pytest.raises(PhasedIFTError) as err:
        split_into_phases(ex, scores, 3, "thresholds", [2.5, 3.5])
    msg = str(err.value)
    assert "phase 1 of 3" in msg and "[-inf, 2.5)" in msg and "quantiles" in msg and "from 4 to 4" in msg
    with pytest.raises(PhasedIFTError, match="phase 3 of 3"):
        split_into_phases(_examples(2), {"e0": 1, "e1": 2}, 3, "quantiles")


def test_missing_score_and_bad_thresholds_raise():
    with pytest.raises(PhasedIFTError, match="no score"):
        split_into_phases(_examples(3), {"e0": 1.0}, 1, "quantiles")
    with pytest.raises(PhasedIFTError, match="2 increasing thresholds"):
        split_into_phases(_examples(3), {f"e{i}": 1.0 for i in range(3)}, 3, "thresholds", [3.5, 2.5])


def test_random_control_keeps_sizes_and_union_reverse_flips():
    ex = _examples(30)
    scores = {e.id: float(i) for i, e in enumerate(ex)}
    phases = split_into_phases(ex, scores, 3, "quantiles")
    rnd = random_control(phases, seed=0)
    assert [len(p) for p in rnd] == [len(p) for p in phases]
    assert Counter(e.id for p in rnd for e in p) == Counter(e.id for p in phases for e in p)
    assert [e.id for e in rnd[0]] != [e.id for e in phases[0]]
    assert [e.id for e in random_control(phases, seed=0)[0]] == [e.id for e in rnd[0]]
    rev = reverse_control(phases)
    assert [e.meta["score"] for e in rev[0]][:2] == [29.0, 28.0]
    assert [e.meta["score"] for e in rev[2]][-1] == 0.0


def test_step_split_writes_phases_controls_manifest_and_counts_failures(tmp_path):
    from phased_ift.pipeline import step_split

    run = RunDir(tmp_path / "run")
    ex = _examples(12)
    write_examples(run.train_data, ex)
    rows = [{"id": e.id, "score": float(i % 4) + 1, "error": None} for i, e in enumerate(ex)]
    rows[5] = {"id": "e5", "score": None, "error": "judge reply unparseable"}
    del rows[7]  # e7 has no score row at all
    write_jsonl(run.scores("meta"), rows)
    cfg = config_from_dict({"run_dir": str(run.root), "scoring": {"scorer": "meta"},
                            "phases": {"k": 2, "method": "thresholds", "thresholds": [2.5]},
                            "train": {"arms": ["phased", "random", "reverse"]}})
    step_split(cfg)
    manifest = json.loads(run.phases_manifest.read_text())
    assert manifest["n_examples"] == 10 and manifest["n_failed_scores"] == 1 and manifest["n_unscored"] == 1
    assert [p["count"] for p in manifest["phases"]] == [5, 5]
    assert manifest["phases"][0]["score_max"] == 2.0 and manifest["phases"][1]["score_min"] == 3.0
    assert set(manifest["controls"]) == {"random", "reverse"}
    p1 = read_examples(run.phase_file(1))
    assert all(e.meta["score"] <= 2 for e in p1) and "e5" not in {e.id for e in p1}
    assert [e.id for e in read_examples(run.phase_file(1, "reverse"))] == \
        [e.id for e in reversed(read_examples(run.phase_file(2)))]
    assert (run.root / manifest["controls"]["random"][1]["file"]).is_file()
    # idempotent: a second call leaves the files alone
    mtime = run.phases_manifest.stat().st_mtime_ns
    step_split(cfg)
    assert run.phases_manifest.stat().st_mtime_ns == mtime
