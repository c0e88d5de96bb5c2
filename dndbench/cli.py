"""Command line: ``python -m dndbench [overrides]`` runs a job through Hydra; a few subcommands
(:data:`SUBCOMMANDS`, e.g. ``list``, ``leaderboard``, ``check-plugin``; ``--help`` lists them all)
are plain argparse tools.

The command line is read with Hydra's own parsers (its argument parser, its override grammar
and its basic sweeper's expansion of ``-m`` sweeps), every job is validated with
``hydra.compose`` first, and the job itself runs through ``hydra.main``.

Hydra stops here: the composed config is turned into typed objects by
:func:`dndbench.config.to_run_spec` and nothing past this module sees a DictConfig.
Errors caused by the user's input print one line (``error: ...``) and exit with status 2.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import logging
import os
import re
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, NoReturn, cast

from dndbench.errors import ConfigError, DndbenchError

log = logging.getLogger("dndbench")

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "list": ("dndbench.cli", "list_components"),
    "options": ("dndbench.options", "main"),
    "leaderboard": ("dndbench.results.leaderboard", "main"),
    "train-toynet": ("dndbench.toyworld.train_toynet", "main"),
    "train-toy-backends": ("dndbench.toyworld.train_toy_backends", "main"),
    "train-milan": ("dndbench.describers.milan.training", "main"),
    "download-broden": ("dndbench.probes.broden_download", "main"),
    "check-plugin": ("dndbench.testing.check_plugin", "main"),
    "check-metrics": ("dndbench.metrics.sanity", "main"),
    "cost": ("dndbench.results.cost", "main"),
    "toyworld-report": ("dndbench.toyworld.world_report", "main"),
    "backend-ladder": ("dndbench.ladder", "main"),
    "cache": ("dndbench.cache_cli", "main"),
}
#: the primary config of ``hydra.main`` below (package ``dndbench.conf``)
CONFIG_MODULE, CONFIG_NAME = "dndbench.conf", "config"


def register_dir_resolver() -> None:
    """``${pid:}``: this process's id, which makes the default run and sweep folders
    (``outputs/<date>/<time>-<microseconds>-<pid>``) unique among jobs started at once.
    Cached like Hydra's ``${now:}``, so every resolution in a job (and the copies Hydra
    sends to its launchers' workers) gives the same folder.  Registered on import, since
    launcher workers resolve the folder before the task runs."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("pid"):
        OmegaConf.register_new_resolver("pid", lambda: str(os.getpid()), use_cache=True)


register_dir_resolver()


def _fail(exc: BaseException) -> int:
    from dndbench.redact import redact

    text = " ".join(str(exc).split()) or type(exc).__name__
    print(f"error: {redact(text)}", file=sys.stderr)
    return 2


def os_error_message(exc: OSError) -> str:
    """One line for a file-system failure while a job runs (a full disk, a folder that became
    unwritable): what failed, on which path, and what to do."""
    path = exc.filename if exc.filename is not None else ""
    what = exc.strerror or type(exc).__name__
    where = f" on {path}" if path else ""
    return (f"{what}{where} ({type(exc).__name__}); check that the run and cache folders are "
            f"writable and the disk has room (DNDBENCH_TRACEBACK=1 shows where it happened)")


def remove_partial_run(started: float) -> None:
    """After a failed job, remove what this job wrote to its run folder (Hydra's ``.hydra/``
    and log file, result files written since ``started``), and the folder itself when that
    leaves it empty: a failed job leaves no run folder that looks like a result."""
    import shutil

    from hydra.core.hydra_config import HydraConfig

    try:
        hydra_cfg = HydraConfig.get()
        run_dir = Path(hydra_cfg.runtime.output_dir)
        log_file = run_dir / f"{hydra_cfg.job.name}.log"
        subdir = hydra_cfg.output_subdir
    except Exception:  # not inside a Hydra job
        return
    if not run_dir.is_dir():
        return
    if subdir:
        shutil.rmtree(run_dir / subdir, ignore_errors=True)
    for path in [log_file, *run_dir.iterdir()]:
        try:
            if path.is_file() and path.stat().st_mtime >= started - 1:
                path.unlink()
        except OSError:
            pass
    try:
        run_dir.rmdir()  # only when empty
    except OSError:
        pass


