"""Checks of a job before anything loads, each failing with one line that says how to fix it.

:func:`check_job` runs on every job of a command line (from :func:`dndbench.cli.precheck`):

* counts are in range wherever they appear (:data:`MINIMUM`: ``batch_size``, ``num_workers``,
  ``max_concurrency``, ... of the run and of every component), never clamped later;
* every ``device`` option names a device this machine has (``device=cuda`` on a machine
  without CUDA fails here, not after a model loaded);
* the cache folder can be created and written (:func:`check_folder`; the run and sweep
  folders are checked by the CLI, which knows Hydra's paths);
* the backends the run's describers call have what they need from the environment (a
  backend class may define ``preflight(config)``, e.g. ``llm=openai`` needs
  ``OPENAI_API_KEY``).
"""
from __future__ import annotations

import dataclasses
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Iterator

from dndbench.config import RunSpec
from dndbench.errors import ConfigError

#: the smallest valid value of an integer option with this name, wherever it appears
MINIMUM = {"batch_size": 1, "num_workers": 0, "max_concurrency": 1, "max_calls": 0,
           "max_retries": 0, "timeout_s": 0}
#: options whose value must be strictly greater than :data:`MINIMUM` (a timeout of 0 waits forever)
STRICT = {"timeout_s"}
DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def check_job(spec: RunSpec) -> None:
    """Every check of the module docstring, in order."""
    check_ranges(spec)
    check_labels(spec)
    check_devices(spec)
    check_cache(spec)
    check_environment(spec)


def configs(spec: RunSpec) -> Iterator[tuple[str, Any]]:
    """``(prefix, config)`` of the run's options and of every component it holds."""
    yield "", spec.options
    yield "model.", spec.model
    yield "probe.", spec.probe
    for config in spec.describers:
        yield "describer.", config
    for config in spec.metrics or []:
        yield "metric.", config
    for kind, config in spec.backends.items():
        yield f"{kind}.", config


def check_ranges(spec: RunSpec) -> None:
    """Raise for an option of :data:`MINIMUM` below its minimum (wherever it appears)."""
    for prefix, config in configs(spec):
        for f in dataclasses.fields(config):
            low = MINIMUM.get(f.name)
            value = getattr(config, f.name)
            if low is None or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if value < low or (f.name in STRICT and value <= low):
                bound = f"greater than {low}" if f.name in STRICT else f"at least {low}"
                raise ConfigError(f"{prefix}{f.name}={value}: must be {bound}")


def check_labels(spec: RunSpec) -> None:
    """A ``label_as`` a spreadsheet would run as a formula is refused before anything runs
    (labels are keys the leaderboard reads back, so they cannot be neutralised)."""
    from dndbench.spreadsheet import neutralise_cell

    for config in spec.describers:
        label = str(getattr(config, "label_as", "") or "").strip()
        if label and neutralise_cell(label) != label:
            raise ConfigError(f"{config.name}.label_as={label!r} starts with {label[0]!r}, which "
                              f"spreadsheets run as a formula; start the label with a letter "
                              f"or a digit")


def check_devices(spec: RunSpec) -> None:
    """Raise for a ``device`` option that is malformed or names a device this machine lacks."""
    for prefix, config in configs(spec):
        value = getattr(config, "device", None)
        if isinstance(value, str):
            check_device(value, f"{prefix}device")


def check_device(value: str, option: str = "device") -> None:
    """``auto``, ``cpu``, ``mps``, ``cuda`` or ``cuda:N``, present on this machine."""
    device = value.strip()
    if not DEVICE.match(device):
        raise ConfigError(f"{option}={value}: not a device; use one of auto, cpu, cuda, cuda:N "
                          f"or mps")
    if device in ("auto", "cpu"):
        return
    import torch

    if device == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ConfigError(f"{option}=mps: this machine has no MPS device; use "
                              f"{option}=auto or {option}=cpu")
        return
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if not count:
        raise ConfigError(f"{option}={device}: this machine has no CUDA device (torch sees "
                          f"none); use {option}=auto or {option}=cpu")
    index = int(device.partition(":")[2] or 0)
    if index >= count:
        raise ConfigError(f"{option}={device}: this machine has {count} CUDA device(s), "
                          f"cuda:0..cuda:{count - 1}")


def cache_folder(spec: RunSpec) -> tuple[Path, str]:
    """The cache folder the run uses and how it was chosen (for messages)."""
    from dndbench.cache import default_cache_dir

    if spec.options.cache_dir:
        return Path(spec.options.cache_dir).expanduser(), f"cache_dir={spec.options.cache_dir}"
    folder = default_cache_dir()
    if os.environ.get("DNDBENCH_CACHE"):
        return folder, f"DNDBENCH_CACHE={os.environ['DNDBENCH_CACHE']}"
    return folder, f"the default cache folder {folder} (set cache_dir=PATH or DNDBENCH_CACHE)"


def check_cache(spec: RunSpec) -> None:
    """The cache folder exists or can be created, and is writable."""
    folder, what = cache_folder(spec)
    check_folder(folder, what, create=True, fix="choose a writable folder with cache_dir=PATH")


def check_folder(folder: Path, what: str, *, create: bool, fix: str) -> None:
    """Raise unless ``folder`` is (or can become) a writable folder.

    With ``create`` the folder is made (a cache); otherwise only a probe folder is made and
    removed in its nearest existing parent, so a job that fails later leaves nothing behind."""
    folder = Path(folder).expanduser()
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{what}: {existing} is not a folder; {fix}")
    try:
        if create:
            folder.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-test-")
            os.close(fd)
            os.unlink(probe)
        else:
            os.rmdir(tempfile.mkdtemp(dir=existing, prefix=".write-test-"))
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(f"{what}: cannot create or write {folder} ({reason}); {fix}") from None


def check_environment(spec: RunSpec) -> None:
    """Call ``preflight(config)`` of every backend class the run's describers use."""
    from dndbench.describers.base import DESCRIBERS
    from dndbench.registry import registries

    used = {kind for d in spec.describers
            for kind in getattr(DESCRIBERS.entry(d.name).cls, "uses_backends", ())}
    regs = registries()
    for kind, config in spec.backends.items():
        hook = getattr(regs[kind].entry(config.name).cls, "preflight", None)
        if kind in used and callable(hook):
            hook(config)
