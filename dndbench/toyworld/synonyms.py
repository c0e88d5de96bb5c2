"""Words that name each toy-world concept: its synonyms and plurals, for whole-word matching.

``concept_synonyms("striped")`` -> ``("striped", "stripe", "stripes", "stripy", ...)``.  A
*concept string* may combine world concepts: ``"red circle"`` (compositional: every part) or
``"red or blue"`` (polysemantic: alternatives); :func:`concept_parts` splits one into its parts and
:func:`names_concept` tells whether a text names all of them (see ``docs/metrics/planted_concept.md``).
"""
from __future__ import annotations

import re
from functools import cache

#: extra words naming a concept, besides the concept's own name and its regular plural
_SYNONYMS: dict[str, tuple[str, ...]] = {
    # shapes
    "circle": ("circular", "disc", "discs", "disk", "disks"),
    "square": ("squared",),
    "triangle": ("triangular",),
    "star": ("star-shaped",),
    "heart": ("heart-shaped",),
    "cross": ("plus sign", "plus signs"),
    "ring": ("annulus", "donut", "donuts", "doughnut", "doughnuts", "hoop", "hoops"),
    "diamond": ("rhombus", "rhombi", "rhombuses", "lozenge", "lozenges"),
    "hourglass": (),
    "crescent": ("crescent moon", "half moon", "moon", "moons"),
    "arrow": (),
    "house": ("home", "homes", "hut", "huts"),
    # colours
    "red": ("reddish", "crimson", "scarlet"),
    "green": ("greenish",),
    "blue": ("bluish", "blueish"),
    "yellow": ("yellowish",),
    "purple": ("purplish", "violet"),
    "orange": ("orangish", "orangey"),
    "white": ("whitish",),
    "black": ("blackish",),
    # textures
    "plain": ("solid", "uniform", "untextured"),
    "striped": ("stripe", "stripes", "stripy", "stripey"),
    "dotted": ("dot", "dots", "spotted", "spot", "spots", "polka dot", "polka dots"),
    "checkered": ("checked", "chequered", "checkerboard", "checkerboards", "chequerboard",
                  "checks", "checker", "checkers"),
    "wavy": ("wave", "waves", "wavy lines", "undulating"),
    "noisy": ("noise", "grainy", "speckled"),
    # scenes
    "sky": ("skies",),
    "grass": ("grassy", "lawn", "lawns", "meadow", "meadows"),
    "sand": ("sandy", "beach", "beaches", "desert", "deserts"),
    "water": ("watery", "sea", "seas", "ocean", "oceans", "lake", "lakes"),
    "snow": ("snowy", "snowfield"),
    "brick wall": ("brick", "bricks", "brickwork", "brick walls"),
    "night": ("nights", "nighttime", "night-time"),
}

#: concept names that are adjectives or mass nouns: no plural is added for them
_NO_PLURAL = {"red", "green", "blue", "yellow", "purple", "orange", "white", "black", "plain",
              "striped", "dotted", "checkered", "wavy", "noisy", "sky", "sand", "snow", "water",
              "grass"}


def plural(word: str) -> str:
    """The regular English plural of ``word`` (the last word of a phrase)."""
    if word.endswith(("s", "x", "z", "ch", "sh")):
        return word + "es"
    if word.endswith("y") and len(word) > 1 and word[-2] not in "aeiou":
        return word[:-1] + "ies"
    return word + "s"


def _world_names() -> tuple[str, ...]:
    from dndbench.toyworld.world import all_concepts

    return tuple(c.name for c in all_concepts())


@cache
def concept_synonyms(name: str) -> tuple[str, ...]:
    """Every word or phrase that names the world concept ``name`` (itself first), lower case.

    Raises ``KeyError`` for a name that is not a toy-world concept.
    """
    if name not in _world_names():
        raise KeyError(f"unknown toy-world concept {name!r}")
    forms = [name]
    if name not in _NO_PLURAL:
        forms.append(plural(name))
    forms.extend(_SYNONYMS.get(name, ()))
    return tuple(dict.fromkeys(f.lower() for f in forms))


def normalise_text(text: str) -> str:
    """Lower case, hyphens and underscores as spaces, runs of space collapsed."""
    return " ".join(re.sub(r"[-_]", " ", str(text).lower()).split())


def _pattern(phrase: str) -> re.Pattern[str]:
    words = normalise_text(phrase).split()
    return re.compile(r"\b" + r"\s+".join(re.escape(w) for w in words) + r"\b")


@cache
def _patterns(name: str) -> tuple[re.Pattern[str], ...]:
    return tuple(_pattern(form) for form in concept_synonyms(name))


def mentions(text: str, name: str) -> bool:
    """Whether ``text`` names the world concept ``name`` as whole words (synonyms and plurals
    accepted, case-insensitive)."""
    lowered = normalise_text(text)
    return any(p.search(lowered) for p in _patterns(name))


def concept_parts(concept: str) -> list[list[str]]:
    """A concept string as alternatives of parts: ``"red circle"`` -> ``[["red", "circle"]]``,
    ``"red or blue star"`` -> ``[["red"], ["blue", "star"]]``.

    Parts are world concept names found as whole words (longest names first, so ``brick wall``
    is one part); an alternative without any world concept keeps its own text as its one part.
    """
    out: list[list[str]] = []
    names = sorted(_world_names(), key=lambda n: -len(n))
    for alternative in re.split(r"\s+or\s+", normalise_text(concept)):
        rest, found = f" {alternative} ", []
        for name in names:
            match = _pattern(name).search(rest)
            if match:
                found.append((match.start(), name))
                rest = rest[:match.start()] + " " * (match.end() - match.start()) + rest[match.end():]
        parts = [name for _, name in sorted(found)]
        if alternative.strip():
            out.append(parts or [alternative.strip()])
    return out


def names_concept(text: str, concept: str) -> bool:
    """Whether ``text`` names ``concept``: every part of every alternative must be mentioned
    (so a polysemantic "A or B" needs both A and B); a part that is not a world concept must
    appear as whole words, itself or one of its :func:`open_synonyms`."""
    lowered = normalise_text(text)
    for alternative in concept_parts(concept):
        for part in alternative:
            if part in _world_names():
                if not mentions(lowered, part):
                    return False
            elif not any(_pattern(form).search(lowered) for form in open_synonyms(part)):
                return False
    return True


def open_synonyms(part: str) -> tuple[str, ...]:
    """The words naming a part that is no world concept: itself, plus its synonyms when it is
    one of :data:`~dndbench.toyworld.world.OPEN_CONCEPTS` (``"zigzag"``, ``"large object"``...)."""
    from dndbench.toyworld.world import OPEN_CONCEPTS

    return (part, *OPEN_CONCEPTS.get(normalise_text(part), ()))
