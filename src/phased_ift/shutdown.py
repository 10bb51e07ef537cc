"""A graceful stop on SIGTERM / SIGINT: SLURM preemption, `scancel`, a time limit's `--signal`, Ctrl-C.

Owns the signal handlers of a phased-ift command (`handling`, entered by the CLI for every command that writes a
run dir, once it holds the run dir's lock), the stop flag they set (`requested`), the exception a
stop point raises (`Stopped`, a `PhasedIFTError` whose exit status is 128 + the signal: 143 for SIGTERM, 130 for
SIGINT) and `check`, the one call a loop makes between two items.

    first signal   the handler only records it (and says so in one line on stderr). The work in flight finishes:
                   training stops at the end of the current optimizer step and saves a Trainer checkpoint
                   (`train.callbacks.StopOnSignal`); the LLM client sends no new request, waits for the ones in flight
                   and caches their answers (`llm_client.LLMClient.iter_chat`); scoring, generation and judging stop
                   after the row or batch in flight, whose rows are already flushed (`runio.AppendLog`). The stop
                   point raises `Stopped`; the CLI prints it as one line and exits 143 / 130. Nothing unfinished is
                   marked done, so the same command resumes.
    second signal  exits at once (`os._exit`, status 128 + signal) without unwinding: what is on disk is what kill -9
                   would leave, which every step already resumes from. A SIGTERM within `REPEAT_S` seconds of the
                   first is not a second signal but the same one delivered twice (below).

The flag is per process. Under `accelerate launch` / torchrun every rank installs the handlers and the launcher
forwards the signal to each rank; the training callback all-reduces the flag at each step end so that every rank
stops after the same step, even when the signal reaches them at different moments.

One request often arrives twice: SLURM signals every process of a job step and `srun` forwards the SIGTERM it gets
too; under a launcher a rank gets it from SLURM or the terminal (Ctrl-C reaches the whole process group) and again
from the launcher, which forwards it. So a SIGTERM, and under a launcher (torchrun's `LOCAL_RANK` in the
environment) also a SIGINT, that comes within `REPEAT_S` seconds of the first signal is taken for the same request.
Later, or a second Ctrl-C in a plain process at any time, exits at once.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, wait
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator

from phased_ift.errors import PhasedIFTError

SIGNALS = (signal.SIGTERM, signal.SIGINT)
EXIT_TERM = 128 + signal.SIGTERM  # 143, what a shell reports for a process ended by SIGTERM
EXIT_INT = 128 + signal.SIGINT  # 130, Ctrl-C

REPEAT_S = 5.0  # a SIGTERM this soon after the first is the same request delivered twice, not a second one

_received: int = 0  # the first signal received by this process (0: none)
_received_at = 0.0  # time.monotonic() of it


class Stopped(PhasedIFTError):
    """A requested stop reached a stop point. The CLI prints the message (what was kept, how to resume) and exits
    with `exit_code` = 128 + the signal (143 SIGTERM, 130 SIGINT).

    Attributes:
        signum: the signal that asked for the stop.
    """

    def __init__(self, what: str, signum: int | None = None) -> None:
        self.signum = int(signum or _received or signal.SIGTERM)
        self.exit_code = 128 + self.signum
        super().__init__(f"{signal.Signals(self.signum).name} received: stopped {what}. Finished work is kept and "
                         f"nothing unfinished was marked done; run the same command again to resume.")


def requested() -> int:
    """The signal that asked this process to stop (SIGTERM or SIGINT), 0 while none did."""
    return _received


def check(what: str) -> None:
    """A stop point between two items: raise `Stopped` when a stop was requested.

    Args:
        what: completes "stopped ..." in the message, e.g. "before phase 3 of phased seed 0".
    """
    if _received:
        raise Stopped(what)


def as_completed(futures: Iterable[Future], on_stop: Callable[[], None], poll_s: float = 0.2) -> Iterator[Future]:
    """`concurrent.futures.as_completed` that also notices a stop request while it waits: within `poll_s` of the
    signal it calls `on_stop` once (e.g. the `Event.set` that keeps a pool's workers from starting more work) and
    goes on yielding every future as it finishes: the work in flight is finished, not abandoned."""
    pending, stopping = set(futures), False
    while pending:
        done, pending = wait(pending, timeout=poll_s, return_when=FIRST_COMPLETED)
        if _received and not stopping:
            stopping = True
            on_stop()
        yield from done


def request(signum: int = signal.SIGTERM) -> None:
    """Record a stop request as the handler does (for callers without a signal, e.g. tests)."""
    global _received
    _received = _received or int(signum)


def reset() -> None:
    """Forget a recorded request (tests; `handling` does it on entry)."""
    global _received
    _received = 0


def _say(text: str) -> None:
    try:  # os.write, not print: a handler may run in the middle of another write to sys.stderr
        os.write(2, text.encode("utf-8", "replace"))
    except OSError:
        pass


def _handle(signum: int, frame) -> None:
    global _received_at
    name = signal.Signals(signum).name
    if _received and (signum == signal.SIGTERM or "LOCAL_RANK" in os.environ) and \
            time.monotonic() - _received_at < REPEAT_S:  # the same request again: srun or a launcher forwarding it
        _say(f"\n{name} received again within {REPEAT_S:.0f} s: taken for the same request (still stopping).\n")
        return
    if _received:
        _say(f"\n{name} received again: exiting at once (status {128 + signum}). Finished work is kept; the same "
             f"command resumes from it.\n")
        os._exit(128 + signum)
    request(signum)
    _received_at = time.monotonic()
    _say(f"\n{name} received: stopping after the training step or the item in flight; finished work is kept. "
         f"Send it again to exit at once (a SIGTERM: after {REPEAT_S:.0f} s).\n")


@contextmanager
def handling() -> Iterator[None]:
    """Install the handlers of SIGTERM and SIGINT for the block (the previous ones are restored after it). A no-op
    outside the main thread, where Python cannot install handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    reset()
    previous = {s: signal.signal(s, _handle) for s in SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        reset()
