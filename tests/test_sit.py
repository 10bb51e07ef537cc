"""Sequential instructions (SIT): the Seq-Instruct pipeline against the fake server (each option A-D, each reject
reason, no request sent twice, chains over rounds, the dry run), its parsers and templates, the offline
compositions on real Alpaca data, the mix in the data step and each arm's view of it, and the pipeline against a
real llama.cpp server (slow, server)."""

from __future__ import annotations

import io
import json
import re
import sys
from pathlib import Path

import pytest
from rich.console import Console

sys.path.insert(0, str(Path(__file__).parent))
from fake_llm_server import FakeLLMServer  # noqa: E402

from phased_ift.config import config_from_dict  # noqa: E402
from phased_ift.data import Example, read_examples, read_file  # noqa: E402
from phased_ift.errors import PhasedIFTError  # noqa: E402
from phased_ift.runio import read_jsonl  # noqa: E402
from phased_ift.rundir import RunDir  # noqa: E402
from phased_ift.sit.compose import compose  # noqa: E402
from phased_ift.sit.generation import (check_rewrite, generate_step, load_step_template, parse_option,  # noqa: E402
                                       parse_rewrite, parse_separation)
from phased_ift.sit.mix import arm_phases, is_sequential, mix_into  # noqa: E402

# ----------------------------------------------------------------------------------------- the scripted generator

WATER = "Describe the water cycle."
WATER_1 = "Describe the stages of the water cycle, then explain how the water cycle shapes the weather."
WATER_2 = WATER_1 + " Finally, give one example of how rain forms over mountains."
# instruction -> (classifier reply, rewriter reply); an instruction not listed is classified D
SCRIPT = {
    WATER: ("The structure splits well. So the option is: A.", f"Let's see.\n#New Instruction#: \"{WATER_1}\"###"),
    WATER_1: ("So the option is: C.", f"#New Instruction#: {WATER_2}###"),
    "Give three tips for staying healthy.": (
        "This needs a preliminary task (Option B).",
        "#New Instruction#: Research common health problems in your region, and then give three tips for staying "
        "healthy.###"),
    "Name the capital of France.": ("option: C", "#New Instruction#: Name the capital of France, then describe two "
                                                 "landmarks found there.###"),
    "Add 2 and 3.": ("It is already sufficient. So the option is: D.", ""),
    "Translate into French:": ("So the option is: D.", ""),
    "Sort these numbers.": ("Hmm, hard to say which one fits.", ""),
    "Translate 'good morning' into Spanish.": ("So the option is: B.",
                                               "#New Instruction#: Write a short poem about autumn leaves.###"),
    "Summarize the given paragraph.": ("So the option is: B.", "#New Instruction#: Read and understand the given "
                                                               "paragraph carefully, then summarize the given "
                                                               "paragraph.###"),
    "List four primary colors.": ("So the option is: C.", "#New Instruction#: List four primary colors, then explain "
                                                          "how they mix into secondary colors.###"),
}
RECORDS = [  # alpaca records: (instruction, input)
    (WATER, ""), ("Give three tips for staying healthy.", ""), ("Name the capital of France.", ""),
    ("Add 2 and 3.", ""), ("Sort these numbers.", "5, 1, 3"), ("Translate 'good morning' into Spanish.", ""),
    ("Summarize the given paragraph.", "The fox ran across the field at dawn."), ("List four primary colors.", ""),
    ("Translate into French: good night", ""),
]


def _between(text: str, start: str, end: str) -> str:
    i = text.rindex(start) + len(start)
    return text[i:text.index(end, i)]


def scripted(body: dict) -> str:
    user = body["messages"][-1]["content"]
    if user.startswith("Please extract the instruction and input"):  # separate: an inline input, or none
        prompt = user[user.rindex("Prompt: ") + len("Prompt: "):]
        return ('Instruction: "Translate into French:"###\nInput: good night###' if "good night" in prompt else
                f'Instruction: "{prompt}"###\nInput: ###')
    if user.startswith("Given the original instruction"):  # classify
        return SCRIPT.get(_between(user, 'The instruction is: "', '". '), ("So the option is: D.",))[0]
    if "#Original Instruction#: '" in user and "Let's think step by step." in user[-60:]:  # rewrite
        line = user[user.rindex("#Original Instruction#: '") + len("#Original Instruction#: '"):].split("\n")[0]
        return SCRIPT[re.match(r"(.*?)' ?(?:Input: '.*')?$", line).group(1)][1]
    if "List four primary colors, then" in user:  # respond: an empty answer
        return "   "
    return "Response: " + user.split("\n")[0][:40]


