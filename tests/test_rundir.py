"""RunDir: paths from (arm, seed, phase, test set) and back (`locate`, the iterators over what is on disk)."""

from __future__ import annotations

import pytest

from phased_ift.rundir import Location, RunDir


def touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{}\n")
    return path


def test_locate_inverts_every_path_builder(tmp_path):
    run = RunDir(tmp_path / "run")
    ck = run.checkpoint("phased", 3, seed=2)
    assert run.locate(ck) == Location("checkpoint", "phased", 2, 3, path=ck)
    inside = ck / "losses.jsonl"
    assert run.locate(inside) == Location("checkpoint", "phased", 2, 3, path=inside)
    g = run.generations("one-off", 1, "vicuna", seed=-1)
    assert run.locate(g) == Location("generation", "one-off", -1, 1, "vicuna", path=g)
    final = run.judgements("phased", "one-off", "koala", seed=0)
    assert run.locate(final) == Location("judgement", "phased", 0, None, "koala", "one-off", final)
    trend = run.judgements("reverse", "phased", "oasst", seed=1, phase=2)
    assert run.locate(trend) == Location("judgement", "reverse", 1, 2, "oasst", "phased", trend)
    ev = run.evaluation("random", 2, seed=4)
    assert run.locate(ev) == Location("evaluation", "random", 4, 2, path=ev)
    b = run.benchmark("ifeval", "random", 2, seed=4)  # a benchmark's file: located with the benchmark's name
    assert b == run.root / "evaluation" / "random" / "seed_4" / "phase_2" / "ifeval.json"
    assert run.locate(b) == Location("evaluation", "random", 4, 2, "ifeval", path=b)
    gr = run.grades("phased", 3, "mt_bench", seed=1)
    assert gr == run.root / "grades" / "phased" / "seed_1" / "phase_3" / "mt_bench.jsonl"
    assert run.locate(gr) == Location("grade", "phased", 1, 3, "mt_bench", path=gr)
    # and back: the located fields rebuild the same path
    for p in (g, final, trend):
        loc = run.locate(p)
        if loc.kind == "generation":
            assert run.generations(loc.arm, loc.phase, loc.testset, loc.seed) == p
        else:
            assert run.judgements(loc.arm, loc.arm_b, loc.testset, loc.seed, loc.phase) == p


@pytest.mark.parametrize("rel", ["config.yaml", "phases/phase_1.jsonl", "checkpoints/phased/seed_x/phase_1",
                                 "checkpoints/phased/seed_0", "generations/phased/seed_0/phase_1/v.json",
                                 "judgements/phased-one-off/seed_0/v.jsonl", "evaluation/phased/seed_0/phase_1/x.txt",
                                 "grades/phased/seed_0/phase_1/mt_bench.json", "grades/phased/seed_0/mt_bench.jsonl",
                                 "report/summary.json"])
def test_locate_refuses_paths_outside_the_layout(tmp_path, rel):
    run = RunDir(tmp_path)
    with pytest.raises(ValueError, match="is not a checkpoint, generation, judgement, evaluation or grade path"):
        run.locate(tmp_path / rel)
    with pytest.raises(ValueError, match="not inside the run dir"):
        run.locate(tmp_path.parent / "elsewhere" / "checkpoints" / "a" / "seed_0" / "phase_1")


def test_iterators_list_what_is_on_disk_in_report_order(tmp_path):
    run = RunDir(tmp_path)
    for arm, seed, k in [("phased", 10, 1), ("phased", 2, 2), ("phased", 2, 10), ("phased", 2, 1), ("one-off", 0, 1)]:
        touch(run.checkpoint(arm, k, seed) / "losses.jsonl")
        touch(run.generations(arm, k, "vicuna", seed))
        touch(run.generations(arm, k, "koala", seed))
        touch(run.evaluation(arm, k, seed))
    touch(run.checkpoint("phased", 1, 0) / "trainer" / "checkpoint-1" / "x")  # not a cell of its own
    (run.root / "checkpoints" / "phased" / "notes").mkdir()  # ignored: not seed_<int>
    touch(run.generations("phased", 1, "vicuna", 0).with_name("vicuna.settings.json"))  # not a generation file
    cells = [(c.arm, c.seed, c.phase) for c in run.checkpoint_cells()]
    # arm names sorted, then seed dir names as `sorted` orders them (seed_10 < seed_2), then phase numbers
    assert cells == [("one-off", 0, 1), ("phased", 0, 1), ("phased", 10, 1), ("phased", 2, 1), ("phased", 2, 2),
                     ("phased", 2, 10)]
    assert all(c.kind == "checkpoint" and c.path == run.checkpoint(c.arm, c.phase, c.seed)
               for c in run.checkpoint_cells())
    gens = [(g.arm, g.seed, g.phase, g.testset) for g in run.generation_files()]
    assert gens[:3] == [("one-off", 0, 1, "koala"), ("one-off", 0, 1, "vicuna"), ("phased", 10, 1, "koala")]
    assert len(gens) == 10
    assert all(g.kind == "generation" and g.path == run.generations(g.arm, g.phase, g.testset, g.seed)
               for g in run.generation_files())
    evs = [(e.arm, e.seed, e.phase) for e in run.evaluation_files()]
    assert evs == [c for c in cells if c != ("phased", 0, 1)]
    for arm, seed, k in [("phased", 2, 10), ("phased", 2, 1), ("one-off", 0, 1)]:
        touch(run.grades(arm, k, "mt_bench", seed))
    grades = [(g.kind, g.arm, g.seed, g.phase, g.testset) for g in run.grade_files()]
    assert grades == [("grade", "one-off", 0, 1, "mt_bench"), ("grade", "phased", 2, 1, "mt_bench"),
                      ("grade", "phased", 2, 10, "mt_bench")]


def test_judgement_files_final_first_then_phases(tmp_path):
    run = RunDir(tmp_path)
    for seed in (1, 0):
        for phase in (2, None, 1):
            for ts in ("vicuna", "koala"):
                touch(run.judgements("phased", "one-off", ts, seed, phase))
    touch(run.judgements("random", "one-off", "vicuna", 0))
    got = [(j.arm, j.arm_b, j.seed, j.phase, j.testset) for j in run.judgement_files()]
    assert got[:7] == [("phased", "one-off", 0, None, "koala"), ("phased", "one-off", 0, None, "vicuna"),
                       ("phased", "one-off", 0, 1, "koala"), ("phased", "one-off", 0, 1, "vicuna"),
                       ("phased", "one-off", 0, 2, "koala"), ("phased", "one-off", 0, 2, "vicuna"),
                       ("phased", "one-off", 1, None, "koala")]
    assert got[-1] == ("random", "one-off", 0, None, "vicuna") and len(got) == 13
    assert all(run.judgements(j.arm, j.arm_b, j.testset, j.seed, j.phase) == j.path for j in run.judgement_files())


def test_an_empty_run_dir_has_nothing(tmp_path):
    run = RunDir(tmp_path / "missing")
    assert run.checkpoint_cells() == run.generation_files() == run.judgement_files() == []
    assert run.evaluation_files() == run.agreement_files() == []


def test_agreement_files(tmp_path):
    run = RunDir(tmp_path)
    b = touch(run.agreement_dir / "sample10_seed0" / "agreement.json")
    a = touch(run.agreement_dir / "full" / "agreement.json")
    c = touch(run.root / "scores" / "agreement_x.json")
    touch(run.root / "scores" / "judge.jsonl")
    assert run.agreement_files() == [a, b, c]
