"""phased-ift: Phased Instruction Fine-Tuning (Pang et al., ACL Findings 2024, arXiv 2406.04371).

Pipeline (each step reads and writes files in one run dir, each step is idempotent):
data -> score difficulty -> split into phases -> train phase by phase (and control arms) -> generate -> judge /
evaluate -> report (`phased_ift.pipeline.STEPS`). See README.md for the run-dir layout, docs/architecture.md for
the package layout, and `phased-ift --help` for the CLI.
"""

__version__ = "0.1.0"

from phased_ift.errors import PhasedIFTError  # noqa: E402

__all__ = ["PhasedIFTError", "__version__"]