#: OmegaConf's unformatted message templates ("Value '$VALUE' of type '$VALUE_TYPE' ...")
_TEMPLATE = re.compile(r"\$(VALUE|VALUE_TYPE|KEY|FULL_KEY|OBJECT_TYPE|REF_TYPE|PARENT)\b")


def one_line(exc: BaseException) -> str:
    """Condense a Hydra/OmegaConf exception chain into one readable line."""
    messages: list[str] = []
    while exc is not None:
        text = str(exc).strip().splitlines()
        first = text[0].rstrip(".") if text else ""
        # OmegaConf chains its formatted message to the raw template ("Value '$VALUE' ...")
        if first and not _TEMPLATE.search(first) and not any(first in m for m in messages):
            messages.append(first)
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return ": ".join(messages[:3]) or "invalid configuration"


def explain(exc: BaseException) -> DndbenchError:
    """The one-line error for a failure to compose a job's config: an unknown option lists the
    valid ones (with close matches), a value of the wrong type names the option, and the rest
    is :func:`one_line`."""
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

    from dndbench.errors import UnknownOptionError

    chain: list[BaseException] = []
    while exc is not None and exc not in chain:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    for err in chain:
        if isinstance(err, DndbenchError):
            return err
        key, full_key = getattr(err, "key", None), getattr(err, "full_key", None)
        cls = getattr(err, "object_type", None)
        if (isinstance(err, (ConfigAttributeError, ConfigKeyError)) and key is not None
                and dataclasses.is_dataclass(cls) and isinstance(cls, type)):
            valid = sorted(f.name for f in dataclasses.fields(cls) if f.name != "name")
            parent = str(full_key or key).rpartition(".")[0]
            node = getattr(err, "parent_node", None)
            name = (node.get("name") if node is not None and hasattr(node, "get") and "name" in node
                    else None)
            if name == "all":  # the default suite (describer=all, metric=all) takes no options
                return ConfigError(f"{parent}=all runs every default {parent} with its "
                                   f"defaults, so {parent}.{key} applies to none; choose one "
                                   f"with {parent}=<name> to set its options")
            where = (f"{parent} {name!r}" if parent and name else parent or "the run")
            return UnknownOptionError(where, str(key), valid)
        if isinstance(err, ValidationError) and full_key:
            text = str(err).strip().splitlines()[0].rstrip(".")
            return ConfigError(f"{full_key}: {text[:1].lower()}{text[1:]}")
    message = one_line(chain[0]) if chain else "invalid configuration"
    if message.startswith("Ambiguous value"):
        message += " (to sweep over the values, add -m; to pass a list, write key=[a,b])"
    return ConfigError(message)


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line as ``hydra.main`` itself reads it (flags plus ``args.overrides``).

    Hydra exposes its parser only as ``hydra._internal.utils.get_args_parser``; it is the one
    ``hydra.main`` calls, so both read the same flags.  A bad flag exits like Hydra does."""
    from hydra._internal.utils import get_args_parser

    parser = get_args_parser()

    def error(message: str) -> NoReturn:
        raise ConfigError(f"{message} (python -m dndbench --help lists the flags)")

    parser.error = error  # type: ignore[method-assign]
    return parser.parse_args(argv)


def parse_overrides(lines: list[str], config_loader: Any = None) -> list[Any]:
    """Hydra's own parse of ``key=value`` overrides (with a config loader, ``glob()`` sweeps
    expand to the group's options); a syntax error is a one-line ConfigError."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    try:
        return OverridesParser.create(config_loader=config_loader).parse_overrides(lines)
    except OverrideParseException as exc:
        reason = exc.message.strip().splitlines()[0] if exc.message.strip() else "syntax error"
        raise ConfigError(f"cannot parse override {exc.override!r}: {reason}") from None
    except Exception as exc:
        raise ConfigError(one_line(exc)) from None


def setup(argv: list[str]) -> None:
    """Load plugin files (``plugins_dir=`` on the command line, else ``plugins/``) and register
    every component config with Hydra."""
    from dndbench.config import register_configs
    from dndbench.plugins import load_plugins

    load_plugins(_plugins_dir(parse_args(argv).overrides))
    register_configs()


def _plugins_dir(lines: list[str]) -> str | None:
    for override in parse_overrides(lines):
        if override.key_or_group == "plugins_dir" and not override.is_sweep_override():
            if override.value() is None:
                return None
            folder = str(override.value())
            if not Path(folder).expanduser().is_dir():
                raise ConfigError(f"plugins_dir={folder}: no such folder; give the folder that "
                                  f"holds your plugin .py files")
            return folder
    return None


