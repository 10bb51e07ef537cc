"""Experiment tracking (train.report_to): one run per arm x seed, one step axis across phases, read back offline."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
from transformers import TrainerCallback

from phased_ift.config import config_from_dict
from phased_ift.errors import PhasedIFTError
from phased_ift.pipeline import step_split
from phased_ift.rundir import RunDir
from phased_ift.runio import read_jsonl
from phased_ift.train import train_phases

from test_train import _examples, _setup


def _train(tmp_path: Path, model_dir: Path, **train) -> tuple[RunDir, list[Path]]:
    """The phased arm, 3 phases of 2, 4 and 2 steps (24 examples, batch 4, phase_epochs 1, 2, 1), fp32."""
    raw = _setup(tmp_path, model_dir, max_steps=-1, phase_epochs=[1, 2, 1], **train)
    raw["model"]["autocast"] = "none"
    cfg = config_from_dict(raw)
    step_split(cfg)
    run = RunDir(raw["run_dir"])
    return run, train_phases(cfg, run)["phased"][0]


def _scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value)]} of a TensorBoard run dir, as TensorBoard itself reads it (orphans purged)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.mark.slow
def test_tensorboard_loss_curve_runs_on_across_phases_and_equals_losses_jsonl(tmp_path, tiny_model_dir):
    run, dirs = _train(tmp_path, tiny_model_dir, report_to="tensorboard")
    log_dir = run.tracking("phased", 0)
    assert len(list(log_dir.glob("events.out.tfevents.*"))) == 1  # one writer for the three phases
    scalars = _scalars(log_dir)
    expected, phases, offset = [], [], 0
    for k, d in enumerate(dirs, 1):
        rows = list(read_jsonl(d / "losses.jsonl"))
        assert [r["step"] for r in rows] == list(range(1, len(rows) + 1))
        expected += [(offset + r["step"], r["loss"], r["learning_rate"]) for r in rows]
        phases += [k] * len(rows)
        offset += json.loads((d / "DONE").read_text())["global_step"]
    assert [len(list(read_jsonl(d / "losses.jsonl"))) for d in dirs] == [2, 4, 2]
    steps = [s for s, _ in scalars["train/loss"]]
    assert steps == list(range(1, offset + 1))  # strictly increasing, phase k+1's first = phase k's last + 1
    assert steps == [s for s, _, _ in expected]
    assert [v for _, v in scalars["train/loss"]] == pytest.approx([v for _, v, _ in expected], rel=1e-6)
    assert [v for _, v in scalars["train/learning_rate"]] == pytest.approx([lr for *_, lr in expected], rel=1e-6)
    assert scalars["train/phase"] == [(s, float(k)) for s, k in zip(steps, phases)]


@pytest.mark.slow
def test_report_to_none_writes_no_tracking_dir(tmp_path, tiny_model_dir):
    raw = _setup(tmp_path, tiny_model_dir, max_steps=1)
    cfg = config_from_dict(raw)
    step_split(cfg)
    run = RunDir(raw["run_dir"])
    dirs = train_phases(cfg, run)["phased"][0]
    assert all((d / "DONE").is_file() for d in dirs)
    assert not run.tracking_dir.exists()
    assert not list(run.root.rglob("events.out.tfevents.*"))


@pytest.mark.parametrize("report_to", ["none", "tensorboard", "wandb"])
def test_the_trainer_reports_only_through_the_phase_reporter(tmp_path, tiny_model_dir, report_to):
    """report_to reaches the Trainer arguments; transformers' own reporting callback (steps from 0 each phase) is
    removed, the PhaseReporter given in `callbacks` stays."""
    from transformers.integrations import TensorBoardCallback, WandbCallback

    from phased_ift.modeling import load_tokenizer
    from phased_ift.train import phase_hparams, tokenize_examples
    from phased_ift.train.trainer import build_trainer
    from phased_ift.train.tracking import ArmTracker, PhaseReporter

    if report_to == "wandb":
        pytest.importorskip("wandb")
    cfg = config_from_dict(_setup(tmp_path, tiny_model_dir, report_to=report_to))
    tok = load_tokenizer(str(tiny_model_dir))
    rows = tokenize_examples(tok, _examples(4), "chat", 64)
    reporter = ArmTracker(report_to, tmp_path / "tb", "phased-seed0", tmp_path / "wandb").reporter(2, 5)
    trainer = build_trainer(cfg, rows, tok, None, str(tiny_model_dir), phase_hparams(cfg, "phased", 1), 0,
                            tmp_path / "trainer", [reporter])
    assert trainer.args.report_to == ([] if report_to == "none" else [report_to])
    kinds = [type(cb) for cb in trainer.callback_handler.callbacks]
    assert PhaseReporter in kinds and TensorBoardCallback not in kinds and WandbCallback not in kinds


class Crash(TrainerCallback):
    """Stops training with an exception before step 4 of phase 2 (after step 3 was logged, checkpoint at step 2)."""

    def on_step_begin(self, args, state, control, **kw):
        if "phase_2" in args.output_dir and state.global_step == 3:
            raise RuntimeError("crash")


@pytest.mark.slow
def test_a_phase_resumed_after_a_crash_keeps_one_continuous_curve(tmp_path, tiny_model_dir):
    raw = _setup(tmp_path, tiny_model_dir, max_steps=-1, phase_epochs=[1, 2, 1], save_steps=2,
                 report_to="tensorboard")
    raw["model"]["autocast"] = "none"
    cfg = config_from_dict(raw)
    step_split(cfg)
    run = RunDir(raw["run_dir"])
    with pytest.raises(RuntimeError, match="crash"):
        train_phases(cfg, run, callbacks=[Crash()])
    time.sleep(1.1)  # as a restarted process: the next event file's name sorts after this one's
    dirs = train_phases(cfg, run)["phased"][0]
    log_dir = run.tracking("phased", 0)
    assert len(list(log_dir.glob("events.out.tfevents.*"))) == 2
    expected = [r["loss"] for d in dirs for r in read_jsonl(d / "losses.jsonl")]
    loss = _scalars(log_dir)["train/loss"]
    assert [s for s, _ in loss] == list(range(1, 9))  # global step 5 (phase 2 step 3) once, not twice
    assert [v for _, v in loss] == pytest.approx(expected, rel=1e-6)


def test_a_resumed_phase_shows_each_step_once(tmp_path):
    """A killed process logged phase 2's steps 1-4 (global 6-9); the next one resumes from the checkpoint at step 2
    and logs steps 3-6: TensorBoard shows steps 6-11 once, the killed run's values only up to the checkpoint."""
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from phased_ift.train.tracking import ArmTracker

    args = TrainingArguments(output_dir=str(tmp_path / "out"), report_to="none")
    log_dir = tmp_path / "tracking" / "phased" / "seed_0"

    trackers = []

    def attempt(start: int, end: int, base: float) -> None:
        tracker = ArmTracker("tensorboard", log_dir, "phased-seed0", tmp_path / "wandb")
        trackers.append(tracker)
        cb, state = tracker.reporter(2, 5), TrainerState(global_step=start)
        cb.on_train_begin(args, state, TrainerControl())
        for step in range(start + 1, end + 1):
            state.global_step = step
            cb.on_log(args, state, TrainerControl(), logs={"loss": base + step, "learning_rate": 1e-4})
        tracker.writer.flush()  # killed: flushed by the callback after each log, never closed

    attempt(0, 4, 100.0)
    time.sleep(1.1)  # a new process: its event file's name (seconds since the epoch) sorts after the first's
    attempt(2, 6, 0.0)
    for tracker in trackers:
        tracker.close()
    assert _scalars(log_dir)["train/loss"] == [(6, 101.0), (7, 102.0), (8, 3.0), (9, 4.0), (10, 5.0), (11, 6.0)]


