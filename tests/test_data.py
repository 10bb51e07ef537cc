"""Data layer: malformed-input cases (message + rejects file), real-file counts, named sources, test sets, step_data.

Run: pytest tests/test_data.py   (real files come from $PHASED_IFT_DATA_HOME, set by conftest)
"""

from __future__ import annotations

import io
import json

import pytest
from rich.console import Console

from phased_ift import data
from phased_ift.cli import main, print_check, print_sources
from phased_ift.config import DataSource, load_config
from phased_ift.data import (Example, check_file, combine_results, find_reference, load_reference_answers,
                             load_source, load_test_set, normalize_text, read_examples, read_file)
from phased_ift.data.formats import _register
from phased_ift.errors import PhasedIFTError
from phased_ift.pipeline import step_data
from phased_ift.runio import read_jsonl


def _console() -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, width=200), buf


def _check(tmp_path, name: str, content: str | bytes, fmt: str = "auto") -> tuple[str, list[dict]]:
    """Run `phased-ift data check` (`print_check`) on a file; return its printed text and the rows of the
    rejects file it wrote."""
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    console, buf = _console()
    rejects = tmp_path / "rejects.jsonl"
    assert print_check(str(path), fmt=fmt, rejects=str(rejects), console=console) == 0
    rows = list(read_jsonl(rejects)) if rejects.exists() else []
    return buf.getvalue(), rows


def _jsonl(*rows) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)


GOOD = {"instruction": "Say hi.", "input": "", "output": "Hi."}
GOOD2 = {"instruction": "Add 2 and 3.", "input": "", "output": "5"}


# ---------------------------------------------------------------------------------------------------------------
# Malformed records: each goes to the rejects file with its line and reason; the good records are read.
# ---------------------------------------------------------------------------------------------------------------

