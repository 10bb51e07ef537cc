"""Model passes spread over the ranks of a launch (`sharding`, `scoring.score_examples` under torchrun,
`evaluation.reference_loss_all`): the shard arithmetic, the merge into the file one process writes, resuming from a
killed launch's shard files, the wait's error; then real 2-process torchrun launches (CPU, gloo) with the tiny
offline model: IFD scores and reference losses equal those of one process (rel 1e-4, the tolerance of the
batched-vs-loop check in test_scoring.py), and a rank killed with SIGKILL resumes without recomputing its rows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from phased_ift import modeling, sharding
from phased_ift.config import load_config, save_config
from phased_ift.data import Example, write_examples
from phased_ift.runio import read_jsonl
from phased_ift.scoring import registry
from phased_ift.sharding import Launch, ShardFiles, ShardStalled, current_launch, shard, unshard

REPO = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).parent / "sharded_scoring_worker.py"
REL = 1e-4  # test_scoring.py: test_batched_equals_unbatched_and_padding_does_not_change_values

WORDS = ("the quick brown fox jumps over a lazy dog while seven wizards quietly pack boxes of liquor jugs and "
         "explain each step of the plan in detail with examples").split()


def examples(n: int = 24) -> list[Example]:
    """n seeded Alpaca-like examples of varied lengths (4-24-word instructions, 3-60-word responses)."""
    import random

    rng = random.Random(0)
    out = []
    for i in range(n):
        q = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 24)))
        a = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 60)))
        out.append(Example(f"ex{i:02d}", [{"role": "user", "content": q.capitalize() + "?"},
                                          {"role": "assistant", "content": a.capitalize() + "."}]))
    return out


# ---------------------------------------------------------------------------------------------------------------
# shard arithmetic and the launch
# ---------------------------------------------------------------------------------------------------------------


def test_shard_takes_every_wth_item_and_unshard_restores_the_order():
    items = list(range(11))
    parts = [shard(items, Launch(r, 3)) for r in range(3)]
    assert parts == [[0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8]]
    assert unshard(parts) == items
    assert unshard([shard(items[:2], Launch(r, 4)) for r in range(4)]) == [0, 1]  # more ranks than items
    with pytest.raises(ValueError, match="shard sizes"):
        unshard([[0, 2], [1, 3, 5]])


def test_current_launch_reads_torchruns_environment():
    env = {"RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    assert current_launch(env) == Launch(1, 2) and current_launch(env).spread
    assert current_launch({}) == Launch(0, 1) and current_launch({"WORLD_SIZE": "1", "RANK": "0"}).main
    with pytest.raises(sharding.PhasedIFTError, match="RANK=2 is outside 0..1"):
        current_launch({**env, "RANK": "2"})


# ---------------------------------------------------------------------------------------------------------------
# the score step's coordination, ranks simulated by threads (a fake scorer: no model, no torch.distributed)
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture
def fake(monkeypatch):
    """A SPREAD scorer "fake" (score = response length / 10) recording the ids it computes; `ranks(...)` runs
    score_examples as rank 0..W-1 of one launch in threads (token "t1")."""
    computed: list[str] = []
    lock = threading.Lock()

    def fake_scorer(exs, ctx):
        for e in exs:
            with lock:
                computed.append(e.id)
            yield registry.score_row(e.id, len(e.messages[-1]["content"]) / 10, n=len(e.id))

    local = threading.local()
    monkeypatch.setitem(registry.SCORERS, "fake", fake_scorer)
    monkeypatch.setattr(registry, "SPREAD", registry.SPREAD | {"fake"})
    monkeypatch.setattr(registry, "current_launch", lambda: getattr(local, "launch", Launch()))
    monkeypatch.setattr(modeling, "launch_token", lambda: getattr(local, "token", None))

    def ranks(exs, cfg, out, world, token="t1", only=None):
        errors: dict[int, BaseException] = {}

        def one(r):
            local.launch, local.token = Launch(r, world), token
            try:
                registry.score_examples(exs, cfg, out, scorer="fake")
            except BaseException as e:  # noqa: BLE001 - reported by the test
                errors[r] = e

        threads = [threading.Thread(target=one, args=(r,)) for r in (only if only is not None else range(world))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        return errors

    return computed, ranks


def test_two_ranks_write_exactly_the_file_one_process_writes(tmp_path, fake):
    computed, ranks = fake
    cfg = load_config(None, [f"run_dir={tmp_path / 'run'}"])
    exs = examples(9)
    registry.score_examples(exs, cfg, tmp_path / "one.jsonl", scorer="fake")
    computed.clear()
    assert ranks(exs, cfg, tmp_path / "two.jsonl", 2) == {}
    assert (tmp_path / "two.jsonl").read_bytes() == (tmp_path / "one.jsonl").read_bytes()
    assert sorted(computed) == sorted(e.id for e in exs)  # each example once, over both ranks
    assert [p.name for p in (tmp_path / "two.shards").iterdir()] == ["merged.json"]  # rows merged, files gone
    computed.clear()
    assert ranks(exs, cfg, tmp_path / "two.jsonl", 3, token="t2") == {}  # a rerun (3 ranks): nothing to compute
    assert computed == [] and (tmp_path / "two.jsonl").read_bytes() == (tmp_path / "one.jsonl").read_bytes()


def test_a_killed_launchs_shard_rows_are_reused_by_any_later_run(tmp_path, fake):
    computed, ranks = fake
    cfg = load_config(None, [f"run_dir={tmp_path / 'run'}"])
    exs = examples(10)
    registry.score_examples(exs, cfg, tmp_path / "one.jsonl", scorer="fake")
    want = {r["id"]: r for r in read_jsonl(tmp_path / "one.jsonl")}
    # what a 2-rank launch leaves when killed: rank 0 finished (marker of its launch), rank 1 wrote 2 rows, one torn
    files = ShardFiles(tmp_path / "s.jsonl", 2)
    files.dir.mkdir()
    files.rows(0).write_text("".join(json.dumps(want[e.id]) + "\n" for e in shard(exs, Launch(0, 2))))
    files.mark(files.done(0), "killed-launch", scored=5, failed=0, stats={})
    files.rows(1).write_text(json.dumps(want["ex01"]) + "\n" + json.dumps(want["ex03"]) + "\n{\"id\": \"ex0")
    computed.clear()
    registry.score_examples(exs, cfg, tmp_path / "s.jsonl", scorer="fake")  # one process resumes the launch
    assert sorted(computed) == ["ex05", "ex07", "ex09"]  # only rank 1's unfinished rows
    assert (tmp_path / "s.jsonl").read_bytes() == (tmp_path / "one.jsonl").read_bytes()
    assert not files.dir.exists()


def test_the_main_process_names_a_rank_that_stalls_and_ignores_a_stale_marker(tmp_path, fake, monkeypatch):
    computed, ranks = fake
    cfg = load_config(None, [f"run_dir={tmp_path / 'run'}"])
    files = ShardFiles(tmp_path / "s.jsonl", 2)
    files.mark(files.done(1), "an-earlier-launch", scored=5, failed=0, stats={})  # not this launch's: ignored
    monkeypatch.setenv(sharding.TIMEOUT_ENV, "1")
    t0 = time.monotonic()
    errors = ranks(examples(6), cfg, tmp_path / "s.jsonl", 2, only=[0])  # rank 1 never starts
    assert isinstance(errors.get(0), ShardStalled) and time.monotonic() - t0 < 30
    msg = str(errors[0])
    assert "rank 1 of 2 has not finished its shard" in msg and str(files.rows(1)) in msg and "does not exist" in msg
    assert sharding.TIMEOUT_ENV in msg and not (tmp_path / "s.jsonl").exists()  # nothing merged
    assert len(list(read_jsonl(files.rows(0)))) == 3  # rank 0's rows are kept for the next run
    monkeypatch.setenv(sharding.TIMEOUT_ENV, "soon")
    with pytest.raises(sharding.PhasedIFTError, match="positive number of seconds"):
        sharding.timeout_s()


def test_a_scorer_not_spread_runs_on_the_main_process_alone(tmp_path, fake, monkeypatch):
    computed, ranks = fake
    monkeypatch.setattr(registry, "SPREAD", set())
    cfg = load_config(None, [f"run_dir={tmp_path / 'run'}"])
    exs = examples(5)
    assert ranks(exs, cfg, tmp_path / "s.jsonl", 2) == {}
    assert computed == [e.id for e in exs]  # all on rank 0, in order
    assert [r["id"] for r in read_jsonl(tmp_path / "s.jsonl")] == [e.id for e in exs]


# ---------------------------------------------------------------------------------------------------------------
# real launches: torchrun, 2 CPU processes, gloo, the tiny offline model
# ---------------------------------------------------------------------------------------------------------------


def make_run(root: Path, model_dir: Path, *, checkpoint: bool = False) -> Path:
    """A run dir with data/train.jsonl (24 examples) and its config (ifd, fp32, batch 4; with `checkpoint`: a
    finished one-off checkpoint, a copy of the tiny model, and the reference loss of 10 AlpacaEval prompts)."""
    import shutil

    cfg = load_config(None, [f"run_dir={root}", f"model.name_or_path={model_dir}", "scoring.scorer=ifd",
                             "scoring.batch_size=4", "scoring.autocast=none", "model.autocast=none",
                             "train.arms=[one-off]", "evaluation.limit=10", "evaluation.batch_size=4",
                             "evaluation.max_length=256"])
    write_examples(root / "data" / "train.jsonl", examples())
    if checkpoint:
        from phased_ift.rundir import RunDir

        d = RunDir(root).checkpoint("one-off", 1, 0)
        shutil.copytree(model_dir, d)
        (d / "DONE").write_text("{}")
    return save_config(cfg, root / "config.yaml")


def launch(config: Path, log_dir: Path, *extra: str, env: dict | None = None, nproc: int = 2) -> tuple[int, float, str]:
    """`torchrun --standalone --nproc_per_node N` of the worker: (exit status, wall seconds, output tail)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(WORKER), str(config), *extra]
    full_env = {**os.environ, "SHARD_TEST_LOG": str(log_dir), "OMP_NUM_THREADS": "1",
                "PYTHONPATH": str(REPO / "src"), **(env or {})}
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=600)
    return p.returncode, time.perf_counter() - t0, (p.stdout + p.stderr)[-4000:]


