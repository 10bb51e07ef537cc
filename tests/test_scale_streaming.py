"""The steps hold O(batch) rows, not every example (issue 29 item 2): the lazy data file (`data.ExampleFile`), the
jsonl line index (`runio.JsonlIndex`), the score step's lazy todo list and final rewrite, and files byte-identical
to those of the in-memory code paths, on real Alpaca records from the data home."""

from __future__ import annotations

import gc
import json

import pytest

from phased_ift import scoring
from phased_ift.config import load_config
from phased_ift.data import Example, ExampleFile, read_file, write_examples
from phased_ift.data.sources import data_home
from phased_ift.runio import AppendLog, JsonlDecodeError, JsonlIndex


def _examples(n: int = 120) -> list[Example]:
    return read_file(data_home() / "alpagasus" / "random_9k.json").examples[:n]


def test_jsonl_index_reads_rows_by_position_and_keeps_small_values(tmp_path):
    path = tmp_path / "rows.jsonl"
    rows = [{"id": f"r{i}", "text": "é" * i} for i in range(5)]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" + ("\n" if i == 2 else "")
                            for i, r in enumerate(rows)), encoding="utf-8")
    with JsonlIndex(path, keep=lambda r: r["id"]) as index:
        assert len(index) == 5 and index.values == [r["id"] for r in rows]
        assert [index.row(i) for i in (4, 0, 3, -1, -5)] == [rows[4], rows[0], rows[3], rows[4], rows[0]]
        lines = path.read_bytes().replace(b"\n\n", b"\n").splitlines(keepends=True)
        assert [index.line(i) for i in (2, 3, 4, -3)] == [lines[2], lines[3], lines[4], lines[2]]
        assert index.line(1, lambda b: json.loads(b)["id"]) == "r1"
        with pytest.raises(IndexError):
            index.line(-6)
        with pytest.raises(JsonlDecodeError, match="rows.jsonl, line 0"):
            index.line(0, lambda b: json.loads(b[:-3]))
    assert len(JsonlIndex(path)) == 5  # offsets only, nothing parsed
    with open(path, "ab") as f:
        f.write(b'{"id": "last"}')  # no newline at the end
    with JsonlIndex(path) as index:
        assert index.line(5) == b'{"id": "last"}' and index.row(4) == rows[4]
    path.write_text('{"id": 1}\n{"id": \n', encoding="utf-8")
    with pytest.raises(JsonlDecodeError, match="line 2"):
        JsonlIndex(path, keep=lambda r: r)


def test_append_log_without_rows_counts_and_knows_done(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"id": "a"}\n', encoding="utf-8")
    with AppendLog(path, keep_rows=False) as log:
        log.append({"id": "b"})
        assert len(log) == 2 and log.done == {"a", "b"}
        with pytest.raises(ValueError, match="keep_rows=False"):
            log.rows()
    assert [json.loads(x)["id"] for x in path.read_text().splitlines()] == ["a", "b"]


def test_example_file_is_a_lazy_sequence_equal_to_the_list(tmp_path):
    examples = _examples(50)
    path = write_examples(tmp_path / "train.jsonl", examples)
    with ExampleFile(path) as data:
        assert len(data) == 50 and data.ids == [e.id for e in examples]
        assert list(data) == examples and data[7] == examples[7] and data[-1] == examples[-1]
        assert data[10:13] == examples[10:13]
        part = data.subset([1, 4, 30])
        assert list(part) == [examples[i] for i in (1, 4, 30)] and part.ids == [examples[i].id for i in (1, 4, 30)]
        assert part[2] == examples[30] and list(part.subset([0, 2])) == [examples[1], examples[30]]


@pytest.mark.parametrize("resume", [False, True], ids=["fresh", "resumed"])
def test_scoring_a_file_writes_the_bytes_of_scoring_the_list(tmp_path, resume):
    examples = _examples()
    cfg = load_config(None, [f"run_dir={tmp_path / 'run'}", "scoring.scorer=length",
                             "model.name_or_path=smollm2-135m-instruct"])
    want = tmp_path / "list.jsonl"
    scoring.score_examples(examples, cfg, want)
    got = tmp_path / "file.jsonl"
    if resume:  # a killed run left every third row, one of them failed, and a torn tail
        lines = want.read_text(encoding="utf-8").splitlines(keepends=True)[::3]
        failed = json.loads(lines[1]) | {"score": None, "error": "boom"}
        got.write_text("".join(lines[:1] + [json.dumps(failed) + "\n"] + lines[2:]) + '{"id": "x', encoding="utf-8")
    with ExampleFile(write_examples(tmp_path / "train.jsonl", examples)) as data:
        s = scoring.score_examples(data, cfg, got)
    assert got.read_bytes() == want.read_bytes()
    assert s.total == len(examples) and s.reused + s.scored == len(examples) and s.failed == 0
    assert s.reused == (len(lines) - 1 if resume else 0)


