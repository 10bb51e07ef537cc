"""Agreement with the paper's scores: reference-set counts on the real data, metric arithmetic, learned-scorer CV."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from rich.console import Console

from phased_ift.scoring import agreement
from phased_ift.data import Example
from phased_ift.errors import PhasedIFTError
from phased_ift.scoring import learned


@pytest.fixture(scope="module")
def ref(data_home):
    return agreement.build_reference_set(data_home)


def test_reference_set_counts_on_the_real_data(ref):
    c = ref.counts
    assert c["stage3"] == 6889 and c["phasedsft/en-alpaca52k-stage3.jsonl"]["records"] == 6889
    assert c["below_3.5"] == 16515  # measured 2026-11; the issue expected "about 16,500"
    assert c["random9k"] == 9229 and c["random9k_stage3"] == 970  # the issue: 970 of 9,229
    assert c["alpagasus/random_9k.json"] == {"records": 9229, "in_stage3": 970, "added_below_3.5": 8259}
    assert len(ref.examples) == 6889 + 16515 == len({e.id for e in ref.examples})
    # the paper's scores: all >= 3.5 in stage 3, NaN elsewhere; strings like "4\n\n" were parsed
    st3 = ref.paper_score[ref.positive]
    assert st3.min() == 3.5 and st3.max() == 5.0 and np.isnan(ref.paper_score[~ref.positive]).all()
    assert (st3 == 4.5).sum() == 1582  # 1578 exact "4.5" strings + 4 with trailing newlines (PROVENANCE.md)


def test_reference_examples_render_every_prompt_the_stage3_way(ref):
    """instruction + "\\n" + input for both classes, so formatting cannot separate them."""
    with_input = [e for e in ref.examples if e.meta["source"] == "alpagasus/random_9k.json" and "\n" in e.instruction]
    assert with_input and all("\n\n" not in e.instruction.split("\n", 1)[0] for e in with_input)
    lim = [e for e in ref.examples if e.meta["source"].startswith("long_is_more")]
    assert lim and not any("### Instruction" in e.instruction or "Below is an instruction" in e.instruction
                           for e in lim)


def test_normalised_prompts_match_whitespace_and_case_variants():
    assert agreement.normalize_text("Name  a\ncolor.\n\nRed ") == agreement.normalize_text("name a color. red")


def test_stratified_sample_is_seeded_and_keeps_the_stage3_share(ref):
    a, b = ref.stratified_sample(1000, seed=3), ref.stratified_sample(1000, seed=3)
    assert [e.id for e in a.examples] == [e.id for e in b.examples] and len(a.examples) == 1000
    assert a.positive.sum() == round(1000 * 6889 / 23404)
    assert [e.id for e in ref.stratified_sample(1000, seed=4).examples] != [e.id for e in a.examples]


def test_roc_auc_on_hand_computed_cases():
    # positives {0.8, 0.4}, negatives {0.5, 0.1}: pairs (0.8>0.5, 0.8>0.1, 0.4<0.5, 0.4>0.1) -> 3/4
    assert agreement.roc_auc([1, 1, 0, 0], [0.8, 0.4, 0.5, 0.1]) == pytest.approx(0.75)
    # a tie between a positive and a negative counts half: (1 + 0.5) / 2
    assert agreement.roc_auc([1, 0, 1, 0], [2.0, 2.0, 3.0, 1.0]) == pytest.approx(0.875)
    assert agreement.roc_auc([1, 0, 0], [0.1, float("nan"), 0.5]) == pytest.approx(0.0)  # NaN dropped
    assert math.isnan(agreement.roc_auc([1, 1], [0.1, 0.2]))


def test_spearman_on_hand_computed_cases():
    assert agreement.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert agreement.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ranks a = 1,2,3,4 and b = 1,3,2,4: rho = 1 - 6*2/(4*15) = 0.8
    assert agreement.spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert math.isnan(agreement.spearman([1, 1, 1], [1, 2, 3]))


def test_evaluate_scores_counts_failures_and_splits_the_parts():
    exs = [Example(str(i), [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}])
           for i in range(6)]
    ref = agreement.ReferenceSet(exs, np.array([1, 1, 1, 0, 0, 0], bool), np.array([4, 5, 3.5, *[np.nan] * 3]),
                                 np.array([1, 0, 1, 1, 0, 1], bool))
    row = agreement.evaluate_scores(ref, [0.4, 0.9, 0.3, 0.1, None, 0.35], "x", seconds=2.0)
    assert row["n"] == 5 and row["failed"] == 1 and row["examples_per_s"] == 3.0
    assert row["auc"] == pytest.approx(5 / 6)  # positives .4 .9 .3 vs negatives .1 .35: only .3 < .35 loses
    assert row["spearman_stage3"] == pytest.approx(1.0)  # 0.3 < 0.4 < 0.9 as 3.5 < 4 < 5
    assert row["auc_random9k"] == pytest.approx(0.75) and row["n_random9k"] == 4  # .4 .3 vs .1 .35


def test_learned_cv_is_seeded_grouped_and_reproducible():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 5))
    y = (X[:, 0] + 0.5 * rng.normal(size=200) > 0).astype(float)
    groups = np.arange(200) // 4  # groups of 4 rows must never be split across folds
    oof1, fold1, new1 = learned.fit_predict_learned(X, y, groups, X[:10], seed=1)
    oof2, fold2, new2 = learned.fit_predict_learned(X, y, groups, X[:10], seed=1)
    assert np.array_equal(oof1, oof2) and np.array_equal(fold1, fold2) and np.array_equal(new1, new2)
    for g in np.unique(groups):
        assert len(set(fold1[groups == g])) == 1
    assert sorted(set(fold1)) == [0, 1, 2, 3, 4]
    assert agreement.roc_auc(y > 0.5, oof1) > 0.8
    _, fold3, _ = learned.fit_predict_learned(X, y, groups, seed=2)
    assert not np.array_equal(fold1, fold3)


def test_learned_refuses_too_few_labels():
    X = np.zeros((3, 2))
    with pytest.raises(PhasedIFTError, match="at least 5 labelled examples"):
        learned.fit_predict_learned(X, np.array([0.0, 1.0, 0.0]), np.arange(3))


def test_near_duplicate_groups_keep_reworded_instructions_together():
    def e(i, text):
        return Example(str(i), [{"role": "user", "content": text}, {"role": "assistant", "content": "x"}])

    base = ["Write a poem about the sea", "Convert 5 kilometres to miles", "Name the capital of Peru",
            "Sort these numbers in ascending order", "Explain how photosynthesis works"]
    exs = [e(i, t) for i, t in enumerate(base)] + [e(10 + i, t + ".") for i, t in enumerate(base)]
    groups = learned.near_duplicate_groups(exs, seed=0, min_groups=5)
    assert all(groups[i] == groups[5 + i] for i in range(5))
    assert len(set(groups)) == 5


def test_learned_ensemble_with_dense_features_is_seeded_grouped_and_uses_the_trees():
    """Binary labels + dense features: 0.75 x logistic regression + 0.25 x boosted trees, both fit in the folds."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 6))
    y = ((X[:, 0] > 0) ^ (X[:, 1] > 0)).astype(float)  # XOR: trees can learn it, a linear model cannot
    groups = np.arange(300) // 5
    lin, fold_lin, _ = learned.fit_predict_learned(X, y, groups, seed=0)
    ens, fold_ens, new = learned.fit_predict_learned(X, y, groups, X[:7], seed=0, dense=X, dense_new=X[:7])
    ens2, _, new2 = learned.fit_predict_learned(X, y, groups, X[:7], seed=0, dense=X, dense_new=X[:7])
    assert np.array_equal(ens, ens2) and np.array_equal(new, new2) and new.shape == (7,)
    assert np.array_equal(fold_lin, fold_ens)  # same grouped folds with or without the trees
    assert ((ens >= 0) & (ens <= 1)).all()  # a mix of probabilities stays a probability
    assert agreement.roc_auc(y > 0.5, ens) > agreement.roc_auc(y > 0.5, lin) + 0.1
    # graded labels: ridge regression only, the dense block is ignored
    g = X[:, 0] + 0.1 * rng.normal(size=300)
    r1, _, _ = learned.fit_predict_learned(X, g, groups, seed=0)
    r2, _, _ = learned.fit_predict_learned(X, g, groups, seed=0, dense=X)
    assert np.array_equal(r1, r2)


