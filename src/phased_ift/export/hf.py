"""The `hf` export target: the split as one Hugging Face `datasets.DatasetDict` saved with `save_to_disk`, plus a
dataset card (README.md) ready for `push_to_hub`.

Splits (names follow `datasets`' rule `\\w+`: other characters of an arm name become "_"):
    phase_1 ... phase_K      phases/phase_<k>.jsonl (easy -> hard), each by score ascending
    one_off                  the union of the phases without the sequential examples of `sit.source` (what the
                             one-off baseline trains on, before its seeded shuffle), easy -> hard
    <control>_phase_<k>      each control arm's files of the manifest (phases/<arm>/phase_<k>.jsonl), e.g.
                             random_phase_1, reverse_phase_1

Columns: id (str), instruction (the last user turn), output (the last assistant turn), system (str), messages
(list of {role, content}: the whole example), score (float: the scorer's difficulty, higher = harder), phase
(int: the example's phase in the difficulty split, also in control splits), source (meta.source: the named
source or file), sequential (bool: a sequential example of `sit.source`), meta (the rest of meta, as JSON text).

The card gives the scorer and its settings, its agreement with the paper's GPT-4 scores where the run measured it
(`phased-ift score --against paper`: agreement/<tag>/agreement.json), the split method and thresholds, the count
and score range of each phase (phases/manifest.json), and the sources with upstream and license as each source's
PROVENANCE.md records them (`data.source_provenance`). Publishing (documented in the card, not run here):
upload the card first, then `DatasetDict.push_to_hub`, which keeps an existing card's text and adds its metadata.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

from phased_ift.data import Example, read_examples, source_provenance
from phased_ift.export.plan import ExportPlan
from phased_ift.runio import atomic_write_text, read_jsonl
from phased_ift.scoring import SCORERS
from phased_ift.sit.mix import arm_phases, is_sequential

_META_COLUMNS = ("score", "source")


def split_name(*parts: str | int) -> str:
    """A `datasets` split name from parts: joined with "_", every character outside [A-Za-z0-9_] as "_"."""
    return re.sub(r"\W", "_", "_".join(str(p) for p in parts), flags=re.ASCII)


def _row(e: Example, phase_of: dict[str, int]) -> dict[str, Any]:
    """One dataset row of an example (columns: module docstring)."""
    users = [m["content"] for m in e.messages if m["role"] == "user"]
    system = "\n".join(m["content"] for m in e.messages if m["role"] == "system")
    rest = {k: v for k, v in e.meta.items() if k not in _META_COLUMNS}
    return {"id": e.id, "instruction": users[-1] if users else "", "output": e.response, "system": system,
            "messages": [{"role": m["role"], "content": m["content"]} for m in e.messages],
            "score": float(e.meta["score"]) if e.meta.get("score") is not None else None,
            "phase": phase_of.get(e.id, 0), "source": str(e.meta.get("source", "")), "sequential": is_sequential(e),
            "meta": json.dumps(rest, ensure_ascii=False, sort_keys=True)}


def split_examples(plan: ExportPlan) -> dict[str, list[Example]]:
    """{split name: its examples}, in the order of the module docstring, read from the files of the manifest.

    Raises:
        FileNotFoundError: a file the manifest lists is gone (the split was changed by hand).
    """
    root, manifest = plan.run.root, plan.manifest
    phases = [read_examples(root / p["file"]) for p in manifest["phases"]]
    splits = {f"phase_{i}": ph for i, ph in enumerate(phases, 1)}
    splits["one_off"] = [e for ph in arm_phases(phases, False) for e in ph]
    for arm, files in manifest.get("controls", {}).items():
        for f in files:
            splits[split_name(arm, "phase", f["k"])] = read_examples(root / f["file"])
    return splits


def dataset_dict(plan: ExportPlan):
    """The `datasets.DatasetDict` of the split (splits and columns: module docstring), with explicit features."""
    from datasets import Dataset, DatasetDict, Features, List, Value

    features = Features({"id": Value("string"), "instruction": Value("string"), "output": Value("string"),
                         "system": Value("string"),
                         "messages": List({"role": Value("string"), "content": Value("string")}),
                         "score": Value("float64"), "phase": Value("int32"), "source": Value("string"),
                         "sequential": Value("bool"), "meta": Value("string")})
    splits = split_examples(plan)
    phase_of = {e.id: int(k.removeprefix("phase_")) for k, ph in splits.items() if re.fullmatch(r"phase_\d+", k)
                for e in ph}
    return DatasetDict({name: Dataset.from_list([_row(e, phase_of) for e in examples], features=features)
                        for name, examples in splits.items()})


def agreement_of(plan: ExportPlan) -> dict[str, Any] | None:
    """The run's agreement row of the split's scorer with the paper's GPT-4 labels (agreement/<tag>/agreement.json,
    written by `phased-ift score --against paper`): the row over the most examples, with its file; None when the
    run has none."""
    scorer, best = plan.manifest.get("scorer"), None
    for path in plan.run.agreement_files():
        try:
            rows = read_jsonl(path)
        except (OSError, ValueError):
            continue
        for r in rows:
            if r.get("scorer") == scorer and (best is None or (r.get("n") or 0) > (best.get("n") or 0)):
                best = {**r, "file": str(path.relative_to(plan.run.root))}
    return best


def _fmt(x: Any, nd: int = 3) -> str:
    if x is None or (isinstance(x, float) and x != x):
        return "n/a"
    return f"{x:.{nd}f}" if isinstance(x, float) else str(x)


def _scorer_lines(plan: ExportPlan) -> list[str]:
    """The card's "Difficulty scorer" section: the scorer, its settings and its agreement figure."""
    s, name = plan.cfg.scoring, plan.manifest.get("scorer", plan.cfg.scoring.scorer)
    doc = (getattr(SCORERS.get(name), "__doc__", None) or "").strip().splitlines()
    settings = {"judge": f"judge model `{s.judge.model}`, template `{s.template}`, {s.samples} sample(s)",
                "ifd": f"scoring model `{s.model or plan.cfg.model.name_or_path}`, max_length {s.max_length}",
                "loss": f"scoring model `{s.model or plan.cfg.model.name_or_path}`, max_length {s.max_length}",
                "learned": f"labels `{s.labels}`", "meta": f"meta field `{s.meta_key}`"}.get(name, "")
    what = f" ({doc[0].rstrip('.')})" if doc else ""
    lines = [f"- Scorer: `{name}`{what}" + (f"; {settings}" if settings else "") + ".",
             "- Higher score = harder. Examples whose scoring failed are in no split "
             f"({plan.manifest.get('n_failed_scores', 0)} failed, {plan.manifest.get('n_unscored', 0)} unscored)."]
    a = agreement_of(plan)
    if a is None:
        lines.append("- Agreement with the paper's GPT-4 difficulty scores: not measured in this run (`phased-ift "
                     "score CONFIG --against paper`).")
    else:
        lines.append(f"- Agreement with the paper's GPT-4 difficulty scores (Pang et al. 2024, `{a['file']}`): "
                     f"ROC-AUC {_fmt(a.get('auc'))} for score >= 3.5 over {a.get('n')} examples, Spearman "
                     f"{_fmt(a.get('spearman_stage3'))} within stage 3 (n = {a.get('n_stage3')}).")
    return lines


