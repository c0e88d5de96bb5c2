"""NeuronSet: the explicit (model, layer, units) that every describer of a comparison shares."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dndbench.cache import stable_hash
from dndbench.errors import ConfigError

if TYPE_CHECKING:
    from dndbench.models.base import TargetModel


@dataclass
class NeuronsConfig:
    """Which units to describe: ``layer`` (a module name or ``final``) and ``units``:
    ``all``, ``first:K``, ``random:K`` (with ``seed``), ``planted`` (units with known concepts),
    a list of ids (``[0,5,9]`` or ``"0,5,9"``) or ``file:PATH`` (one id per line)."""

    layer: str = "final"
    units: Any = "all"
    seed: int = 0


@dataclass(frozen=True)
class NeuronSet:
    """A resolved selection of units of one layer of one model."""

    model: str
    layer: str
    units: tuple[int, ...]
    num_units_in_layer: int

    @property
    def key(self) -> str:
        """Stable hash shared by every method compared on this set."""
        return stable_hash("neurons/v1", self.model, self.layer, list(self.units))

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "layer": self.layer, "units": list(self.units),
                "num_units_in_layer": self.num_units_in_layer, "key": self.key}


def _parse_ids(values: Any, source: str) -> list[int]:
    try:
        return [int(v) for v in values]
    except (TypeError, ValueError):
        raise ConfigError(f"neurons.units: {source} must hold integer unit ids, got {values!r}") from None


def _select(spec: Any, n: int, seed: int, model: "TargetModel", layer: str) -> list[int]:
    if isinstance(spec, (list, tuple)) or (hasattr(spec, "__iter__") and not isinstance(spec, str)):
        return _parse_ids(list(spec), "the list")
    if isinstance(spec, int):
        return [spec]
    spec = str(spec).strip()
    if spec == "all":
        return list(range(n))
    if spec == "planted":
        planted = model.planted_concepts(layer)
        if not planted:
            raise ConfigError(f"model {model.config.name!r} has no planted units in layer {layer!r}")
        return sorted(planted)
    kind, _, arg = spec.partition(":")
    if kind in ("first", "random") and arg:
        try:
            k = int(arg)
        except ValueError:
            raise ConfigError(f"neurons.units={spec!r}: expected {kind}:<integer>") from None
        if kind == "first":
            return list(range(min(k, n)))
        import numpy as np

        return sorted(np.random.default_rng(seed).choice(n, size=min(k, n), replace=False).tolist())
    if kind == "file" and arg:
        path = Path(arg)
        if not path.is_file():
            raise ConfigError(f"neurons.units={spec!r}: no such file {path}")
        return _parse_ids([line for line in path.read_text().split() if line], f"file {path}")
    if all(part.strip().lstrip("-").isdigit() for part in spec.split(",")):
        return _parse_ids(spec.split(","), "the list")
    raise ConfigError(f"neurons.units={spec!r} not understood; use all, first:K, random:K, "
                      f"planted, file:PATH or a list like [0,5,9]")


def resolve_neurons(model: "TargetModel", config: NeuronsConfig) -> NeuronSet:
    """Resolve the layer alias and unit selection, checking every id is in range."""
    layer = model.resolve_layer(config.layer)
    n = model.num_units(layer)
    units = _select(config.units, n, config.seed, model, layer)
    bad = [u for u in units if not 0 <= u < n]
    if bad:
        raise ConfigError(f"unit {bad[0]} is out of range for layer {layer!r} of model "
                          f"{model.config.name!r}, which has units 0..{n - 1}")
    if not units:
        raise ConfigError("the neuron selection is empty")
    return NeuronSet(model.config.name, layer, tuple(dict.fromkeys(units)), n)
