"""Describers: methods that write a short text saying what a unit detects."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from dndbench.registry import Choice, ComponentConfig, Registry

if TYPE_CHECKING:
    from dndbench.context import Context


@dataclass
class DescriberConfig(ComponentConfig):
    """Options every describer has.

    ``label_as`` names the setting in every table (``describer.label_as="DnD, beta=5"``);
    empty: the name plus the options that differ from their defaults
    (:func:`dndbench.pipeline.setting_label`).  It is not part of any cache key
    (:attr:`cache_exclude`), so relabelling a setting recomputes nothing.  ``label_options``
    are options a describer is named by, shown in brackets (``published[dnd]``)."""

    #: options left out of cache keys (:func:`dndbench.cache.stable_hash`)
    cache_exclude: ClassVar[tuple[str, ...]] = ("label_as",)
    #: options shown in brackets after the name in setting labels
    label_options: ClassVar[tuple[str, ...]] = ()

    label_as: str = ""


C = TypeVar("C", bound=DescriberConfig)


class Pooling(Choice):
    """How a unit's activation map becomes one number per image (:meth:`PooledActivations.get
    <dndbench.activations.PooledActivations.get>`)."""

    mean = "mean"
    max = "max"
    min = "min"


@dataclass
class Description:
    """One unit's description: ``label`` is the answer, ``alternatives`` the runners-up,
    ``score`` the method's own confidence (IoU, similarity, ...), ``extras`` anything else
    worth keeping (flat, JSON-serialisable values)."""

    unit: int
    label: str
    alternatives: list[str] = field(default_factory=list)
    score: float = float("nan")
    extras: dict[str, Any] = field(default_factory=dict)


class Describer(ABC, Generic[C]):
    """Base class: subclass it, give it a ``Config`` dataclass and register it.

    Built-ins write ``class NetDissect(Describer[NetDissectConfig])`` with ``Config =
    NetDissectConfig``, so ``self.config`` has the method's own config type; a nested ``Config``
    class works as well.

    Class attributes declare what the method needs, so a run loads only that:
    ``needs_weights`` (trained target weights), ``needs_probe`` (probe images / activations).
    ``in_default_suite`` puts it in the default job (``describer=all``; a plugin's component
    joins only when its own class sets it, see :attr:`dndbench.registry.Entry.in_default_suite`);
    ``role`` says what its
    rows are in tables: ``method``, ``control`` (a floor, e.g. a constant label) or ``reference``
    (the ground truth, a ceiling).
    Bump ``version`` when a change alters results: it is part of the cache key.
    """

    Config: type[DescriberConfig] = DescriberConfig
    needs_weights: bool = True
    needs_probe: bool = True
    in_default_suite: bool = True
    role: str = "method"
    version: str = "1"
    #: backend kinds the method calls (``captioner``, ``llm``, ...): their configs join the cache key
    uses_backends: tuple[str, ...] = ()

    def __init__(self, config: C) -> None:
        self.config: C = config

    def applies_to(self, ctx: "Context") -> bool:
        """Whether the method can describe units of this context; the default suite
        (``describer=all``) skips a describer where it does not apply."""
        return True

    @abstractmethod
    def describe(self, ctx: "Context") -> list[Description]:
        """Describe every unit in ``ctx.units`` (units it cannot describe may be left out)."""

    def cache_key_parts(self, ctx: "Context") -> tuple[Any, ...]:
        """Everything besides the config that determines the output."""
        parts: list[Any] = [ctx.model.config.name, ctx.layer, ctx.units]
        if self.needs_weights:
            parts.append(ctx.model.weights_fingerprint())
        if self.needs_probe:
            parts += [ctx.probe.config.name, ctx.probe.fingerprint()]
        for kind in self.uses_backends:  # config plus the weights' identity and code version
            backend = ctx.backend(kind)
            parts.append((ctx.backends.get(kind), backend.model_id, backend.version))
        return tuple(parts)


DESCRIBERS: Registry[Describer[Any]] = Registry("describer")
