"""The length scorer counts tokens in batches (issue 29: one tokenizer call per batch and field, not per text):
the same features as counting each example alone, on real Alpaca records from the data home."""

from __future__ import annotations

import pytest

from phased_ift import modeling
from phased_ift.data import read_file
from phased_ift.data.sources import data_home
from phased_ift.scoring.features import length_features, token_counts


@pytest.mark.parametrize("use_tokenizer", [True, False], ids=["tokenizer", "words"])
def test_batched_counts_equal_one_call_per_text(use_tokenizer):
    examples = read_file(data_home() / "alpagasus" / "random_9k.json").examples[:300]
    tok = modeling.load_tokenizer("smollm2-135m-instruct") if use_tokenizer else None
    n_ins = token_counts([e.instruction for e in examples], tok)
    n_resp = token_counts([e.response for e in examples], tok)
    for ex, i, r in zip(examples, n_ins, n_resp):
        assert length_features(ex, counts=(i, r)) == length_features(ex, tok)
    assert token_counts(["", "a b"], tok)[0] == 0
