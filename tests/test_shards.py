"""``neurons.shard=i/n``: a deterministic split of a neuron set across jobs, and the merge of the
shards' runs by ``leaderboard`` into the whole set's table (docs/cluster.md)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from dndbench.cli import main
from dndbench.errors import ConfigError, DataError
from dndbench.neurons import NeuronsConfig, NeuronSet, Shard, parse_shard, shard_units
from dndbench.results.leaderboard import incomplete_shards, leaderboard, load_costs, load_scores

#: a plugin file with a tiny model and probe (the plugin kit's: seeded weights, no training), a
#: describer and a metric, so whole jobs run in seconds; also used by tests/test_launchers.py
PLUGIN = textwrap.dedent('''
    """Tiny components for scale-out tests."""
    import os
    from dataclasses import dataclass

    import pandas as pd

    from dndbench.describers.base import DESCRIBERS, Describer, DescriberConfig, Description
    from dndbench.metrics.base import METRICS, Metric
    from dndbench.models.base import MODELS
    from dndbench.probes.base import PROBES
    from dndbench.testing.kit import TinyModel, TinyProbe


    @MODELS.register("kit_tiny")
    class KitTiny(TinyModel):
        """The plugin kit's tiny CNN."""


    @PROBES.register("kit_probe")
    class KitProbe(TinyProbe):
        """The plugin kit's tiny annotated probe."""


    @DESCRIBERS.register("unit_word")
    class UnitWord(Describer):
        """Labels unit u with a word repeated 1 + u % 4 times; records the process id."""

        needs_weights = False

        @dataclass
        class Config(DescriberConfig):
            word: str = "ab"

        def describe(self, ctx):
            return [Description(unit=u, label=self.config.word * (1 + u % 4),
                                extras={"pid": os.getpid()}) for u in ctx.units]


    @METRICS.register("label_length")
    class LabelLength(Metric):
        """The length of each label, in characters."""

        def score(self, descriptions, ctx):
            return pd.DataFrame({"unit": descriptions["unit"], "metric": "label_length",
                                 "value": descriptions["label"].str.len().astype(float)})
