"""The concepts planted in ToyNet's hidden units: two disjoint catalogues, and seeded scenes.

A *catalogue* lists, per layer, the concept string each planted unit is trained to detect
(see docs/toyworld.md).  ``benchmark`` is the test network's (``model=toynet``); ``milan`` is
the network the toy MILAN learns from (``model=toynet model.seed=1 model.catalogue=milan``):
its single concepts are the world's *other* shapes, colours, textures and scenes, and it has no
compositional, polysemantic or open-vocabulary unit, so MILAN is never trained on a test concept.

Kinds (:func:`dndbench.toyworld.world_report.concept_kind`): single concepts of every category;
compositional ("red circle": one object that is both); polysemantic ("star or water"); and
open-vocabulary concepts no built-in describer's vocabulary holds (``large object``,
``outlined``, ``zigzag``, ``two objects``; :data:`~dndbench.toyworld.world.OPEN_CONCEPTS`).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from dndbench.toyworld.world import CATEGORIES, SCENES, TEXTURES, SceneSpec, sample_scene

#: catalogue name -> layer -> concept strings (units are spread over the layer's channels)
CATALOGUES: dict[str, dict[str, tuple[str, ...]]] = {
    "benchmark": {
        "layer1": ("red", "blue", "yellow", "white", "striped", "dotted", "checkered", "grass",
                   "water", "brick wall", "snow", "sky"),
        "layer2": ("red", "blue", "yellow", "white", "striped", "dotted", "checkered", "zigzag",
                   "grass", "water", "snow", "sky", "red or blue", "yellow or grass",
                   "striped or water", "white or brick wall"),
        "layer3": ("circle", "ring", "heart", "triangle", "red", "yellow", "snow", "water",
                   "brick wall", "sky", "striped", "dotted", "zigzag", "outlined", "large object",
                   "red or blue", "water or snow", "red on grass", "blue on snow",
                   "yellow on water", "blue on water"),
        "layer4": ("circle", "triangle", "star", "heart", "cross", "ring", "outlined",
                   "large object", "two objects", "grass", "water", "red or blue",
                   "circle or snow", "star or water", "red on grass", "yellow on water",
                   "white on sky", "blue on snow", "blue on water", "snow", "sky",
                   "brick wall"),
    },
    "milan": {
        "layer1": ("green", "purple", "orange", "black", "wavy", "noisy", "sand", "night"),
        "layer2": ("green", "purple", "orange", "black", "wavy", "noisy", "sand", "night"),
        "layer3": ("square", "diamond", "hourglass", "crescent", "arrow", "house", "sand",
                   "night"),
        "layer4": ("square", "diamond", "hourglass", "crescent", "arrow", "house"),
    },
}


def planted_units(catalogue: str, widths: tuple[int, ...]) -> dict[str, dict[int, str]]:
    """Layer -> unit -> concept of ``catalogue`` in a ToyNet of channel ``widths``: the k
    concepts of a layer of width w sit on units ``round((i + 0.5) * w / k)`` (spread out, so no
    planted unit is channel 0)."""
    try:
        layers = CATALOGUES[catalogue]
    except KeyError:
        raise KeyError(f"unknown planted catalogue {catalogue!r}; choose from "
                       f"{', '.join(CATALOGUES)}") from None
    out: dict[str, dict[int, str]] = {}
    for layer, concepts in layers.items():
        width = widths[int(layer[-1]) - 1]
        if len(concepts) > width:
            raise ValueError(f"{layer} has {width} channels, fewer than {len(concepts)} concepts")
        out[layer] = {int((i + 0.5) * width / len(concepts)): c for i, c in enumerate(concepts)}
    return out


# -- seeded scenes: positives and near-neighbour negatives of a planted concept -------------
_OPEN_FORCING: dict[str, dict[str, Any]] = {
    "large object": {"large": True}, "outlined": {"outlined": True},
    "zigzag": {"texture": "zigzag"}, "two objects": {"distractor": True},
}
_OPEN_NEGATIVE: dict[str, dict[str, Any]] = {
    "large object": {"large": False}, "outlined": {"outlined": False},
    "zigzag": {"texture": "wavy"}, "two objects": {"distractor": False},
}
_KEYWORD = {"shape": "shape", "colour": "colour", "texture": "texture", "scene": "scene"}


def _category(part: str) -> str | None:
    return next((c for c, names in CATEGORIES.items() if part in names), None)


def forcing(parts: list[str]) -> dict[str, Any]:
    """``sample_scene`` keyword arguments that make a scene show every part of ``parts``."""
    kwargs: dict[str, Any] = {}
    for part in parts:
        category = _category(part)
        kwargs.update({_KEYWORD[category]: part} if category else _OPEN_FORCING[part])
    if kwargs.get("outlined") and kwargs.get("texture") not in (None, "plain"):
        kwargs["outlined"] = False
    return kwargs


def near_miss(parts: list[str], rng: np.random.Generator) -> dict[str, Any]:
    """Keyword arguments of a scene that shows all parts but one, which is swapped for a
    neighbour of its category (red circle -> orange circle or red ring): a hard negative."""
    swap = int(rng.integers(len(parts)))
    kwargs = forcing([p for i, p in enumerate(parts) if i != swap])
    part = parts[swap]
    category = _category(part)
    if category is None:
        kwargs.update(_OPEN_NEGATIVE[part])
        return kwargs
    others = [n for n in CATEGORIES[category] if n != part]
    kwargs[_KEYWORD[category]] = others[int(rng.integers(len(others)))]
    if category == "texture" or kwargs.get("texture") in TEXTURES[1:]:
        kwargs.setdefault("outlined", False)
    if category == "scene":
        kwargs["scene"] = kwargs["scene"] if kwargs["scene"] in SCENES else SCENES[0]
    return kwargs


def seeded_scene(concept: str, rng: np.random.Generator, negative: bool) -> SceneSpec:
    """A scene showing ``concept`` (one of its alternatives), or with ``negative`` a near miss."""
    from dndbench.toyworld.synonyms import concept_parts

    alternatives = concept_parts(concept)
    parts = alternatives[int(rng.integers(len(alternatives)))]
    kwargs = near_miss(parts, rng) if negative else forcing(parts)
    return sample_scene(rng, **kwargs)
