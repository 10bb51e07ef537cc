"""The run-dir lock: one process, or one launch of processes, writes a run dir at a time.

Owns `<run_dir>/phased-ift.lock` and its holder file `phased-ift.lock.json` (`RunDir.lock_file`,
`RunDir.lock_holder`), and the rules of `run_lock`, which every command that writes a run dir holds for its whole
life (the CLI takes it; `--dry-run` and the read-only commands do not):

  * The lock is `filelock.FileLock` (flock(2) on Linux / macOS; filelock's own fallback where a filesystem has no
    flock). The OS drops it when its holder dies, even by kill -9, so a lock is never stale; what a killed holder
    leaves is its holder file, and the next process that takes the lock says whose it took over.
  * The holder file (`Holder`: pid, host, start time, command, launch) is written right after the lock is taken
    and removed right before it is released. A second process reads it to say who holds the run dir.
  * A second process stops at once with `RunDirBusy` (exit status 75, `EXIT_BUSY`), or with `wait=True`
    (`--wait`) waits until the holder ends.
  * Under `accelerate launch` / torchrun every rank runs the same command: rank 0 takes the lock and writes the
    launch's identity (`launch_of`: TORCHELASTIC_RUN_ID and MASTER_ADDR:MASTER_PORT) into the holder file; the
    other ranks take no lock, they wait (up to `RANK_TIMEOUT_S`) until the holder file names their own launch. A
    holder of another launch still running on this host stops them at once, like rank 0.
  * The lock file stays in the run dir after release (removing it would let a waiter lock a deleted file).
"""

from __future__ import annotations

import os
import shlex
import socket
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterator, Mapping

from phased_ift.diskerrors import writing
from phased_ift.errors import PhasedIFTError
from phased_ift.rundir import RunDir
from phased_ift.runio import atomic_write_json

EXIT_BUSY = 75  # sysexits.h EX_TEMPFAIL: try again later
RANK_TIMEOUT_S = 120.0  # how long a rank > 0 waits for rank 0 of its launch to take the lock


class RunDirBusy(PhasedIFTError):
    """Another process (or launch) holds the run dir's lock. The CLI exits with status 75 (`EXIT_BUSY`)."""

    exit_code = EXIT_BUSY


