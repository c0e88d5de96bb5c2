"""Annotation sets: units of some network, their exemplars and human-style descriptions.

Two sources:

* :func:`load_milannotations` reads the layout the MILAN authors release: ``<root>/annotations.csv``
  (``layer,unit,summary``, several rows per unit) and ``<root>/<layer>/images.npy`` (units, k, 3, H, W)
  uint8, ``masks.npy`` (units, k, 1, H, W), optional ``units.npy`` (unit ids of the rows).
* :func:`toy_annotations` annotates one toy network's units from their known concepts: the class
  of each final-layer unit (when most of its exemplars show that class), the planted concept of
  planted units, and for other units the concept a careful annotator would read off the
  highlighted regions of the exemplars (the concept most of the highlighted pixels belong to,
  when consistent enough); descriptions come from templates, with the concept's name and its
  synonyms (:mod:`dndbench.toyworld.synonyms`).

The toy MILAN must never learn a concept of the network it is tested on (docs/describers/milan.md):
:func:`catalogue_parts` lists the concepts of a planted catalogue, ``exclude`` drops the units
annotated with one of them, and :func:`check_disjoint` refuses an annotation set whose texts
or vocabulary name one.
"""
from __future__ import annotations

import csv
import functools
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Collection, Iterable, Sequence

import numpy as np

from dndbench.errors import DataError

if TYPE_CHECKING:
    import torch

    from dndbench.context import Context
    from dndbench.describers.milan.exemplars import Exemplars
    from dndbench.describers.milan.model import Milan


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


def featurize(milan: "Milan", units: Sequence[AnnotatedUnit], batch: int = 16) -> "torch.Tensor":
    """Encoder features (U, k, F) of the units' masked exemplars."""
    import torch

    out = []
    for start in range(0, len(units), batch):
        part = units[start:start + batch]
        images = torch.from_numpy(np.stack([u.images for u in part])).float() / 255.0
        masks = torch.from_numpy(np.stack([u.masks for u in part])).float()
        out.append(milan.encode(images, masks))
    return torch.cat(out)


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
    # a concept string that is no single world concept ("red circle", "star or water")
    "other": ("{s}", "{s} in the image", "images with {s}", "parts showing {s}"),
}
#: templates for a synonym of the concept (used as it is: no plural is formed)
_SYNONYM_TEMPLATES = {
    "shape": ("{s} shapes", "{s} objects", "{s} things"),
    "colour": ("{s} things", "{s} regions", "{s} objects"),
    "texture": ("{s} patterns", "{s} textures", "{s} surfaces"),
    "scene": ("{s}", "{s} backgrounds", "{s} scenes"),
}


def plural(word: str) -> str:
    """``star`` -> ``stars``, ``cross`` -> ``crosses``, ``brick wall`` -> ``brick walls``."""
    return word + ("es" if word.endswith(("s", "x", "sh", "ch")) else "s")


def concept_forms(concept: str) -> list[str]:
    """The synonyms of a toy-world concept other than its name, without the forms that are
    only the plural of another (``crescent`` -> ``crescent moon``, ``half moon``, ``moon``)."""
    from dndbench.toyworld.synonyms import concept_synonyms
    from dndbench.toyworld.synonyms import plural as regular_plural

    forms = concept_synonyms(concept)
    return [f for f in forms[1:] if f != regular_plural(concept)
            and not any(f == regular_plural(g) for g in forms if g != f)]


def describe_concept(concept: str, rng: np.random.Generator, n: int = 3) -> list[str]:
    """``n`` distinct human-style descriptions of a toy-world concept: the first names it, the
    others name it or (when it has any) one of its synonyms."""
    from dndbench.toyworld.world import all_concepts, concept_category

    single = concept in {c.name for c in all_concepts()}
    category = concept_category(concept) if single else "other"
    named = [t.format(s=concept, p=plural(concept)) for t in _TEMPLATES[category]]
    variants = [t.format(s=form) for form in (concept_forms(concept) if single else [])
                for t in _SYNONYM_TEMPLATES[category]]
    first = named.pop(int(rng.integers(len(named))))
    pool = [t for t in dict.fromkeys(variants + named) if t != first]
    # synonyms first (when there are any), so the captions vary the words, not only the template
    rest = [t for t in pool if t in variants] or pool
    picks = rng.choice(len(rest), size=min(n - 1, len(rest)), replace=False)
    out = [first] + [rest[i] for i in sorted(picks)]
    if len(out) < n:
        out += [t for t in pool if t not in out][:n - len(out)]
    return out


def concept_in_text(concept: str, text: str) -> bool:
    """Whether ``text`` names ``concept``: its name, a plural or a synonym; every part of a
    compositional or polysemantic concept string
    (:func:`dndbench.toyworld.synonyms.names_concept`)."""
    from dndbench.toyworld.synonyms import names_concept

    return names_concept(text, concept)