def _split_run(root, examples: list[Example]):
    """A run dir with data/train.jsonl (two sequential examples among them) and scores/length.jsonl with one
    failed row and one example without a row."""
    from phased_ift.rundir import RunDir
    from phased_ift.runio import write_jsonl

    run = RunDir(root)
    examples = list(examples)
    for i, orig in ((3, 10), (4, 11)):
        examples[i] = Example(examples[i].id, examples[i].messages,
                              {**examples[i].meta, "sequential": "file", "replaces": examples[orig].id})
    write_examples(run.train_data, examples)
    rows = [{"id": e.id, "score": float(len(e.response) % 17), "error": None, "extra": [1, 2]} for e in examples[:-1]]
    rows[5] = {"id": rows[5]["id"], "score": None, "error": "failed"}
    write_jsonl(run.scores("length"), rows)
    return run


@pytest.mark.parametrize("method,thresholds", [("quantiles", []), ("thresholds", [5.0, 11.0])])
def test_split_writes_the_bytes_of_splitting_the_examples_in_memory(tmp_path, method, thresholds):
    from phased_ift.phases.design import controls
    from phased_ift.phases.split import split_into_phases, write_phases, write_split

    examples = _examples()
    ctl = controls(["phased", "random", "reverse"])
    got = _split_run(tmp_path / "streamed", examples)
    write_split(got, "length", 3, method, thresholds, 7, ctl)
    want = _split_run(tmp_path / "in-memory", examples)  # the code before issue 29: every Example in memory
    from phased_ift.data import read_examples
    from phased_ift.runio import read_scores

    data = read_examples(want.train_data)
    rows = read_scores(want.scores("length"))
    scores = {i: float(r["score"]) for i, r in rows.items() if r.get("score") is not None}
    phases = split_into_phases([e for e in data if e.id in scores], scores, 3, method, thresholds, 7)
    write_phases(want, phases, ctl, scorer="length", method=method, thresholds=thresholds, seed=7, n_failed=1,
                 n_unscored=1)
    files = sorted(p.relative_to(want.root) for p in (want.root / "phases").rglob("*") if p.is_file())
    assert len(files) == 3 * 3 + 1
    assert files == sorted(p.relative_to(got.root) for p in (got.root / "phases").rglob("*") if p.is_file())
    for f in files:
        assert (got.root / f).read_bytes() == (want.root / f).read_bytes(), f
    assert gc.isenabled()


def test_split_refuses_an_id_twice(tmp_path):
    from phased_ift.errors import PhasedIFTError
    from phased_ift.phases.split import write_split

    examples = _examples(12)
    run = _split_run(tmp_path, examples[:11] + [Example(examples[0].id, examples[11].messages, {})])
    with pytest.raises(PhasedIFTError, match=r"occurs twice .*\(rows 1 and 12\)"):
        write_split(run, "length", 3, "quantiles", [], 0, {})
    assert gc.isenabled()  # the split pauses cyclic collection and restores it, also when it raises
    gc.disable()
    try:
        with pytest.raises(PhasedIFTError, match="occurs twice"):
            write_split(run, "length", 3, "quantiles", [], 0, {})
        assert not gc.isenabled()
    finally:
        gc.enable()


@pytest.mark.parametrize("split", [False, True], ids=["assumed-phases", "split"])
def test_plan_of_stand_ins_equals_the_plan_of_whole_examples(tmp_path, monkeypatch, split):
    """The plan keeps stand-ins (no messages) for examples whose count is cached: the same plan as reading every
    example whole (the code before issue 29), cold and warm, with a sequential mix and arms that rearrange."""
    from phased_ift.data import read_examples
    from phased_ift.phases.design import controls
    from phased_ift.phases.split import write_split
    from phased_ift.train import plan as plan_mod

    arms = ["phased", "one-off", "random", "reverse", "replay", "sorted", "sit-phased"]
    run = _split_run(tmp_path / "run", _examples())
    cfg = load_config(None, [f"run_dir={run.root}", "model.name_or_path=smollm2-135m-instruct", "model.max_length=96",
                             "sit.source=offline", f"train.arms={json.dumps(arms)}", "train.replay_ratio=0.2"])
    if split:
        write_split(run, "length", 3, "quantiles", [], 0, controls(arms))
    cold = plan_mod.plan_training(cfg, run, world_size=1)
    warm = plan_mod.plan_training(cfg, run, world_size=1)
    assert "counted once" in cold["note"] and "read from" in warm["note"]
    monkeypatch.setattr(plan_mod, "_plan_reader", lambda known: read_examples)
    whole = plan_mod.plan_training(cfg, run, world_size=1)
    assert {k: v for k, v in warm.items() if k != "note"} == {k: v for k, v in whole.items() if k != "note"}
    assert {k: v for k, v in cold.items() if k != "note"} == {k: v for k, v in whole.items() if k != "note"}
    assert sum(r["sequential"] for r in whole["arms"]["sit-phased"]) == 2
    assert gc.isenabled()  # the plan pauses cyclic collection while it builds its stand-ins, and restores it