def runs_a_job(args: argparse.Namespace) -> bool:
    """False for the flags that only print something (help, config, info) or rerun a pickle."""
    return not (args.help or args.hydra_help or args.cfg or args.info or args.shell_completion
                or args.experimental_rerun)


def precheck(argv: list[str]) -> None:
    """Validate every job of the command line before Hydra runs, so mistakes give one clear line.

    Unknown component names get "did you mean" suggestions; then each job's config is composed
    (``hydra.compose``) and typed (:func:`dndbench.config.to_run_spec`), which catches values
    of the wrong type and unknown keys.  With ``-m`` the jobs are the ones Hydra's basic
    sweeper will launch (its own expansion, :meth:`BasicSweeper.split_arguments`); ``hydra.*``
    overrides are Hydra's to check.  A ``--config-dir`` overlay joins the search path (its
    ``<group>/<name>.yaml`` files are valid names); with ``--config-path`` (the primary config
    comes from elsewhere) or another sweeper (``hydra/sweeper=...``, which expands sweeps its own
    way) only the component names are checked.  Each job's data folders are checked too
    (:func:`dndbench.config.check_data`).
    """
    from hydra import compose, initialize_config_module
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.global_hydra import GlobalHydra

    from dndbench.config import check_data, overlay_options, overlay_searchpath, to_run_spec
    from dndbench.launchers import check_launcher
    from dndbench.preflight import check_job
    from dndbench.redact import refuse_secret_config, refuse_secrets

    args = parse_args(argv)
    refuse_secrets(args.overrides)
    with initialize_config_module(CONFIG_MODULE, version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        parsed = parse_overrides(args.overrides, loader)
        check_launcher(parsed, loader.get_group_options("hydra/launcher"))
        overrides = [o for o in parsed if not (o.is_hydra_override() or o.key_or_group == "hydra")]
        check_component_names(overrides, overlay_options(args.config_dir), loader)
        other_sweeper = args.multirun and any(o.key_or_group == "hydra/sweeper" for o in parsed)
        if args.config_path or other_sweeper:
            return
        searchpath = overlay_searchpath(args.config_dir)
        try:
            jobs = (BasicSweeper.split_arguments(overrides, None)[0] if args.multirun
                    else [[o.input_line for o in overrides]])
        except Exception as exc:
            raise explain(exc) from None
        for job in jobs:
            try:
                cfg = compose(args.config_name or CONFIG_NAME, overrides=searchpath + job)
                spec = to_run_spec(cfg, job)
            except Exception as exc:
                raise explain(exc) from None
            refuse_secret_config(_plain(cfg))
            check_data(spec)
            check_job(spec)
        check_output_folder(args, searchpath + [o.input_line for o in parsed if _names_a_dir(o)])


#: the Hydra options that name where a job writes
OUTPUT_KEYS = ("hydra.run.dir", "hydra.sweep.dir", "hydra.sweep.subdir", "hydra.output_subdir")


def _names_a_dir(override: Any) -> bool:
    return override.key_or_group in OUTPUT_KEYS and not override.is_sweep_override()


def _plain(cfg: Any) -> Any:
    from omegaconf import OmegaConf

    container = cast("dict[str, Any]", OmegaConf.to_container(cfg, resolve=False))
    return {k: v for k, v in container.items() if k != "hydra"}


def check_output_folder(args: argparse.Namespace, overrides: list[str]) -> None:
    """Raise a ConfigError unless the run folder (``hydra.run.dir``; with ``-m`` the sweep
    folder) is, or can become, a writable folder; nothing is created."""
    from hydra import compose
    from omegaconf import OmegaConf

    from dndbench.preflight import check_folder

    key = "hydra.sweep.dir" if args.multirun else "hydra.run.dir"
    try:
        cfg = compose(args.config_name or CONFIG_NAME, overrides=overrides,
                      return_hydra_config=True)
        folder = str(OmegaConf.select(cfg, key))
    except Exception:  # an interpolation only Hydra's own run can resolve: Hydra checks it
        return
    check_folder(Path(folder), f"{key}={folder}", create=False,
                 fix=f"choose a writable folder with {key}=PATH")


def check_component_names(overrides: list[Any], overlay: dict[str, set[str]] | None = None,
                          loader: Any = None) -> None:
    """Raise UnknownComponentError (with close names) for a group value that is not registered
    (nor a YAML file of the ``--config-dir`` overlay, ``overlay`` = group -> names); with
    Hydra's config ``loader``, YAML-only groups (``neurons``, ``experiment``) are checked
    against their files."""
    import difflib

    from dndbench.config import ALL, AUTO_PREFIX
    from dndbench.errors import UnknownComponentError
    from dndbench.registry import registries

    regs = registries()
    extra = overlay or {}
    for override in overrides:
        group = override.key_or_group
        if override.is_delete() or override.package:
            continue
        if group in regs:
            options = None
        elif loader is not None and "." not in group and loader.get_group_options(group):
            options = sorted(set(loader.get_group_options(group)) | extra.get(group, set()))
        else:
            continue
        values = (list(override.sweep_string_iterator()) if override.is_sweep_override()
                  else [override.value()])
        for name in values:
            if name is None or str(name) == ALL or str(name) in extra.get(group, set()):
                continue
            if options is None:
                regs[group].entry(str(name))
            elif str(name) not in options:
                shown = [o for o in options if not o.startswith(AUTO_PREFIX)]
                raise UnknownComponentError(group, str(name), shown,
                                            difflib.get_close_matches(str(name), shown, n=3))


def run_from_hydra(cfg: Any) -> None:
    """The Hydra task: run the job and write the run directory."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from dndbench.cache import Cache
    from dndbench.config import check_data, to_run_spec
    from dndbench.pipeline import run_job, run_setting_label
    from dndbench.plugins import load_plugins
    from dndbench.redact import guard_logging
    from dndbench.results.leaderboard import (
        leaderboard,
        load_costs,
        metric_agreement,
        pairs_table,
        to_markdown,
        write_leaderboard,
    )
    from dndbench.results.records import write_run
    from dndbench.results.report import Standings, leaderboard_chart, write_run_report

    guard_logging()  # no secret or URL credential reaches the job's log
    started = time.time()
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    mark_incomplete(run_dir)  # until every file is written (crash safety)
    overrides = list(hydra_cfg.overrides.task)
    # a launcher's worker (joblib, submitit) is a new process: it loads the plugin files that
    # the unpickled job did not import already (a no-op in the process that ran setup())
    load_plugins(str(cfg.get("plugins_dir") or "") or None)
    spec = to_run_spec(cfg, overrides)
    for line in spec.warnings:
        log.warning(line)
    check_data(spec)
    cache = Cache(spec.options.cache_dir or None)
    result = run_job(spec, cache)
    config = cast("dict[str, Any]", OmegaConf.to_container(cfg, resolve=True))
    probe = spec.probe.name if result.probe_used else "none"
    descriptions, scores = write_run(run_dir, result, config, overrides, spec.model.name, probe,
                                     started)
    table = None
    if len(scores):
        table = leaderboard(scores, costs=load_costs([run_dir]))
        write_leaderboard(table, run_dir / "leaderboard")
        leaderboard_chart(table, run_dir / "leaderboard.png")
        print(to_markdown(table))
    if spec.options.reference_figures is not None:  # a preset's published figures
        from dndbench.results.records import write_text
        from dndbench.results.reference import render

        text = render(spec.options.reference_figures, table)
        write_text(run_dir / "reference.md", text + "\n")
        print(text)
    # every run gets its report; probe images only where a describer used the probe
    configs = {run_setting_label(spec, c): c for c in spec.describers}
    standings = (Standings(table, pairs_table(table), metric_agreement(table))
                 if table is not None else None)
    write_run_report(run_dir, descriptions, scores, standings, result.contexts, configs,
                     images=result.probe_used)
    mark_complete(run_dir)
    print(f"results: {run_dir}")


#: files that say whether a run directory holds every result (see :func:`mark_complete`)
INCOMPLETE_MARKER, COMPLETE_MARKER = "INCOMPLETE", "COMPLETE"


def mark_incomplete(run_dir: Path) -> None:
    """Mark a run directory as being written: a run killed before :func:`mark_complete` keeps
    the ``INCOMPLETE`` marker, and ``leaderboard`` skips it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / COMPLETE_MARKER).unlink(missing_ok=True)
    (run_dir / INCOMPLETE_MARKER).write_text("this run was interrupted or is still running\n")


