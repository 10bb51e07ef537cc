"""The one exception type for user errors.

Anything the user can fix (bad file, bad config value, missing model package, unreachable server) raises
`PhasedIFTError` with a message that names the file/line/record/key and says how to fix it. The CLI prints the
message (no traceback) and exits with status 2. Programming errors stay ordinary exceptions with tracebacks.
"""

from __future__ import annotations


class PhasedIFTError(Exception):
    """A user-facing error: the message names what is wrong, where, and the fix."""
