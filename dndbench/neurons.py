"""NeuronSet: the explicit (model, layer, units) that every describer of a comparison shares."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dndbench.cache import stable_hash
from dndbench.errors import ConfigError

if TYPE_CHECKING:
    from dndbench.models.base import TargetModel


#: layer aliases that stand for every layer holding planted units
PLANTED_LAYERS = ("planted", "all")


@dataclass
class NeuronsConfig:
    """Which units to describe: ``layer`` and ``units``.

    ``layer`` is a module name or ``final``, several of them (``[layer2,layer3]`` or
    ``"layer2,layer3"``: one run describes and scores each layer), or ``planted``: every layer
    that holds planted units (``all`` means the same with ``units=planted``).  ``units`` (applied
    to each layer): ``all``, ``first:K``, ``random:K`` (with ``seed``), ``planted`` (units with
    known concepts), a list of ids (``[0,5,9]`` or ``"0,5,9"``) or ``file:PATH`` (one id per
    line).  ``shard``: ``i/n`` describes only the i-th of n contiguous parts of each layer's
    selection (:func:`shard_units`; empty: all of it); the tables keep the whole selection's
    key and size, so ``leaderboard`` merges the n shards' runs into the whole set's table."""

    layer: Any = "final"
    units: Any = "all"
    seed: int = 0
    shard: str = ""

    def __post_init__(self) -> None:
        parse_shard(self.shard)  # a bad value fails when the config is composed


@dataclass(frozen=True)
class Shard:
    """Part ``index`` (from 0) of ``count`` of a neuron selection."""

    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(value: Any) -> Shard | None:
    """``"i/n"`` as a :class:`Shard` (None for an empty value); ConfigError unless
    ``0 <= i < n``."""
    text = "" if value is None else str(value).strip()
    if not text:
        return None
    how = "write neurons.shard=i/n with 0 <= i < n, e.g. neurons.shard=0/2 and neurons.shard=1/2"
    index, slash, count = text.partition("/")
    if not slash or not index.strip().isdigit() or not count.strip().isdigit():
        raise ConfigError(f"neurons.shard={text!r} is not of the form i/n; {how}")
    shard = Shard(int(index), int(count))
    if shard.count < 1:
        raise ConfigError(f"neurons.shard={text}: the number of shards must be at least 1; {how}")
    if shard.index >= shard.count:
        raise ConfigError(f"neurons.shard={text}: shard {shard.index} does not exist among "
                          f"{shard.count} (they are numbered 0..{shard.count - 1}); {how}")
    return shard


def shard_units(units: tuple[int, ...], shard: Shard) -> tuple[int, ...]:
    """The units of ``shard``: contiguous parts of ``units`` in their order, the first
    ``len(units) % count`` parts one unit longer (as ``numpy.array_split``)."""
    size, extra = divmod(len(units), shard.count)
    start = shard.index * size + min(shard.index, extra)
    return units[start:start + size + (shard.index < extra)]


@dataclass(frozen=True)
class NeuronSet:
    """A resolved selection of units of one layer of one model."""

    model: str
    layer: str
    units: tuple[int, ...]
    num_units_in_layer: int
    #: with a shard: the part of ``full_units`` (the whole selection) that ``units`` are
    shard: Shard | None = None
    full_units: tuple[int, ...] = ()

    @property
    def key(self) -> str:
        """Stable hash shared by every method compared on this set; a shard has the key of
        the whole selection, so the tables of its shards merge into the whole set's."""
        units = self.full_units if self.shard is not None else self.units
        return stable_hash("neurons/v1", self.model, self.layer, list(units))

    @property
    def size(self) -> int:
        """The number of units of the whole selection (of every shard together)."""
        return len(self.full_units) if self.shard is not None else len(self.units)

    def to_dict(self) -> dict[str, Any]:
        out = {"model": self.model, "layer": self.layer, "units": list(self.units),
               "num_units_in_layer": self.num_units_in_layer, "key": self.key}
        if self.shard is not None:
            out.update(shard=str(self.shard), full_size=self.size)
        return out


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
        if not 1 <= k <= n:  # never clamped: asking for more units than exist is a mistake
            raise ConfigError(f"neurons.units={spec}: layer {layer!r} of model "
                              f"{model.config.name!r} has {n} units; ask for 1..{n} "
                              f"(or neurons.units=all)")
        if kind == "first":
            return list(range(min(k, n)))
        import numpy as np

        return sorted(np.random.default_rng(seed).choice(n, size=min(k, n), replace=False).tolist())
    if kind == "file" and arg:
        path = Path(arg)
        if not path.is_file():
            raise ConfigError(f"neurons.units={spec!r}: no such file {path}")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise ConfigError(f"neurons.units={spec!r}: {path} is not a UTF-8 text file; it "
                              f"must list one unit id per line") from None
        return _parse_ids([line for line in text.split() if line], f"file {path}")
    if all(part.strip().lstrip("-").isdigit() for part in spec.split(",")):
        return _parse_ids(spec.split(","), "the list")
    raise ConfigError(f"neurons.units={spec!r} not understood; use all, first:K, random:K, "
                      f"planted, file:PATH or a list like [0,5,9]")


