"""The run dir: every pipeline step talks to the others only through these files.

    runs/<name>/
      config.yaml                      resolved config (no secrets)
      data/train.jsonl                 normalised Examples; data/rejects.jsonl ({"record", "reason", "source"})
      scores/<scorer>.jsonl            {"id", "score", ...raw judge replies / features}
      phases/phase_<k>.jsonl           Examples of phase k (1-based) per arm-defining method; phases/manifest.json
      checkpoints/<arm>/seed_<s>/phase_<k>/   model or adapter, tokenizer, hparams.json, losses.jsonl, DONE
      generations/<arm>/seed_<s>/phase_<k>/<testset>.jsonl
      judgements/<a>__vs__<b>/seed_<s>/<testset>.jsonl   raw verdicts of both orders
      evaluation/<arm>/seed_<s>/phase_<k>/reference_loss.json
      report/report.md, report.html, *.png, summary.json
      cache/llm.sqlite                 every LLM request/response, keyed by the canonical request JSON

A step is done when its output exists (files are written atomically, DONE markers last), so re-running a
command resumes where it stopped.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunDir:
    root: Path

    def __init__(self, root: str | Path) -> None:
        object.__setattr__(self, "root", Path(root))

    # data / scores / phases
    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def train_data(self) -> Path:
        return self.root / "data" / "train.jsonl"

    @property
    def rejects(self) -> Path:
        return self.root / "data" / "rejects.jsonl"

    def scores(self, scorer: str) -> Path:
        return self.root / "scores" / f"{scorer}.jsonl"

    @property
    def phases_dir(self) -> Path:
        return self.root / "phases"

    def phase_file(self, k: int, control: str | None = None) -> Path:
        """Data of phase k (1-based): phases/phase_<k>.jsonl, or a control arm's phases/<control>/phase_<k>.jsonl."""
        if control is None:
            return self.phases_dir / f"phase_{k}.jsonl"
        return self.phases_dir / control / f"phase_{k}.jsonl"

    @property
    def phases_manifest(self) -> Path:
        return self.phases_dir / "manifest.json"

    # training / generation / judging
    def checkpoint(self, arm: str, k: int, seed: int = 0) -> Path:
        return self.root / "checkpoints" / arm / f"seed_{seed}" / f"phase_{k}"

    def generations(self, arm: str, k: int, testset: str, seed: int = 0) -> Path:
        return self.root / "generations" / arm / f"seed_{seed}" / f"phase_{k}" / f"{testset}.jsonl"

    def judgements(self, arm_a: str, arm_b: str, testset: str, seed: int = 0, phase: int | None = None) -> Path:
        sub = f"seed_{seed}" if phase is None else f"seed_{seed}/phase_{phase}"
        return self.root / "judgements" / f"{arm_a}__vs__{arm_b}" / sub / f"{testset}.jsonl"

    def evaluation(self, arm: str, k: int, seed: int = 0) -> Path:
        return self.root / "evaluation" / arm / f"seed_{seed}" / f"phase_{k}" / "reference_loss.json"

    @property
    def report_dir(self) -> Path:
        return self.root / "report"

    @property
    def llm_cache(self) -> Path:
        return self.root / "cache" / "llm.sqlite"
