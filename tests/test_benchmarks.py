"""The benchmark registry (`evals.BENCHMARKS`): adding a benchmark is its name in `config_choices.BENCHMARKS`, one
module with its `Benchmark`, one registration and its tests (docs/architecture.md's recipe). A toy benchmark added
exactly that way runs in the evaluate step and reaches the summary, the report, the verdict lines and the answer,
with no other file edited."""

from __future__ import annotations

import json

import pytest
from grading_helpers import write_generation
from rich.console import Console

from phased_ift import config_choices as choices
from phased_ift.blocks import fmt_num, table
from phased_ift.config import config_from_dict
from phased_ift.phases.design import evaluation_cells
from phased_ift.errors import PhasedIFTError
from phased_ift.evals import BENCHMARKS, Benchmark, EffectMetric, is_final, register_benchmark
from phased_ift.generation import read_generations
from phased_ift.rundir import RunDir
from phased_ift.runio import atomic_write_json

# ---- the toy benchmark's module: the share of answers of at most 5 words, checked by program on vicuna's answers
TOY = choices.BenchmarkChoice("brevity", choices.PROGRAM, "vicuna", None, "toy")


def _run(cfg, run, dry_run, console):
    for c in evaluation_cells(cfg, run):
        out = run.benchmark("brevity", c.arm, c.phase, c.seed)
        if dry_run or out.is_file():
            continue
        rows = read_generations(run.generations(c.arm, c.phase, "vicuna", c.seed))
        atomic_write_json(out, {"per_prompt": {str(r["id"]): float(len(r["output"].split()) <= 5) for r in rows}})
        console.print(f"evaluate: {c.arm} seed {c.seed} phase {c.phase}: brevity -> {out}")


def _summarize(run, cfg):
    out = []
    for e in run.evaluation_files("brevity.json"):
        values = list(json.loads(e.path.read_text())["per_prompt"].values())
        out.append({"arm": e.arm, "seed": e.seed, "phase": e.phase, "final": is_final(cfg, run, e.arm, e.phase),
                    "n": len(values), "rate": sum(values) / len(values)})
    return {"brevity": out}


def _blocks(s, plots, cl):
    rows = [[e["arm"], e["seed"], e["phase"], e["n"], e["rate"]] for e in s["brevity"]]
    return [table(["arm", "seed", "phase", "answers", "rate"], rows)]


def _verdicts(s, rank):
    lines = []
    for seed in sorted({e["seed"] for e in s["brevity"]}):
        finals = sorted((e for e in s["brevity"] if e["final"] and e["seed"] == seed), key=lambda e: rank(e["arm"]))
        lines.append(f"brevity (seed {seed}): " + ", ".join(f"{e['arm']} {fmt_num(e['rate'])}" for e in finals) + ".")
    return lines


def _per_prompt(run, cfg, judgements):
    out = {}
    for e in run.evaluation_files("brevity.json"):
        if is_final(cfg, run, e.arm, e.phase):
            out[(e.arm, e.seed)] = {(k,): v for k, v in json.loads(e.path.read_text())["per_prompt"].items()}
    return out


BREVITY = Benchmark(TOY, "Brevity", run=_run, summarize=_summarize,
                    missing=lambda cfg: "No brevity results: add vicuna to generate.test_sets.", blocks=_blocks,
                    heading="Brevity (toy)", verdicts=_verdicts, effects=(EffectMetric("brevity rate", _per_prompt),))


@pytest.fixture
def toy_registered(monkeypatch):
    """The toy declared and registered as a packaged benchmark is; removed again afterwards."""
    monkeypatch.setitem(choices.BENCHMARKS, "brevity", TOY)
    register_benchmark(BREVITY)
    yield BREVITY
    del BENCHMARKS["brevity"]


def _run_dir(tmp_path, seeds=(0, 1, 2), n=12):
    """phased (final phase 3) and one-off answers on vicuna: phased answers prompt i in 3 words when i % 3 != 0,
    one-off when i is even; the rest in 9 words."""
    run = RunDir(tmp_path / "run")
    cfg = config_from_dict({"run_dir": str(run.root), "train": {"arms": ["phased", "one-off"], "seeds": list(seeds)},
                            "generate": {"test_sets": ["vicuna"], "every_phase": True}, "evaluation": {"reference_loss": False},
                            "phases": {"k": 3}, "report": {"bootstrap": 200}})
    for seed in seeds:
        for arm, phases in (("phased", (1, 2, 3)), ("one-off", (1,))):
            for k in phases:
                short = [(i % 3 != 0) if arm == "phased" else (i % 2 == 0) for i in range(n)]
                rows = [{"id": f"v{i}", "testset": "vicuna", "instruction": f"q{i}",
                         "output": "yes it is" if s else "a much longer answer than the short one is"}
                        for i, s in enumerate(short)]
                write_generation(run, arm, k, seed, "vicuna", rows, 64)
                (run.root / "checkpoints" / arm / f"seed_{seed}" / f"phase_{k}").mkdir(parents=True)
                (run.root / "checkpoints" / arm / f"seed_{seed}" / f"phase_{k}" / "DONE").write_text("{}")
    return run, cfg


