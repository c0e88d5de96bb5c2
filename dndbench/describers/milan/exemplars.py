"""Exemplars: each unit's top-k probe images (by max-pooled activation) with masks keeping the
unit's top 1 % activations, from the shared activation stage.

The threshold T is the ``quantile`` of all the unit's map values over the probe (what
``np.quantile`` of every value gives).  For a few units it is found without a full pass: the
values above T all lie in the images whose pooled maximum is highest, so maps are fetched in
order of pooled maximum until no remaining image can hold one of the top values.  When the
units' top images cover much of the probe anyway (whole layers, as when annotating), one
streamed pass keeps each unit's largest values and its top images' maps instead.  Maps without
spatial extent (final layers) need no pass: their values are the pooled activations.

Each exemplar image is the part of the probe image that the network saw when it computed the
map (:mod:`dndbench.geometry`: the centre crop of a torchvision ImageNet transform, the whole
image for a model that only resizes), at the network's input size by default, so the mask,
spread over the exemplar, lies on what the unit fired at (MILAN's exemplars are the transformed
dataset images the maps were computed on).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

    from dndbench.context import Context
    from dndbench.geometry import Preprocessing


@dataclass
class Exemplars:
    """Per unit (in ``units`` order): probe indices (U, k), images (U, k, 3, S, S) uint8,
    masks (U, k, 1, S, S) float32 in {0, 1} and thresholds (U,)."""

    units: list[int]
    indices: np.ndarray
    images: np.ndarray
    masks: np.ndarray
    thresholds: np.ndarray


def top_images(pooled_max: np.ndarray, k: int) -> np.ndarray:
    """Indices (U, k) of each unit's k highest pooled activations (ties: lower index first)."""
    order = np.argsort(-pooled_max.T, axis=1, kind="stable")
    return order[:, :k]


def _quantile_from_top(values: np.ndarray, total: int, q: float) -> float:
    """``np.quantile`` (linear) of a set of ``total`` values given only its largest ones."""
    r = q * (total - 1)
    lo = math.floor(r)
    ranks_from_top = [total - 1 - lo, total - 1 - min(lo + 1, total - 1)]
    top = np.sort(values)[::-1]
    a, b = top[ranks_from_top[0]], top[ranks_from_top[1]]
    return float(a + (r - lo) * (b - a))


def thresholds(ctx: "Context", units: Sequence[int], q: float, chunk: int = 64) -> np.ndarray:
    """The exact ``q`` quantile of each unit's map values over the whole probe (lazy search)."""
    pooled = ctx.activations.pooled(ctx.layer).max[:, list(units)]
    n_images = pooled.shape[0]
    first = ctx.activations.maps(ctx.layer, list(units), [0])
    per_image = int(first.shape[2] * first.shape[3])
    if per_image == 1:  # the maps are the pooled values
        return np.quantile(pooled, q, axis=0)
    total = n_images * per_image
    need = total - math.floor(q * (total - 1))  # how many of the largest values the quantile uses
    order = np.argsort(-pooled.T, axis=1, kind="stable")  # (U, N)
    taken = [np.zeros(0, np.float32) for _ in units]
    seen = 0
    pending = list(range(len(units)))
    while pending:
        stop = min(n_images, seen + chunk)
        wanted = sorted({int(i) for u in pending for i in order[u, seen:stop]})
        maps = ctx.activations.maps(ctx.layer, list(units), wanted)
        where = {img: row for row, img in enumerate(wanted)}
        still = []
        for u in pending:
            rows = [where[int(i)] for i in order[u, seen:stop]]
            vals = np.concatenate([taken[u], maps[rows, u].ravel()])
            taken[u] = np.sort(vals)[::-1][:need]
            nxt = pooled[order[u, stop], u] if stop < n_images else -np.inf
            if len(taken[u]) < need or (stop < n_images and taken[u][-1] < nxt):
                still.append(u)
        pending, seen = still, stop
    return np.array([_quantile_from_top(taken[u], total, q) for u in range(len(units))])


