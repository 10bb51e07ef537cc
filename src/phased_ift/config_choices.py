"""The names every registry is keyed by, as plain data at the bottom of the package (above `errors` only).

Owns the names a config may choose, with one line each for help texts: the scorers, phase methods, generation
backends, data formats, test sets and the benchmarks (`BenchmarkChoice`), samplers, named models, pairwise judge templates,
SIT steps and kinds, and the arms with their flags (`ArmChoice`; a family such as `permutations` names its members:
`arm_choice`, `expand_arms`); and the key of a test set (`testset_key`). No implementation lives here. Each registry
registers its implementations against these names, and tests/test_architecture.py checks that its keys equal them:

    SCORERS            scoring.SCORERS              (scoring/__init__.py)
    PHASE_METHODS      phases.METHODS
    GENERATE_BACKENDS  generate.BACKENDS
    DATA_FORMATS       data.FORMATS                 (FORMAT_CHOICES adds hf and auto: data.FORMAT_NAMES)
    TEST_SETS          data.TEST_SETS
    BENCHMARKS         evals.BENCHMARKS             (what the evaluate step measures: kind, test set, answer budget)
    SAMPLERS           train.samplers.SAMPLERS
    NAMED_MODELS       modeling.NAMED_MODELS
    PAIRWISE_TEMPLATES the packaged templates of judge.load_template
    SIT_STEPS          sit.generation.STEP_TEMPLATES
    SIT_KINDS          sit.compose.KINDS
    EXPORT_TARGETS     export.TARGETS               (`phased-ift export --to`)
    SERVERS            generation.serving.SERVERS   (`phased-ift serve-command --server`)
    GGUF_TYPES         modeling.export.GGUF_TYPES   (`phased-ift export-gguf --outtype`)
    ARM_CHOICES        design.ARMS                  (design adds each arm's control / arrange implementation)

`config` and `config_loading` read their choices and help texts from here, so loading a config imports no step.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

from phased_ift.errors import PhasedIFTError

# ---- difficulty scorers (higher = harder; docs/scoring.md), in registration order
SCORERS = {
    "ifd": "Instruction-Following Difficulty: loss(response | instruction) / loss(response) (Cherry LLM)",
    "loss": "loss(response | instruction), per-token mean",
    "ifd-server": "IFD as `ifd`, the losses from a server's prompt logprobs (vLLM, llama.cpp: scoring.server)",
    "length": "log(1 + response tokens) + log(1 + instruction tokens), no model",
    "meta": "a numeric field of each record's meta (e.g. the paper's released GPT-4 score)",
    "judge": "an LLM judge over an OpenAI-compatible server, 1-5",
    "learned": "a small seeded model (TF-IDF, length features, MiniLM embeddings) fit on difficulty labels",
}
PHASE_METHODS = {
    "thresholds": "fixed score boundaries, the paper's",
    "quantiles": "equal-size phases",
}
GENERATE_BACKENDS = {
    "hf": "transformers",
    "vllm": "GPU, optional",
    "server": "an OpenAI-compatible server that serves the checkpoints: generate.server",
}
DATA_FORMATS = ("alpaca", "phasedsft", "sharegpt", "messages", "testset")
FORMAT_CHOICES = (*DATA_FORMATS, "hf", "auto")  # hf: read through `datasets`; auto: detect

# ---- test sets (data/sources.py knows their files) and the benchmarks among them
TEST_SETS = ("vicuna", "koala", "sinstruct", "wizardlm", "oasst", "helpful_base", "alpaca_eval", "lima", "ifeval",
             "mt_bench", "seqeval")
# A benchmark's kind: how its per-prompt values come about.
LIKELIHOOD = "likelihood"  # the checkpoint's loss of given answers (no generation, no judge)
PROGRAM = "program"        # the checkpoint's answers checked by a program (no judge)
LLM_GRADED = "graded"      # the checkpoint's answers rated one by one by the LLM judge (judge)


@dataclass(frozen=True)
class BenchmarkChoice:
    """What a benchmark is, as data (`evals.Benchmark` adds how it runs, is summarised and reported).

    Attributes:
        name: the registry key, the summary's key, the evaluate step's log and the report's section.
        kind: LIKELIHOOD, PROGRAM or LLM_GRADED.
        test_set: the generate.test_sets key that switches it on and whose answers it reads (None: it reads no
            answers and has its own switch, e.g. evaluation.reference_loss).
        answer_budget: new tokens per answer (per turn) its harness fixes (generate.max_new_tokens_per_set's
            default for its test set); None: generate.max_new_tokens.
        note: one line for the test set's help text.
    """

    name: str
    kind: str
    test_set: str | None = None
    answer_budget: int | None = None
    note: str = ""


# The benchmarks of the evaluate step, in the order they run and are reported (IFEval: Zhou et al. 2023; MT-Bench:
# Zheng et al. 2023; SeqEval: Hu et al. 2024).
BENCHMARKS = {b.name: b for b in (
    BenchmarkChoice("reference_loss", LIKELIHOOD, note="the loss of GPT-4's reference answers"),
    BenchmarkChoice("ifeval", PROGRAM, "ifeval", 1280, "scored without a judge"),
    BenchmarkChoice("mt_bench", LLM_GRADED, "mt_bench", 1024, "two turns, graded by the judge"),
    BenchmarkChoice("seqeval", LLM_GRADED, "seqeval", None, "graded by the judge"),
)}
# verified by program; not judged pairwise unless pairwise.test_sets names them
JUDGE_FREE = tuple(b.test_set for b in BENCHMARKS.values() if b.kind == PROGRAM)
GRADED = tuple(b.test_set for b in BENCHMARKS.values() if b.kind == LLM_GRADED)  # graded answer by answer
# Answer budgets of the test sets whose harnesses fix one (new tokens per answer, per turn).
ANSWER_BUDGETS = {b.test_set: b.answer_budget for b in BENCHMARKS.values() if b.test_set and b.answer_budget}
_TEST_SET_NOTES = {b.test_set: b.note for b in BENCHMARKS.values() if b.test_set}

SAMPLERS = ("sequential", "competence")
EXPORT_TARGETS = {
    "llama-factory": "LLaMA-Factory datasets, one training YAML per stage, run.sh",
    "axolotl": "Axolotl datasets, one training YAML per stage, run.sh",
    "hf": "a datasets.DatasetDict (save_to_disk) with a dataset card",
}
SERVERS = ("vllm", "llama-cpp")  # the servers `phased-ift serve-command` writes commands for
GGUF_TYPES = ("f32", "f16", "bf16", "q8_0")  # llama.cpp converter --outtype values `export-gguf` offers
NAMED_MODELS = ("smollm2-135m-instruct", "gemma-3-270m", "qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct")
PAIRWISE_TEMPLATES = {
    "pairwise": "the paper's 1-10 's1 s2' prompt",
    "reference": "the same, with the GPT-4 reference answer shown; AlpacaEval prompts only",
    "pair-v2": "FastChat's [[A]]/[[B]]/[[C]] verdict prompt, replies of up to judge.grade_max_tokens",
}
SIT_STEPS = ("separate", "classify", "rewrite_a", "rewrite_b", "rewrite_c", "respond")
SIT_KINDS = {
    "chain": "iterations + 1 examples as 'First, ... Then, ...', responses numbered in order",
    "repeat-input": "the SIT paper's early 'repeat the input, then answer'",
}


def require_declared(name: str, declared: Iterable[str], what: str, table: str) -> None:
    """The check every registry makes before it registers `name`: it must be one of the names declared here.

    Raises:
        ValueError: "<what> '<name>' is not declared in config_choices.<table>; add its name there first".
    """
    if name not in declared:
        raise ValueError(f"{what} {name!r} is not declared in config_choices.{table}; add its name there first (the "
                         "config and the CLI read the names from there)")


def listing(names: Iterable[str], sep: str = " | ") -> str:
    """The names as one help-text string, e.g. "hf | vllm | server"."""
    return sep.join(names)


def described(names: dict[str, str]) -> str:
    """The names with what each is, "name (what), ...", for a help text."""
    return ", ".join(f"{n} ({d})" for n, d in names.items())


def named_test_sets() -> str:
    """The named test sets for a help text, with what sets the benchmarks apart."""
    return ", ".join(f"{n} ({_TEST_SET_NOTES[n]})" if n in _TEST_SET_NOTES else n for n in TEST_SETS)


def testset_key(name_or_path: str) -> str:
    """File-name key of a test set: the name for named sets, the file stem for a path."""
    p = Path(name_or_path)
    return p.stem if (p.suffix or "/" in name_or_path) else name_or_path


# ---------------------------------------------------------------------------------------------------------------
# Arms: the names and flags (design.Arm adds how each arm builds its phases)
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArmChoice:
    """What an arm is, as data; `design.Arm` adds how it builds its phases (`control`, `arrange`).

    Attributes:
        name: the arm's name in configs and run-dir paths (`checkpoints/<name>/...`).
        description: one line for docs, plans and `phased-ift config`.
        source: where the arm comes from (paper and section).
        single_phase: trains once on the union of the phased split (one-off) instead of phase after phase.
        phase_schedule: `train.phase_epochs` / `train.phase_learning_rates` apply by phase position (False: the
            arm uses `train.epochs` and `train.learning_rate`).
        baseline: the arm other arms are judged against by default (at most one).
        default: trained when `train.arms` is not set.
        phase_order: the phased files to train on, in this order (1-based, a permutation of 1..K); () = 1..K.
        sampler: the order inside a phase, a name in `SAMPLERS` ("sequential": the phase data's order, no shuffling
            or length bucketing; "competence": a competence-based curriculum); "" = train.order and train.batching
            decide. An arm with a sampler refuses train.batching=packing.
        params: train config fields the arm reads (`Arm.arrange`, its sampler); recorded in hparams.json
            `arm_params`.
        mix: trains on the sequential mix (`sit.mix.arm_phases`): the sequential examples of the split in place of
            the originals they replace; False = the originals only (a run's sequential examples are dropped).
        expand: a family of arms: in train.arms this name stands for the arm names `expand(K)` returns (config
            expands it; may raise PhasedIFTError for an unsupported K). A family is never trained itself.
        member: a family's arm of a name (e.g. "order-2-1-3"); None = no match.
    """

    name: str
    description: str
    source: str
    single_phase: bool = False
    phase_schedule: bool = True
    baseline: bool = False
    default: bool = False
    phase_order: tuple[int, ...] = ()
    sampler: str = ""
    params: tuple[str, ...] = ()
    mix: bool = False
    expand: Callable[[int], list[str]] | None = field(default=None, compare=False)
    member: Callable[[str], "ArmChoice | None"] | None = field(default=None, compare=False)

    def n_phases(self, k: int) -> int:
        """Phases this arm trains when the split has k phases."""
        return 1 if self.single_phase else k

    def file_order(self, k: int) -> list[int]:
        """The phase numbers (1-based) read, in training order: `phase_order`, else 1..k.

        Raises:
            PhasedIFTError: `phase_order` is not an order of the k phases.
        """
        if not self.phase_order:
            return list(range(1, k + 1))
        if sorted(self.phase_order) != list(range(1, k + 1)):
            raise PhasedIFTError(f"arm {self.name!r} orders {len(self.phase_order)} phases but the split has {k} "
                                 f"(phases.k); use an arm with one number per phase, or `permutations`.")
        return list(self.phase_order)


MAX_PERMUTED_PHASES = 4  # `permutations` trains K! arms: 24 at K=4, 120 at K=5


def order_name(order: Sequence[int]) -> str:
    """The arm name of a phase order, e.g. (2, 1, 3) -> "order-2-1-3" (path-safe)."""
    return "order-" + "-".join(str(i) for i in order)


def _order_arm(name: str) -> ArmChoice | None:
    """The `permutations` member `name` ("order-<i>-<j>-...", a non-identity permutation of 1..K), else None.

    Raises:
        PhasedIFTError: the identity order (order-1-2-3), which is the `phased` arm.
    """
    m = re.fullmatch(r"order-(\d+(?:-\d+)*)", name)
    order = tuple(int(x) for x in m.group(1).split("-")) if m else ()
    if not order or order_name(order) != name or sorted(order) != list(range(1, len(order) + 1)):
        return None
    if list(order) == sorted(order):
        raise PhasedIFTError(f"arm {name!r} is the phases in their own order, i.e. the `phased` arm; name `phased` "
                             f"instead (`permutations` includes it as `phased`).")
    return ArmChoice(name, f"the phased files in the order {' -> '.join(map(str, order))}, each phase from the "
                           f"previous weights", "the stage-order ablation of Pang et al. 2024 (section 5)",
                     phase_order=order)


def _permutation_names(k: int) -> list[str]:
    """Every order of the k phases as an arm name, in lexicographic order; the identity order is `phased`.

    Raises:
        PhasedIFTError: k > MAX_PERMUTED_PHASES.
    """
    if k > MAX_PERMUTED_PHASES:
        raise PhasedIFTError(
            f"config: train.arms has `permutations`, one arm per order of the phases: {math.factorial(k)} arms for "
            f"phases.k={k}, each trained for every seed, generated and judged; refused above phases.k="
            f"{MAX_PERMUTED_PHASES} ({math.factorial(MAX_PERMUTED_PHASES)} arms). Fix: set phases.k <= "
            f"{MAX_PERMUTED_PHASES}, or list the orders to train in train.arms, e.g. "
            f"[phased, {order_name(range(k, 0, -1))}].")
    return ["phased" if list(p) == sorted(p) else order_name(p) for p in itertools.permutations(range(1, k + 1))]


_PAPER = "Pang et al. 2024"
ARM_CHOICES: dict[str, ArmChoice] = {a.name: a for a in (
    ArmChoice("phased", "phases of increasing difficulty, each from the previous phase's weights",
              f"{_PAPER}, Phased IFT (section 3)", default=True),
    ArmChoice("one-off", "all the data at once, shuffled, one phase (the same budget)",
              f"{_PAPER}, One-off IFT baseline (section 4)", single_phase=True, phase_schedule=False, baseline=True,
              default=True),
    ArmChoice("random", "phases of the same sizes with random difficulty", f"{_PAPER}, random-phase control "
              "(section 5)", default=True),
    ArmChoice("reverse", "phases hard -> easy, each phase in descending difficulty",
              f"the order ablation of {_PAPER} (section 5)"),
    ArmChoice("permutations", "every order of the K phases as its own arm (order-2-1-3, ...; the identity order is "
              "phased), K <= 4", f"the stage-order ablation of {_PAPER} (section 5)", expand=_permutation_names,
              member=_order_arm),
    ArmChoice("sorted", "one phase: the union sorted easy -> hard, fed in that order (no phase boundaries, one LR "
              "schedule)", "curriculum ordering without stages (Bengio et al. 2009, Curriculum Learning)",
              single_phase=True, phase_schedule=False, sampler="sequential"),
    ArmChoice("replay", "phased, and phase k also trains on a seeded train.replay_ratio of the examples of phases < "
              "k (adds examples)", "experience replay against forgetting (Robins 1995; de Masson d'Autume et al. "
              "2019)", params=("replay_ratio",)),
    ArmChoice("competence", "one phase: batches drawn from the easiest c(t) fraction, c(t) = min(1, sqrt(t(1 - "
              "c0^2)/T + c0^2))", "Platanios et al. 2019, Competence-based Curriculum Learning (NAACL), the sqrt "
              "competence", single_phase=True, phase_schedule=False, sampler="competence",
              params=("competence_c0",)),
    ArmChoice("sit", "one-off on the sequential mix: sit.ratio of the examples are sequential, each in place of an "
              "original (the same budget)", "Hu et al. 2024, Sequential Instruction Tuning (arXiv 2403.07794)",
              single_phase=True, phase_schedule=False, mix=True),
    ArmChoice("sit-phased", "phased on the sequential mix: sequential examples scored and split by difficulty like "
              "every other example", f"{_PAPER} Phased IFT with Hu et al. 2024 SIT data", mix=True),
)}


def arm_choice(name: str) -> ArmChoice | None:
    """The arm `name`: a declared one, else a family's member (`ArmChoice.member`), else None.

    Raises:
        PhasedIFTError: a family refuses the name (e.g. order-1-2-3 is `phased`).
    """
    if name in ARM_CHOICES:
        return ARM_CHOICES[name]
    for family in ARM_CHOICES.values():
        if family.member is not None and (arm := family.member(name)) is not None:
            return arm
    return None


def unknown_arm(name: str) -> PhasedIFTError:
    """The error for an arm name that is neither declared nor a family's member (names the known ones)."""
    families = [f"{a.name} ({a.description})" for a in ARM_CHOICES.values() if a.member is not None]
    return PhasedIFTError(f"unknown arm {name!r}; known arms: {', '.join(ARM_CHOICES)}"
                          + (f"; and the members of {'; '.join(families)}" if families else "") + ".")


def get_arm_choice(name: str) -> ArmChoice:
    """`arm_choice`, raising `unknown_arm` for an unknown name."""
    arm = arm_choice(name)
    if arm is None:
        raise unknown_arm(name)
    return arm


def default_arms() -> list[str]:
    """The arms trained when `train.arms` is not set (`ArmChoice.default`)."""
    return [name for name, arm in ARM_CHOICES.items() if arm.default]


def expand_arms(names: Sequence[str], k: int) -> list[str]:
    """train.arms with every family replaced by its members for k phases (`ArmChoice.expand`), first occurrence
    kept.

    Raises:
        PhasedIFTError: an unknown arm; a family refuses k (`permutations`: k > 4); an order arm does not order k
            phases.
    """
    out: list[str] = []
    for name in names:
        arm = get_arm_choice(name)
        out += [n for n in (arm.expand(k) if arm.expand else [name]) if n not in out]
    for name in out:
        get_arm_choice(name).file_order(k)
    return out
