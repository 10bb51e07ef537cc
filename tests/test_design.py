"""The experiment design: arm registry, phase data per arm, schedules, the grid and judge jobs."""

from __future__ import annotations

import pytest

from phased_ift.config import Config, config_from_dict
from phased_ift.data import Example, write_examples
from phased_ift.phases.design import (ARMS, Arm, Cell, JudgeJob, assumed_phases, baseline_arm, controls, evaluation_cells,
                               final_phase, get_arm, judge_jobs, phase_count, register_arm, training_cells)
from phased_ift.errors import PhasedIFTError
from phased_ift.rundir import RunDir


def _cfg(tmp_path, **sections) -> Config:
    d = {"run_dir": str(tmp_path / "run"), "phases": {"k": 3}}
    d.update(sections)
    return config_from_dict(d)


def _ex(i: int) -> Example:
    return Example(f"e{i}", [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}])


def _write_split(run: RunDir, k: int = 3, per: int = 4, with_controls=("random",)) -> list[list[Example]]:
    phases = [[_ex(10 * i + j) for j in range(per)] for i in range(1, k + 1)]
    for i, ph in enumerate(phases, 1):
        write_examples(run.phase_file(i), ph)
        for c in with_controls:
            write_examples(run.phase_file(i, c), list(reversed(ph)))
    run.phases_manifest.write_text(f'{{"k": {k}}}', encoding="utf-8")
    return phases


def test_registry_refuses_duplicates_and_a_second_baseline():
    with pytest.raises(ValueError, match="already registered"):
        register_arm(Arm("phased", "again", "nowhere"))
    with pytest.raises(ValueError, match="baseline"):
        register_arm(Arm("another-baseline", "x", "y", baseline=True))
    assert "another-baseline" not in ARMS
    with pytest.raises(PhasedIFTError, match="unknown arm 'nope'; known arms: phased, one-off"):
        get_arm("nope")


def test_phase_data_per_arm(tmp_path):
    run = RunDir(tmp_path / "run")
    phases = _write_split(run)
    assert [[e.id for e in ph] for ph in ARMS["phased"].phase_data(run, 3)] == [[e.id for e in ph] for ph in phases]
    assert [[e.id for e in ph] for ph in ARMS["random"].phase_data(run, 3)] == \
        [[e.id for e in reversed(ph)] for ph in phases]
    union = ARMS["one-off"].phase_data(run, 3, seed=0)
    assert len(union) == 1 and sorted(e.id for e in union[0]) == sorted(e.id for ph in phases for e in ph)
    assert [e.id for e in union[0]] != [e.id for ph in phases for e in ph]  # shuffled
    assert [e.id for e in ARMS["one-off"].phase_data(run, 3, seed=0)[0]] == [e.id for e in union[0]]  # seeded
    assert [e.id for e in ARMS["one-off"].phase_data(run, 3, seed=1)[0]] != [e.id for e in union[0]]
    with pytest.raises(PhasedIFTError, match=r"reverse/phase_1.jsonl does not exist; re-run `phased-ift split` "
                                             r"with `reverse`"):
        ARMS["reverse"].phase_data(run, 3)


def test_schedule_applies_per_phase_values_to_phased_arms_only(tmp_path):
    cfg = _cfg(tmp_path, train={"epochs": 2, "learning_rate": 1e-4, "phase_epochs": [1, 2, 3],
                                "phase_learning_rates": [3e-4, 2e-4, 1e-4]})
    assert ARMS["phased"].schedule(cfg.train, 2) == (2.0, 2e-4)
    assert ARMS["reverse"].schedule(cfg.train, 3) == (3.0, 1e-4)
    assert ARMS["one-off"].schedule(cfg.train, 1) == (2.0, 1e-4)
    plain = _cfg(tmp_path, train={"epochs": 1.5, "learning_rate": 5e-5})
    assert ARMS["phased"].schedule(plain.train, 3) == (1.5, 5e-5)


def test_grid_phase_count_from_manifest_else_config(tmp_path):
    cfg = _cfg(tmp_path, train={"arms": ["phased", "one-off"], "seeds": [0, 1]})
    run = RunDir(cfg.run_dir)
    assert phase_count(cfg, run) == 3  # no manifest yet: phases.k
    assert training_cells(cfg, run) == [Cell("phased", s, p, p == 3) for s in (0, 1) for p in (1, 2, 3)] + \
        [Cell("one-off", s, 1, True) for s in (0, 1)]
    assert evaluation_cells(cfg, run) == [Cell("phased", 0, 3, True), Cell("phased", 1, 3, True),
                                          Cell("one-off", 0, 1, True), Cell("one-off", 1, 1, True)]
    _write_split(run, k=2, with_controls=())
    assert phase_count(cfg, run) == 2 and final_phase(cfg, "phased", run) == 2 and final_phase(cfg, "one-off", run) == 1
    every = _cfg(tmp_path, train={"arms": ["phased"]}, generate={"every_phase": True})
    assert [c.phase for c in evaluation_cells(every)] == [1, 2, 3]


