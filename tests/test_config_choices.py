"""The registry names at the bottom of the package (`config_choices`): every registry is keyed by them, config reads
its choices and help texts from them, and loading a config imports no step module."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

from phased_ift import config_choices as choices
from phased_ift.config import describe, registry_names


def test_every_registry_is_keyed_by_its_declared_names():
    from phased_ift import data, evals, scoring
    from phased_ift.generation import BACKENDS
    from phased_ift.phases import design
    from phased_ift.phases import split as phases
    from phased_ift.modeling import NAMED_MODELS
    from phased_ift.sit import compose, generation
    from phased_ift.train.samplers import SAMPLERS

    assert list(scoring.SCORERS) == list(choices.SCORERS)
    assert list(phases.METHODS) == list(choices.PHASE_METHODS)
    assert list(BACKENDS) == list(choices.GENERATE_BACKENDS)
    assert list(data.FORMATS) == list(choices.DATA_FORMATS)
    assert list(data.FORMAT_NAMES) == list(choices.FORMAT_CHOICES)
    assert list(data.TEST_SETS) == list(choices.TEST_SETS)
    assert list(evals.BENCHMARKS) == list(choices.BENCHMARKS)
    from phased_ift.export import TARGETS
    from phased_ift.generation.serving import SERVERS
    from phased_ift.modeling.export import GGUF_TYPES

    assert list(TARGETS) == list(choices.EXPORT_TARGETS) and SERVERS == choices.SERVERS
    assert GGUF_TYPES == choices.GGUF_TYPES
    assert all(b.choice is choices.BENCHMARKS[n] for n, b in evals.BENCHMARKS.items())
    assert list(SAMPLERS) == list(choices.SAMPLERS)
    assert list(NAMED_MODELS) == list(choices.NAMED_MODELS)
    assert list(generation.STEP_TEMPLATES) == list(choices.SIT_STEPS)
    assert list(compose.KINDS) == list(choices.SIT_KINDS)
    assert set(choices.ANSWER_BUDGETS) <= set(choices.TEST_SETS)
    assert set(choices.JUDGE_FREE) | set(choices.GRADED) <= set(choices.TEST_SETS)
    # the arms: design registers one Arm per declared name (its flags copied), plus family members on first use
    assert [a for a in design.ARMS if a in choices.ARM_CHOICES] == list(choices.ARM_CHOICES)
    assert all(choices.arm_choice(a) is not None for a in design.ARMS)
    assert set(design._IMPLEMENTATIONS) <= set(choices.ARM_CHOICES)
    flags = [f.name for f in dataclasses.fields(choices.ArmChoice)]
    for name, choice in choices.ARM_CHOICES.items():
        assert [getattr(design.ARMS[name], f) for f in flags] == [getattr(choice, f) for f in flags]
        assert choice.sampler in ("", *choices.SAMPLERS)


def test_packaged_pairwise_templates_are_the_declared_ones():
    from phased_ift.pairwise import judge

    for name in choices.PAIRWISE_TEMPLATES:
        assert judge.load_template(name).name  # the packaged file exists and parses
    assert judge.PACKAGED == ", ".join(choices.PAIRWISE_TEMPLATES)


def test_help_texts_are_built_from_the_names():
    helps = {key: text for key, _, text in describe()}
    fields = {"train.arms": "arm", "scoring.scorer": "scorer", "phases.method": "phase method",
              "generate.backend": "generate backend", "data.train": None}
    for key, kind in fields.items():
        if kind:
            assert all(name in helps[key] for name in registry_names(kind)), key
    from phased_ift.config import DataSource

    fmt = next(f for f in dataclasses.fields(DataSource) if f.name == "format")
    assert all(name in fmt.metadata["help"] for name in choices.FORMAT_CHOICES)
    assert all(name in helps["model.name_or_path"] for name in choices.NAMED_MODELS)
    assert all(name in helps["generate.test_sets"] for name in choices.TEST_SETS)
    assert all(name in helps["pairwise.template"] for name in choices.PAIRWISE_TEMPLATES)
    assert all(name in helps["sit.kind"] for name in choices.SIT_KINDS)
    assert all(name in helps["sit.templates"] for name in choices.SIT_STEPS)


def test_loading_a_config_imports_no_step_module():
    code = ("import sys, phased_ift\nbefore = set(sys.modules)\nfrom phased_ift.config import load_config\n"
            "load_config(None, ['train.arms=[permutations,sit]', 'sit.source=offline', 'pairwise.pairs=[[sit,phased]]'])\n"
            "print(' '.join(sorted(m for m in set(sys.modules) - before if m.startswith('phased_ift'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert set(out) <= {"phased_ift.config", "phased_ift.config_loading", "phased_ift.config_choices",
                        "phased_ift.config_checks", "phased_ift.errors", "phased_ift.runio", "phased_ift.diskerrors"}


def test_arm_families_and_members_are_names_only():
    assert choices.default_arms() == ["phased", "one-off", "random"]
    assert choices.expand_arms(["phased", "permutations"], 2) == ["phased", "order-2-1"]
    member = choices.arm_choice("order-3-1-2")
    assert member is not None and member.phase_order == (3, 1, 2) and member.n_phases(3) == 3
    assert choices.arm_choice("sideways") is None
    assert choices.testset_key("vicuna") == "vicuna" and choices.testset_key("data/my set.jsonl") == "my set"


def test_registering_an_undeclared_name_raises():
    """A registry takes only names declared in config_choices, so the config, the CLI's choices and the registry
    cannot drift apart."""
    import pytest

    from phased_ift import scoring
    from phased_ift.errors import PhasedIFTError
    from phased_ift.evals import Benchmark, register_benchmark
    from phased_ift.export import Target, register_target
    from phased_ift.generation import register_backend

    with pytest.raises(ValueError, match="scorer 'mine' is not declared in config_choices.SCORERS"):
        scoring.register_scorer("mine")(lambda examples, ctx: iter(()))
    with pytest.raises(ValueError, match="generation backend 'mine' is not declared"):
        register_backend("mine", object)
    with pytest.raises(ValueError, match="export target 'mine' is not declared in config_choices.EXPORT_TARGETS"):
        register_target(Target("mine", "x", lambda plan, out: []))
    with pytest.raises(PhasedIFTError, match="benchmark 'mine' is not declared"):
        register_benchmark(Benchmark(choices.BenchmarkChoice("mine", choices.PROGRAM, "vicuna"), "x", run=None,
                                     summarize=None, missing=None, blocks=None, heading=""))
    assert "mine" not in scoring.SCORERS
