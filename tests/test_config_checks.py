"""The cross-field checks (`config_checks`) run when a config loads, with the one-line messages the steps gave."""

from __future__ import annotations

import pytest

from phased_ift.config import load_config
from phased_ift.errors import PhasedIFTError


@pytest.mark.parametrize("overrides, message", [
    # pairwise.pairs against train.arms (was: when the pairwise step or the plan asked design.judge_pairs_of)
    (["train.arms=[phased,one-off]", "pairwise.pairs=[[reverse,one-off]]"],
     r"pairwise.pairs names arm 'reverse', which is not in train.arms \['phased', 'one-off'\]; add it to train.arms"),
    (["train.arms=[phased,one-off]", "pairwise.pairs=[[phased,phased]]"],
     r"pairwise.pairs has \[phased, phased\]: an arm cannot be judged against itself"),
    # pairwise.test_sets against generate.test_sets (was: when the pairwise step started, judge.pairwise_test_sets)
    (["generate.test_sets=[vicuna,data/mine.jsonl]", "pairwise.test_sets=[koala]"],
     r"pairwise.test_sets \['koala'\] are not among generate.test_sets \['vicuna', 'mine'\]; judge only test sets"),
    # sit.templates step names (was: when sit-generate loaded its templates)
    (["sit.templates={rewrite_d: x.txt}"], r"sit.templates has unknown steps \['rewrite_d'\]; steps: \['separate'"),
    # already at load, now in config_checks: the arms against train.batching and sit.source
    (["train.arms=[phased,sorted]", "train.batching=packing"],
     r"train.batching=packing packs several examples per row and reorders them, but the arms \['sorted'\] set"),
    (["train.arms=[one-off,sit]"], r"train.arms has \['sit'\], which train on the sequential mix, but sit.source"),
    (["sit.source=offline"], r"sit.source=offline mixes sequential examples into the data, but no arm"),
])
def test_cross_field_checks_run_at_load(overrides, message):
    with pytest.raises(PhasedIFTError, match=r"^config \(with overrides\): " + message):
        load_config(None, overrides)


def test_the_checked_configs_load():
    cfg = load_config(None, ["train.arms=[phased,one-off,reverse]", "pairwise.pairs=[[reverse,phased]]",
                             "generate.test_sets=[vicuna,data/mine.jsonl]", "pairwise.test_sets=[mine]",
                             "sit.templates={respond: sit-respond}"])
    assert cfg.pairwise.pairs == [["reverse", "phased"]] and cfg.pairwise.test_sets == ["mine"]


def test_steps_run_the_same_check_on_a_config_changed_after_loading():
    from phased_ift.phases.design import judge_pairs_of
    from phased_ift.sit.generation import load_templates

    cfg = load_config(None, ["train.arms=[phased,one-off,reverse]", "pairwise.pairs=[[reverse,phased]]"])
    cfg.train.arms = ["phased", "one-off"]
    with pytest.raises(PhasedIFTError, match="pairwise.pairs names arm 'reverse', which is not in train.arms"):
        judge_pairs_of(cfg)
    with pytest.raises(PhasedIFTError, match=r"sit.templates has unknown steps \['rewrite_d'\]"):
        load_templates({"rewrite_d": "x.txt"})
