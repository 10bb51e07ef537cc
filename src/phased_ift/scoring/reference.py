"""The reference set: original-Alpaca examples with the paper's difficulty verdict (GPT-4 score >= 3.5 or not).

The paper released only its hardest stage, `phasedsft/en-alpaca52k-stage3.jsonl` (6,889 Alpaca examples with GPT-4
scores, all >= 3.5). Every other original-Alpaca example in the shared data (`alpagasus/` random_9k, claude_t45,
helpfulness_t45, `cherry_llm/`, `car/`, `long_is_more/filtered_*`) that is not in stage 3 therefore scored < 3.5 in
the paper. Examples are matched on the normalised prompt (instruction + " " + input, whitespace collapsed,
lowercased) and rendered the stage-3 way (user = instruction + "\\n" + input) for every example, so the two classes
differ in content, not formatting.

It is the label source of the learned scorer (scoring.labels=paper, `scoring.learned`) and the ground truth of the
agreement table (`phased_ift.scoring.agreement`, which imports it from here).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from phased_ift.data import Example, data_home, normalize_text
from phased_ift.runio import read_jsonl
from phased_ift.errors import PhasedIFTError
from phased_ift.scoring.meta import parse_score

THRESHOLD = 3.5  # the paper's stage-3 boundary: released scores are all >= 3.5
STAGE3 = "phasedsft/en-alpaca52k-stage3.jsonl"
ALPACA_FILES = ("alpagasus/random_9k.json", "alpagasus/claude_t45.json", "alpagasus/helpfulness_t45.json",
                "cherry_llm/cherry_alpaca_5_percent.json", "car/CaR_selected_result.json")
SHAREGPT_FILES = ("long_is_more/filtered_alpaca_1k_longest.json", "long_is_more/filtered_alpaca_1k_score.json")
RANDOM9K = "alpagasus/random_9k.json"


# Alpaca records inside the FastChat prompt of long_is_more: "... ### Instruction: X[ ### Input: Y]"
_LIM = re.compile(r"### Instruction:(.*?)(?:### Input:(.*))?$", re.S)


def _read_alpaca_like(path: Path) -> list[tuple[str, str, str]]:
    """(instruction, input, output) triples of an Alpaca JSON list or a long_is_more FastChat file.

    A private reader: the reference set needs the raw instruction/input split, which the project's readers fold
    into one user message.
    """
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise PhasedIFTError(f"cannot read reference file {path}: {e}; restore it from the shared data.") from None
    out = []
    for r in records:
        if "conversations" in r:
            m = _LIM.search(r["conversations"][0]["value"])
            if m is None:
                continue
            out.append((m.group(1).strip(), (m.group(2) or "").strip(), r["conversations"][1]["value"]))
        else:
            out.append((r["instruction"], r.get("input", "") or "", r["output"]))
    return out


@dataclass
class ReferenceSet:
    """Examples with the paper's verdict.

    Attributes:
        examples: Examples (user = instruction + "\\n" + input, assistant = the Alpaca output); stage-3 ones carry
            meta["score"] (the GPT-4 score) and meta["source"].
        positive: [N] bool, paper score >= 3.5 (in stage 3).
        paper_score: [N] float, the GPT-4 score inside stage 3, NaN outside.
        random9k: [N] bool, the example is in alpagasus/random_9k.json (an unbiased random sample of Alpaca).
        counts: numbers of records read / matched per file.
    """

    examples: list[Example]
    positive: np.ndarray
    paper_score: np.ndarray
    random9k: np.ndarray
    counts: dict[str, Any] = field(default_factory=dict)

    def subset(self, idx: Sequence[int]) -> "ReferenceSet":
        idx = list(idx)
        return ReferenceSet([self.examples[i] for i in idx], self.positive[idx], self.paper_score[idx],
                            self.random9k[idx], dict(self.counts, subset=len(idx)))

    def stratified_sample(self, limit: int, seed: int = 0) -> "ReferenceSet":
        """A seeded sample of `limit` examples keeping the stage-3 share (all when limit <= 0 or >= N), in a seeded
        random order, so the rows a slow scorer has written so far are themselves a random sample."""
        n = len(self.examples)
        if limit <= 0 or limit >= n:
            return self
        rng = np.random.default_rng(seed)
        pos, neg = np.flatnonzero(self.positive), np.flatnonzero(~self.positive)
        k_pos = int(round(limit * len(pos) / n))
        idx = rng.permutation(np.concatenate([rng.choice(pos, k_pos, replace=False),
                                              rng.choice(neg, limit - k_pos, replace=False)]))
        return self.subset(idx.tolist())


def build_reference_set(home: str | Path | None = None) -> ReferenceSet:
    """Build the reference set from the shared data (see the module docstring).

    Args:
        home: the shared data folder; default `data.data_home()` (PHASED_IFT_DATA_HOME).
    Returns:
        ReferenceSet with stage 3 first (file order), then the non-stage-3 examples in file order (ALPACA_FILES,
        then SHAREGPT_FILES), each normalised prompt once.
    Raises:
        PhasedIFTError: the data folder or a file is missing or unreadable.
    """
    home = Path(home) if home is not None else data_home()
    keys: set[str] = set()
    counts: dict[str, Any] = {}
    stage3, n = _stage3_examples(home, keys)
    counts[STAGE3] = {"records": n, "kept": len(stage3)}
    r9k: set[str] = set()
    below = _below_examples(home, keys, set(keys), counts, r9k)
    examples = stage3 + below
    score = [e.meta["score"] for e in stage3] + [math.nan] * len(below)
    random9k = np.array([normalize_text(e.instruction) in r9k for e in examples])
    ref = ReferenceSet(examples, np.array([True] * len(stage3) + [False] * len(below)),
                       np.array(score, dtype=float), random9k, counts)
    counts["stage3"] = int(ref.positive.sum())
    counts["below_3.5"] = int((~ref.positive).sum())
    counts["random9k"] = int(random9k.sum())
    counts["random9k_stage3"] = int((random9k & ref.positive).sum())
    return ref


def _stage3_examples(home: Path, keys: set[str]) -> tuple[list[Example], int]:
    """The stage-3 examples (the first of each normalised prompt, added to `keys`) and the records read."""
    st3 = home / STAGE3
    if not st3.is_file():
        raise PhasedIFTError(f"reference file {st3} is missing; PHASED_IFT_DATA_HOME must point at shared/data.")
    examples: list[Example] = []
    n = 0
    for r in read_jsonl(st3):
        n += 1
        prompt, response = r["data"][0], r["data"][1]
        key = normalize_text(prompt)
        if key in keys:
            continue
        keys.add(key)
        examples.append(Example(f"stage3-{r['id']}", [{"role": "user", "content": prompt},
                                                      {"role": "assistant", "content": response}],
                                {"source": STAGE3, "score": parse_score(r["score"])}))
    return examples, n


def _below_examples(home: Path, keys: set[str], stage3_keys: set[str], counts: dict[str, Any],
                    r9k: set[str]) -> list[Example]:
    """The examples of ALPACA_FILES + SHAREGPT_FILES whose prompt is not yet in `keys` (all below 3.5); fills in
    counts[file] and `r9k` (the normalised prompts of random_9k)."""
    examples: list[Example] = []
    for rel in ALPACA_FILES + SHAREGPT_FILES:
        triples = _read_alpaca_like(home / rel)
        added = in_stage3 = 0
        for ins, inp, out in triples:
            prompt = ins + ("\n" + inp if inp else "")
            key = normalize_text(prompt)
            if rel == RANDOM9K:
                r9k.add(key)
            if key in stage3_keys:
                in_stage3 += 1
            if key in keys:
                continue
            keys.add(key)
            added += 1
            hid = hashlib.sha1(key.encode()).hexdigest()[:12]
            examples.append(Example(f"ref-{hid}", [{"role": "user", "content": prompt},
                                                   {"role": "assistant", "content": out}], {"source": rel}))
        counts[rel] = {"records": len(triples), "in_stage3": in_stage3, "added_below_3.5": added}
    return examples
