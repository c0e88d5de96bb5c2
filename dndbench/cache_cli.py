"""``python -m dndbench cache info|verify|gc``: look after a cache folder.

``info`` shows the size and entry count of each stage (folder) and of the call cache;
``verify`` checks every entry against its checksum (stage files: ``<entry>.sha256``; call-cache
rows: their ``sha`` column) and lists the bad ones (exit status 1 if any; ``--fix`` removes them,
so the next run recomputes them); ``gc`` removes stage entries whose file was last modified
(``--older-than DAYS``) or last read (``--unused-since DAYS``, by access time, where the file
system records it) before the given age.  Every command takes ``--cache-dir`` (default
``$DNDBENCH_CACHE`` or ``~/.cache/dndbench``).
"""
from __future__ import annotations

import argparse
import sqlite3
import time
from contextlib import closing
from pathlib import Path
from typing import Iterator

from dndbench.cache import (
    CHECKSUM_SUFFIX,
    checksum_path,
    default_cache_dir,
    discard_entry,
    entry_problem,
)
from dndbench.errors import ConfigError

#: the call cache's folder under the cache root (see :class:`~dndbench.backends.call_cache.CallCache`)
CALLS = "calls"


def _is_entry(path: Path) -> bool:
    name = path.name
    return (path.is_file() and not name.startswith(".") and not name.endswith(".lock")
            and not name.endswith(CHECKSUM_SUFFIX) and not name.endswith(".tmp"))


def entries(root: Path) -> Iterator[tuple[str, Path]]:
    """(stage, path) of every stage entry under ``root`` (the call cache excluded)."""
    for stage in sorted(p for p in root.iterdir() if p.is_dir() and p.name != CALLS):
        for path in sorted(stage.rglob("*")):
            if _is_entry(path):
                yield stage.name, path


def _size(path: Path) -> int:
    extra = checksum_path(path)
    return path.stat().st_size + (extra.stat().st_size if extra.exists() else 0)


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _calls_db(root: Path) -> Path:
    return root / CALLS / "calls.sqlite"


def info(root: Path) -> list[tuple[str, int, int]]:
    """(stage, entries, bytes) per stage, plus ``calls`` (rows, database bytes)."""
    stats: dict[str, list[int]] = {}
    for stage, path in entries(root):
        row = stats.setdefault(stage, [0, 0])
        row[0] += 1
        row[1] += _size(path)
    out = [(stage, n, size) for stage, (n, size) in sorted(stats.items())]
    db = _calls_db(root)
    if db.exists():
        with closing(sqlite3.connect(db)) as con:
            rows = int(con.execute("SELECT COUNT(*) FROM calls").fetchone()[0])
        size = sum(p.stat().st_size for p in db.parent.glob("calls.sqlite*")
                   if not p.name.endswith(".lock"))
        out.append((CALLS, rows, size))
    return out


def verify(root: Path, fix: bool = False) -> list[tuple[str, str]]:
    """(entry, problem) of every bad entry; with ``fix`` the bad entries are removed."""
    from dndbench.backends.call_cache import CallCache, row_problem

    bad = []
    for _, path in entries(root):
        problem = entry_problem(path)
        if problem is not None:
            bad.append((str(path), problem))
            if fix:
                discard_entry(path)
    db = _calls_db(root)
    if db.exists():
        CallCache(db.parent)._prepare()  # adds the checksum column to an old database
        with closing(sqlite3.connect(db)) as con:
            keys = []
            for key, kind, blob, sha in con.execute("SELECT key, kind, value, sha FROM calls"):
                problem = row_problem(kind, blob, sha)
                if problem is not None:
                    bad.append((f"{db}[{key}]", problem))
                    keys.append(key)
            if fix and keys:
                with con:
                    con.executemany("DELETE FROM calls WHERE key = ?", [(k,) for k in keys])
    return bad


def gc(root: Path, older_than: float | None, unused_since: float | None,
       dry_run: bool = False) -> list[Path]:
    """Remove the stage entries modified more than ``older_than`` days ago or last read more
    than ``unused_since`` days ago; return them."""
    now = time.time()
    removed = []
    for _, path in entries(root):
        st = path.stat()
        old = older_than is not None and now - st.st_mtime > older_than * 86400
        unused = unused_since is not None and now - max(st.st_atime, st.st_mtime) > unused_since * 86400
        if old or unused:
            removed.append(path)
            if not dry_run:
                discard_entry(path)
    return removed


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dndbench cache", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name, text in (("info", "sizes and entry counts per stage"),
                       ("verify", "check every entry's checksum"),
                       ("gc", "remove old or unused entries")):
        q = sub.add_parser(name, help=text)
        q.add_argument("--cache-dir", type=Path, default=None,
                       help="cache folder (default: $DNDBENCH_CACHE or ~/.cache/dndbench)")
        if name == "verify":
            q.add_argument("--fix", action="store_true", help="remove the bad entries")
        if name == "gc":
            q.add_argument("--older-than", type=float, metavar="DAYS",
                           help="remove entries written more than DAYS days ago")
            q.add_argument("--unused-since", type=float, metavar="DAYS",
                           help="remove entries not read for DAYS days (access time)")
            q.add_argument("--dry-run", action="store_true", help="only list what would go")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one cache command; exit status 1 when ``verify`` finds bad entries."""
    args = parser().parse_args(argv)
    root = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    if not root.is_dir():
        raise ConfigError(f"--cache-dir {root}: no such folder; give the cache folder of your "
                          f"runs (default $DNDBENCH_CACHE or ~/.cache/dndbench)")
    if args.command == "info":
        rows = info(root)
        for stage, n, size in rows:
            print(f"{stage:<28} {n:>8} entries {_human(size):>12}")
        print(f"{'total':<28} {sum(r[1] for r in rows):>8} entries "
              f"{_human(sum(r[2] for r in rows)):>12}")
        return 0
    if args.command == "verify":
        bad = verify(root, fix=args.fix)
        for where, problem in bad:
            print(f"{'removed' if args.fix else 'bad'}: {where}: {problem}")
        print(f"{len(bad)} bad entr{'y' if len(bad) == 1 else 'ies'}")
        return 1 if bad and not args.fix else 0
    for value, flag in ((args.older_than, "--older-than"), (args.unused_since, "--unused-since")):
        if value is not None and value < 0:
            raise ConfigError(f"{flag} {value}: give a number of days >= 0")
    if args.older_than is None and args.unused_since is None:
        raise ConfigError("cache gc: give --older-than DAYS and/or --unused-since DAYS")
    removed = gc(root, args.older_than, args.unused_since, dry_run=args.dry_run)
    for path in removed:
        print(f"{'would remove' if args.dry_run else 'removed'}: {path}")
    print(f"{len(removed)} entr{'y' if len(removed) == 1 else 'ies'}")
    return 0
