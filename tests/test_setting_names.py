"""Setting names: distinct configs never share a name, values are never mangled, a readable
``label_as`` changes no cache key, and a merge refuses two runs that share a name."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from dndbench.cache import stable_hash
from dndbench.describers.base import DESCRIBERS
from dndbench.errors import DataError
from dndbench.pipeline import label_value, setting_label
from dndbench.results.leaderboard import load_scores


@pytest.mark.parametrize("a, b", [
    ({"name": "published", "path": "a/fc.csv"}, {"name": "published", "path": "b/fc.csv"}),
    ({"name": "published", "path": "x.csv"}, {"name": "published", "path": "x.csv",
                                              "format": "milan"}),
    ({"name": "constant", "label": "a, b=c"}, {"name": "constant", "label": "a"}),
    ({"name": "constant", "label": "x y"}, {"name": "constant", "label": "x_y"}),
    ({"name": "shuffled", "source": "file:/a/d.csv"}, {"name": "shuffled", "source": "file:/b/d.csv"}),
], ids=["two-folders", "two-formats", "comma-in-a-value", "space-in-a-value", "two-files"])
def test_distinct_configs_get_distinct_labels(a: dict[str, str], b: dict[str, str]) -> None:
    first = DESCRIBERS.config(a.pop("name"), **a)
    second = DESCRIBERS.config(b.pop("name"), **b)
    assert setting_label(first) != setting_label(second)


def test_published_settings_are_named_after_the_method_whose_file_they_read() -> None:
    dnd = setting_label(DESCRIBERS.config("published", path="/data/DnD/fc.csv"))
    milan = setting_label(DESCRIBERS.config("published", path="/data/MILAN/fc.csv",
                                            format="milan"))
    assert dnd.startswith("published[dnd](path=fc.csv~") and milan.startswith("published[milan](")


def test_values_are_quoted_not_mangled() -> None:
    assert label_value("a, b") == '"a, b"' and label_value("plain") == "plain"
    assert setting_label(DESCRIBERS.config("netdissect", quantile=0.01)) == "netdissect(quantile=0.01)"


def test_label_as_names_the_setting_and_is_not_part_of_the_cache_key() -> None:
    plain = DESCRIBERS.config("netdissect", quantile=0.01)
    named = DESCRIBERS.config("netdissect", quantile=0.01, label_as="NetDissect 1%")
    assert setting_label(named) == "NetDissect 1%"
    assert stable_hash("descriptions/v1", plain) == stable_hash("descriptions/v1", named)


def _scores(folder: Path, value: float) -> Path:
    folder.mkdir(parents=True)
    pd.DataFrame([{"setting": "s", "describer": "d", "model": "m", "layer": "fc", "probe": "p",
                   "neuron_set": "abc123", "num_units": 1, "unit": 0, "metric": "x",
                   "value": value, "role": "method"}]).to_csv(folder / "scores.csv", index=False)
    return folder


def test_merging_two_runs_with_one_name_is_an_error_naming_both(tmp_path: Path) -> None:
    a, b = _scores(tmp_path / "a", 0.1), _scores(tmp_path / "b", 0.2)
    with pytest.raises(DataError) as err:
        load_scores([tmp_path])
    assert str(a) in str(err.value) and str(b) in str(err.value) and "label_as" in str(err.value)
    assert "\n" not in str(err.value)


def test_a_run_read_twice_is_read_once(tmp_path: Path) -> None:
    a = _scores(tmp_path / "a", 0.1)
    assert len(load_scores([a, a / "scores.csv", tmp_path])) == 1
