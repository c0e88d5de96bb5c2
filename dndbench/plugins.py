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


def load_plugins(configured: str | None = None) -> list[Path]:
    """Import every plugin file not imported yet; return the files imported now."""
    loaded = []
    for folder in plugin_dirs(configured):
        for path in sorted(folder.glob("*.py")):
            path = path.resolve()
            if path in _LOADED or path.name.startswith("_"):
                continue
            _LOADED.add(path)
            module_name = f"dndbench_plugin_{path.stem}"
            spec = importlib.util.spec_from_file_location(module_name, path)
            if spec is None or spec.loader is None:
                raise DataError(f"cannot import plugin file {path}")
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module
            with registration_origin(f"plugin file {path}"):
                try:
                    spec.loader.exec_module(module)
                except Exception as exc:  # a broken plugin must not look like a dndbench bug
                    raise DataError(f"plugin file {path} failed to import: "
                                    f"{type(exc).__name__}: {exc}") from exc
            loaded.append(path)
    return loaded