def _split_table(plan: ExportPlan, ds) -> list[str]:
    """The card's table: one row per split, with the manifest's score range for the phases."""
    ranges = {f"phase_{p['k']}": p for p in plan.manifest["phases"]}
    lines = ["| split | examples | score min | score max | score mean |", "|---|---|---|---|---|"]
    for name, split in ds.items():
        p = ranges.get(name)
        cells = [_fmt(p.get(k)) for k in ("score_min", "score_max", "score_mean")] if p else ["", "", ""]
        lines.append(f"| {name} | {split.num_rows} | " + " | ".join(cells) + " |")
    return lines


def _source_lines(ds) -> list[str]:
    """The card's "Sources and licenses" table: examples per source (of the one_off split) and PROVENANCE.md."""
    counts = Counter(ds["one_off"]["source"]) if "one_off" in ds else Counter()
    lines = ["| source | examples | upstream | license (as its PROVENANCE.md records it) |", "|---|---|---|---|"]
    for source, n in counts.most_common():
        prov = source_provenance(source)
        lines.append(f"| {source or '(unknown)'} | {n} | {prov.get('upstream', 'not recorded')} | "
                     f"{prov.get('license', 'not recorded: check the source yourself')} |")
    return lines


def card(plan: ExportPlan, ds, out: Path) -> str:
    """The dataset card (README.md): YAML metadata, then scorer, split, splits table, sources, fields, use."""
    m = plan.manifest
    thresholds = ", ".join(f"{t:g}" for t in m.get("thresholds") or []) or "none (equal-size quantiles)"
    head = ["---", "pretty_name: Phased instruction data (phased-ift)", "license: other",
            "task_categories:", "- text-generation", "tags:", "- instruction-tuning", "- curriculum-learning",
            "- phased-instruction-fine-tuning", "---", "",
            f"# Instruction data in {m['k']} phases of increasing difficulty", "",
            f"Made by phased-ift from the run dir `{plan.run.root}`: {m['n_examples']} "
            "examples scored for difficulty and split into phases, easy to hard, for Phased Instruction Fine-Tuning "
            "(Pang et al. 2024, \"Phased Instruction Fine-Tuning for Large Language Models\", ACL Findings): train "
            "on phase 1, then phase 2 from the resulting weights, and so on. `one_off` is the equal-budget "
            "baseline (all phases at once); the control splits keep the phase sizes with another order.", "",
            "## Difficulty scorer", "", *_scorer_lines(plan), "", "## Split", "",
            f"- Method `{m['method']}`, K = {m['k']}, thresholds: {thresholds}, tie-break seed {m['seed']}.", "",
            *_split_table(plan, ds), "", "## Sources and licenses", "",
            "Each example keeps its source's license; the most restrictive one applies to the whole set (most "
            "Alpaca-derived data is CC BY-NC 4.0: research and non-commercial use only).", "", *_source_lines(ds),
            ""]
    return "\n".join(head + _usage_lines(str(out), int(m["k"]))) + "\n"


