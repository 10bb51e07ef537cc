"""Writes the filesystem refused, as one clear line: a full disk, a quota, a read-only mount, a permission.

Owns which exceptions mean that (`refused_write`: an OSError with ENOSPC / EDQUOT / EROFS / EACCES, sqlite's
"database or disk is full" and "attempt to write a readonly database", the "(os error N)" of Rust libraries such
as safetensors' `SafetensorError`, torch's "PytorchStreamWriter failed writing"), the message of `DiskWriteError`
(the file, the reason, the free space left from `shutil.disk_usage`, what the write needed or an estimate, the
fix) and `writing(path, need)`, the context manager writers put around their writes so that the line names their
file: `runio`'s atomic writes and append logs, `kvcache.KVCache`, the phase save and the Trainer's checkpoints in
`train.loop`. The CLI prints a `DiskWriteError`, or any exception `write_error` recognises, as one line and exits
with status 74 (`EXIT_WRITE`). `free_space` and `human_bytes` are the free space and the size format of every disk
message (also the plan's disk line, `preflight.check_disk_space`). Nothing is marked done by a failed write: DONE
markers, settings files and manifests are written after the files they vouch for.
"""

from __future__ import annotations

import errno
import getpass
import re
import shutil
import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from rich.filesize import decimal

from phased_ift.errors import PhasedIFTError

EXIT_WRITE = 74  # sysexits.h EX_IOERR

_SPACE = ("Free space there (or point run_dir at a larger disk) and run the same command again: finished work is "
          "kept and nothing unfinished was marked done.")
_QUOTA = ("Free space within your quota (`quota -s`) or point run_dir at another disk, then run the same command "
          "again: finished work is kept and nothing unfinished was marked done.")
_READ_ONLY = "Point run_dir (and PHASED_IFT_CACHE) at a writable disk, then run the same command again."
_PERMISSION = ("Make {dir} writable for user {user} (`ls -ld {dir}`) or point run_dir at a folder you can write, "
               "then run the same command again.")
REASONS: dict[int, tuple[str, str]] = {
    errno.ENOSPC: ("no space left on device", _SPACE),
    errno.EDQUOT: ("disk quota exceeded", _QUOTA),
    errno.EROFS: ("read-only file system", _READ_ONLY),
    errno.EACCES: ("permission denied", _PERMISSION),
}
_OS_ERROR = re.compile(r"\(os error (\d+)\)")  # Rust's io::Error text: safetensors, tokenizers
_SQLITE = {"database or disk is full": errno.ENOSPC, "attempt to write a readonly database": errno.EACCES}
_TORCH = ("PytorchStreamWriter failed writing", "file write failed")  # torch.save keeps no errno


class DiskWriteError(PhasedIFTError):
    """A write the filesystem refused (see the module docstring). The CLI exits with status 74 (`EXIT_WRITE`).

    Attributes:
        path: the file (or folder) that could not be written, None when unknown.
        errno: ENOSPC, EDQUOT, EROFS or EACCES.
    """

    exit_code = EXIT_WRITE

    def __init__(self, message: str, path: Path | None, code: int) -> None:
        super().__init__(message)
        self.path, self.errno = path, code


def refused_write(exc: BaseException) -> tuple[int, str | None] | None:
    """(errno, the file the exception names or None) when `exc` (or an exception it was raised from) is a write
    the filesystem refused; None for any other exception."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in REASONS:
            return e.errno, e.filename if isinstance(e.filename, str) else None
        text = str(e)
        if isinstance(e, sqlite3.Error):
            for part, code in _SQLITE.items():
                if part in text:
                    return code, None
        m = _OS_ERROR.search(text)
        if m and int(m.group(1)) in REASONS:
            return int(m.group(1)), None
        if isinstance(e, RuntimeError) and any(t in text for t in _TORCH):
            return errno.ENOSPC, None  # most often a full disk; the free space in the line tells
        e = e.__cause__ or e.__context__
    return None


def _existing(path: Path) -> Path:
    """The path itself or its nearest existing parent (the one whose filesystem `disk_usage` can report)."""
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def free_space(path: str | Path) -> tuple[Path, int | None]:
    """(the path or its nearest existing parent, the bytes free on its filesystem for this user:
    `shutil.disk_usage(...).free`, None when the filesystem cannot be asked)."""
    base = _existing(Path(path))
    try:
        return base, shutil.disk_usage(base).free
    except OSError:
        return base, None


def human_bytes(n: int) -> str:
    """A byte count in decimal units, as every disk message writes it (rich's `decimal`: "1.1 GB", "512 bytes")."""
    return decimal(n)


def write_error(exc: BaseException, path: str | Path | None = None, need: int | None = None,
                need_note: str = "", where: str | Path | None = None) -> DiskWriteError | None:
    """The `DiskWriteError` for `exc` when it is a refused write (`refused_write`), else None. Without `path` (an
    exception from code that did not say it was writing, the CLI's last resort) EACCES is not taken for a write: it
    may come from a read.

    Args:
        path: the file (or folder) being written; a file the exception names inside this folder is named instead.
        need: bytes the write needed (exact or estimated; `need_note` says which, e.g. " (estimate: ...)").
        where: when neither `path` nor the exception names a file: the folder the command writes (the run dir).
    """
    found = refused_write(exc)
    if found is None or (path is None and found[0] == errno.EACCES):
        return None
    code, named = found
    target = Path(path) if path is not None else None
    if named and (target is None or Path(named).is_relative_to(target)):
        target = Path(named)
    reason, fix = REASONS[code]
    head = f"cannot write {target}" if target else f"a write under {where or Path.cwd()} failed"
    parts = [f"{head}: {reason} ({errno.errorcode[code]})"]
    base, free = free_space(target if target else Path(where or "."))
    if code in (errno.ENOSPC, errno.EDQUOT):
        if free is not None:
            parts.append(f"{human_bytes(free)} free on its filesystem")
        parts.append(f"the write needed {human_bytes(need)}{need_note}" if need else "the size of the write is unknown")
    folder = base if base.is_dir() else base.parent
    return DiskWriteError("; ".join(parts) + ". " + fix.format(dir=folder, user=_user()), target, code)


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no USER/LOGNAME and no passwd entry (some containers)
        return "this user"


@contextmanager
def writing(path: str | Path, need: int | None = None, need_note: str = "") -> Iterator[None]:
    """Turn a refused write inside the block into a `DiskWriteError` naming `path` (see `write_error`); other
    exceptions pass unchanged.

    Raises:
        DiskWriteError: from the refused write (chained to it).
    """
    try:
        yield
    except DiskWriteError:
        raise
    except Exception as e:
        err = write_error(e, path, need, need_note)
        if err is None:
            raise
        raise err from e
