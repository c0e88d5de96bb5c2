"""The ``toyworld`` probe set: procedurally generated, fully annotated images (the offline default).

Images are generated on the fly from (seed, index); the default seed differs from the streams
ToyNet is trained and tested on, so probe images are unseen by the network.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dndbench.cache import stable_hash
from dndbench.errors import ConfigError
from dndbench.probes.base import PROBES, Annotation, Concept, ProbeConfig, ProbeSet

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

    from dndbench.toyworld.world import SceneSpec


@dataclass
class ToyWorldConfig(ProbeConfig):
    """``size`` images of ``image_size`` pixels generated from ``seed``."""

    seed: int = 1000
    size: int = 2000
    image_size: int = 64


@PROBES.register("toyworld")
class ToyWorldProbe(ProbeSet[ToyWorldConfig]):
    """Generated toy-world images with shape/colour/texture masks and scene labels."""

    Config = ToyWorldConfig

    #: renders kept in memory, so image(i) followed by annotation(i) renders once
    _KEEP = 64

    def __init__(self, config: ToyWorldConfig) -> None:
        super().__init__(config)
        if config.size < 1 or config.image_size < 8:
            raise ConfigError(f"probe toyworld needs size >= 1 and image_size >= 8, got "
                              f"size={config.size}, image_size={config.image_size}")
        from dndbench.toyworld.train_toynet import TRAIN_STREAM_BASE

        if config.seed >= TRAIN_STREAM_BASE:
            raise ConfigError(f"probe toyworld seed must be below {TRAIN_STREAM_BASE} "
                              f"(larger seeds are ToyNet's training streams), got {config.seed}")
        self._renders: OrderedDict[int, tuple[np.ndarray, SceneSpec, np.ndarray]] = OrderedDict()

    def __len__(self) -> int:
        return self.config.size

    def _render(self, index: int) -> "tuple[np.ndarray, SceneSpec, np.ndarray]":
        if not 0 <= index < len(self):
            raise IndexError(f"probe toyworld has {len(self)} images, asked for {index}")
        hit = self._renders.get(index)
        if hit is None:
            from dndbench.toyworld.render import generate

            hit = generate(self.config.seed, index, self.config.image_size)
            self._renders[index] = hit
            if len(self._renders) > self._KEEP:
                self._renders.popitem(last=False)
        return hit

    def image(self, index: int) -> "Image.Image":
        """Image ``index``, tagged with its spec for the oracle backends
        (:mod:`dndbench.toyworld.image_specs`)."""
        from PIL import Image

        from dndbench.toyworld.image_specs import tag

        rgb, spec, _ = self._render(index)
        return tag(Image.fromarray(rgb, "RGB"), spec)

    def spec(self, index: int) -> "SceneSpec":
        """The scene spec image ``index`` was rendered from."""
        return self._render(index)[1]

    def fingerprint(self) -> str:
        from dndbench.toyworld.world import GENERATOR_VERSION

        c = self.config
        return stable_hash("toyworld", GENERATOR_VERSION, c.seed, c.size, c.image_size)

    def concepts(self) -> list[Concept]:
        from dndbench.toyworld.world import all_concepts

        return list(all_concepts())

    def annotation(self, index: int) -> Annotation:
        from dndbench.toyworld.render import annotate

        _, spec, mask = self._render(index)
        return annotate(spec, mask)
