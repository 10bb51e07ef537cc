"""The project's one on-disk cache: a string key -> JSON (or bytes) value table in an sqlite file.

It serves the three caches of values that are expensive to get again:
    <run_dir>/cache/llm.sqlite         table "responses": canonical request -> chat completion JSON (`llm_client`)
    <cache_dir>/losses.sqlite          table "loss_v2": example + settings -> response losses (`scoring.losses`)
    <cache_dir>/embeddings.sqlite      table "emb": text -> sentence embedding bytes (`scoring.learned`)

Guarantees (the same as the three hand-written caches it replaces):
  * WAL journal with synchronous=NORMAL: readers never wait for the writer, and a killed process (kill -9) loses
    nothing it committed (only an OS crash can lose the last commits).
  * Every `put` / `put_many` is one committed transaction, so a caller that puts as results arrive keeps them all.
  * One connection per instance, guarded by a lock: threads may share an instance (the LLM client's workers do).
    Several instances or processes on one file wait up to `timeout` seconds for each other's writes.
  * A write the disk refuses ("database or disk is full", read-only, permission) raises
    `diskerrors.DiskWriteError` naming the file; that put is rolled back, everything committed before stays.
  * A damaged file (not an sqlite database, or "database disk image is malformed": a half copy, a disk fault) is
    `CorruptCache`, a `PhasedIFTError` naming the file and the fix, wherever sqlite finds it (opening, a read, a
    write). It is never read as an empty or partial cache: that would send again, at the user's cost, requests
    the file had answered. The fix moves the file away; the dry run then says how much will be asked again.
  * Keys are whatever the caller hashes (never a secret: the LLM client's key excludes the API key).

Schema: `<table>(key TEXT PRIMARY KEY, <value_column> TEXT|BLOB NOT NULL[, <note_column> TEXT NOT NULL]
[, created REAL NOT NULL])`. The column names and the two optional columns exist so the files written before this
class are read and written as they are: the LLM cache keeps its `responses(key, request, response, created)`
table, the embedding cache its `emb(key, vec)` table.

    cache = KVCache(run_dir / "cache" / "llm.sqlite", "responses", value_column="response", note_column="request")
    cache.put(key, response_json, note=request_json)
    cache.get(key)          # -> the value, or None
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from phased_ift.diskerrors import writing
from phased_ift.errors import PhasedIFTError

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
CODECS = ("json", "bytes")
SQL_VARS = 500  # keys per SELECT ... IN (...): well under sqlite's limit on bound variables (999 in old builds)
_DAMAGED = ("SQLITE_CORRUPT", "SQLITE_NOTADB")  # sqlite's result codes for a file that is not a whole database


class CorruptCache(PhasedIFTError):
    """The cache file is damaged (see the module docstring); the message names it and the fix.

    Attributes:
        path: the sqlite file.
    """

    def __init__(self, path: Path, reason: str) -> None:
        self.path = path
        super().__init__(
            f"cache {path} is damaged ({reason}): not a whole sqlite database (a half copy, a disk fault). It is not "
            f"used, so nothing it answered is asked again behind your back. Move it away (`mkdir -p {path.parent}/"
            f"damaged && mv {path}* {path.parent}/damaged/`), then run the same command with --dry-run: it says how "
            f"many requests the empty cache will send again (for a loss or embedding cache: recomputed).")


@contextmanager
def _damaged_is_named(path: Path) -> Iterator[None]:
    """Turn sqlite's "file is not a database" / "database disk image is malformed" into `CorruptCache`."""
    try:
        yield
    except sqlite3.DatabaseError as e:
        damaged = getattr(e, "sqlite_errorname", "") in _DAMAGED or any(
            m in str(e) for m in ("file is not a database", "disk image is malformed"))
        if not damaged:
            raise
        raise CorruptCache(path, str(e)) from e


