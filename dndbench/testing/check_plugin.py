"""``python -m dndbench check-plugin FILE``: the conformance checks on a user's plugin file.

The file is imported as the plugin loader imports ``plugins/*.py``; every component it
registers is checked on the kit's tiny context (:mod:`dndbench.testing.kit`): a describer with
:func:`~dndbench.testing.kit.check_describer`, a metric with
:func:`~dndbench.testing.kit.check_metric` (on the kit's tiny descriptions), a backend with a
call-cache round trip (:func:`~dndbench.testing.kit.check_backend`).  One line per component
says ``PASS``, ``FAIL`` (with the reason) or ``SKIP``; the exit status is 0 when none failed, 1
otherwise, 2 (one ``error:`` line) when the file is missing or does not import.
The same :func:`check_component` runs over every built-in component in the project's tests.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any

from dndbench.catalog import KINDS
from dndbench.errors import DndbenchError


class SkipCheck(Exception):
    """The component has no check here (a model or probe), or does not apply to the tiny context."""


def check_component(kind: str, name: str, workdir: Path | str, **options: Any) -> str:
    """Run the conformance check of the registered ``kind`` component ``name`` with config
    ``options``; caches go under ``workdir``.  Returns a short summary; raises AssertionError
    (or the component's own error) when it fails and :class:`SkipCheck` when nothing applies."""
    from dndbench.backends.call_cache import services
    from dndbench.cache import Cache
    from dndbench.registry import registry_for
    from dndbench.testing import kit

    registry = registry_for(kind)
    workdir = Path(workdir)
    if kind == "describer":
        describer = registry.create(name, **options)
        ctx = kit.tiny_context(workdir / "context", backends=kit.tiny_backends())
        if not describer.applies_to(ctx):
            raise SkipCheck("does not apply to the tiny context")
        frame = kit.check_describer(describer, ctx)
        return f"{len(frame)} of {len(ctx.units)} units described"
    if kind == "metric":
        metric = registry.create(name, **options)
        ctx = kit.tiny_context(workdir / "context", backends=kit.tiny_backends())
        if not metric.applies_to(ctx):
            raise SkipCheck("does not apply to the tiny context")
        scores = kit.check_metric(metric, kit.tiny_descriptions(ctx), ctx)
        return f"{len(scores)} scores"
    if KINDS[kind].backend:
        fields = {f.name for f in dataclasses.fields(registry.entry(name).config_class)}
        if "device" in fields:
            options.setdefault("device", "cpu")
        backend = registry.create(name, services=services(Cache(workdir / "backend")), **options)
        outputs = kit.check_backend(backend)
        return f"round trip through the call cache ({len(outputs)} outputs)"
    raise SkipCheck(f"no conformance check for {kind}s")


def plugin_components(path: Path) -> list[tuple[str, str]]:
    """Import the plugin file at ``path`` and return the (kind, name) of each component it
    registered, in catalog order."""
    from dndbench.plugins import load_plugin_file, plugin_origin
    from dndbench.registry import registries

    load_plugin_file(path)
    origin = plugin_origin(path)
    return [(kind, entry.name) for kind, registry in registries().items()
            for entry in registry.entries() if entry.origin == origin]


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    where = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    at = f" ({Path(where.filename).name}:{where.lineno})" if where else ""
    return f"{type(exc).__name__}: {text[0] if text else ''}{at}"


def main(argv: list[str] | None = None) -> int:
    """``dndbench check-plugin FILE``: check every component of a plugin file; exit status 0 if
    all pass, 1 if any fails, 2 if the file is missing or cannot be imported."""
    parser = argparse.ArgumentParser(prog="dndbench check-plugin",
                                     description="Run the conformance checks on the components "
                                                 "a plugin file registers.")
    parser.add_argument("file", type=Path, help="the plugin file (a .py file)")
    args = parser.parse_args(argv)
    try:
        components = plugin_components(args.file)
    except DndbenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not components:
        print(f"{args.file}: registers no component", file=sys.stderr)
        return 1
    counts = {"PASS": 0, "SKIP": 0, "FAIL": 0}
    with tempfile.TemporaryDirectory(prefix="dndbench-check-") as tmp:
        for kind, name in components:
            status, detail = _check(kind, name, Path(tmp) / kind / name)
            counts[status] += 1
            print(f"{status}  {kind} {name}: {detail}", flush=True)
    print(", ".join(f"{n} {label}" for label, n in
                    (("passed", counts["PASS"]), ("failed", counts["FAIL"]),
                     ("skipped", counts["SKIP"])) if n))
    return 1 if counts["FAIL"] else 0


def _check(kind: str, name: str, workdir: Path) -> tuple[str, str]:
    """(``PASS`` | ``SKIP`` | ``FAIL``, detail) of one component's check."""
    try:
        return "PASS", check_component(kind, name, workdir)
    except SkipCheck as skip:
        return "SKIP", str(skip)
    except Exception as exc:  # a failed check or a crash of the plugin's own code
        return "FAIL", _reason(exc)
