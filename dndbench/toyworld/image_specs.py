"""Which scene spec a toy image was rendered from, for the oracle backends.

A toy image's ground truth is its :class:`~dndbench.toyworld.world.SceneSpec`; pixels alone do
not give it back.  Two records carry it, both written where toy images are made (the toyworld
probe's :meth:`~dndbench.toyworld.probe_set.ToyWorldProbe.image` and the toy renderer):

* a **tag** in the PIL image's ``info`` dictionary (key :data:`INFO_KEY`, the spec as JSON).
  Pillow copies ``info`` into the images that ``convert``, ``crop``, ``resize`` and ``copy``
  make, so DnD's attention crops (cut from the probe image, resized) and downscaled synthetic
  images keep the tag of the image they came from.  The toy renderer also writes the tag into
  its PNG files as a text chunk, which Pillow reads back into ``info``, so rendered images
  keep it through the call cache;
* a **content-hash index** (:func:`register`): the hash of the RGB pixels -> the spec, for
  images whose ``info`` was lost (e.g. rebuilt from a numpy array) but whose pixels are those
  of a probe image or a render of this process.  It holds the most recent
  :data:`INDEX_CAPACITY` images.

:func:`lookup` tries the tag first, then the index.  A crop carries the spec of its *whole*
image (the box is not recorded), so the oracle describes a crop by its full image's content.
"""
from __future__ import annotations

import io
import json
from collections import OrderedDict
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from PIL import Image

    from dndbench.toyworld.world import SceneSpec

#: the ``info`` key (and PNG text-chunk key) of a toy image's spec
INFO_KEY = "dndbench.toyworld.spec"
#: images the content-hash index remembers (a spec is a few hundred bytes)
INDEX_CAPACITY = 100_000

_INDEX: OrderedDict[str, str] = OrderedDict()


def spec_json(spec: "SceneSpec") -> str:
    """``spec`` as compact JSON (every field, so it renders identically)."""
    return json.dumps(asdict(spec), separators=(",", ":"))


def spec_from_json(text: str) -> "SceneSpec":
    """The inverse of :func:`spec_json`."""
    from dndbench.toyworld.world import ObjectSpec, SceneSpec

    data: dict[str, Any] = json.loads(text)
    objects = tuple(ObjectSpec(**{**o, "rgb": tuple(o["rgb"])}) for o in data.pop("objects"))
    return SceneSpec(objects=objects, **data)


def pixel_key(image: "Image.Image") -> str:
    """Content hash of an image's RGB pixels (mode and size included)."""
    from dndbench.backends.base import image_key

    return image_key(image if image.mode == "RGB" else image.convert("RGB"))


def register(image: "Image.Image", spec: "SceneSpec") -> None:
    """Remember that ``image``'s pixels show ``spec`` (see the module docstring)."""
    key = pixel_key(image)
    _INDEX[key] = spec_json(spec)
    _INDEX.move_to_end(key)
    while len(_INDEX) > INDEX_CAPACITY:
        _INDEX.popitem(last=False)


def tag(image: "Image.Image", spec: "SceneSpec", index: bool = True) -> "Image.Image":
    """``image`` with ``spec`` in its ``info`` (and, with ``index``, in the content index)."""
    image.info[INFO_KEY] = spec_json(spec)
    if index:
        register(image, spec)
    return image


def lookup(image: "Image.Image") -> "SceneSpec | None":
    """The spec ``image`` (or the image it was cropped / resized from) was rendered from, or
    None when neither its tag nor the content index knows it."""
    text = image.info.get(INFO_KEY)
    if not isinstance(text, str):
        text = _INDEX.get(pixel_key(image))
    if not isinstance(text, str):
        return None
    try:
        return spec_from_json(text)
    except (ValueError, TypeError, KeyError):
        return None


def tagged_png(image: "Image.Image", spec: "SceneSpec") -> bytes:
    """``image`` as PNG bytes with ``spec`` in a text chunk (read back into ``info``)."""
    from PIL.PngImagePlugin import PngInfo

    chunk = PngInfo()
    chunk.add_text(INFO_KEY, spec_json(spec))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=chunk)
    return buffer.getvalue()


def clear_index() -> None:
    """Forget every registered image (tests)."""
    _INDEX.clear()
