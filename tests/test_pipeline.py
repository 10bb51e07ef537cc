"""`phased-ift run`: the plan, clear errors before heavy work, and kill -9 / resume at every stage.

The resume test drives the real CLI in a subprocess (tiny model, a fake OpenAI-compatible judge for difficulty
scoring and pairwise judging) and kills it with SIGKILL during scoring, during phase 2 of training, during
generation and during judging; each re-run must finish the work without repeating judge requests or retraining
finished phases.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from fake_llm_server import FakeLLMServer  # noqa: E402

from phased_ift.cli import main  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def write_alpaca(path: Path, n: int = 18) -> Path:
    topics = ["rivers", "stars", "bread", "chess", "rain", "glass", "maps", "bees", "salt", "clocks", "moss", "ink"]
    rows = []
    for i in range(n):
        t = topics[i % len(topics)]
        rows.append({"instruction": f"Write {1 + i % 4} sentences about {t} (item {i}).",
                     "input": "" if i % 3 else f"Context {i}: {t} in winter.",
                     "output": " ".join([f"Sentence {j} about {t}." for j in range(1 + i % 5)])})
    path.write_text(json.dumps(rows), encoding="utf-8")
    return path


def judge_reply(body: dict) -> str:
    """Deterministic replies: a difficulty digit for scoring prompts, a score pair for pairwise prompts."""
    text = json.dumps(body["messages"])
    h = int(hashlib.sha256(text.encode()).hexdigest(), 16)
    if "Assistant 1" in text:
        return ["8 6", "6 8", "7 7"][h % 3]
    return str(1 + h % 5)


def overrides(tmp_path: Path, model_dir: Path, url: str, data: Path) -> list[str]:
    return [
        f"run_dir={tmp_path / 'run'}",
        f"data.train=[{{path: {data}, format: alpaca}}]",
        f"model.name_or_path={model_dir}", "model.max_length=64", "model.autocast=none",
        "scoring.scorer=judge", f"scoring.judge.base_url={url}", "scoring.judge.model=fake",
        "scoring.judge.concurrency=1", "scoring.use_logprobs=false",
        "phases.k=3", "train.arms=[phased,one-off]", "train.batch_size=2", "train.save_steps=1",
        "train.learning_rate=1e-3",
        "generate.test_sets=[vicuna]", "generate.limit=6", "generate.max_new_tokens=6", "generate.batch_size=1",
        "evaluation.reference_loss=true", "evaluation.batch_size=4",
        f"judge.base_url={url}", "judge.model=fake", "judge.concurrency=1",
        "report.bootstrap=200",
    ]


def start_run(args: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "phased_ift.cli", "run", "configs/quickstart.yaml", *args], cwd=REPO, env=env,
                            stdout=open(log, "ab"), stderr=subprocess.STDOUT)


def kill_when(proc: subprocess.Popen, condition, what: str, log: Path, timeout: float = 240.0) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if condition():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return
        if proc.poll() is not None:
            pytest.fail(f"the run ended (rc {proc.returncode}) before {what}; log tail:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"timed out waiting for {what}; log tail:\n{log.read_text()[-3000:]}")


def rows(path: Path) -> int:
    return sum(1 for line in path.read_text().splitlines() if line.strip()) if path.is_file() else 0


@pytest.mark.slow
def test_kill9_at_every_stage_then_resume(tmp_path, tiny_model_dir):
    run = tmp_path / "run"
    data = write_alpaca(tmp_path / "train.json")
    log = tmp_path / "log.txt"
    with FakeLLMServer(reply=judge_reply, latency=0.05) as srv:
        args = overrides(tmp_path, tiny_model_dir, srv.base_url, data)

        # 1. during scoring: some scores cached, not all
        p = start_run(args, log)
        kill_when(p, lambda: rows(run / "scores" / "judge.jsonl") >= 3 or srv.count >= 6, "scoring", log)
        assert not (run / "phases" / "manifest.json").exists()

        # 2. during phase 2 of the phased arm: phase 1 finished, a Trainer checkpoint of phase 2 on disk
        ph1 = run / "checkpoints" / "phased" / "seed_0" / "phase_1"
        ph2 = run / "checkpoints" / "phased" / "seed_0" / "phase_2"
        p = start_run(args, log)
        kill_when(p, lambda: (ph1 / "DONE").is_file() and any(ph2.rglob("checkpoint-*")), "phase 2 checkpoint", log)
        assert not (ph2 / "DONE").exists()
        done1 = (ph1 / "DONE").stat().st_mtime_ns
        scoring_requests = srv.count

        # 3. during generation
        gen = run / "generations"
        p = start_run(args, log)
        kill_when(p, lambda: any(rows(f) >= 1 for f in gen.rglob("*.jsonl")), "generation", log)
        assert (ph1 / "DONE").stat().st_mtime_ns == done1, "phase 1 was retrained"
        assert srv.count == scoring_requests, "scoring requests were sent again"

        # 4. during judging
        judged = run / "judgements"
        p = start_run(args, log)
        kill_when(p, lambda: any(rows(f) >= 1 for f in judged.rglob("*.jsonl")), "judging", log)

        # 5. finish
        p = start_run(args, log)
        assert p.wait(timeout=600) == 0, log.read_text()[-3000:]

        # 6. a re-run of a finished run sends nothing and trains nothing
        n_before = srv.count
        p = start_run(args, log)
        assert p.wait(timeout=600) == 0, log.read_text()[-3000:]
        assert srv.count == n_before
        bodies = [json.dumps(b, sort_keys=True) for b in srv.bodies]
    assert (ph1 / "DONE").stat().st_mtime_ns == done1, "phase 1 was retrained"
    for k in (1, 2, 3):
        assert (run / "checkpoints" / "phased" / "seed_0" / f"phase_{k}" / "DONE").is_file()
    assert (run / "checkpoints" / "one-off" / "seed_0" / "phase_1" / "DONE").is_file()
    # scoring: every example scored once; judging: 6 prompts x 2 orders for phased vs one-off
    assert rows(run / "scores" / "judge.jsonl") == 18
    judgements = run / "judgements" / "phased__vs__one-off" / "seed_0" / "vicuna.jsonl"
    assert rows(judgements) == 6
    # no request answered before a kill was sent again; at most the one in flight (concurrency 1) per kill
    repeats = len(bodies) - len(set(bodies))
    assert repeats <= 2, f"{repeats} judge requests were repeated"
    pairwise = {b for b in bodies if "Assistant 1" in b}
    assert len(set(bodies) - pairwise) == 18  # one difficulty request per example
    # 6 prompts x 2 orders; when both arms give the same answer the two orders are one identical request
    assert 6 <= len(pairwise) <= 12
    for name in ("report.md", "report.html", "summary.json"):
        assert (run / "report" / name).stat().st_size > 0
    summary = json.loads((run / "report" / "summary.json").read_text())
    (c,) = [c for c in summary["comparisons"] if c["testset"] == "vicuna"]
    assert c["wins"] + c["ties"] + c["losses"] + c["unparseable"] == 6


# ---------------------------------------------------------------------------------------------------------------
# Clear errors before heavy work
# ---------------------------------------------------------------------------------------------------------------


def run_cli(args, capsys):
    rc = main(["run", *args])
    return rc, capsys.readouterr().err


def test_unknown_key_errors_before_anything(tmp_path, capsys):
    rc, err = run_cli(["configs/quickstart.yaml", f"run_dir={tmp_path / 'r'}", "train.epoch=2"], capsys)
    assert rc == 2 and "unknown key `train.epoch`" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


def test_missing_data_file(tmp_path, capsys):
    rc, err = run_cli(["configs/quickstart.yaml", f"run_dir={tmp_path / 'r'}",
                       f"data.train=[{{path: {tmp_path / 'nope.json'}}}]"], capsys)
    assert rc == 2 and "nope.json does not exist" in err
    assert not (tmp_path / "r").exists()


def test_unknown_test_set(tmp_path, capsys):
    rc, err = run_cli(["configs/quickstart.yaml", f"run_dir={tmp_path / 'r'}", "generate.test_sets=[vicunna]"],
                      capsys)
    assert rc == 2 and "unknown test set 'vicunna'" in err and "vicuna" in err
    assert not (tmp_path / "r").exists()


def test_missing_model_path(tmp_path, capsys):
    rc, err = run_cli(["configs/quickstart.yaml", f"run_dir={tmp_path / 'r'}",
                       f"model.name_or_path={tmp_path / 'no-model'}"], capsys)
    assert rc == 2 and "no-model" in err and "does not exist" in err
    assert not (tmp_path / "r").exists()


def test_unreachable_judge(tmp_path, capsys):
    rc, err = run_cli(["configs/quickstart.yaml", f"run_dir={tmp_path / 'r'}",
                       "judge.base_url=http://127.0.0.1:9/v1", "judge.model=x"], capsys)
    assert rc == 2 and "unreachable" in err and "judge.base_url" in err
    assert not (tmp_path / "r").exists()


def test_empty_phase_errors_before_training(tmp_path, capsys):
    """Scores from the data (scorer=meta): a threshold above every score leaves phase 3 empty."""
    data = tmp_path / "scored.jsonl"
    data.write_text("".join(json.dumps({"id": str(i), "score": str(1 + i % 3), "data": [f"Task {i}?", f"Answer {i}."]})
                            + "\n" for i in range(9)), encoding="utf-8")
    rc, err = run_cli(["configs/quickstart.yaml", f"run_dir={tmp_path / 'r'}",
                       f"data.train=[{{path: {data}, format: phasedsft}}]", "scoring.scorer=meta",
                       "phases.method=thresholds", "phases.thresholds=[2,4.5]"], capsys)
    assert rc == 2 and "phase 3" in err.lower() and "empty" in err.lower()
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_dry_run_prints_plan_and_trains_nothing(tmp_path, capsys):
    rc, err = run_cli(["configs/quickstart.yaml", "--dry-run", f"run_dir={tmp_path / 'r'}"], capsys)
    assert rc == 0
    assert "120 examples" in err and "optimizer steps" in err and "vicuna (48)" in err
    assert "precision: model.autocast=" in err  # the resolved autocast and why (issue 12)
    assert not (tmp_path / "r" / "scores").exists() and not (tmp_path / "r" / "checkpoints").exists()


def test_paper_dry_run_plans_without_the_data(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "300")  # one line per plan row: the numbers below are not wrapped across cells
    rc, err = run_cli(["configs/paper.yaml", "--dry-run", f"run_dir={tmp_path / 'r'}"], capsys)
    assert rc == 0
    # 8 comparisons x both orders x the 1,127 prompts of the six test sets and MT-Bench (IFEval needs no judge)
    assert "52,002" in err and "gpt-4-0613" in err and "18,032 pairwise" in err
    # MT-Bench single-answer grading: 80 questions x 2 turns x the 7 evaluated checkpoints
    assert "1,120 MT-Bench grading" in " ".join(err.split())
    assert not (tmp_path / "r").exists()


def test_out_of_memory_and_ctrl_c_give_hints(tmp_path, capsys, monkeypatch):
    from phased_ift import pipeline

    def oom(cfg, dry_run=False, console=None, **kw):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(pipeline, "run_pipeline", oom)
    rc, err = run_cli(["configs/quickstart.yaml", f"run_dir={tmp_path / 'r'}"], capsys)
    assert rc == 3 and "train.batch_size" in err and "resume" in err and "Traceback" not in err

    def interrupted(cfg, dry_run=False, console=None, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "run_pipeline", interrupted)
    rc, err = run_cli(["configs/quickstart.yaml", f"run_dir={tmp_path / 'r'}"], capsys)
    assert rc == 130 and "run the same command again to resume" in err


# ---------------------------------------------------------------------------------------------------------------
# STEPS: each step once per command, in order
# ---------------------------------------------------------------------------------------------------------------


def recording_steps(monkeypatch, called: list, log_context: bool = False):
    """Replace every step body of `pipeline.STEPS` by one that records its name (and dry_run flag)."""
    import contextlib
    import dataclasses

    from phased_ift import modeling, pipeline

    def record(name):
        def body(cfg, run, dry_run, console):
            called.append(f"{name} (dry run)" if dry_run else name)
            return {} if name == "report" else None
        return body

    monkeypatch.setattr(pipeline, "STEPS", [dataclasses.replace(s, run=record(s.name)) for s in pipeline.STEPS])

    @contextlib.contextmanager
    def main_first():
        called.append("<main process first>")
        yield
        called.append("</main process first>")

    monkeypatch.setattr(modeling, "main_process_first", main_first)


def test_one_run_enters_each_step_exactly_once_in_order(tmp_path, monkeypatch):
    from rich.console import Console

    from phased_ift import pipeline
    from phased_ift.config import load_config

    called: list = []
    recording_steps(monkeypatch, called)
    monkeypatch.setattr(pipeline, "preflight", lambda cfg, dry_run=False: [])
    monkeypatch.setattr(pipeline, "plan_run", lambda cfg, console, missing=(), precision=None: called.append("plan"))
    cfg = load_config("configs/quickstart.yaml", [f"run_dir={tmp_path / 'r'}"])
    assert pipeline.run_pipeline(cfg, console=Console(file=open(tmp_path / "log.txt", "w"))) == {}
    # score is a spread step: every rank of a launch runs it at once, outside main_process_first
    assert called == ["sit", "data", "plan", "score", "<main process first>", "split", "</main process first>",
                      "train", "generate", "pairwise", "evaluate", "report"]
    assert [s.name for s in pipeline.STEPS] == ["sit", "data", "score", "split", "train", "generate", "pairwise",
                                                "evaluate", "report"]


def test_a_subcommand_runs_the_steps_it_needs_once_each(tmp_path, monkeypatch):
    from phased_ift import pipeline
    from phased_ift.config import load_config
    from phased_ift.rundir import RunDir

    def names(step, *overrides, dry_run=False):
        cfg = load_config("configs/quickstart.yaml", [f"run_dir={tmp_path / 'r'}", *overrides])
        return [s.name for s in pipeline.steps_for(step, cfg, dry_run)]

    judge = ["judge.base_url=http://127.0.0.1:9/v1", "judge.model=x"]
    # a fresh run dir: every earlier step is needed
    assert names("score") == ["data", "score"]
    assert names("generate") == ["data", "score", "split", "train", "generate"]
    assert names("report") == ["data", "score", "split", "train", "generate", "pairwise", "evaluate", "report"]
    assert names("report", "evaluation.reference_loss=false") == names("report")  # generate still needs train
    # without the reference loss and IFEval the step logs "skipped" and returns: nothing before it is needed
    assert names("evaluate", "evaluation.reference_loss=false", "generate.test_sets=[vicuna]") == ["evaluate"]
    # IFEval is scored from the generations
    assert names("evaluate", "evaluation.reference_loss=false") == ["data", "score", "split", "train", "generate",
                                                                     "evaluate"]
    assert names("pairwise") == ["pairwise"]  # no judge configured: it logs how to set one, trains nothing
    assert names("pairwise", *judge) == ["data", "score", "split", "train", "generate", "pairwise"]
    assert names("pairwise", *judge, dry_run=True) == ["pairwise"]  # a dry run neither trains nor generates
    # graded benchmarks run in the evaluate step: with a judge, MT-Bench needs the answers
    assert names("evaluate", *judge, "evaluation.reference_loss=false", "generate.test_sets=[mt_bench]") == [
        "data", "score", "split", "train", "generate", "evaluate"]
    assert names("train", dry_run=True) == ["data", "train"]  # the plan reads the data, scores nothing
    run, scorer = RunDir(tmp_path / "r"), load_config("configs/quickstart.yaml").scoring.scorer
    run.train_data.parent.mkdir(parents=True)
    run.train_data.write_text("")
    assert names("train", dry_run=True) == ["train"]
    # scores exist: the split does not ask the score (and data) step again
    run.scores(scorer).parent.mkdir(parents=True)
    run.scores(scorer).write_text("")
    assert names("generate") == ["split", "train", "generate"]
    assert names("score") == ["data", "score"]  # the score step itself resumes the file
    assert names("train", dry_run=True) == ["split", "train"]
    with pytest.raises(ValueError, match="no pipeline step 'evaluation'"):
        names("evaluation")


def test_step_functions_run_their_steps_once_with_dry_run_on_their_own_step(tmp_path, monkeypatch):
    from phased_ift import pipeline
    from phased_ift.config import load_config

    called: list = []
    recording_steps(monkeypatch, called)
    cfg = load_config("configs/quickstart.yaml", [f"run_dir={tmp_path / 'r'}"])
    pipeline.step_generate(cfg)
    assert called == ["<main process first>", "data", "</main process first>", "score", "<main process first>",
                      "split", "</main process first>", "train", "generate"]
    called.clear()
    pipeline.step_score(cfg, dry_run=True)
    assert called == ["data", "score (dry run)"]  # no split: no main_process_first, no torch import
    called.clear()
    assert pipeline.step_report(cfg) == {}
    steps = [c for c in called if "main process first" not in c]
    assert called[-4:] == ["generate", "pairwise", "evaluate", "report"] and len(steps) == len(set(steps))


def test_memory_is_released_after_every_step(tmp_path, monkeypatch):
    """run_steps hands freed memory back (modeling.release_memory) after each step, so peaks do not stack."""
    from rich.console import Console

    from phased_ift import modeling, pipeline
    from phased_ift.config import load_config

    called: list = []
    recording_steps(monkeypatch, called)
    monkeypatch.setattr(modeling, "release_memory", lambda: called.append("release"))
    monkeypatch.setattr(pipeline, "preflight", lambda cfg, dry_run=False: [])
    monkeypatch.setattr(pipeline, "plan_run", lambda cfg, console, missing=(), precision=None: None)
    cfg = load_config("configs/quickstart.yaml", [f"run_dir={tmp_path / 'r'}"])
    pipeline.run_pipeline(cfg, console=Console(file=open(tmp_path / "log.txt", "w")))
    steps = [c for c in called if not c.startswith("<") and not c.startswith("</")]
    assert steps == [x for s in pipeline.STEPS for x in (s.name, "release")]