REJECT_CASES = [
    # (id, file name, content, reason fragment, line of the rejected record)
    ("malformed_json_line", "a.jsonl", _jsonl(GOOD, '{"instruction": "x", "output": ', GOOD2),
     "malformed JSON: Expecting value (line 2 column", 2),
    ("not_an_object", "a.jsonl", _jsonl(GOOD, '["instruction", "output"]', GOOD2),
     "not an object: the record is a JSON list", 2),
    ("wrong_type_instruction", "a.jsonl", _jsonl(GOOD, {"instruction": 7, "output": "x"}, GOOD2),
     "wrong type: 'instruction' is int, expected a string", 2),
    ("wrong_type_output", "a.json", json.dumps([GOOD, GOOD2, {"instruction": "a", "output": ["b"]}], indent=1),
     "wrong type: 'output' is list", 12),
    ("missing_instruction", "a.jsonl", _jsonl(GOOD, GOOD2, {"input": "", "output": "x", "instruction2": "y"}),
     "missing field: 'instruction' is absent", 3),
    ("missing_output", "a.jsonl", _jsonl({"instruction": "y", "input": "", "output_text": "x"}, GOOD, GOOD2),
     "missing field: 'output' is absent", 1),
    ("empty_instruction", "a.jsonl", _jsonl(GOOD, {"instruction": "  \n", "input": "", "output": "x"}, GOOD2),
     "empty instruction: 'instruction' is empty", 2),
    ("empty_response", "a.jsonl", _jsonl(GOOD, GOOD2, {"instruction": "Draw.", "input": "", "output": ""}),
     "empty response: 'output' is empty", 3),
    ("duplicate_example", "a.jsonl", _jsonl(GOOD, GOOD2, GOOD),
     "duplicate example: same messages as id 'a-0' (line 1)", 3),
    ("duplicate_id", "p.jsonl", _jsonl({"id": "7", "score": "4", "data": ["Q1", "A1"]},
                                       {"id": "8", "score": "3.5", "data": ["Q2", "A2"]},
                                       {"id": "7", "score": "5", "data": ["Q3", "A3"]}),
     "duplicate id: '7' was already used by the record at line 1", 3),
    ("bad_score", "p.jsonl", _jsonl({"id": "1", "score": "4", "data": ["Q1", "A1"]},
                                    {"id": "2", "score": "hard", "data": ["Q2", "A2"]},
                                    {"id": "3", "score": "5\n\n", "data": ["Q3", "A3"]}),
     "bad score: 'score' = 'hard' is not a number", 2),
    ("phasedsft_data_shape", "p.jsonl", _jsonl({"id": "1", "score": "4", "data": ["Q1", "A1"]},
                                               {"id": "2", "score": "4", "data": ["only a prompt"]},
                                               {"id": "3", "score": "5", "data": ["Q3", "A3"]}),
     "wrong type: 'data' must be a list [prompt, response]", 2),
    ("roles_do_not_alternate", "s.jsonl", _jsonl(
        {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},
        {"conversations": [{"from": "human", "value": "Hi"}, {"from": "human", "value": "Again"},
                           {"from": "gpt", "value": "Hello"}]},
        {"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi"},
                           {"from": "gpt", "value": "Hello"}]}),
     "roles do not alternate: turn 2 is user, expected assistant", 2),
    ("unknown_role", "s.jsonl", _jsonl(
        {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},
        {"conversations": [{"from": "human", "value": "Hi"}, {"from": "robot", "value": "Beep"}]},
        {"conversations": [{"from": "human", "value": "Yo"}, {"from": "gpt", "value": "Hello"}]}),
     "unknown role: turn 2 is from 'robot'", 2),
    ("empty_conversation", "s.jsonl", _jsonl(
        {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},
        {"conversations": [{"from": "human", "value": "Yo"}, {"from": "gpt", "value": "Hello"}]},
        {"conversations": []}),
     "empty conversation: no turns", 3),
    ("no_response", "s.jsonl", _jsonl(
        {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},
        {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"},
                           {"from": "human", "value": "And?"}]},
        {"conversations": [{"from": "human", "value": "Yo"}, {"from": "gpt", "value": "Hello"}]}),
     "no response: the conversation ends with a user turn", 2),
    ("sharegpt_empty_reply", "s.jsonl", _jsonl(
        {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": " "}]},
        {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},
        {"conversations": [{"from": "human", "value": "Yo"}, {"from": "gpt", "value": "Hello"}]}),
     "empty response: turn 2 ('gpt') is empty", 1),
    ("messages_system_in_middle", "m.jsonl", _jsonl(
        {"id": "a", "messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]},
        {"id": "b", "messages": [{"role": "user", "content": "Q"}, {"role": "system", "content": "S"},
                                 {"role": "assistant", "content": "A"}]},
        {"id": "c", "messages": [{"role": "user", "content": "Q2"}, {"role": "assistant", "content": "A"}]}),
     "roles do not alternate: turn 2 is system, expected assistant", 2),
    ("messages_bad_meta", "m.jsonl", _jsonl(
        {"id": "a", "messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]},
        {"id": "b", "messages": [{"role": "user", "content": "Q2"}, {"role": "assistant", "content": "A"}]},
        {"id": "c", "messages": [{"role": "user", "content": "Q3"}, {"role": "assistant", "content": "A"}],
         "meta": "oops"}),
     "wrong type: 'meta' is str, expected an object", 3),
]


@pytest.mark.parametrize("case", REJECT_CASES, ids=[c[0] for c in REJECT_CASES])
def test_malformed_record_is_rejected_with_reason(tmp_path, case):
    _, name, content, reason, line = case
    out, rows = _check(tmp_path, name, content)
    assert len(rows) == 1, rows
    assert reason in rows[0]["reason"]
    assert rows[0]["line"] == line
    assert rows[0]["source"].endswith(name)
    assert "records   3" in out and "read      2" in out and "rejected  1" in out
    assert f"1  {reason.split(':')[0]}" in out  # the reason histogram


def test_non_utf8_bytes_reject_only_their_record(tmp_path):
    content = (_jsonl(GOOD).encode() + b'{"instruction": "Caf\xe9?", "input": "", "output": "x"}\n'
               + _jsonl(GOOD2).encode())
    out, rows = _check(tmp_path, "a.jsonl", content)
    assert [r["line"] for r in rows] == [2]
    assert rows[0]["reason"].startswith("non-UTF-8 text: field 'instruction'")
    assert rows[0]["record"]["instruction"] == "Caf\ufffd?"  # written out readable, the bad byte replaced
    assert "read      2" in out


def test_all_cases_together_keep_counts_consistent(tmp_path):
    result = read_file(_write(tmp_path, "a.jsonl", _jsonl(GOOD, GOOD, "{bad", [1], GOOD2)))
    assert (len(result.examples), len(result.rejects), result.total) == (2, 3, 5)
    assert result.reason_counts() == {"duplicate example": 1, "malformed JSON": 1, "not an object": 1}
    assert [r["line"] for r in result.rejects] == [2, 3, 4]


def _write(tmp_path, name: str, content: str | bytes):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


# ---------------------------------------------------------------------------------------------------------------
# Unreadable files: one PhasedIFTError naming the file, the line and the fix.
# ---------------------------------------------------------------------------------------------------------------

UNREADABLE_CASES = [
    ("empty_file", "e.json", "  \n", r"e\.json, line 1: the file is empty\. Point to a file"),
    ("binary", "b.jsonl", b'{"a"\x00\x01\x02', r"b\.jsonl, line 1: binary data \(a NUL byte at offset 4\).*UTF-8"),
    ("array_syntax_error", "x.json", '[\n {"instruction": "a", "output": "b"},\n {"instruction": "c" "output": 1}\n]',
     r"x\.json, line 3 column 22: malformed JSON \(Expecting ',' delimiter\)\. .*fix that spot"),
    ("array_trailing_comma", "x.json", '[\n {"instruction": "a", "output": "b"},\n]',
     r"x\.json, line 3 column 1: malformed JSON \(Expecting value\)"),
    ("not_json", "n.jsonl", "instruction,output\nhi,there\n",
     r"n\.jsonl, line 1 column 1: not JSON \(Expecting value\)\. Expected a JSON array.*format hf"),
    ("empty_array", "ea.json", " [ ]\n", r"ea\.json: holds no records \(an empty JSON array\)\. Point to"),
    ("pretty_object", "o.json", '{\n  "rows": []\n}\n', r"o\.json, line 1 column 2: not JSON"),
    ("undetectable", "u.jsonl", _jsonl({"question": "q", "answer": "a"}),
     r"u\.jsonl, line 1: cannot tell the format from the first record \(fields: \['answer', 'question'\]\)\. "
     r"Pass the format explicitly.*columns mapping"),
]


@pytest.mark.parametrize("case", UNREADABLE_CASES, ids=[c[0] for c in UNREADABLE_CASES])
def test_unreadable_file_stops_with_one_paragraph(tmp_path, case):
    _, name, content, pattern = case
    path = _write(tmp_path, name, content)
    with pytest.raises(PhasedIFTError, match=pattern) as err:
        read_file(path)
    assert str(tmp_path) in str(err.value) and "\n" not in str(err.value)


def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(PhasedIFTError, match=r"nope\.json: no such file\. Check the path"):
        read_file(tmp_path / "nope.json")
    with pytest.raises(PhasedIFTError, match=r"nope\.json: no such file"):
        check_file(str(tmp_path / "nope.json"))
    with pytest.raises(PhasedIFTError, match=r"unknown format 'yaml'; use one of alpaca, phasedsft"):
        read_file(_write(tmp_path, "a.jsonl", _jsonl(GOOD)), fmt="yaml")
    with pytest.raises(PhasedIFTError, match=r"unknown file or named source 'alpagasus/random9k'.*Did you mean "
                                             r"alpagasus/random_9k"):
        check_file("alpagasus/random9k")


def test_explicit_format_wins_over_detection(tmp_path):
    path = _write(tmp_path, "a.jsonl", _jsonl({"instruction": "Name a colour.", "output": "Red", "category": "x"}))
    assert read_file(path).format == "alpaca"
    result = read_file(path, fmt="testset")
    assert result.format == "testset"
    assert result.examples[0].messages == [{"role": "user", "content": "Name a colour."}]
    assert result.examples[0].meta["reference"] == "Red"


# ---------------------------------------------------------------------------------------------------------------
# Formats
# ---------------------------------------------------------------------------------------------------------------


def test_alpaca_input_joined_with_blank_line_and_extras_kept(tmp_path):
    rows = [{"instruction": "Translate.", "input": "Bonjour", "output": "Hello", "score": "4.5", "label": 3},
            {"instruction": "Say hi.", "input": None, "output": "Hi", "system": "Be kind."}]
    result = read_file(_write(tmp_path, "al.json", json.dumps(rows)))
    a, b = result.examples
    assert a.id == "al-0" and a.instruction == "Translate.\n\nBonjour" and a.response == "Hello"
    assert a.meta == {"source": str(tmp_path / "al.json"), "score": 4.5, "label": 3, "input": "Bonjour"}
    assert b.messages[0] == {"role": "system", "content": "Be kind."} and b.instruction == "Say hi."


def test_sharegpt_unwraps_alpaca_template(tmp_path):
    rec = {"id": "identity_5", "conversations": [
        {"from": "human", "value": "Below is an instruction that describes a task, paired with an input that "
                                   "provides further context. Write a response that appropriately completes the "
                                   "request. ### Instruction: Sum these. ### Input: 1, 2"},
        {"from": "gpt", "value": "3"}]}
    (e,) = read_file(_write(tmp_path, "s.json", json.dumps([rec]))).examples
    assert e.id == "identity_5" and e.instruction == "Sum these.\n\n1, 2"
    assert e.meta["alpaca_template_unwrapped"] is True


def test_messages_round_trip(tmp_path):
    ex = [Example("x1", [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}], {"score": 2.0})]
    path = data.write_examples(tmp_path / "train.jsonl", ex)
    result = read_file(path)
    assert result.format == "messages"
    assert result.examples[0].to_dict() == {**ex[0].to_dict(), "meta": {"source": str(path), "score": 2.0}}
    assert read_examples(path)[0] == ex[0]


def test_csv_with_column_mapping(tmp_path):
    path = _write(tmp_path, "qa.csv", "question,answer,topic\nWhat is 2+2?,4,math\nName a fruit.,,food\n")
    result = read_file(path, columns={"instruction": "question", "output": "answer"})
    assert result.format == "hf"
    assert [(e.instruction, e.response, e.meta["topic"]) for e in result.examples] == [("What is 2+2?", "4", "math")]
    assert result.rejects[0]["reason"] == "empty response: 'output' is empty (row 1)"
    with pytest.raises(PhasedIFTError, match=r"names column\(s\) \{'instruction': 'prompt'\}.*its columns are "
                                             r"\['question', 'answer', 'topic'\]"):
        read_file(path, columns={"instruction": "prompt", "output": "answer"})
    with pytest.raises(PhasedIFTError, match=r"unknown key\(s\) \['question'\] in the columns mapping"):
        read_file(path, columns={"question": "question"})


def test_columns_mapping_on_json_goes_through_datasets(tmp_path):
    path = _write(tmp_path, "qa.jsonl", _jsonl({"q": "What is 2+2?", "a": "4"}, {"q": "Hi?", "a": "Hello"}))
    result = read_file(path, columns={"instruction": "q", "output": "a"})
    assert result.format == "hf" and [e.response for e in result.examples] == ["4", "Hello"]
    with pytest.raises(PhasedIFTError, match=r"qa\.jsonl: a columns mapping applies to format hf .*not to format "
                                             r"alpaca"):
        read_file(path, fmt="alpaca", columns={"instruction": "q"})


def test_parquet_without_mapping_is_detected(tmp_path):
    import datasets

    path = tmp_path / "d.parquet"
    datasets.Dataset.from_list([GOOD, GOOD2]).to_parquet(str(path))
    result = read_file(path)
    assert result.format == "hf" and [e.response for e in result.examples] == ["Hi.", "5"]


# ---------------------------------------------------------------------------------------------------------------
# Real files (counts from the issue; genuine bad records reported: read + rejected = total)
# ---------------------------------------------------------------------------------------------------------------

REAL_COUNTS = [
    # named source, total, read, rejected, reason histogram of the rejects
    ("alpagasus/random_9k", 9229, 9225, 4, {"empty response": 4}),
    ("cherry_llm/alpaca_5_percent", 3111, 3111, 0, {}),
    ("llama_factory/alpaca_en_demo", 999, 985, 14, {"duplicate example": 14}),
    ("phasedsft/stage3", 6889, 6880, 9, {"empty response": 9}),
    ("alpagasus/claude_t45", 5305, 5301, 4, {"empty response": 4}),
    ("car/selected", 1013, 1013, 0, {}),
    ("long_is_more/filtered_1k_score", 1000, 1000, 0, {}),
    ("alpaca_eval/gpt4", 805, 805, 0, {}),
    ("alpaca_eval/text_davinci_003", 805, 805, 0, {}),  # 2 empty outputs: prompts still usable (reference "")
    ("alpaca_eval/alpaca-7b", 805, 805, 0, {}),
]


@pytest.mark.parametrize("name,total,read,rejected,reasons", REAL_COUNTS, ids=[c[0] for c in REAL_COUNTS])
def test_real_source_counts(data_home, name, total, read, rejected, reasons):
    result = load_source(DataSource(name=name))
    assert (result.total, len(result.examples), len(result.rejects)) == (total, read, rejected)
    assert result.reason_counts() == reasons
    assert len({e.id for e in result.examples}) == read


def test_real_files_auto_detected(data_home):
    for rel, fmt in [("alpagasus/random_9k.json", "alpaca"), ("phasedsft/en-alpaca52k-stage3.jsonl", "phasedsft"),
                     ("long_is_more/filtered_alpaca_1k_longest.json", "sharegpt"),
                     ("alpaca_eval/alpaca-7b/model_outputs.json", "testset"),
                     ("alpagasus/koala_test_set.jsonl", "testset")]:
        assert read_file(data_home / rel).format == fmt, rel


def test_phasedsft_scores_are_floats(data_home):
    result = load_source(DataSource(name="phasedsft/stage3"))
    raw = {r["id"]: r["score"] for r in read_jsonl(data_home / "phasedsft/en-alpaca52k-stage3.jsonl")}
    assert sum(1 for s in raw.values() if s != s.strip()) == 21  # "4\n\n" etc. (PROVENANCE.md)
    by_id = {e.id: e for e in result.examples}
    newline_id = next(i for i, s in raw.items() if s == "4\n\n" and i in by_id)
    assert by_id[newline_id].meta["score"] == 4.0 and by_id[newline_id].meta["original_id"] == newline_id
    assert all(isinstance(e.meta["score"], float) and 3.5 <= e.meta["score"] <= 5 for e in result.examples)
    assert any(abs(e.meta["score"] - 4.166666666666667) < 1e-12 for e in result.examples)


def test_long_is_more_matches_alpaca_text(data_home):
    """The unwrapped ShareGPT prompt equals the Alpaca reader's user content for the same Alpaca example."""
    lim = load_source(DataSource(name="long_is_more/filtered_1k_longest"))
    assert all(e.meta.get("alpaca_template_unwrapped") for e in lim.examples)
    alpaca = {normalize_text(e.instruction) for src in ("alpagasus/random_9k", "alpagasus/claude_t45",
                                                         "cherry_llm/alpaca_5_percent")
              for e in load_source(DataSource(name=src)).examples}
    shared = sum(normalize_text(e.instruction) in alpaca for e in lim.examples)
    assert shared > 200  # overlap exists only if the template was unwrapped


def test_limit_sample_is_seeded_and_in_file_order(data_home):
    a = load_source(DataSource(name="cherry_llm/alpaca_5_percent", limit=50, seed=1))
    b = load_source(DataSource(name="cherry_llm/alpaca_5_percent", limit=50, seed=1))
    c = load_source(DataSource(name="cherry_llm/alpaca_5_percent", limit=50, seed=2))
    ids = [e.id for e in a.examples]
    assert ids == [e.id for e in b.examples] and ids != [e.id for e in c.examples]
    assert len(ids) == 50 and ids == sorted(ids, key=lambda i: int(i.rsplit("-", 1)[1]))
    assert a.total == 3111


# ---------------------------------------------------------------------------------------------------------------
# Test sets and reference answers
# ---------------------------------------------------------------------------------------------------------------

TEST_SET_COUNTS = [("vicuna", 80), ("koala", 180), ("sinstruct", 252), ("wizardlm", 218), ("oasst", 188),
                   ("helpful_base", 129), ("alpaca_eval", 805), ("lima", 300)]


@pytest.mark.parametrize("name,count", TEST_SET_COUNTS, ids=[c[0] for c in TEST_SET_COUNTS])
def test_test_set_counts(data_home, name, count):
    examples = load_test_set(name)
    assert len(examples) == count
    assert len({e.id for e in examples}) == count
    assert all(e.meta["testset"] == name and e.response == "" and e.instruction.strip() for e in examples)


def test_test_set_fields(data_home):
    wiz = {e.id: e for e in load_test_set("wizardlm")}
    assert wiz["1"].meta["Skill"] == "Math" and wiz["1"].meta["Difficulty"] == 1
    assert wiz["20"].instruction == wiz["27"].instruction  # a genuine duplicate prompt upstream, both kept
    sin = {e.id: e for e in load_test_set("sinstruct")}
    assert sin["user_oriented_task_0"].instruction.startswith("The sentence you are given might be too wordy")
    assert "\n\nIf you have any questions about my rate" in sin["user_oriented_task_0"].instruction
    assert sin["user_oriented_task_0"].meta["reference"].startswith("If you have any questions about my rate")
    oasst = load_test_set("oasst")
    assert all(e.meta["dataset"] == "oasst" and e.id.startswith("oasst_") and e.meta["reference"] for e in oasst)
    assert load_test_set("vicuna")[0].meta["category"] == "generic"


def test_test_set_limit_and_errors(data_home, tmp_path):
    a, b = load_test_set("koala", limit=10, seed=3), load_test_set("koala", limit=10, seed=3)
    assert [e.id for e in a] == [e.id for e in b] and len(a) == 10
    with pytest.raises(PhasedIFTError, match=r"unknown test set 'vicuna80'\. Did you mean vicuna\?.*Known: vicuna, "
                                             r"koala, sinstruct, wizardlm, oasst, helpful_base, alpaca_eval"):
        load_test_set("vicuna80")
    path = _write(tmp_path, "mine.jsonl", _jsonl({"prompt": "Hello?"}, {"prompt": ""}))
    with pytest.raises(PhasedIFTError, match=r"test set mine .*1 of 2 records cannot be used \(first: line 2: "
                                             r"empty instruction.*phased-ift data check"):
        load_test_set(str(path))
    path = _write(tmp_path, "mine2.json", json.dumps([GOOD, GOOD2]))
    got = load_test_set(str(path))
    assert [(e.instruction, e.meta["reference"], e.meta["testset"]) for e in got] == [
        ("Say hi.", "Hi.", "mine2"), ("Add 2 and 3.", "5", "mine2")]


def test_reference_answers(data_home):
    refs = load_reference_answers()
    assert len(refs) == 805
    oasst = load_test_set("oasst")
    assert all(find_reference(e, refs) == e.meta["reference"] for e in oasst)
    # coverage of the AlpacaEval GPT-4 answers (measured 2026-11): vicuna and sinstruct fully, koala 144 of 180
    coverage = {name: sum(find_reference(e, refs) is not None for e in load_test_set(name))
                for name in ("vicuna", "sinstruct", "koala")}
    assert coverage == {"vicuna": 80, "sinstruct": 252, "koala": 144}
    assert len(load_reference_answers("alpaca_eval/text_davinci_003")) == 803  # 2 empty outputs left out
    assert normalize_text("  Hello\n\nWorld ") == "hello world"


# ---------------------------------------------------------------------------------------------------------------
# Data home and named sources
# ---------------------------------------------------------------------------------------------------------------


def test_data_home_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("PHASED_IFT_DATA_HOME", str(tmp_path / "missing"))
    with pytest.raises(PhasedIFTError, match=r"PHASED_IFT_DATA_HOME=.*missing is not a directory"):
        data.data_home()
    monkeypatch.delenv("PHASED_IFT_DATA_HOME")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PhasedIFTError, match=r"no data home: set PHASED_IFT_DATA_HOME.*\./data/alpagasus/random_9k"):
        data.data_home()
    (tmp_path / "data").mkdir()
    assert data.data_home() == tmp_path / "data"
    with pytest.raises(PhasedIFTError, match=r"'alpagasus/random_9k' resolves to .*random_9k\.json, which does not "
                                             r"exist\. Put the file there"):
        load_source(DataSource(name="alpagasus/random_9k"))