def _config(tmp_path: Path, srv: FakeLLMServer, **sit) -> object:
    src = tmp_path / "alpaca.json"
    src.write_text(json.dumps([{"instruction": i, "input": x, "output": f"Original answer {n}."}
                               for n, (i, x) in enumerate(RECORDS)]))
    return config_from_dict({
        "run_dir": str(tmp_path / "run"), "data": {"train": [{"path": str(src), "format": "alpaca"}]},
        "train": {"arms": ["one-off", "sit"]},
        "sit": {"source": "generated", "iterations": 1, **sit,
                "generator": {"base_url": srv.base_url, "model": "fake", "concurrency": 2, "max_retries": 0,
                              "timeout": 10.0, "backoff": 0.01}}})


def _files(run: RunDir) -> tuple[dict, dict, list, dict]:
    seq = {e.meta["source_ids"][0]: e for e in read_examples(run.sit("sequential.jsonl"))}
    kept = {r["id"]: r for r in read_jsonl(run.sit("kept.jsonl"))}
    rejects = list(read_jsonl(run.sit("rejects.jsonl")))
    return seq, kept, rejects, json.loads(run.sit("summary.json").read_text())


def _console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=300), out


def test_each_option_and_each_reject_reason_and_a_rerun_sends_nothing(tmp_path):
    with FakeLLMServer(reply=scripted) as srv:
        cfg = _config(tmp_path, srv)
        run = RunDir(cfg.run_dir)
        generate_step(cfg, run, console=_console()[0])
        seq, kept, rejects, summary = _files(run)
        ids = {r["record"]["messages"][0]["content"].split("\n")[0]: r for r in rejects}
        # A, B, C: a sequential record each, with the source id, the option and the iteration
        by_text = {e.meta["original_instruction"]: e for e in seq.values()}
        assert set(by_text) == {WATER, "Give three tips for staying healthy.", "Name the capital of France."}
        water = by_text[WATER]
        assert water.id == f"sit-llm:{water.meta['source_ids'][0]}" and water.messages[0]["content"] == WATER_1
        assert water.meta | {} == {**water.meta, "sequential": "llm", "option": "A", "options": ["A"], "iteration": 1,
                                   "generator": "fake", "source": "sit:llm"}
        assert water.messages[1]["content"] == ("Response: " + WATER_1[:40]).strip()
        assert by_text["Give three tips for staying healthy."].meta["option"] == "B"
        assert by_text["Name the capital of France."].meta["option"] == "C"
        # D: kept as is, not sequential
        assert [(r["option"], r["iteration"], r["instruction"], r["input"]) for r in kept.values()] == [
            ("D", 1, "Add 2 and 3.", ""), ("D", 1, "Translate into French:", "good night")]  # (a) separated it
        # every reject with its reason and the step it failed at
        reasons = {text: (r["step"], r["reason"].split(":")[0]) for text, r in ids.items()}
        assert reasons == {"Sort these numbers.": ("classify", "unparsed classification"),
                           "Translate 'good morning' into Spanish.": ("rewrite", "dropped original task"),
                           "Summarize the given paragraph.": ("rewrite", "trivial added task"),
                           "List four primary colors.": ("respond", "empty response")}
        assert all(r["reply"] is not None and r["iteration"] == 1 for r in rejects)
        c = summary["counts"]
        assert (c["sources"], c["sequential"], c["kept"], c["rejects"], c["sources_without_output"]) == (9, 3, 2, 4, 4)
        assert c["rounds"][0]["options"] == {"A": 1, "B": 3, "C": 2, "D": 2} and c["separated_by_llm"] == 1
        sent = srv.count
        assert sent == 7 + 9 + 6 + 4  # separate those without an input field, classify all, rewrite, respond
        # a re-run (summary removed, as after kill -9 before it was written) is answered by the cache
        run.sit("summary.json").unlink()
        console, out = _console()
        generate_step(cfg, run, console=console)
        assert srv.count == sent and _files(run)[:3] == (seq, kept, rejects)
        assert "sit-generate: 9 instructions -> 3 sequential examples" in out.getvalue()


