"""The calibration benchmark's small grid: the report's claim keeps its level, degenerate input makes no claim.

benchmarks/bench_calibration.py measures every test of the report over the whole design grid (docs/report.md,
"Calibration"); this runs its `--quick` grid (the pooled claim at 2, 3 and 5 seeds x 48 prompts, without and with
a dominant seed variance) so that a change to `effects.py` that breaks the level fails here.
"""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_calibration  # noqa: E402


@pytest.fixture(scope="module")
def quick():
    return bench_calibration.run(runs=400, quick=True, seed=1)


def test_the_pooled_claim_keeps_its_level_on_the_quick_grid(quick):
    pooled = [c for c in quick["cells"] if c["test"] == "pooled claim"]
    assert {(c["seeds"], c["ratio"]) for c in pooled} == {(s, r) for s in (2, 3, 5) for r in (0.0, 10.0)}
    for c in pooled:
        # 400 runs: binomial SE 1.1 points at 5%
        assert c["type_I"] <= 0.07, c
        if c["seeds"] < quick["min_seeds"]:
            assert c["type_I"] == 0.0 and not c["claim_made"]  # no claim below the minimum, by design
        else:
            assert c["power_at_3_se"] >= 0.45, c  # 3 true SE: ~50-80% depending on the df (docs/report.md)


def test_degenerate_inputs_make_no_claim(quick):
    deg = {c["case"]: c for c in quick["cells"] if c["test"] == "degenerate"}
    assert set(deg) == {"1 seed x 1 prompt", "2 seeds x 1 prompt", "5 of 5 wins (5 prompts)",
                        "constant difference, 3 x 48"}
    assert not any(c["significant"] or c["conditional_significant"] for c in deg.values())


def test_the_markdown_tables_show_every_cell(quick):
    md = bench_calibration.markdown(quick)
    assert "| 3 | 48 | " in md and "no claim (test alone" in md and "Degenerate inputs:" in md
