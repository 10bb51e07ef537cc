"""The run dir: every pipeline step talks to the others only through these files.

    runs/<name>/
      config.yaml                      resolved config (no secrets)
      data/train.jsonl                 normalised Examples; data/rejects.jsonl ({"source", "line", "record", "reason"})
      sit/sequential.jsonl             Seq-Instruct examples (sit-generate); kept.jsonl, rejects.jsonl, summary.json
      scores/<scorer>.jsonl            {"id", "score", ...raw judge replies / features}
      phases/phase_<k>.jsonl           Examples of phase k (1-based) per arm-defining method; phases/manifest.json
      checkpoints/<arm>/seed_<s>/phase_<k>/   model or adapter, tokenizer, hparams.json, losses.jsonl, DONE
      tracking/<arm>/seed_<s>/         TensorBoard events of all phases of an arm x seed (train.report_to); wandb/
      generations/<arm>/seed_<s>/phase_<k>/<testset>.jsonl
      judgements/<a>__vs__<b>/seed_<s>/[phase_<k>/]<testset>.jsonl   raw verdicts of both orders
      grades/<arm>/seed_<s>/phase_<k>/<testset>.jsonl   single-answer grades (MT-Bench: one row per question x turn;
                                       SeqEval: one per answer x metric)
      evaluation/<arm>/seed_<s>/phase_<k>/<benchmark>.json   reference_loss.json, ifeval.json (`evals.BENCHMARKS`)
      report/report.md, report.html, *.png, summary.json
      agreement/<tag>/agreement.json   scorer agreement with the paper's labels (`phased-ift score --against paper`)
      judge_check/<tag>/judge_check.json   the judge against GPT-4's preferences (`phased-ift judge-check`)
      cache/llm.sqlite                 every LLM request/response, keyed by the canonical request JSON
      cache/token_counts.json          token count of each example of data/train.jsonl, keyed (`train.tokencounts`)
      phased-ift.lock, phased-ift.lock.json   the run-dir lock and its holder while a command runs (`runlock`)

A step is done when its output exists (files are written atomically, DONE markers last), so re-running a
command resumes where it stopped.

Owns the layout in both directions: `RunDir.<part>(arm, seed, phase, ...)` gives a path; `RunDir.locate(path)`
and the iterators `checkpoint_cells`, `generation_files`, `judgement_files`, `evaluation_files`, `grade_files`,
`agreement_files` read (arm, seed, phase, test set) back from the paths on disk, so no other module parses
the layout.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

_SEED = re.compile(r"seed_(-?\d+)$")
_PHASE = re.compile(r"phase_(\d+)$")
_PAIR = "__vs__"
KINDS = ("checkpoint", "generation", "judgement", "evaluation", "grade")


@dataclass(frozen=True)
class Location:
    """What a run-dir path holds: `kind` ("checkpoint", "generation", "judgement", "evaluation" or "grade") of
    `arm` (for a judgement: arm A, judged against `arm_b`) trained with `seed`, after `phase` (1-based; for a
    judgement None = the final comparison, else phase k of arm A against arm B's final model), on `testset`
    (the file stem; None for checkpoints and evaluations). `path` is the path located."""

    kind: str
    arm: str
    seed: int
    phase: int | None
    testset: str | None = None
    arm_b: str | None = None
    path: Path | None = None


def _seed(name: str) -> int | None:
    m = _SEED.match(name)
    return int(m.group(1)) if m else None


def _phase(name: str) -> int | None:
    m = _PHASE.match(name)
    return int(m.group(1)) if m else None


@dataclass(frozen=True)
class RunDir:
    """The paths of one run dir (`root`), to and from (arm, seed, phase, test set); creates nothing."""

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

    def sit(self, name: str) -> Path:
        """sit/<name>: the Seq-Instruct generation's files (`sit.generation`): sequential.jsonl (the examples),
        kept.jsonl (option D at the first round), rejects.jsonl (with reasons), summary.json (counts)."""
        return self.root / "sit" / name

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

    @property
    def tracking_dir(self) -> Path:
        """Experiment tracking (train.report_to): `tensorboard --logdir` this; wandb's offline runs in wandb/."""
        return self.root / "tracking"

    def tracking(self, arm: str, seed: int = 0) -> Path:
        """The TensorBoard run of one arm x seed: every phase's events on one step axis."""
        return self.tracking_dir / arm / f"seed_{seed}"

    def generations(self, arm: str, k: int, testset: str, seed: int = 0) -> Path:
        return self.root / "generations" / arm / f"seed_{seed}" / f"phase_{k}" / f"{testset}.jsonl"

    def judgements(self, arm_a: str, arm_b: str, testset: str, seed: int = 0, phase: int | None = None) -> Path:
        sub = f"seed_{seed}" if phase is None else f"seed_{seed}/phase_{phase}"
        return self.root / "judgements" / f"{arm_a}__vs__{arm_b}" / sub / f"{testset}.jsonl"

    def evaluation(self, arm: str, k: int, seed: int = 0) -> Path:
        return self.benchmark("reference_loss", arm, k, seed)

    def benchmark(self, name: str, arm: str, k: int, seed: int = 0) -> Path:
        """A benchmark's per-checkpoint file (`evals.BENCHMARKS`): evaluation/<arm>/seed_<s>/phase_<k>/<name>.json."""
        return self.root / "evaluation" / arm / f"seed_{seed}" / f"phase_{k}" / f"{name}.json"

    def judge_check(self, tag: str) -> Path:
        """The folder of one judge check (`pairwise.check`): judgements.jsonl and judge_check.json."""
        return self.root / "judge_check" / tag

    def grades(self, arm: str, k: int, testset: str, seed: int = 0) -> Path:
        """Single-answer grades of phase k's answers on `testset` (MT-Bench: both turns in one file)."""
        return self.root / "grades" / arm / f"seed_{seed}" / f"phase_{k}" / f"{testset}.jsonl"

    @property
    def report_dir(self) -> Path:
        return self.root / "report"

    @property
    def lock_file(self) -> Path:
        """The run-dir lock (`runlock`): one writing command at a time; the file stays, the lock goes with its
        holder."""
        return self.root / "phased-ift.lock"

    @property
    def lock_holder(self) -> Path:
        """Who holds the run-dir lock (`runlock.Holder` as JSON), written after the lock is taken, removed before
        it is released; left behind by a killed holder."""
        return self.root / "phased-ift.lock.json"

    @property
    def llm_cache(self) -> Path:
        return self.root / "cache" / "llm.sqlite"

    @property
    def token_counts(self) -> Path:
        """cache/token_counts.json: each example's token count, keyed by tokenizer, template, max_length and the
        data file's sha256 (`train.tokencounts`)."""
        return self.root / "cache" / "token_counts.json"

    @property
    def agreement_dir(self) -> Path:
        """agreement/: scorer-agreement runs, agreement/<tag>/agreement.json (written by `agreement.run_agreement`)."""
        return self.root / "agreement"

    # the reverse direction: paths on disk -> (arm, seed, phase, test set)
    def locate(self, path: str | Path) -> Location:
        """What `path` holds, read from the layout above (the inverse of `checkpoint`, `generations`, `judgements`,
        `evaluation` and `grades`); a path inside a checkpoint dir (e.g. its losses.jsonl) locates as that checkpoint.

        Seed and phase dirs are read as `seed_<int>` and `phase_<int>`; the test set is the file stem. Nothing is
        read from disk.

        Raises:
            ValueError: the path is not under `root` or not one of those five kinds of path.
        """
        p = Path(path)
        try:
            parts = p.relative_to(self.root).parts
        except ValueError:
            raise ValueError(f"{p} is not inside the run dir {self.root}") from None
        loc = _locate_parts(parts, p)
        if loc is None:
            raise ValueError(f"{p} is not a checkpoint, generation, judgement, evaluation or grade path of {self.root}")
        return loc

    def _find(self, pattern: str, keep=lambda p: True) -> Iterator[tuple[Path, Location]]:
        for p in self.root.glob(pattern):
            if keep(p):
                loc = _locate_parts(p.relative_to(self.root).parts, p)
                if loc is not None:
                    yield p, loc

    def checkpoint_cells(self) -> list[Location]:
        """Every checkpoints/<arm>/seed_<s>/phase_<k>/ dir on disk (finished or not: check its DONE marker), by arm
        name, then seed dir name (as `sorted` orders them: seed_10 before seed_2), then phase number."""
        found = self._find("checkpoints/*/seed_*/phase_*", Path.is_dir)
        return [loc for p, loc in sorted(found, key=lambda t: (t[0].parts[-3], t[0].parts[-2], t[1].phase))]

    def generation_files(self) -> list[Location]:
        """Every generations/<arm>/seed_<s>/phase_<k>/<testset>.jsonl on disk, in `checkpoint_cells` order, then by
        file name."""
        found = self._find("generations/*/seed_*/phase_*/*.jsonl", Path.is_file)
        key = lambda t: (t[0].parts[-4], t[0].parts[-3], t[1].phase, t[0].name)  # noqa: E731
        return [loc for p, loc in sorted(found, key=key)]

    def judgement_files(self) -> list[Location]:
        """Every judgements/<a>__vs__<b>/seed_<s>/[phase_<k>/]<testset>.jsonl on disk: by pair dir name, then seed
        dir name, then final comparisons before phase 1, 2, ..., then path."""
        found = list(self._find("judgements/*/seed_*/*.jsonl", Path.is_file))
        found += self._find("judgements/*/seed_*/phase_*/*.jsonl", Path.is_file)
        seed_dir = lambda t: t[0].parent if t[1].phase is None else t[0].parent.parent  # noqa: E731
        key = lambda t: (seed_dir(t).parent.name, seed_dir(t).name, t[1].phase or 0, str(t[0]))  # noqa: E731
        return [loc for p, loc in sorted(found, key=key)]

    def evaluation_files(self, name: str = "reference_loss.json") -> list[Location]:
        """Every evaluation/<arm>/seed_<s>/phase_<k>/<name> on disk (reference_loss.json, ifeval.json), in
        `checkpoint_cells` order."""
        found = self._find(f"evaluation/*/seed_*/phase_*/{name}", Path.is_file)
        return [loc for p, loc in sorted(found, key=lambda t: (t[0].parts[-4], t[0].parts[-3], t[1].phase))]

    def grade_files(self) -> list[Location]:
        """Every grades/<arm>/seed_<s>/phase_<k>/<testset>.jsonl on disk, in `generation_files` order."""
        found = self._find("grades/*/seed_*/phase_*/*.jsonl", Path.is_file)
        key = lambda t: (t[0].parts[-4], t[0].parts[-3], t[1].phase, t[0].name)  # noqa: E731
        return [loc for p, loc in sorted(found, key=key)]

    def judge_check_files(self) -> list[Path]:
        """Every judge_check/<tag>/judge_check.json on disk, sorted."""
        return sorted((self.root / "judge_check").glob("*/judge_check.json"))

    def agreement_files(self) -> list[Path]:
        """Scorer-agreement tables on disk: agreement/<tag>/agreement.json (sorted), then scores/agreement*.json
        (sorted)."""
        return sorted(self.agreement_dir.glob("*/agreement.json")) + sorted(
            (self.root / "scores").glob("agreement*.json"))


def _locate_parts(parts: tuple[str, ...], path: Path) -> Location | None:
    """The Location of a path given as parts relative to the run dir, or None when it is not in the layout."""
    if len(parts) < 4 or _seed(parts[2]) is None:
        return None
    top, arm, seed = parts[0], parts[1], _seed(parts[2])
    if top == "checkpoints" and _phase(parts[3]) is not None:
        return Location("checkpoint", arm, seed, _phase(parts[3]), path=path)
    if top in ("generations", "evaluation", "grades") and len(parts) == 5 and _phase(parts[3]) is not None:
        if top == "evaluation" and parts[4] == "reference_loss.json":  # of every test set with reference answers
            return Location("evaluation", arm, seed, _phase(parts[3]), path=path)
        if top == "evaluation" and parts[4].endswith(".json"):  # a benchmark's file (ifeval.json): its name
            return Location("evaluation", arm, seed, _phase(parts[3]), Path(parts[4]).stem, path=path)
        if top in ("generations", "grades") and parts[4].endswith(".jsonl"):
            kind = "generation" if top == "generations" else "grade"
            return Location(kind, arm, seed, _phase(parts[3]), Path(parts[4]).stem, path=path)
        return None
    if top == "judgements" and _PAIR in arm and parts[-1].endswith(".jsonl"):
        arm_a, arm_b = arm.split(_PAIR, 1)
        if len(parts) == 4:
            return Location("judgement", arm_a, seed, None, Path(parts[3]).stem, arm_b, path)
        if len(parts) == 5 and _phase(parts[3]) is not None:
            return Location("judgement", arm_a, seed, _phase(parts[3]), Path(parts[4]).stem, arm_b, path)
    return None