def test_few_shot_examples_are_shuffled_per_request_and_reproducible(tmp_path):
    with FakeLLMServer(reply=scripted) as srv:
        cfg = _config(tmp_path, srv)
        generate_step(cfg, RunDir(cfg.run_dir), console=_console()[0])
        classify = [b["messages"][-1]["content"] for b in srv.bodies if b["messages"][-1]["content"].startswith(
            "Given the original")]
        shots = load_step_template("classify", "sit-classify").examples
        orders = {tuple(sorted(range(len(shots)), key=lambda i: text.index(shots[i][:80]))) for text in classify}
        assert len(classify) == 9 and len(orders) > 1  # per request, not one order for all
        assert all(b["messages"][0]["role"] == "system" for b in srv.bodies if b["messages"][-1]["content"]
                   .startswith("Given the original"))


def test_chains_grow_over_rounds_and_a_later_d_keeps_the_earlier_round(tmp_path):
    with FakeLLMServer(reply=scripted) as srv:
        cfg = _config(tmp_path, srv, iterations=2)
        run = RunDir(cfg.run_dir)
        generate_step(cfg, run, console=_console()[0])
        seq, kept, rejects, summary = _files(run)
    by_text = {e.meta["original_instruction"]: e for e in seq.values()}
    water = by_text[WATER]
    assert water.messages[0]["content"] == WATER_2 and water.meta["options"] == ["A", "C"]
    assert water.meta["iteration"] == 2 and water.meta["option"] == "C"
    tips = by_text["Give three tips for staying healthy."]  # round 2 said D: round 1 stays
    assert tips.meta["iteration"] == 1 and tips.meta["options"] == ["B"]
    assert summary["counts"]["by_iteration"] == {"1": 2, "2": 1}
    assert summary["counts"]["rounds"][1]["options"]["D"] == 2 and len(kept) == 2  # only first-round Ds


def test_dry_run_sends_nothing_and_estimates_from_the_cache(tmp_path):
    with FakeLLMServer(reply=scripted) as srv:
        cfg = _config(tmp_path, srv)
        run = RunDir(cfg.run_dir)
        console, out = _console()
        assert generate_step(cfg, run, dry_run=True, console=console) is None
        assert srv.count == 0 and not run.sit("summary.json").exists()
        assert "0 answers cached, 9 requests to send next" in out.getvalue()  # 7 separations, 2 classifications
        assert "then at most 25 more for the 9 chains" in out.getvalue()  # 7 x 3 + 2 x 2 later steps
        generate_step(cfg, run, console=_console()[0])
        console, out = _console()
        generate_step(cfg, run, dry_run=True, console=console)
        assert srv.count == 26 and "26 answers cached, 0 requests to send next" in out.getvalue()


def test_a_template_file_replaces_a_packaged_one_and_a_bad_one_is_refused(tmp_path):
    good = tmp_path / "cls.txt"
    good.write_text("my classifier\n<<system>>\nBe brief.\n<<user>>\nPick A-D for: {instruction} {input}\n{examples}"
                    "\n<<example>>\nshot one\n<<example>>\nshot two\n")
    t = load_step_template("classify", str(good))
    assert t.system == "Be brief." and t.examples == ("shot one", "shot two")
    import random

    msgs = t.messages({"instruction": "Do {input} X", "input": ""}, random.Random(0))
    assert msgs[1]["content"].startswith("Pick A-D for: Do {input} X ") and "shot one" in msgs[1]["content"]
    bad = tmp_path / "bad.txt"
    bad.write_text("<<user>>\nno placeholder here\n<<example>>\nx\n")
    with pytest.raises(PhasedIFTError, match=r"sit.templates.classify .*lacks the placeholder \{instruction\}"):
        load_step_template("classify", str(bad))
    with pytest.raises(PhasedIFTError, match="sit.templates.respond"):
        load_step_template("respond", "no-such-template")