def computed_ids(log_dir: Path) -> list[str]:
    return [i for p in sorted(log_dir.glob("*.ids")) for i in p.read_text().split()]


def assert_same_scores(got: Path, want: Path) -> None:
    """Same ids in the same order, same keys, same token counts; floats within REL."""
    a, b = list(read_jsonl(got)), list(read_jsonl(want))
    assert [r["id"] for r in a] == [r["id"] for r in b]
    for x, y in zip(a, b):
        assert list(x) == list(y) and x["n_tokens"] == y["n_tokens"] and x["error"] is None
        for k in ("score", "loss_cond", "loss_uncond"):
            assert x[k] == pytest.approx(y[k], rel=REL), (x["id"], k)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, tiny_model_dir):
    """The reference: IFD scores and reference losses of one process (this one), with their wall times."""
    from phased_ift.evals.reference_loss import reference_loss_all
    from phased_ift.rundir import RunDir
    from phased_ift.scoring import score_examples

    root = tmp_path_factory.mktemp("one") / "run"
    cfg = load_config(make_run(root, tiny_model_dir, checkpoint=True))
    t0 = time.perf_counter()
    score_examples(examples(), cfg, RunDir(root).scores("ifd"))
    t1 = time.perf_counter()
    reference_loss_all(cfg, RunDir(root))
    t2 = time.perf_counter()
    print(f"\none process: ifd {t1 - t0:.1f} s, reference loss {t2 - t1:.1f} s (model passes only)")
    return RunDir(root)


