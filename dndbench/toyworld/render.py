"""Rendering toy-world scene specs into RGB images and concept masks (numpy, vectorised).

Coordinates: an image of side ``size`` spans [0, 1] x [0, 1]; an object's shape is defined in
its own frame, where the unit disc is the object's nominal extent and ``w`` points up.
Textures and background patterns are laid out in units of a 64-pixel image, so an image
rendered at another size looks the same, only sharper or coarser.
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import TYPE_CHECKING, Callable

import numpy as np

from dndbench.probes.base import Annotation
from dndbench.toyworld.world import (
    COLOURS,
    EXTRA_TEXTURES,
    LARGE_RADIUS,
    PIXEL_CATEGORIES,
    SCENES,
    SHAPES,
    TEXTURES,
    ObjectSpec,
    SceneSpec,
    concept_id,
    sample_scene,
)

if TYPE_CHECKING:
    from PIL import Image

#: reference side length; texture periods and pattern sizes are given in its pixels
REFERENCE_SIZE = 64
#: object edges are computed on a grid this many times finer, then averaged (anti-aliasing)
SUPERSAMPLE = 2
#: every shape lies inside this radius of its own frame
_EXTENT = 1.08

Array = np.ndarray


# -- shapes ----------------------------------------------------------------------------------
def _regular_polygon(n: int, radius: float, start_deg: float) -> Array:
    angles = np.radians(start_deg + np.arange(n) * 360.0 / n)
    return np.stack([radius * np.cos(angles), radius * np.sin(angles)], axis=1)


def _star_polygon(points: int = 5, outer: float = 1.05, inner: float = 0.45) -> Array:
    angles = np.radians(90.0 + np.arange(2 * points) * 180.0 / points)
    radii = np.where(np.arange(2 * points) % 2 == 0, outer, inner)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


_POLYGONS: dict[str, Array] = {
    "square": np.array([(-0.75, -0.75), (0.75, -0.75), (0.75, 0.75), (-0.75, 0.75)]),
    "diamond": np.array([(0.0, -1.05), (0.62, 0.0), (0.0, 1.05), (-0.62, 0.0)]),
    "triangle": _regular_polygon(3, 1.05, 90.0) + np.array([0.0, -0.15]),
    "hourglass": np.array([(-0.72, -0.98), (0.72, -0.98), (0.13, 0.0), (0.72, 0.98),
                           (-0.72, 0.98), (-0.13, 0.0)]),
    "star": _star_polygon(),
    "cross": np.array([(-0.3, -0.95), (0.3, -0.95), (0.3, -0.3), (0.95, -0.3), (0.95, 0.3),
                       (0.3, 0.3), (0.3, 0.95), (-0.3, 0.95), (-0.3, 0.3), (-0.95, 0.3),
                       (-0.95, -0.3), (-0.3, -0.3)]),
    "arrow": np.array([(-1.0, -0.22), (0.1, -0.22), (0.1, -0.62), (1.0, 0.0), (0.1, 0.62),
                       (0.1, 0.22), (-1.0, 0.22)]),
    "house": np.array([(-0.68, -0.9), (0.68, -0.9), (0.68, 0.12), (0.92, 0.12), (0.0, 1.0),
                       (-0.92, 0.12), (-0.68, 0.12)]),
}


def _in_polygon(u: Array, w: Array, vertices: Array) -> Array:
    """Even-odd point-in-polygon test for every point (u, w)."""
    inside = np.zeros(u.shape, dtype=bool)
    x1, y1 = vertices[-1]
    for x2, y2 in vertices:
        if y1 != y2:
            crosses = (y1 > w) != (y2 > w)
            x_at = (x2 - x1) * (w - y1) / (y2 - y1) + x1
            inside ^= crosses & (u < x_at)
        x1, y1 = x2, y2
    return inside


def _circle(u: Array, w: Array) -> Array:
    return u * u + w * w < 0.92 ** 2


def _ring(u: Array, w: Array) -> Array:
    r2 = u * u + w * w
    return (r2 < 0.97 ** 2) & (r2 > 0.55 ** 2)


def _crescent(u: Array, w: Array) -> Array:
    outer = u * u + w * w < 0.97 ** 2
    bite = (u - 0.45) ** 2 + (w - 0.2) ** 2 < 0.78 ** 2
    return outer & ~bite


def _heart(u: Array, w: Array) -> Array:
    x, y = u * 1.12, w * 1.12 + 0.12
    return (x * x + y * y - 1.0) ** 3 - x * x * y ** 3 < 0.0


_IMPLICIT: dict[str, Callable[[Array, Array], Array]] = {
    "circle": _circle, "ring": _ring, "crescent": _crescent, "heart": _heart,
}


def shape_mask(shape: str, u: Array, w: Array) -> Array:
    """Boolean membership of points (u, w) of an object's own frame in ``shape``."""
    if shape in _IMPLICIT:
        return _IMPLICIT[shape](u, w)
    return _in_polygon(u, w, _POLYGONS[shape])


