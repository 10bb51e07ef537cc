"""Offline sequential instructions: deterministic, seeded compositions of existing examples. No LLM is asked.

These are NOT the SIT paper's data. The paper rewrites instructions with an LLM (`sit.generation`); these are
what a CPU user without a generator can run, and every example they make says so in its metadata
(`meta["sequential"] == "offline"`).

Kinds (`KINDS`, config `sit.kind`):
  chain         `iterations` + 1 examples chained into one instruction, "First, <a>\\n\\nThen, <b>" (more tasks:
                "Then, ..." for the middle ones, "Finally, ..." for the last), and their responses joined in the same
                order and numbered: "1. <response a>\\n\\n2. <response b>".
  repeat-input  the "repeat the input, then answer" prefix task of SIT's early variant (hanxuhu/SeqIns at commit
                aec462d7aa819de5b1d70a1d512e91d72bb2830a, construct_data/make_data_alpaca_seq_merge.py): one of
                upstream's prefixes ("First repeat below input, then ", ...) before the instruction, the input
                after it, and the response "1. Repeat:\\n<input>\\n2. <response>". An example without an input
                repeats its instruction instead ("First repeat below question, then answer it.").

Every composed Example has the id `sit-chain:<a>+<b>...` or `sit-repeat:<a>` and meta {"source": "sit:offline",
"sequential": "offline", "option": kind, "iteration": tasks added (chain: len - 1, repeat-input: 1),
"source_ids": [ids in order]}; the original examples' meta (e.g. a released score) is not copied.
"""

from __future__ import annotations

import random
from typing import Sequence

from phased_ift.data import Example
from phased_ift.errors import PhasedIFTError

KINDS = ("chain", "repeat-input")

# Upstream's prompt bank (make_data_alpaca_seq_merge.py), with its typos and spacing, one trailing space added to
# the one entry that lacked it.
REPEAT_PREFIXES = ("First repeat below input, then ", "First repeat below input then ",
                   "Please first repeat below input, and then ", "Please first restate the following input, then ",
                   "Kindly reiterate the given input initially, and ",
                   "Please kindly repeat the given input initially, and ")
REPEAT_QUESTION = "First repeat below question, then answer it."


def _single_turn(e: Example) -> bool:
    """One user turn and one assistant turn (an optional system turn first): the only examples composed."""
    roles = [m["role"] for m in e.messages if m["role"] != "system"]
    return roles == ["user", "assistant"] and bool(e.response.strip())


def _lower_first(text: str) -> str:
    """The text with its first letter lower-cased, unless the first word looks like a name or acronym ("I", "USA",
    "iPhone" keep theirs)."""
    word = text.split(" ", 1)[0]
    if not word or word == "I" or (len(word) > 1 and not word[1:2].islower()):
        return text
    return text[0].lower() + text[1:]


def _connector(i: int, n: int) -> str:
    return "First, " if i == 0 else ("Finally, " if i == n - 1 and n > 2 else "Then, ")


def chain(parts: Sequence[Example]) -> Example:
    """Chain examples into one sequential instruction, responses numbered in order (see the module docstring)."""
    n = len(parts)
    instruction = "\n\n".join(_connector(i, n) + _lower_first(e.instruction.strip()) for i, e in enumerate(parts))
    response = "\n\n".join(f"{i}. {e.response.strip()}" for i, e in enumerate(parts, 1))
    ids = [e.id for e in parts]
    meta = {"source": "sit:offline", "sequential": "offline", "option": "chain", "iteration": n - 1,
            "source_ids": ids}
    return Example("sit-chain:" + "+".join(ids), [{"role": "user", "content": instruction},
                                                  {"role": "assistant", "content": response}], meta)


def repeat_input(e: Example, rng: random.Random) -> Example:
    """The repeat-the-input prefix task of one example (see the module docstring); `rng` picks the prefix."""
    inp = str(e.meta.get("input") or "").strip()
    full = e.instruction.strip()
    if inp and full.endswith(inp):
        task = full[: len(full) - len(inp)].strip()
        instruction = rng.choice(REPEAT_PREFIXES) + _lower_first(task) + "\n\n" + inp
        repeated = inp
    else:
        instruction, repeated = REPEAT_QUESTION + "\n\n" + full, full
    meta = {"source": "sit:offline", "sequential": "offline", "option": "repeat-input", "iteration": 1,
            "source_ids": [e.id]}
    if inp:
        meta["input"] = inp
    return Example(f"sit-repeat:{e.id}", [{"role": "user", "content": instruction},
                                         {"role": "assistant", "content": f"1. Repeat:\n{repeated}\n2. "
                                                                          f"{e.response.strip()}"}], meta)


def compose(examples: Sequence[Example], n: int, kind: str = "chain", iterations: int = 1,
            seed: int = 0) -> list[Example]:
    """`n` offline sequential examples from `examples`, deterministic for a seed.

    Args:
        examples: the originals; only single-turn examples with a response are used.
        n: how many to make (fewer when fewer originals qualify: each original heads at most one composition).
        kind: "chain" or "repeat-input".
        iterations: chain: tasks added to the head (a chain has iterations + 1 tasks); ignored by repeat-input.
        seed: seeds the choice of heads (a sample of the originals, kept in data order), of each chain's partners
            (distinct, never the head) and of each repeat-input prefix.

    Returns:
        The composed Examples, in the data order of their heads (ids and meta in the module docstring).

    Raises:
        PhasedIFTError: an unknown kind, iterations < 1, or a chain that needs more distinct examples than exist.
    """
    if kind not in KINDS:
        raise PhasedIFTError(f"sit.kind = {kind!r} is not one of {list(KINDS)}; set sit.kind to one of those.")
    if iterations < 1:
        raise PhasedIFTError(f"sit.iterations must be >= 1, got {iterations}.")
    pool = [e for e in examples if _single_turn(e)]
    if kind == "chain" and len(pool) < iterations + 1:
        raise PhasedIFTError(f"sit: a chain of {iterations + 1} tasks needs {iterations + 1} single-turn examples "
                             f"with a response; the data has {len(pool)}. Add data or lower sit.iterations.")
    rng = random.Random(f"sit-compose:{kind}:{seed}")
    heads = sorted(rng.sample(range(len(pool)), min(n, len(pool))))
    out = []
    for i in heads:
        local = random.Random(f"sit-compose:{kind}:{seed}:{pool[i].id}")
        if kind == "repeat-input":
            out.append(repeat_input(pool[i], local))
        else:
            # iterations + 1 distinct draws contain at least `iterations` that are not the head (O(k), not O(N))
            partners = [j for j in local.sample(range(len(pool)), iterations + 1) if j != i][:iterations]
            out.append(chain([pool[i]] + [pool[j] for j in partners]))
    return out
