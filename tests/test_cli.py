"""The command line: compose-API config tests, one-line errors, plugins, the list command."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module

from dndbench.cli import main, one_line, precheck, setup
from dndbench.config import ALL, to_run_spec
from dndbench.registry import registries
from dndbench.errors import ConfigError, UnknownComponentError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def _configs_registered() -> None:
    setup([])


def compose_spec(overrides: list[str]):
    with initialize_config_module("dndbench.conf", version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    return cfg, to_run_spec(cfg, overrides)


def test_default_config_is_the_toy_world_with_every_default_describer() -> None:
    cfg, spec = compose_spec([])
    assert spec.model.name == "toynet" and spec.probe.name == "toyworld"
    assert cfg.describer.name == ALL and spec.metrics is None
    names = [d.name for d in spec.describers]
    assert "netdissect" in names and "published" not in names
    assert spec.neurons.layer == "final"


@pytest.mark.parametrize("group", ["model", "probe", "describer", "metric"])
def test_every_registered_component_composes(group: str) -> None:
    for name in registries()[group].names():
        _, spec = compose_spec([f"{group}={name}"])
        chosen = {"model": [spec.model], "probe": [spec.probe], "describer": spec.describers,
                  "metric": spec.metrics}[group]
        assert chosen is not None and chosen[0].name == name
        assert type(chosen[0]) is registries()[group].entry(name).config_class


def test_typed_override_reaches_the_dataclass() -> None:
    _, spec = compose_spec(["describer=netdissect", "describer.quantile=0.01",
                            "neurons=planted", "batch_size=8"])
    assert spec.describers[0].quantile == 0.01
    assert spec.neurons.units == "planted" and spec.options.batch_size == 8


def test_unknown_component_suggests_close_names() -> None:
    with pytest.raises(UnknownComponentError, match="Did you mean 'netdissect'"):
        precheck(["describer=netdisect"])


@pytest.mark.parametrize("argv, pattern", [
    (["describer=netdissect", "describer.quantile=abc"], "quantile"),
    (["batch_size=many"], "batch_size"),
    (["describer=netdissect", "describer.no_such_key=1"], "no_such_key"),
    (["-m", "describer=netdissect", "describer.quantile=0.01,oops"], "quantile"),
])
def test_bad_values_are_one_line_config_errors(argv: list[str], pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern) as err:
        precheck(argv)
    assert "\n" not in str(err.value)


def run_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dndbench", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


def test_cli_error_exit_status_and_single_line(tmp_path: Path) -> None:
    out = run_cli(["describer=dnx"], tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and out.stderr.startswith("error: unknown describer")


def test_out_of_range_unit_is_one_line(tmp_path: Path) -> None:
    out = run_cli(["neurons.units=[0,999]", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert out.returncode == 2, out.stderr
    assert "out of range" in out.stderr and out.stderr.strip().count("\n") == 0
    assert not (tmp_path / "run" / "scores.csv").exists()


def test_help_is_fast_and_imports_no_torch() -> None:
    code = ("import sys, dndbench.cli as c; c.setup([]); "
            "print('torch' in sys.modules, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


PLUGIN = textwrap.dedent('''
    """A user's describer, dropped into plugins/ with no YAML."""
    from dataclasses import dataclass

    from dndbench.describers.base import DESCRIBERS, Describer, DescriberConfig, Description


    @DESCRIBERS.register("constant_word")
    class ConstantWord(Describer):
        """Labels every unit with the same word (a trivial baseline)."""

        needs_weights = False
        needs_probe = False
        in_default_suite = False

        @dataclass
        class Config(DescriberConfig):
            word: str = "circle"

        def describe(self, ctx):
            return [Description(unit=u, label=self.config.word) for u in ctx.units]
''')


def test_user_plugin_runs_without_yaml_and_is_listed(tmp_path: Path) -> None:
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "constant_word.py").write_text(PLUGIN)
    run_dir = tmp_path / "run"
    out = run_cli(["describer=constant_word", "describer.word=star", "metric=final_layer_similarity",
                   f"hydra.run.dir={run_dir}"], tmp_path)
    assert out.returncode == 0, out.stderr
    import json

    import pandas as pd

    descriptions = pd.read_csv(run_dir / "descriptions.csv")
    assert set(descriptions.label) == {"star"} and set(descriptions.setting) == {"constant_word(word=star)"}
    summary = json.loads((run_dir / "summary.json").read_text())
    top1 = summary["metrics"]["final_layer_top1"]
    # exactly one toy class is "star": the constant label is right for that unit only
    assert top1["n"] == len(descriptions) and top1["mean"] == pytest.approx(1 / len(descriptions))
    listing = run_cli(["list"], tmp_path)
    assert "constant_word" in listing.stdout and "plugin file" in listing.stdout


def test_one_line_joins_the_cause_chain() -> None:
    try:
        try:
            raise ValueError("inner problem\nwith details")
        except ValueError as exc:
            raise RuntimeError("outer") from exc
    except RuntimeError as exc:
        assert one_line(exc) == "outer: inner problem"


def test_main_returns_2_for_unknown_model() -> None:
    assert main(["model=resnet5O"]) == 2