def _old_combine(results, dedupe=True):
    """combine_results as it was before issue 29 (every Example in a list), the reference of the streamed one."""
    from phased_ift.data.formats import message_key
    from phased_ift.data.loading import _reject_row
    from phased_ift.data import unique_id

    examples, rejects, seen_ids, seen_messages = [], [], set(), {}
    for result in results:
        rejects.extend(result.rejects)
        for e in result.examples:
            key = message_key(e.messages)
            if dedupe and key in seen_messages:
                first_id, first_source = seen_messages[key]
                rejects.append(_reject_row(result.source, None, e.to_dict(), f"duplicate example: same messages as "
                                           f"id {first_id!r} from source {first_source!r}"))
                continue
            rid = unique_id(e.id, seen_ids, result.source)
            seen_messages.setdefault(key, (rid, result.source))
            examples.append(Example(rid, e.messages, e.meta) if rid != e.id else e)
    return examples, rejects


def test_data_step_streams_the_bytes_of_the_in_memory_step(tmp_path):
    """Two sources (a seeded sample of a named one; a file repeating some of its records, with bad lines, a
    duplicate and a clashing id): data/train.jsonl and data/rejects.jsonl equal those of reading every source
    into a list, sampling it and combining the lists (the data step before issue 29)."""
    from phased_ift import pipeline
    from phased_ift.data import read_file
    from phased_ift.data.sources import _sample, source_path
    from phased_ift.rundir import RunDir
    from phased_ift.runio import write_jsonl

    records = json.loads(source_path("alpagasus/random_9k").read_text(encoding="utf-8"))
    extra = tmp_path / "extra.jsonl"
    lines = [json.dumps(r) for r in records[:40:2]] + ['{"instruction": "x"', json.dumps(records[41]),
                                                       json.dumps({**records[42], "id": "random_9k-0"}), "[1]"]
    extra.write_text("\n".join(lines) + "\n", encoding="utf-8")
    cfg = load_config(None, [f"run_dir={tmp_path / 'run'}", "data.train=[{name: alpagasus/random_9k, limit: 300, "
                             f"seed: 3}}, {{path: {extra}, format: alpaca}}]"])
    run = RunDir(tmp_path / "run")
    pipeline._data(cfg, run)
    one = read_file(source_path("alpagasus/random_9k"), "alpaca", source="alpagasus/random_9k")
    one.examples = _sample(one.examples, 300, 3)
    two = read_file(extra, "alpaca", source=str(extra))
    examples, rejects = _old_combine([one, two])
    want = tmp_path / "want"
    write_jsonl(want / "rejects.jsonl", rejects)
    write_examples(want / "train.jsonl", examples)
    assert len(examples) > 300 and len(rejects) >= 3
    for name in ("train.jsonl", "rejects.jsonl"):
        assert (run.root / "data" / name).read_bytes() == (want / name).read_bytes(), name


def test_data_step_writes_nothing_when_every_record_is_rejected(tmp_path):
    from phased_ift import pipeline
    from phased_ift.errors import PhasedIFTError
    from phased_ift.rundir import RunDir

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a", "output": ""}\n', encoding="utf-8")
    cfg = load_config(None, [f"run_dir={tmp_path / 'run'}", f"data.train=[{{path: {bad}, format: alpaca}}]"])
    run = RunDir(tmp_path / "run")
    with pytest.raises(PhasedIFTError, match="every record .* was rejected"):
        pipeline._data(cfg, run)
    assert not run.train_data.exists() and not run.rejects.exists()
    assert not list((run.root / "data").glob(".*.tmp"))


