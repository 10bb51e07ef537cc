"""The arms that separate the causes, at the trainer: the competence curriculum (c(t), its sampler over a whole run),
the order the trainer feeds for `sorted` and `competence`, smoke runs through the real train step on the tiny
model, and every arm's budget in example-epochs in the plan."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from phased_ift.config import config_from_dict
from phased_ift.phases.design import get_arm
from phased_ift.pipeline import step_split
from phased_ift.rundir import RunDir
from phased_ift.train import plan_training, train_phases
from phased_ift.train.samplers import CompetenceSampler, admitted, competence, step_competence
from test_train import _setup as _train_setup


def _setup(tmp_path: Path, model_dir: Path, n: int = 24, **train) -> dict:
    """test_train's run dir (scores/meta.jsonl: score = i % 5 + 1, so ties), with the epochs deciding the steps
    unless max_steps is given."""
    return _train_setup(tmp_path, model_dir, n, **{"max_steps": -1, **train})


def test_competence_follows_platanios_sqrt_schedule():
    c0, T = 0.01, 100
    assert competence(0, T, c0) == pytest.approx(c0)
    assert competence(T, T, c0) == 1.0 and competence(2 * T, T, c0) == 1.0
    assert competence(50, T, c0) == pytest.approx(math.sqrt(50 * (1 - c0 ** 2) / T + c0 ** 2))
    values = [competence(t, T, c0) for t in range(T + 1)]
    assert values == sorted(values)
    assert step_competence(0, T, c0) == pytest.approx(c0) and step_competence(T - 1, T, c0) == 1.0
    assert admitted(1.0, 24) == 24 and admitted(0.5, 24) == 12 and admitted(0.01, 24) == 1  # at least one
    assert admitted(competence(T, T, c0), 1000) == 1000 and admitted(c0, 1000) == 10  # c0 N at t = 0


@pytest.mark.parametrize("n,bs,per_step,epochs,c0", [(24, 4, 1, 1, 0.01), (50, 4, 2, 3, 0.1), (1000, 16, 1, 2, 0.01)])
def test_competence_sampler_never_yields_a_rank_above_c_t_n_over_a_whole_run(n, bs, per_step, epochs, c0):
    steps_per_epoch = math.ceil(math.ceil(n / bs) / per_step)
    T = steps_per_epoch * epochs
    sampler = CompetenceSampler(n, bs, per_step, steps_per_epoch, T, c0, seed=3)
    seen_steps, drawn = set(), []
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        batches = sampler.batches()
        assert [i for _, b in batches for i in b] == list(sampler) and len(list(sampler)) == len(sampler) == n
        for t, batch in batches:
            seen_steps.add(t)
            c = step_competence(t, T, c0)
            limit = max(1, math.floor(c * n + 1e-9))  # ranks 1..floor(c(t) N), at least the easiest example
            assert max(batch) + 1 <= limit, (t, c, batch)
            if limit >= len(batch):
                assert len(set(batch)) == len(batch)  # no repeats inside a batch when enough are admitted
            drawn += batch
    assert seen_steps == set(range(T))
    first = CompetenceSampler(n, bs, per_step, steps_per_epoch, T, c0, seed=3).batches()[0]
    assert first[0] == 0 and max(first[1]) + 1 <= max(1, math.floor(c0 * n + 1e-9))  # c0 at t = 0
    last_t = max(seen_steps)
    assert admitted(step_competence(last_t, T, c0), n) == n  # the last step admits everything
    assert len(drawn) == n * epochs  # one-off's budget: N draws per epoch
    again = CompetenceSampler(n, bs, per_step, steps_per_epoch, T, c0, seed=3)
    other = CompetenceSampler(n, bs, per_step, steps_per_epoch, T, c0, seed=4)
    assert list(again) == list(CompetenceSampler(n, bs, per_step, steps_per_epoch, T, c0, seed=3))
    assert list(other) != list(again)


class _FedRows:
    """Records, per training_step call, the global step and the input_ids rows the trainer feeds."""

    def __init__(self, monkeypatch) -> None:
        from phased_ift.train.trainer import PhaseSFTTrainer

        self.calls: list[tuple[int, list[list[int]]]] = []
        original = PhaseSFTTrainer.training_step

        def record(trainer, model, inputs, num_items_in_batch=None):
            ids, mask = inputs["input_ids"], inputs["attention_mask"]
            rows = [row[: int(m.sum())].tolist() for row, m in zip(ids, mask)]
            self.calls.append((trainer.state.global_step, rows))
            return original(trainer, model, inputs, num_items_in_batch)

        monkeypatch.setattr(PhaseSFTTrainer, "training_step", record)


def _ranks(cfg, run: RunDir, arm: str, tok_dir) -> dict[tuple, int]:
    """input_ids of each example of the arm's (single, sorted) phase -> its rank - 1 (its index)."""
    from phased_ift.modeling import load_tokenizer
    from phased_ift.train import tokenize_examples

    (data,) = get_arm(arm).phase_data(run, 3, 0, cfg.train)
    rows = tokenize_examples(load_tokenizer(str(tok_dir)), data, "chat", 64)
    index = {tuple(r["input_ids"]): i for i, r in enumerate(rows)}
    assert len(index) == len(rows)
    return index


