"""Corrupt state is survived: a truncated stage file or a flipped call-cache value is detected by
its checksum, reported once, recomputed to the same result; ``dndbench cache`` sees it."""
from __future__ import annotations

import logging
import os
import sqlite3
import time

import numpy as np
import pandas as pd
import pytest

from dndbench.backends.call_cache import CallCache
from dndbench.cache import Cache, checksum_path
from dndbench.cache_cli import main as cache_main


def _frame() -> pd.DataFrame:
    return pd.DataFrame({"unit": range(50), "label": [f"concept {i}" for i in range(50)]})


def _truncate(path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flip(path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


STAGES = {
    "frame": (lambda c, f: c.frame("stage", "k", f), _frame, ".parquet"),
    "array": (lambda c, f: c.array("stage", "k", f), lambda: np.arange(100.0), ".npy"),
    "json": (lambda c, f: c.json("stage", "k", f), lambda: {"a": list(range(20))}, ".json"),
}


def _equal(a, b) -> bool:
    if isinstance(a, pd.DataFrame):
        return a.equals(b)
    if isinstance(a, np.ndarray):
        return np.array_equal(a, b)
    return a == b


@pytest.mark.parametrize("damage", [_truncate, _flip])
@pytest.mark.parametrize("kind", sorted(STAGES))
def test_corrupt_stage_file_is_recomputed(tmp_path, caplog, kind, damage):
    get, make, suffix = STAGES[kind]
    calls = []

    def compute():
        calls.append(1)
        return make()

    first = get(Cache(tmp_path), compute)
    path = tmp_path / "stage" / f"k{suffix}"
    assert checksum_path(path).exists()
    damage(path)
    assert cache_main(["verify", "--cache-dir", str(tmp_path)]) == 1
    caplog.set_level(logging.WARNING, logger="dndbench")
    cache = Cache(tmp_path)
    again = get(cache, compute)
    assert _equal(first, again) and len(calls) == 2 and cache.misses == {"stage": 1}
    assert sum("recomputing" in r.getMessage() for r in caplog.records) == 1
    assert _equal(get(Cache(tmp_path), compute), first) and len(calls) == 2  # healed
    assert cache_main(["verify", "--cache-dir", str(tmp_path)]) == 0


def test_flipped_call_cache_value_is_recomputed(tmp_path, caplog):
    calls = CallCache(tmp_path / "calls")
    value = np.arange(64, dtype=np.float32)
    calls.put_many({"a": value, "b": {"x": 1}})
    with sqlite3.connect(calls.path) as con:
        blob = bytearray(con.execute("SELECT value FROM calls WHERE key='a'").fetchone()[0])
        blob[-5] ^= 0xFF
        con.execute("UPDATE calls SET value=? WHERE key='a'", (bytes(blob),))
    assert cache_main(["verify", "--cache-dir", str(tmp_path)]) == 1
    caplog.set_level(logging.WARNING, logger="dndbench")
    fresh = CallCache(tmp_path / "calls")
    found = fresh.get_many(["a", "b"])
    assert set(found) == {"b"} and fresh.misses == 1  # the bad row is a miss: the caller recomputes
    assert sum("recomputing" in r.getMessage() for r in caplog.records) == 1
    fresh.put("a", value)
    assert np.array_equal(CallCache(tmp_path / "calls").get("a"), value)
    assert cache_main(["verify", "--cache-dir", str(tmp_path)]) == 0


def test_verify_fix_removes_bad_entries(tmp_path, capsys):
    cache = Cache(tmp_path)
    cache.json("a", "good", lambda: [1])
    cache.json("a", "bad", lambda: [2])
    _flip(tmp_path / "a" / "bad.json")
    assert cache_main(["verify", "--cache-dir", str(tmp_path), "--fix"]) == 0
    assert "bad.json" in capsys.readouterr().out
    assert not (tmp_path / "a" / "bad.json").exists() and (tmp_path / "a" / "good.json").exists()


def test_info_and_gc(tmp_path, capsys):
    cache = Cache(tmp_path)
    for i in range(3):
        cache.json("stage_a", f"k{i}", lambda i=i: [i] * 100)
    cache.array("stage_b", "x", lambda: np.zeros(10))
    CallCache(tmp_path / "calls").put("c", "text")
    assert cache_main(["info", "--cache-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "stage_a" in out and "3 entries" in out and "stage_b" in out and "calls" in out
    old = time.time() - 10 * 86400
    for i in range(2):
        os.utime(tmp_path / "stage_a" / f"k{i}.json", (old, old))
    assert cache_main(["gc", "--cache-dir", str(tmp_path), "--older-than", "5"]) == 0
    left = sorted(p.name for p in (tmp_path / "stage_a").glob("*.json"))
    assert left == ["k2.json"] and not checksum_path(tmp_path / "stage_a" / "k0.json").exists()
    assert (tmp_path / "stage_b" / "x.npy").exists()


def test_bad_arguments_are_config_errors(tmp_path):
    from dndbench.errors import ConfigError

    with pytest.raises(ConfigError, match="no such folder"):
        cache_main(["info", "--cache-dir", str(tmp_path / "nope")])
    with pytest.raises(ConfigError, match="--older-than"):
        cache_main(["gc", "--cache-dir", str(tmp_path)])
