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
    with pytest.raises(PhasedIFTError, match="unknown key `judge.judge.api_key`"):
        load_config(None, ["judge.judge.api_key=sk-abc"])
    cfg = load_config(None, ["run_dir=" + str(tmp_path)])
    out = save_config(cfg, tmp_path / "config.yaml").read_text()
    assert "api_key_env: OPENAI_API_KEY" in out


def test_missing_file():
    with pytest.raises(PhasedIFTError, match="does not exist"):
        load_config("nope.yaml")
