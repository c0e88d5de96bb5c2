"""Oracle backends of the toy world: ``captioner=oracle`` and ``vlm=oracle``.  **References,
not models**: they read the ground truth of toy images instead of looking at pixels, so a
describer run with them shows what its method reaches when its backends make no mistake (the
top of the backend-strength ladder, ``python -m dndbench backend-ladder``).

A toy image's ground truth is the scene spec it was rendered from, recovered by
:func:`dndbench.toyworld.image_specs.lookup`: probe images and renderer outputs carry it, and
crops and resized copies inherit it from their image.  A crop is described by its whole image's
spec (its box is not recorded).  An image the lookup does not know (not a toy image) gets an
empty caption / a vector on an axis of its own, and a warning.

* ``captioner=oracle``: the spec's canonical caption, the form the toy captioner is trained
  to produce ("a large red outlined circle on grass and a small blue star as a second
  object"; :func:`dndbench.toyworld.captions.slots_caption`), its distractor named only when
  visible;
* ``vlm=oracle``: a bag-of-concepts space with one axis per toy-world concept, one per
  open-vocabulary concept (:data:`~dndbench.toyworld.world.OPEN_CONCEPTS`: ``large object``,
  ``outlined``, ``zigzag``, ``two objects``), plus ``<unk>``.  An image is the weighted sum of
  the concepts it shows (main object's shape, colour, texture, outline and size and the scene
  weigh 1, a visible distractor's shape, colour and texture
  :attr:`OracleVLMConfig.distractor_weight`, "two objects" 1 when a distractor is visible); a
  text is the sum of the concepts it names (synonyms and plurals count,
  :func:`dndbench.toyworld.synonyms.names_concept`), or ``<unk>`` when it names none, so such a
  text matches no image.  Both are L2-normalised: an image-text similarity is the share of
  concepts they have in common.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dndbench.backends.base import (
    CAPTIONERS,
    VLMS,
    BackendConfig,
    Captioner,
    VisionLanguageModel,
)

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

    from dndbench.toyworld.world import SceneSpec

log = logging.getLogger(__name__)

#: what a backend-strength ladder and the docs call these backends
ROLE = "reference"


class _Oracle:
    """Spec lookup with a warning about images that are not toy images."""

    role = ROLE
    track = "toy"
    _unknown = 0

    def specs(self, images: list["Image.Image"]) -> list["SceneSpec | None"]:
        from dndbench.toyworld.image_specs import lookup

        specs = [lookup(im) for im in images]
        missing = sum(s is None for s in specs)
        if missing:
            self._unknown += missing
            log.warning("%s: %d image(s) are not toy-world images it can identify (%d so far); "
                        "they get an empty answer", type(self).__name__, missing, self._unknown)
        return specs


@dataclass
class OracleCaptionerConfig(BackendConfig):
    """``distractor``: name the distractor object, as the toy captioner's template does."""

    distractor: bool = True


@CAPTIONERS.register("oracle")
class OracleCaptioner(_Oracle, Captioner[OracleCaptionerConfig]):
    """Reference, not a model: the true caption of a toy image (read from its scene spec)."""

    Config = OracleCaptionerConfig

    @property
    def model_id(self) -> str:
        return "toyworld-oracle-captioner"

    def _caption_batch(self, images: list["Image.Image"]) -> list[str]:
        from dndbench.toyworld.captions import slots_caption, spec_slots
        from dndbench.toyworld.render import render

        return ["" if spec is None else slots_caption(spec_slots(spec, render(spec)[1]), 0,
                                                      self.config.distractor)
                for spec in self.specs(images)]


@dataclass
class OracleVLMConfig(BackendConfig):
    """``distractor_weight``: weight of a visible distractor's concepts in an image's vector
    (the main object's and the scene's weigh 1)."""

    distractor_weight: float = 0.5


#: the extra axes: texts that name no concept; images that are not toy images
UNK, UNIDENTIFIED = "<unk>", "<unidentified image>"


