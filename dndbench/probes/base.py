"""Probe sets: the images pushed through a target model, optionally with concept annotations."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from dndbench.cache import Cache
from dndbench.registry import ComponentConfig, Registry

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image


@dataclass
class ProbeConfig(ComponentConfig):
    """Options every probe set has."""


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


class ProbeSet(ABC):
    """A finite, indexable set of RGB images (index order is fixed)."""

    Config = ProbeConfig

    def __init__(self, config: ProbeConfig) -> None:
        self.config = config
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


PROBES: Registry[ProbeSet] = Registry("probe")
