"""The command line: compose-API config tests, one-line errors, plugins, the list command."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module

from dndbench.cli import SUBCOMMANDS, main, one_line, parse_args, precheck, runs_a_job, setup
from dndbench.config import ALL, to_run_spec
from dndbench.errors import ConfigError, UnknownComponentError
from dndbench.registry import registries

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


GROUP_OPTIONS = [(group, name) for group in ("model", "probe", "describer", "metric")
                 for name in registries()[group].names()]


@pytest.mark.parametrize("group, name", GROUP_OPTIONS, ids=[f"{g}-{n}" for g, n in GROUP_OPTIONS])
def test_every_registered_component_composes(group: str, name: str) -> None:
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


@pytest.mark.parametrize("argv, pattern", [
    # each job of the sweep is composed: quantile is a netdissect option, not a dnd one
    (["-m", "describer=netdissect,dnd", "describer.quantile=0.01"],
     "describer 'dnd' has no option 'quantile'"),
    (["-m", "describer=netdissect,dnx"], "Did you mean 'dnd'"),
    (["-m", "describer=glob(net*)", "describer.no_such_key=1"], "no_such_key"),
    (["describer=netdissect", "describer.quantile=0.01,0.02"], "Ambiguous value"),  # no -m
    (["describer=["], "describer"),
])
def test_sweeps_are_expanded_and_each_job_is_checked(argv: list[str], pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern) as err:
        precheck(argv)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("argv", [
    ["-m", "describer=netdissect", "describer.quantile=0.01,0.02", "hydra.sweep.dir=/tmp/x"],
    ["-m", "describer=glob(net*)", "neurons=planted"],
    ["+hydra.job.env_set.X=1", "batch_size=8"],
    ["--config-name", "config", "describer=netdissect"],
    # another sweeper expands its own sweep types (here an interval): only names are checked
    ["-m", "hydra/sweeper=basic", "describer=netdissect", "describer.quantile=interval(0.01,0.02)"],
])
def test_valid_command_lines_pass_the_precheck(argv: list[str]) -> None:
    precheck(argv)  # raises on any problem


def test_parse_args_is_hydras_own() -> None:
    args = parse_args(["-m", "--cfg", "job", "-cn", "config", "describer=dnd", "hydra.run.dir=x"])
    assert args.multirun and args.cfg == "job" and args.config_name == "config"
    assert args.overrides == ["describer=dnd", "hydra.run.dir=x"]
    assert not runs_a_job(args) and runs_a_job(parse_args(["describer=dnd"]))


def test_main_runs_hydra_in_process_and_restores_argv(capsys: pytest.CaptureFixture[str]) -> None:
    before = list(sys.argv)
    assert main(["--cfg", "job", "describer=netdissect", "describer.quantile=0.02"]) == 0
    assert sys.argv == before
    out = capsys.readouterr().out
    assert "name: netdissect" in out and "quantile: 0.02" in out


def test_main_rejects_a_bad_flag_like_hydra(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--no-such-flag"]) == 2
    assert "unrecognized arguments: --no-such-flag" in capsys.readouterr().err


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


def test_help_lists_every_subcommand(tmp_path: Path) -> None:
    out = run_cli(["--help"], tmp_path)
    assert out.returncode == 0, out.stderr
    header = out.stdout.split("== Configuration groups ==")[0]
    listed = {line.split()[0] for line in header.split("Subcommands")[1].splitlines()[1:] if line.strip()}
    assert listed == set(SUBCOMMANDS)


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


# -- check-plugin -----------------------------------------------------------------------------
GOOD_PLUGIN = PLUGIN + textwrap.dedent('''

    import pandas as pd

    from dndbench.backends.base import CAPTIONERS, Captioner
    from dndbench.metrics.base import METRICS, Metric


    @METRICS.register("label_length")
    class LabelLength(Metric):
        """The length of each label, in characters."""

        def score(self, descriptions, ctx):
            return pd.DataFrame({"unit": descriptions["unit"], "metric": "label_length",
                                 "value": descriptions["label"].str.len().astype(float)})


    @CAPTIONERS.register("size_words")
    class SizeWords(Captioner):
        """Captions an image with its width."""

        def _caption_batch(self, images):
            return [f"an image {im.size[0]} pixels wide" for im in images]
''')

OVERREACHING_PLUGIN = textwrap.dedent('''
    from dndbench.describers.base import DESCRIBERS, Describer, DescriberConfig, Description


    @DESCRIBERS.register("overreaching")
    class Overreaching(Describer):
        """Describes one unit more than it was asked for."""

        Config = DescriberConfig
        needs_weights = False
        needs_probe = False

        def describe(self, ctx):
            return [Description(unit=u, label="thing") for u in [*ctx.units, max(ctx.units) + 1]]
''')


def test_check_plugin_passes_a_good_plugin(tmp_path: Path) -> None:
    plugin = tmp_path / "good.py"
    plugin.write_text(GOOD_PLUGIN)
    out = run_cli(["check-plugin", str(plugin)], tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    for kind, name in [("describer", "constant_word"), ("metric", "label_length"),
                       ("captioner", "size_words")]:
        assert any(line.startswith(f"PASS  {kind} {name}:") for line in lines), out.stdout
    assert "FAIL" not in out.stdout


def test_check_plugin_fails_a_describer_that_describes_units_not_asked_for(tmp_path: Path) -> None:
    plugin = tmp_path / "overreaching.py"
    plugin.write_text(OVERREACHING_PLUGIN)
    out = run_cli(["check-plugin", str(plugin)], tmp_path)
    assert out.returncode == 1, out.stdout + out.stderr
    failed = [line for line in out.stdout.splitlines() if line.startswith("FAIL  describer overreaching")]
    assert failed and "only for the requested units" in failed[0]


@pytest.mark.parametrize("content, message", [
    (None, "does not exist"),
    ("import no_such_module_for_dndbench\n", "failed to import"),
], ids=["missing", "unimportable"])
def test_check_plugin_bad_file_is_one_error_line(tmp_path: Path, content: str | None,
                                                 message: str) -> None:
    plugin = tmp_path / "plugin.py"
    if content is not None:
        plugin.write_text(content)
    out = run_cli(["check-plugin", str(plugin)], tmp_path)
    assert out.returncode == 2
    assert out.stderr.startswith("error: ") and out.stderr.strip().count("\n") == 0
    assert message in out.stderr and not out.stdout


def test_plugins_dir_override_loads_plugins_from_that_folder(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "constant_word.py").write_text(PLUGIN)
    out = run_cli(["--cfg", "job", f"plugins_dir={tmp_path / 'elsewhere'}",
                   "describer=constant_word", "describer.word=star"], tmp_path)
    assert out.returncode == 0, out.stderr
    assert "name: constant_word" in out.stdout and "word: star" in out.stdout