def concept_axes() -> list[str]:
    """The axes of the oracle VLM's space: every toy-world concept, every open-vocabulary
    concept, ``<unk>`` and ``<unidentified image>``."""
    from dndbench.toyworld.world import OPEN_CONCEPTS, all_concepts

    return [c.name for c in all_concepts()] + list(OPEN_CONCEPTS) + [UNK, UNIDENTIFIED]


def image_vector(spec: "SceneSpec", distractor_weight: float = 0.5,
                 visible: set[int] | None = None) -> "np.ndarray":
    """The unnormalised bag of concepts of ``spec`` (``visible``: the object numbers,
    1-based, that the image shows; default all)."""
    import numpy as np

    from dndbench.toyworld.world import LARGE_RADIUS

    axes = {name: i for i, name in enumerate(concept_axes())}
    vector = np.zeros(len(axes), np.float64)
    vector[axes[spec.scene]] += 1.0
    shown = [k for k in range(len(spec.objects)) if visible is None or k + 1 in visible]
    for k in shown:
        obj = spec.objects[k]
        weight = 1.0 if k == 0 else distractor_weight
        names = [obj.shape, obj.colour, obj.texture] + (["outlined"] if obj.outlined else [])
        if k == 0 and obj.radius >= LARGE_RADIUS:
            names.append("large object")
        for name in names:
            vector[axes[name]] = max(vector[axes[name]], weight)
    if len(shown) >= 2:
        vector[axes["two objects"]] = 1.0
    return vector


def text_vector(text: str) -> "np.ndarray":
    """The unnormalised bag of the concepts ``text`` names (``<unk>`` alone if none)."""
    import numpy as np

    from dndbench.toyworld.synonyms import names_concept

    axes = concept_axes()
    vector = np.array([1.0 if name not in (UNK, UNIDENTIFIED) and names_concept(text, name)
                       else 0.0 for name in axes])
    if not vector.any():
        vector[axes.index(UNK)] = 1.0
    return vector


def _normalised(rows: list["np.ndarray"]) -> "np.ndarray":
    import numpy as np

    matrix = np.stack(rows).astype(np.float32)
    return matrix / np.linalg.norm(matrix, axis=1, keepdims=True).clip(min=1e-12)


def visible_objects(spec: "SceneSpec") -> set[int]:
    """The object numbers (1-based) the rendered image shows on at least
    :data:`~dndbench.toyworld.render.MIN_VISIBLE_FRACTION` of its pixels."""
    import numpy as np

    from dndbench.toyworld.render import MIN_VISIBLE_FRACTION, render

    _, mask = render(spec)
    values, counts = np.unique(mask, return_counts=True)
    return {int(v) for v, n in zip(values, counts)
            if v > 0 and n >= MIN_VISIBLE_FRACTION * mask.size}


@VLMS.register("oracle")
class OracleVLM(_Oracle, VisionLanguageModel[OracleVLMConfig]):
    """Reference, not a model: a bag-of-concepts 'CLIP' that reads a toy image's scene spec."""

    Config = OracleVLMConfig

    @property
    def model_id(self) -> str:
        return "toyworld-oracle-vlm"

    def _encode_images(self, images: list["Image.Image"]) -> "np.ndarray":
        import numpy as np

        rows = []
        for spec in self.specs(images):
            if spec is None:  # an axis of its own: matches no text
                rows.append(np.eye(len(concept_axes()))[concept_axes().index(UNIDENTIFIED)])
            else:
                rows.append(image_vector(spec, self.config.distractor_weight,
                                         visible_objects(spec)))
        return _normalised(rows) if rows else np.zeros((0, len(concept_axes())), np.float32)

    def _encode_texts(self, texts: list[str]) -> "np.ndarray":
        import numpy as np

        if not texts:
            return np.zeros((0, len(concept_axes())), np.float32)
        return _normalised([text_vector(t) for t in texts])