@dataclass(frozen=True)
class Holder:
    """Who holds a run dir's lock: what `phased-ift.lock.json` holds.

    Attributes:
        pid, host: the holding process (`socket.gethostname()`).
        started: when it took the lock (ISO 8601, local time with offset).
        command: its command line.
        launch: the launch identity of a multi-process launch (`launch_of`), else None.
    """

    pid: int
    host: str
    started: str
    command: str
    launch: str | None = None

    @classmethod
    def me(cls, command: str | None = None, launch: str | None = None) -> "Holder":
        """This process, started now; `command` defaults to the process's own command line."""
        if command is None:
            command = shlex.join([Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python", *sys.argv[1:]])
        return cls(os.getpid(), socket.gethostname(), datetime.now().astimezone().isoformat(timespec="seconds"),
                   command, launch)

    def alive(self) -> bool | None:
        """Whether the holder still runs: True / False on this host, None on another host (cannot be told)."""
        if self.host != socket.gethostname():
            return None
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # another user's process
            return True
        return True

    def describe(self) -> str:
        """"pid N on HOST, started T, command `C`" (+ the launch)."""
        launch = f", launch {self.launch}" if self.launch else ""
        return f"pid {self.pid} on {self.host}, started {self.started}, command `{self.command}`{launch}"


def read_holder(path: str | Path) -> Holder | None:
    """The holder recorded in a holder file, or None when it is missing or unreadable (being written)."""
    import json

    try:
        d = json.loads(Path(path).read_text(encoding="utf-8"))
        return Holder(int(d["pid"]), str(d["host"]), str(d["started"]), str(d["command"]), d.get("launch"))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def launch_of(env: Mapping[str, str] | None = None) -> tuple[int, str | None]:
    """(rank, launch identity) of this process; the identity is None outside a multi-process launch (WORLD_SIZE
    unset or 1). torchrun and `accelerate launch` set RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT and
    TORCHELASTIC_RUN_ID ("none" without a rendezvous id): the identity is "<run id>@<addr>:<port>", or
    "<addr>:<port>" without a run id."""
    env = os.environ if env is None else env
    if int(env.get("WORLD_SIZE") or 1) <= 1:
        return 0, None
    master = f"{env.get('MASTER_ADDR', '')}:{env.get('MASTER_PORT', '')}"
    run_id = env.get("TORCHELASTIC_RUN_ID") or ""
    return int(env.get("RANK") or 0), (f"{run_id}@{master}" if run_id and run_id != "none" else master)


def _busy(run: RunDir, holder: Holder | None, extra: str = "") -> RunDirBusy:
    who = holder.describe() if holder else (f"a process that has not written {run.lock_holder.name} (yet)")
    return RunDirBusy(f"run dir {run.root} is in use by another phased-ift process: {who}{extra}. Wait for it to "
                      f"finish, run the same command with --wait to start when it does, or use another run_dir.")


def _stderr_note(text: str) -> None:
    print(f"note: {text}", file=sys.stderr, flush=True)


@contextmanager
def run_lock(run_dir: str | Path, *, wait: bool = False, command: str | None = None,
             note: Callable[[str], None] | None = None, poll_s: float = 0.5,
             rank_timeout_s: float = RANK_TIMEOUT_S, env: Mapping[str, str] | None = None) -> Iterator[Holder]:
    """Hold the run dir's lock for the block (see the module docstring); yields the holder (this process, or
    rank 0 of this launch for the other ranks).

    Args:
        run_dir: the run dir (created when missing).
        wait: when another process holds it, wait (polling every `poll_s` seconds) instead of raising.
        command: the command line recorded in the holder file (default: this process's).
        note: prints the one-line notes (waiting; took over a killed holder's lock); default: stderr.
        rank_timeout_s: a rank > 0 of a launch waits this long for rank 0 of its launch (without `wait`).
        env: the environment the launch is read from (default os.environ; tests).
    Raises:
        RunDirBusy: another process or launch holds the lock (and not `wait`), or rank 0 of this launch did not
            take it within `rank_timeout_s`.
        DiskWriteError: the run dir or its lock file cannot be created (read-only, permission, full).
    """
    import filelock

    note = note or _stderr_note
    run = RunDir(run_dir)
    rank, launch = launch_of(env)
    if launch is not None and rank != 0:
        yield _join_launch(run, rank, launch, wait, poll_s, rank_timeout_s)
        return
    lock = filelock.FileLock(run.lock_file, thread_local=False)
    try:
        with writing(run.lock_file):  # a read-only or full disk: one line (`diskerrors`)
            run.root.mkdir(parents=True, exist_ok=True)
            lock.acquire(blocking=False)
    except filelock.Timeout:
        holder = _holder_soon(run)
        if not wait:
            raise _busy(run, holder) from None
        note(f"run dir {run.root} is in use ({holder.describe() if holder else 'holder unknown'}); waiting for it "
             f"to finish (--wait).")
        lock.acquire(poll_interval=poll_s)
    me = Holder.me(command, launch)
    try:
        old = read_holder(run.lock_holder)
        if old is not None and (old.pid, old.host) != (me.pid, me.host):
            gone = "is no longer running" if old.host == me.host else "no longer holds it"
            note(f"took over the lock of {run.root} from pid {old.pid} on {old.host} (started {old.started}, command "
                 f"`{old.command}`), which {gone}; its finished work is kept and the rest is resumed.")
        atomic_write_json(run.lock_holder, asdict(me))
        yield me
    finally:
        if read_holder(run.lock_holder) == me:
            run.lock_holder.unlink(missing_ok=True)
        lock.release()


def _holder_soon(run: RunDir, tries: int = 10) -> Holder | None:
    """The holder file, read again for up to a second while the holder has taken the lock but not yet written it."""
    for _ in range(tries):
        holder = read_holder(run.lock_holder)
        if holder is not None:
            return holder
        time.sleep(0.1)
    return None


def _join_launch(run: RunDir, rank: int, launch: str, wait: bool, poll_s: float, timeout_s: float) -> Holder:
    """A rank > 0: wait until the holder file names this launch (its rank 0 holds the lock); takes no lock."""
    deadline = time.monotonic() + timeout_s
    while True:
        holder = read_holder(run.lock_holder)
        if holder is not None and holder.launch == launch:
            return holder
        # a holder still running here that is not this launch: rank 0 of this launch is refused the same way
        if holder is not None and not wait and holder.alive():
            raise _busy(run, holder, f" (seen by rank {rank} of launch {launch})")
        if not wait and time.monotonic() > deadline:
            held = f"; it names {holder.describe()}" if holder else f"; {run.lock_holder} does not exist"
            raise RunDirBusy(f"rank {rank} of launch {launch}: rank 0 of this launch did not take the lock of run dir "
                             f"{run.root} within {timeout_s:.0f} s{held}. See rank 0's output; run with --wait to "
                             f"wait longer.")
        time.sleep(poll_s)

