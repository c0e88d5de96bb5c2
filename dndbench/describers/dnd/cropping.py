"""DnD step 1: attention cropping (Bai et al., TMLR 2025; ``docs/describers/dnd.md``).

A unit's activation map on one of its top images is turned into an 8-bit heatmap, upsampled to
the crop resolution, thresholded with Otsu's method; the bounding boxes of the foreground
regions (external contours = connected components with their holes filled) are sorted by area
and accepted greedily under the overlap limits.  Boxes are ``(x0, y0, x1, y1)`` with exclusive
ends, in pixels of the ``size`` x ``size`` *frame*: the region of the image that the network saw
when it computed the map (:meth:`~dndbench.geometry.Preprocessing.seen_region`; for a
torchvision ImageNet model the centre crop of ``weights.transforms()``, for a model that resizes
the whole image, the whole image), resized to ``size`` x ``size``.  Crops are cut from that
frame, so they show what the map's hot cells saw.  (The released DnD code squashes the whole
image to 375 x 375, runs the model on the square and spreads the map over all of it, although
the model saw only its central 87.5 %; ``docs/real_track.md`` lists this deviation.)
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

from dndbench.describers.dnd.config import HeatmapMode
from dndbench.geometry import Preprocessing, Region, crop_region, frame_to_image, full_region

if TYPE_CHECKING:
    from PIL import Image

Box = tuple[int, int, int, int]
#: heatmap conversions (see :class:`~dndbench.describers.dnd.config.HeatmapMode`)
HEATMAP_MODES = tuple(HeatmapMode.values())


def heatmap_uint8(activation: np.ndarray, mode: str = "minmax") -> np.ndarray:
    """A 2-D activation map as an 8-bit grayscale image."""
    a = np.asarray(activation, np.float64)
    if mode == "minmax":
        lo, hi = float(a.min()), float(a.max())
        if hi <= lo:
            return np.zeros(a.shape, np.uint8)
        return np.round((a - lo) / (hi - lo) * 255.0).astype(np.uint8)
    if mode == "raw":
        return (np.floor(np.clip(a, 0, None) * 255.0).astype(np.int64) % 256).astype(np.uint8)
    raise ValueError(f"heatmap mode must be one of {HEATMAP_MODES}, got {mode!r}")


def upsample(heatmap: np.ndarray, size: int) -> np.ndarray:
    """Resize an 8-bit map to ``size`` x ``size`` (PIL's default resampling, as the code)."""
    from PIL import Image

    return np.asarray(Image.fromarray(heatmap, "L").resize((size, size)))


def otsu_boxes(heatmap: np.ndarray) -> list[Box]:
    """Bounding boxes of the Otsu-foreground regions of an 8-bit map (none if it is flat)."""
    from scipy import ndimage
    from skimage.filters import threshold_otsu

    if heatmap.min() == heatmap.max():
        return []
    mask = heatmap > threshold_otsu(heatmap)
    filled = ndimage.binary_fill_holes(mask)
    labels, _ = ndimage.label(filled, structure=np.ones((3, 3), bool))
    return [(s[1].start, s[0].start, s[1].stop, s[0].stop) for s in ndimage.find_objects(labels)]


def box_area(box: Box) -> int:
    return max(0, box[2] - box[0]) * max(0, box[3] - box[1])


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes."""
    inter = box_area((max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])))
    union = box_area(a) + box_area(b) - inter
    return inter / union if union else 0.0


def select_boxes(boxes: Sequence[Box], size: int, max_crops: int = 4, max_iou: float = 0.5,
                 max_full_iou: float = 0.8) -> list[Box]:
    """Largest first: keep a box if its IoU with every kept box is <= ``max_iou`` and its IoU
    with the whole image is < ``max_full_iou``; at most ``max_crops`` boxes."""
    full = (0, 0, size, size)
    kept: list[Box] = []
    for box in sorted(boxes, key=box_area, reverse=True):
        if len(kept) >= max_crops:
            break
        if iou(box, full) >= max_full_iou or box_area(box) == 0:
            continue
        if all(iou(box, other) <= max_iou for other in kept):
            kept.append(box)
    return kept


def crop_boxes(activation: np.ndarray, size: int = 375, mode: str = "minmax", max_crops: int = 4,
               max_iou: float = 0.5, max_full_iou: float = 0.8) -> list[Box]:
    """The accepted crop boxes of one activation map (h, w)."""
    heat = upsample(heatmap_uint8(activation, mode), size)
    return select_boxes(otsu_boxes(heat), size, max_crops, max_iou, max_full_iou)


def seen_region(image: "Image.Image", preprocessing: Preprocessing | None) -> Region:
    """The region of ``image`` that a model with ``preprocessing`` sees (None: all of it)."""
    if preprocessing is None:
        return full_region(*image.size)
    return preprocessing.seen_region(*image.size)


def crop(image: "Image.Image", box: Box, size: int = 375,
         preprocessing: Preprocessing | None = None) -> "Image.Image":
    """The frame of ``image`` (its region seen through ``preprocessing``, default the whole
    image, resized to ``size`` x ``size``), cut to ``box`` and resized back to ``size``."""
    frame = crop_region(image.convert("RGB"), seen_region(image, preprocessing), (size, size))
    return frame.crop(box).resize((size, size))


def box_in_image(image: "Image.Image", box: Box, size: int = 375,
                 preprocessing: Preprocessing | None = None) -> Region:
    """Where crop ``box`` (frame pixels) lies in ``image``, in the image's own pixels."""
    return frame_to_image(box, seen_region(image, preprocessing), (size, size))