def test_split_prompt_separates_the_alpaca_input():
    assert learned.split_prompt("Summarise the text.\nThe cat sat.\nIt slept.") == \
        ("Summarise the text.", "The cat sat.\nIt slept.")
    assert learned.split_prompt("Name a colour. ") == ("Name a colour.", "")


def test_learned_features_without_embeddings_or_inputs(tmp_path):
    """No example has an input (an empty TF-IDF block) and embeddings are off: still features, 8 dense columns."""
    exs = [Example(str(i), [{"role": "user", "content": f"write item {i} now"},
                            {"role": "assistant", "content": "word " * (i + 1)}]) for i in range(12)]
    X, D = learned.learned_features(exs, tmp_path, embeddings=False)
    assert X.shape[0] == 12 and D.shape == (12, 8)
    assert np.allclose(D[:, 6:], 0)  # has-input and input-length columns are constant (standardised to 0)
    assert not (tmp_path / "embeddings.sqlite").exists()
    with_input = exs[:6] + [Example("x", [{"role": "user", "content": "Summarise.\nA long input text"},
                                          {"role": "assistant", "content": "ok"}])]
    _, D2 = learned.learned_features(with_input, tmp_path, embeddings=False)
    assert D2[-1, 6] > 0 and D2[-1, 7] > 0 and (D2[:-1, 6] < 0).all()


