"""Token counts counted once, batched and cached (`train.tokencounts`, `modeling.render_batch` / `tokenize_batch`):
the batched rows and counts equal the per-example `render` + `tokenize_example` on real Alpaca records (chat and
paper templates, with and without truncation), the second plan reads cache/token_counts.json without a tokenizer
call, and a stale or corrupt cache is counted again with a note."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from phased_ift.config import DataSource, config_from_dict
from phased_ift.data import Example, load_source, write_examples
from phased_ift.modeling import load_tokenizer, render, render_batch, tokenize_example
from phased_ift.rundir import RunDir
from phased_ift.train import plan_training, tokenize_examples
from phased_ift.train.tokencounts import count_tokens, read_cache


@pytest.fixture(scope="module")
def alpaca(data_home) -> list[Example]:
    """300 real original-Alpaca records (seeded sample of alpagasus/random_9k: with and without an input), plus a
    system turn, a two-turn conversation and a prompt-only conversation for the edge cases."""
    ex = load_source(DataSource(name="alpagasus/random_9k", limit=300, seed=3)).examples
    user, answer = ex[0].messages[0], ex[0].messages[-1]
    extra = [Example("sys", [{"role": "system", "content": "Answer briefly."}, user, answer]),
             Example("two", [user, answer, ex[1].messages[0], ex[1].messages[-1]]),
             Example("prompt-only", [user])]
    return ex + extra


def _old_rows(tok, examples, template, max_length):
    """The per-example method the plan and training used before: one render and two tokenizer calls each."""
    return [tokenize_example(tok, *render(tok, e.messages, template), max_length) for e in examples]


@pytest.mark.parametrize("template", ["chat", "paper"])
@pytest.mark.parametrize("max_length", [96, 2048])
def test_batched_rows_and_counts_equal_the_per_example_method(alpaca, smollm2_path, template, max_length):
    tok = load_tokenizer(smollm2_path)
    old = _old_rows(tok, alpaca, template, max_length)
    assert render_batch(tok, [e.messages for e in alpaca], template) == \
        [render(tok, e.messages, template) for e in alpaca]
    new = tokenize_examples(tok, alpaca, template, max_length, chunk=64)  # several chunks, a short last one
    assert [{k: r[k] for k in ("input_ids", "labels", "attention_mask")} for r in new] == old
    counts = count_tokens(tok, alpaca, template, max_length, chunk=50)
    assert counts == [len(r["input_ids"]) for r in old] == [r["length"] for r in new]
    if max_length == 96:
        assert max(counts) == 96 and min(counts) < 96  # truncation exercised
    assert tokenize_examples(tok, [], template, max_length) == [] and count_tokens(tok, [], template, 8) == []


def _run_cfg(tmp_path: Path, model: str, examples: list[Example], **model_kw):
    run = RunDir(tmp_path / "run")
    write_examples(run.train_data, examples)
    cfg = config_from_dict({"run_dir": str(run.root), "model": {"name_or_path": model, "max_length": 128, **model_kw},
                            "phases": {"k": 3}, "train": {"arms": ["phased", "one-off", "random"]}})
    return cfg, run


def _no_tokenizer_calls(monkeypatch):
    """Every render and tokenizer call raises (loading the tokenizer still works)."""
    from transformers.tokenization_utils_base import PreTrainedTokenizerBase

    def refuse(*a, **k):
        raise AssertionError("the tokenizer was called although the counts are cached")

    monkeypatch.setattr(PreTrainedTokenizerBase, "__call__", refuse)
    monkeypatch.setattr(PreTrainedTokenizerBase, "apply_chat_template", refuse)
    monkeypatch.setattr("phased_ift.modeling.text.encode_texts", refuse)  # the backend's direct batch call


def test_second_plan_reads_the_cache_and_a_stale_or_corrupt_one_is_counted_again(tmp_path, alpaca, smollm2_path,
                                                                                monkeypatch):
    data = alpaca[:120]
    cfg, run = _run_cfg(tmp_path, smollm2_path, data)
    first = plan_training(cfg, run, world_size=1)
    assert run.token_counts.is_file() and "120 examples counted once" in first["note"]
    tok = load_tokenizer(smollm2_path)
    expected = sum(len(r["input_ids"]) for r in _old_rows(tok, data, "chat", 128))
    assert first["arms"]["one-off"][0]["tokens"] == expected == sum(r["tokens"] for r in first["arms"]["phased"])
    doc = json.loads(run.token_counts.read_text())
    assert doc["ids"] == [e.id for e in data] and set(doc["key"]) == {"format", "tokenizer", "template",
                                                                      "max_length", "data"}
    with monkeypatch.context() as m:
        _no_tokenizer_calls(m)
        second = plan_training(cfg, run, world_size=1)
    assert second["arms"] == first["arms"] and "token counts read from cache/token_counts.json" in second["note"]

    # stale: another max_length -> counted again, said so, the file rewritten with the new key
    cfg256, _ = _run_cfg(tmp_path, smollm2_path, data, max_length=256)
    third = plan_training(cfg256, run, world_size=1)
    assert "key mismatch (max_length changed), counted again" in third["note"]
    assert json.loads(run.token_counts.read_text())["key"]["max_length"] == 256
    # stale: the data file changed (one example fewer)
    write_examples(run.train_data, data[:-1])
    assert "key mismatch (data changed)" in plan_training(cfg256, run, world_size=1)["note"]
    # corrupt: a torn file and counts that are not counts
    run.token_counts.write_text(run.token_counts.read_text()[:100])
    note = plan_training(cfg256, run, world_size=1)["note"]
    assert "was not used: unreadable (JSONDecodeError" in note and "counted again" in note
    doc = json.loads(run.token_counts.read_text())
    run.token_counts.write_text(json.dumps({**doc, "counts": doc["counts"][:-1]}))
    assert "unreadable (ValueError" in plan_training(cfg256, run, world_size=1)["note"]
    assert read_cache(run, json.loads(run.token_counts.read_text())["key"])[0] is not None


def test_examples_outside_the_cached_data_are_counted_and_a_repeated_id_is_not_trusted(tmp_path, alpaca,
                                                                                      smollm2_path):
    from phased_ift.train.tokencounts import run_counts, total_tokens

    tok = load_tokenizer(smollm2_path)
    dup = Example(alpaca[0].id, alpaca[5].messages)  # the same id with another text
    cfg, run = _run_cfg(tmp_path, smollm2_path, alpaca[:10] + [dup])
    cached = run_counts(run, tok, "chat", 128)
    assert alpaca[0].id not in cached.counts and len(cached.counts) == 9
    others = alpaca[:3] + alpaca[20:23]
    assert total_tokens(cached, tok, others, "chat", 128) == sum(count_tokens(tok, others, "chat", 128))


class _AlwaysBos:
    """A tokenizer that always adds its BOS (as Gemma's does): `tokenize_example` prepends it to a prompt that
    lacks it. Only what the tokenisation functions read: the call, bos_token_id, add_bos_token."""

    add_bos_token = True

    def __init__(self, tok):
        self.tok, self.bos_token_id = tok, tok.bos_token_id

    def __call__(self, *a, **k):
        return self.tok(*a, **k)


@pytest.mark.parametrize("max_length", [1, 2, 7, 30, 4096])
def test_token_lengths_equal_the_rows_with_an_added_bos_and_any_truncation(alpaca, smollm2_path, max_length):
    from phased_ift.modeling import token_lengths, tokenize_batch

    tok = _AlwaysBos(load_tokenizer(smollm2_path))
    bos = tok.tok.bos_token
    pairs = [("", "an answer"), ("a prompt", ""), (f"{bos}starts with BOS", " and a reply"), ("", "")]
    pairs += [(e.instruction, e.response) for e in alpaca[:40]]
    rows = [tokenize_example(tok, p, r, max_length) for p, r in pairs]
    assert tokenize_batch(tok, pairs, max_length) == rows
    assert token_lengths(tok, pairs, max_length) == [len(r["input_ids"]) for r in rows]
    if max_length >= 7:  # "a prompt" fits: the BOS was added (shorter budgets keep the prompt's end only)
        assert rows[1]["input_ids"][0] == tok.bos_token_id


def test_encode_texts_and_text_lengths_call_the_backend_directly_and_give_the_transformers_ids(alpaca, smollm2_path,
                                                                                               monkeypatch):
    """The direct `encode_batch_fast` path gives the transformers call's ids on real Alpaca texts and on text
    holding special tokens; a backend left truncating, or a tokenizer that splits special tokens, goes through the
    transformers call (which resets or honours that state), so the ids are still the call's."""
    from transformers.tokenization_utils_base import PreTrainedTokenizerBase

    from phased_ift.modeling import encode_texts, text_lengths

    tok = load_tokenizer(smollm2_path)
    texts = [e.instruction for e in alpaca] + [e.response for e in alpaca] + ["<|im_end|>\nhi <|im_start|>", ""]
    want = tok(texts, add_special_tokens=False)["input_ids"]
    with monkeypatch.context() as m:
        m.setattr(PreTrainedTokenizerBase, "__call__", lambda *a, **k: pytest.fail("went through transformers"))
        assert encode_texts(tok, texts) == want
        assert text_lengths(tok, texts) == [len(ids) for ids in want]
    assert encode_texts(tok, []) == [] and text_lengths(tok, []) == []
    assert len(want[-2]) < 8 and tok.convert_tokens_to_ids("<|im_end|>") in want[-2]  # one id per special token

    tok.backend_tokenizer.enable_truncation(max_length=4)
    assert encode_texts(tok, texts) == want  # the transformers call, which turns the truncation off
    split = load_tokenizer(smollm2_path)
    split.split_special_tokens = True
    got = encode_texts(split, texts)
    assert got == split(texts, add_special_tokens=False)["input_ids"] and len(got[-2]) > len(want[-2])
    assert text_lengths(split, texts) == [len(ids) for ids in got]


def test_a_dry_run_plan_over_more_examples_than_plan_sample_estimates_and_says_so(tmp_path, alpaca, smollm2_path):
    """train.plan_sample=100 on 303 examples: a dry run's plan counts a seeded sample of 100 (nothing cached),
    each phase's tokens within its stated 95% interval of the exact count; a plan that is not a dry run's counts
    all and caches; small sets (fewer than MIN_SAMPLED sampled members) are counted whole."""
    from phased_ift.train.tokencounts import MIN_SAMPLED

    cfg, run = _run_cfg(tmp_path, smollm2_path, alpaca)
    cfg = replace(cfg, train=replace(cfg.train, plan_sample=100))
    est = plan_training(cfg, run, world_size=1, estimate=True)
    assert not run.token_counts.exists()
    assert "seeded random sample of 100 of the 303 examples" in est["note"]
    exact = plan_training(cfg, run, world_size=1)
    assert run.token_counts.is_file() and "303 examples counted once" in exact["note"]
    assert all(r["tokens_ci95"] is None for rows in exact["arms"].values() for r in rows)
    for arm, rows in est["arms"].items():
        for r, x in zip(rows, exact["arms"][arm]):
            assert r["examples"] == x["examples"] and r["steps"] == x["steps"]
            if r["tokens_ci95"] is None:  # a phase with fewer than MIN_SAMPLED sampled members: counted whole
                assert r["tokens"] == x["tokens"]
            else:
                assert 0 < r["tokens_ci95"] < 0.2 * x["tokens"] and abs(r["tokens"] - x["tokens"]) <= r["tokens_ci95"]
    assert est["arms"]["one-off"][0]["tokens_ci95"] is not None and MIN_SAMPLED == 100
    # with the counts cached the dry run reads them: exact, no sample
    again = plan_training(cfg, run, world_size=1, estimate=True)
    assert again["arms"] == exact["arms"] and "read from cache/token_counts.json" in again["note"]


def test_the_estimates_95_percent_interval_covers_the_exact_count_95_percent_of_the_time(tmp_path, data_home,
                                                                                      smollm2_path):
    """Coverage by simulation (the interval is proven, not assumed): 1,500 real Alpaca examples (every count known),
    400 seeded samples of m = 330 (about 110 sampled members per set, near MIN_SAMPLED = 100, the fewest an estimate
    uses; a set with fewer is counted whole and must be exact), each estimating four sets as a plan would meet them:
    the shortest, middle and longest third by response length (phases by a length score: their counts differ) and a
    random third (a control arm's phase). The 95% interval covers the exact total in 0.92-0.98 of the estimated
    draws per set (at least 300; the binomial 99% band around 0.95 at 300-400 draws is about 0.92-0.98), and the
    estimate is unbiased within 0.5%."""
    import random
    import statistics

    from phased_ift.data import ExampleFile
    from phased_ift.train.tokencounts import RunCounts, Sample, estimated_tokens

    tok = load_tokenizer(smollm2_path)
    data = load_source(DataSource(name="alpagasus/random_9k", limit=1500, seed=11)).examples
    path = tmp_path / "train.jsonl"
    write_examples(path, data)
    t = dict(zip([e.id for e in data], count_tokens(tok, data, "chat", 512)))
    by_len = sorted(data, key=lambda e: len(e.response))
    shuffled = random.Random(10_000).sample(data, len(data))
    sets = {"short": by_len[:500], "middle": by_len[500:1000], "long": by_len[1000:], "random": shuffled[:500]}
    with ExampleFile(path) as f:
        position = {e.id: p for p, e in enumerate(data)}
        hits = {k: 0 for k in sets}
        rel = {k: [] for k in sets}
        for seed in range(400):
            drawn = random.Random(seed).sample(data, 330)
            cached = RunCounts({e.id: t[e.id] for e in drawn}, "", Sample(f, position, 330))
            for k, s in sets.items():
                true = sum(t[e.id] for e in s)
                tokens, half = estimated_tokens(cached, tok, s, "chat", 512)
                if half is None:  # fewer than MIN_SAMPLED sampled members: counted whole
                    assert tokens == true
                    continue
                hits[k] += abs(tokens - true) <= half
                rel[k].append((tokens - true) / true)
    for k in sets:
        n = len(rel[k])
        assert n >= 300 and 0.92 <= hits[k] / n <= 0.98, (k, hits[k], n)
        assert abs(statistics.fmean(rel[k])) < 0.005, (k, statistics.fmean(rel[k]))


def test_a_row_met_again_is_found_by_its_head_bytes_and_only_a_decoded_head_is_trusted(tmp_path):
    """`row_head` drops the messages' bytes; `example_head_key` gives that head only when the id and meta came from
    their slices, so equal heads mean equal (id, meta); a row whose messages hold a "meta" key of their own is
    decoded whole and gives no head."""
    from phased_ift.data import example_head, example_head_key, row_head

    a = Example("x1", [{"role": "user", "content": 'say "hi", "meta": {}'}, {"role": "assistant", "content": "é"}],
                {"score": 2.5, "sequential": True})
    b = Example("x1", [{"role": "user", "content": "another text"}, {"role": "assistant", "content": "b"}], a.meta)
    c = Example("x1", b.messages, {"score": 3.0, "sequential": True})
    la, lb, lc = write_examples(tmp_path / "t.jsonl", [a, b, c]).read_bytes().splitlines(keepends=True)
    for line, e in ((la, a), (lb, b), (lc, c)):
        rid, meta, head = example_head_key(line)
        assert (rid, meta) == (e.id, e.meta) == example_head(line) and head == row_head(line) is not None
    assert row_head(la) == row_head(lb) != row_head(lc)  # same id and meta, other messages; another score
    nested = b'{"id": "a", "messages": [{"role": "user", "content": "x", "meta": {"k": 1}}], "meta": {"s": 2}}\n'
    assert example_head_key(nested) == ("a", {"s": 2}, None) and row_head(nested) is not None
    assert row_head(b'{"messages": [], "id": "b", "meta": {}}\n') is None


def test_tokenized_ahead_keeps_the_order_reads_at_most_two_batches_ahead_and_raises_at_the_batch():
    from phased_ift.modeling import tokenized_ahead

    read: list[int] = []

    def batches():
        for i in range(6):
            read.append(i)
            yield [i, i]

    out = []
    for batch, total in tokenized_ahead(batches(), sum):
        assert max(read) <= batch[0] + 1  # this batch and the one being worked on: no more
        out.append((batch, total))
    assert out == [([i, i], 2 * i) for i in range(6)]
    assert list(tokenized_ahead(iter([]), sum)) == []

    def fails(batch):
        if batch[0] == 2:
            raise ValueError("bad batch 2")
        return sum(batch)

    got = []
    with pytest.raises(ValueError, match="bad batch 2"):
        for batch, total in tokenized_ahead(([i] for i in range(5)), fails):
            got.append(total)
    assert got == [0, 1]
