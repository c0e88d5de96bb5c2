"""Discovery of plugin files: every ``*.py`` in a plugins folder is imported once at start-up.

A plugin file registers its components with the usual decorators, e.g.
``@DESCRIBERS.register("my_method")``; they are recorded with origin ``plugin file <path>``.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

from dndbench.errors import DataError
from dndbench.registry import registration_origin

_LOADED: set[Path] = set()


def plugin_dirs(configured: str | None = None) -> list[Path]:
    """``plugins/`` in the working directory (or ``configured``) plus ``$DNDBENCH_PLUGINS`` entries."""
    dirs = [Path(configured or "plugins")]
    dirs += [Path(p) for p in os.environ.get("DNDBENCH_PLUGINS", "").split(os.pathsep) if p]
    return [d for d in dirs if d.is_dir()]


def plugin_origin(path: Path | str) -> str:
    """The origin recorded for components registered by the plugin file at ``path``."""
    return f"plugin file {Path(path).resolve()}"


def load_plugins(configured: str | None = None) -> list[Path]:
    """Import every plugin file not imported yet; return the files imported now."""
    loaded = []
    for folder in plugin_dirs(configured):
        for path in sorted(folder.glob("*.py")):
            if path.name.startswith("_"):
                continue
            if load_plugin_file(path):
                loaded.append(path.resolve())
    return loaded


def load_plugin_file(path: Path | str) -> bool:
    """Import one plugin file (once per process; False if it was imported already), recording
    its components with origin :func:`plugin_origin`.  A missing or failing file is a DataError."""
    path = Path(path).resolve()
    if path in _LOADED:
        return False
    if not path.is_file():
        raise DataError(f"plugin file {path} does not exist")
    module_name = f"dndbench_plugin_{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise DataError(f"cannot import plugin file {path} (a plugin is a .py file)")
    _LOADED.add(path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    with registration_origin(plugin_origin(path)):
        try:
            spec.loader.exec_module(module)
        except Exception as exc:  # a broken plugin must not look like a dndbench bug
            raise DataError(f"plugin file {path} failed to import: "
                            f"{type(exc).__name__}: {exc}") from exc
    return True
