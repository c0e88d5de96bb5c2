"""Sweeps on Hydra's launchers: joblib's worker processes and submitit's local executor run
built-in and plugin components; plugin modules resolve in a fresh process; the shipped SLURM
launcher config composes (docs/cluster.md)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
from test_shards import DESCRIBERS, JOB, LAYER, plugin_folder

from dndbench.cli import main
from dndbench.errors import ConfigError
from dndbench.launchers import check_launcher, installed
from dndbench.plugins import FILES_VARIABLE, module_name

JOBLIB = installed("hydra_plugins.hydra_joblib_launcher")
SUBMITIT = installed("hydra_plugins.hydra_submitit_launcher")
needs_joblib = pytest.mark.skipif(not JOBLIB, reason="hydra-joblib-launcher is not installed "
                                  "(pip install 'dndbench[cluster]')")
needs_submitit = pytest.mark.skipif(not SUBMITIT, reason="hydra-submitit-launcher is not "
                                    "installed (pip install 'dndbench[cluster]')")
#: the unit_word plugin's label of unit u has 2 * (1 + u % 4) characters
EXPECTED = {u: 2.0 * (1 + u % 4) for u in range(16)}


# -- plugin modules in a fresh process --------------------------------------------------------
UNPICKLE = textwrap.dedent('''
    import pickle, sys
    config = pickle.load(open(sys.argv[1], "rb"))
    from dndbench.describers.base import DESCRIBERS
    entry = DESCRIBERS.entry("unit_word")
    assert type(config) is entry.config_class, (type(config), entry.config_class)
    print(entry.origin, type(config).__module__, config.word, entry.in_default_suite)
''')


def _pickled_plugin_config(tmp_path: Path, plugins: Path) -> tuple[Path, str]:
    """Pickle a plugin describer's config in a process that loaded the plugin."""
    target = tmp_path / "config.pkl"
    code = textwrap.dedent(f'''
        import pickle
        from dndbench.plugins import load_plugins
        from dndbench.describers.base import DESCRIBERS
        load_plugins({str(plugins)!r})
        config = DESCRIBERS.config("unit_word", word="xy")
        pickle.dump(config, open({str(target)!r}, "wb"))
        print(type(config).__module__)
    ''')
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    return target, out.stdout.strip()


