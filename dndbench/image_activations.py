"""Pooled activations of images that are not in the probe set (crops, generated images).

:func:`forward_pooled` pushes extra images through a context's target model at its layer and
keeps each image's pooled activations in the call cache, keyed by (model, weights, layer,
pooling, image content), so DnD's step 3 and the ``cosy`` metric share the work whenever they
see the same image.  Passes are padded to whole batches of ``ctx.activations.batch_size`` so an
image's activations do not depend on its batch companions (CPU kernels are not bitwise
batch-size invariant).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

    from dndbench.context import Context

#: bump when the cached values would differ (part of every key)
FORWARD_VERSION = "1"
#: call-cache namespace of the entries; named when only DnD used it, kept so caches stay valid
NAMESPACE = "dnd:pooled"


def padded(items: list[Any], size: int) -> list[Any]:
    """``items`` with its last element repeated up to a multiple of ``size``."""
    return items + items[-1:] * ((-len(items)) % max(1, size)) if items else items


def forward_pooled(ctx: "Context", images: Sequence["Image.Image"], pooling: str,
                   counter: str = "dnd") -> np.ndarray:
    """Pooled activations (len(images), units of the layer) of extra images, cached per image.

    Cache misses are counted in ``ctx.counters`` as ``<counter>/forward_images`` (and the batch
    padding as ``<counter>/forward_padding``).
    """
    from dndbench.backends.base import image_key
    from dndbench.backends.call_cache import CallCache, call_key

    if not images:
        return np.zeros((0, 0), np.float32)
    store = CallCache.for_cache(ctx.cache)
    layer = ctx.model.resolve_layer(ctx.layer)
    params = [FORWARD_VERSION, ctx.model.weights_fingerprint(), layer, pooling]
    keys = [call_key(NAMESPACE, ctx.model.config.name, params, image_key(im)) for im in images]
    found = store.get_many(set(keys))
    todo: dict[str, "Image.Image"] = {}
    for key, image in zip(keys, images):
        if key not in found:
            todo.setdefault(key, image)
    if todo:
        batch = ctx.activations.batch_size
        batch_images = padded(list(todo.values()), batch)
        values = ctx.activations.pooled_for_images(layer, batch_images, pooling)[:len(todo)]
        new = {k: v.astype(np.float32) for k, v in zip(todo, values)}
        store.put_many(new)
        found.update(new)
        ctx.count(f"{counter}/forward_images", len(todo))
        ctx.count(f"{counter}/forward_padding", len(batch_images) - len(todo))
    return np.stack([found[k] for k in keys])
