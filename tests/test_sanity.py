"""check-metrics: the description variants, the paired test, per-metric rows (errors included)
and the command on a small toy world."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from test_metrics_text import FakeModel, OneHotWords, make_ctx  # noqa: F401  (registers the embedder)

from dndbench.context import Context
from dndbench.errors import ConfigError
from dndbench.metrics.base import METRICS, Metric, MetricConfig
from dndbench.metrics.sanity import (
    CONSTANT,
    SanityRow,
    ToyCase,
    check_metric,
    paired_test,
    parse_settings,
    to_table,
    variants,
)
from dndbench.registry import Entry
from dndbench.toyworld.world import CATEGORIES

PLANTED = {0: "red", 1: "striped", 2: "brick wall", 3: "star", 4: "water", 5: "yellow"}


class SixPlanted(FakeModel):
    def planted_concepts(self, layer: str) -> dict[int, str]:
        return dict(PLANTED) if layer == "layer3" else {}


def case(tmp_path: Path) -> ToyCase:
    ctx = make_ctx(tmp_path, units=list(PLANTED))
    ctx.model = SixPlanted()
    return ToyCase(ctx, dict(PLANTED))


@pytest.mark.parametrize("truth,missing", [
    ("red circle", "red"), ("red or blue", "red"), ("red or blue star", "red"),
    ("striped red square", "striped red")])
def test_missing_drops_a_part(truth: str, missing: str) -> None:
    v = variants(truth, np.random.default_rng(0))
    assert v["truth"] == truth and v["missing"] == missing and v["constant"] == CONSTANT


@pytest.mark.parametrize("truth", ["yellow", "brick wall", "star", "dotted"])
def test_missing_of_a_single_concept_is_a_sibling_and_extra_adds_another_category(truth: str) -> None:
    v = variants(truth, np.random.default_rng(3))
    category = next(c for c, names in CATEGORIES.items() if truth in names)
    assert v["missing"] in CATEGORIES[category] and v["missing"] != truth
    added = v["extra"].removeprefix(f"{truth} and ")
    assert added != v["extra"] and added not in CATEGORIES[category]
    assert any(added in names for names in CATEGORIES.values())


def test_paired_test() -> None:
    assert paired_test(np.ones(6), np.zeros(6), 0.05) == (pytest.approx(1 / 64), True)
    assert paired_test(np.ones(4), np.zeros(4), 0.05)[1] is False  # 4 units cannot reach p < 0.05
    assert paired_test(np.ones(6), np.ones(6), 0.05) == (1.0, False)  # no difference at all
    assert paired_test(np.zeros(6), np.ones(6), 0.05)[1] is False


def rows_by_figure(rows: list[SanityRow]) -> dict[str, SanityRow]:
    return {r.figure: r for r in rows}


def test_planted_concept_outcome(tmp_path: Path) -> None:
    rows = rows_by_figure(check_metric("planted_concept", [case(tmp_path)], tmp_path,
                                       options={"embedder": "test_one_hot_words"}))
    hit, rank = rows["planted_hit"], rows["planted_rank"]
    assert hit.n == 6 and hit.truth == 1.0
    # naming the concept plus another one is still a hit: the extra-label test must fail
    assert hit.passed == {"missing": True, "extra": False, "constant": True}
    assert hit.means["extra"] == 1.0
    # the extra word halves the concept's cosine lead: ties with the added concept lower the rank
    assert rank.passed == {"missing": True, "extra": True, "constant": True}
    assert rank.means["extra"] < 1.0


def test_milannotations_outcome_uses_its_sanity_options(tmp_path: Path) -> None:
    rows = check_metric("milannotations", [case(tmp_path)], tmp_path,
                        options={"embedder": "test_one_hot_words"})
    assert [r.figure for r in rows] == ["milannotations_similarity"]  # inter_annotator is a reference
    assert rows[0].passed == {"missing": True, "extra": True, "constant": True}


def test_not_applicable_and_errors_are_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class Broken(Metric[MetricConfig]):
        """Raises while scoring."""

        def score(self, descriptions: pd.DataFrame, ctx: Context) -> pd.DataFrame:
            raise RuntimeError("no luck\nsecond line")

    monkeypatch.setitem(METRICS._entries, "test_broken", Entry("test_broken", Broken, "test"))
    cases = [case(tmp_path)]
    broken = check_metric("test_broken", cases, tmp_path)
    assert [r.status for r in broken] == ["error: RuntimeError: no luck"]
    final = check_metric("final_layer_similarity", cases, tmp_path)
    assert [r.status for r in final] == ["not applicable on the toy world"]
    table = to_table(broken + final)
    assert "error: RuntimeError: no luck" in table and "not applicable" in table


def test_parse_settings() -> None:
    assert parse_settings(["a.x=3", "a.y=mpnet", "b.z=0.5"]) == {"a": {"x": 3, "y": "mpnet"}, "b": {"z": 0.5}}
    with pytest.raises(ConfigError, match="METRIC.OPTION=VALUE"):
        parse_settings(["novalue"])


@pytest.mark.slow
def test_check_metrics_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The subcommand on the shipped toy network (a network trained for a few seconds has no
    unit that passes the planted-unit gate), two metrics, with the real MiniLM."""
    from dndbench.cli import main

    out = tmp_path / "sanity.json"
    code = main(["check-metrics", "--metrics", "planted_concept,final_layer_similarity",
                 "--probe-size", "20",
                 "--cache-dir", str(tmp_path / "cache"), "--json", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| planted_concept | planted_hit |" in printed
    rows: list[dict[str, Any]] = json.loads(out.read_text())
    by_figure = {r["figure"]: r for r in rows}
    assert set(by_figure) == {"planted_hit", "planted_rank", "final_layer_similarity", "final_layer_top1"}
    assert by_figure["planted_hit"]["passed"] == {"missing": True, "extra": False, "constant": True}
    assert by_figure["final_layer_similarity"]["n"] == 12
    assert by_figure["final_layer_similarity"]["passed"]["constant"] is True


def test_unknown_metric_name_is_config_error(tmp_path: Path) -> None:
    from dndbench.cli import main

    assert main(["check-metrics", "--metrics", "planted_concpt", "--cache-dir", str(tmp_path)]) == 2
