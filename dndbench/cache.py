"""Content-addressed, process-safe on-disk cache.

Every stage output is stored under ``<root>/<namespace>/<key><suffix>`` where ``key`` hashes
everything that determines the output.  Writes go to a temporary file in the same folder and are
renamed into place, so a reader never sees half a file; a per-entry file lock makes parallel jobs
wait for (and then reuse) an entry another job is computing instead of computing it twice.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
from contextlib import contextmanager
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

T = TypeVar("T")


def _jsonable(obj: Any) -> Any:
    if is_dataclass(obj) and not isinstance(obj, type):
        tag = getattr(type(obj), "cache_tag", type(obj).__name__)  # see ComponentConfig.cache_tag
        skip = getattr(type(obj), "cache_exclude", ())  # options that do not change the output
        return {"__type__": tag, **{k: v for k, v in asdict(obj).items() if k not in skip}}
    if isinstance(obj, Path):
        return str(obj)
    return repr(obj)


def stable_hash(*parts: Any, length: int = 16) -> str:
    """A short hex digest of ``parts`` that is stable across processes and runs."""
    text = json.dumps(parts, sort_keys=True, default=_jsonable)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def default_cache_dir() -> Path:
    """``$DNDBENCH_CACHE`` or ``~/.cache/dndbench``."""
    return Path(os.environ.get("DNDBENCH_CACHE", Path.home() / ".cache" / "dndbench"))


_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process's umask, read without changing it where Linux reports it
    (``/proc/self/status``); elsewhere by the set-and-restore trick, under a lock."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o077)
        os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode ``open()`` gives a new file: ``0o666`` filtered through the umask (so with
    umask 002 a group shares the cache: ``0o664``)."""
    return 0o666 & ~current_umask()


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block
    succeeds.  The file gets the user's umask-derived mode (:func:`file_mode`), not the
    ``0o600`` of ``mkstemp``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.is_file():
            os.chmod(tmp_path, file_mode())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


log = logging.getLogger("dndbench")
#: suffix of the checksum file next to each stage entry
CHECKSUM_SUFFIX = ".sha256"
_BAD = object()
_WARNED: set[str] = set()


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checksum_path(path: Path) -> Path:
    """Where the checksum of the entry ``path`` is stored: ``<entry>.sha256``."""
    return path.with_name(path.name + CHECKSUM_SUFFIX)


def write_checksum(data: Path, entry: Path) -> None:
    """Store the sha256 of ``data`` (the entry's temporary file) as ``entry``'s checksum,
    atomically; call it before ``data`` is renamed onto ``entry``."""
    digest = file_sha256(data)
    with atomic_path(checksum_path(entry)) as tmp:
        tmp.write_text(digest + "\n")


def entry_problem(path: Path) -> str | None:
    """What is wrong with a stage entry, or None: a file whose sha256 differs from its
    checksum is corrupt; an entry without a checksum (written before checksums) passes."""
    sidecar = checksum_path(path)
    if not sidecar.exists():
        return None
    try:
        expected = sidecar.read_text().strip()
        actual = file_sha256(path)
    except OSError as exc:
        return f"cannot be read ({exc})"
    return None if actual == expected else "does not match its checksum (corrupt or truncated)"


def warn_corrupt(where: Path | str, problem: str) -> None:
    """Warn once per entry and process that an entry is corrupt and will be recomputed."""
    if str(where) not in _WARNED:
        _WARNED.add(str(where))
        log.warning("cache entry %s %s; recomputing it", where, problem)


def discard_entry(path: Path) -> None:
    """Remove a stage entry and its checksum."""
    for p in (path, checksum_path(path)):
        p.unlink(missing_ok=True)


class Cache:
    """A folder of content-addressed entries; also counts hits and misses for run records."""

    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root) if root else default_cache_dir()
        self.hits: dict[str, int] = {}
        self.misses: dict[str, int] = {}

    def path(self, namespace: str, key: str, suffix: str = "") -> Path:
        return self.root / namespace / f"{key}{suffix}"

    @contextmanager
    def lock(self, path: Path) -> Iterator[None]:
        from filelock import FileLock

        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path) + ".lock"):
            yield

    def get_or_create(self, namespace: str, key: str, suffix: str,
                      compute: Callable[[], T], save: Callable[[T, Path], None],
                      load: Callable[[Path], T]) -> T:
        """Load the entry if present, otherwise compute, save atomically and return it."""
        path = self.path(namespace, key, suffix)
        if path.exists():
            found = self._load_checked(path, load)
            if found is not _BAD:
                self.hits[namespace] = self.hits.get(namespace, 0) + 1
                return found
        with self.lock(path):
            if path.exists():  # another process finished it while we waited
                found = self._load_checked(path, load)
                if found is not _BAD:
                    self.hits[namespace] = self.hits.get(namespace, 0) + 1
                    return found
                discard_entry(path)
            value = compute()
            with atomic_path(path) as tmp:
                save(value, tmp)
                write_checksum(tmp, path)
            self.misses[namespace] = self.misses.get(namespace, 0) + 1
            return value

    def _load_checked(self, path: Path, load: Callable[[Path], T]) -> Any:
        """``load(path)`` if the entry matches its checksum and loads, else ``_BAD`` (after one
        warning per entry and process): the caller recomputes it."""
        problem = entry_problem(path)
        if problem is None:
            try:
                return load(path)
            except Exception as exc:  # a truncated file that still matches no checksum
                problem = f"cannot be read ({type(exc).__name__}: {exc})"
        warn_corrupt(path, problem)
        return _BAD

    def array(self, namespace: str, key: str, compute: Callable[[], Any]) -> Any:
        """A numpy array entry (``.npy``)."""
        import numpy as np

        def save(value: Any, tmp: Path) -> None:
            with open(tmp, "wb") as fh:
                np.save(fh, value, allow_pickle=False)

        return self.get_or_create(namespace, key, ".npy", compute, save,
                                  lambda p: np.load(p, allow_pickle=False))

    def frame(self, namespace: str, key: str, compute: Callable[[], Any]) -> Any:
        """A pandas DataFrame entry (``.parquet``)."""
        import pandas as pd

        return self.get_or_create(namespace, key, ".parquet", compute,
                                  lambda df, tmp: df.to_parquet(tmp, index=False),
                                  pd.read_parquet)

    def json(self, namespace: str, key: str, compute: Callable[[], Any]) -> Any:
        """A JSON-serialisable entry (``.json``)."""

        def save(value: Any, tmp: Path) -> None:
            tmp.write_text(json.dumps(value))

        return self.get_or_create(namespace, key, ".json", compute, save,
                                  lambda p: json.loads(p.read_text()))