# -- disjoint from the test network ---------------------------------------------------------------
def catalogue_parts(catalogue: str) -> tuple[str, ...]:
    """Every concept a planted catalogue names: the parts of its concept strings (``"red
    circle"`` -> red, circle; ``"star or water"`` -> star, water; ``"two objects"``), sorted."""
    from dndbench.toyworld.planted import CATALOGUES
    from dndbench.toyworld.synonyms import concept_parts

    try:
        layers = CATALOGUES[catalogue]
    except KeyError:
        raise DataError(f"unknown planted catalogue {catalogue!r}; choose from "
                        f"{', '.join(CATALOGUES)}") from None
    return tuple(sorted({part for concepts in layers.values() for concept in concepts
                         for alternative in concept_parts(concept) for part in alternative}))


def named_parts(text: str, parts: Iterable[str]) -> list[str]:
    """The concepts of ``parts`` that ``text`` names (synonyms and plurals count)."""
    from dndbench.toyworld.synonyms import names_concept

    return [part for part in parts if names_concept(text, part)]


def check_disjoint(units: Sequence[AnnotatedUnit], catalogue: str,
                   words: Iterable[str] = ()) -> None:
    """Raise :class:`~dndbench.errors.DataError` when a description of ``units`` (or one of
    ``words``, e.g. the captioner's vocabulary) names a concept of the planted ``catalogue``."""
    parts = catalogue_parts(catalogue)
    leaks = [(f"{u.layer}:{u.unit}", text, named_parts(text, parts))
             for u in units for text in u.descriptions]
    leaks += [("vocabulary", word, named_parts(word, parts)) for word in words]
    leaks = [leak for leak in leaks if leak[2]]
    if leaks:
        shown = "; ".join(f"{where} {text!r} names {found}" for where, text, found in leaks[:5])
        raise DataError(f"{len(leaks)} MILAN annotation text(s) name concepts of the "
                        f"{catalogue!r} catalogue, which the toy MILAN must not learn: {shown}")


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


def class_agreement(ctx: "Context", indices: np.ndarray, name: str) -> float:
    """Share of the exemplar images ``indices`` whose main object is of class ``name`` (1 for
    a probe without scene specs)."""
    spec = getattr(ctx.probe, "spec", None)
    if spec is None or not len(indices):
        return 1.0
    return float(np.mean([spec(int(i)).main.shape == name for i in indices.tolist()]))


def toy_annotations(ctx: "Context", exemplars: "Exemplars", seed: int = 0,
                    min_agreement: float = 0.6, per_unit: int = 3,
                    exclude: Collection[str] = (),
                    skipped: Counter[str] | None = None) -> list[AnnotatedUnit]:
    """Annotate ``exemplars`` of ``ctx.layer`` of a toy network (see module docstring).  Units
    whose concept names one of ``exclude`` (concepts the annotations must not teach) are
    skipped, as are class units whose exemplars mostly show other classes and highlighted
    regions that agree too little; ``skipped`` counts them by reason."""
    planted = ctx.model.planted_concepts(ctx.layer)
    classes = ctx.model.class_names() if ctx.is_final_layer else None
    annotation = functools.lru_cache(maxsize=None)(ctx.probe.annotation)
    skipped = Counter() if skipped is None else skipped
    out = []
    for row, unit in enumerate(exemplars.units):
        source = "class" if classes else "planted" if unit in planted else "highlight"
        if classes:
            concept = classes[unit]
            score = class_agreement(ctx, exemplars.indices[row], concept)
        elif unit in planted:
            concept, score = planted[unit], 1.0
        else:
            concept, score = read_highlight(annotation, exemplars.indices[row], exemplars.masks[row])
        # a class name is excluded whatever its exemplars show; a highlighted concept only
        # once it is read reliably (otherwise it is no annotation at all)
        if named_parts(concept, exclude) and (source != "highlight" or score >= min_agreement):
            skipped[f"{source}: test-network concept"] += 1
            continue
        if not concept or score < min_agreement:
            skipped[f"{source}: exemplars disagree"] += 1
            continue
        rng = np.random.default_rng([seed, hash_layer(ctx.layer), unit])
        out.append(AnnotatedUnit(ctx.layer, unit, exemplars.images[row], exemplars.masks[row],
                                 describe_concept(concept, rng, per_unit), concept,
                                 {"source": source}))
    return out


def hash_layer(layer: str) -> int:
    """A small stable integer of a layer name (seeds per-unit template choices)."""
    return sum((i + 1) * ord(ch) for i, ch in enumerate(layer)) % 100_003
