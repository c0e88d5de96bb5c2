"""Network Dissection's masks and IoU tally: each image's unit maps are upsampled (bilinear) to
the label resolution and thresholded at T_k (:func:`unit_masks`), and :class:`IoUTally` counts, per
unit and concept, the intersection, the label pixels and, per category, the mask pixels, so that
IoU = I / (ΣM_cat + ΣL − I).

ΣM_cat follows NetDissect-Lite (``tally_job``): an image adds its mask area to a category only if
a pixel under the mask carries a label of that category, or the image has an image-level label
of it; categories annotated elsewhere in the image add nothing.  A concept's category is its
primary one (the probe's :class:`~dndbench.probes.base.Concept` category; for Broden the
category of highest coverage).  The maps cover the whole label grid: Network Dissection feeds
every image whole, at the probe's resolution (:meth:`~dndbench.models.base.TargetModel.fed_whole`).

Concept ids are global: a concept's pixels are counted on every label layer of the image,
whatever the layer's category (a concept belongs to its primary category wherever it is
labelled, as in NetDissect-Lite), image-level labels (scenes, textures) cover every pixel at the
label resolution, and
units whose map never exceeds T_k in an image are skipped for that image (upsampling cannot exceed
the map's maximum).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:
    import torch

    from dndbench.probes.base import Annotation, Concept, ProbeSet


def label_shape(ann: "Annotation", probe: "ProbeSet", index: int) -> tuple[int, int]:
    """The label resolution (H, W) of image ``index``."""
    if ann.shape is not None:
        return int(ann.shape[0]), int(ann.shape[1])
    for layers in ann.pixel.values():
        return int(layers.shape[-2]), int(layers.shape[-1])
    width, height = probe.image(index).size
    return height, width


def unit_masks(maps: "torch.Tensor", thresholds: "torch.Tensor", shape: tuple[int, int]) -> "torch.Tensor":
    """Bilinearly upsample one image's maps (U, h, w) to ``shape``; return the masks map > T (U, H, W)."""
    import torch
    import torch.nn.functional as F

    if maps.shape[0] == 0:
        return torch.zeros((0, *shape), dtype=torch.bool, device=maps.device)
    up = F.interpolate(maps[None].float(), size=shape, mode="bilinear", align_corners=False)[0]
    return up > float32_floor(thresholds.to(up.device))[:, None, None]


def float32_floor(thresholds: "torch.Tensor") -> "torch.Tensor":
    """The largest float32 <= each threshold: for float32 x, ``x > T`` iff ``x > float32_floor(T)``."""
    import torch

    t32 = thresholds.float()
    above = t32.double() > thresholds.double()
    return torch.where(above, torch.nextafter(t32, torch.full_like(t32, float("-inf"))), t32)


def tally_image(tally: "IoUTally", maps: "torch.Tensor", thresholds: "torch.Tensor",
                ann: "Annotation", shape: tuple[int, int]) -> None:
    """Add one image's maps (U, h, w) to ``tally``; only units whose map exceeds its threshold
    somewhere are upsampled (bilinear values never exceed the map's maximum)."""
    active = (maps.flatten(1).amax(1) > float32_floor(thresholds)).nonzero()[:, 0]
    masks = unit_masks(maps[active], thresholds[active], shape)
    tally.add(masks, ann, active)


