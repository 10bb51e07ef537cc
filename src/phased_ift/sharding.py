"""Model passes spread over the ranks of one `accelerate launch` / torchrun launch: which examples each rank takes,
the files each rank writes, the main process's wait and the order it merges in.

Used by IFD/loss scoring (`scoring.sharded`) and the reference-answer loss (`evals.reference_loss.reference_loss_all`);
docs/scoring.md, "Scoring on several processes", has the launch commands. Owns:

  * `Launch` / `current_launch(env)`: this process's rank and the launch's world size, from torchrun's environment
    as the run-dir lock reads it (`runlock.launch_of`: RANK, WORLD_SIZE; one process outside a launch).
  * `shard(items, launch)` / `unshard(parts)`: rank r of W takes the items i with i % W == r (strided, not
    contiguous blocks: every rank gets a like mix of short and long examples, so the ranks finish together), and
    the ranks' parts interleaved back into the original order.
  * `ShardFiles`: the files of one output `<out>` (e.g. scores/ifd.jsonl), in the folder `<out stem>.shards/`
    beside it: `rank<r>-of-<W>.jsonl` (rank r's rows, appended through `runio.AppendLog`: kill -9 keeps every
    finished row), `rank<r>-of-<W>.done.json` (rank r's marker, written last, holding the launch token),
    `rank<r>-of-<W>.json` (a rank's whole result, for passes that write one result per shard, written atomically),
    `merged.json` (the main process's marker after it wrote `<out>`).
  * `await_ranks`: the wait. File polling, not a `torch.distributed` barrier: a barrier times out after the
    process group's timeout (30 min by default), while ranks of a resumed launch may differ by hours (one rank's
    shard finished before the kill, another's not). The wait fails only when a rank stalls: its files have not
    changed for `PHASED_IFT_SHARD_TIMEOUT_S` seconds (default 1800), with an error naming the rank and its file.

Nothing here imports torch; the launch token (`modeling.launch_token`) is the one collective.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence, TypeVar

from phased_ift import shutdown
from phased_ift.errors import PhasedIFTError
from phased_ift.runio import atomic_write_json, read_jsonl
from phased_ift.runlock import launch_of

T = TypeVar("T")
TIMEOUT_ENV = "PHASED_IFT_SHARD_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 1800.0
POLL_S = 0.5  # seconds between two looks at the shard files


class ShardStalled(PhasedIFTError):
    """A rank of the launch has not finished its shard and its files have not changed for the timeout."""


@dataclass(frozen=True)
class Launch:
    """This process's place in a launch. rank: 0..world-1 (0 = the main process); world: processes (1 alone)."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def spread(self) -> bool:
        """Whether there are several processes to spread the work over."""
        return self.world > 1


def current_launch(env: Mapping[str, str] | None = None) -> Launch:
    """This process's `Launch`: torchrun's / `accelerate launch`'s RANK and WORLD_SIZE (`runlock.launch_of`), else
    `Launch(0, 1)`.

    Raises:
        PhasedIFTError: RANK is not in 0..WORLD_SIZE-1 (an environment set by hand, wrongly).
    """
    env = os.environ if env is None else env
    rank, launch = launch_of(env)
    if launch is None:
        return Launch()
    world = int(env.get("WORLD_SIZE") or 1)
    if not 0 <= rank < world:
        raise PhasedIFTError(f"RANK={rank} is outside 0..{world - 1} (WORLD_SIZE={world}); start the processes with "
                             f"torchrun or accelerate launch, which set both.")
    return Launch(rank, world)


def shard(items: Sequence[T], launch: Launch) -> list[T]:
    """Rank r's items: those at positions i with i % world == r, in their order."""
    return list(items[launch.rank::launch.world])


def unshard(parts: Sequence[Sequence[T]]) -> list[T]:
    """The inverse of `shard`: parts[r] is rank r's items; returns them in the original order.

    Raises:
        ValueError: the part sizes are not those `shard` gives (a rank's part is missing items).
    """
    world, n = len(parts), sum(len(p) for p in parts)
    if any(len(p) != len(range(r, n, world)) for r, p in enumerate(parts)):
        raise ValueError(f"shard sizes {[len(p) for p in parts]} are not those of {n} items over {world} ranks")
    out: list[T] = [None] * n  # type: ignore[list-item]
    for r, p in enumerate(parts):
        out[r::world] = p
    return out


