"""The toy world's vocabulary and scene specifications.

A toy image shows one *main* object (and sometimes a small distractor object) on a background
scene.  Every object has a ``shape``, a ``colour`` and a ``texture``; the image has a ``scene``.
Those four categories make up the annotated concepts, each named by a plain English word or
short phrase so that descriptions can be compared to them with a sentence embedder.

A :class:`SceneSpec` fixes everything about an image, including the seed of its pixel-level
details, so rendering a spec is deterministic.  :func:`sample_scene` draws a random spec and
accepts fixed values for any of the concepts ("a red star, rest random").
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from functools import lru_cache

import numpy as np

from dndbench.probes.base import Concept

#: bump whenever a change alters the images generated for a given (seed, index)
GENERATOR_VERSION = "toyworld-v2.1"

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "heart", "cross", "ring",
                           "diamond", "hourglass", "crescent", "arrow", "house")

#: nominal RGB of each colour concept (objects get a jittered version)
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (40, 165, 50),
    "blue": (40, 75, 215),
    "yellow": (240, 215, 40),
    "purple": (135, 50, 175),
    "orange": (245, 135, 25),
    "white": (242, 242, 242),
    "black": (22, 22, 22),
}

_COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)

TEXTURES: tuple[str, ...] = ("plain", "striped", "dotted", "checkered", "wavy", "noisy")

SCENES: tuple[str, ...] = ("sky", "grass", "sand", "water", "snow", "brick wall", "night")

#: textures that are drawn but are not world concepts: no annotation, concept list, vocabulary or
#: MILAN annotation names them, so only an open-vocabulary describer can name them
EXTRA_TEXTURES: tuple[str, ...] = ("zigzag",)

#: world-v2 object styles: a main object is outlined (drawn as its contour, plain) with this
#: probability, and large (radius :data:`LARGE_RADIUS_RANGE`) with this probability
OUTLINED_PROB = 0.15
LARGE_PROB = 0.2
#: radius range (fraction of the image side) of ordinary and of large main objects; the gap
#: between them keeps "large object" unambiguous
MAIN_RADIUS_RANGE = (0.2, 0.3)
LARGE_RADIUS_RANGE = (0.36, 0.42)
#: the shapes a second object can have: six of the twelve, so the other six (the test network's
#: planted shapes) only ever appear as main objects, large enough to be told apart
DISTRACTOR_SHAPES: tuple[str, ...] = ("square", "diamond", "hourglass", "crescent", "arrow",
                                      "house")
#: radius range of the small second object (large enough that its shape can be told)
DISTRACTOR_RADIUS_RANGE = (0.12, 0.16)
#: a main object at least this large is a "large object"
LARGE_RADIUS = 0.33

#: concepts that are no world concept (and no annotation), with the words that name them:
#: the ground truth of the open-vocabulary planted units (see docs/toyworld.md)
OPEN_CONCEPTS: dict[str, tuple[str, ...]] = {
    "large object": ("large", "big", "huge", "giant", "enormous", "close up", "close-up"),
    "outlined": ("outline", "outlines", "outlined shape", "contour", "contours", "hollow"),
    "zigzag": ("zigzags", "zig zag", "zig-zag", "chevron", "chevrons"),
    "two objects": ("two", "pair", "couple", "second object", "several objects",
                    "multiple objects"),
}

#: category name -> concept names, in the order that defines concept ids
CATEGORIES: dict[str, tuple[str, ...]] = {
    "shape": SHAPES,
    "colour": tuple(COLOURS),
    "texture": TEXTURES,
    "scene": SCENES,
}

#: categories labelled per pixel (over the object's pixels); the scene is an image-level label
PIXEL_CATEGORIES: tuple[str, ...] = ("shape", "colour", "texture")

#: objects are rotated by at most this angle (so a square never becomes a diamond)
_ROTATION_LIMIT = math.radians(30)


@lru_cache(maxsize=1)
def all_concepts() -> tuple[Concept, ...]:
    """Every concept of the toy world; ids are global and start at 1."""
    concepts: list[Concept] = []
    for category, names in CATEGORIES.items():
        for name in names:
            concepts.append(Concept(len(concepts) + 1, name, category))
    return tuple(concepts)


@lru_cache(maxsize=1)
def _by_name() -> dict[str, Concept]:
    return {c.name: c for c in all_concepts()}


def concept_id(name: str) -> int:
    """The global id of the concept called ``name``."""
    try:
        return _by_name()[name].id
    except KeyError:
        raise KeyError(f"unknown toy-world concept {name!r}") from None


def concept_category(name: str) -> str:
    """The category (shape, colour, texture, scene) of the concept called ``name``."""
    concept_id(name)  # raises a clear KeyError for unknown names
    return _by_name()[name].category


def concepts_from_text(text: str) -> dict[str, str]:
    """Concept names mentioned in ``text``, one per category (the first mention wins).

    ``concepts_from_text("a red striped star on grass")`` ->
    ``{"colour": "red", "texture": "striped", "shape": "star", "scene": "grass"}``.
    Matching is on whole words, case-insensitive; longer names are tried first.
    """
    lowered = text.lower()
    found: dict[str, tuple[int, str]] = {}
    for concept in sorted(all_concepts(), key=lambda c: -len(c.name)):
        match = re.search(rf"\b{re.escape(concept.name)}\b", lowered)
        if match is None:
            continue
        best = found.get(concept.category)
        if best is None or match.start() < best[0]:
            found[concept.category] = (match.start(), concept.name)
    return {category: name for category, (_, name) in found.items()}


@dataclass(frozen=True)
class ObjectSpec:
    """One object: its concepts plus its geometry and appearance parameters.

    Geometry is relative to the image side: ``cx, cy`` in [0, 1], ``radius`` as a fraction of
    the side, ``angle`` in radians.  ``rgb`` is the object's actual (jittered) colour,
    ``period`` the texture's period in pixels of a 64-pixel image, ``phase`` in [0, 1).
    """

    shape: str
    colour: str
    texture: str
    outlined: bool = False
    cx: float = 0.5
    cy: float = 0.5
    radius: float = 0.28
    angle: float = 0.0
    rgb: tuple[int, int, int] = (0, 0, 0)
    period: float = 7.0
    phase: float = 0.0

    def __post_init__(self) -> None:
        for category, name in (("shape", self.shape), ("colour", self.colour),
                               ("texture", self.texture)):
            allowed = CATEGORIES[category] + (EXTRA_TEXTURES if category == "texture" else ())
            if name not in allowed:
                raise ValueError(f"unknown {category} {name!r}; "
                                 f"choose from {', '.join(CATEGORIES[category])}")


@dataclass(frozen=True)
class SceneSpec:
    """A whole image: the background scene and its objects (``objects[0]`` is the main one,
    drawn last, on top).  ``detail_seed`` seeds background texture, object texture noise and
    pixel noise; ``noise`` is the standard deviation of the pixel noise (0-255 scale)."""

    scene: str
    objects: tuple[ObjectSpec, ...] = field(default_factory=tuple)
    detail_seed: int = 0
    noise: float = 4.0

    def __post_init__(self) -> None:
        if self.scene not in SCENES:
            raise ValueError(f"unknown scene {self.scene!r}; choose from {', '.join(SCENES)}")

    @property
    def main(self) -> ObjectSpec:
        """The main object (whose shape is the image's class)."""
        return self.objects[0]

    def concept_names(self) -> dict[str, str]:
        """The main object's concepts plus the scene, by category."""
        m = self.main
        return {"shape": m.shape, "colour": m.colour, "texture": m.texture, "scene": self.scene}


def _pick(rng: np.random.Generator, options: tuple[str, ...] | list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _jitter_rgb(rng: np.random.Generator, colour: str) -> tuple[int, int, int]:
    gain = rng.uniform(0.88, 1.08)
    offsets = rng.uniform(-14, 14, size=3)
    return tuple(int(min(255.0, max(0.0, c * gain + o)))  # type: ignore[return-value]
                 for c, o in zip(COLOURS[colour], offsets))


def sample_object(rng: np.random.Generator, *, shape: str | None = None,
                  colour: str | None = None, texture: str | None = None,
                  radius_range: tuple[float, float] = MAIN_RADIUS_RANGE,
                  centre: tuple[float, float] | None = None,
                  outlined: bool = False) -> ObjectSpec:
    """A random object; any of ``shape``, ``colour``, ``texture`` can be fixed (the texture is
    drawn from :data:`TEXTURES` and :data:`EXTRA_TEXTURES`); an ``outlined`` object is plain."""
    shape = shape or _pick(rng, SHAPES)
    colour = colour or _pick(rng, _COLOUR_NAMES)
    texture = texture or _pick(rng, TEXTURES + EXTRA_TEXTURES)
    if outlined:
        texture = "plain"
    radius = float(rng.uniform(*radius_range))
    if centre is None:
        margin = radius * 0.85
        centre = (float(rng.uniform(margin, 1 - margin)), float(rng.uniform(margin, 1 - margin)))
    return ObjectSpec(shape=shape, colour=colour, texture=texture, outlined=outlined,
                      cx=centre[0], cy=centre[1],
                      radius=radius, angle=float(rng.uniform(-_ROTATION_LIMIT, _ROTATION_LIMIT)),
                      rgb=_jitter_rgb(rng, colour), period=float(rng.uniform(6.0, 9.0)),
                      phase=float(rng.uniform(0, 1)))


def _distractor_centre(rng: np.random.Generator, main: ObjectSpec,
                       radius: float) -> tuple[float, float]:
    """A centre for a small object that keeps it mostly clear of the main object."""
    best, best_dist = (0.5, 0.5), -1.0
    for _ in range(12):
        c = (float(rng.uniform(radius, 1 - radius)), float(rng.uniform(radius, 1 - radius)))
        dist = math.hypot(c[0] - main.cx, c[1] - main.cy) - main.radius - radius * 0.5
        if dist > 0:
            return c
        if dist > best_dist:
            best, best_dist = c, dist
    return best


def sample_scene(rng: np.random.Generator, *, shape: str | None = None,
                 colour: str | None = None, texture: str | None = None,
                 scene: str | None = None, distractor: bool | None = None,
                 distractor_prob: float = 0.3, outlined: bool | None = None,
                 large: bool | None = None) -> SceneSpec:
    """A random scene spec; fixed concept values apply to the main object (and the scene).

    ``distractor`` forces (True) or forbids (False) a small second object; by default one
    appears with probability ``distractor_prob``.  Its shape differs from the main shape and
    it is plain (a texture would be a period or two wide on it, too small to see).
    ``outlined`` and ``large`` force or forbid those styles of the main object (by default
    with probabilities :data:`OUTLINED_PROB` and :data:`LARGE_PROB`; a fixed texture other
    than plain forbids the outline).
    """
    scene = scene or _pick(rng, SCENES)
    if outlined is None:
        outlined = bool(rng.random() < OUTLINED_PROB) and texture in (None, "plain")
    if large is None:
        large = bool(rng.random() < LARGE_PROB)
    main = sample_object(rng, shape=shape, colour=colour, texture=texture, outlined=outlined,
                         radius_range=LARGE_RADIUS_RANGE if large else MAIN_RADIUS_RANGE)
    objects = [main]
    if distractor is None:
        distractor = bool(rng.random() < distractor_prob)
    if distractor:
        radius = float(rng.uniform(*DISTRACTOR_RADIUS_RANGE))
        other_shapes = [s for s in DISTRACTOR_SHAPES if s != main.shape]
        objects.append(sample_object(rng, shape=_pick(rng, other_shapes), texture="plain",
                                     radius_range=(radius, radius),
                                     centre=_distractor_centre(rng, main, radius)))
    return SceneSpec(scene=scene, objects=tuple(objects),
                     detail_seed=int(rng.integers(0, 2**31 - 1)),
                     noise=float(rng.uniform(2.0, 6.0)))


def spec_from_text(text: str, rng: np.random.Generator, **kwargs: object) -> SceneSpec:
    """A random scene showing the concepts named in ``text`` (e.g. "red star on sand")."""
    named = concepts_from_text(text)
    return sample_scene(rng, **{**named, **kwargs})  # type: ignore[arg-type]


def with_main(spec: SceneSpec, **changes: object) -> SceneSpec:
    """``spec`` with fields of its main object replaced (e.g. ``colour="red"``)."""
    main = replace(spec.main, **changes)  # type: ignore[arg-type]
    if "colour" in changes and "rgb" not in changes:
        main = replace(main, rgb=COLOURS[main.colour])
    return replace(spec, objects=(main, *spec.objects[1:]))
