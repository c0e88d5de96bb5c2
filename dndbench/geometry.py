"""Registration of activation maps with images: which part of an original image a network saw.

A torchvision ImageNet classifier does not see the image it is given: ``weights.transforms()``
resizes the shorter side to 256 and cuts the central 224 x 224 square, so for a 500 x 375 image
the network sees only the square ``x ∈ [85.0, 413.5], y ∈ [23.4, 351.6]`` of it.  A unit's
activation map covers that square, and nothing else.  Everything that puts a map back on an
image (DnD's attention crops, Network Dissection's masks, MILAN's exemplars) goes through this
module:

* :class:`Preprocessing` — the geometry of a model's preprocessing (an optional resize, then an
  optional centre crop), with torchvision's exact sizes and rounding;
  :func:`from_transform` reads it off a torchvision transform;
* :meth:`Preprocessing.seen_region` — the region of an original image the network input shows,
  in original pixel coordinates;
* :func:`cell_box`, :func:`frame_to_image`, :func:`image_to_frame` — a map cell, or a box in a
  picture of the region, as a box of the original image (and back);
* :func:`crop_region` — the seen region cut out of the original image (at any size).

Coordinates are continuous pixel coordinates: pixel ``(col, row)`` covers
``[col, col + 1) x [row, row + 1)``; a region is ``(x0, y0, x1, y1)``.  A map of ``h x w``
cells is taken to tile its region evenly (cell ``(i, j)`` covers the ``i``-th of ``h`` rows and
the ``j``-th of ``w`` columns), as bilinear upsampling with ``align_corners=False`` assumes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    from PIL import Image

#: ``(x0, y0, x1, y1)`` in (continuous) pixel coordinates
Region = tuple[float, float, float, float]
#: transforms that do not move pixels (by class name: torchvision v1 and v2 alike)
NEUTRAL_STEPS = frozenset({"ToTensor", "PILToTensor", "ToImage", "ToImageTensor", "Normalize",
                           "ConvertImageDtype", "ToDtype", "ToPureTensor", "ConvertImage"})


def full_region(width: float, height: float) -> Region:
    """The region of a whole ``width`` x ``height`` image."""
    return (0.0, 0.0, float(width), float(height))


def _crop_offset(size: int, crop: int) -> int:
    """Offset of a centre crop of ``crop`` pixels in ``size`` pixels (torchvision's rounding;
    negative when the crop is larger and torchvision pads)."""
    if crop > size:
        return -((crop - size) // 2)
    return int(round((size - crop) / 2.0))


@dataclass(frozen=True)
class Preprocessing:
    """The geometry of a model's preprocessing: ``resize`` (None; an int, the shorter side, as
    torchvision's ``Resize(int)``, capped by ``max_size``; or ``(h, w)``, an exact size), then a
    centre ``crop`` of ``(h, w)`` (None: no crop).  ``Preprocessing()`` feeds the image as it is."""

    resize: int | tuple[int, int] | None = None
    crop: tuple[int, int] | None = None
    max_size: int | None = None

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """``(w, h)`` of the image after the resize step (torchvision's integer sizes)."""
        if self.resize is None:
            return int(width), int(height)
        if isinstance(self.resize, int):
            short, long = (width, height) if width <= height else (height, width)
            new_short, new_long = self.resize, int(self.resize * long / short)
            if self.max_size is not None and new_long > self.max_size:
                new_short, new_long = int(self.max_size * new_short / new_long), self.max_size
            return (new_short, new_long) if width <= height else (new_long, new_short)
        return int(self.resize[1]), int(self.resize[0])

    def input_size(self, width: int, height: int) -> tuple[int, int]:
        """``(w, h)`` of the network input made from a ``width`` x ``height`` image."""
        if self.crop is not None:
            return int(self.crop[1]), int(self.crop[0])
        return self.resized_size(width, height)

    def seen_region(self, width: int, height: int) -> Region:
        """The region of a ``width`` x ``height`` image that the network input shows, in the
        image's pixel coordinates (it extends past the image where the crop pads)."""
        rw, rh = self.resized_size(width, height)
        sx, sy = rw / width, rh / height
        if self.crop is None:
            return full_region(width, height)
        ch, cw = self.crop
        left, top = _crop_offset(rw, cw), _crop_offset(rh, ch)
        return (left / sx, top / sy, (left + cw) / sx, (top + ch) / sy)

    def is_identity(self, width: int, height: int) -> bool:
        """Whether the network gets a ``width`` x ``height`` image whole and at its own size."""
        seen = self.seen_region(width, height)
        return self.input_size(width, height) == (width, height) and \
            seen == full_region(width, height)

    def sees_whole_image(self, width: int, height: int) -> bool:
        """Whether the network input shows the whole image (resized maybe, never cropped)."""
        return self.seen_region(width, height) == full_region(width, height)


def _size_pair(size: Any) -> tuple[int, int] | int:
    """torchvision's ``size`` argument as an int (shorter side) or ``(h, w)``."""
    if isinstance(size, int):
        return size
    size = [int(s) for s in size]
    return size[0] if len(size) == 1 else (size[0], size[1])


def from_transform(transform: Any) -> Preprocessing | None:
    """The geometry of a torchvision transform (``Compose`` of ``Resize`` / ``CenterCrop`` and
    pixel-value steps, or the ``weights.transforms()`` preset); None when a step moves pixels
    in a way this module does not model (random crops, padding, a callable, ...)."""
    steps: Sequence[Any] = getattr(transform, "transforms", None) or [transform]
    resize: int | tuple[int, int] | None = None
    crop: tuple[int, int] | None = None
    max_size: int | None = None
    for step in steps:
        kind = type(step).__name__
        if kind == "ImageClassification":  # torchvision's ``weights.transforms()`` preset
            if resize is not None or crop is not None:
                return None
            resize = _size_pair(step.resize_size)
            c = _size_pair(step.crop_size)
            crop = (c, c) if isinstance(c, int) else c
        elif kind == "Resize":
            if resize is not None or crop is not None or getattr(step, "size", None) is None:
                return None
            resize, max_size = _size_pair(step.size), getattr(step, "max_size", None)
        elif kind == "CenterCrop":
            if crop is not None:
                return None
            c = _size_pair(step.size)
            crop = (c, c) if isinstance(c, int) else c
        elif kind not in NEUTRAL_STEPS:
            return None
    return Preprocessing(resize=resize, crop=crop, max_size=max_size)


def _affine(region: Region, frame: tuple[float, float]) -> tuple[float, float, float, float]:
    """Scale and offset taking frame pixels to image pixels: x = x0 + u * sx."""
    x0, y0, x1, y1 = region
    return x0, y0, (x1 - x0) / frame[0], (y1 - y0) / frame[1]


def frame_to_image(box: Sequence[float], region: Region, frame: tuple[float, float]) -> Region:
    """A box in a ``frame = (w, h)`` picture of ``region`` as a box of the original image."""
    x0, y0, sx, sy = _affine(region, frame)
    return (x0 + box[0] * sx, y0 + box[1] * sy, x0 + box[2] * sx, y0 + box[3] * sy)


def image_to_frame(box: Sequence[float], region: Region, frame: tuple[float, float]) -> Region:
    """A box of the original image in the pixels of a ``frame = (w, h)`` picture of ``region``."""
    x0, y0, sx, sy = _affine(region, frame)
    return ((box[0] - x0) / sx, (box[1] - y0) / sy, (box[2] - x0) / sx, (box[3] - y0) / sy)


def cell_box(region: Region, map_shape: tuple[int, int], row: int, col: int) -> Region:
    """The box of the original image that cell ``(row, col)`` of an ``(h, w)`` map covers."""
    h, w = map_shape
    return frame_to_image((col, row, col + 1, row + 1), region, (w, h))


def crop_region(image: "Image.Image", region: Region, size: tuple[int, int],
                resample: Any = None) -> "Image.Image":
    """``region`` of ``image`` as a ``size = (w, h)`` picture (PIL's resize of that box, with
    ``resample`` or PIL's default filter); parts past the image's edges are black, as
    torchvision's padding centre crop makes them.  For the whole image this is exactly
    ``image.resize(size)``."""
    from PIL import Image

    width, height = image.size
    x0, y0, x1, y1 = region
    kwargs = {} if resample is None else {"resample": resample}
    if x0 >= 0 and y0 >= 0 and x1 <= width and y1 <= height:
        return image.resize(size, box=region, **kwargs)
    left, top = max(0, -math.floor(x0)), max(0, -math.floor(y0))
    canvas = Image.new(image.mode, (max(width + left, math.ceil(x1) + left),
                                    max(height + top, math.ceil(y1) + top)))
    canvas.paste(image, (left, top))
    return canvas.resize(size, box=(x0 + left, y0 + top, x1 + left, y1 + top), **kwargs)


def whole_image_transform(transform: Any, size: tuple[int, int]) -> Any:
    """``transform`` with its resize / centre crop replaced by a resize to exactly
    ``size = (w, h)`` (a no-op for images of that size), its other steps kept: the network then
    sees every image whole.  None when the transform's steps are not the ones
    :func:`from_transform` reads."""
    import torch
    from torchvision import transforms as T

    if from_transform(transform) is None:
        return None
    hw = [int(size[1]), int(size[0])]
    steps = list(getattr(transform, "transforms", None) or [transform])
    out: list[Any] = []
    resized = False
    for step in steps:
        kind = type(step).__name__
        if kind == "ImageClassification":
            out += [T.Resize(hw, interpolation=step.interpolation, antialias=step.antialias),
                    T.PILToTensor(), T.ConvertImageDtype(torch.float),
                    T.Normalize(step.mean, step.std)]
            resized = True
        elif kind == "Resize":
            out.append(T.Resize(hw, interpolation=step.interpolation, antialias=step.antialias))
            resized = True
        elif kind != "CenterCrop":
            out.append(step)
    if not resized:
        out.insert(0, T.Resize(hw))
    return T.Compose(out)
