"""The one exception type for user errors.

Anything the user can fix (bad file, bad config value, missing model package, unreachable server) raises
`PhasedIFTError` with a message that names the file/line/record/key and says how to fix it. The CLI prints the
message (no traceback) and exits with the error's `exit_code`: 2, or a subclass's own (`runlock.RunDirBusy`: 75,
another process holds the run dir; `diskerrors.DiskWriteError`: 74, a write the filesystem refused). Programming
errors stay ordinary exceptions with tracebacks.
"""

from __future__ import annotations


class PhasedIFTError(Exception):
    """A user-facing error: the message names what is wrong, where, and the fix. `exit_code`: the CLI's exit
    status for it (2; subclasses set their own)."""

    exit_code: int = 2
