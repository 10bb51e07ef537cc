"""Tokenizer work spread over forked worker processes: `in_processes` maps a function over batches in W processes
and yields the results in order, a bounded number of batches in flight.

Why processes: a fast tokenizer's batch call releases the GIL, but the Python around it (decoding the rows,
building and encoding the result rows) does not, and on a small machine that Python and the tokenizer's own threads
compete for the same cores (`tokenized_ahead` overlaps the two on one second thread only). W forked workers, each
with a single-threaded tokenizer, keep W cores busy with both.

Process rules (Linux, the "fork" start method; elsewhere `available_workers` is 1 and callers stay in process):
    - the workers are forked from the caller, so they inherit what it loaded (the tokenizer: `init`'s arguments are
      not pickled) and start in milliseconds, not the seconds a fresh interpreter takes to import transformers;
    - a worker's tokenizer runs single-threaded (TOKENIZERS_PARALLELISM=false): W processes, W cores;
    - a worker ignores SIGINT and SIGTERM: Ctrl-C and a scheduler's SIGTERM reach the caller, whose stop point
      (`shutdown.check`) ends the map, which finishes the batches in flight and stops the workers;
    - a worker dies with the caller (PR_SET_PDEATHSIG: SIGKILL), so a caller killed by kill -9 leaves no worker
      behind waiting on its queue.
"""

from __future__ import annotations

import collections
import ctypes
import multiprocessing
import os
import signal
import sys
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, Iterable, Iterator, TypeVar

from phased_ift.errors import PhasedIFTError

T = TypeVar("T")
R = TypeVar("R")

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def can_fork() -> bool:
    """Whether `in_processes` can run here: Linux with the "fork" start method."""
    return sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods()


def available_workers() -> int:
    """The worker processes worth starting here: the CPU cores this process may run on (`os.sched_getaffinity`,
    which a cgroup / SLURM allocation / taskset narrows) where `can_fork`; 1 elsewhere (the caller runs the work
    itself)."""
    return max(1, len(os.sched_getaffinity(0))) if can_fork() else 1


def in_processes(batches: Iterable[T], work: Callable[[T], R], workers: int, *,
                 init: Callable[..., None] | None = None, initargs: tuple[Any, ...] = (),
                 ahead: int = 2) -> Iterator[tuple[T, R]]:
    """(batch, work(batch)) for each batch, in order, `work` run in `workers` forked processes.

    Args:
        batches: read lazily: at most `ahead` batches per worker are read ahead of the caller (memory stays
            O(workers x ahead x batch), never the whole input).
        work: a module-level function (it is pickled by reference with each batch); batch and result must pickle.
        workers: processes, >= 1.
        init: run once in each worker before any batch, with `initargs` (inherited through the fork, not pickled:
            e.g. a loaded tokenizer).

    Raises:
        work's exception, re-raised at its batch (the workers are stopped first); PhasedIFTError: a worker process
        died (killed, out of memory): the batches done so far were yielded. ValueError: workers < 1;
        RuntimeError: not `can_fork`.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if not can_fork():
        raise RuntimeError("worker processes need Linux's fork start method; run the work in this process")
    stream = iter(batches)
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork"),
                               initializer=_start_worker, initargs=(os.getpid(), init, initargs))
    pending: collections.deque = collections.deque()
    try:
        for batch in stream:
            pending.append((batch, pool.submit(work, batch)))
            if len(pending) >= workers * ahead:
                yield _result(*pending.popleft())
        while pending:
            yield _result(*pending.popleft())
    finally:
        for _, future in pending:
            future.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


def _result(batch: T, future) -> tuple[T, R]:
    try:
        return batch, future.result()
    except BrokenProcessPool:
        raise PhasedIFTError("a tokenizer worker process died (killed, or out of memory?); nothing it was doing was "
                             "written: run the same command again to resume.") from None


def _start_worker(parent: int, init: Callable[..., None] | None, initargs: tuple[Any, ...]) -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # read by the tokenizers library at each batch call
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # no prctl: the worker still ends when the pool shuts down
        pass
    if os.getppid() != parent:  # the caller died before the prctl above took effect
        os._exit(1)
    if init is not None:
        init(*initargs)