class IoUTally:
    """Streaming intersection / mask / label counts of units x concepts (see the module docstring)."""

    def __init__(self, concepts: Sequence["Concept"], n_units: int, device: str = "cpu") -> None:
        import torch

        self.concepts = list(concepts)
        self.categories = list(dict.fromkeys(c.category for c in self.concepts))
        ids = np.array([c.id for c in self.concepts], np.int64)
        self.lookup = np.full(int(ids.max()) + 1 if len(ids) else 1, -1, np.int64)
        self.lookup[ids] = np.arange(len(ids))
        self.device = torch.device(device)
        self.concept_category = torch.as_tensor(
            [self.categories.index(c.category) for c in self.concepts], device=self.device)
        self.intersection = torch.zeros(n_units, len(ids), dtype=torch.long, device=self.device)
        self.label_count = torch.zeros(len(ids), dtype=torch.long, device=self.device)
        self.mask_by_category = torch.zeros(n_units, len(self.categories), dtype=torch.long,
                                            device=self.device)

    def columns(self, ids: np.ndarray) -> np.ndarray:
        """Concept ids -> tally columns (-1 for 0 / unknown ids)."""
        ids = np.asarray(ids, np.int64)
        ok = (ids > 0) & (ids < len(self.lookup))
        return np.where(ok, self.lookup[np.clip(ids, 0, len(self.lookup) - 1)], -1)

    def add(self, masks: "torch.Tensor", ann: "Annotation",
            units: "torch.Tensor | None" = None) -> None:
        """Add one image: ``masks`` (A, H, W) bool at the label resolution for the tally rows
        ``units`` (default: all rows, A = n_units), ``ann`` the image's labels.  Rows left out
        are units whose mask is empty in this image; labels are counted either way."""
        import torch

        if not ann.categories:
            return
        shape = (int(masks.shape[1]), int(masks.shape[2]))
        n_pixels = shape[0] * shape[1]
        whole = self._image_level_columns(ann)
        cols, onehot = self._pixel_onehot(ann, shape, exclude=whole)
        self.label_count[torch.as_tensor(whole, device=self.device)] += n_pixels
        self.label_count[cols] += onehot.sum(1)
        if units is None:
            units = torch.arange(self.intersection.shape[0], device=self.device)
        if not len(units):
            return
        units = units.to(self.device)[:, None]
        flat = masks.to(self.device).reshape(len(units), n_pixels).float()
        weights = torch.cat([onehot.float(), torch.ones(1, n_pixels, device=self.device)])
        counts = (flat @ weights.T).round_().long()  # exact: integer counts < 2**24
        mask_sum = counts[:, -1:]
        accumulate = lambda t, c, v: t.index_put_((units, c[None]), v, accumulate=True)  # noqa: E731
        whole_t = torch.as_tensor(whole, device=self.device, dtype=torch.long)
        hit = self._categories_hit(counts[:, :-1], cols, whole_t)
        accumulate(self.mask_by_category, torch.arange(len(self.categories), device=self.device),
                   mask_sum * hit)
        accumulate(self.intersection, cols, counts[:, :-1])
        accumulate(self.intersection, whole_t, mask_sum.expand(-1, len(whole)))

    def _categories_hit(self, counts: "torch.Tensor", cols: "torch.Tensor",
                        whole: "torch.Tensor") -> "torch.Tensor":
        """(A, categories) 0/1: whether each unit's mask covers a pixel labelled with a concept
        of the category (``counts`` (A, n) of the pixel concepts ``cols``), or the image has an
        image-level concept (``whole``) of it."""
        import torch

        hit = torch.zeros(counts.shape[0], len(self.categories), dtype=torch.long,
                          device=self.device)
        hit.index_add_(1, self.concept_category[cols], (counts > 0).long())
        hit[:, self.concept_category[whole]] = 1
        return (hit > 0).long()

    def _image_level_columns(self, ann: "Annotation") -> np.ndarray:
        ids = [i for lst in ann.image_level.values() for i in lst]
        cols = self.columns(np.array(ids, np.int64))
        return np.unique(cols[cols >= 0])

    def _pixel_onehot(self, ann: "Annotation", shape: tuple[int, int],
                      exclude: np.ndarray) -> tuple["torch.Tensor", "torch.Tensor"]:
        """Columns (n,) of the concepts labelled at pixels, and their masks (n, H*W) bool; a
        concept on several layers of one pixel counts once; ``exclude`` columns are left out."""
        import torch

        layers = [self._layers_at(arr, shape) for arr in ann.pixel.values()]
        if not layers:
            return (torch.zeros(0, dtype=torch.long, device=self.device),
                    torch.zeros(0, shape[0] * shape[1], dtype=torch.bool, device=self.device))
        cols = self.columns(np.concatenate(layers))  # (L, H*W)
        if len(exclude):
            cols[np.isin(cols, exclude)] = -1
        layer_idx, pixel_idx = np.nonzero(cols >= 0)
        hit = cols[layer_idx, pixel_idx]
        present = np.flatnonzero(np.bincount(hit, minlength=len(self.concepts)))
        local = np.zeros(len(self.concepts), np.int64)
        local[present] = np.arange(len(present))
        onehot = torch.zeros(len(present), shape[0] * shape[1], dtype=torch.bool, device=self.device)
        onehot[torch.as_tensor(local[hit], device=self.device),
               torch.as_tensor(pixel_idx, device=self.device)] = True
        return torch.as_tensor(present, device=self.device), onehot

    @staticmethod
    def _layers_at(arr: "np.ndarray", shape: tuple[int, int]) -> np.ndarray:
        """Label layers (L, H, W) as (L, H*W) at ``shape`` (nearest-neighbour if resized)."""
        arr = np.asarray(arr, np.int64)
        arr = arr.reshape(-1, *arr.shape[-2:])
        if arr.shape[-2:] != shape:
            rows = (np.arange(shape[0]) * arr.shape[-2]) // shape[0]
            cols = (np.arange(shape[1]) * arr.shape[-1]) // shape[1]
            arr = arr[:, rows[:, None], cols[None, :]]
        return arr.reshape(arr.shape[0], -1)

    def iou(self) -> np.ndarray:
        """IoU (units, concepts) = I / (ΣM_cat + ΣL − I), 0 where the denominator is 0."""
        mask = self.mask_by_category[:, self.concept_category]
        union = (mask + self.label_count[None] - self.intersection).double()
        iou = self.intersection.double() / union.clamp(min=1)
        return iou.masked_fill_(union <= 0, 0.0).cpu().numpy()