def mark_complete(run_dir: Path) -> None:
    """Mark a run directory complete; called after its last file is written."""
    (run_dir / COMPLETE_MARKER).write_text("every result file of this run is written\n")
    (run_dir / INCOMPLETE_MARKER).unlink(missing_ok=True)


def list_components(argv: list[str]) -> int:
    """``dndbench list [PLUGINS_DIR]``: every registered component with its origin."""
    from dndbench.plugins import load_plugins
    from dndbench.registry import registries

    parser = argparse.ArgumentParser(prog="dndbench list",
                                     description="List every registered component and its origin.")
    parser.add_argument("plugins_dir", nargs="?", default=None,
                        help="folder of plugin files to load first (default: plugins/)")
    load_plugins(parser.parse_args(argv).plugins_dir)
    kinds = registries()
    width = max(len(e.name) for r in kinds.values() for e in r.entries())
    for kind, registry in kinds.items():
        print(f"{kind}s:")
        for entry in registry.entries():
            print(f"  {entry.name:<{width}}  [{entry.origin}]  {entry.summary}")
    return 0


def _subcommand(name: str) -> Callable[[list[str]], int]:
    module, attr = SUBCOMMANDS[name]
    return getattr(importlib.import_module(module), attr)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m dndbench`` and the ``dndbench`` script."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv and argv[0] in SUBCOMMANDS:
            return int(_subcommand(argv[0])(argv[1:]) or 0)
        args = parse_args(argv)
        setup(argv)
        if runs_a_job(args):
            precheck(argv)
    except DndbenchError as exc:
        return _fail(exc)
    except SystemExit as exc:  # a bad flag or --version, answered by Hydra's own parser
        return _exit_status(exc)
    return _run_hydra(argv)