def timeout_s(env: Mapping[str, str] | None = None) -> float:
    """Seconds a rank may go without changing its files before the wait for it fails ($PHASED_IFT_SHARD_TIMEOUT_S).

    Raises:
        PhasedIFTError: the variable is not a positive number.
    """
    raw = (os.environ if env is None else env).get(TIMEOUT_ENV, "")
    try:
        value = float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError:
        value = -1.0
    if value <= 0:
        raise PhasedIFTError(f"{TIMEOUT_ENV}={raw!r}: give a positive number of seconds (default "
                             f"{DEFAULT_TIMEOUT_S:.0f}).")
    return value


class ShardFiles:
    """The shard files of one output file `out` under a launch of `world` processes (see the module docstring)."""

    def __init__(self, out: str | Path, world: int) -> None:
        self.out = Path(out)
        self.world = world
        self.dir = self.out.with_suffix(".shards")

    def rows(self, rank: int) -> Path:
        """Rank `rank`'s append log of rows (jsonl)."""
        return self.dir / f"rank{rank}-of-{self.world}.jsonl"

    def done(self, rank: int) -> Path:
        """Rank `rank`'s marker (JSON with the launch token), written after its last row."""
        return self.dir / f"rank{rank}-of-{self.world}.done.json"

    def result(self, rank: int) -> Path:
        """Rank `rank`'s whole result (JSON), for passes that write a shard at once."""
        return self.dir / f"rank{rank}-of-{self.world}.json"

    @property
    def merged(self) -> Path:
        return self.dir / "merged.json"

    def all_rows(self) -> Iterator[dict[str, Any]]:
        """The rows of every rows file in the folder (any world size: a launch of another size left them), those of
        this world size last, each file in its order; a torn last line (a killed rank) is skipped."""
        files = sorted(self.dir.glob("rank*-of-*.jsonl")) if self.dir.is_dir() else []
        mine = {self.rows(r) for r in range(self.world)}
        for path in [p for p in files if p not in mine] + [p for p in files if p in mine]:
            yield from read_jsonl(path, tolerate_torn_tail=True)

    def mark(self, path: Path, token: str | None, **fields: Any) -> None:
        """Write a marker `{"token", **fields}` atomically (after the files it vouches for)."""
        atomic_write_json(path, {"token": token, **fields})

    @staticmethod
    def marker(path: Path, token: str | None) -> dict[str, Any] | None:
        """The marker at `path` when it holds `token` (this launch's), else None (missing, being written, stale)."""
        import json

        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return d if isinstance(d, dict) and d.get("token") == token else None

    def clear(self, merged: bool = False) -> None:
        """Remove every rows, marker and result file of the folder (all merged into `out`), and `merged.json` with
        `merged` (one process: no rank waits for it); the folder goes when nothing is left in it."""
        if not self.dir.is_dir():
            return
        for p in [*self.dir.glob("rank*-of-*"), *([self.merged] if merged else [])]:
            p.unlink(missing_ok=True)
        if not any(self.dir.iterdir()):
            self.dir.rmdir()


def await_ranks(pending: Callable[[], Sequence[int]], watch: Callable[[int], Sequence[Path]], what: str,
                world: int, *, limit_s: float | None = None, poll_s: float = POLL_S) -> None:
    """Wait until `pending()` (the ranks not finished yet) is empty.

    Args:
        pending: the ranks still missing, asked every `poll_s` seconds.
        watch: a rank's files whose changes (mtime) count as progress.
        what: the work, for messages (e.g. "scores/ifd.jsonl").
        world: the launch's processes (for messages).
        limit_s: seconds a missing rank may go without progress (default `timeout_s()`); counted from the later of
            the start of the wait and the last change of its files.
    Raises:
        ShardStalled: a missing rank made no progress for `limit_s` seconds (named, with its file).
        shutdown.Stopped: SIGTERM / SIGINT while waiting.
    """
    limit_s = timeout_s() if limit_s is None else limit_s
    start = time.time()
    while left := list(pending()):
        for r in left:
            files = list(watch(r))
            last = max([start] + [p.stat().st_mtime for p in files if p.exists()])
            if time.time() - last > limit_s:
                held = "; ".join(_describe(p) for p in files)
                raise ShardStalled(
                    f"{what}: rank {r} of {world} has not finished its shard and its files have not changed for "
                    f"{limit_s:.0f} s ({held}). See rank {r}'s output (killed? stuck?). Its finished rows are kept: "
                    f"run the same launch command again to resume; wait longer with {TIMEOUT_ENV}=<seconds>.")
        shutdown.check(f"waiting for rank(s) {', '.join(map(str, left))} of {world} ({what})")
        time.sleep(poll_s)


def _describe(path: Path) -> str:
    if not path.exists():
        return f"{path} does not exist"
    if path.suffix == ".jsonl":
        with open(path, "rb") as f:
            return f"{path} holds {sum(1 for _ in f)} rows"
    return f"{path} exists"
