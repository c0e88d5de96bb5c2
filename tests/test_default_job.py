"""The default job end to end (a small configuration): every default describer, the metrics,
the run directory, and a second run that recomputes nothing."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from dndbench.config import default_describers

SMALL = ["model.train_images=600", "model.epochs=1", "probe.size=160"]


def run(args: list[str], cache: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DNDBENCH_CACHE": str(cache)}
    return subprocess.run([sys.executable, "-m", "dndbench", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=3000)


@pytest.mark.slow
def test_default_job_end_to_end_and_warm_rerun(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = run([*SMALL, f"hydra.run.dir={tmp_path / 'first'}"], cache, tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    run_dir = tmp_path / "first"
    for name in ["descriptions.csv", "scores.csv", "summary.json", "run.json", "leaderboard.md",
                 "leaderboard.csv", "leaderboard.png", "report.html"]:
        assert (run_dir / name).is_file(), name
    expected = {d.name for d in default_describers()}
    descriptions = pd.read_csv(run_dir / "descriptions.csv")
    assert set(descriptions.describer) == expected
    assert (descriptions.groupby("describer").unit.nunique() == 12).all()
    summary = json.loads((run_dir / "summary.json").read_text())
    for name in expected:
        metrics = summary["describers"][name]["metrics"]
        # the final-layer metrics and the held-out activation metrics apply to the fc units
        assert {"final_layer_similarity", "final_layer_top1", "simulation",
                "cosy_auc", "cosy_mad"} <= set(metrics)
        assert metrics["final_layer_similarity"]["n"] == 12
    board = pd.read_csv(run_dir / "leaderboard.csv")
    assert set(board.setting) == expected and (board.coverage == 1.0).all()
    record = json.loads((run_dir / "run.json").read_text())
    assert record["neurons"]["layer"] == "fc" and record["counts"]["units"] == 12
    assert "torch" in record["versions"]

    second = run([*SMALL, f"hydra.run.dir={tmp_path / 'second'}"], cache, tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    again = json.loads((tmp_path / "second" / "run.json").read_text())
    assert all(d["from_cache"] for d in again["describers"].values())
    assert again["counts"].get("images_forwarded", 0) == 0
    assert not again["counts"]["cache_misses"]
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "second" / "descriptions.csv"),
                                  descriptions)
