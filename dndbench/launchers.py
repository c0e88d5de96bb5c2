"""Hydra launchers a sweep can run on (``-m hydra/launcher=NAME``), checked before Hydra runs.

``basic`` (one job after another) is Hydra's own; ``joblib``, ``submitit_local`` and
``submitit_slurm`` come from Hydra's launcher plugins, which the ``cluster`` extra installs;
``slurm`` is dndbench's preset of ``submitit_slurm`` (``dndbench/conf/hydra/launcher/slurm.yaml``).
See docs/cluster.md.
"""
from __future__ import annotations

import difflib
import importlib.util
from typing import Any

from dndbench.errors import ConfigError, UnknownComponentError

#: launcher -> the module of the Hydra plugin that provides it, and its PyPI package
PLUGIN_LAUNCHERS: dict[str, tuple[str, str]] = {
    "joblib": ("hydra_plugins.hydra_joblib_launcher", "hydra-joblib-launcher"),
    "submitit_local": ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher"),
    "submitit_slurm": ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher"),
    "slurm": ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher"),
}


def installed(module: str) -> bool:
    """Whether ``module`` can be imported (without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def check_launcher(overrides: list[Any], options: list[str]) -> None:
    """Raise a one-line ConfigError for a ``hydra/launcher=NAME`` override whose plugin is not
    installed (naming the package to install), or an UnknownComponentError (with close names)
    for a name that is no launcher; ``options`` are the launchers Hydra can find."""
    for override in overrides:
        if override.key_or_group != "hydra/launcher" or override.is_delete():
            continue
        values = (list(override.sweep_string_iterator()) if override.is_sweep_override()
                  else [override.value()])
        for name in map(str, values):
            if name in options:
                continue
            if name in PLUGIN_LAUNCHERS and not installed(PLUGIN_LAUNCHERS[name][0]):
                package = PLUGIN_LAUNCHERS[name][1]
                raise ConfigError(f"hydra/launcher={name} needs Hydra's {package} plugin, which "
                                  f"is not installed; pip install 'dndbench[cluster]' (or "
                                  f"{package})")
            known = sorted(set(options) | set(PLUGIN_LAUNCHERS) | {"basic"})
            raise UnknownComponentError("hydra/launcher", name, known,
                                        difflib.get_close_matches(name, known, n=3))