def _exit_status(exc: SystemExit) -> int:
    return int(exc.code or 0) if not isinstance(exc.code, str) else 1


def _run_hydra(argv: list[str]) -> int:
    """Run the job (or sweep, help, ...) through ``hydra.main``.

    ``hydra.main`` reads its command line from ``sys.argv`` (that is its interface), so
    ``sys.argv[1:]`` is ``argv`` while it runs and is restored afterwards."""
    import hydra

    status = {"code": 0}

    @hydra.main(config_path="conf", config_name=CONFIG_NAME, version_base="1.3")
    def task(cfg: Any) -> None:
        started = time.time()
        try:
            run_from_hydra(cfg)
        except (DndbenchError, OSError) as exc:
            if isinstance(exc, OSError) and os.environ.get("DNDBENCH_TRACEBACK"):
                raise
            remove_partial_run(started)
            status["code"] = _fail(exc if isinstance(exc, DndbenchError)
                                   else ConfigError(os_error_message(exc)))
            raise SystemExit(2) from None

    saved = sys.argv
    sys.argv = [saved[0] if saved else "dndbench", *argv]
    try:
        with _launcher_errors_reach_us():
            task()
    except SystemExit as exc:
        return _exit_status(exc)
    except Exception as exc:
        line = _job_error_line(exc)
        if line is None:
            raise
        print(line, file=sys.stderr)
        return 2
    finally:
        sys.argv = saved
    return status["code"]


@contextmanager
def _launcher_errors_reach_us() -> Iterator[None]:
    """Let an exception from a launcher reach :func:`_run_hydra` instead of Hydra's traceback
    printer (``HYDRA_FULL_ERROR``): a job that failed in a submitit worker comes back as the
    launcher's exception quoting the job's own ``error:`` line, which is all the user needs."""
    before = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = before


def _job_error_line(exc: BaseException) -> str | None:
    """The ``error:`` line a failed launcher job printed, quoted in the launcher's exception
    (submitit's ``FailedJobError`` holds the job's stderr), or a compact Hydra error as Hydra
    prints it; None for anything else (a bug: its traceback is shown)."""
    from hydra.errors import CompactHydraException

    if isinstance(exc, CompactHydraException):
        cause = f" ({exc.__cause__})" if exc.__cause__ is not None else ""
        return " ".join(f"{exc}{cause}".split())
    if type(exc).__module__.startswith("submitit"):
        found = re.findall(r"^error: .+$", str(exc), flags=re.MULTILINE)
        if found:
            return found[-1]
    return None
