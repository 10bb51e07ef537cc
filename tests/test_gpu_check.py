"""benchmarks/gpu_check.sh and its driver on a machine without a GPU: the fast, clear failures (no GPU, torch
without CUDA, no bundle), the budget that skips parts with a note, the FLOP count of attention, the requirement
check, the bundle's wheel trimming and tokenizer round trip, and (slow) the CPU dry mode on tiny models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import gpu_bundle  # noqa: E402
import gpu_check  # noqa: E402


def _script(tmp_path: Path, env: dict) -> subprocess.CompletedProcess:
    t0 = time.perf_counter()
    res = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--out", str(tmp_path / "out")],
                         env={**os.environ, "PYTHON": sys.executable, **env}, capture_output=True, text=True,
                         timeout=120)
    res.seconds = time.perf_counter() - t0
    return res


def _fake_bin(tmp_path: Path, gpus: str) -> str:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text(f"#!/bin/sh\nprintf '{gpus}'\n")
    (bin_dir / "nvidia-smi").chmod(0o755)
    return f"{bin_dir}:/usr/bin:/bin"


@pytest.mark.parametrize("case", ["no nvidia-smi", "no GPU listed", "torch without CUDA", "no bundle"])
def test_script_fails_fast_with_one_clear_line(tmp_path, case):
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("checks the failures of a machine without CUDA")
    env = {"GPU_CHECK_BUNDLE": str(tmp_path / "nobundle")}
    if case == "no nvidia-smi":
        env["PATH"] = str(tmp_path / "empty") + ":/usr/bin:/bin"
        if any(Path(d, "nvidia-smi").exists() for d in ("/usr/bin", "/bin")):
            pytest.skip("nvidia-smi is installed here")
    elif case == "no GPU listed":
        env["PATH"] = _fake_bin(tmp_path, "")
    elif case == "torch without CUDA":
        env["PATH"] = _fake_bin(tmp_path, "GPU 0: NVIDIA H200 (UUID: GPU-0)\\n")
    else:
        env["GPU_CHECK_ALLOW_CPU"] = "1"
    res = _script(tmp_path, env)
    code, text = {"no nvidia-smi": (3, "no CUDA GPU: nvidia-smi is not on PATH"),
                  "no GPU listed": (3, "no CUDA GPU: nvidia-smi -L lists none"),
                  "torch without CUDA": (4, "torch has no usable CUDA"),
                  "no bundle": (5, "bundle missing")}[case]
    assert res.returncode == code, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu_check: ") and text in lines[0]
    assert res.stdout == "" and not (tmp_path / "out").exists()  # nothing ran, nothing was written
    assert res.seconds < 60


def test_an_exhausted_budget_skips_every_part_with_a_note(tmp_path):
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--tiny", "--budget", "0",
                          "--out", str(out), "--work", str(tmp_path / "w")], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    summary = json.loads((out / "gpu_summary.json").read_text())
    assert list(summary["parts"]) == list(gpu_check.PARTS)
    for name, rec in summary["parts"].items():
        assert rec["status"] == "skipped", name
        assert "GPU only" in rec["note"] if gpu_check.PARTS[name].gpu_only else "of the budget left" in rec["note"]
    assert sorted(p.name for p in out.iterdir()) == ["gpu_summary.json"]
    bad = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--tiny", "--parts", "nope",
                          "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "unknown parts ['nope']" in bad.stderr


def test_attention_flops_count_causal_pairs_within_the_window():
    full = SimpleNamespace(num_attention_heads=2, head_dim=8, hidden_size=16, num_hidden_layers=1)
    # one document of 4 tokens: 4 + 3 + 2 + 1 = 10 causal pairs; 12 FLOPs x heads x head_dim per pair (fwd + bwd)
    assert gpu_check.attention_flops_per_token(full, [4]) == 12 * 2 * 8 * 10 / 4
    sliding = SimpleNamespace(**vars(full), num_key_value_heads=1, sliding_window=2,
                              layer_types=["sliding_attention", "full_attention"])
    # window 2: 1 + 2 + 2 + 2 = 7 pairs in the sliding layer, 10 in the full one; two documents average per token
    assert gpu_check.attention_flops_per_token(sliding, [4]) == 12 * 2 * 8 * (7 + 10) / 4
    assert gpu_check.attention_flops_per_token(full, [4, 2]) == 12 * 2 * 8 * (10 + 3) / 6


def test_unmet_requirements_name_the_package_the_version_and_who_needs_it(monkeypatch):
    import importlib.metadata as md

    assert gpu_check.unmet_requirements() == []  # this venv is what the pins were taken from
    real = md.distribution

    class OldNumpy:
        version, requires = "1.0", None

    def fake(name):
        if name.lower() == "trl":
            raise md.PackageNotFoundError(name)
        return OldNumpy() if name.lower() == "numpy" else real(name)

    monkeypatch.setattr(md, "distribution", fake)
    unmet = gpu_check.unmet_requirements()
    assert any(u.startswith("numpy") and "(needed by phased-ift): 1.0 installed" in u for u in unmet), unmet
    assert any(u.startswith("trl") and "not installed" in u for u in unmet), unmet


def test_trimmed_bitsandbytes_wheel_keeps_cuda_12_6_plus_and_its_record(tmp_path):
    wheel = tmp_path / "bitsandbytes-0.50.2-py3-none-manylinux_2_24_x86_64.whl"
    libs = ["cuda118", "cuda124", "cuda126", "cuda128", "cuda130", "rocm72", "xpu2025", "cpu"]
    with zipfile.ZipFile(wheel, "w") as z:
        for lib in libs:
            z.writestr(f"bitsandbytes/libbitsandbytes_{lib}.so", b"x" * 1000)
        z.writestr("bitsandbytes/__init__.py", "")
        z.writestr("bitsandbytes-0.50.2.dist-info/RECORD", "".join(
            f"bitsandbytes/libbitsandbytes_{lib}.so,sha256=abc,1000\n" for lib in libs) + "bitsandbytes/__init__.py,,\n")
    before, after = gpu_bundle.trim_bitsandbytes(wheel)
    assert after < before
    with zipfile.ZipFile(wheel) as z:
        kept = sorted(n.split("_", 1)[1][:-3] for n in z.namelist() if "libbitsandbytes_" in n)
        record = z.read("bitsandbytes-0.50.2.dist-info/RECORD").decode()
    assert kept == ["cpu", "cuda126", "cuda128", "cuda130"]
    assert "cuda118" not in record and "rocm72" not in record and "cuda128" in record and "__init__.py" in record


def test_bundle_model_round_trips_the_tokenizer(tmp_path, tiny_model_dir):
    info = gpu_bundle.add_model(tmp_path / "bundle", "tiny", Path(tiny_model_dir))
    assert "tokenizer.json.xz" in info["files"] and "tokenizer.json" not in info["files"]
    assert info["bytes"] < (Path(tiny_model_dir) / "tokenizer.json").stat().st_size
    out = gpu_bundle.unpack_model(tmp_path / "bundle" / "models" / "tiny", tmp_path / "unpacked")
    assert (out / "tokenizer.json").read_bytes() == (Path(tiny_model_dir) / "tokenizer.json").read_bytes()


def test_bundle_data_are_synthetic_stand_ins_with_the_real_lengths(tmp_path, data_home):
    """No text of the CC BY-NC data travels: same files, record counts and word counts, other words."""
    files = gpu_bundle.add_data(tmp_path / "b", data_home)
    assert "PROVENANCE.md" in files and "Synthetic" in (tmp_path / "b" / "data" / "PROVENANCE.md").read_text()
    real = json.loads((data_home / "alpagasus/random_9k.json").read_text())
    fake = json.loads((tmp_path / "b" / "data" / "alpagasus/random_9k.json").read_text())
    assert len(fake) == len(real) and set(fake[0]) == set(real[0])
    assert all(len(f[k].split()) == len(r[k].split()) for f, r in zip(fake, real) for k in r)
    assert sum(f["instruction"] == r["instruction"] for f, r in zip(fake, real) if r["instruction"]) == 0
    koala = (tmp_path / "b" / "data" / "alpagasus/koala_test_set.jsonl").read_text().splitlines()
    real_koala = (data_home / "alpagasus/koala_test_set.jsonl").read_text().splitlines()
    assert len(koala) == len(real_koala) and json.loads(koala[0])["id"] == json.loads(real_koala[0])["id"]


@pytest.mark.slow
def test_cpu_dry_mode_runs_the_parts_on_tiny_models(tmp_path, smollm2_path, data_home):
    """GPU_CHECK_ALLOW_CPU=1 through the driver: MFU bookkeeping, IFD arms, generation and the qlora error on
    tiny random models from a bundle built here (the resume part is test_train's kill -9 test, on the GPU there)."""
    bundle = tmp_path / "bundle"
    gpu_bundle.add_model(bundle, "smollm2-135m", Path(smollm2_path))
    gpu_bundle.add_data(bundle, data_home)
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--budget", "1500", "--parts",
                          "mfu_llama1b_sdpa,ifd,generate,qlora", "--out", str(out), "--work", str(tmp_path / "w"),
                          "--bundle", str(bundle)], capture_output=True, text=True, timeout=1600,
                         env={**os.environ, "GPU_CHECK_ALLOW_CPU": "1", "PYTHONPATH": str(REPO / "src"),
                              "PHASED_IFT_DATA_HOME": str(bundle / "data")})
    assert res.returncode == 0, res.stdout + res.stderr
    summary = json.loads((out / "gpu_summary.json").read_text())
    assert {k: v["status"] for k, v in summary["parts"].items()} == dict.fromkeys(
        ["mfu_llama1b_sdpa", "ifd", "generate", "qlora"], "ok")
    mfu = json.loads((out / "gpu_mfu_llama1b_sdpa.json").read_text())
    assert mfu["steady"]["steps"] == 3 * (3 - 1) and mfu["steady"]["tokens"] > 0 and 0 < mfu["mfu"] < 1e-3
    # 2 layers of q, o (64 x 64), k, v (64 x 32), gate, up, down (64 x 128), and the LM head (64 x 49152 SmolLM2 ids)
    assert mfu["linear_params"] == 2 * (2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 128) + 64 * 49152
    assert mfu["flops_per_token"]["dense"] == 6 * mfu["linear_params"]
    assert mfu["end_to_end"]["steps"] == 9 and summary["targets_met"]["mfu_llama1b_sdpa"] is False
    ifd = json.loads((out / "gpu_ifd.json").read_text())
    assert set(ifd["speedup_vs_reference"]) == {"loop", "batched", "default"}
    assert all(ifd[a]["max_rel_ifd_diff"] < 1e-3 for a in ("loop", "batched"))
    gen = json.loads((out / "gpu_generate.json").read_text())
    assert gen["single"]["tokens"] > 0 and gen["batched"]["tokens"] > 0
    q = json.loads((out / "gpu_qlora.json").read_text())
    assert q["ok"] and "needs a CUDA GPU" in q["cpu_error"] and not q["loaded_weights"]