@pytest.mark.parametrize("source", ["file", "generated", "offline", "none"])
def test_the_streamed_mix_equals_the_mix_of_the_list(tmp_path, source):
    """`mix_stream` (the data step's) gives `mix_into`'s examples, rejects and note; a pool file or sit-generate's
    file needs only the originals' ids, so the originals pass through it one at a time."""
    from phased_ift.config import config_from_dict
    from phased_ift.rundir import RunDir
    from phased_ift.sit.mix import mix_into, mix_stream

    originals = _examples(80)
    run = RunDir(tmp_path / "r")
    pool = tmp_path / "pool.jsonl"
    rows = [{"id": originals[i].id, "messages": [{"role": "user", "content": f"First {originals[i].instruction}, "
             f"then {originals[i + 1].instruction}"}, {"role": "assistant", "content": "1. A\n2. B"}]}
            for i in range(0, 60, 2)]
    pool.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"id": "bad", "messages": []}\n',
                    encoding="utf-8")
    if source == "generated":
        run.sit("sequential.jsonl").parent.mkdir(parents=True)
        write_examples(run.sit("sequential.jsonl"), [Example(f"sit-llm:{r['id']}", r["messages"], {
            "sequential": "llm", "source_ids": [r["id"]]}) for r in rows])
    sit = {"source": str(pool) if source == "file" else source, "ratio": 0.25, "kind": "chain",
           "generator": {"base_url": "http://127.0.0.1:9/v1", "model": "m"}}
    cfg = config_from_dict({"train": {"arms": ["sit"]}, "sit": sit} if source != "none" else {})
    want, want_rejects, want_note = mix_into(originals, cfg.sit, run)
    seen = []

    def stream():
        for e in originals:
            seen.append(e.id)
            yield e

    examples, found = mix_stream(stream(), cfg.sit, run)
    first = next(examples)
    if source in ("file", "generated", "none"):
        assert seen == [originals[0].id]  # not read ahead: one original at a time
    got = [first] + list(examples)
    assert got == want and found.rejects == want_rejects and found.note == want_note
    assert sum(map(lambda e: bool(e.meta.get("sequential")), got)) == (0 if source == "none" else 20)
    assert len(want_rejects) == (1 if source == "file" else 0)


def test_example_head_decodes_id_and_meta_as_the_whole_row(tmp_path):
    from phased_ift.data import example_head

    examples = _examples(200) + [Example('q"u\\ote, "messages": x', [{"role": "user", "content": ', "meta": {}}'},
                                                                     {"role": "assistant", "content": "é"}],
                                         {"score": 2.5, "meta": {"x": [1]}})]
    lines = write_examples(tmp_path / "t.jsonl", examples).read_bytes().splitlines(keepends=True)
    for e, line in zip(examples, lines):
        assert example_head(line) == (e.id, e.meta)
    odd = [b'{"id": 7, "messages": [], "meta": {"a": 1}}\n',  # an int id
           b'{"id": "a", "messages": [{"role": "user", "content": "x", "meta": {"k": 1}}], "meta": {"s": 2}}\n',
           b'{"messages": [], "id": "b", "meta": {}}\n', b'{"id":"c","messages":[],"meta":{"t":1}}']
    assert [example_head(x) for x in odd] == [("7", {"a": 1}), ("a", {"s": 2}), ("b", {}), ("c", {"t": 1})]


def test_a_torn_row_of_the_data_is_named_by_file_and_line(tmp_path):
    from phased_ift.phases.split import write_split

    run = _split_run(tmp_path, _examples(12))
    with open(run.train_data, "ab") as f:
        f.write(b'{"id": "torn", "messages": [{"role"\n')
    with pytest.raises(JsonlDecodeError, match=r"train.jsonl, line 13 column"):
        write_split(run, "length", 3, "quantiles", [], 0, {})


def _old_with_meta(line: bytes, **updates) -> bytes:
    """The split's row before the splice: decode the whole row, set the meta keys, encode it (`write_examples`)."""
    from phased_ift.runio import _dump_row

    e = Example.from_dict(json.loads(line))
    return _dump_row(Example(e.id, e.messages, {**e.meta, **updates}).to_dict()).encode("utf-8")


def _splice_cases() -> list[Example]:
    return _examples(60) + [
        Example("plain", [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], {}),
        Example("has-score", [{"role": "user", "content": "x"}], {"source": "s", "score": 4.5, "z": [1, {"a": None}]}),
        Example("score-first", [{"role": "user", "content": "x"}], {"score": 1, "after": "é"}),
        Example('q"u\\ote, "messages": é', [
            {"role": "system", "content": 'say "hi", "meta": {"score": 1}}\n\tand, "messages": [x], "q'},
            {"role": "user", "content": "naïve café 日本語 😀 \\ back\\slash ], \"x\" \u2028"},
            {"role": "assistant", "content": "fin"}], {"note": 'a "quoted", "meta": value', "n": 3}),
        Example("nested", [{"role": "user", "content": "x", "tags": ["a", "b"], "name": "n"}], {"k": 1}),
        Example("ctrl", [{"role": "user", "content": "bell \x07 nul \x00"}], {"s": 2}),
        Example("no-messages", [], {"a": 1}),
    ]


