"""One template class and one reader (`grading.PromptTemplate`, `grading.read_template`) for every step's prompts.

tests/template_renders.json holds each packaged template file rendered by the five classes that existed before
(judge.JudgeTemplate, scoring/judge._Template, seqeval.Prompt, sit/generation.StepTemplate; MT-Bench's prompts come
from FastChat's file, tested in test_mtbench.py), captured before the change: the new class renders them the same,
byte for byte, with values that hold other placeholders and braces.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from phased_ift.pairwise import judge
from phased_ift.evals import mtbench, seqeval
from phased_ift.data import Example
from phased_ift.errors import PhasedIFTError
from phased_ift.prompts import PromptTemplate, read_template
from phased_ift.scoring import judge as difficulty
from phased_ift.sit import generation as sit

EXPECTED = json.loads((Path(__file__).parent / "template_renders.json").read_text(encoding="utf-8"))
Q = "Write {answer_2} a poem about {instruction} and {response}; braces {x} stay."
A1, A2, REF = "First answer with {question} inside.", "Second {answer_1} answer.", "The {reference} answer."
EX = Example("e1", [{"role": "user", "content": "Explain {response} in {input} terms."},
                    {"role": "assistant", "content": "Here is {answer}: a reply."}], {})


def _renders() -> dict[str, list[dict]]:
    out = {}
    for name in ("pairwise", "reference", "pair-v2"):
        t = judge.load_template(name)
        out[name] = t.messages(Q, A1, A2, REF if t.needs_reference else None)
    tpl = difficulty.load_difficulty_template("difficulty")
    out["difficulty"] = tpl.render({"{instruction}": EX.instruction, "{response}": EX.response})
    for metric, p in seqeval.load_prompts().items():
        out[f"seqeval-{metric}"] = p.render({"{instruction}": Q, "{answer}": A1})
    for step, name in sit.STEP_TEMPLATES.items():
        t = sit.load_step_template(step, name)
        out[name] = t.messages({"instruction": Q, "input": "In {prompt} put", "prompt": "P {examples} Q"},
                               random.Random(3))
    return out


def test_every_template_file_renders_as_before():
    got = _renders()
    assert sorted(got) == sorted(EXPECTED)
    for name, msgs in got.items():
        assert msgs == EXPECTED[name], name
        assert [list(m) for m in msgs] == [["role", "content"]] * len(msgs)  # the key order of the requests
        assert json.dumps(msgs, sort_keys=True) == json.dumps(EXPECTED[name], sort_keys=True), name


def test_one_class_and_one_reader():
    templates = [judge.load_template("pairwise"), difficulty.load_difficulty_template(),
                 *seqeval.load_prompts().values(), *sit.load_templates({}).values()]
    assert all(isinstance(t, PromptTemplate) for t in templates)
    assert issubclass(mtbench.GradeTemplate, PromptTemplate)
    for cls in (judge.JudgeTemplate, sit.StepTemplate, mtbench.GradeTemplate):
        assert cls.render is PromptTemplate.render  # one rendering of a template file's text
    assert read_template("difficulty", "scoring.template", "difficulty", ("{instruction}",)) == \
        difficulty.load_difficulty_template()


def test_render_without_system_text_and_missing_values_left_alone():
    t = PromptTemplate("t", "", "A {x} and {y}")
    assert t.render({"{x}": "{y}"}) == [{"role": "user", "content": "A {y} and {y}"}]
    with pytest.raises(PhasedIFTError, match="neither a packaged template"):
        read_template(__file__.replace(".py", ".txt"), "s", "p", ())