@pytest.mark.slow
def test_sorted_and_competence_train_through_the_real_step_in_curriculum_order(tmp_path, tiny_model_dir,
                                                                                monkeypatch):
    cfg = config_from_dict(_setup(tmp_path, tiny_model_dir, arms=["sorted", "competence"], batching="bucket",
                                  epochs=2.0, competence_c0=0.2))
    run = RunDir(cfg.run_dir)
    step_split(cfg)
    fed = _FedRows(monkeypatch)
    out = train_phases(cfg, run)
    sorted_calls, competence_calls = fed.calls[:12], fed.calls[12:]  # train.arms order: sorted, then competence
    assert len(sorted_calls) == len(competence_calls) == 12  # ceil(24 / 4) x 2 epochs: one-off's steps
    # sorted: the trainer feeds the sorted union in order (no shuffling, no length buckets), once per epoch
    index = _ranks(cfg, run, "sorted", tiny_model_dir)
    order = [index[tuple(r)] for _, rows in sorted_calls for r in rows]
    assert order == list(range(24)) * 2
    (data,) = get_arm("sorted").phase_data(run, 3, 0, cfg.train)
    scores = [data[i].meta["score"] for i in order[:24]]
    assert scores == sorted(scores) and scores[0] < scores[-1]
    # competence: at step t only ranks <= c(t) N, c from c0 = 0.2 to 1 over T = 12 steps
    index = _ranks(cfg, run, "competence", tiny_model_dir)
    T = 12
    for t, rows in competence_calls:
        limit = admitted(step_competence(t, T, 0.2), 24)
        assert all(index[tuple(r)] + 1 <= limit for r in rows), (t, limit)
    assert [t for t, _ in competence_calls] == list(range(T))
    assert max(index[tuple(r)] for r in competence_calls[0][1]) + 1 <= math.floor(0.2 * 24)
    for arm, sampler in (("sorted", "sequential"), ("competence", "competence")):
        (phase_dir,) = out[arm][0]
        hp = json.loads((phase_dir / "hparams.json").read_text())
        assert (phase_dir / "DONE").is_file() and hp["examples"] == 24 and hp["sampler"] == sampler
        assert json.loads((phase_dir / "DONE").read_text())["global_step"] == T
    assert json.loads((out["competence"][0][0] / "hparams.json").read_text())["arm_params"] == {"competence_c0": 0.2}


