"""Annotation sets: units of some network, their exemplars and human-style descriptions.

Two sources:

* :func:`load_milannotations` reads the layout the MILAN authors release: ``<root>/annotations.csv``
  (``layer,unit,summary``, several rows per unit) and ``<root>/<layer>/images.npy`` (units, k, 3, H, W)
  uint8, ``masks.npy`` (units, k, 1, H, W), optional ``units.npy`` (unit ids of the rows).
* :func:`toy_annotations` annotates one toy network's units from their known concepts: the class
  of each final-layer unit, the planted concept of planted units, and for other units the concept
  a careful annotator would read off the highlighted regions of the exemplars (the concept most of
  the highlighted pixels belong to, when consistent enough); descriptions come from templates.
"""
from __future__ import annotations

import csv
import functools
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from dndbench.errors import DataError

if TYPE_CHECKING:
    from dndbench.context import Context
    from dndbench.describers.milan.exemplars import Exemplars


@dataclass
class AnnotatedUnit:
    """One unit: exemplar images (k, 3, H, W) uint8, masks (k, 1, H, W), its descriptions and
    (toy world only) the concept they name."""

    layer: str
    unit: int
    images: np.ndarray
    masks: np.ndarray
    descriptions: list[str]
    concept: str = ""
    extras: dict[str, str] = field(default_factory=dict)


# -- MILANNOTATIONS layout ---------------------------------------------------------------------
def read_annotation_csv(path: Path | str, column: str = "summary") -> dict[tuple[str, int], list[str]]:
    """``layer,unit,<column>`` rows grouped by (layer, unit), in file order."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"annotations file not found: {path}")
    out: dict[tuple[str, int], list[str]] = defaultdict(list)
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        missing = {"layer", "unit", column} - set(reader.fieldnames or [])
        if missing:
            raise DataError(f"{path} lacks column(s) {sorted(missing)}")
        for row in reader:
            text = (row[column] or "").strip()
            if text:
                out[row["layer"].strip(), int(row["unit"])].append(text)
    return dict(out)


def load_milannotations(root: Path | str, layers: Sequence[str] | None = None) -> list[AnnotatedUnit]:
    """Annotated units of one network in the released MILANNOTATIONS layout (units without a
    description are skipped)."""
    root = Path(root)
    texts = read_annotation_csv(root / "annotations.csv")
    layers = sorted(layers or [p.name for p in root.iterdir() if p.is_dir()])
    units: list[AnnotatedUnit] = []
    for layer in layers:
        folder = root / layer
        try:
            images = np.load(folder / "images.npy", mmap_mode="r")
            masks = np.load(folder / "masks.npy", mmap_mode="r")
        except OSError as exc:
            raise DataError(f"layer {layer} of {root}: {exc}") from exc
        if images.ndim != 5 or masks.ndim != 5 or images.shape[:2] != masks.shape[:2]:
            raise DataError(f"layer {layer} of {root}: images {images.shape} / masks "
                            f"{masks.shape} must be (units, k, C, H, W) with the same units, k")
        ids = np.load(folder / "units.npy") if (folder / "units.npy").exists() else np.arange(len(images))
        for row, unit in enumerate(ids.tolist()):
            found = texts.get((layer, int(unit)))
            if found:
                units.append(AnnotatedUnit(layer, int(unit), np.asarray(images[row], np.uint8),
                                           np.asarray(masks[row], np.float32), found))
    if not units:
        raise DataError(f"no annotated units found under {root}")
    return units


# -- the toy world ------------------------------------------------------------------------------
_TEMPLATES = {
    "shape": ("{p}", "{s} shapes", "{s} shaped objects", "{p} in the image"),
    "colour": ("{s} things", "{s} regions", "the colour {s}", "{s} objects"),
    "texture": ("{s} patterns", "{s} textures", "{s} surfaces", "things that are {s}"),
    "scene": ("{s}", "{s} backgrounds", "scenes with {s}", "{s} in the background"),
}


def plural(word: str) -> str:
    """``star`` -> ``stars``, ``cross`` -> ``crosses``, ``brick wall`` -> ``brick walls``."""
    return word + ("es" if word.endswith(("s", "x", "sh", "ch")) else "s")


def describe_concept(concept: str, rng: np.random.Generator, n: int = 3) -> list[str]:
    """``n`` distinct human-style descriptions of a toy-world concept."""
    from dndbench.toyworld.world import concept_category

    templates = _TEMPLATES[concept_category(concept)]
    picks = rng.choice(len(templates), size=min(n, len(templates)), replace=False)
    return [templates[i].format(s=concept, p=plural(concept)) for i in sorted(picks)]


def concept_in_text(concept: str, text: str) -> bool:
    """Whether ``text`` names ``concept`` (a plural counts: "stars" names "star")."""
    import re

    return re.search(rf"\b{re.escape(concept)}(e?s)?\b", text.lower()) is not None


def read_highlight(annotation: Callable[[int], Any], indices: np.ndarray,
                   masks: np.ndarray) -> tuple[str, float]:
    """The concept the highlighted pixels of a unit's exemplars show most consistently, and its
    score: mean over exemplars of the fraction of highlighted pixels inside the concept (for
    scenes: on the background of an image with that scene)."""
    from dndbench.toyworld.world import all_concepts

    names = {c.id: c.name for c in all_concepts()}
    scores: dict[str, float] = defaultdict(float)
    used = 0
    for index, mask in zip(indices.tolist(), masks[:, 0] > 0.5):
        if not mask.any():
            continue
        used += 1
        ann = annotation(int(index))
        hot = mask.sum()
        on_object = np.zeros_like(mask)
        for layers in ann.pixel.values():
            labels = layers[:, mask]
            on_object[mask] |= (labels > 0).any(0)
            for cid in np.unique(labels[labels > 0]):
                scores[names[int(cid)]] += float((labels == cid).any(0).sum() / hot)
        for ids in ann.image_level.values():
            for cid in ids:
                scores[names[int(cid)]] += float((mask & ~on_object).sum() / hot)
    if not used or not scores:
        return "", 0.0
    best = max(sorted(scores), key=lambda c: scores[c])
    return best, scores[best] / used


def toy_annotations(ctx: "Context", exemplars: "Exemplars", seed: int = 0,
                    min_agreement: float = 0.6, per_unit: int = 3) -> list[AnnotatedUnit]:
    """Annotate ``exemplars`` of ``ctx.layer`` of a toy network (see module docstring)."""
    planted = ctx.model.planted_concepts(ctx.layer)
    classes = ctx.model.class_names() if ctx.is_final_layer else None
    annotation = functools.lru_cache(maxsize=None)(ctx.probe.annotation)
    out = []
    for row, unit in enumerate(exemplars.units):
        source = "class" if classes else "planted" if unit in planted else "highlight"
        if classes:
            concept = classes[unit]
        elif unit in planted:
            concept = planted[unit]
        else:
            concept, score = read_highlight(annotation, exemplars.indices[row], exemplars.masks[row])
            if score < min_agreement:
                continue
        rng = np.random.default_rng([seed, hash_layer(ctx.layer), unit])
        out.append(AnnotatedUnit(ctx.layer, unit, exemplars.images[row], exemplars.masks[row],
                                 describe_concept(concept, rng, per_unit), concept,
                                 {"source": source}))
    return out


def hash_layer(layer: str) -> int:
    """A small stable integer of a layer name (seeds per-unit template choices)."""
    return sum((i + 1) * ord(ch) for i, ch in enumerate(layer)) % 100_003
