"""The leaderboard's statistics: Holm, Wilcoxon, bootstrap intervals, Kendall's τ, pooling over
layers, costs, roles and chance, and Markdown escaping."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import scipy.stats

from dndbench.results.leaderboard import (
    leaderboard,
    load_costs,
    main,
    md_cell,
    metric_agreement,
    pairs_table,
    to_markdown,
    write_leaderboard,
)
from dndbench.results.statistics import (
    ALL_LAYERS,
    bootstrap_ci,
    holm,
    kendall_tau,
    paired_comparisons,
    wilcoxon_p,
)


def scores(setting: str, values: list[float], layer: str = "fc", metric: str = "m",
           num_units: int | None = None, units: list[int] | None = None,
           **extra: Any) -> pd.DataFrame:
    """A scores table of one setting in the layout ``dndbench`` writes."""
    return pd.DataFrame({
        "setting": setting, "describer": setting, "model": "toynet", "layer": layer,
        "probe": "toyworld", "neuron_set": f"set-{layer}",
        "num_units": num_units or len(values), "unit": units or list(range(len(values))),
        "metric": metric, "value": values, **extra})


# --- Holm ------------------------------------------------------------------------------------

def test_holm_matches_a_hand_computed_example() -> None:
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> max(0.06, 0.04)
    adjusted = holm([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(adjusted, [0.03, 0.06, 0.06, 0.02])


@pytest.mark.parametrize("pvalues, expected", [
    ([0.5, 0.6], [1.0, 1.0]),                     # capped at 1
    ([0.01, float("nan"), 0.02], [0.02, float("nan"), 0.02]),  # NaN is not part of the family
    ([0.04], [0.04]),                             # one test: no adjustment
    ([], []),
])
def test_holm_caps_and_skips_nan(pvalues: list[float], expected: list[float]) -> None:
    np.testing.assert_allclose(holm(pvalues), expected)


# --- Wilcoxon --------------------------------------------------------------------------------

def test_wilcoxon_p_is_scipys_two_sided_signed_rank() -> None:
    diff = [1.5, -0.3, 2.1, 0.8, 1.1, -0.2, 0.9, 1.7]
    assert wilcoxon_p(diff) == pytest.approx(scipy.stats.wilcoxon(diff).pvalue)
    # exact null: all 8 differences positive except ranks 1 and 2 -> W- = 3; P(W- <= 3) = 5/256
    assert wilcoxon_p(diff) == pytest.approx(2 * 5 / 256)


@pytest.mark.parametrize("diff, expected", [
    ([0.0, 0.0, 0.0], 1.0),          # the settings agree on every unit
    ([0.3 - 0.1 - 0.2] * 4, 1.0),    # float noise is not a difference
    ([0.4], float("nan")),           # one pair: no test
    ([], float("nan")),
    ([1, 2, 3, 4, 5, 6], 2 / 64),    # all six positive: the exact two-sided minimum
])
def test_wilcoxon_p_edge_cases(diff: list[float], expected: float) -> None:
    assert wilcoxon_p(diff) == pytest.approx(expected, nan_ok=True)


def test_pairs_use_only_common_units_and_are_holm_adjusted() -> None:
    a = pd.Series([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0], index=range(7))
    b = pd.Series([0.0] * 6, index=range(1, 7))
    c = pd.Series([0.5] * 7, index=range(7))
    pairs = paired_comparisons({"a": a, "b": b, "c": c}).set_index(["setting_a", "setting_b"])
    assert pairs.loc[("a", "b"), "n"] == 6
    assert pairs.loc[("a", "b"), "mean_diff"] == pytest.approx(4.5)
    assert pairs.loc[("b", "c"), "mean_diff"] == pytest.approx(-0.5)
    np.testing.assert_allclose(pairs.p_holm, holm(pairs.p))


# --- bootstrap intervals ---------------------------------------------------------------------

@pytest.mark.parametrize("n", [5, 40, 500])
def test_bootstrap_ci_brackets_the_mean_and_is_reproducible(n: int) -> None:
    values = np.random.default_rng(n).exponential(size=n)
    low, high = bootstrap_ci(values, rng=7)
    assert low < values.mean() < high
    assert bootstrap_ci(values, rng=7) == (low, high)
    assert bootstrap_ci(values, np.random.default_rng(7)) == (low, high)
    if n > 5:  # five values have too few distinct resample means for seeds to differ
        assert bootstrap_ci(values, rng=8) != (low, high)


@pytest.mark.parametrize("values", [[], [0.4], [float("nan"), 0.4]])
def test_bootstrap_ci_needs_two_values(values: list[float]) -> None:
    assert all(np.isnan(bootstrap_ci(values)))


def test_bootstrap_ci_of_a_constant_is_the_constant() -> None:
    assert bootstrap_ci([1.0] * 10) == (1.0, 1.0)


# --- Kendall's tau ---------------------------------------------------------------------------

@pytest.mark.parametrize("second, tau", [([0.1, 0.2, 0.3], 1.0), ([0.3, 0.2, 0.1], -1.0)])
def test_metric_agreement_between_two_metrics(second: list[float], tau: float) -> None:
    settings = ["a", "b", "c"]
    frames = [scores(s, [v] * 4, metric="first") for s, v in zip(settings, [1.0, 2.0, 3.0])]
    frames += [scores(s, [v] * 4, metric="second") for s, v in zip(settings, second)]
    table = leaderboard(pd.concat(frames, ignore_index=True))
    agreement = metric_agreement(table)
    assert len(agreement) == 1
    row = agreement.iloc[0]
    assert (row.metric_a, row.metric_b, row.n_settings) == ("first", "second", 3)
    assert row.tau == pytest.approx(tau)
    assert f"| toynet.fc | toyworld | first | second | 3 | {tau:.2f} |" in to_markdown(table)


def test_kendall_tau_needs_two_settings() -> None:
    assert all(np.isnan(kendall_tau([1.0], [2.0])))


def test_one_metric_prints_no_agreement_section() -> None:
    table = leaderboard(pd.concat([scores("a", [1.0, 2.0]), scores("b", [0.0, 1.0])]))
    assert len(metric_agreement(table)) == 0 and "Kendall" not in to_markdown(table)


# --- layers: one table each and a pooled, unit-weighted one -----------------------------------

def two_layers() -> pd.DataFrame:
    return pd.concat([
        scores("a", [1.0, 1.0, 1.0, 1.0], layer="layer1"),
        scores("b", [0.0, 0.0, 0.0, 0.0], layer="layer1"),
        scores("a", [0.0, 0.0], layer="layer2", num_units=3),
        scores("b", [0.5, 0.5, 0.5], layer="layer2"),
    ], ignore_index=True)


def test_per_layer_tables_and_a_pooled_one() -> None:
    table = leaderboard(two_layers())
    assert list(dict.fromkeys(table.layer)) == ["layer1", "layer2", ALL_LAYERS]
    pooled = table[table.layer == ALL_LAYERS].set_index("setting")
    # unit-weighted: a has 4 units at 1 and 2 at 0 -> 4/6, not the mean of layer means (0.5)
    assert pooled.loc["a", "mean"] == pytest.approx(4 / 6)
    assert pooled.loc["b", "mean"] == pytest.approx(1.5 / 7)
    assert pooled.loc["a", "n"] == 6 and pooled.loc["a", "coverage"] == pytest.approx(6 / 7)
    assert pooled.loc["b", "coverage"] == 1.0
    assert pooled.neuron_set.nunique() == 1 and pooled.neuron_set.iloc[0].startswith("pooled-")
    layer2 = table[table.layer == "layer2"].set_index("setting")
    assert layer2.loc["b", "vs_best"] == "best"
    assert layer2.loc["a", "coverage"] == pytest.approx(2 / 3)
    pairs = pairs_table(table)
    assert pairs is not None
    assert pairs[pairs.layer == ALL_LAYERS].n.tolist() == [6]   # units both scored, all layers
    md = to_markdown(table)
    assert md.index("toynet.layer1") < md.index("toynet.layer2") < md.index("all layers pooled")
    assert "layers layer1, layer2" in md


def test_one_layer_has_no_pooled_table() -> None:
    table = leaderboard(pd.concat([scores("a", [1.0, 2.0]), scores("b", [0.0, 1.0])]))
    assert ALL_LAYERS not in set(table.layer)


# --- roles and chance ------------------------------------------------------------------------

def test_controls_are_marked_and_references_never_best() -> None:
    n = 8
    frame = pd.concat([
        scores("oracle", [1.0] * n, role="reference", chance=0.1),
        scores("dnd", list(np.linspace(0.5, 0.7, n)), role="method", chance=0.1),
        scores("milan", list(np.linspace(0.3, 0.5, n)), role="method", chance=0.1),
        scores("constant", [0.05] * n, role="control", chance=0.1),
    ], ignore_index=True)
    table = leaderboard(frame).set_index("setting")
    assert table.loc["dnd", "vs_best"] == "best"
    assert table.loc["oracle", "vs_best"] == ">"
    assert table.loc["constant", "vs_best"] == "<" and table.loc["milan", "vs_best"] == "<"
    assert table.loc["constant", "role"] == "control"
    assert table.chance.tolist() == pytest.approx([0.1] * 4)
    md = to_markdown(leaderboard(frame))
    assert "| 1 | oracle (reference) | 1.000 |" in md and "constant (control)" in md
    assert "| chance |" in md and "| dnd |" in md


def test_missing_role_means_method() -> None:
    frame = pd.concat([scores("a", [1.0, 2.0], role="control"), scores("b", [0.0, 1.0])])
    table = leaderboard(frame).set_index("setting")
    assert table.loc["b", "role"] == "method" and table.loc["b", "vs_best"] == "best"


# --- costs -----------------------------------------------------------------------------------

def write_run(run_dir: Path, frame: pd.DataFrame, costs: list[dict[str, Any]] | None) -> None:
    run_dir.mkdir(parents=True)
    frame.to_csv(run_dir / "scores.csv", index=False)
    if costs is not None:
        pd.DataFrame(costs).to_csv(run_dir / "costs.csv", index=False)


def test_costs_join_by_setting_and_layer_and_pool_unit_weighted(tmp_path: Path) -> None:
    write_run(tmp_path / "run", two_layers(), [
        {"setting": "a", "describer": "a", "layer": "layer1", "units": 4, "seconds": 8.0,
         "seconds_per_unit": 2.0, "captions_per_unit": 1.0, "llm_tokens_per_unit": 5.0},
        {"setting": "a", "describer": "a", "layer": "layer2", "units": 2, "seconds": 2.0,
         "seconds_per_unit": 1.0, "captions_per_unit": 4.0, "llm_tokens_per_unit": None},
    ])
    costs = load_costs([tmp_path])
    assert costs is not None
    table = leaderboard(pd.read_csv(tmp_path / "run" / "scores.csv"), costs=costs)
    a = table[table.setting == "a"].set_index("layer")
    assert a.loc["layer1", "seconds_per_unit"] == 2.0
    assert a.loc["layer2", "captions_per_unit"] == 4.0
    assert a.loc[ALL_LAYERS, "seconds_per_unit"] == pytest.approx(10.0 / 6)
    assert a.loc[ALL_LAYERS, "captions_per_unit"] == pytest.approx((4 * 1 + 2 * 4) / 6)
    assert a.loc["layer1", "llm_tokens_per_unit"] == 5.0  # unknown on layer2: unknown pooled
    assert np.isnan(a.loc[ALL_LAYERS, "llm_tokens_per_unit"])
    assert table[table.setting == "b"].seconds_per_unit.isna().all()
    assert main([str(tmp_path / "run"), "--out", str(tmp_path / "leaderboard")]) == 0
    written = pd.read_csv(tmp_path / "leaderboard.csv")
    assert {"seconds_per_unit", "captions_per_unit"} <= set(written.columns)
    md = (tmp_path / "leaderboard.md").read_text()
    assert "| s/unit |" in md and "| 2 |" in md and "| — |" in md
    for name in ["pairs.csv", "metric_agreement.csv", "leaderboard.png"]:
        assert (tmp_path / name).is_file(), name


def test_no_costs_file_means_no_cost_columns(tmp_path: Path) -> None:
    write_run(tmp_path / "run", scores("a", [1.0, 2.0]), None)
    assert load_costs([tmp_path]) is None
    table = leaderboard(pd.read_csv(tmp_path / "run" / "scores.csv"))
    assert "seconds_per_unit" not in table and "s/unit" not in to_markdown(table)


def test_pairs_csv_is_long_with_group_columns(tmp_path: Path) -> None:
    table = leaderboard(pd.concat([scores(s, [v, v + 1, v + 2]) for s, v in
                                   [("a", 3.0), ("b", 2.0), ("c", 1.0)]]))
    write_leaderboard(table, tmp_path / "leaderboard")
    pairs = pd.read_csv(tmp_path / "pairs.csv")
    assert list(pairs.columns) == ["model", "layer", "neuron_set", "probe", "metric",
                                   "setting_a", "setting_b", "n", "mean_diff", "p", "p_holm"]
    assert list(zip(pairs.setting_a, pairs.setting_b)) == [("a", "b"), ("a", "c"), ("b", "c")]
    assert pairs.mean_diff.tolist() == [1.0, 2.0, 1.0]
    # three positive differences: exact two-sided p = 2 / 2**3; Holm over 3 pairs: 3 * 0.25
    assert pairs.p.tolist() == pytest.approx([0.25] * 3)
    assert pairs.p_holm.tolist() == pytest.approx([0.75] * 3)


# --- Markdown escaping -----------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("a|b<i>", "a\\|b&lt;i&gt;"),
    ("x & y", "x &amp; y"),
    ("two\nlines", "two lines"),
    ("dnd(beta=1)", "dnd(beta=1)"),
])
def test_md_cell_escapes(text: str, expected: str) -> None:
    assert md_cell(text) == expected


def test_setting_names_are_escaped_in_the_table() -> None:
    table = leaderboard(pd.concat([scores("a|b<i>", [1.0, 2.0]), scores("plain", [0.0, 1.0])]))
    row = next(line for line in to_markdown(table).splitlines() if "a\\|b" in line)
    assert row.startswith("| 1 | a\\|b&lt;i&gt; | 1.500 |")
    assert row.replace("\\|", "").count("|") == 8  # 7 cells: the name added no column


def test_planted_units_get_a_pooled_group_per_kind_of_concept() -> None:
    kinds = {"layer2": ["single", "polysemantic", "single"], "layer3": ["open-vocabulary", "single"]}
    table = leaderboard(pd.concat([
        scores(s, values, layer=layer, kind=kinds[layer])
        for s, per_layer in (("a", {"layer2": [1.0, 0.0, 1.0], "layer3": [0.0, 1.0]}),
                             ("b", {"layer2": [0.0, 1.0, 0.0], "layer3": [1.0, 0.0]}))
        for layer, values in per_layer.items()], ignore_index=True))
    by_kind = table[table.layer.str.startswith(ALL_LAYERS + ", ")].set_index(["layer", "setting"])
    assert sorted(set(by_kind.index.get_level_values(0))) == [
        f"{ALL_LAYERS}, open-vocabulary", f"{ALL_LAYERS}, polysemantic", f"{ALL_LAYERS}, single"]
    single = by_kind.loc[f"{ALL_LAYERS}, single"]
    assert single.loc["a", "n"] == 3 and single.loc["a", "mean"] == pytest.approx(1.0)
    assert single.loc["b", "mean"] == pytest.approx(0.0)
    assert by_kind.loc[(f"{ALL_LAYERS}, polysemantic", "b"), "mean"] == 1.0
    assert by_kind.loc[(f"{ALL_LAYERS}, open-vocabulary", "a"), "coverage"] == 1.0
    # the ordinary pooled group still counts every unit once
    pooled = table[table.layer == ALL_LAYERS].set_index("setting")
    assert pooled.loc["a", "n"] == 5
    assert "planted units of kind single" in to_markdown(table)
