"""Probe sets: the images pushed through a target model, optionally with concept annotations."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from dndbench.cache import Cache
from dndbench.registry import ComponentConfig, Registry

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image


#: values of every probe's ``split`` option
SPLITS = ("all", "describe", "score")


@dataclass
class ProbeConfig(ComponentConfig):
    """Options every probe set has.

    ``split`` picks the images a run uses: ``all`` of them, or one side of a seeded partition of
    the image indices, ``describe`` (what describers see) or ``score`` (held out for metrics that
    predict activations, see :meth:`dndbench.context.Context.heldout`).  ``score_fraction`` of the
    images go to ``score``; ``split_seed`` seeds the partition.  The split takes effect where a
    run's :class:`~dndbench.context.Context` is built (:func:`apply_split`); a probe object's own
    indices always cover all of its images.
    """

    split: str = "all"
    score_fraction: float = 0.5
    split_seed: int = 0


C = TypeVar("C", bound=ProbeConfig)


@dataclass(frozen=True)
class Concept:
    """A labelled concept of an annotated probe set; ``id`` is global over all categories (> 0)."""

    id: int
    name: str
    category: str


@dataclass
class Annotation:
    """Concept labels of one image.

    ``pixel[category]`` is an int array of shape (L, H, W): L label layers (an image may carry
    several labels of one category at a pixel), each pixel holds a concept id or 0.
    ``image_level[category]`` lists concept ids that hold for the whole image (scenes, textures).
    A category absent from both dicts is *not annotated* for this image.
    ``shape`` is the label resolution (H, W); image-level labels cover H x W pixels.  When it is
    None, the pixel arrays' shape is used (or, without any, the image's own size).
    """

    pixel: dict[str, "np.ndarray"] = field(default_factory=dict)
    image_level: dict[str, list[int]] = field(default_factory=dict)
    shape: tuple[int, int] | None = None

    @property
    def categories(self) -> set[str]:
        return set(self.pixel) | set(self.image_level)


class ProbeSet(ABC, Generic[C]):
    """A finite, indexable set of RGB images (index order is fixed); ``ProbeSet[MyConfig]`` with
    ``Config = MyConfig`` types ``self.config``."""

    Config: type[ProbeConfig] = ProbeConfig

    def __init__(self, config: C) -> None:
        self.config: C = config
        #: where generated or downloaded data is kept; the run replaces it with the run's cache
        self.cache = Cache()

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def image(self, index: int) -> "Image.Image":
        """Image ``index`` as an RGB PIL image; raise DataError naming the file if it is corrupt."""

    @abstractmethod
    def fingerprint(self) -> str:
        """A string that changes whenever the images change (part of cache keys)."""

    # -- annotations (optional) -----------------------------------------------------------------
    def concepts(self) -> list[Concept]:
        """Annotated concepts; empty for an unannotated probe set."""
        return []

    def annotation(self, index: int) -> Annotation:
        """Concept labels of image ``index``."""
        raise NotImplementedError(f"probe {self.config.name!r} has no concept annotations")

    @property
    def has_annotations(self) -> bool:
        return bool(self.concepts())

    # -- describe / score split -----------------------------------------------------------------
    def selected(self) -> "ProbeSet[Any]":
        """The images this probe's ``split`` option selects (itself for ``split=all``)."""
        return apply_split(self)

    def complement(self) -> "ProbeSet[Any] | None":
        """The images outside this probe's split; None when it holds every image."""
        return None


# -- the describe / score split ------------------------------------------------------------------
def split_indices(n: int, score_fraction: float = 0.5, seed: int = 0) -> dict[str, list[int]]:
    """The partition of image indices ``0..n-1`` into ``describe`` and ``score`` (each sorted).

    A permutation seeded by ``(seed, n)`` puts ``round(n * score_fraction)`` images (at least
    one, and at least one fewer than ``n``) into ``score``; it depends on nothing else, so every
    instance of a probe set of ``n`` images splits the same way.
    """
    import numpy as np

    from dndbench.cache import stable_hash
    from dndbench.errors import ConfigError, DataError

    if not 0.0 < score_fraction < 1.0:
        raise ConfigError(f"probe.score_fraction must lie strictly between 0 and 1, got {score_fraction}")
    if n < 2:
        raise DataError(f"a probe set of {n} image(s) cannot be split into describe and score")
    k = min(n - 1, max(1, round(n * score_fraction)))
    rng = np.random.default_rng(int(stable_hash("probe-split/v1", seed, n), 16))
    order = rng.permutation(n)
    return {"describe": sorted(int(i) for i in order[k:]),
            "score": sorted(int(i) for i in order[:k])}


class ProbeSplit(ProbeSet[Any]):
    """One side (``describe`` or ``score``) of a probe set's partition (:func:`split_indices`):
    image ``i`` is image ``source_index(i)`` of :attr:`base`, annotations included.

    Methods particular to the base probe (e.g. the toy probe's ``spec``) are reached through
    ``base`` with :meth:`source_index`.  The cache is the base probe's.
    """

    def __init__(self, base: ProbeSet[Any], split: str) -> None:
        import dataclasses

        from dndbench.errors import ConfigError

        if split not in ("describe", "score"):
            raise ConfigError(f"a probe split is describe or score, got {split!r}")
        if not hasattr(base.config, "split"):
            raise ConfigError(f"probe {base.config.name!r}: its config does not derive from "
                              f"ProbeConfig, so it cannot be split")
        self.base = base
        cache = base.cache
        super().__init__(dataclasses.replace(base.config, split=split))
        self.cache = cache
        self._indices: list[int] | None = None

    @property
    def cache(self) -> Cache:
        return self.base.cache

    @cache.setter
    def cache(self, value: Cache) -> None:
        self.base.cache = value

    @property
    def split(self) -> str:
        """``describe`` or ``score``."""
        return str(self.config.split)

    @property
    def indices(self) -> list[int]:
        """The base probe's indices of this side's images, in order."""
        if self._indices is None:
            c = self.config
            self._indices = split_indices(len(self.base), c.score_fraction, c.split_seed)[c.split]
        return self._indices

    def source_index(self, index: int) -> int:
        """The base probe's index of image ``index`` of this split."""
        return self.indices[index]

    def complement(self) -> "ProbeSplit":
        """The other side of the partition (same base probe)."""
        return ProbeSplit(self.base, "score" if self.split == "describe" else "describe")

    def __len__(self) -> int:
        return len(self.indices)

    def image(self, index: int) -> "Image.Image":
        return self.base.image(self.source_index(index))

    def fingerprint(self) -> str:
        """The base probe's fingerprint with the split's name, fraction and seed."""
        from dndbench.cache import stable_hash

        c = self.config
        return stable_hash("probe-split/v1", self.base.fingerprint(), c.split, c.score_fraction,
                           c.split_seed)

    def concepts(self) -> list[Concept]:
        return self.base.concepts()

    def annotation(self, index: int) -> Annotation:
        return self.base.annotation(self.source_index(index))


def apply_split(probe: ProbeSet[Any]) -> ProbeSet[Any]:
    """``probe`` restricted to the images its ``split`` option selects (``probe`` itself for
    ``all`` or when it already is a split); ConfigError for an unknown split name."""
    from dndbench.errors import ConfigError

    split = getattr(probe.config, "split", "all")
    if split not in SPLITS:
        raise ConfigError(f"probe.split must be one of {', '.join(SPLITS)}, got {split!r}")
    if split == "all" or isinstance(probe, ProbeSplit):
        return probe
    return ProbeSplit(probe, split)


PROBES: Registry[ProbeSet[Any]] = Registry("probe")
