"""Persistent, process-safe store of model-call results shared by every backend.

A key hashes (backend, model id, params, input); a value is ``bytes``, a numpy array or a
JSON-serialisable object.  Entries live in one SQLite database (WAL mode, busy timeout), so
parallel jobs on one machine can read and write the same store without corrupting it; a key
written twice keeps its first value (model calls with equal keys give equal answers).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import sqlite3
import time
from contextlib import closing
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, TypeVar

from dndbench.cache import Cache, file_mode, warn_corrupt

_SCHEMA = "CREATE TABLE IF NOT EXISTS calls (key TEXT PRIMARY KEY, kind TEXT NOT NULL, value BLOB NOT NULL)"
_CHUNK = 500  # keys per SQL statement (below SQLite's variable limit)
T = TypeVar("T")


def _create_table(con: sqlite3.Connection) -> None:
    con.execute(_SCHEMA)
    columns = {row[1] for row in con.execute("PRAGMA table_info(calls)")}
    if "sha" not in columns:  # databases from before checksums: their rows stay unchecked
        con.execute("ALTER TABLE calls ADD COLUMN sha TEXT")
    con.commit()


def value_sha(kind: str, blob: bytes) -> str:
    """The checksum stored with a row: sha256 of its kind and value."""
    return hashlib.sha256(kind.encode() + b"\0" + bytes(blob)).hexdigest()


def row_problem(kind: str, blob: bytes, sha: str | None) -> str | None:
    """What is wrong with a stored row, or None (a row without a checksum passes)."""
    return _checked(kind, blob, sha)[1]


def call_key(backend: str, model: str, params: Any, data: Any) -> str:
    """Stable hex key of one model call (the same across processes and runs)."""
    text = json.dumps([backend, model, params, data], sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()


#: how long a first connection retries the switch to WAL; after that the database stays in
#: rollback mode (a file system without WAL support), still safe, with the busy timeout
WAL_WAIT_S = 10.0


def _switch_to_wal(con: sqlite3.Connection) -> None:
    """``PRAGMA journal_mode = WAL``; SQLite answers the old mode instead of raising when a
    writer holds the database, which counts as locked here (so :func:`_retry` waits)."""
    mode = con.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise sqlite3.OperationalError(f"database is locked (journal mode stays {mode})")


def _retry(statement: Callable[[], T], timeout_s: float) -> T:
    """Run ``statement``, retrying with exponential backoff (up to ``timeout_s``) while SQLite
    answers that the database is locked or busy."""
    delay, deadline = 0.01, time.monotonic() + timeout_s
    while True:
        try:
            return statement()
        except sqlite3.OperationalError as exc:
            text = str(exc).lower()
            if ("locked" not in text and "busy" not in text) or time.monotonic() > deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.5)


def _encode(value: Any) -> tuple[str, bytes]:
    import numpy as np

    if isinstance(value, (bytes, bytearray, memoryview)):
        return "bytes", bytes(value)
    if isinstance(value, np.ndarray):
        buf = io.BytesIO()
        np.save(buf, value, allow_pickle=False)
        return "npy", buf.getvalue()
    return "json", json.dumps(value).encode()


def _decode(kind: str, blob: bytes) -> Any:
    if kind == "bytes":
        return blob
    if kind == "npy":
        import numpy as np

        return np.load(io.BytesIO(blob), allow_pickle=False)
    return json.loads(blob.decode())


def _checked(kind: str, blob: bytes, sha: str | None) -> tuple[Any, str | None]:
    """The decoded value and None, or None and what is wrong with the row."""
    if sha is not None and value_sha(kind, blob) != sha:
        return None, "does not match its checksum (corrupt)"
    try:
        return _decode(kind, blob), None
    except Exception as exc:
        return None, f"cannot be decoded ({type(exc).__name__})"


class CallCache:
    """Key -> value store of model calls under ``root`` (``calls.sqlite``), with hit/miss counters."""

    FILENAME = "calls.sqlite"

    def __init__(self, root: Path | str, timeout_s: float = 60.0) -> None:
        self.root = Path(root)
        self.path = self.root / self.FILENAME
        self.timeout_s = timeout_s
        self.hits = 0
        self.misses = 0
        self._ready = False

    @classmethod
    def for_cache(cls, cache: Cache) -> "CallCache":
        """The call cache of a run cache: ``<cache.root>/calls``."""
        return cls(cache.root / "calls")

    def _connect(self) -> sqlite3.Connection:
        if not self._ready:
            self._prepare()
        con = sqlite3.connect(self.path, timeout=self.timeout_s)
        con.execute(f"PRAGMA busy_timeout = {int(self.timeout_s * 1000)}")
        return con

    def _prepare(self) -> None:
        """Make sure the database exists in WAL mode with its table (once per object).

        Switching a database to WAL needs an exclusive lock, which SQLite refuses at once
        (its busy handler does not cover that upgrade) while another process writes in
        rollback mode, as a new database's creator does.  So the switch happens under a file
        lock (``calls.sqlite.lock``) that every process takes on first use, a database already
        in WAL mode is left as it is, and a refused statement is retried with backoff until
        ``timeout_s``.  A new database gets the user's umask-derived mode (its ``-wal`` and
        ``-shm`` files follow it), so a group can share the cache."""
        from filelock import FileLock

        self.root.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.path) + ".lock", timeout=self.timeout_s):
            new = not self.path.exists()
            with closing(sqlite3.connect(self.path, timeout=self.timeout_s)) as con:
                con.execute(f"PRAGMA busy_timeout = {int(self.timeout_s * 1000)}")
                mode = _retry(lambda: con.execute("PRAGMA journal_mode").fetchone()[0],
                              self.timeout_s)
                if str(mode).lower() != "wal":
                    try:
                        _retry(lambda: _switch_to_wal(con), min(self.timeout_s, WAL_WAIT_S))
                    except sqlite3.OperationalError:
                        pass  # rollback mode: slower under contention, still correct
                _retry(lambda: _create_table(con), self.timeout_s)
            if new:
                os.chmod(self.path, file_mode())
        self._ready = True

    def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        """Values of the keys that are present (absent keys are left out and counted as misses)."""
        wanted = list(dict.fromkeys(keys))
        found: dict[str, Any] = {}
        if wanted:
            with closing(self._connect()) as con:
                for start in range(0, len(wanted), _CHUNK):
                    chunk = wanted[start:start + _CHUNK]
                    marks = ",".join("?" * len(chunk))
                    rows = con.execute("SELECT key, kind, value, sha FROM calls "
                                       f"WHERE key IN ({marks})", chunk)
                    bad = []
                    for key, kind, blob, sha in rows:
                        value, problem = _checked(kind, blob, sha)
                        if problem is None:
                            found[key] = value
                        else:
                            warn_corrupt(f"{self.path}[{key[:16]}]", problem)
                            bad.append(key)
                    if bad:  # recomputed by the caller and stored again
                        with con:
                            con.executemany("DELETE FROM calls WHERE key = ?", [(k,) for k in bad])
        self.hits += len(found)
        self.misses += len(wanted) - len(found)
        return found

    def put_many(self, items: Mapping[str, Any]) -> None:
        """Store values in one transaction; keys already present keep their value."""
        rows = [(key, kind, blob, value_sha(kind, blob))
                for key, (kind, blob) in ((k, _encode(v)) for k, v in items.items())]
        if not rows:
            return
        with closing(self._connect()) as con, con:
            con.executemany("INSERT OR IGNORE INTO calls (key, kind, value, sha) VALUES (?, ?, ?, ?)", rows)

    def get(self, key: str, default: Any = None) -> Any:
        """One value, or ``default`` when absent."""
        return self.get_many([key]).get(key, default)

    def put(self, key: str, value: Any) -> None:
        """Store one value."""
        self.put_many({key: value})

    def count(self) -> int:
        """Number of stored entries."""
        with closing(self._connect()) as con:
            return int(con.execute("SELECT COUNT(*) FROM calls").fetchone()[0])


def services(cache: Cache) -> dict[str, Any]:
    """The constructor arguments every backend gets besides its config: the persistent call
    cache and the folder for model files, both under ``cache.root``.  Pass them to
    :meth:`dndbench.registry.Registry.create` as ``services=``."""
    return {"call_cache": CallCache.for_cache(cache), "cache_dir": cache.root}