def test_registries_refuse_duplicates():
    with pytest.raises(ValueError, match="duplicate registry entry 'vicuna'"):
        _register(data.TEST_SETS, "vicuna", data.TEST_SETS["vicuna"])


def test_print_sources(data_home):
    console, buf = _console()
    assert print_sources(console=console) == 0
    out = buf.getvalue()
    assert "alpagasus/random_9k" in out and "9225" in out and "wizardlm" in out and "(dataset=oasst)" in out


# ---------------------------------------------------------------------------------------------------------------
# step_data and the CLI
# ---------------------------------------------------------------------------------------------------------------


def test_combine_results_dedupes_and_prefixes_ids():
    u = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]
    v = [{"role": "user", "content": "Q2"}, {"role": "assistant", "content": "A"}]
    r1 = data.ReadResult([Example("1", u)], [{"source": "s1", "line": 3, "record": {}, "reason": "x: y"}],
                         "alpaca", "s1")
    r2 = data.ReadResult([Example("1", v), Example("2", u)], [], "alpaca", "s2")
    examples, rejects = combine_results([r1, r2])
    assert [e.id for e in examples] == ["1", "s2:1"]
    assert [r["reason"] for r in rejects] == ["x: y", "duplicate example: same messages as id '1' from source 's1'"]
    examples, rejects = combine_results([r1, r2], dedupe=False)
    assert [e.id for e in examples] == ["1", "s2:1", "2"] and len(rejects) == 1