# -- object textures -------------------------------------------------------------------------
def _texture_factor(texture: str, tu: Array, tv: Array, period: float, phase: float,
                    rng: np.random.Generator) -> Array:
    """Blend factor in [0, 1] between an object's colour (0) and its contrast colour (1);
    ``tu, tv`` are object-frame coordinates in reference pixels."""
    if texture == "plain":
        return np.zeros(tu.shape, np.float32)
    if texture == "striped":
        return (np.sin(2 * np.pi * (tu / period + phase)) > 0).astype(np.float32)
    if texture == "dotted":
        pu = np.mod(tu / period + phase, 1.0) - 0.5
        pv = np.mod(tv / period + phase, 1.0) - 0.5
        return (pu * pu + pv * pv < 0.3 ** 2).astype(np.float32)
    if texture == "checkered":
        cells = np.floor(tu * 2 / period + phase) + np.floor(tv * 2 / period + phase)
        return np.mod(cells, 2).astype(np.float32)
    if texture == "wavy":
        bend = 0.35 * period * np.sin(2 * np.pi * tu / (1.6 * period))
        return (np.sin(2 * np.pi * ((tv + bend) / period + phase)) > 0).astype(np.float32)
    if texture == "noisy":
        return (rng.random(tu.shape) < 0.45).astype(np.float32)
    if texture == "zigzag":  # an extra texture (world.EXTRA_TEXTURES): sharp chevron stripes
        saw = np.abs(np.mod(tu / period + phase, 1.0) - 0.5)  # triangle wave along u
        return (np.mod(tv / period + 1.2 * saw, 1.0) < 0.5).astype(np.float32)
    raise ValueError(f"unknown texture {texture!r}")


def _contrast_colour(rgb: Array) -> Array:
    """A darker (for light colours) or lighter (for dark colours) version of ``rgb``."""
    luminance = float(rgb @ np.array([0.299, 0.587, 0.114]))
    return rgb * 0.45 if luminance > 110 else rgb + (255.0 - rgb) * 0.6


# -- backgrounds -----------------------------------------------------------------------------
def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> Array:
    """Bilinearly interpolated value noise in [0, 1] with about ``cells`` blobs per side."""
    coarse = rng.random((cells + 1, cells + 1)).astype(np.float32)
    t = (np.arange(size, dtype=np.float32) + 0.5) / size * cells
    i0 = np.minimum(t.astype(int), cells - 1)
    f = t - i0
    rows = coarse[i0] * (1 - f)[:, None] + coarse[i0 + 1] * f[:, None]
    return rows[:, i0] * (1 - f)[None, :] + rows[:, i0 + 1] * f[None, :]


def _lerp(a: tuple[float, ...], b: tuple[float, ...], t: Array) -> Array:
    a_, b_ = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return a_ + (b_ - a_) * t[..., None]


def _coords(size: int) -> tuple[Array, Array]:
    c = (np.arange(size, dtype=np.float32) + 0.5) / size
    return c[:, None], c[None, :]


def _sky(rng: np.random.Generator, size: int) -> Array:
    y, _ = _coords(size)
    img = _lerp((70, 130, 215), (165, 205, 240), np.broadcast_to(y, (size, size)))
    clouds = np.clip((_smooth_noise(rng, size, 4) - 0.55) * 4.0, 0, 1)
    return img + (np.float32(248) - img) * clouds[..., None]