def test_judge_jobs_default_pairs_against_the_baseline(tmp_path):
    cfg = _cfg(tmp_path, train={"arms": ["phased", "one-off", "random"], "seeds": [0]},
               generate={"every_phase": True})
    jobs = judge_jobs(cfg)
    assert jobs[:4] == [JudgeJob("phased", "one-off", 0, 3, 1, None)] + \
        [JudgeJob("phased", "one-off", 0, k, 1, k) for k in (1, 2, 3)]
    assert {(j.arm_a, j.arm_b) for j in jobs} == {("phased", "one-off"), ("random", "one-off")}
    assert baseline_arm(["reverse", "phased"]) == "reverse"  # no baseline trained: the first arm
    with pytest.raises(PhasedIFTError, match="pairwise.pairs names arm 'reverse', which is not in train.arms"):
        judge_jobs(_cfg(tmp_path, train={"arms": ["phased", "one-off"]}, pairwise={"pairs": [["reverse", "one-off"]]}))
    with pytest.raises(PhasedIFTError, match="cannot be judged against itself"):
        judge_jobs(_cfg(tmp_path, train={"arms": ["phased", "one-off"]}, pairwise={"pairs": [["phased", "phased"]]}))


def test_controls_and_assumed_phases():
    assert set(controls(["phased", "one-off", "random", "reverse"])) == {"random", "reverse"}
    data = [_ex(i) for i in range(10)]
    assert [len(p) for p in assumed_phases(data, 3)] == [4, 4, 2]


# ---- the arms that separate the causes: permutations, sorted, replay --------------------------------------------


def _scored(i: int, score: float) -> Example:
    e = _ex(i)
    return Example(e.id, e.messages, {"score": score})


