"""Deliberately weakened toy backends: ``captioner=toy_weak`` and ``vlm=toy_weak``, the bottom
rung of the backend-strength ladder (``python -m dndbench backend-ladder``).

Both are the trained toy backends (same weights, :mod:`dndbench.toyworld.toy_backends`) with a
seeded share of their outputs corrupted:

* ``captioner=toy_weak``: each content slot (:data:`CORRUPTED_SLOTS`: shape, colour, texture,
  scene, outline, size, distractor and its shape and colour; not whether the view shows an
  object at all) of each image is, with probability ``fraction``, replaced by a uniformly
  drawn *other* value of that slot;
* ``vlm=toy_weak``: each image's embedding is, with probability ``fraction``, replaced by the
  embedding of the caption of a random toy scene (the image "looks like" another scene); text
  embeddings are the toy CLIP's.

The draws are seeded by ``corruption_seed`` and the image's pixels, so an image always gets the
same output (what the call cache stores) and a rerun gives the same figures.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dndbench.backends.base import CAPTIONERS, VLMS, image_key
from dndbench.errors import ConfigError
from dndbench.toyworld.toy_backends import ToyCaptioner, ToyCLIP, ToyModelConfig

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image


#: the caption slots the weak captioner corrupts
CORRUPTED_SLOTS = ("shape", "colour", "texture", "scene", "outlined", "size", "distractor",
                   "distractor_shape", "distractor_colour")


@dataclass
class ToyWeakConfig(ToyModelConfig):
    """``fraction``: probability that an output part is corrupted (0: the trained backend,
    1: every part); ``corruption_seed``: seeds the draws."""

    cache_tag = "ToyWeakConfig"

    fraction: float = 0.5
    corruption_seed: int = 0


def _check(config: ToyWeakConfig, kind: str) -> None:
    if not 0.0 <= config.fraction <= 1.0:
        raise ConfigError(f"{kind} toy_weak: fraction must be in [0, 1] (got {config.fraction})")


def image_rng(seed: int, image: "Image.Image", salt: str) -> "np.random.Generator":
    """A generator seeded by ``seed``, the image's pixels and ``salt``."""
    import numpy as np

    digest = hashlib.sha256(f"{salt}:{image_key(image)}".encode()).digest()
    return np.random.default_rng([int(seed), *(int.from_bytes(digest[i:i + 4], "little")
                                               for i in range(0, 16, 4))])


def corrupt_slots(preds: dict[str, "np.ndarray"], images: list["Image.Image"], fraction: float,
                  seed: int) -> tuple[dict[str, "np.ndarray"], dict[str, "np.ndarray"]]:
    """Slot predictions (class indices) with a seeded ``fraction`` of (image, slot) values of
    :data:`CORRUPTED_SLOTS` replaced by another value of the slot; also the boolean mask of the
    replaced ones, per slot."""
    import numpy as np

    from dndbench.toyworld.backend_network import SLOTS

    out = {slot: np.array(values, copy=True) for slot, values in preds.items()}
    hit = {slot: np.zeros(len(values), bool) for slot, values in preds.items()}
    for i, image in enumerate(images):
        rng = image_rng(seed, image, "caption")
        for slot in CORRUPTED_SLOTS:
            classes = SLOTS[slot]
            draw, shift = rng.random(), int(rng.integers(1, len(classes)))
            if draw < fraction:
                out[slot][i] = (int(out[slot][i]) + shift) % len(classes)
                hit[slot][i] = True
    return out, hit


@CAPTIONERS.register("toy_weak")
class ToyWeakCaptioner(ToyCaptioner):
    """The toy captioner with a seeded fraction of caption slots corrupted (a weak backend)."""

    Config = ToyWeakConfig
    config: ToyWeakConfig

    def __init__(self, config: ToyWeakConfig, **services: Any) -> None:
        _check(config, "captioner")
        super().__init__(config, **services)

    def _caption_batch(self, images: list["Image.Image"]) -> list[str]:
        import torch

        from dndbench.toyworld.backend_network import image_batch
        from dndbench.toyworld.train_toy_backends import predicted_captions

        with torch.no_grad():
            _, logits = self.model().encode_image(image_batch(images).to(self.device))
        preds = {k: v.argmax(1).cpu().numpy() for k, v in logits.items()}
        corrupted, _ = corrupt_slots(preds, images, self.config.fraction,
                                     self.config.corruption_seed)
        return predicted_captions(corrupted)


@VLMS.register("toy_weak")
class ToyWeakCLIP(ToyCLIP):
    """The toy CLIP with a seeded fraction of images encoded as a random other toy scene."""

    Config = ToyWeakConfig
    config: ToyWeakConfig

    def __init__(self, config: ToyWeakConfig, **services: Any) -> None:
        _check(config, "vlm")
        super().__init__(config, **services)

    def corrupted(self, images: list["Image.Image"]) -> list[str | None]:
        """Per image: the caption of the random scene it is encoded as, or None (kept)."""
        from dndbench.toyworld.captions import canonical_caption
        from dndbench.toyworld.world import sample_scene

        out: list[str | None] = []
        for image in images:
            rng = image_rng(self.config.corruption_seed, image, "vlm")
            swap = rng.random() < self.config.fraction
            out.append(canonical_caption(sample_scene(rng)) if swap else None)
        return out

    def _encode_images(self, images: list["Image.Image"]) -> "np.ndarray":
        from dndbench.toyworld.train_toy_backends import encode_texts

        emb = super()._encode_images(images)
        swaps = self.corrupted(images)
        rows = [i for i, text in enumerate(swaps) if text is not None]
        if rows:
            emb[rows] = encode_texts(self.model(), [str(swaps[i]) for i in rows], self.device)
        return emb