@pytest.mark.parametrize("via", ["listed files", "plugins folder"])
def test_a_plugin_module_resolves_when_a_fresh_process_unpickles(tmp_path: Path, via: str) -> None:
    plugins = plugin_folder(tmp_path / "project")
    target, module = _pickled_plugin_config(tmp_path, plugins)
    plugin = (plugins / "kit_parts.py").resolve()
    assert module == module_name(plugin) and module.startswith("dndbench.plugins.kit_parts_")
    env = {k: v for k, v in os.environ.items() if k not in (FILES_VARIABLE, "DNDBENCH_PLUGINS")}
    if via == "listed files":  # what a launcher's worker inherits from the process it came from
        env[FILES_VARIABLE], cwd = str(plugin), tmp_path
    else:  # not listed: the plugin folders of the working directory are searched
        cwd = tmp_path / "project"
    out = subprocess.run([sys.executable, "-c", UNPICKLE, str(target)], capture_output=True,
                         text=True, timeout=300, cwd=cwd, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    origin, mod, word, in_suite = out.stdout.split()[-4:]
    assert out.stdout.startswith(f"plugin file {plugin}") and mod == module and word == "xy"
    assert in_suite == "False"  # the plugin does not ask to join the default suite


def test_a_plugin_file_that_asks_joins_the_default_suite(tmp_path: Path) -> None:
    """Plugin modules live under ``dndbench.plugins.``; their classes are still the user's."""
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "joins.py").write_text(textwrap.dedent('''
        from dataclasses import dataclass
        from dndbench.describers.base import DESCRIBERS, Describer, DescriberConfig


        @DESCRIBERS.register("joins")
        class Joins(Describer):
            """Asks to join the default suite."""

            in_default_suite = True

            @dataclass
            class Config(DescriberConfig):
                pass

            def describe(self, ctx):
                return []
    '''))
    code = ("from dndbench.plugins import load_plugins; load_plugins(); "
            "from dndbench.describers.base import DESCRIBERS; e = DESCRIBERS.entry('joins'); "
            "print(e.cls.__module__, e.in_default_suite)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    module, joins = out.stdout.split()
    assert module.startswith("dndbench.plugins.joins_") and joins == "True"


def test_two_plugin_files_of_one_name_get_distinct_modules(tmp_path: Path) -> None:
    a, b = tmp_path / "a" / "mine.py", tmp_path / "b" / "mine.py"
    assert module_name(a) != module_name(b) and module_name(a) == module_name(a)
    assert module_name(tmp_path / "my-plugin.v2.py").rsplit(".", 1)[1].startswith("my_plugin_v2_")


# -- launchers ----------------------------------------------------------------------------------
def _sweep(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run a sweep; return the main process's id and its output (asserting it succeeded)."""
    job = subprocess.Popen([sys.executable, "-m", "dndbench", "-m", *args], cwd=cwd,
                           env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    out, err = job.communicate(timeout=900)
    assert job.returncode == 0, err[-3000:]
    return job.pid, out + err


def _check_sweep(sweep: Path, main_pid: int) -> None:
    """Both jobs wrote complete runs with every unit, and the plugin ran outside the main
    process."""
    runs = sorted(p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())
    assert [p.name for p in runs] == ["0", "1"]
    for run in runs:
        assert (run / "COMPLETE").exists() and not (run / "INCOMPLETE").exists()
    scores = pd.concat([pd.read_csv(run / "scores.csv") for run in runs])
    assert set(scores["setting"]) == {"netdissect", "unit_word"}
    mine = scores[scores.setting == "unit_word"].set_index("unit")["value"].to_dict()
    assert mine == EXPECTED
    assert sorted(scores[scores.setting == "netdissect"]["unit"]) == list(range(16))
    descriptions = pd.read_csv(runs[1] / "descriptions.csv")
    assert set(descriptions["pid"]) and main_pid not in set(descriptions["pid"])


@needs_joblib
@pytest.mark.slow
def test_joblib_with_two_workers_runs_builtin_and_plugin_describers(tmp_path: Path) -> None:
    plugin_folder(tmp_path)
    sweep = tmp_path / "sweep"
    pid, output = _sweep(["hydra/launcher=joblib", "hydra.launcher.n_jobs=2", DESCRIBERS, *JOB,
                          LAYER, f"hydra.sweep.dir={sweep}"], tmp_path)
    assert "Joblib.Parallel(n_jobs=2" in output
    _check_sweep(sweep, pid)


@needs_submitit
@pytest.mark.slow
def test_submitit_local_runs_builtin_and_plugin_describers(tmp_path: Path) -> None:
    # the plugin comes from $DNDBENCH_PLUGINS, outside the working directory
    plugins = plugin_folder(tmp_path / "elsewhere")
    (tmp_path / "work").mkdir()
    sweep = tmp_path / "sweep"
    pid, _ = _sweep(["hydra/launcher=submitit_local", DESCRIBERS, *JOB, LAYER,
                     f"hydra.sweep.dir={sweep}"], tmp_path / "work",
                    env={"DNDBENCH_PLUGINS": str(plugins)})
    _check_sweep(sweep, pid)
    assert list((sweep / ".submitit").glob("*/*_log.out"))  # submitit's own job folders


@needs_submitit
@pytest.mark.slow
def test_a_job_failing_under_submitit_ends_in_its_one_error_line(tmp_path: Path) -> None:
    """A failure inside a submitit job (here: a describer that covers none of the units) comes
    back as the job's own ``error:`` line and exit 2, not as submitit's traceback."""
    plugin_folder(tmp_path)
    other = tmp_path / "other.csv"
    other.write_text("Neuron ID,label\n50,cat\n51,dog\n")
    job = subprocess.run([sys.executable, "-m", "dndbench", "-m", "hydra/launcher=submitit_local",
                          "describer=published", f"describer.path={other}", *JOB, LAYER,
                          f"hydra.sweep.dir={tmp_path / 'sweep'}"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=900)
    assert job.returncode == 2, job.stderr[-3000:]
    lines = [line for line in job.stderr.splitlines() if line.strip()]
    assert "Traceback" not in job.stderr
    assert lines[-1].startswith("error: ") and "described none of the" in lines[-1]


# -- the SLURM config and launcher names ----------------------------------------------------------
@needs_submitit
def test_the_shipped_slurm_launcher_composes_and_instantiates() -> None:
    from hydra import compose, initialize_config_module
    from hydra.utils import instantiate

    from dndbench.config import register_configs

    register_configs()
    with initialize_config_module("dndbench.conf", version_base="1.3"):
        cfg = compose("config", overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu"],
                      return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert launcher.timeout_min == 240 and launcher.gpus_per_node == 1
    assert launcher.cpus_per_task == 8 and launcher.partition == "gpu"
    assert str(launcher.submitit_folder).endswith("/.submitit/%j")  # in the sweep folder
    assert type(instantiate(launcher)).__name__ == "SlurmLauncher"  # submits nothing yet


def test_the_slurm_config_ships_in_the_package() -> None:
    import dndbench

    shipped = Path(dndbench.__file__).parent / "conf" / "hydra" / "launcher" / "slurm.yaml"
    assert shipped.is_file() and "submitit_slurm" in shipped.read_text()


def test_an_unknown_launcher_lists_the_launchers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["-m", "hydra/launcher=slrum", "describer=constant"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown hydra/launcher 'slrum'. Did you mean 'slurm'?")
    assert err.strip().count("\n") == 0


def test_a_launcher_whose_plugin_is_missing_names_the_package(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    monkeypatch.setattr("dndbench.launchers.installed", lambda module: False)
    overrides = OverridesParser.create().parse_overrides(["hydra/launcher=joblib"])
    with pytest.raises(ConfigError, match=r"needs Hydra's hydra-joblib-launcher plugin.*"
                                          r"dndbench\[cluster\]"):
        check_launcher(overrides, ["basic"])
    check_launcher(overrides, ["basic", "joblib"])  # installed: nothing to say


def test_the_finder_resolves_listed_plugin_files_only(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Finding a plugin module's spec does not run the file (nothing registers here)."""
    from dndbench.plugins import PluginFinder

    path = (plugin_folder(tmp_path) / "kit_parts.py").resolve()
    monkeypatch.setenv(FILES_VARIABLE, str(path))
    monkeypatch.chdir(tmp_path / "plugins")  # no plugins/ folder below the working directory
    spec = PluginFinder().find_spec(module_name(path))
    assert spec is not None and spec.origin == str(path)
    assert PluginFinder().find_spec("dndbench.plugins.nothing_0123456789") is None
    assert PluginFinder().find_spec("json") is None