@pytest.mark.parametrize("text,want", [
    ("So the option is: C.", "C"), ("(Option B) is best", "B"), ("option: a", None), ("D.", "D"), ("A", "A"),
    ("I first thought Option A, but the option is: D.", "D"), ("this option is a good one", None), ("", None),
    (None, None), ("Hmm.", None),
])
def test_parse_option(text, want):
    assert parse_option(text) == want


def test_parse_rewrite_separation_and_the_rewrite_checks():
    assert parse_rewrite('why...\n#New Instruction#: “Do X, then Y.”###tail') == "Do X, then Y."
    assert parse_rewrite("New instruction: Do Z.") == "Do Z." and parse_rewrite("no marker") is None
    assert parse_rewrite("#New Instruction#: ###") is None
    assert parse_separation('Instruction: "Sort the list."###\nInput: 3, 1, 2###') == ("Sort the list.", "3, 1, 2")
    assert parse_separation("Instruction: Say hi.###\nInput: ###") == ("Say hi.", "")
    assert parse_separation("I cannot") is None and parse_separation("Instruction: ###") is None
    orig = "Give three tips for staying healthy."
    assert check_rewrite(orig, None, 0.6).startswith("unparsed rewrite")
    assert check_rewrite(orig, "give three tips for staying healthy", 0.6).startswith("unchanged instruction")
    assert check_rewrite(orig, "Write a poem about cats.", 0.6).startswith("dropped original task")
    assert check_rewrite(orig, "First read the instruction carefully, then give three tips for staying healthy.",
                         0.6).startswith("trivial added task")
    assert check_rewrite(orig, "List common illnesses, then give three tips for staying healthy.", 0.6) is None


# ----------------------------------------------------------------------------------------- offline compositions


def _alpaca(data_home: Path, n: int) -> list[Example]:
    return read_file(data_home / "alpagasus" / "random_9k.json", "alpaca").examples[:n]


def test_offline_chains_on_real_alpaca_are_seeded_ordered_and_traceable(data_home):
    data = _alpaca(data_home, 200)
    by_id = {e.id: e for e in data}
    a = compose(data, 20, "chain", iterations=2, seed=1)
    assert [e.to_dict() for e in a] == [e.to_dict() for e in compose(data, 20, "chain", iterations=2, seed=1)]
    assert [e.id for e in compose(data, 20, "chain", iterations=2, seed=2)] != [e.id for e in a]
    assert len(a) == 20 and len({e.id for e in a}) == 20
    for e in a:
        parts = [by_id[i] for i in e.meta["source_ids"]]
        assert len(parts) == 3 and len(set(e.meta["source_ids"])) == 3
        assert e.id == "sit-chain:" + "+".join(p.id for p in parts)
        assert e.meta == {"source": "sit:offline", "sequential": "offline", "option": "chain", "iteration": 2,
                          "source_ids": e.meta["source_ids"]}
        steps = e.instruction.split("\n\n")
        assert steps[0].startswith("First, ") and "Finally, " in e.instruction
        assert e.instruction.index(parts[1].instruction.strip()[1:40]) < e.instruction.index(
            parts[2].instruction.strip()[1:40])
        assert e.response == "\n\n".join(f"{i}. {p.response.strip()}" for i, p in enumerate(parts, 1))


def test_offline_repeat_input_on_real_alpaca(data_home):
    data = _alpaca(data_home, 300)
    out = compose(data, 40, "repeat-input", seed=0)
    with_input = [e for e in out if e.meta.get("input")]
    assert with_input and len(with_input) < len(out)  # both kinds of Alpaca records occur
    for e in out:
        src = next(d for d in data if d.id == e.meta["source_ids"][0])
        repeated = src.meta.get("input") or src.instruction
        assert e.response == f"1. Repeat:\n{repeated.strip()}\n2. {src.response.strip()}"
        assert e.instruction.endswith(repeated.strip()) and e.meta["option"] == "repeat-input"
        assert e.instruction.lower().startswith(("first repeat", "please", "kindly"))


# ----------------------------------------------------------------------------------------- the mix and the arms


