"""Crash safety under a real SIGKILL: ``python -m dndbench`` is killed at several points of a
small toy job, each rerun continuing on the same cache, and the final run's results are
byte-identical to those of an uninterrupted run; no killed run folder is marked complete; and
nothing stored before a kill (stage entries, call-cache rows) is computed again.

The kill points are found by watching the cache and run folders (no hook in the code):

1. during the activation pass: an ``activations`` entry is locked, not all are stored;
2. while describing units: the first DnD chunk (one unit) is stored, not all of them;
3. while writing results: ``run.json`` is written, ``COMPLETE`` is not.

See docs/reliability.md ("Killed jobs").
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Callable

import pytest
from test_concurrency import METRIC_PLUGIN  # the same model-free metric plugin

UNITS = list(range(8))
#: DnD with one unit per stored chunk, scored by a metric that needs no model (the job, not a
#: metric's model loading, is what is measured)
JOB = ["describer=dnd", "describer.units_per_batch=1",
       f"neurons.units=[{','.join(map(str, UNITS))}]", "metric=label_length", "progress=false"]
#: ``python -m dndbench`` that also appends the key of every call-cache row it computes (and
#: then stores) to ``$KILL_TEST_PUTS``: backends store only what they computed
LAUNCHER = textwrap.dedent('''
    import os, sys
    from dndbench.backends.call_cache import CallCache
    _put_many = CallCache.put_many
    def put_many(self, items):
        with open(os.environ["KILL_TEST_PUTS"], "a") as fh:
            fh.writelines(f"{key}\\n" for key in items)
        _put_many(self, items)
    CallCache.put_many = put_many
    from dndbench.cli import main
    sys.exit(main(sys.argv[1:]))
''')
#: cache folders of trained toy models: copied into each test cache, so nothing trains twice
MODEL_STAGES = ("toynet", "toy_backends")
#: seconds between looks at the folders; the most a job may take (a first training included)
POLL_S, JOB_S = 0.01, 900


def _entries(cache: Path) -> dict[str, tuple[int, int, int]]:
    """Every stored stage file (locks, temporaries and the call cache left out) with its
    inode, modification time and size: a recomputed entry is renamed into place anew."""
    out = {}
    for path in cache.rglob("*"):
        name = path.name
        if (path.is_file() and "calls" not in path.parts and not name.endswith(".lock")
                and not name.endswith(".tmp")):
            st = path.stat()
            out[str(path.relative_to(cache))] = (st.st_ino, st.st_mtime_ns, st.st_size)
    return out


def _stored(cache: Path, stage: str, suffix: str) -> int:
    return len(list((cache / stage).glob(f"*{suffix}")))


def _call_keys(cache: Path) -> set[str]:
    db = cache / "calls" / "calls.sqlite"
    if not db.exists():
        return set()
    with sqlite3.connect(db) as con:
        return {row[0] for row in con.execute("SELECT key FROM calls")}


def _puts(path: Path) -> set[str]:
    return set(path.read_text().split()) if path.exists() else set()


def _share_models(source: Path, target: Path) -> None:
    """Copy the complete trained-model folders (``meta.json`` present) missing in ``target``."""
    for stage in MODEL_STAGES:
        for meta in (source / stage).glob("*/meta.json"):
            dest = target / stage / meta.parent.name
            if not (dest / "meta.json").exists():
                shutil.copytree(meta.parent, dest, dirs_exist_ok=True)


class Job:
    """One ``python -m dndbench`` process on ``cache`` writing ``run_dir``."""

    def __init__(self, work: Path, cache: Path, run_dir: Path, name: str) -> None:
        self.run_dir, self.puts = run_dir, work / f"{name}.puts"
        env = {**os.environ, "DNDBENCH_CACHE": str(cache), "OMP_NUM_THREADS": "1",
               "KILL_TEST_PUTS": str(self.puts)}
        self.log = open(work / f"{name}.log", "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", LAUNCHER, *JOB, f"hydra.run.dir={run_dir}"], cwd=work,
            env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def finish(self) -> None:
        """Wait for a clean exit."""
        try:
            code = self.proc.wait(timeout=JOB_S)
        finally:
            self.stop()
        assert code == 0, Path(self.log.name).read_text()[-3000:]

    def stop(self) -> None:
        """Kill the job's process group if it still runs (a failed test leaves no job behind)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=60)
        self.log.close()

    def kill_when(self, ready: Callable[[], bool], what: str) -> None:
        """SIGKILL the job's process group as soon as ``ready()`` holds."""
        deadline = time.monotonic() + JOB_S
        try:
            while not ready():
                assert self.proc.poll() is None, (f"the job ended before {what}:\n"
                                                  + Path(self.log.name).read_text()[-3000:])
                assert time.monotonic() < deadline, f"timed out waiting for {what}"
                time.sleep(POLL_S)
            os.killpg(self.proc.pid, signal.SIGKILL)
            assert self.proc.wait(timeout=60) == -signal.SIGKILL
        finally:
            self.stop()


def _killed_run_is_incomplete(run_dir: Path) -> None:
    assert (run_dir / "INCOMPLETE").exists() and not (run_dir / "COMPLETE").exists()


