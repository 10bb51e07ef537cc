"""The experiment design: arm registry, phase data per arm, schedules, the grid and judge jobs."""

from __future__ import annotations

import pytest

from phased_ift.config import Config, config_from_dict
from phased_ift.data import Example, write_examples
from phased_ift.design import (ARMS, Arm, Cell, JudgeJob, assumed_phases, baseline_arm, controls, evaluation_cells,
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
    with pytest.raises(PhasedIFTError, match="judge.pairs names arm 'reverse', which is not in train.arms"):
        judge_jobs(_cfg(tmp_path, train={"arms": ["phased", "one-off"]}, judge={"pairs": [["reverse", "one-off"]]}))
    with pytest.raises(PhasedIFTError, match="cannot be judged against itself"):
        judge_jobs(_cfg(tmp_path, train={"arms": ["phased", "one-off"]}, judge={"pairs": [["phased", "phased"]]}))


def test_controls_and_assumed_phases():
    assert set(controls(["phased", "one-off", "random", "reverse"])) == {"random", "reverse"}
    data = [_ex(i) for i in range(10)]
    assert [len(p) for p in assumed_phases(data, 3)] == [4, 4, 2]
