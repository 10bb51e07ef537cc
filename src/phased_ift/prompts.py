"""Prompt templates: the one class and the one reader of the template file format, for every step that sends a
prompt (the pairwise judge, the difficulty scorer, MT-Bench, SeqEval, the SIT generator).

Owns `PromptTemplate` (system text + user text with placeholders, rendered to chat messages by `render`; a step
that needs more subclasses it: `judge.JudgeTemplate`, `sit.generation.StepTemplate`, `evals.mtbench.GradeTemplate`),
`read_template` (a packaged template of `phased_ift/templates/` by name, or a .txt file) and `fill` (placeholders
replaced in one pass).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Sequence

from phased_ift.errors import PhasedIFTError

@dataclass(frozen=True)
class PromptTemplate:
    """A prompt template: its name (a packaged name or a path), system text ("" for none) and user text with
    placeholders ("{instruction}", ...). The one template class; a step that needs more (the pairwise judge's kind,
    the SIT steps' few-shot examples, MT-Bench's output format) subclasses it and renders through `render`."""

    name: str
    system: str
    user: str

    def render(self, values: dict[str, str]) -> list[dict]:
        """[system, user] chat messages (no system message when the system text is empty), the user text with each
        placeholder of `values` replaced in one pass (`fill`: inserted text is never scanned again)."""
        user = fill(self.user, values)
        return ([{"role": "system", "content": self.system}] if self.system else []) + [
            {"role": "user", "content": user}]


def read_template(name_or_path: str, setting: str, packaged: str, placeholders: Sequence[str]) -> PromptTemplate:
    """The `PromptTemplate` of a packaged prompt template (by name) or a .txt file: the one reader of the template
    file format, for every step's prompts (pairwise judge, difficulty, SeqEval, SIT generation).

    File format: a line `<<system>>`, the system text, a line `<<user>>`, the user text (trailing blank lines
    dropped). Text before `<<system>>` is a comment (e.g. where the prompt comes from). The user text must contain
    every placeholder.

    Args:
        setting: the config key that names the template, for error messages (e.g. "pairwise.template").
        packaged: the packaged template names, for error messages.
    Raises:
        PhasedIFTError: unknown name, missing file, or a file without the markers/placeholders.
    """
    p = Path(name_or_path)
    if p.suffix == ".txt" and p.is_file():
        text, where = p.read_text(encoding="utf-8"), str(p)
    else:
        pkg = resources.files("phased_ift") / "templates" / f"{name_or_path}.txt"
        if not pkg.is_file():
            raise PhasedIFTError(
                f"{setting} = {name_or_path!r} is neither a packaged template ({packaged}) nor an existing .txt "
                f"file; set {setting} to one of those or to the path of your template file."
            )
        text, where = pkg.read_text(encoding="utf-8"), f"packaged template {name_or_path}"
    if "<<user>>" not in text:
        raise PhasedIFTError(f"{where}: a template needs a `<<user>>` line before the user prompt "
                             "(and optionally `<<system>>` before a system prompt).")
    head, _, user = text.partition("<<user>>")
    system = head.split("<<system>>", 1)[1] if "<<system>>" in head else ""
    user = user.strip("\n").rstrip()
    for key in placeholders:
        if key not in user:
            raise PhasedIFTError(f"{where}: the user prompt lacks the placeholder {key}; add it where the "
                                 f"{key.strip('{}')} should go.")
    return PromptTemplate(str(name_or_path), system.strip(), user)


def fill(text: str, values: dict[str, str]) -> str:
    """`text` with each placeholder of `values` ("{answer}" -> its value) replaced literally, in one pass, so
    inserted text holding braces or another placeholder is never re-scanned."""
    return re.sub("|".join(map(re.escape, values)), lambda m: values[m.group(0)], text) if values else text
