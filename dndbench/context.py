"""What a describer or metric sees of a run: the model, probe, layer, units and shared services."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

from dndbench.cache import Cache

if TYPE_CHECKING:
    from dndbench.activations import Activations
    from dndbench.models.base import TargetModel
    from dndbench.probes.base import ProbeSet
    from dndbench.registry import ComponentConfig


@dataclass
class Context:
    """One matched comparison: every describer of a run gets the same context.

    ``layer`` is already resolved to a module name; ``units`` are 0-based unit indices.
    Building a context is cheap: the network and the activations are computed on first use.
    """

    model: "TargetModel"
    probe: "ProbeSet"
    layer: str
    units: list[int]
    cache: Cache
    device: str = "cpu"
    batch_size: int = 64
    num_workers: int = 0
    seed: int = 0
    progress: bool = True
    counters: dict[str, int] = field(default_factory=dict)
    #: backend configs by kind (captioner, llm, text2image, vlm, embedder); see :meth:`backend`
    backends: dict[str, "ComponentConfig"] = field(default_factory=dict)
    _backend_objects: dict[str, Any] = field(default_factory=dict, repr=False)
    _heldout: "Context | None" = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # the probe's ``split`` option takes effect here: describers see only its images
        select = getattr(self.probe, "selected", None)
        if select is not None:
            self.probe = select()

    def backend(self, kind: str) -> Any:
        """The run's backend of ``kind``, created on first use with its call cache."""
        if kind not in self._backend_objects:
            from dndbench.backends.call_cache import services
            from dndbench.errors import ConfigError
            from dndbench.registry import registry_for

            if kind not in self.backends:
                raise ConfigError(f"no {kind} configured; choose one with {kind}=<name>")
            self._backend_objects[kind] = registry_for(kind).create(
                self.backends[kind], services=services(self.cache))
        return self._backend_objects[kind]

    def backends_in_use(self) -> dict[str, Any]:
        """The backends created so far, by kind (for cost accounting)."""
        return dict(self._backend_objects)

    @cached_property
    def activations(self) -> "Activations":
        from dndbench.activations import Activations

        return Activations(self.model, self.probe, self.cache, device=self.device,
                           batch_size=self.batch_size, num_workers=self.num_workers,
                           progress=self.progress)

    @property
    def has_heldout(self) -> bool:
        """Whether the probe is split, so :meth:`heldout` holds images the describers never saw."""
        complement = getattr(self.probe, "complement", None)
        return complement is not None and complement() is not None

    def heldout(self) -> "Context":
        """A context over the held-out probe images: the other side of the probe's split
        (``describe`` <-> ``score``), or this context itself when the probe is not split (check
        :attr:`has_heldout`; the images then overlap the describers').  It shares model, cache,
        backends and counters, and computes its own activations (cached under its fingerprint)."""
        if self._heldout is None:
            complement = getattr(self.probe, "complement", None)
            other = complement() if complement is not None else None
            if other is None:
                return self
            self._heldout = dataclasses.replace(self, probe=other)
        return self._heldout

    @property
    def is_final_layer(self) -> bool:
        return self.layer == self.model.final_layer

    def count(self, name: str, n: int = 1) -> None:
        """Add ``n`` to a named counter reported in the run record (e.g. model calls)."""
        self.counters[name] = self.counters.get(name, 0) + n
