"""phased-ift: Phased Instruction Fine-Tuning (Pang et al., ACL Findings 2024, arXiv 2406.04371).

Pipeline (each step reads and writes files in one run dir, each step is idempotent):
data -> score difficulty -> split into phases -> train phase by phase (and control arms) -> generate -> pairwise judging /
evaluate -> report (`phased_ift.pipeline.STEPS`). See README.md for the run-dir layout, docs/architecture.md for
the package layout, and `phased-ift --help` for the CLI.

The Python API (docs/api.md; `phased_ift.api`) is importable from here:

    import phased_ift as pift
    phases = pift.split(examples, pift.score(pift.load_data(dataset), "ifd", model=MODEL), k=3)
    pift.export_phases(phases, "out", to="llama-factory", model=MODEL)

Its names load on first use (a module `__getattr__`), so `import phased_ift` and `phased-ift --help` stay fast.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

from phased_ift.errors import PhasedIFTError  # noqa: E402

# name -> the module that defines it, imported on first access
_LAZY = {
    **{name: "phased_ift.api" for name in (
        "ConfigLike", "DataLike", "Phases", "Scores", "configure", "evaluate", "export_phases", "generate_answers",
        "load_data", "run", "score", "split", "train_phases", "write_report", "write_run")},
    "Example": "phased_ift.data",
    "Config": "phased_ift.config",
    "load_config": "phased_ift.config",
}

__all__ = ["PhasedIFTError", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    """The API's names, loaded on first access (PEP 562).

    Raises:
        AttributeError: no such name.
    """
    module = _LAZY.get(name)
    if module == "phased_ift.api":
        from phased_ift import api

        return getattr(api, name)
    if module == "phased_ift.data":
        from phased_ift import data

        return getattr(data, name)
    if module == "phased_ift.config":
        from phased_ift import config

        return getattr(config, name)
    raise AttributeError(f"module 'phased_ift' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