def _usage_lines(folder: str, k: int) -> list[str]:
    return ["## Fields", "",
            "`id`, `instruction` (last user turn), `output` (last answer), `system`, `messages` (the whole example "
            "as chat turns), `score` (difficulty, higher = harder), `phase` (its phase in the difficulty split), "
            "`source`, `sequential` (a sequential instruction mixed in by phased-ift's `sit.source`), `meta` "
            "(other fields, JSON).", "", "## Use", "", "```python",
            "from datasets import load_from_disk", f"ds = load_from_disk({folder!r})",
            f"for k in range(1, {k + 1}):",
            "    train_one_phase(ds[f\"phase_{k}\"])   # each from the previous phase's weights",
            "```", "", "Publish (card first, so `push_to_hub` keeps its text and adds its own metadata):", "",
            "```python", "from huggingface_hub import HfApi", "from datasets import load_from_disk",
            "HfApi().create_repo(\"USER/NAME\", repo_type=\"dataset\", exist_ok=True)",
            f"HfApi().upload_file(path_or_fileobj={folder + '/README.md'!r}, path_in_repo=\"README.md\",",
            "                    repo_id=\"USER/NAME\", repo_type=\"dataset\")",
            f"load_from_disk({folder!r}).push_to_hub(\"USER/NAME\")", "```"]


def write(plan: ExportPlan, out: Path) -> list[Path]:
    """Save the DatasetDict into `out` (`save_to_disk`: dataset_dict.json and one folder per split), then the
    card out/README.md; returns dataset_dict.json and README.md."""
    import datasets

    ds = dataset_dict(plan)
    quiet = datasets.utils.are_progress_bars_disabled()
    datasets.disable_progress_bars()  # one line per command, as the rest of the CLI
    try:
        ds.save_to_disk(str(out))
    finally:
        if not quiet:
            datasets.enable_progress_bars()
    atomic_write_text(out / "README.md", card(plan, ds, out))
    return [out / "dataset_dict.json", out / "README.md"]