@pytest.mark.parametrize("score", [3.25, 0.0, -1.5, 1e-7])
def test_with_meta_writes_the_bytes_of_decoding_and_encoding_the_row(tmp_path, monkeypatch, score):
    """Rows of `write_examples` (Alpaca, non-ASCII, quotes and `, "meta": ` inside strings, an existing score): the
    splice gives the bytes of the decode/encode path; only a turn with a list and a control character decode."""
    from phased_ift.data import with_meta

    examples = _splice_cases()
    lines = write_examples(tmp_path / "t.jsonl", examples).read_bytes().splitlines(keepends=True)
    want = [_old_with_meta(line, score=score) for line in lines]
    decoded = []
    monkeypatch.setattr(Example, "from_dict", lambda d: decoded.append(d["id"]) or Example(d["id"], d["messages"],
                                                                                        d.get("meta") or {}))
    for e, line, w in zip(examples, lines, want):
        got = with_meta(line, score=score)
        assert got == w, e.id
        assert json.loads(got)["meta"] == {**e.meta, "score": score}
        assert list(json.loads(got)["meta"]) == list({**e.meta, "score": score})  # an existing key keeps its place
    assert decoded == ["nested", "ctrl"]
    monkeypatch.undo()
    assert with_meta(lines[0], score=score, b=[1, "é"]) == _old_with_meta(lines[0], score=score, b=[1, "é"])
    assert with_meta(lines[-1].rstrip(b"\n"), score=score) == lines[-1].replace(b"}}\n", f', "score": {score}}}}}\n'
                                                                                            .encode())


def test_with_meta_falls_back_to_decoding_a_row_not_in_the_layout():
    """Rows another writer made (key order, separators, ASCII escapes, an int id, extra keys, a null meta, a turn
    with a "meta" key): the bytes of decoding the row and encoding its Example, not the line's own bytes."""
    from phased_ift.data import with_meta

    odd = [b'{"messages": [{"role": "user", "content": "x"}], "id": "b", "meta": {"s": 1}}\n',
           b'{"id":"c","messages":[],"meta":{"t":1}}\n',
           b'{"id": "d", "messages": [{"role": "user", "content": "caf\\u00e9 \\/"}], "meta": {"u": 1}}\n',
           b'{"id": "d2", "messages": [{"role": "user", "content": "a\\/b"}], "meta": {}}\n',
           b'{"id": 7, "messages": [], "meta": {"a": 1}}\n',
           b'{"id": "e", "messages": [], "extra": [1], "meta": {"a": 1}}\n',
           b'{"id": "e2", "messages": [{"role": "user", "content": "x"}], "extra": 1, "meta": {}}\n',
           b'{"id": "e3", "x": 1, "messages": [], "meta": {}}\n',
           b'{"id": "f", "messages": [], "meta": null}\n',
           b'{"id": "g", "messages": [{"role": "user", "content": "x", "meta": {"k": 1}}], "meta": {"s": 2}}\n',
           b'{"id": "h", "messages": [{"role": "user", "content": "x"}]}\n',
           b'{"id": "i", "messages": [], "meta": {"a": 1}, "more": 2}\n',
           b'{"id": "j", "messages": [], "meta": {"a": 1}}   \r\n']
    for line in odd:
        got = with_meta(line, score=2.0)
        assert got == _old_with_meta(line, score=2.0), line
        assert got != line.rstrip() + b"\n"
    with pytest.raises(json.JSONDecodeError):
        with_meta(b'{"id": "t", "messages": [{"role"\n', score=1.0)


def test_split_of_a_row_the_splice_cannot_take_names_the_file(tmp_path):
    from phased_ift.phases.split import write_split

    run = _split_run(tmp_path, _examples(12))
    lines = run.train_data.read_bytes().splitlines(keepends=True)
    lines[4] = lines[4].replace(b', "messages": [', b', "messages": [\\u0041', 1)  # id and meta decode, row does not
    run.train_data.write_bytes(b"".join(lines))
    with pytest.raises(JsonlDecodeError, match=r"train.jsonl, line 0 column"):
        write_split(run, "length", 3, "quantiles", [], 0, {})