def test_competence_sampler_of_the_trainer_counts_the_trainers_steps(tmp_path, tiny_model_dir):
    """build_trainer gives the competence arm its sampler, T = the Trainer's optimizer steps (grad_accum 2)."""
    from phased_ift.modeling import load_tokenizer, resolve_model_path
    from phased_ift.train import phase_hparams, tokenize_examples
    from phased_ift.train.trainer import build_trainer

    cfg = config_from_dict(_setup(tmp_path, tiny_model_dir, arms=["competence"], grad_accum=2, epochs=1.5))
    run = RunDir(cfg.run_dir)
    step_split(cfg)
    tok = load_tokenizer(str(tiny_model_dir))
    (data,) = get_arm("competence").phase_data(run, 3, 0, cfg.train)
    rows = tokenize_examples(tok, data, "chat", 64)
    trainer = build_trainer(cfg, rows, tok, None, resolve_model_path(str(tiny_model_dir)),
                            phase_hparams(cfg, "competence", 1), 0, tmp_path / "t")
    sampler = trainer._get_train_sampler()
    assert isinstance(sampler, CompetenceSampler)
    assert (sampler.total_steps, sampler.steps_per_epoch, sampler.batches_per_step) == (5, 3, 2)  # 6 batches / 2
    assert sampler.c0 == 0.01 and sampler.n == 24


def test_plan_reports_each_arms_budget_in_example_epochs(tmp_path, tiny_model_dir):
    arms = ["one-off", "phased", "random", "sorted", "competence", "replay", "order-3-2-1"]
    cfg = config_from_dict(_setup(tmp_path, tiny_model_dir, arms=arms, epochs=2.0, replay_ratio=0.1))
    run = RunDir(cfg.run_dir)
    step_split(cfg)
    plan = plan_training(cfg, run, world_size=1)
    budget = plan["example_epochs"]
    assert plan["examples"] == 24
    assert {a: budget[a] for a in arms if a != "replay"} == {a: 48.0 for a in arms if a != "replay"}
    # replay adds round(0.1 x 8) + round(0.1 x 16) = 1 + 2 examples to phases 2 and 3, each for 2 epochs
    assert [r["examples"] for r in plan["arms"]["replay"]] == [8, 9, 10] and budget["replay"] == 54.0
    assert plan["total_steps"]["sorted"] == plan["total_steps"]["competence"] == plan["total_steps"]["one-off"] == 12
    assert all(r["example_epochs"] == r["examples"] * r["epochs"] for rows in plan["arms"].values() for r in rows)
    assert "budget in example-epochs (examples x epochs; one-off's: 24 x 2 = 48): one-off 48, phased 48" in plan["note"]
    assert "replay 54 (+6, +12.5%: train.replay_ratio=0.1)" in plan["note"]
    unsplit = config_from_dict(_setup(tmp_path / "u", tiny_model_dir, arms=arms, epochs=2.0))
    uplan = plan_training(unsplit, RunDir(unsplit.run_dir), world_size=1)
    assert uplan["example_epochs"] == budget and "equal-size phases" in uplan["note"]


@pytest.mark.slow
def test_replay_and_an_order_arm_train_through_the_real_step(tmp_path, tiny_model_dir):
    """replay trains phases of 8, 8 + 1, 8 + 2 examples and records its ratio; order-3-1-2 trains the hardest
    phase file first, each phase from the previous weights."""
    cfg = config_from_dict(_setup(tmp_path, tiny_model_dir, arms=["replay", "order-3-1-2"], max_steps=1))
    run = RunDir(cfg.run_dir)
    step_split(cfg)
    out = train_phases(cfg, run)
    hps = [json.loads((d / "hparams.json").read_text()) for d in out["replay"][0]]
    assert [h["examples"] for h in hps] == [8, 9, 10] and hps[2]["arm_params"] == {"replay_ratio": 0.1}
    order = [json.loads((d / "hparams.json").read_text()) for d in out["order-3-1-2"][0]]
    assert [d.name for d in out["order-3-1-2"][0]] == ["phase_1", "phase_2", "phase_3"]
    assert order[1]["init_from"] == str(out["order-3-1-2"][0][0]) and order[0]["sampler"] == ""
    assert [p.name for p in get_arm("order-3-1-2").phase_files(run, 3)] == ["phase_3.jsonl", "phase_1.jsonl",
                                                                            "phase_2.jsonl"]
