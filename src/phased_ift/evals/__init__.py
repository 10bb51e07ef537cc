"""The benchmarks of the evaluate step, registered in one block (`BENCHMARKS`), and the step that runs them.

    phased-ift evaluate CONFIG      # every benchmark, in registry order, over every evaluated checkpoint

A benchmark is one `Benchmark` object (`evals.benchmark`): its name, kind and test set as the config knows them
(`config_choices.BENCHMARKS`), how the evaluate step runs it, how its files become summary entries, its report
section, verdict lines and the per-prompt values the answer compares. The report (`report.summary`,
`report.render`, `report.verdicts`, `report.answer`) walks this registry; nothing outside a benchmark's module
names it.

  reference_loss  likelihood  the loss of GPT-4's reference answers under each checkpoint (`evals.reference_loss`)
  ifeval          program     IFEval's verifiable instructions, lm-eval's checkers (`evals.ifeval`)
  mt_bench        graded      FastChat's single-answer 1-10 rating per turn (`evals.mtbench`)
  seqeval         graded      SeqEval's following rate and quality (`evals.seqeval`)

Adding a benchmark: its name (kind, test set, answer budget) in `config_choices.BENCHMARKS`, one module with its
`Benchmark`, one `register_benchmark` line below, and its tests (tests/test_benchmarks.py adds a toy one this way).

Owns the registry (`BENCHMARKS`, `register_benchmark`); the step is `evals.step`'s.
"""

from __future__ import annotations

from phased_ift.config_choices import BENCHMARKS as NAMES
from phased_ift.errors import PhasedIFTError
from phased_ift.evals import ifeval, mtbench, reference_loss, seqeval
from phased_ift.evals.benchmark import Benchmark, EffectMetric, PerPrompt, is_final

BENCHMARKS: dict[str, Benchmark] = {}


def register_benchmark(benchmark: Benchmark) -> Benchmark:
    """Add `benchmark` to `BENCHMARKS` (the evaluate step and the report follow registration order).

    Raises:
        PhasedIFTError: its name is not declared in `config_choices.BENCHMARKS` (with the same kind, test set and
            budget), or is registered already.
    """
    name = benchmark.name
    if NAMES.get(name) != benchmark.choice:
        raise PhasedIFTError(f"benchmark {name!r} is not declared as {benchmark.choice} in "
                             "config_choices.BENCHMARKS; add it there first (the config reads its name from there).")
    if name in BENCHMARKS:
        raise PhasedIFTError(f"benchmark {name!r} is registered twice.")
    BENCHMARKS[name] = benchmark
    return benchmark


# The packaged benchmarks, in the order the evaluate step runs them and the report shows them.
register_benchmark(reference_loss.BENCHMARK)
register_benchmark(ifeval.BENCHMARK)
register_benchmark(mtbench.BENCHMARK)
register_benchmark(seqeval.BENCHMARK)

__all__ = ["BENCHMARKS", "Benchmark", "EffectMetric", "PerPrompt", "is_final", "register_benchmark"]
