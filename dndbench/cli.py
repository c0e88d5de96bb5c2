"""Command line: ``python -m dndbench [overrides]`` runs a job through Hydra; a few subcommands
(``list``, ``leaderboard``, ``train-toynet``, ``train-toy-backends``, ``train-milan``,
``download-broden``) are plain argparse tools.

Hydra stops here: the composed config is turned into typed objects by
:func:`dndbench.config.to_run_spec` and nothing past this module sees a DictConfig.
Errors caused by the user's input print one line (``error: ...``) and exit with status 2.
"""
from __future__ import annotations

import importlib
import logging
import sys
import time
from pathlib import Path
from typing import Any, Callable

from dndbench.errors import ConfigError, DndbenchError

log = logging.getLogger("dndbench")

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "list": ("dndbench.cli", "list_components"),
    "leaderboard": ("dndbench.results.leaderboard", "main"),
    "train-toynet": ("dndbench.toyworld.train_toynet", "main"),
    "train-toy-backends": ("dndbench.toyworld.train_toy_backends", "main"),
    "train-milan": ("dndbench.describers.milan.training", "main"),
    "download-broden": ("dndbench.probes.broden_download", "main"),
}
HYDRA_FLAGS_WITH_VALUE = {"--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd",
                          "--experimental-rerun", "--info", "-i", "--package", "-p"}


def _fail(exc: BaseException) -> int:
    print(f"error: {exc}", file=sys.stderr)
    return 2


def one_line(exc: BaseException) -> str:
    """Condense a Hydra/OmegaConf exception chain into one readable line."""
    messages = []
    while exc is not None:
        text = str(exc).strip().splitlines()
        if text and text[0] not in messages:
            messages.append(text[0].rstrip("."))
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return ": ".join(messages[:3]) or "invalid configuration"


def setup(argv: list[str]) -> None:
    """Load plugin files and register every component config with Hydra."""
    from dndbench.config import register_configs
    from dndbench.plugins import load_plugins

    plugins_dir = next((a.split("=", 1)[1] for a in argv if a.startswith("plugins_dir=")), None)
    load_plugins(plugins_dir)
    register_configs()


def _plain_overrides(argv: list[str]) -> list[str]:
    """The override arguments (``key=value``), without Hydra flags and ``hydra.*`` settings."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in HYDRA_FLAGS_WITH_VALUE:
            skip = True
        elif not arg.startswith("-") and "=" in arg and not arg.lstrip("+~").startswith("hydra"):
            out.append(arg)
    return out


def _quote(value: Any) -> str:
    text = str(value)
    return text if isinstance(value, (int, float)) or text.replace("_", "").isalnum() else repr(text)


def precheck(argv: list[str]) -> None:
    """Validate overrides before Hydra runs, so mistakes give one clear line.

    Unknown component names get "did you mean" suggestions; values of the wrong type and
    unknown keys are caught by composing the config (each sweep value is tried).
    """
    from hydra import compose, initialize_config_module
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from dndbench.config import ALL, to_run_spec
    from dndbench.registry import registries

    overrides = _plain_overrides(argv)
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception as exc:
        raise ConfigError(one_line(exc)) from None
    regs = registries()
    choices: list[list[str]] = []  # per override, its rendered values (several for a sweep)
    for override in parsed:
        key = override.key_or_group
        values = ([str(v) for v in override.sweep_iterator()] if override.is_sweep_override()
                  else [override.value()])
        if key in regs:
            for name in values:
                if name != ALL:
                    regs[key].entry(str(name))
        if override.is_sweep_override():
            prefix = override.get_key_element()
            choices.append([f"{prefix}={_quote(v)}" for v in override.sweep_iterator()])
        else:
            choices.append([override.input_line or f"{override.get_key_element()}={values[0]}"])
    base = [c[0] for c in choices]
    variants = [base] + [base[:i] + [v] + base[i + 1:]
                         for i, c in enumerate(choices) for v in c[1:]]
    with initialize_config_module("dndbench.conf", version_base="1.3"):
        for variant in variants:
            try:
                cfg = compose("config", overrides=variant)
            except Exception as exc:
                raise ConfigError(one_line(exc)) from None
            to_run_spec(cfg, variant)


def run_from_hydra(cfg: Any) -> None:
    """The Hydra task: run the job and write the run directory."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from dndbench.cache import Cache
    from dndbench.config import to_run_spec
    from dndbench.pipeline import run_job
    from dndbench.results.leaderboard import leaderboard, to_markdown, write_leaderboard
    from dndbench.results.records import write_run
    from dndbench.results.report import leaderboard_chart, neuron_cards

    started = time.time()
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    overrides = list(hydra_cfg.overrides.task)
    spec = to_run_spec(cfg, overrides)
    cache = Cache(spec.options.cache_dir or None)
    result = run_job(spec, cache)
    config = OmegaConf.to_container(cfg, resolve=True)
    probe = spec.probe.name if result.probe_used else "none"
    descriptions, scores = write_run(run_dir, result, config, overrides, spec.model.name, probe,
                                     started)
    chart = None
    if len(scores):
        table = leaderboard(scores)
        write_leaderboard(table, run_dir / "leaderboard")
        chart = leaderboard_chart(table, run_dir / "leaderboard.png")
        print(to_markdown(table))
    ctx = result.context
    if ctx is not None and "activations" in ctx.__dict__:  # the probe was used: show top images
        neuron_cards(ctx, descriptions, run_dir / "report.html", chart)
    print(f"results: {run_dir}")


def list_components(argv: list[str]) -> int:
    """``dndbench list``: every registered component with its origin."""
    from dndbench.registry import registries
    from dndbench.plugins import load_plugins

    load_plugins(argv[0] if argv else None)
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
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv and argv[0] in SUBCOMMANDS:
            return int(_subcommand(argv[0])(argv[1:]) or 0)
        setup(argv)
        if not any(a in ("--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i")
                   for a in argv):
            precheck(argv)
    except DndbenchError as exc:
        return _fail(exc)
    return _run_hydra(argv)


def _run_hydra(argv: list[str]) -> int:
    import hydra

    status = {"code": 0}

    @hydra.main(config_path="conf", config_name="config", version_base="1.3")
    def task(cfg: Any) -> None:
        try:
            run_from_hydra(cfg)
        except DndbenchError as exc:
            status["code"] = _fail(exc)
            raise SystemExit(2) from None

    sys.argv = [sys.argv[0]] + argv
    try:
        task()
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 1
    return status["code"]