def planted_layers(model: "TargetModel") -> list[str]:
    """The model's layers that hold planted units, in network order."""
    names = [n for n, _ in model.network(pretrained=False).named_modules() if n]
    return [n for n in names if model.planted_concepts(n)]


def layer_names(model: "TargetModel", config: NeuronsConfig) -> list[str]:
    """The resolved module names ``config.layer`` selects (in the given order, no repeats)."""
    spec = config.layer
    if isinstance(spec, str) or not hasattr(spec, "__iter__"):
        items = [part.strip() for part in str(spec).split(",")]
    else:
        items = [str(part).strip() for part in spec]
    items = [item for item in items if item]
    if not items:
        raise ConfigError("neurons.layer is empty; name a layer, e.g. neurons.layer=final")
    out: list[str] = []
    for item in items:
        if item in PLANTED_LAYERS:
            if item == "all" and str(config.units).strip() != "planted":
                raise ConfigError("neurons.layer=all means every layer with planted units and "
                                  "needs neurons.units=planted; otherwise list the layers, e.g. "
                                  "neurons.layer=[layer2,layer3]")
            found = planted_layers(model)
            if not found:
                raise ConfigError(f"model {model.config.name!r} has no planted units in any layer")
            out += found
        else:
            out.append(model.resolve_layer(item))
    return list(dict.fromkeys(out))


def neuron_set(model: "TargetModel", layer: str, config: NeuronsConfig) -> NeuronSet:
    """The units ``config.units`` selects in one (resolved) ``layer``, checked to be in range."""
    n = model.num_units(layer)
    units = _select(config.units, n, config.seed, model, layer)
    bad = [u for u in units if not 0 <= u < n]
    if bad:
        raise ConfigError(f"unit {bad[0]} is out of range for layer {layer!r} of model "
                          f"{model.config.name!r}, which has units 0..{n - 1}")
    if not units:
        raise ConfigError("the neuron selection is empty")
    selected = tuple(dict.fromkeys(units))
    shard = parse_shard(config.shard)
    if shard is None:
        return NeuronSet(model.config.name, layer, selected, n)
    if shard.count > len(selected):
        raise ConfigError(f"neurons.shard={shard}: layer {layer!r} has {len(selected)} selected "
                          f"units, too few for {shard.count} shards; use at most "
                          f"{len(selected)} shards")
    return NeuronSet(model.config.name, layer, shard_units(selected, shard), n, shard=shard,
                     full_units=selected)


def resolve_neuron_sets(model: "TargetModel", config: NeuronsConfig) -> list[NeuronSet]:
    """One :class:`NeuronSet` per layer ``config.layer`` selects."""
    return [neuron_set(model, layer, config) for layer in layer_names(model, config)]


def resolve_neurons(model: "TargetModel", config: NeuronsConfig) -> NeuronSet:
    """Resolve a single-layer selection (the layer alias and the units)."""
    sets = resolve_neuron_sets(model, config)
    if len(sets) > 1:
        raise ConfigError(f"neurons.layer={config.layer!r} selects {len(sets)} layers where one "
                          f"is expected")
    return sets[0]
