import re

import pytest

from phased_ift.config import load_config, save_config
from phased_ift.errors import PhasedIFTError


def write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_defaults_and_overrides(tmp_path):
    p = write(tmp_path, "run_dir: runs/x\ntrain:\n  epochs: 2\n")
    cfg = load_config(p, ["train.learning_rate=1e-4", "phases.k=4", "train.arms=[phased,one-off]"])
    assert cfg.run_dir == "runs/x"
    assert cfg.train.epochs == 2.0
    assert cfg.train.learning_rate == 1e-4
    assert cfg.phases.k == 4
    assert cfg.train.arms == ["phased", "one-off"]


def test_unknown_key_names_file_and_suggests(tmp_path):
    p = write(tmp_path, "train:\n  learning_rat: 1e-4\n")
    with pytest.raises(PhasedIFTError, match=r"c.yaml: unknown key `train.learning_rat`.*learning_rate"):
        load_config(p)


def test_wrong_type(tmp_path):
    p = write(tmp_path, "train:\n  batch_size: eight\n")
    with pytest.raises(PhasedIFTError, match="`train.batch_size` must be an integer"):
        load_config(p)


def test_bad_choice_and_cross_field(tmp_path):
    with pytest.raises(PhasedIFTError, match="train.arms"):
        load_config(None, ["train.arms=[phased,sideways]"])
    with pytest.raises(PhasedIFTError, match="needs 2 thresholds"):
        load_config(None, ["phases.method=thresholds"])
    with pytest.raises(PhasedIFTError, match="phase_epochs has 2 values"):
        load_config(None, ["train.phase_epochs=[1,2]"])


def test_yaml_syntax_error_names_line(tmp_path):
    p = write(tmp_path, "train:\n  epochs: [1,\n")
    with pytest.raises(PhasedIFTError, match="line"):
        load_config(p)


def test_api_key_never_in_config(tmp_path):
    with pytest.raises(PhasedIFTError, match="NAME of an environment variable"):
        load_config(None, ["scoring.judge.api_key_env=sk-abc123"])
    with pytest.raises(PhasedIFTError, match="unknown key `judge.api_key`"):
        load_config(None, ["judge.api_key=sk-abc"])
    cfg = load_config(None, ["run_dir=" + str(tmp_path)])
    out = save_config(cfg, tmp_path / "config.yaml").read_text()
    assert "api_key_env: OPENAI_API_KEY" in out


def test_missing_file():
    with pytest.raises(PhasedIFTError, match="does not exist"):
        load_config("nope.yaml")


@pytest.mark.parametrize("override, message", [
    ("train.seeds=['x']", r"`train.seeds\[0\]` must be an integer, got 'x'"),
    ("train.seeds=[1.5]", r"`train.seeds\[0\]` must be an integer"),
    ("phases.thresholds=['a','b']", r"`phases.thresholds\[0\]` must be a number, got 'a'"),
    ("train.phase_epochs=[1,x,2]", r"`train.phase_epochs\[1\]` must be a number"),
    ("train.phase_learning_rates=[true,1,1]", r"`train.phase_learning_rates\[0\]` must be a number"),
    ("train.arms=[phased,[one-off]]", r"`train.arms\[1\]` must be a string"),
    ("generate.test_sets=[{a: 1}]", r"`generate.test_sets\[0\]` must be a string"),
    ("pairwise.pairs=[phased]", r"`pairwise.pairs\[0\]` must be a list"),
    ("train.lora.target_modules=[[q]]", r"`train.lora.target_modules\[0\]` must be a string"),
])
def test_list_element_types_are_checked_at_load_time(override, message):
    with pytest.raises(PhasedIFTError, match=message):
        load_config(None, [override])


def test_typed_lists_coerce_numbers():
    cfg = load_config(None, ["phases.method=thresholds", "phases.thresholds=[2,3.5]", "train.seeds=[0,1]",
                             "train.phase_epochs=[1,2,3]", "train.phase_learning_rates=[1e-4,2e-4,3e-4]"])
    assert cfg.phases.thresholds == [2.0, 3.5] and all(isinstance(t, float) for t in cfg.phases.thresholds)
    assert cfg.train.seeds == [0, 1] and cfg.train.phase_learning_rates == [1e-4, 2e-4, 3e-4]