def test_step_data_writes_train_and_rejects(data_home, tmp_path):
    own = _write(tmp_path, "own.jsonl", _jsonl({"id": "0", "score": "3", "data": ["Q", "A"]},
                                               {"id": "1", "score": "3", "data": ["Q2", ""]}))
    cfg = load_config(None, [f"run_dir={tmp_path / 'run'}"])
    cfg.data.train = [DataSource(name="alpagasus/random_9k", limit=20, seed=0),
                      DataSource(path=str(own), format="phasedsft")]
    console, buf = _console()
    run = step_data(cfg, console=console)
    train = read_examples(run.train_data)
    rejects = list(read_jsonl(run.rejects))
    assert len(train) == 21 and len({e.id for e in train}) == 21
    assert train[-1].meta == {"source": str(own), "score": 3.0, "original_id": "0"}
    assert len(rejects) == 5  # the 4 empty outputs of random_9k (whole file) + 1 of own.jsonl
    assert {r["source"] for r in rejects} == {"alpagasus/random_9k", str(own)}
    assert (f"data: 21 examples from 2 source(s); alpagasus/random_9k: a seeded sample of 20 of 9225 usable records; "
            f"5 records rejected (reasons in {run.rejects}) -> {run.train_data}") in " ".join(buf.getvalue().split())
    mtime = run.train_data.stat().st_mtime_ns
    assert step_data(cfg) == run and run.train_data.stat().st_mtime_ns == mtime  # done: skipped