def _write_scored_split(run: RunDir, k: int = 3, per: int = 4) -> list[list[Example]]:
    """Phase i holds examples 10i..10i+per-1 with scores i + j/10 (ties across phases: none; in-phase: sorted)."""
    phases = [[_scored(10 * i + j, i + (j // 2) / 10) for j in range(per)] for i in range(1, k + 1)]
    for i, ph in enumerate(phases, 1):
        write_examples(run.phase_file(i), ph)
    run.phases_manifest.write_text(f'{{"k": {k}}}', encoding="utf-8")
    return phases


def test_permutations_expand_to_every_order_of_three_phases_exactly_once(tmp_path):
    import itertools
    import re

    cfg = _cfg(tmp_path, train={"arms": ["one-off", "permutations"]})
    arms = cfg.train.arms
    assert arms[0] == "one-off" and len(arms) == 1 + 6 and arms[1] == "phased"  # identity order = phased
    assert all(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", a) and "__" not in a for a in arms)
    run = RunDir(cfg.run_dir)
    phases = _write_scored_split(run)
    origin = {e.id: k for k, ph in enumerate(phases, 1) for e in ph}
    orders = []
    for arm in arms[1:]:
        data = get_arm(arm).phase_data(run, 3, seed=0, train=cfg.train)
        assert [[e.id for e in ph] for ph in data] == [[e.id for e in phases[origin[ph[0].id] - 1]] for ph in data]
        orders.append(tuple(origin[ph[0].id] for ph in data))
        assert [p.name for p in get_arm(arm).phase_files(run, 3)] == [f"phase_{i}.jsonl" for i in orders[-1]]
        assert training_cells(cfg, run)[-1].phase == 3
    assert sorted(orders) == sorted(itertools.permutations((1, 2, 3))) and len(set(orders)) == 6
    assert "order-2-1-3" in arms and get_arm("order-2-1-3").phase_order == (2, 1, 3)
    assert controls(arms) == {}  # the order arms read the phased files


def test_permutations_refuse_more_than_four_phases_and_order_arms_are_checked(tmp_path):
    with pytest.raises(PhasedIFTError, match=r"`permutations`.*120 arms for phases.k=5.*refused above phases.k=4 "
                                             r"\(24 arms\)\. Fix: set phases.k <= 4, or list the orders"):
        _cfg(tmp_path, phases={"k": 5}, train={"arms": ["permutations"]})
    assert len(_cfg(tmp_path, phases={"k": 4}, train={"arms": ["permutations"]}).train.arms) == 24
    five = _cfg(tmp_path, phases={"k": 5}, train={"arms": ["phased", "order-5-4-3-2-1"]})  # named orders: fine
    assert five.train.arms == ["phased", "order-5-4-3-2-1"]
    with pytest.raises(PhasedIFTError, match=r"'order-2-1-3' orders 3 phases but the split has 4"):
        _cfg(tmp_path, phases={"k": 4}, train={"arms": ["order-2-1-3"]})
    with pytest.raises(PhasedIFTError, match=r"'order-1-2-3' is the phases in their own order.*name `phased`"):
        _cfg(tmp_path, train={"arms": ["order-1-2-3"]})
    with pytest.raises(PhasedIFTError, match=r"train.arms\[0\] = 'order-1-1-3' is not one of"):
        _cfg(tmp_path, train={"arms": ["order-1-1-3"]})
    with pytest.raises(ValueError, match="not path-safe"):
        register_arm(Arm("a/b", "x", "y"))


def test_expanded_arms_round_trip_through_the_saved_config(tmp_path):
    import yaml

    from phased_ift.config import config_to_dict

    cfg = _cfg(tmp_path, train={"arms": ["phased", "permutations", "sorted"]})
    again = config_from_dict(yaml.safe_load(yaml.safe_dump(config_to_dict(cfg))))
    assert again.train.arms == cfg.train.arms and len(cfg.train.arms) == 7  # phased once, then 5 orders, sorted


def test_sorted_arm_is_one_phase_monotone_in_difficulty_with_the_split_ties(tmp_path):
    cfg = _cfg(tmp_path, train={"arms": ["sorted"]})
    run = RunDir(cfg.run_dir)
    phases = _write_scored_split(run, per=4)
    (data,) = get_arm("sorted").phase_data(run, 3, seed=7, train=cfg.train)
    scores = [e.meta["score"] for e in data]
    assert scores == sorted(scores) and len(data) == 12
    assert [e.id for e in data] == [e.id for ph in phases for e in ph]  # ties keep the split's (file) order
    assert get_arm("sorted").phase_data(run, 3, seed=1, train=cfg.train)[0] == data  # no seed: never shuffled
    arm = get_arm("sorted")
    assert arm.sampler == "sequential" and arm.n_phases(3) == 1 and arm.schedule(cfg.train, 1) == (1.0, 2e-4)
    with pytest.raises(PhasedIFTError, match=r"train.batching=packing .* \['sorted'\].*use train.batching=bucket"):
        _cfg(tmp_path, train={"arms": ["sorted"], "batching": "packing"})


def test_replay_adds_a_seeded_fraction_of_the_earlier_phases(tmp_path):
    from phased_ift.phases.split import replay_count

    cfg = _cfg(tmp_path, train={"arms": ["replay"], "replay_ratio": 0.3})
    run = RunDir(cfg.run_dir)
    phases = _write_scored_split(run, per=5)
    data = get_arm("replay").phase_data(run, 3, seed=0, train=cfg.train)
    assert replay_count(0.3, 5) == 2 and replay_count(0.3, 10) == 3 and replay_count(0.25, 2) == 1  # halves up
    assert [len(ph) for ph in data] == [5, 5 + 2, 5 + 3]
    for k, ph in enumerate(data):
        own = [e.id for e in phases[k]]
        assert [e.id for e in ph[:5]] == own
        extra = [e.id for e in ph[5:]]
        earlier = {e.id for p in phases[:k] for e in p}
        assert set(extra) <= earlier and len(set(extra)) == len(extra)  # from phases < k, none duplicated
        assert len({e.id for e in ph}) == len(ph)
    same = get_arm("replay").phase_data(run, 3, seed=0, train=cfg.train)
    assert [[e.id for e in ph] for ph in same] == [[e.id for e in ph] for ph in data]
    draws = {tuple(e.id for ph in get_arm("replay").phase_data(run, 3, seed=s, train=cfg.train) for e in ph)
             for s in range(5)}
    assert len(draws) > 1  # another seed, another draw
    zero = _cfg(tmp_path, train={"arms": ["replay"], "replay_ratio": 0.0})
    assert [len(p) for p in get_arm("replay").phase_data(run, 3, 0, zero.train)] == [5, 5, 5]
    for bad in (1.0, -0.1):
        with pytest.raises(PhasedIFTError, match=r"train.replay_ratio must be in \[0, 1\)"):
            _cfg(tmp_path, train={"replay_ratio": bad})
    with pytest.raises(PhasedIFTError, match=r"train.competence_c0 in \(0, 1\]"):
        _cfg(tmp_path, train={"competence_c0": 0.0})