@pytest.mark.parametrize("override, key, registry_kind", [
    ("train.arms=[phased,sideways]", "train.arms[1]", "arm"),
    ("scoring.scorer=vibes", "scoring.scorer", "scorer"),
    ("phases.method=by_feel", "phases.method", "phase method"),
    ("generate.backend=tgi", "generate.backend", "generate backend"),
    ("data.train=[{path: x.json, format: csvish}]", "data.train[0].format", "data format"),
])
def test_choices_come_from_the_registries(override, key, registry_kind):
    from phased_ift.config import registry_names

    names = registry_names(registry_kind)
    assert names  # the registry is not empty
    with pytest.raises(PhasedIFTError, match=re.escape(f"{key} = ") + r".* is not one of " + re.escape(str(names))):
        load_config(None, [override])


def test_registry_names_are_the_declared_names():
    """The registries register against these names: tests/test_config_choices.py checks their keys."""
    from phased_ift import config_choices as choices
    from phased_ift.config import registry_names

    assert registry_names("arm") == list(choices.ARM_CHOICES) and registry_names("scorer") == list(choices.SCORERS)
    assert registry_names("data format") == list(choices.FORMAT_CHOICES)


def test_answer_budget_per_test_set_merges_over_the_defaults():
    from phased_ift.config import load_config

    cfg = load_config(None, ["generate.max_new_tokens=64", "generate.max_new_tokens_per_set={ifeval: 96}"])
    g = cfg.generate
    assert (g.budget("ifeval"), g.budget("mt_bench"), g.budget("vicuna")) == (96, 1024, 64)
    assert load_config(None, []).generate.budget("ifeval") == 1280
    with pytest.raises(PhasedIFTError, match="max_new_tokens_per_set.ifeval must be a positive integer"):
        load_config(None, ["generate.max_new_tokens_per_set={ifeval: 0}"])


@pytest.mark.parametrize("old, new", [
    ("judge.judge.base_url=http://127.0.0.1:1/v1", "`judge.judge` was renamed `judge` (e.g. `judge.judge.base_url` is now "
                                                   "`judge.base_url`)"),
    ("judge.template=pair-v2", "`judge.template` was renamed `pairwise.template`"),
    ("judge.pairs=[[phased,one-off]]", "`judge.pairs` was renamed `pairwise.pairs`"),
    ("judge.test_sets=[vicuna]", "`judge.test_sets` was renamed `pairwise.test_sets`"),
    ("judge.seqeval_quality_template=q.txt", "`judge.seqeval_quality_template` was renamed "
                                             "`evaluation.seqeval_quality_template`"),
])
def test_renamed_keys_name_the_new_key(tmp_path, old, new):
    """The judge section now holds the judge's endpoint only; pairwise judging has its own section (issue 27)."""
    with pytest.raises(PhasedIFTError, match=re.escape(new)):
        load_config(None, [old])
    key, _, value = old.partition("=")  # the same key in a YAML file: the error names the file too
    head, *rest = key.split(".")
    nested = f"{head}:\n" + "".join("  " * (i + 1) + f"{part}:\n" for i, part in enumerate(rest[:-1]))
    (tmp_path / "c.yaml").write_text(nested + "  " * len(rest) + f"{rest[-1]}: {value}\n")
    with pytest.raises(PhasedIFTError, match=re.escape(str(tmp_path / "c.yaml")) + ".*" + re.escape(new)):
        load_config(tmp_path / "c.yaml")


def test_config_lists_the_new_keys():
    from phased_ift.config import describe

    keys = {row[0] for row in describe()}
    assert {"judge.base_url", "judge.model", "judge.grade_max_tokens", "pairwise.template", "pairwise.pairs",
            "pairwise.test_sets", "evaluation.seqeval_quality_template"} <= keys
    assert not any(k.startswith(("judge.judge", "judge.template", "judge.pairs")) for k in keys)
    cfg = load_config(None, ["judge.base_url=http://127.0.0.1:1/v1", "judge.model=m", "pairwise.template=pair-v2"])
    assert (cfg.judge.enabled, cfg.judge.max_tokens, cfg.pairwise.template) == (True, 32, "pair-v2")


def test_the_old_judge_command_names_the_pairwise_command(capsys):
    from phased_ift.cli import main

    assert main(["judge", "configs/quickstart.yaml"]) == 2
    cap = capsys.readouterr()
    out = " ".join((cap.out + cap.err).split())
    assert "`phased-ift judge` was renamed `phased-ift pairwise`" in out and "Traceback" not in out
    assert main(["pairwise", "configs/quickstart.yaml", "--dry-run", "run_dir=/nonexistent/x"]) == 0
    cap = capsys.readouterr()
    assert "pairwise: not configured (set judge.base_url and judge.model" in " ".join((cap.out + cap.err).split())