@pytest.mark.slow
def test_learned_with_paper_labels_on_a_small_subset_of_the_reference_set(ref, tmp_path):
    """Real features (MiniLM embeddings of instruction and response) on 300 examples: seeded, reproducible, better
    than chance, with the trees' ensemble."""
    sub = ref.stratified_sample(300, seed=0)
    X, D = learned.learned_features(sub.examples, tmp_path)
    assert X.shape[0] == 300 and X.shape[1] > 2 * 384 + 8
    assert D.shape == (300, 8 + 2 * 384)  # length/input features, instruction and response embeddings
    groups = learned.near_duplicate_groups(sub.examples, seed=0)
    assert len(np.unique(groups)) == 12  # 300 // 25
    oof, _, _ = learned.fit_predict_learned(X, sub.positive.astype(float), groups, seed=0, dense=D)
    X2, D2 = learned.learned_features(sub.examples, tmp_path)
    oof2, _, _ = learned.fit_predict_learned(X2, sub.positive.astype(float), groups, seed=0, dense=D2)
    assert np.array_equal(oof, oof2)  # the second call read the embedding cache
    assert agreement.roc_auc(sub.positive, oof) > 0.6  # 300 examples are few; the full set reaches ~0.906


def test_score_against_paper_writes_the_table_and_loss_reuses_the_ifd_passes(data_home, tiny_model_dir, tmp_path,
                                                                              monkeypatch):
    """`phased-ift score --against paper` on a 24-example sample with a tiny model: score files, agreement.md/json,
    anchors first; `loss` after `ifd` is read from the loss cache (no examples/s), equal to ifd's loss_cond."""
    from phased_ift.cli import main
    from phased_ift.runio import read_jsonl

    monkeypatch.setenv("PHASED_IFT_DATA_HOME", str(data_home))
    run = tmp_path / "run"
    rc = main(["score", "configs/quickstart.yaml", f"run_dir={run}", f"model.name_or_path={tiny_model_dir}",
               "scoring.max_length=64", "--against", "paper", "--scorers", "length,ifd,loss", "--limit", "24"])
    assert rc in (0, None)
    out = run / "agreement" / "sample24_seed0"
    rows = list(read_jsonl(out / "agreement.json"))
    assert [r["scorer"] for r in rows][-3:] == ["length", "ifd", "loss"] and rows[0]["scorer"].startswith("anchor")
    by = {r["scorer"]: r for r in rows}
    assert by["ifd"]["n"] + by["ifd"]["failed"] == 24 and 0 <= by["ifd"]["auc"] <= 1
    assert by["ifd"]["examples_per_s"] > 0 and math.isnan(by["loss"]["examples_per_s"])
    ifd = {r["id"]: r for r in read_jsonl(out / "scores" / "ifd.jsonl")}
    loss = list(read_jsonl(out / "scores" / "loss.jsonl"))
    assert len(loss) == 24 and all(r["score"] == ifd[r["id"]].get("loss_cond") for r in loss if r["score"] is not None)
    table = (out / "agreement.md").read_text()
    assert "| ifd | " in table and "| loss | " in table
    # --dry-run: counts what is scored and what remains per scorer, computes nothing, writes no new score file
    console_out = io.StringIO()
    monkeypatch.setattr("phased_ift.cli.console", Console(file=console_out, width=200))
    rc = main(["score", "configs/quickstart.yaml", f"run_dir={run}", "--against", "paper", "--scorers",
               "ifd,judge", "--limit", "24", "--dry-run"])
    assert rc in (0, None)
    text = console_out.getvalue()
    assert f"ifd: {by['ifd']['n']} of 24 scored, {24 - by['ifd']['n']} to go" in text
    assert "judge: 0 of 24 scored, 24 to go" in text and not (out / "scores" / "judge.jsonl").exists()
