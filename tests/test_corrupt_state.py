"""Corrupt state is found, named and mended (`phased_ift.integrity`, `kvcache.CorruptCache`).

  * A finished phase (DONE) whose weight file was cut short, emptied or edited is an error naming the file, before
    anything loads it (the next phase's training, generation, `phased-ift train` in a subprocess); a DONE written
    before the "weights" field loads as before.
  * An unfinished phase (no DONE) with a zero-byte weight file, or with a Trainer checkpoint whose weights are cut
    short, is trained again: the weights equal an untouched run's.
  * A damaged sqlite cache is one line naming the file and the fix; nothing is sent; after the fix the dry run says
    how many requests will be sent again.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import TrainerCallback

sys.path.insert(0, str(Path(__file__).parent))
from fake_llm_server import FakeLLMServer  # noqa: E402

from phased_ift import integrity  # noqa: E402
from phased_ift.config import config_from_dict  # noqa: E402
from phased_ift.data import Example, write_examples  # noqa: E402
from phased_ift.errors import PhasedIFTError  # noqa: E402
from phased_ift.kvcache import CorruptCache, KVCache  # noqa: E402
from phased_ift.rundir import RunDir  # noqa: E402
from phased_ift.runio import write_jsonl  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "phased_ift.cli"]
ADAPTER = "adapter_model.safetensors"


def _env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def _raw(root: Path, model_dir: Path) -> dict:
    """A run dir with data/train.jsonl + scores/meta.jsonl (two phases of 2 steps, a Trainer checkpoint at step 1)."""
    run = RunDir(root)
    ex = [Example(f"e{i}", [{"role": "user", "content": f"Question number {i}? " * (1 + i % 4)},
                            {"role": "assistant", "content": f"Answer {i}. " * (1 + i % 5)}]) for i in range(16)]
    write_examples(run.train_data, ex)
    write_jsonl(run.scores("meta"), [{"id": e.id, "score": float(i % 5) + 1, "error": None} for i, e in enumerate(ex)])
    return {"run_dir": str(root), "scoring": {"scorer": "meta"},
            "model": {"name_or_path": str(model_dir), "max_length": 64}, "phases": {"k": 2, "method": "quantiles"},
            "train": {"arms": ["phased"], "batch_size": 2, "max_steps": 2, "save_steps": 1, "threads": 1}}


def _train(raw: dict, callbacks=()):
    from phased_ift.pipeline import step_split
    from phased_ift.train import train_phases

    cfg = config_from_dict(raw)
    step_split(cfg)
    return train_phases(cfg, RunDir(cfg.run_dir), callbacks=list(callbacks))["phased"][0]


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_model_dir) -> Path:
    """A finished two-phase run (both phases DONE); tests copy it before changing anything."""
    root = tmp_path_factory.mktemp("finished") / "run"
    raw = _raw(root, tiny_model_dir)
    _train(raw)
    (root.parent / "config.yaml").write_text(json.dumps(raw))
    return root


def _copy(finished: Path, tmp_path: Path) -> tuple[Path, dict]:
    root = tmp_path / "run"
    shutil.copytree(finished, root)
    raw = json.loads((finished.parent / "config.yaml").read_text())
    raw["run_dir"] = str(root)
    return root, raw


def _weights(phase_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(phase_dir / ADAPTER)


def _same(a: dict, b: dict) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)


# ---------------------------------------------------------------------------------------------------------------
# A finished phase: DONE records its weight files
# ---------------------------------------------------------------------------------------------------------------


def test_done_records_each_weight_file_with_its_size_and_sha256(finished):
    phase = finished / "checkpoints" / "phased" / "seed_0" / "phase_1"
    weights = json.loads((phase / "DONE").read_text())["weights"]
    assert sorted(weights) == [ADAPTER]
    f = phase / ADAPTER
    assert weights[ADAPTER] == {"bytes": f.stat().st_size, "sha256": integrity.sha256_of(f)}
    integrity.verify(phase)  # as written: nothing to say


def _cut(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _edit(path: Path) -> None:  # same size, one byte changed in the tensor data
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage, said", [(_cut, r"has \d+ bytes, DONE recorded \d+"),
                                          (_empty, r"has 0 bytes, DONE recorded \d+"),
                                          (_edit, r"has the recorded size but not the recorded sha256")],
                         ids=["cut-short", "zero-bytes", "edited"])
def test_a_changed_weight_file_of_a_finished_phase_is_an_error_naming_it_before_loading(finished, tmp_path, damage,
                                                                                          said):
    from phased_ift.modeling import load_checkpoint

    root, _ = _copy(finished, tmp_path)
    phase = root / "checkpoints" / "phased" / "seed_0" / "phase_1"
    damage(phase / ADAPTER)
    with pytest.raises(PhasedIFTError) as e:
        load_checkpoint(phase, trainable=False)
    msg = str(e.value)
    assert msg.startswith(f"{phase / ADAPTER} ") and re.search(said, msg)
    assert f"move {phase} away" in msg and "phased-ift train CONFIG" in msg


def test_an_old_done_without_the_weights_field_loads_as_before(finished, tmp_path):
    from phased_ift.modeling import load_checkpoint

    root, _ = _copy(finished, tmp_path)
    phase = root / "checkpoints" / "phased" / "seed_0" / "phase_2"
    done = json.loads((phase / "DONE").read_text())
    del done["weights"]
    (phase / "DONE").write_text(json.dumps(done))
    _edit(phase / ADAPTER)  # not vouched for by this DONE: loaded as it is, as before the field existed
    assert integrity.recorded(phase) is None
    load_checkpoint(phase, trainable=False)


@pytest.mark.slow
def test_train_refuses_to_continue_from_a_cut_short_finished_phase_in_one_line(finished, tmp_path):
    root, raw = _copy(finished, tmp_path)
    phase1, phase2 = (root / "checkpoints" / "phased" / "seed_0" / f"phase_{k}" for k in (1, 2))
    shutil.rmtree(phase2)  # phase 2 trains from phase 1's weights
    _cut(phase1 / ADAPTER)
    cfg = tmp_path / "config.yaml"
    cfg.write_text(json.dumps(raw))
    res = subprocess.run(CLI + ["train", str(cfg)], env=_env(), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 2, res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    [line] = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert line.startswith(f"error: {phase1 / ADAPTER} has ") and "DONE recorded" in line
    assert not (phase2 / "DONE").exists()


# ---------------------------------------------------------------------------------------------------------------
# An unfinished phase: damaged files are trained again
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_zero_byte_weight_file_without_done_is_trained_again(finished, tmp_path):
    root, raw = _copy(finished, tmp_path)
    phase2 = root / "checkpoints" / "phased" / "seed_0" / "phase_2"
    (phase2 / "DONE").unlink()
    _empty(phase2 / ADAPTER)
    _train(raw)
    assert (phase2 / "DONE").is_file() and not (phase2 / "trainer").exists()
    assert _same(_weights(phase2), _weights(finished / "checkpoints" / "phased" / "seed_0" / "phase_2"))
    integrity.verify(phase2)


class CrashAfterSecondSave(TrainerCallback):
    """Raises right after the second Trainer checkpoint (phase 2, step 1) is written, as a crash would."""

    def __init__(self) -> None:
        self.saves = 0

    def on_save(self, args, state, control, **kw):
        self.saves += 1
        if self.saves == 2:
            raise RuntimeError("crash after the checkpoint")


@pytest.mark.slow
def test_a_trainer_checkpoint_with_cut_short_weights_is_skipped_and_the_phase_trains_from_its_start(
        finished, tmp_path, capfd):
    root = tmp_path / "run"
    raw = json.loads((finished.parent / "config.yaml").read_text())
    shutil.copytree(finished / "data", root / "data")
    shutil.copytree(finished / "scores", root / "scores")
    raw["run_dir"] = str(root)
    with pytest.raises(RuntimeError, match="crash after the checkpoint"):
        _train(raw, [CrashAfterSecondSave()])
    phase2 = root / "checkpoints" / "phased" / "seed_0" / "phase_2"
    ckpt = phase2 / "trainer" / "checkpoint-1"
    assert (ckpt / "trainer_state.json").is_file() and not (phase2 / "DONE").exists()
    _cut(ckpt / ADAPTER)  # a half copy: trainer_state.json says complete, the weights are not
    capfd.readouterr()
    _train(raw)
    assert f"note: {ckpt / ADAPTER} is not a whole safetensors file" in capfd.readouterr().err
    done = json.loads((phase2 / "DONE").read_text())
    assert done["resumed_from"] is None and done["global_step"] == 2
    assert _same(_weights(phase2), _weights(finished / "checkpoints" / "phased" / "seed_0" / "phase_2"))


def test_complete_tells_whole_weight_files_from_torn_ones(tmp_path):
    import torch
    from safetensors.torch import save_file

    st, pt = tmp_path / "w.safetensors", tmp_path / "optimizer.pt"
    save_file({"a": torch.ones(64, 64)}, st)
    torch.save({"state": torch.zeros(1000)}, pt)
    assert integrity.complete(st) is None and integrity.complete(pt) is None
    for f in (st, pt):
        _cut(f)
        assert integrity.complete(f)
        _empty(f)
        assert integrity.complete(f) == "0 bytes"


# ---------------------------------------------------------------------------------------------------------------
# A damaged sqlite cache
# ---------------------------------------------------------------------------------------------------------------


def test_a_cache_file_that_is_not_a_database_is_named_with_the_fix(tmp_path):
    path = tmp_path / "cache" / "llm.sqlite"
    path.parent.mkdir()
    path.write_bytes(b"not sqlite at all " * 500)
    with pytest.raises(CorruptCache) as e:
        KVCache(path, "responses")
    assert str(e.value).startswith(f"cache {path} is damaged (file is not a database)")
    assert f"mv {path}* {path.parent}/damaged/" in str(e.value)


def _alpaca(path: Path, n: int) -> Path:
    rows = [{"instruction": f"Write about topic number {i}. " * 20, "input": "", "output": f"Topic {i}."}
            for i in range(n)]
    path.write_text(json.dumps(rows), encoding="utf-8")
    return path


def test_a_cut_short_llm_cache_stops_scoring_in_one_line_and_sends_nothing(tmp_path):
    n = 12
    run = tmp_path / "run"
    with FakeLLMServer(reply="3") as srv:
        cmd = CLI + ["score", "configs/quickstart.yaml", f"run_dir={run}",
                     f"data.train=[{{path: {_alpaca(tmp_path / 'alpaca.json', n)}, format: alpaca}}]",
                     "scoring.scorer=judge", f"scoring.judge.base_url={srv.base_url}", "scoring.judge.model=fake",
                     "scoring.use_logprobs=false"]
        assert subprocess.run(cmd, env=_env(), cwd=REPO, capture_output=True, timeout=300).returncode == 0
        assert srv.count == n
        cache = run / "cache" / "llm.sqlite"
        assert cache.stat().st_size > 3 * 4096 and not Path(f"{cache}-wal").exists()
        _cut(cache)  # a half copy of the run dir
        (run / "scores" / "judge.jsonl").unlink()  # score again: every answer is in the (damaged) cache
        res = subprocess.run(cmd, env=_env(), cwd=REPO, capture_output=True, text=True, timeout=300)
        assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-3000:]
        [line] = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
        assert line.startswith(f"error: cache {cache} is damaged (database disk image is malformed)")
        assert srv.count == n  # nothing was sent again behind the user's back
        fix = re.search(r"Move it away \(`(.+?)`\)", line).group(1)
        subprocess.run(fix, shell=True, check=True)  # the fix as the message gives it
        assert not cache.exists() and (run / "cache" / "damaged" / "llm.sqlite").is_file()
        dry = subprocess.run(cmd + ["--dry-run"], env=_env(), cwd=REPO, capture_output=True, text=True, timeout=300)
        assert dry.returncode == 0, dry.stderr[-3000:]
        assert f"0 cached, {n} to send" in " ".join(dry.stderr.split())
        assert srv.count == n