def test_the_data_step_mixes_sequential_examples_that_each_arm_sees_or_drops(tmp_path, data_home):
    from phased_ift.phases.design import get_arm
    from phased_ift.pipeline import _data

    cfg = config_from_dict({"run_dir": str(tmp_path / "r"), "data": {"train": [
        {"name": "alpagasus/random_9k", "limit": 50}]}, "train": {"arms": ["one-off", "sit", "sit-phased"]},
        "sit": {"source": "offline", "ratio": 0.2, "kind": "chain"}})
    run = RunDir(cfg.run_dir)
    console, out = _console()
    _data(cfg, run, console=console)
    data = read_examples(run.train_data)
    seq = [e for e in data if is_sequential(e)]
    originals = [e for e in data if not is_sequential(e)]
    assert len(originals) == 50 and len(seq) == 10 and "sit: 10 sequential examples (offline)" in out.getvalue()
    replaced = [e.meta["replaces"] for e in seq]
    assert replaced == [e.meta["source_ids"][0] for e in seq] and len(set(replaced)) == 10  # its head, once each
    phases = [data[:30], data[30:]]  # any split: the views depend on the examples, not on where they land
    mix = get_arm("sit").assemble(phases, seed=0)
    assert len(mix) == 1 and len(mix[0]) == 50 and sum(map(is_sequential, mix[0])) == 10
    assert not {e.id for e in mix[0]} & set(replaced)
    one_off = get_arm("one-off").assemble(phases, seed=0)
    assert one_off == get_arm("one-off").assemble([originals[:30], originals[30:]], seed=0)  # as without SIT
    assert [len(p) for p in get_arm("sit-phased").assemble(phases, 0)] == [len(p) for p in arm_phases(phases, True)]


def test_a_pool_file_larger_than_the_mix_is_sampled_and_ids_never_clash(tmp_path):
    originals = [Example(f"e{i}", [{"role": "user", "content": f"Q{i}"}, {"role": "assistant", "content": "A"}])
                 for i in range(10)]
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps({"id": f"e{i}", "messages": [{"role": "user", "content": f"First Q{i}, then "
                                        "R."}, {"role": "assistant", "content": "1. A\n2. B"}]}) + "\n"
                            for i in range(6)))
    cfg = config_from_dict({"train": {"arms": ["sit"]}, "sit": {"source": str(pool), "ratio": 0.3}})
    mixed, rejects, note = mix_into(originals, cfg.sit, RunDir(tmp_path / "r"))
    seq = [e for e in mixed if is_sequential(e)]
    assert rejects == [] and len(seq) == 3 and len(mixed) == 13
    assert all(e.id.startswith("sit:e") and e.meta["sequential"] == "file" for e in seq)
    assert len({e.meta["replaces"] for e in seq}) == 3 and len({e.id for e in mixed}) == 13


def test_config_ties_the_mix_arms_to_sit_source():
    with pytest.raises(PhasedIFTError, match="sit.source is none"):
        config_from_dict({"train": {"arms": ["one-off", "sit"]}})
    with pytest.raises(PhasedIFTError, match="no arm of train.arms trains on them"):
        config_from_dict({"sit": {"source": "offline"}})
    with pytest.raises(PhasedIFTError, match="sit.source=generated needs sit.generator.base_url"):
        config_from_dict({"train": {"arms": ["sit"]}, "sit": {"source": "generated"}})


# ----------------------------------------------------------------------------------------- a real llama.cpp server


@pytest.mark.slow
@pytest.mark.server
def test_real_llama_cpp_server_on_real_alpaca_instructions(llama_server, data_home, tmp_path):
    cfg = config_from_dict({
        "run_dir": str(tmp_path / "run"), "data": {"train": [{"name": "alpagasus/random_9k", "limit": 3, "seed": 3}]},
        "train": {"arms": ["sit"]},  # separate: never, so classify, rewrite and respond meet the real server
        "sit": {"source": "generated", "iterations": 1, "separate": "never", "max_tokens": 64,
                "response_max_tokens": 32,
                "generator": {"base_url": llama_server, "model": "smollm2", "concurrency": 2, "timeout": 600.0}}})
    run = RunDir(cfg.run_dir)
    console, out = _console()
    summary = generate_step(cfg, run, console=console)
    seq, kept, rejects, _ = _files(run)
    c = summary["counts"]
    assert c["sources"] == 3 and c["sequential"] + c["kept"] + c["sources_without_output"] == 3
    assert c["rounds"][0]["asked"] == 3  # every instruction reached the classifier
    assert len(seq) == c["sequential"] and len(kept) == c["kept"] and len(rejects) == c["rejects"]
    reasons = [r["reason"] for r in rejects]
    print("llama.cpp SmolLM2-135M:", c, reasons)  # for the record (pytest -s)
    assert all(r.split(":")[0] in {"unparsed separation", "unparsed classification", "unparsed rewrite",
                                   "unchanged instruction", "dropped original task", "trivial added task",
                                   "empty response"} for r in reasons), reasons
    for e in seq.values():
        assert e.meta["sequential"] == "llm" and e.meta["iteration"] == 1 and e.response.strip()
    run.sit("summary.json").unlink()
    console, out = _console()
    generate_step(cfg, run, console=console)
    assert "sent 0" in out.getvalue() and _files(run)[:3] == (seq, kept, rejects)