def test_missing_tracking_package_names_the_pip_install(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # find_spec -> None: not installed
    raw = _setup(tmp_path, tiny_model_dir, report_to="tensorboard")
    cfg = config_from_dict(raw)
    step_split(cfg)
    with pytest.raises(PhasedIFTError, match=r"pip install tensorboard"):
        train_phases(cfg, RunDir(raw["run_dir"]))
    assert not RunDir(raw["run_dir"]).checkpoint("phased", 1, 0).exists()


def test_report_to_is_checked_with_the_field_and_the_fix():
    with pytest.raises(PhasedIFTError, match=r"train\.report_to = 'tensorbord' is not one of \['none', "
                                             r"'tensorboard', 'wandb'\]; set it to one of those"):
        config_from_dict({"train": {"report_to": "tensorbord"}})


@pytest.mark.slow
def test_wandb_offline_run_per_arm_and_seed_steps_on_across_phases(tmp_path, tiny_model_dir, monkeypatch):
    pytest.importorskip("wandb")
    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_PROJECT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    run, dirs = _train(tmp_path, tiny_model_dir, report_to="wandb")
    runs = list((run.tracking_dir / "wandb" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1  # one run for the three phases
    logged = [h for h in _wandb_history(next(runs[0].glob("run-*.wandb"))) if "train/loss" in h]
    expected = [r["loss"] for d in dirs for r in read_jsonl(d / "losses.jsonl")]
    assert [h["train/global_step"] for h in logged] == list(range(1, 9))
    assert [h["train/phase"] for h in logged] == [1, 1, 2, 2, 2, 2, 3, 3]
    assert [h["train/loss"] for h in logged] == pytest.approx(expected, rel=1e-6)


def _wandb_history(path: Path) -> list[dict]:
    """The history rows of an offline wandb run file: a LevelDB-style log (a 7-byte ":W&B" header, 32 KiB blocks of
    records with a 7-byte header: crc, length, type 1 full / 2 first / 3 middle / 4 last) of wandb Record protos."""
    import struct

    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, buf, rows = path.read_bytes(), 7, b"", []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        _, n, kind = struct.unpack("<IHB", data[pos:pos + 7]) if left >= 7 else (0, 0, 0)
        if kind == 0:  # block padding
            pos += left
            continue
        buf, pos = buf + data[pos + 7:pos + 7 + n], pos + 7 + n
        if kind in (1, 4):
            record = pb.Record.FromString(buf)
            buf = b""
            if record.WhichOneof("record_type") == "history":
                rows.append({"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in record.history.item})
    return rows


@pytest.mark.slow
def test_report_loss_curve_and_tracking_share_the_step_offset_when_logging_steps_does_not_divide(tmp_path,
                                                                                               tiny_model_dir):
    # phases of 2, 4 and 2 steps logged every 3: phase 1 logs nothing, phase 2 logs its step 3, phase 3 nothing.
    # The step offset of phase 2 is phase 1's 2 optimizer steps (`phasedir.step_offsets`), not its last logged step.
    from phased_ift.phasedir import step_offsets
    from phased_ift.report.summary import _summarize_training

    run, dirs = _train(tmp_path, tiny_model_dir, report_to="tensorboard", logging_steps=3)
    assert step_offsets(dirs) == [0, 2, 6]
    curve = _summarize_training(run)["phased"]["0"]
    assert [p["offset"] for p in curve] == [0, 2, 6] and [p["steps"] for p in curve] == [2, 4, 2]
    report_x = [x for p in curve for x, _ in p["points"]]
    assert report_x == [s for s, _ in _scalars(run.tracking("phased", 0))["train/loss"]] == [5]