class KVCache:
    """A persistent str -> value map in one sqlite table (see the module docstring for the guarantees).

    Args:
        path: sqlite file; it and its folder are created when missing.
        table: table name (letters, digits, "_"); several tables may share one file.
        codec: "json" (values are JSON-serialisable, stored as TEXT and returned as decoded JSON) or "bytes"
            (values are bytes, stored as BLOB and returned as bytes).
        value_column: name of the value column ("value" unless an older file fixes it).
        note_column: an optional TEXT column written with each value (JSON, sorted keys) and never read back by the
            cache: what a person inspecting the file needs, e.g. the LLM request behind a hashed key.
        timestamps: keep a `created` column (unix seconds of the last put).
        timeout: seconds to wait for another connection's write lock before sqlite3.OperationalError.
    Raises:
        ValueError: a bad table/column name or codec.
        CorruptCache: the file is damaged (not an sqlite database, or malformed); also from every read and write.
        sqlite3.DatabaseError: the table exists with other columns.
        DiskWriteError: the file or its folder cannot be written (full disk, read-only, permission).
    """

    def __init__(self, path: str | Path, table: str, *, codec: str = "json", value_column: str = "value",
                 note_column: str | None = None, timestamps: bool = True, timeout: float = 60.0) -> None:
        for name in (table, value_column, note_column or "note"):
            if not _NAME.match(name):
                raise ValueError(f"KVCache: {name!r} is not a valid sqlite table/column name")
        if codec not in CODECS:
            raise ValueError(f"KVCache: codec must be one of {CODECS}, got {codec!r}")
        self.path, self.table, self.codec = Path(path), table, codec
        self._value, self._note, self._timestamps = value_column, note_column, timestamps
        self._lock = threading.Lock()
        kind = "TEXT" if codec == "json" else "BLOB"
        cols = [f"{value_column} {kind} NOT NULL"] + ([f"{note_column} TEXT NOT NULL"] if note_column else []) + (
            ["created REAL NOT NULL"] if timestamps else [])
        with writing(self.path):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(self.path, check_same_thread=False, timeout=timeout)
        try:
            with writing(self.path), _damaged_is_named(self.path):
                self._conn.execute("PRAGMA journal_mode=WAL")
                self._conn.execute("PRAGMA synchronous=NORMAL")
                self._conn.execute(f"CREATE TABLE IF NOT EXISTS {table} (key TEXT PRIMARY KEY, {', '.join(cols)})")
                self._conn.commit()
                have = {r[1] for r in self._conn.execute(f"PRAGMA table_info({table})")}
        except BaseException:
            self._conn.close()
            raise
        need = ["key"] + [c.split()[0] for c in cols]
        if not set(need) <= have:
            self._conn.close()
            raise sqlite3.DatabaseError(f"{self.path}: table {table!r} has the columns {sorted(have)}, not "
                                        f"{need}; it was written by something else (delete the file to rebuild it)")

    # ------------------------------------------------------------------------------------------------ codec
    def _encode(self, value: Any) -> str | bytes:
        if self.codec == "bytes":
            if not isinstance(value, (bytes, bytearray, memoryview)):
                raise TypeError(f"KVCache({self.table}): codec 'bytes' stores bytes, got {type(value).__name__}")
            return bytes(value)
        return json.dumps(value, ensure_ascii=False)

    def _decode(self, stored: str | bytes) -> Any:
        return bytes(stored) if self.codec == "bytes" else json.loads(stored)

    # ------------------------------------------------------------------------------------------------ reads
    def get(self, key: str, default: Any = None) -> Any:
        """The value stored under `key`, or `default`."""
        with self._lock, _damaged_is_named(self.path):
            row = self._conn.execute(f"SELECT {self._value} FROM {self.table} WHERE key = ?", (key,)).fetchone()
        return self._decode(row[0]) if row else default

    def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        """{key: value} for the keys that are stored (missing keys are absent; duplicates are looked up once)."""
        uniq = list(dict.fromkeys(keys))
        out: dict[str, Any] = {}
        with self._lock, _damaged_is_named(self.path):
            for i in range(0, len(uniq), SQL_VARS):
                part = uniq[i: i + SQL_VARS]
                rows = self._conn.execute(f"SELECT key, {self._value} FROM {self.table} WHERE key IN "
                                          f"({','.join('?' * len(part))})", part).fetchall()
                out.update((k, self._decode(v)) for k, v in rows)
        return out

    def __contains__(self, key: object) -> bool:
        with self._lock, _damaged_is_named(self.path):
            return self._conn.execute(f"SELECT 1 FROM {self.table} WHERE key = ?", (key,)).fetchone() is not None

    def __len__(self) -> int:
        with self._lock, _damaged_is_named(self.path):
            return self._conn.execute(f"SELECT COUNT(*) FROM {self.table}").fetchone()[0]

    # ------------------------------------------------------------------------------------------------ writes
    def put(self, key: str, value: Any, note: Any = None) -> None:
        """Store (or replace) one value; committed before it returns. `note` goes to `note_column`."""
        self.put_many([(key, value)], notes=None if note is None else [note])

    def put_many(self, items: Iterable[tuple[str, Any]], notes: Sequence[Any] | None = None) -> None:
        """Store (or replace) (key, value) pairs in one committed transaction.

        Args:
            notes: one note per item when the cache has a `note_column` (required then), else None.
        Raises:
            ValueError: notes missing for a cache with a note column, or given for one without.
            DiskWriteError: the filesystem refused the write ("database or disk is full", read-only, permission);
                the transaction is rolled back, the values stored before stay readable.
        """
        items = list(items)
        if (notes is None) != (self._note is None) or (notes is not None and len(notes) != len(items)):
            raise ValueError(f"KVCache({self.table}): one note per item is needed exactly when the cache has a note "
                             f"column ({self._note!r})")
        cols = ["key", self._value] + ([self._note] if self._note else []) + (["created"] if self._timestamps else [])
        now = time.time()
        rows = []
        for i, (key, value) in enumerate(items):
            row: list[Any] = [key, self._encode(value)]
            if notes is not None:
                row.append(json.dumps(notes[i], sort_keys=True, ensure_ascii=False))
            if self._timestamps:
                row.append(now)
            rows.append(row)
        sql = f"INSERT OR REPLACE INTO {self.table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
        need = sum(len(v) for row in rows for v in row if isinstance(v, (str, bytes)))
        with self._lock, _damaged_is_named(self.path), writing(
                self.path, need, " (the values of this put; sqlite needs some more)"):
            try:
                self._conn.executemany(sql, rows)
                self._conn.commit()
            except sqlite3.Error:  # "database or disk is full": nothing of this put is kept, the rest is
                self._rollback()
                raise

    def _rollback(self) -> None:
        try:
            self._conn.rollback()
        except sqlite3.Error:
            pass

    # ------------------------------------------------------------------------------------------------ life
    def close(self) -> None:
        """Close the connection (idempotent); committed values stay in the file."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> "KVCache":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