def test_sequential_examples_are_split_like_the_rest_and_the_manifest_plan_and_report_show_their_share(
        tmp_path, data_home):
    from phased_ift.phases.design import controls
    from phased_ift.phases.split import read_manifest, write_split
    from phased_ift.pipeline import _data
    from phased_ift.report.render import _difficulty_blocks
    from phased_ift.runio import write_jsonl
    from phased_ift.train import plan_training

    cfg = config_from_dict({"run_dir": str(tmp_path / "r"), "data": {"train": [
        {"name": "alpagasus/random_9k", "limit": 60}]}, "model": {"name_or_path": "no-such/model"},
        "scoring": {"scorer": "meta"}, "phases": {"k": 3, "method": "quantiles"},
        "train": {"arms": ["one-off", "sit", "sit-phased", "random"]}, "sit": {"source": "offline", "ratio": 0.25}})
    run = RunDir(cfg.run_dir)
    _data(cfg, run)
    data = read_examples(run.train_data)
    # a length score: the chains (two tasks, two answers) are longer, so most land in the hardest phase
    write_jsonl(run.scores("meta"), [{"id": e.id, "score": float(len(e.instruction) + len(e.response)),
                                      "error": None} for e in data])
    write_split(run, "meta", 3, "quantiles", [], 0, controls(cfg.train.arms))
    phases = read_manifest(run)["phases"]
    assert sum(p["count"] for p in phases) == 75 and sum(p["sequential"] for p in phases) == 15
    assert sum(p["replaced"] for p in phases) == 15 and phases[-1]["sequential"] > phases[0]["sequential"]
    plan = plan_training(cfg, run)
    assert plan["examples"] == 60 and set(plan["example_epochs"].values()) == {60.0}  # replace, not add
    assert [sum(r["sequential"] for r in plan["arms"][a]) for a in ("one-off", "sit", "sit-phased", "random")] == [
        0, 15, 15, 0]
    assert [r["sequential"] for r in plan["arms"]["sit-phased"]] == [p["sequential"] for p in phases]
    assert [r["examples"] for r in plan["arms"]["sit-phased"]] == [p["count"] - p["replaced"] for p in phases]
    from phased_ift.report.summary import summarize_run

    blocks = _difficulty_blocks(summarize_run(run, cfg), {})
    table = next(b for b in blocks if b[0] == "table" and "sequential" in b[1])
    assert table[1][-2:] == ["sequential", "share in sit-phased"]


def test_the_cli_command_runs_the_step_and_refuses_other_sources(tmp_path, capsys):
    import yaml

    from phased_ift.cli import main

    with FakeLLMServer(reply=scripted) as srv:
        cfg = _config(tmp_path, srv)
        from phased_ift.config import config_to_dict

        path = tmp_path / "c.yaml"
        path.write_text(yaml.safe_dump(config_to_dict(cfg)))
        assert main(["sit-generate", str(path), "--dry-run"]) == 0 and srv.count == 0
        assert main(["sit-generate", str(path)]) == 0 and srv.count == 26
        assert RunDir(cfg.run_dir).sit("summary.json").is_file()
        assert main(["sit-generate", str(path), "sit.source=offline"]) == 2
    assert "sit-generate writes <run_dir>/sit/sequential.jsonl for sit.source=generated" in capsys.readouterr().err