def test_step_data_errors(tmp_path):
    cfg = load_config(None, [f"run_dir={tmp_path / 'run'}"])
    cfg.data.train = []
    with pytest.raises(PhasedIFTError, match="data.train lists no sources"):
        step_data(cfg)
    bad = _write(tmp_path, "bad.jsonl", _jsonl({"instruction": "", "output": "x"}, {"instruction": "y", "output": ""}))
    cfg.data.train = [DataSource(path=str(bad))]
    with pytest.raises(PhasedIFTError, match=r"every record .* was rejected \(2 rejects; reasons: empty instruction, "
                                             r"empty response\)"):
        step_data(cfg)
    assert not (tmp_path / "run" / "data" / "train.jsonl").exists()


def test_cli_data_check_real_file(data_home, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["data", "check", "alpagasus/random_9k"]) == 0
    err = capsys.readouterr().err
    assert "records   9229" in err and "read      9225" in err and "rejected  4" in err and "empty response" in err
    rows = list(read_jsonl(tmp_path / "random_9k.rejects.jsonl"))
    assert len(rows) == 4 and all(r["reason"] == "empty response: 'output' is empty" for r in rows)
    assert main(["data", "check", str(data_home / "phasedsft/en-alpaca52k-stage3.jsonl")]) == 0
    assert "format    phasedsft" in capsys.readouterr().err


