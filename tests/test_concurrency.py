"""Parallel jobs on one cache: the call cache's first use, distinct run folders, one training
per toy model, and every row written."""
from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

JOBS = 8
UNITS = [0, 1, 2]
#: a metric that needs no model (so the test measures the jobs, not an embedder's loading)
METRIC_PLUGIN = textwrap.dedent('''
    import pandas as pd

    from dndbench.metrics.base import METRICS, Metric


    @METRICS.register("label_length")
    class LabelLength(Metric):
        """The length of each label, in characters."""

        def score(self, descriptions, ctx):
            return pd.DataFrame({"unit": descriptions["unit"], "metric": "label_length",
                                 "value": descriptions["label"].str.len().astype(float)})
''')
#: the smallest toy world: both toy models (ToyNet, the toy captioner) train on first use
SMALL = ["describer=caption_word", "metric=label_length",
         f"neurons.units=[{','.join(map(str, UNITS))}]", "model.train_images=64",
         "model.epochs=1", "captioner.train_images=64", "captioner.epochs=1", "probe.size=24",
         "progress=false"]


def _hammer(root: str, worker: int, barrier: Any) -> None:
    from dndbench.backends.call_cache import CallCache

    barrier.wait()  # every process makes its first connection at the same moment
    cache = CallCache(root)
    for i in range(20):
        cache.put_many({f"{worker}-{i}-{j}": [worker, i, j] for j in range(5)})
    if cache.get(f"{worker}-19-4") != [worker, 19, 4]:
        raise SystemExit(3)


def test_call_cache_first_use_by_many_processes(tmp_path: Path) -> None:
    """Eight processes open one new call cache at once and write: none sees 'database is
    locked' (exit status 1 with a traceback), and every entry is stored."""
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(JOBS)
    workers = [context.Process(target=_hammer, args=(str(tmp_path), w, barrier))
               for w in range(JOBS)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=300)
    assert [w.exitcode for w in workers] == [0] * JOBS
    from dndbench.backends.call_cache import CallCache

    assert CallCache(tmp_path).count() == JOBS * 20 * 5


def test_call_cache_switches_to_wal_while_another_process_writes(tmp_path: Path) -> None:
    """A database another process is writing in rollback mode (as a new database's creator
    does): the switch to WAL waits for the write instead of failing with 'database is
    locked'."""
    import sqlite3
    import threading

    from dndbench.backends.call_cache import _SCHEMA, CallCache

    writer = sqlite3.connect(tmp_path / CallCache.FILENAME, check_same_thread=False)
    writer.execute(_SCHEMA)
    writer.commit()
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("INSERT INTO calls VALUES (?, ?, ?)", ("other", "json", b"1"))
    threading.Timer(0.5, writer.commit).start()
    cache = CallCache(tmp_path, timeout_s=30)
    cache.put("mine", [1, 2])
    assert cache.get("mine") == [1, 2] and cache.get("other") == 1
    with sqlite3.connect(tmp_path / CallCache.FILENAME) as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    writer.close()


def test_default_run_folder_is_unique_per_process() -> None:
    """The default run and sweep folders carry microseconds and the process id."""
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    from dndbench.cli import setup

    setup([])
    with initialize_config_module("dndbench.conf", version_base="1.3"):
        cfg = compose("config", return_hydra_config=True)
    for key in ("hydra.run.dir", "hydra.sweep.dir"):
        folder = str(OmegaConf.select(cfg, key))
        assert folder.endswith(f"-{os.getpid()}"), folder
        assert len(Path(folder).name.split("-")) == 5, folder  # H-M-S-microseconds-pid


@pytest.mark.slow
def test_eight_jobs_at_once_on_one_empty_cache(tmp_path: Path) -> None:
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "label_length.py").write_text(METRIC_PLUGIN)
    cache = tmp_path / "cache"
    env = {**os.environ, "DNDBENCH_CACHE": str(cache)}
    jobs = [subprocess.Popen([sys.executable, "-m", "dndbench", *SMALL], cwd=tmp_path, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(JOBS)]
    outputs = [job.communicate(timeout=1200) for job in jobs]
    for job, (_, err) in zip(jobs, outputs):
        assert job.returncode == 0, err[-3000:]
    run_dirs = sorted({line.split("results: ", 1)[1].strip() for out, _ in outputs
                       for line in out.splitlines() if line.startswith("results: ")})
    assert len(run_dirs) == JOBS  # no two jobs share a run folder
    logs = "".join(out for out, _ in outputs)
    assert logs.count("training toynet") == 1
    assert logs.count("training the toy captioner") == 1
    trained = [p for kind in ("toynet", "toy_backends") for p in (cache / kind).iterdir()
               if p.is_dir()]
    assert len(trained) == 2, trained
    for run_dir in map(Path, run_dirs):
        descriptions = pd.read_csv(run_dir / "descriptions.csv")
        scores = pd.read_csv(run_dir / "scores.csv")
        assert sorted(descriptions["unit"]) == UNITS
        assert sorted(scores["unit"]) == UNITS and scores["value"].notna().all()