def _grass(rng: np.random.Generator, size: int) -> Array:
    blades = np.repeat(rng.random((size // 6 + 1, size), dtype=np.float32), 6, axis=0)[:size]
    shade = 0.65 + 0.45 * blades * 0.6 + 0.4 * _smooth_noise(rng, size, 3)
    return np.asarray((55, 140, 40), np.float32) * shade[..., None]


def _sand(rng: np.random.Generator, size: int) -> Array:
    y, x = _coords(size)
    k = REFERENCE_SIZE / rng.uniform(6.0, 9.0)
    ripples = np.sin(2 * np.pi * (y * k + 0.6 * np.sin(2 * np.pi * x * 1.5 + rng.uniform(0, 6))))
    grain = rng.random((size, size), dtype=np.float32) - 0.5
    shade = 1.0 + 0.06 * ripples + 0.12 * grain
    return np.asarray((215, 188, 135), np.float32) * shade[..., None]


def _water(rng: np.random.Generator, size: int) -> Array:
    y, x = _coords(size)
    img = _lerp((35, 125, 180), (20, 80, 145), np.broadcast_to(y, (size, size)))
    k = REFERENCE_SIZE / rng.uniform(7.0, 10.0)
    wave = np.sin(2 * np.pi * (y * k + 0.35 * np.sin(2 * np.pi * x * 2.5 + rng.uniform(0, 6))))
    glints = np.clip((wave - 0.6) * 2.5, 0, 1) * (0.4 + 0.6 * _smooth_noise(rng, size, 4))
    return img + (np.asarray((170, 215, 235), np.float32) - img) * glints[..., None]


def _snow(rng: np.random.Generator, size: int) -> Array:
    shade = 1.0 - 0.1 * _smooth_noise(rng, size, 3)
    img = np.asarray((238, 242, 250), np.float32) * shade[..., None]
    flecks = rng.random((size, size)) < 0.03
    img[flecks] = (200, 210, 228)
    return img


def _brick_wall(rng: np.random.Generator, size: int) -> Array:
    scale = size / REFERENCE_SIZE
    height, width = 8.0 * scale, 16.0 * scale
    rows = np.arange(size, dtype=np.float32)[:, None] + rng.uniform(0, height)
    row_index = np.floor(rows / height)
    cols = np.arange(size, dtype=np.float32)[None, :] + (row_index % 2) * width / 2
    col_index = np.floor(cols / width)
    mortar = (np.mod(rows, height) < 1.3 * scale) | (np.mod(cols, width) < 1.3 * scale)
    brick_ids = ((row_index * 31 + col_index * 17) % 23).astype(int)
    tint = rng.uniform(0.85, 1.12, size=23).astype(np.float32)[brick_ids]
    img = np.asarray((160, 72, 50), np.float32) * tint[..., None]
    img = np.broadcast_to(img, (size, size, 3)).copy()
    img[np.broadcast_to(mortar, (size, size))] = (185, 180, 170)
    return img


def _night(rng: np.random.Generator, size: int) -> Array:
    y, _ = _coords(size)
    img = _lerp((8, 10, 30), (28, 32, 62), np.broadcast_to(y, (size, size)))
    stars = rng.random((size, size)) < 0.012
    img[stars] = (235, 235, 205)
    return img


_SCENES: dict[str, Callable[[np.random.Generator, int], Array]] = {
    "sky": _sky, "grass": _grass, "sand": _sand, "water": _water, "snow": _snow,
    "brick wall": _brick_wall, "night": _night,
}


def render_background(scene: str, rng: np.random.Generator, size: int) -> Array:
    """The background of ``scene`` as a float32 (size, size, 3) array on the 0-255 scale."""
    return np.asarray(_SCENES[scene](rng, size), np.float32)


# -- objects ---------------------------------------------------------------------------------
def _object_frame(obj: ObjectSpec, size: int, box: tuple[int, int, int, int],
                  ss: int) -> tuple[Array, Array]:
    """Object-frame coordinates (u, w) of the (supersampled) pixel centres inside ``box``."""
    y0, y1, x0, x1 = box
    ys = (y0 + (np.arange((y1 - y0) * ss, dtype=np.float32) + 0.5) / ss) / size - obj.cy
    xs = (x0 + (np.arange((x1 - x0) * ss, dtype=np.float32) + 0.5) / ss) / size - obj.cx
    cos, sin = math.cos(obj.angle), math.sin(obj.angle)
    dx, dy = xs[None, :] / obj.radius, ys[:, None] / obj.radius
    u = cos * dx + sin * dy
    w = sin * dx - cos * dy  # image y points down, the object frame's w points up
    return u, w


def _bounding_box(obj: ObjectSpec, size: int) -> tuple[int, int, int, int] | None:
    reach = obj.radius * _EXTENT
    y0, y1 = max(0, math.floor((obj.cy - reach) * size)), min(size, math.ceil((obj.cy + reach) * size))
    x0, x1 = max(0, math.floor((obj.cx - reach) * size)), min(size, math.ceil((obj.cx + reach) * size))
    return (y0, y1, x0, x1) if y1 > y0 and x1 > x0 else None


#: width of an outlined object's contour, in pixels of a 64-pixel image
OUTLINE_WIDTH = 2.5
#: an image shows a concept when at least this fraction of its pixels do (4 pixels at 64 px)
MIN_VISIBLE_FRACTION = 4 / 4096


def _draw_object(img: Array, mask: Array, obj: ObjectSpec, label: int,
                 rng: np.random.Generator) -> None:
    """Composite ``obj`` onto ``img`` in place and write ``label`` into ``mask`` where it is."""
    size = img.shape[0]
    box = _bounding_box(obj, size)
    if box is None:
        return
    y0, y1, x0, x1 = box
    u_ss, w_ss = _object_frame(obj, size, box, SUPERSAMPLE)
    fine = shape_mask(obj.shape, u_ss, w_ss)
    if obj.outlined:  # the contour: the shape minus a shrunken copy, about 2.5 pixels wide
        shrink = max(0.3, 1.0 - OUTLINE_WIDTH / (obj.radius * REFERENCE_SIZE))
        fine = fine & ~shape_mask(obj.shape, u_ss / shrink, w_ss / shrink)
    fine = fine.astype(np.float32)
    h, w = y1 - y0, x1 - x0
    alpha = fine.reshape(h, SUPERSAMPLE, w, SUPERSAMPLE).sum(axis=(1, 3)) / SUPERSAMPLE ** 2

    u, w_up = _object_frame(obj, size, box, 1)
    to_ref = obj.radius * REFERENCE_SIZE
    factor = _texture_factor(obj.texture, u * to_ref, w_up * to_ref, obj.period, obj.phase, rng)
    base = np.asarray(obj.rgb, np.float32)
    colour = base + (_contrast_colour(base) - base) * factor[..., None]
    shading = 1.0 + 0.08 * (u * math.cos(obj.phase * 6.28) + w_up * math.sin(obj.phase * 6.28))
    colour = colour * shading[..., None]

    region = img[y0:y1, x0:x1]
    region += (colour - region) * alpha[..., None]
    mask[y0:y1, x0:x1][alpha >= 0.5] = label


def render(spec: SceneSpec, size: int = REFERENCE_SIZE) -> tuple[Array, Array]:
    """Render ``spec``: an RGB uint8 (size, size, 3) image and an int (size, size) object mask.

    Mask value k > 0 marks pixels of ``spec.objects[k - 1]`` (the topmost object wins),
    0 marks the background.  Rendering is deterministic given the spec.
    """
    rng = np.random.default_rng(spec.detail_seed)
    img = render_background(spec.scene, rng, size)
    mask = np.zeros((size, size), np.int32)
    for k in range(len(spec.objects) - 1, -1, -1):  # main object last, on top
        _draw_object(img, mask, spec.objects[k], k + 1, rng)
    if spec.noise > 0:
        img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(spec.noise)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8), mask


# -- annotations and the image generator -----------------------------------------------------
def annotate(spec: SceneSpec, mask: Array) -> Annotation:
    """Concept labels of a rendered spec: shape/colour/texture per object pixel (one label
    layer each), the scene as an image-level label.  Extra textures (``zigzag``) are no world
    concept: their pixels carry no texture label (0)."""
    pixel = {}
    for category in PIXEL_CATEGORIES:
        ids = np.array([0] + [_label(getattr(o, category)) for o in spec.objects], np.int32)
        pixel[category] = ids[mask][None]
    return Annotation(pixel=pixel, image_level={"scene": [concept_id(spec.scene)]})


def _label(name: str) -> int:
    return 0 if name in EXTRA_TEXTURES else concept_id(name)


def _objects_where(spec: SceneSpec, mask: Array, holds: Callable[[int, ObjectSpec], bool]) -> Array:
    hits = [k + 1 for k, o in enumerate(spec.objects) if holds(k, o)]
    return np.isin(mask, hits) if hits else np.zeros(mask.shape, bool)


def _part_mask(spec: SceneSpec, mask: Array, part: str) -> Array:
    """Pixels where one part of a concept string holds (a world concept, an extra texture or
    an :data:`~dndbench.toyworld.world.OPEN_CONCEPTS` entry)."""
    if part in SCENES:
        return np.full(mask.shape, part == spec.scene, bool)
    if part == "large object":
        return _objects_where(spec, mask, lambda k, o: k == 0 and o.radius >= LARGE_RADIUS)
    if part == "outlined":
        return _objects_where(spec, mask, lambda k, o: o.outlined)
    if part == "two objects":
        visible = [k + 1 for k in range(len(spec.objects)) if (mask == k + 1).sum()
                   >= MIN_VISIBLE_FRACTION * mask.size]
        return np.isin(mask, visible) if len(visible) >= 2 else np.zeros(mask.shape, bool)
    if part in SHAPES or part in COLOURS or part in TEXTURES + EXTRA_TEXTURES:
        return _objects_where(spec, mask, lambda k, o: part in (o.shape, o.colour, o.texture))
    raise KeyError(f"no pixel rule for concept part {part!r}")


def concept_mask(spec: SceneSpec, mask: Array, name: str) -> Array:
    """Boolean (H, W) mask of the pixels where concept string ``name`` holds (whole image for a
    scene).  A concept string is alternatives of parts
    (:func:`~dndbench.toyworld.synonyms.concept_parts`): the parts of an alternative must hold
    on the same pixels ("red circle": one object both red and a circle; "star on water": star
    pixels when the scene is water), alternatives are united ("star or water")."""
    from dndbench.toyworld.synonyms import concept_parts

    out = np.zeros(mask.shape, bool)
    for alternative in concept_parts(name):
        pixels = np.ones(mask.shape, bool)
        for part in alternative:
            pixels &= _part_mask(spec, mask, part)
        out |= pixels
    return out


def shows(spec: SceneSpec, mask: Array, name: str) -> bool:
    """Whether the rendered image shows concept string ``name`` (on at least
    :data:`MIN_VISIBLE_FRACTION` of its pixels): the ground truth of the selectivity gate."""
    return bool(concept_mask(spec, mask, name).sum() >= MIN_VISIBLE_FRACTION * mask.size)


def generate(seed: int, index: int, size: int = REFERENCE_SIZE) -> tuple[Array, SceneSpec, Array]:
    """Image ``index`` of the stream ``seed``: (RGB uint8 array, spec, object mask)."""
    spec = sample_scene(np.random.default_rng([seed, index]))
    rgb, mask = render(spec, size)
    return rgb, spec, mask


def toy_image(seed: int, index: int, size: int = REFERENCE_SIZE
              ) -> tuple["Image.Image", SceneSpec, Annotation]:
    """Image ``index`` of the stream ``seed`` as (PIL image, spec, annotation)."""
    from PIL import Image

    rgb, spec, mask = generate(seed, index, size)
    return Image.fromarray(rgb, "RGB"), spec, annotate(spec, mask)


def render_image(spec: SceneSpec, size: int = REFERENCE_SIZE) -> "Image.Image":
    """``spec`` rendered as a PIL image."""
    from PIL import Image

    return Image.fromarray(render(spec, size)[0], "RGB")


# -- render styles ---------------------------------------------------------------------------
#: ``default``: the distribution of ToyNet's training images and of the toy probe set;
#: ``heldout``: the same concepts drawn outside it (see :func:`heldout_spec`)
STYLES: tuple[str, ...] = ("default", "heldout")
#: shapes that a rotation past the training range would turn into another shape's look
_ROTATION_SENSITIVE = frozenset({"square", "diamond", "cross"})


def _edge_centre(rng: np.random.Generator, radius: float, low: float, high: float) -> float:
    """A centre coordinate ``low``-``high`` radii from one of the two edges."""
    offset = float(rng.uniform(low, high)) * radius
    return offset if rng.random() < 0.5 else 1.0 - offset


def heldout_spec(spec: SceneSpec, rng: np.random.Generator) -> SceneSpec:
    """``spec`` in the held-out style: the same concepts (shape, colour, texture, scene) and the
    same distractor, but the main object is a close-up (radius 0.36-0.44 of the side) or small
    (0.14-0.18) where training radii are 0.2-0.34, sits near the image's edges (a close-up may
    be cut by them, a small object stays inside), is rotated by 35-60 degrees where training
    stays within 30 (rotation-sensitive shapes keep the training range), and the pixel noise is
    stronger (standard deviation 9-14 instead of 2-6).  The default style never goes through
    this function, so its images are unchanged."""
    main = spec.main
    large = rng.random() < 0.5
    radius = float(rng.uniform(0.36, 0.44) if large else rng.uniform(0.14, 0.18))
    low, high = (0.6, 0.85) if large else (1.0, 1.3)
    if main.shape in _ROTATION_SENSITIVE:
        angle = main.angle
    else:
        angle = math.radians(float(rng.uniform(35.0, 60.0))) * (1 if rng.random() < 0.5 else -1)
    moved = replace(main, radius=radius, angle=angle, cx=_edge_centre(rng, radius, low, high),
                    cy=_edge_centre(rng, radius, low, high))
    return replace(spec, objects=(moved, *spec.objects[1:]), noise=float(rng.uniform(9.0, 14.0)))
