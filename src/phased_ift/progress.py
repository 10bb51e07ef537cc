"""Progress display for the long steps (scoring, judge requests, training, generation), in a terminal and in logs.

A rich progress bar redraws itself in place, which only works on a terminal. Under `nohup`, `sbatch`, `tee` or any
redirect to a file, rich draws nothing until the step ends (and a transient bar not even then), so a multi-hour
run would look dead. `LoggedProgress` is rich's `Progress` with one addition: when its console is not a terminal
it prints the task rows as ordinary lines: at the first update, then at most once every `interval` seconds, and
when every task has finished, e.g.

    score ifd ━━━━━━━━╸━━━━━━━━━━━━━━━━━━━━━━  5200/23404 2.6 ex/s 1:56:40

The interval is `PHASED_IFT_PROGRESS_INTERVAL` (seconds, default 60).
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

from rich.progress import Progress

from phased_ift.errors import PhasedIFTError

DEFAULT_INTERVAL_S = 60.0


def log_interval() -> float:
    """Seconds between progress lines in logs: `PHASED_IFT_PROGRESS_INTERVAL` (default 60; 0 = every update).

    Raises:
        PhasedIFTError: the variable is not a non-negative number (the message names it).
    """
    raw = os.environ.get("PHASED_IFT_PROGRESS_INTERVAL", "")
    if not raw.strip():
        return DEFAULT_INTERVAL_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0:  # also NaN
        raise PhasedIFTError(f"PHASED_IFT_PROGRESS_INTERVAL={raw!r}: expected seconds >= 0 (e.g. 60).")
    return value


class LoggedProgress(Progress):
    """`rich.progress.Progress` that also reports to consoles that are not terminals, as periodic plain lines.

    Same constructor and methods as rich's; `interval` (seconds) defaults to `log_interval()`. On a terminal it
    behaves exactly like `Progress`. A disabled progress (`disable=True`) prints nothing anywhere.
    """

    def __init__(self, *columns: Any, interval: float | None = None, **kwargs: Any) -> None:
        super().__init__(*columns, **kwargs)
        self.interval = log_interval() if interval is None else interval
        self._last_line = -math.inf
        self._finished_logged = False
        if self._log_mode:
            self.live.transient = True  # our lines replace rich's one final frame (printed only when not transient)

    def update(self, task_id, **kwargs: Any) -> None:
        super().update(task_id, **kwargs)
        self._log_line()

    def advance(self, task_id, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._log_line()

    @property
    def _log_mode(self) -> bool:
        return not self.disable and not self.console.is_terminal

    def stop(self) -> None:
        if self._log_mode and self.tasks and not self._finished_logged:  # stopped early: the state it stopped in
            self._finished_logged = True
            self.console.print(self.make_tasks_table(self.tasks))
        super().stop()

    def _log_line(self) -> None:
        if not self._log_mode:
            return
        now = time.monotonic()
        finished = bool(self.tasks) and all(t.finished for t in self.tasks)
        if now - self._last_line >= self.interval or (finished and not self._finished_logged):
            self._last_line = now
            self._finished_logged = finished
            self.console.print(self.make_tasks_table(self.tasks))