@pytest.mark.slow  # two torchrun launches of 2 processes each start torch + transformers: ~1 min on one core
def test_two_processes_score_ifd_and_reference_loss_as_one_does(tmp_path, tiny_model_dir, one_process):
    from phased_ift.rundir import RunDir

    run = RunDir(tmp_path / "run")
    config = make_run(run.root, tiny_model_dir, checkpoint=True)
    status, wall, out = launch(config, tmp_path / "log", "--evaluate")
    assert status == 0, out
    print(f"\n2 processes (torchrun, gloo): score + reference loss {wall:.1f} s wall, start-up included")
    assert_same_scores(run.scores("ifd"), one_process.scores("ifd"))
    assert sorted(computed_ids(tmp_path / "log")) == sorted(e.id for e in examples())  # each example once
    assert [p.name for p in run.scores("ifd").with_suffix(".shards").iterdir()] == ["merged.json"]
    got = json.loads(run.evaluation("one-off", 1, 0).read_text())
    want = json.loads(one_process.evaluation("one-off", 1, 0).read_text())
    g, w = got["testsets"]["alpaca_eval"], want["testsets"]["alpaca_eval"]
    assert list(got) == list(want) and list(g) == list(w) and g["n"] == w["n"] == 10
    assert (g["ids"], g["answer_tokens"], g["truncated"]) == (w["ids"], w["answer_tokens"], w["truncated"])
    assert g["per_example"] == pytest.approx(w["per_example"], rel=REL)
    assert g["mean_loss"] == pytest.approx(w["mean_loss"], rel=REL)
    assert not run.evaluation("one-off", 1, 0).with_suffix(".shards").exists()


@pytest.mark.slow  # two torchrun launches of 2 processes each: ~1 min on one core
def test_a_rank_killed_with_sigkill_resumes_without_recomputing_finished_rows(tmp_path, tiny_model_dir, one_process):
    from phased_ift.rundir import RunDir

    run = RunDir(tmp_path / "run")
    config = make_run(run.root, tiny_model_dir)
    files = ShardFiles(run.scores("ifd"), 2)
    status, _, out = launch(config, tmp_path / "log1", env={"SHARD_TEST_KILL": "1:5"})
    assert status != 0, out
    assert len(list(read_jsonl(files.rows(1), tolerate_torn_tail=True))) == 5  # rank 1 died after 5 rows
    kept = {r["id"] for p in (files.rows(0), files.rows(1)) for r in read_jsonl(p, tolerate_torn_tail=True)}
    assert not run.scores("ifd").exists()  # nothing merged
    status, _, out = launch(config, tmp_path / "log2")
    assert status == 0, out
    again = computed_ids(tmp_path / "log2")
    assert not kept & set(again), "rows a finished shard file held were computed again"
    assert sorted(kept | set(again)) == sorted(e.id for e in examples()) and len(again) == len(set(again))
    assert_same_scores(run.scores("ifd"), one_process.scores("ifd"))
