"""One generic registry for every kind of component (models, probes, describers, metrics, backends).

A component is one class with a typed ``Config`` dataclass (a subclass of
:class:`ComponentConfig`; built-ins define it at module level and set ``Config = ...``, plugins
may nest it).  Options with a fixed set of values are :class:`Choice` enums.  Components come from
three places, recorded as their *origin*:

* built-ins (modules of this package, imported on first use of the registry),
* installed packages, through the entry-point group ``dndbench.<kind>s``,
* files in a ``plugins/`` folder (see :mod:`dndbench.plugins`).

Importing a component module must stay cheap: heavy libraries (torch, transformers, diffusers)
are imported inside methods, so listing components or ``--help`` never loads them.
"""
from __future__ import annotations

import dataclasses
import difflib
import enum
import importlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from typing import Any, ClassVar, Generic, TypeVar

from dndbench.catalog import KINDS
from dndbench.errors import ConfigError, UnknownComponentError


class Choice(str, enum.Enum):
    """Base of an option with a fixed set of values (``class Precision(Choice)``).

    Members are strings whose names equal their values, so ``precision=fp16`` works on the
    command line (Hydra validates it and lists the valid values), a member equals its plain
    string, and configs hash (as JSON) and print exactly as the plain strings did.
    """

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)

    @classmethod
    def values(cls) -> list[str]:
        """The valid values, in definition order."""
        return [str(member.value) for member in cls]


@dataclass
class ComponentConfig:
    """Base of every component's typed config; ``name`` is the registry key it was built from.

    Values of :class:`Choice` options given as plain strings (``Registry.config("dnd",
    scoring="mean")``) are converted to the enum on construction; an unknown value is a
    :class:`~dndbench.errors.ConfigError` that lists the valid ones.
    """

    #: the type name configs are hashed under (:func:`dndbench.cache.stable_hash`): every
    #: built-in config was once a nested class called ``Config``, so keys made then stay valid
    cache_tag: ClassVar[str] = "Config"

    name: str = ""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if isinstance(f.default, Choice):
                setattr(self, f.name, _choice(type(f.default), getattr(self, f.name), self, f.name))


def _choice(cls: type[Choice], value: Any, config: ComponentConfig, option: str) -> Choice:
    """``value`` as a member of ``cls``; ConfigError naming the component, option and choices."""
    if isinstance(value, cls):
        return value
    try:
        return cls(value)
    except ValueError:
        owner = f"{config.name}: " if config.name else ""
        raise ConfigError(f"{owner}{option} must be one of {', '.join(cls.values())} "
                          f"(got {value!r})") from None


T = TypeVar("T")

#: the package plugin files are imported under (:mod:`dndbench.plugins`): their classes are the
#: user's, although their module names start with ``dndbench.``
PLUGIN_PACKAGE = "dndbench.plugins"


def is_builtin_module(name: str) -> bool:
    """Whether the module ``name`` is part of dndbench itself (not a plugin file's module)."""
    return ((name == "dndbench" or name.startswith("dndbench."))
            and not name.startswith(PLUGIN_PACKAGE + "."))

_ORIGIN = ["builtin"]  # where components registered right now come from (see registration_origin)


@contextmanager
def registration_origin(origin: str) -> Iterator[None]:
    """Components registered inside this block (in any registry) are recorded with ``origin``."""
    _ORIGIN.append(origin)
    try:
        yield
    finally:
        _ORIGIN.pop()


#: words whose full stop does not end a sentence
_ABBREVIATIONS = ("e.g.", "i.e.", "cf.", "vs.", "etc.", "et al.", "approx.", "resp.")


def first_sentence(doc: str) -> str:
    """The first sentence of ``doc``'s first paragraph, whitespace collapsed to single spaces
    (the whole paragraph when it has one sentence)."""
    paragraph = " ".join(doc.strip().split("\n\n", 1)[0].split())
    for i, ch in enumerate(paragraph):
        if ch in ".!?" and (i + 1 == len(paragraph) or paragraph[i + 1] == " "):
            head = paragraph[:i + 1]
            if not head.lower().endswith(_ABBREVIATIONS):
                return head
    return paragraph


@dataclass(frozen=True)
class Entry(Generic[T]):
    """A registered component: its name, class, config class and where it came from."""

    name: str
    cls: type[T]
    origin: str

    @property
    def config_class(self) -> type[ComponentConfig]:
        config: type[ComponentConfig] = self.cls.Config  # type: ignore[attr-defined]
        return config

    @property
    def in_default_suite(self) -> bool:
        """Whether the component joins the default suite (``describer=all``).

        A built-in keeps its class's ``in_default_suite``.  A component from a plugin file or an
        installed package joins only when it asks to: its own class (or a class of its own
        package, not of dndbench) sets ``in_default_suite = True``; what it inherits from a
        dndbench class does not count."""
        if self.origin == "builtin":
            return bool(getattr(self.cls, "in_default_suite", False))
        for klass in self.cls.__mro__:
            if "in_default_suite" in vars(klass):
                own = not is_builtin_module(klass.__module__)
                return own and bool(vars(klass)["in_default_suite"])
        return False

    @property
    def summary(self) -> str:
        """The first sentence of the class docstring's first paragraph, on one line."""
        return first_sentence(self.cls.__doc__ or "")


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
                    f"{self.kind} {name!r}: {cls.__name__} needs a dataclass `Config` "
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
        entry = self.entry(config.name)
        if not isinstance(config, entry.config_class):
            raise ConfigError(f"{self.kind} {config.name!r} expects a "
                              f"{entry.config_class.__name__}, got {type(config).__name__}")
        factory: Callable[..., T] = entry.cls
        return factory(config, **(services or {}))


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