def _nothing_stored_recomputed(before: dict[str, tuple[int, int, int]], calls: set[str],
                               cache: Path, job: Job) -> None:
    after = _entries(cache)
    rewritten = sorted(p for p, st in before.items() if after.get(p) != st)
    assert rewritten == [], f"stored entries written again: {rewritten}"
    recomputed = calls & _puts(job.puts)
    assert not recomputed, f"{len(recomputed)} stored model calls made again"


def run_kill_chain(work: Path, models: Path) -> dict[str, float]:
    """The whole scenario (see the module docstring); returns seconds per step (and the
    chunks stored when killed while describing)."""
    (work / "plugins").mkdir(parents=True)
    (work / "plugins" / "label_length.py").write_text(METRIC_PLUGIN)
    ref_cache, cache, runs = work / "ref-cache", work / "cache", work / "runs"
    timings: dict[str, float] = {}
    _share_models(models, ref_cache)

    t0 = time.perf_counter()
    ref = Job(work, ref_cache, runs / "reference", "reference")
    ref.finish()
    assert (ref.run_dir / "COMPLETE").exists()
    timings["uninterrupted"] = time.perf_counter() - t0
    _share_models(ref_cache, models)  # a training the reference run did is kept for later
    _share_models(ref_cache, cache)
    record = json.loads((ref.run_dir / "run.json").read_text())
    activations = record["counts"]["cache_misses"]["activations"]
    assert record["counts"]["describe/chunks_computed"] == len(UNITS)

    # 1. killed during the activation pass
    t0 = time.perf_counter()
    job = Job(work, cache, runs / "killed-activations", "killed-activations")
    job.kill_when(lambda: any((cache / "activations").glob("*.lock"))
                  and _stored(cache, "activations", ".npy") < activations, "the activation pass")
    timings["killed during activations"] = time.perf_counter() - t0
    _killed_run_is_incomplete(job.run_dir)
    assert _stored(cache, "activations", ".npy") < activations
    assert not (cache / "descriptions_chunks").exists()
    before, calls = _entries(cache), _call_keys(cache)

    # 2. killed while describing: after the first unit's chunk is stored
    t0 = time.perf_counter()
    job = Job(work, cache, runs / "killed-describing", "killed-describing")
    job.kill_when(lambda: _stored(cache, "descriptions_chunks", ".parquet") >= 1,
                  "the first stored chunk")
    timings["killed while describing"] = time.perf_counter() - t0
    _killed_run_is_incomplete(job.run_dir)
    _nothing_stored_recomputed(before, calls, cache, job)
    done = _stored(cache, "descriptions_chunks", ".parquet")
    assert 1 <= done < len(UNITS) and _stored(cache, "descriptions", ".parquet") == 0
    timings["chunks stored when killed"] = done
    before, calls = _entries(cache), _call_keys(cache)

    # 3. killed while writing results: after run.json, before COMPLETE
    t0 = time.perf_counter()
    job = Job(work, cache, runs / "killed-writing", "killed-writing")
    job.kill_when(lambda: (runs / "killed-writing" / "run.json").exists(), "run.json")
    timings["killed while writing"] = time.perf_counter() - t0
    _killed_run_is_incomplete(job.run_dir)
    _nothing_stored_recomputed(before, calls, cache, job)
    counts = json.loads((job.run_dir / "run.json").read_text())["counts"]
    assert counts["describe/chunks_cached"] == done  # restarted where it stopped
    assert counts["describe/chunks_computed"] == len(UNITS) - done
    assert "activations" not in counts["cache_misses"]
    before, calls = _entries(cache), _call_keys(cache)

    # 4. the last rerun finishes: the same results, nothing computed again
    t0 = time.perf_counter()
    final = Job(work, cache, runs / "final", "final")
    final.finish()
    timings["final rerun"] = time.perf_counter() - t0
    _nothing_stored_recomputed(before, calls, cache, final)
    assert (final.run_dir / "COMPLETE").exists() and not (final.run_dir / "INCOMPLETE").exists()
    record = json.loads((final.run_dir / "run.json").read_text())
    assert record["counts"]["cache_misses"] == {}
    assert all(d["from_cache"] for d in record["describers"].values())
    for name in ("descriptions.csv", "scores.csv"):
        assert (final.run_dir / name).read_bytes() == (ref.run_dir / name).read_bytes(), name
    assert _call_keys(cache) == _call_keys(ref_cache)
    assert {p for p in _entries(cache) if not p.startswith(MODEL_STAGES)} == \
        {p for p in _entries(ref_cache) if not p.startswith(MODEL_STAGES)}
    return timings


@pytest.mark.slow
def test_sigkilled_jobs_resume_to_identical_results(tmp_path: Path, _isolated_cache: Path) -> None:
    from dndbench.results.leaderboard import load_scores

    timings = run_kill_chain(tmp_path, _isolated_cache)
    print(json.dumps({k: round(v, 1) for k, v in timings.items()}))
    # a leaderboard over the killed runs and the final one reads the final one only (the run
    # killed while writing has a scores.csv that would clash with it: same setting and units)
    folders = [tmp_path / "runs" / n for n in ("killed-activations", "killed-describing",
                                               "killed-writing", "final")]
    assert (folders[2] / "scores.csv").exists()
    assert {Path(r).name for r in load_scores(folders)["run"]} == {"final"}