''')
#: a job on the plugin's tiny model: a built-in describer (netdissect) beside the plugin's
JOB = ["model=kit_tiny", "probe=kit_probe", "metric=label_length", "progress=false"]
LAYER = "neurons.layer=layer1"  # 16 units
DESCRIBERS = "describer=netdissect,unit_word"
#: the leaderboard columns two tables of the same units must agree on
COMPARED = ["model", "layer", "neuron_set", "probe", "metric", "setting", "mean", "ci_low",
            "ci_high", "n", "coverage", "vs_best", "p_vs_best"]


def plugin_folder(root: Path) -> Path:
    """``root/plugins`` holding :data:`PLUGIN`."""
    (root / "plugins").mkdir(parents=True, exist_ok=True)
    (root / "plugins" / "kit_parts.py").write_text(PLUGIN)
    return root / "plugins"


def run_dndbench(args: list[str], cwd: Path, env: dict[str, str] | None = None,
                 timeout: int = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dndbench", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


# -- the split ---------------------------------------------------------------------------------
@pytest.mark.parametrize("size, count", [(16, 2), (10, 3), (7, 7), (5, 1), (12, 5)])
def test_shards_are_contiguous_disjoint_and_cover_the_set(size: int, count: int) -> None:
    units = tuple(range(100, 100 + size))
    parts = [shard_units(units, Shard(i, count)) for i in range(count)]
    assert sum(parts, ()) == units  # contiguous, in order, every unit once
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert [len(p) for p in parts] == sorted((len(p) for p in parts), reverse=True)


def test_a_shard_carries_the_whole_sets_key_and_size() -> None:
    whole = NeuronSet("m", "layer1", tuple(range(10)), 16)
    shard = NeuronSet("m", "layer1", tuple(range(5, 10)), 16, shard=Shard(1, 2),
                      full_units=tuple(range(10)))
    assert shard.key == whole.key and shard.size == whole.size == 10
    assert shard.to_dict()["shard"] == "1/2" and shard.to_dict()["units"] == [5, 6, 7, 8, 9]
    assert "shard" not in whole.to_dict()


@pytest.mark.parametrize("value, message", [
    ("2/2", "shard 2 does not exist among 2"), ("5/3", "shard 5 does not exist among 3"),
    ("0/0", "at least 1"), ("abc", "not of the form i/n"), ("1", "not of the form i/n"),
    ("-1/2", "not of the form i/n"), ("0/2/4", "not of the form i/n"), ("1/", "not of the form"),
    ("a/b", "not of the form i/n"),
])
def test_bad_shard_values_are_refused(value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_shard(value)
    with pytest.raises(ConfigError, match=message):
        NeuronsConfig(shard=value)


def test_empty_shard_means_the_whole_set() -> None:
    assert parse_shard("") is None and parse_shard(None) is None
    assert parse_shard(" 1/3 ") == Shard(1, 3)


@pytest.mark.parametrize("value", ["2/2", "0/0", "x/2", "1", "3/-1"])
def test_bad_shard_on_the_command_line_exits_2_with_one_line(
        value: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    assert main([f"neurons.shard={value}", f"hydra.run.dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: neurons.shard=") and err.strip().count("\n") == 0, err
    assert "Traceback" not in err and not (tmp_path / "run").exists()


def test_more_shards_than_units_fails_the_job_with_one_line(tmp_path: Path) -> None:
    plugin_folder(tmp_path)
    out = run_dndbench([*JOB, "describer=unit_word", "neurons.layer=fc", "neurons.shard=0/5",
                        f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert out.returncode == 2, out.stderr[-2000:]
    err = out.stderr.strip()
    assert err.startswith("error: neurons.shard=0/5") and "\n" not in err, err
    assert "use at most 4 shards" in err
    assert not (tmp_path / "run").exists()  # nothing half-written


# -- merging shards ------------------------------------------------------------------------------
def write_run(run_dir: Path, setting: str, units: list[int], shard: str | None,
              num_units: int = 6) -> None:
    """A run directory with scores (value = unit) and costs, as a shard's job writes them."""
    run_dir.mkdir(parents=True)
    scores = pd.DataFrame({"setting": setting, "describer": setting, "model": "m",
                           "layer": "layer1", "probe": "p", "neuron_set": "full0123",
                           "num_units": num_units, "unit": units, "metric": "score",
                           "value": [float(u) for u in units], "role": "method"})
    costs = pd.DataFrame({"setting": [setting], "describer": [setting], "layer": ["layer1"],
                          "units": [len(units)], "seconds": [float(len(units))],
                          "seconds_per_unit": [1.0], "llm_calls_per_unit": [2.0]})
    if shard is not None:
        scores["shard"], costs["shard"] = shard, shard
    scores.to_csv(run_dir / "scores.csv", index=False)
    costs.to_csv(run_dir / "costs.csv", index=False)


def test_shards_merge_into_the_whole_sets_row(tmp_path: Path) -> None:
    write_run(tmp_path / "whole", "a", [0, 1, 2, 3, 4, 5], None)
    write_run(tmp_path / "s0", "a", [0, 1, 2], "0/2")
    write_run(tmp_path / "s1", "a", [3, 4, 5], "1/2")
    whole = leaderboard(load_scores([tmp_path / "whole"]))
    # read in the "wrong" order: the figures do not depend on it
    merged = leaderboard(load_scores([tmp_path / "s1", tmp_path / "s0"]))
    pd.testing.assert_frame_equal(whole[COMPARED], merged[COMPARED])
    assert list(merged["shards"]) == ["2 of 2"] and incomplete_shards(merged) == []
    costs = load_costs([tmp_path / "s0", tmp_path / "s1"])
    assert costs is not None and len(costs) == 1 and "shard" not in costs
    row = costs.iloc[0]
    assert row["units"] == 6 and row["seconds"] == 6.0 and row["llm_calls_per_unit"] == 2.0


def test_a_missing_shard_shows_in_the_table_and_the_warning(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from dndbench.results.leaderboard import main as leaderboard_main
    from dndbench.results.leaderboard import to_markdown

    write_run(tmp_path / "s0", "a", [0, 1], "0/3")
    write_run(tmp_path / "s2", "a", [4, 5], "2/3")
    table = leaderboard(load_scores([tmp_path]))
    assert table.iloc[0]["coverage"] == pytest.approx(4 / 6)
    assert table.iloc[0]["shards"] == "2 of 3, missing 1"
    assert "missing 1" in to_markdown(table) and "**Incomplete:**" in to_markdown(table)
    assert leaderboard_main([str(tmp_path), "--out", str(tmp_path / "lb")]) == 0
    err = capsys.readouterr().err
    assert "warning: incomplete shards: a on m.layer1 (score): shards 2 of 3, missing 1" in err


def test_overlapping_shards_are_an_error(tmp_path: Path) -> None:
    write_run(tmp_path / "s0", "a", [0, 1, 2], "0/2")
    write_run(tmp_path / "s0_again", "a", [0, 1, 2], "0/2")
    with pytest.raises(DataError, match="twice: in shard 0/2 .* and in shard 0/2"):
        load_scores([tmp_path])


def test_a_shard_beside_the_unsharded_run_is_an_error(tmp_path: Path) -> None:
    write_run(tmp_path / "s0", "a", [0, 1, 2], "0/2")
    write_run(tmp_path / "whole", "a", [0, 1, 2, 3, 4, 5], None)
    with pytest.raises(DataError, match="in the whole set"):
        load_scores([tmp_path])


def test_shards_of_different_splits_are_an_error(tmp_path: Path) -> None:
    write_run(tmp_path / "s0", "a", [0, 1, 2], "0/2")
    write_run(tmp_path / "t2", "a", [4, 5], "2/3")
    with pytest.raises(DataError, match="split into 2 and 3 parts"):
        load_scores([tmp_path])


def test_shards_of_different_settings_do_not_collide(tmp_path: Path) -> None:
    write_run(tmp_path / "a0", "a", [0, 1, 2], "0/2")
    write_run(tmp_path / "b0", "b", [0, 1, 2], "0/2")
    write_run(tmp_path / "b1", "b", [3, 4, 5], "1/2")
    table = leaderboard(load_scores([tmp_path]))
    assert dict(zip(table.setting, table.shards)) == {"a": "1 of 2, missing 1", "b": "2 of 2"}


@pytest.mark.slow
def test_a_two_shard_run_merges_to_the_unsharded_runs_table(tmp_path: Path) -> None:
    plugin_folder(tmp_path)
    whole = run_dndbench(["-m", DESCRIBERS, *JOB, LAYER, f"hydra.sweep.dir={tmp_path / 'whole'}"],
                         tmp_path)
    assert whole.returncode == 0, whole.stderr[-3000:]
    sharded = run_dndbench(["-m", DESCRIBERS, "neurons.shard=0/2,1/2", *JOB, LAYER,
                            f"hydra.sweep.dir={tmp_path / 'sharded'}"], tmp_path)
    assert sharded.returncode == 0, sharded.stderr[-3000:]
    for name in ("whole", "sharded"):
        out = run_dndbench(["leaderboard", str(tmp_path / name), "--out", str(tmp_path / name)],
                           tmp_path)
        assert out.returncode == 0, out.stderr[-3000:]
    a = pd.read_csv(tmp_path / "whole.csv")
    b = pd.read_csv(tmp_path / "sharded.csv")
    assert len(a) == 2 and set(a["setting"]) == {"netdissect", "unit_word"}
    assert (a["n"] == 16).all() and (a["coverage"] == 1.0).all()
    pd.testing.assert_frame_equal(a[COMPARED], b[COMPARED])
    assert set(b["shards"]) == {"2 of 2"}
    shard_scores = pd.read_csv(tmp_path / "sharded" / "0" / "scores.csv")
    assert set(shard_scores["num_units"]) == {16} and set(shard_scores["shard"]) == {"0/2"}
    assert set(shard_scores["neuron_set"]) == set(a["neuron_set"])  # the whole set's key
    assert sorted(shard_scores["unit"].unique()) == list(range(8))  # the first half
