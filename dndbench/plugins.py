"""Discovery of plugin files: every ``*.py`` in a plugins folder is imported once at start-up.

A plugin file registers its components with the usual decorators, e.g.
``@DESCRIBERS.register("my_method")``; they are recorded with origin ``plugin file <path>``.

**Importable in every process.**  A plugin file is imported as the module
``dndbench.plugins.<stem>_<hash of its path>`` (:func:`module_name`), and every file loaded is
listed in ``$DNDBENCH_PLUGIN_FILES``.  Processes that Hydra's launchers start (joblib's
workers, submitit's local and SLURM jobs) inherit that variable and receive the job pickled,
with the configs of the plugin's components inside; unpickling imports the plugin's module by
name, which :class:`PluginFinder` resolves to the same file and loads the same way, so its
components are registered in the worker too (docs/cluster.md).
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Sequence

from dndbench.errors import DataError
from dndbench.registry import PLUGIN_PACKAGE, registration_origin

#: the files loaded in this process, passed on to the processes it starts
FILES_VARIABLE = "DNDBENCH_PLUGIN_FILES"

#: this module is the package of the plugin modules (PEP 451: a module with ``__path__``);
#: it holds no files, its submodules come from :class:`PluginFinder`
__path__: list[str] = []

_LOADED: set[Path] = set()


def plugin_dirs(configured: str | None = None) -> list[Path]:
    """``plugins/`` in the working directory (or ``configured``) plus ``$DNDBENCH_PLUGINS`` entries."""
    dirs = [Path(configured or "plugins")]
    dirs += [Path(p) for p in os.environ.get("DNDBENCH_PLUGINS", "").split(os.pathsep) if p]
    return [d for d in dirs if d.is_dir()]


def plugin_origin(path: Path | str) -> str:
    """The origin recorded for components registered by the plugin file at ``path``."""
    return f"plugin file {Path(path).resolve()}"


def module_name(path: Path | str) -> str:
    """The module name of the plugin file at (absolute, resolved) ``path``: the same in every
    process that sees the file at that path, distinct for two files of one name."""
    stem = re.sub(r"\W", "_", Path(path).stem)
    digest = hashlib.sha256(str(path).encode("utf-8")).hexdigest()[:10]
    return f"{PLUGIN_PACKAGE}.{stem}_{digest}"


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
    name = module_name(path)
    if path in _LOADED or name in sys.modules:
        return False
    if not path.is_file():
        raise DataError(f"plugin file {path} does not exist")
    if path.suffix != ".py":
        raise DataError(f"cannot import plugin file {path} (a plugin is a .py file)")
    _announce(path)
    importlib.import_module(name)
    return True


def _announce(path: Path) -> None:
    """List ``path`` in ``$DNDBENCH_PLUGIN_FILES``, which processes started from here inherit."""
    files = loaded_files()
    if str(path) not in files:
        os.environ[FILES_VARIABLE] = os.pathsep.join([*files, str(path)])


def loaded_files() -> list[str]:
    """The plugin files listed in ``$DNDBENCH_PLUGIN_FILES`` (by this or a parent process)."""
    return [p for p in os.environ.get(FILES_VARIABLE, "").split(os.pathsep) if p]


def _candidates() -> list[Path]:
    """Files a plugin module name may stand for: the listed ones, then the plugin folders'."""
    found = [Path(p) for p in loaded_files()]
    found += [p.resolve() for d in plugin_dirs() for p in sorted(d.glob("*.py"))]
    return found


class PluginLoader(importlib.machinery.SourceFileLoader):
    """Runs a plugin file as its module, recording what it registers with its origin; a
    failure is a DataError naming the file."""

    def exec_module(self, module: ModuleType) -> None:
        path = Path(self.path)
        _LOADED.add(path)
        with registration_origin(plugin_origin(path)):
            try:
                super().exec_module(module)
            except Exception as exc:  # a broken plugin must not look like a dndbench bug
                raise DataError(f"plugin file {path} failed to import: "
                                f"{type(exc).__name__}: {exc}") from exc


class PluginFinder(importlib.abc.MetaPathFinder):
    """Resolves ``dndbench.plugins.<stem>_<hash>`` to its plugin file (:func:`module_name`)."""

    def find_spec(self, fullname: str, path: Sequence[str] | None = None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if not fullname.startswith(PLUGIN_PACKAGE + "."):
            return None
        for file in _candidates():
            if module_name(file) == fullname and file.is_file():
                return importlib.util.spec_from_file_location(
                    fullname, file, loader=PluginLoader(fullname, str(file)))
        return None


def install_finder() -> None:
    """Put :class:`PluginFinder` on ``sys.meta_path`` (once)."""
    if not any(isinstance(f, PluginFinder) for f in sys.meta_path):
        sys.meta_path.append(PluginFinder())


install_finder()
