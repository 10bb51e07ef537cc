"""The worker that tests/test_sharded_scoring.py starts on every rank of a torchrun launch (CPU, gloo):

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/sharded_scoring_worker.py CONFIG [--evaluate]

Runs `phased-ift score CONFIG` (the CLI: run-dir lock, signal handling, the score step), then with --evaluate the
reference-answer loss of the run's checkpoints (`evaluation.reference_loss_all`). Two test hooks wrap the
configured scorer (nothing in phased-ift itself knows them):

    SHARD_TEST_LOG=DIR   each process appends the ids its scorer yields to DIR/rank<r>.<pid>.ids: what it computed
    SHARD_TEST_KILL=R:N  rank R SIGKILLs itself when its scorer is asked for row N + 1 (N rows are in its shard file)

Exits with the CLI's status.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path


def hook_scorer(name: str) -> None:
    """Wrap SCORERS[name] with the SHARD_TEST_LOG / SHARD_TEST_KILL hooks."""
    from phased_ift import scoring

    inner = scoring.SCORERS[name]
    rank = int(os.environ.get("RANK", "0"))
    log = Path(os.environ["SHARD_TEST_LOG"]) / f"rank{rank}.{os.getpid()}.ids" if "SHARD_TEST_LOG" in os.environ \
        else None
    kill_rank, kill_after = (int(x) for x in os.environ.get("SHARD_TEST_KILL", "-1:0").split(":"))

    def scorer(examples, ctx):
        for n, row in enumerate(inner(examples, ctx)):
            if rank == kill_rank and n >= kill_after:
                os.kill(os.getpid(), signal.SIGKILL)
            if log is not None:
                with open(log, "a") as f:
                    f.write(row["id"] + "\n")
            yield row

    scoring.SCORERS[name] = scorer


def main(argv: list[str]) -> int:
    from phased_ift import cli
    from phased_ift.config import load_config

    config, evaluate = argv[0], "--evaluate" in argv[1:]
    cfg = load_config(config)
    hook_scorer(cfg.scoring.scorer)
    status = cli.main(["score", config])
    if status or not evaluate:
        return status
    from phased_ift.evals.reference_loss import reference_loss_all
    from phased_ift.rundir import RunDir

    reference_loss_all(cfg, RunDir(cfg.run_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