def test_cli_data_check_broken_file(tmp_path, capsys):
    path = _write(tmp_path, "broken.json", '[{"instruction": "a", "output": "b"}\n{"instruction": "c"}]')
    assert main(["data", "check", str(path), "--format", "alpaca"]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "broken.json, line 2 column 1: malformed JSON" in err
    assert "Traceback" not in err


def test_bad_text_is_found_in_flat_nested_and_non_ascii_records():
    from phased_ift.data.loading import _find_bad_text

    assert _find_bad_text({"instruction": "Café ☕", "output": "fine"}) is None  # non-ASCII, valid
    assert _find_bad_text({"instruction": "ok", "output": "Caf\udce9"}) == "field 'output'"
    assert _find_bad_text({"Caf\udce9": "x"}) == "the record"  # a bad key
    assert _find_bad_text({"conversations": [{"value": "a"}, {"value": "\udc80"}]}) == \
        "field 'conversations'[1]['value']"
    assert _find_bad_text({"id": 7, "text": "\ud800"}) == "field 'text'"  # a non-str value: the walk


def test_message_keys_are_equal_exactly_for_equal_messages():
    from phased_ift.data.formats import message_key

    def turns(*pairs):
        return [{"role": r, "content": c} for r, c in pairs]

    a = turns(("user", "x\x00assistant\x00y"))
    b = turns(("user", "x"), ("assistant", "y"))
    c = turns(("user", "x\x00"), ("assistant", "y"))
    d = turns(("user", "1\x00x"))
    e = turns(("user", ""), ("assistant", "1\x00x"))
    odd = [{"role": "user", "content": "x", "name": "n"}]
    distinct = [a, b, c, d, e, odd, turns(("user", "x")), turns(("system", "x"))]
    keys = [message_key(m) for m in distinct]
    assert len(set(keys)) == len(keys)
    assert [message_key(json.loads(json.dumps(m))) for m in distinct] == keys  # equal copies, equal keys
    assert message_key([{"content": "x", "name": "n", "role": "user"}]) == keys[5]  # key order does not matter
