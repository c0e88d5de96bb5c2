"""The toy world's caption language and the word vocabulary of its text models.

Captions are generated deterministically from a :class:`~dndbench.toyworld.world.SceneSpec`
with a handful of templates, e.g. ``"a red striped star on grass"`` (the canonical template,
the one the toy captioner produces) or ``"grass with an orange dotted heart"``; a distractor
object, when the spec has one, is mentioned as ``"... and a small blue circle"``.  The
vocabulary is the toy concept names plus the few function words below; every caption names
its main object's concepts before the distractor's, so
:func:`~dndbench.toyworld.world.concepts_from_text` reads back the main object's concepts.

:func:`tokenize` maps text to vocabulary ids; any word outside the vocabulary becomes the
``<unk>`` token (so "a dog on grass" is "a <unk> on grass").
"""
from __future__ import annotations

import re
from functools import lru_cache
from typing import TYPE_CHECKING

from dndbench.toyworld.world import CATEGORIES, SceneSpec

if TYPE_CHECKING:
    import numpy as np

#: words of the caption templates and of common prompts ("One realistic image of ...")
FUNCTION_WORDS: tuple[str, ...] = ("a", "an", "and", "small", "on", "with", "of", "the",
                                   "one", "realistic", "image", "photo", "picture")
PAD, UNK = "<pad>", "<unk>"

#: (template, mentions texture, mentions scene); {a} is the article of the word after it
TEMPLATES: tuple[tuple[str, bool, bool], ...] = (
    ("{a} {colour} {texture} {shape} on {scene}", True, True),
    ("{a} {texture} {colour} {shape} on {scene}", True, True),
    ("{scene} with {a} {colour} {texture} {shape}", True, True),
    ("{a} {colour} {shape} on {scene}", False, True),
    ("{a} {colour} {texture} {shape}", True, False),
)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _fill(template: str, **words: str) -> str:
    """Fill ``template``, choosing each ``{a}`` by the word that follows it."""
    text = template.format(a="{a}", **words)
    while "{a}" in text:
        after = text.split("{a}", 1)[1].split()[0]
        text = text.replace("{a}", _article(after), 1)
    return text


def caption(spec: SceneSpec, template: int = 0, distractor: bool = True) -> str:
    """The caption of ``spec`` under template number ``template``; the distractor (if the spec
    has one) is mentioned when ``distractor`` is true."""
    m = spec.main
    text = _fill(TEMPLATES[template][0], colour=m.colour, texture=m.texture, shape=m.shape,
                 scene=spec.scene)
    if distractor and len(spec.objects) > 1:
        d = spec.objects[1]
        text += f" and a small {d.colour} {d.shape}"
    return text


def canonical_caption(spec: SceneSpec) -> str:
    """The caption the toy captioner is trained to produce (template 0, distractor named)."""
    return caption(spec, 0, True)


def random_caption(spec: SceneSpec, rng: "np.random.Generator") -> str:
    """A caption of ``spec`` with a random template; a distractor is named half of the time."""
    template = int(rng.integers(len(TEMPLATES)))
    return caption(spec, template, bool(rng.random() < 0.5))


def mentioned(template: int) -> tuple[str, ...]:
    """The categories of the main object that template ``template`` names."""
    _, texture, scene = TEMPLATES[template]
    return ("colour", "shape") + (("texture",) if texture else ()) + (("scene",) if scene else ())


# -- vocabulary and tokens -------------------------------------------------------------------
@lru_cache(maxsize=1)
def vocabulary() -> tuple[str, ...]:
    """Every token id's word: ``<pad>``, ``<unk>``, function words, then concept words."""
    words = [PAD, UNK, *FUNCTION_WORDS]
    for names in CATEGORIES.values():
        for name in names:
            words += [w for w in name.split() if w not in words]
    return tuple(words)


@lru_cache(maxsize=1)
def _ids() -> dict[str, int]:
    return {word: i for i, word in enumerate(vocabulary())}


def words(text: str) -> list[str]:
    """Lower-case alphabetic words of ``text``."""
    return re.findall(r"[a-z]+", text.lower())


def tokenize(text: str) -> list[int]:
    """Token ids of ``text``; unknown words map to ``<unk>``, an empty text to ``[<unk>]``."""
    ids = _ids()
    return [ids.get(w, ids[UNK]) for w in words(text)] or [ids[UNK]]
