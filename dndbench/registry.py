"""One generic registry for every kind of component (models, probes, describers, metrics, backends).

A component is one class with a nested typed ``Config`` dataclass (a subclass of
:class:`ComponentConfig`).  Components come from three places, recorded as their *origin*:

* built-ins (modules of this package, imported on first use of the registry),
* installed packages, through the entry-point group ``dndbench.<kind>s``,
* files in a ``plugins/`` folder (see :mod:`dndbench.plugins`).

Importing a component module must stay cheap: heavy libraries (torch, transformers, diffusers)
are imported inside methods, so listing components or ``--help`` never loads them.
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Callable, Generic, Iterator, TypeVar

from dndbench.catalog import KINDS
from dndbench.errors import ConfigError, UnknownComponentError


@dataclass
class ComponentConfig:
    """Base of every component's typed config; ``name`` is the registry key it was built from."""

    name: str = ""


T = TypeVar("T")

_ORIGIN = ["builtin"]  # where components registered right now come from (see registration_origin)


@contextmanager
def registration_origin(origin: str) -> Iterator[None]:
    """Components registered inside this block (in any registry) are recorded with ``origin``."""
    _ORIGIN.append(origin)
    try:
        yield
    finally:
        _ORIGIN.pop()


@dataclass(frozen=True)
class Entry(Generic[T]):
    """A registered component: its name, class, config class and where it came from."""

    name: str
    cls: type[T]
    origin: str

    @property
    def config_class(self) -> type[ComponentConfig]:
        return self.cls.Config  # type: ignore[attr-defined]

    @property
    def summary(self) -> str:
        doc = (self.cls.__doc__ or "").strip().splitlines()
        return doc[0] if doc else ""


class Registry(Generic[T]):
    """A named table of component classes of one kind, with "did you mean" lookups.

    ``kind`` is the singular name used in configs (``describer``), which is also the Hydra config
    group and, pluralised, the entry-point group (``dndbench.describers``).
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}
        self._loaded = False

    # -- registration -------------------------------------------------------------------------
    def register(self, name: str, *, origin: str | None = None) -> Callable[[type[T]], type[T]]:
        """Class decorator: ``@DESCRIBERS.register("netdissect")``."""

        def decorator(cls: type[T]) -> type[T]:
            config = getattr(cls, "Config", None)
            if not (isinstance(config, type) and dataclasses.is_dataclass(config)
                    and issubclass(config, ComponentConfig)):
                raise TypeError(
                    f"{self.kind} {name!r}: {cls.__name__} needs a nested dataclass `Config` "
                    f"deriving from dndbench.registry.ComponentConfig")
            existing = self._entries.get(name)
            if existing is not None and existing.cls is not cls:
                raise ConfigError(
                    f"{self.kind} {name!r} is registered twice ({existing.origin} and "
                    f"{origin or _ORIGIN[-1]}); rename one of them")
            self._entries[name] = Entry(name, cls, origin or _ORIGIN[-1])
            cls.registry_name = name  # type: ignore[attr-defined]
            return cls

        return decorator

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        kind = KINDS.get(self.kind)
        for module in kind.builtins if kind else ():
            importlib.import_module(module)
        for ep in metadata.entry_points(group=f"dndbench.{self.kind}s"):
            dist = ep.dist.name if ep.dist else "?"
            with registration_origin(f"entry point {ep.value} (package {dist})"):
                obj = ep.load()
                if isinstance(obj, type) and ep.name not in self._entries:
                    self.register(ep.name)(obj)

    # -- lookup -------------------------------------------------------------------------------
    def names(self) -> list[str]:
        self._load()
        return sorted(self._entries)

    def entries(self) -> Iterator[Entry[T]]:
        self._load()
        for name in sorted(self._entries):
            yield self._entries[name]

    def __contains__(self, name: str) -> bool:
        self._load()
        return name in self._entries

    def entry(self, name: str) -> Entry[T]:
        self._load()
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownComponentError(self.kind, name, self.names(),
                                        difflib.get_close_matches(name, self.names(), n=3)) from None

    def get(self, name: str) -> type[T]:
        return self.entry(name).cls

    def config(self, name: str, **overrides: Any) -> ComponentConfig:
        """The default typed config of ``name`` with ``overrides`` applied."""
        cls = self.entry(name).config_class
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(overrides) - known
        if unknown:
            raise ConfigError(f"{self.kind} {name!r} has no option(s) {sorted(unknown)}; "
                              f"options are {sorted(known - {'name'})}")
        return cls(**{**overrides, "name": name})

    def create(self, config: ComponentConfig | str, *, services: dict[str, Any] | None = None,
               **overrides: Any) -> T:
        """The one factory: instantiate a component from its typed config (or from a name plus
        option ``overrides``).  ``services`` are extra constructor arguments that are not
        options, e.g. a backend's call cache (see :func:`dndbench.backends.call_cache.services`)."""
        if isinstance(config, str):
            config = self.config(config, **overrides)
        cls = self.get(config.name)
        if not isinstance(config, cls.Config):  # type: ignore[attr-defined]
            raise ConfigError(f"{self.kind} {config.name!r} expects a {cls.Config.__name__}, "  # type: ignore[attr-defined]
                              f"got {type(config).__name__}")
        return cls(config, **(services or {}))  # type: ignore[call-arg]


def registry_for(kind: str) -> Registry[Any]:
    """The registry of a component kind (``describer``, ``captioner``, ...), from the catalog."""
    if kind not in KINDS:
        raise UnknownComponentError("component kind", kind, sorted(KINDS),
                                    difflib.get_close_matches(kind, sorted(KINDS), n=3))
    module, attr = KINDS[kind].registry.split(":")
    registry: Registry[Any] = getattr(importlib.import_module(module), attr)
    return registry


def registries(kinds: tuple[str, ...] | None = None) -> dict[str, Registry[Any]]:
    """The registries of ``kinds`` (default: every kind), by kind, in catalog order."""
    return {kind: registry_for(kind) for kind in (kinds or tuple(KINDS))}
