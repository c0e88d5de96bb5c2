"""Leaderboard: merging run directories, bootstrap intervals, coverage, paired comparison."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dndbench.errors import DataError
from dndbench.results.leaderboard import (
    bootstrap_ci,
    leaderboard,
    load_scores,
    main,
    pairs_table,
    to_markdown,
)


def write_scores(run_dir: Path, setting: str, values: list[float], num_units: int) -> None:
    run_dir.mkdir(parents=True)
    pd.DataFrame({
        "setting": setting, "describer": setting.split("(")[0], "model": "toynet", "layer": "fc",
        "probe": "toyworld", "neuron_set": "abc123", "num_units": num_units,
        "unit": range(len(values)), "metric": "final_layer_similarity", "value": values,
    }).to_csv(run_dir / "scores.csv", index=False)


def test_bootstrap_interval_contains_mean_and_shrinks_with_n() -> None:
    rng = np.random.default_rng(0)
    small = rng.normal(size=20)
    large = rng.normal(size=2000)
    lo_s, hi_s = bootstrap_ci(small, np.random.default_rng(1))
    lo_l, hi_l = bootstrap_ci(large, np.random.default_rng(1))
    assert lo_s < small.mean() < hi_s and lo_l < large.mean() < hi_l
    assert hi_l - lo_l < hi_s - lo_s


def test_sweep_directory_merges_into_one_table(tmp_path: Path) -> None:
    # six paired units: the fewest at which a two-sided exact Wilcoxon test can reach p < 0.05
    write_scores(tmp_path / "sweep" / "0", "dnd(beta=1)", [0.9] * 8 + [0.8] * 2, 10)
    write_scores(tmp_path / "sweep" / "1", "dnd(beta=5)", [0.2, 0.3, 0.1, 0.2, 0.25, 0.15], 10)
    table = leaderboard(load_scores([tmp_path / "sweep"]))
    assert list(table.setting) == ["dnd(beta=1)", "dnd(beta=5)"]
    best, other = table.iloc[0], table.iloc[1]
    assert best.vs_best == "best" and other.vs_best == "<"
    assert other.p_vs_best == pytest.approx(2 / 2**6)
    assert best.coverage == 1.0 and other.coverage == 0.6 and other.n == 6
    assert best["mean"] == pytest.approx(0.88)
    md = to_markdown(table)
    assert "| 1 | dnd(beta=1) | 0.880 |" in md


def test_settings_with_equal_means_share_a_rank(tmp_path: Path) -> None:
    from dndbench.results.report_cards import boards
    from dndbench.results.statistics import tied_ranks

    assert tied_ranks([0.9, 0.9, 0.5, float("nan"), 0.5]) == [1, 1, 3, 5, 3]
    write_scores(tmp_path / "a", "netdissect", [1.0, 1.0, 1.0], 3)
    write_scores(tmp_path / "b", "clip_dissect", [1.0, 1.0, 1.0], 3)
    write_scores(tmp_path / "c", "milan", [0.2, 0.3, 0.1], 3)
    table = leaderboard(load_scores([tmp_path]))
    md = to_markdown(table)
    assert "| 1 | clip_dissect | 1.000 |" in md and "| 1 | netdissect | 1.000 |" in md
    assert "| 3 | milan | 0.200 |" in md
    assert [row.rank for row in boards(table, pairs_table(table))[0].rows] == [1, 1, 3]


def test_five_paired_units_cannot_be_significant(tmp_path: Path) -> None:
    """Exact two-sided Wilcoxon at n = 5: the smallest p is 2 / 2**5 = 0.0625, so ``=``."""
    write_scores(tmp_path / "0", "dnd(beta=1)", [0.9] * 8 + [0.8] * 2, 10)
    write_scores(tmp_path / "1", "dnd(beta=5)", [0.2, 0.3, 0.1, 0.2, 0.25], 10)
    other = leaderboard(load_scores([tmp_path])).iloc[1]
    assert other.vs_best == "=" and other.p_vs_best == pytest.approx(0.0625)
    assert other.coverage == 0.5 and other.n == 5


def test_cli_writes_markdown_and_csv(tmp_path: Path) -> None:
    write_scores(tmp_path / "a", "netdissect", [0.5, 0.6, 0.7], 3)
    write_scores(tmp_path / "b", "clip_dissect", [0.5, 0.6, 0.71], 3)
    assert main([str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "lb")]) == 0
    csv = pd.read_csv(tmp_path / "lb.csv")
    assert set(csv.setting) == {"netdissect", "clip_dissect"}
    assert (tmp_path / "lb.md").read_text().count("|") > 10
    assert (tmp_path / "lb.png").stat().st_size > 0
    pairs = pd.read_csv(tmp_path / "lb_pairs.csv")
    assert len(pairs) == 1 and {"setting_a", "setting_b", "p", "p_holm"} <= set(pairs.columns)
    assert (tmp_path / "lb_metric_agreement.csv").is_file()


def test_no_scores_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no scores.csv"):
        load_scores([tmp_path])


def test_ties_mark_the_first_listed_setting_best(tmp_path: Path) -> None:
    write_scores(tmp_path / "x", "b_method", [0.5, 0.7], 2)
    write_scores(tmp_path / "y", "a_method", [0.7, 0.5], 2)
    table = leaderboard(load_scores([tmp_path]))
    assert list(table.setting) == ["a_method", "b_method"]
    assert list(table.vs_best) == ["best", "="]