def test_a_toy_benchmark_added_by_registration_reaches_the_step_report_and_answer(tmp_path, toy_registered):
    from phased_ift.evals.step import evaluate_all, evaluate_needs
    from phased_ift.report import build_report

    run, cfg = _run_dir(tmp_path)
    assert list(BENCHMARKS)[-1] == "brevity" and toy_registered.applies(cfg)
    assert evaluate_needs(cfg, run, dry_run=False) == ["generate"]  # its answers; the reference loss is off
    evaluate_all(cfg, run, dry_run=True, console=Console(file=open(tmp_path / "log.txt", "w")))
    assert not run.evaluation_files("brevity.json")  # a dry run computes nothing
    evaluate_all(cfg, run, console=Console(file=open(tmp_path / "log.txt", "w")))
    assert len(run.evaluation_files("brevity.json")) == 3 * 4
    assert json.loads(run.benchmark("brevity", "one-off", 1, 0).read_text())["per_prompt"]["v1"] == 0.0

    s = build_report(run, cfg)
    finals = {(e["arm"], e["seed"]): e["rate"] for e in s["brevity"] if e["final"]}
    assert finals[("phased", 0)] == pytest.approx(8 / 12) and finals[("one-off", 0)] == pytest.approx(6 / 12)
    assert "brevity (seed 2): phased 0.667, one-off 0.500." in s["verdicts"]
    md = (run.report_dir / "report.md").read_text()
    assert "## Brevity (toy)" in md and md.index("## Brevity (toy)") > md.index("## Offline evaluation")
    (effect,) = [e for e in s["effects"] if e["metric"] == "brevity rate"]
    assert (effect["arm"], effect["baseline"], effect["seeds"]) == ("phased", "one-off", [0, 1, 2])
    assert effect["difference"] == pytest.approx(8 / 12 - 6 / 12)


def test_the_registry_refuses_undeclared_and_twice_registered_benchmarks(toy_registered, monkeypatch):
    with pytest.raises(PhasedIFTError, match="benchmark 'brevity' is registered twice"):
        register_benchmark(BREVITY)
    other = choices.BenchmarkChoice("brevity2", choices.PROGRAM, "vicuna")
    with pytest.raises(PhasedIFTError, match="benchmark 'brevity2' is not declared .* config_choices.BENCHMARKS"):
        register_benchmark(Benchmark(other, "x", run=_run, summarize=_summarize, missing=str, blocks=_blocks,
                                     heading="x"))
    # declared with another kind than the object says: refused too
    monkeypatch.setitem(choices.BENCHMARKS, "brevity2", choices.BenchmarkChoice("brevity2", choices.LLM_GRADED))
    with pytest.raises(PhasedIFTError, match="not declared"):
        register_benchmark(Benchmark(other, "x", run=_run, summarize=_summarize, missing=str, blocks=_blocks,
                                     heading="x"))
    assert "brevity2" not in BENCHMARKS


def test_each_packaged_benchmark_declares_its_kind_and_what_the_evaluate_step_needs():
    from phased_ift.config import load_config
    from phased_ift.evals.step import evaluate_needs, plan_row

    kinds = {n: b.kind for n, b in BENCHMARKS.items() if n != "brevity"}
    assert kinds == {"reference_loss": "likelihood", "ifeval": "program", "mt_bench": "graded", "seqeval": "graded"}
    cfg = load_config(None, ["generate.test_sets=[vicuna,ifeval,mt_bench]"])
    run = RunDir(cfg.run_dir)
    assert evaluate_needs(cfg, run, dry_run=False) == ["train", "generate"]
    assert evaluate_needs(cfg, run, dry_run=True) == ["train"]  # a plan trains, but generates nothing
    assert not BENCHMARKS["mt_bench"].applies(cfg)  # no judge endpoint: MT-Bench is not graded
    what, size, out = plan_row(cfg, {"vicuna": 80, "ifeval": 541, "mt_bench": 80}, 3, {})
    assert (what, size, out) == ("reference-answer loss, IFEval (541 prompts)", "3 checkpoints", "evaluation/")
    judged = load_config(None, ["generate.test_sets=[mt_bench]", "evaluation.reference_loss=false",
                                "judge.base_url=http://127.0.0.1:1/v1", "judge.model=m"])
    assert evaluate_needs(judged, RunDir(judged.run_dir), dry_run=False) == ["generate"]
    assert plan_row(judged, {"mt_bench": 80}, 2, {"MT-Bench": 320}) == (
        "MT-Bench (80 prompts)", "2 checkpoints, 320 MT-Bench grading requests", "evaluation/, grades/")
