"""The cross-field checks of a config, run when it loads (`config.Config.__post_init__`), one line each.

Owns the checks that relate fields of different sections: the arms against train.batching (`check_batching`) and
sit.source (`check_sit_arms`), pairwise.pairs against train.arms (`check_judge_pairs`), pairwise.test_sets against
generate.test_sets (`check_judge_test_sets`), and the step names of sit.templates (`check_sit_templates`). Each takes
plain values, not the `Config`, so a step that relies on a check (`design.judge_pairs_of`,
`judge.pairwise_test_sets`) runs the same function on a config changed after it loaded. Names and flags come from
`config_choices`; nothing here imports a step.

A check that needs something outside the config (an endpoint answering, a file, the hardware, a scores file) is not
here: it runs in `preflight` or when its step starts.
"""

from __future__ import annotations

from typing import Sequence

from phased_ift.config_choices import SIT_STEPS, get_arm_choice, testset_key
from phased_ift.errors import PhasedIFTError


def check_batching(arms: Sequence[str], batching: str) -> None:
    """Arms with their own sampler need one row per example; packing concatenates and reorders them.

    Raises:
        PhasedIFTError: train.batching=packing with such an arm (names the arms and the fix).
    """
    own = [a for a in arms if get_arm_choice(a).sampler]
    if own and batching == "packing":
        raise PhasedIFTError(f"config: train.batching=packing packs several examples per row and reorders them, but "
                             f"the arms {own} set the order of single examples (Arm.sampler); use train.batching="
                             f"bucket or pad, or train these arms in a separate config.")


def check_sit_arms(arms: Sequence[str], sit_source: str) -> None:
    """The arms that train on the sequential mix (`ArmChoice.mix`) and sit.source go together.

    Raises:
        PhasedIFTError: such an arm without sit.source, or sit.source without such an arm.
    """
    mix = [a for a in arms if get_arm_choice(a).mix]
    if mix and sit_source == "none":
        raise PhasedIFTError(f"config: train.arms has {mix}, which train on the sequential mix, but sit.source is "
                             f"none; set sit.source=offline (no LLM), generated or a file (docs/sit.md).")
    if sit_source != "none" and not mix:
        raise PhasedIFTError(f"config: sit.source={sit_source} mixes sequential examples into the data, but no "
                             f"arm of train.arms trains on them; add sit and/or sit-phased to train.arms.")


def check_judge_pairs(arms: Sequence[str], pairs: Sequence[Sequence[str]]) -> None:
    """Every arm of pairwise.pairs is trained, and no arm is judged against itself.

    Raises:
        PhasedIFTError: a pair names an arm that is not in train.arms, or an arm against itself.
    """
    arms = list(arms)
    for a, b in pairs:
        for arm in (a, b):
            if arm not in arms:
                raise PhasedIFTError(f"config: pairwise.pairs names arm {arm!r}, which is not in train.arms {arms}; "
                                     "add it to train.arms or fix the pair.")
        if a == b:
            raise PhasedIFTError(f"config: pairwise.pairs has [{a}, {b}]: an arm cannot be judged against itself.")


def check_judge_test_sets(judge_sets: Sequence[str], generate_sets: Sequence[str]) -> None:
    """pairwise.test_sets names only test sets that are generated (keys of generate.test_sets: `testset_key`).

    Raises:
        PhasedIFTError: a test set of pairwise.test_sets is not generated.
    """
    generated = [testset_key(n) for n in generate_sets]
    unknown = [n for n in judge_sets if n not in generated]
    if unknown:
        raise PhasedIFTError(f"config: pairwise.test_sets {unknown} are not among generate.test_sets {generated}; "
                             "judge only test sets that are generated.")


def check_sit_templates(names: dict) -> None:
    """sit.templates has an entry only for steps of the Seq-Instruct pipeline (`SIT_STEPS`).

    Raises:
        PhasedIFTError: an unknown step name.
    """
    unknown = sorted(set(names) - set(SIT_STEPS))
    if unknown:
        raise PhasedIFTError(f"config: sit.templates has unknown steps {unknown}; steps: {list(SIT_STEPS)}.")