def unit_masks(maps: np.ndarray, threshold: float, size: int) -> np.ndarray:
    """Maps (k, h, w) -> masks (k, 1, size, size): bilinear upsampling > T; 1x1 maps (final
    layers) cover the whole image."""
    import torch
    import torch.nn.functional as F

    if maps.shape[-1] == 1 and maps.shape[-2] == 1:
        return np.ones((maps.shape[0], 1, size, size), np.float32)
    up = F.interpolate(torch.from_numpy(maps[:, None]).float(), size=(size, size),
                       mode="bilinear", align_corners=False)
    return (up > threshold).float().numpy()


def full_pass(ctx: "Context", units: Sequence[int], top: np.ndarray,
              q: float) -> tuple[np.ndarray, np.ndarray]:
    """One streamed pass over the probe: the exact ``q`` quantile of each unit's map values and
    the maps (U, k, h, w) of its ``top`` images."""
    first = ctx.activations.maps(ctx.layer, list(units), [0])
    total = len(ctx.probe) * first.shape[2] * first.shape[3]
    need = total - math.floor(q * (total - 1))  # how many of the largest values the quantile uses
    largest = np.zeros((len(units), 0), np.float32)
    top_maps = np.zeros((*top.shape, *first.shape[2:]), np.float32)
    for indices, batch in ctx.activations.stream_maps(ctx.layer, units):
        maps = batch.numpy()
        values = np.concatenate([largest, maps.transpose(1, 0, 2, 3).reshape(len(units), -1)], 1)
        cut = max(0, values.shape[1] - need)
        largest = np.partition(values, cut, 1)[:, cut:]
        u, j, b = np.nonzero(top[:, :, None] == indices[None, None, :])
        top_maps[u, j] = maps[b, u]
    return np.array([_quantile_from_top(v, total, q) for v in largest]), top_maps


def _prefer_full_pass(pooled: np.ndarray, chunk: int = 64) -> bool:
    """Whether the lazy search's first fetch (each unit's ``chunk`` top images) would already
    cover half the probe."""
    first = top_images(pooled, min(chunk, pooled.shape[0]))
    return len(np.unique(first)) * 2 >= pooled.shape[0]


def _lazy(ctx: "Context", units: list[int], top: np.ndarray, q: float) -> tuple[np.ndarray, np.ndarray]:
    """Thresholds by the lazy search and the maps (U, k, h, w) of the top images."""
    thr = thresholds(ctx, units, q)
    wanted = sorted({int(i) for i in top.ravel()})
    maps = ctx.activations.maps(ctx.layer, units, wanted)
    where = {img: row for row, img in enumerate(wanted)}
    rows = np.vectorize(lambda i: where[int(i)])(top)
    return thr, maps[rows, np.arange(len(units))[:, None]]


def compute_exemplars(ctx: "Context", units: Sequence[int] | None = None, k: int = 15,
                      quantile: float = 0.99, image_size: int | None = None) -> Exemplars:
    """Exemplars of ``units`` (default ``ctx.units``) of ``ctx.layer``."""
    units = list(ctx.units if units is None else units)
    pooled = ctx.activations.pooled(ctx.layer).max[:, units]
    k = min(k, pooled.shape[0])
    top = top_images(pooled, k)
    if _prefer_full_pass(pooled):
        thr, top_maps = full_pass(ctx, units, top, quantile)
    else:
        thr, top_maps = _lazy(ctx, units, top, quantile)
    wanted = sorted({int(i) for i in top.ravel()})
    pictures = {i: ctx.probe.image(i).convert("RGB") for i in wanted}
    prep = ctx.model.preprocessing()
    size = image_size or prep.input_size(*pictures[wanted[0]].size)[1]
    images = [np.stack([seen_picture(pictures[int(i)], prep, size) for i in row]) for row in top]
    masks = [unit_masks(top_maps[u], float(thr[u]), size) for u in range(len(units))]
    return Exemplars(units, top, np.stack(images), np.stack(masks), thr)


def seen_picture(image: "Image.Image", prep: "Preprocessing", size: int) -> np.ndarray:
    """The region of ``image`` that a model with ``prep`` sees, as a (3, size, size) uint8
    array (bilinear resampling; the image itself when it is already that region and size)."""
    from PIL import Image

    from dndbench.geometry import crop_region

    picture = crop_region(image, prep.seen_region(*image.size), (size, size),
                          Image.Resampling.BILINEAR)
    return np.asarray(picture).transpose(2, 0, 1).copy()
