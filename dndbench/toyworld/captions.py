"""The toy world's caption language: caption slots, the canonical caption, varied training
captions and the word vocabulary of the toy text models.

A toy view (a whole image, a crop of it or an object-free background patch) is described by
its **slots** (:data:`SLOT_VALUES`): whether it shows an object; the main object's shape,
colour, texture (a world texture or an extra one such as ``zigzag``), whether it is outlined and
whether it is large; the scene; whether a second (distractor) object is visible, and its shape
and colour.  :func:`slots_caption` writes slots out in the **canonical** form the toy captioner
and the oracle captioner produce::

    a red striped star on grass
    a large red outlined circle on sand and a small blue star as a second object
    a patch of grass                      (no object in view)

(an outlined object is plain, so "outlined" takes the texture's place).  Every such caption
names the main object's concepts before the distractor's, so
:func:`~dndbench.toyworld.world.concepts_from_text` reads back the main object's concepts, and
:func:`~dndbench.toyworld.synonyms.names_concept` recognises the open-vocabulary concepts
("large", "outlined", "zigzag", "second object" for ``two objects``).

:func:`random_caption` draws varied training captions: random templates, random subsets of the
slots, synonyms and plurals (:mod:`dndbench.toyworld.synonyms`, and the synonyms of
:data:`~dndbench.toyworld.world.OPEN_CONCEPTS`), so the toy CLIP's text tower learns every word
that names a concept.  :func:`tokenize` maps text to vocabulary ids; any word outside the
vocabulary becomes the ``<unk>`` token (so "a dog on grass" is "a <unk> on grass").
"""
from __future__ import annotations

import re
from functools import lru_cache
from typing import TYPE_CHECKING

from dndbench.toyworld.world import (
    CATEGORIES,
    COLOURS,
    EXTRA_TEXTURES,
    LARGE_RADIUS,
    OPEN_CONCEPTS,
    SCENES,
    SHAPES,
    TEXTURES,
    SceneSpec,
)

if TYPE_CHECKING:
    import numpy as np

#: caption slots and their values; "object" is absent only for a background patch, the
#: distractor slots describe a second visible object
SLOT_VALUES: dict[str, tuple[str, ...]] = {
    "object": ("absent", "present"),
    "shape": SHAPES,
    "colour": tuple(COLOURS),
    "texture": TEXTURES + EXTRA_TEXTURES,
    "scene": SCENES,
    "outlined": ("no", "yes"),
    "size": ("ordinary", "large"),
    "distractor": ("absent", "present"),
    "distractor_shape": SHAPES,
    "distractor_colour": tuple(COLOURS),
}
#: slots that only mean something when the view shows an object / a distractor
OBJECT_SLOTS = ("shape", "colour", "texture", "outlined", "size", "distractor",
                "distractor_shape", "distractor_colour")
DISTRACTOR_SLOTS = ("distractor_shape", "distractor_colour")

#: the two texts per binary slot that a CLIP-like model is asked to choose between (absent /
#: no / ordinary first), trained with the bare concept words
BINARY_PROMPTS: dict[str, tuple[str, str]] = {
    "outlined": ("filled", "outlined"),
    "size": ("medium", "large"),
    "distractor": ("single object", "two objects"),
}



def slot_queries() -> dict[str, tuple[str, ...]]:
    """The texts a CLIP-like model chooses between per slot, in the order of the slot's values
    (:data:`SLOT_VALUES`): each category's bare concept words (textures with the extra ones, as
    CLIP-Dissect queries them), and the word pair of each binary slot."""
    out = {slot: SLOT_VALUES[slot] for slot in ("shape", "colour", "texture", "scene")}
    return {**out, **BINARY_PROMPTS}


#: words of the caption templates and of common prompts ("One realistic image of ...")
FUNCTION_WORDS: tuple[str, ...] = (
    "a", "an", "and", "small", "on", "with", "of", "the", "one", "realistic", "image", "photo",
    "picture", "in", "front", "over", "next", "to", "as", "second", "object", "objects",
    "shape", "patch", "view", "background", "just", "only", "empty", "nothing", "else",
    "filled", "medium", "single", "sized", "there", "is", "showing")
PAD, UNK = "<pad>", "<unk>"

#: (template, mentions texture, mentions scene) of :func:`caption`; {a} is the article of the
#: word after it, {object} the main object's words ("large red outlined circle")
TEMPLATES: tuple[tuple[str, bool, bool], ...] = (
    ("{a} {object} on {scene}", True, True),
    ("{scene} with {a} {object}", True, True),
    ("{a} photo of {a} {object} on {scene}", True, True),
    ("{a} {object} in front of {scene}", True, True),
    ("{a} {object}", True, False),
)
#: patch captions of :func:`random_caption` (the first is the canonical one)
PATCH_TEMPLATES: tuple[str, ...] = ("a patch of {scene}", "{scene}", "{scene} background",
                                    "a view of {scene}", "just {scene}", "empty {scene}",
                                    "{scene} and nothing else", "a photo of {scene}")
#: ways of naming the distractor (the first is the canonical one)
DISTRACTOR_TEMPLATES: tuple[str, ...] = (
    " and a small {thing} as a second object", " and a small {thing}", " next to a small {thing}",
    " with a second object a small {thing}", " and a {thing}", " two objects and a small {thing}")


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _fill(template: str, **words: str) -> str:
    """Fill ``template``, choosing each ``{a}`` by the word that follows it."""
    text = template.format(a="{a}", **words)
    while "{a}" in text:
        after = text.split("{a}", 1)[1].split()[0]
        text = text.replace("{a}", _article(after), 1)
    return " ".join(text.split())


# -- slots -----------------------------------------------------------------------------------
def spec_slots(spec: SceneSpec, mask: "np.ndarray | None" = None) -> dict[str, str | None]:
    """The slots of a whole image of ``spec`` (distractor slots None without a distractor).
    With the image's object ``mask`` a distractor counts only when visible
    (:func:`dndbench.toyworld.render.shows` "two objects"), else whenever the spec has one."""
    main = spec.main
    other = spec.objects[1] if len(spec.objects) > 1 else None
    if other is not None and mask is not None:
        from dndbench.toyworld.render import shows

        other = other if shows(spec, mask, "two objects") else None
    return {"object": "present", "shape": main.shape, "colour": main.colour,
            "texture": main.texture, "scene": spec.scene,
            "outlined": "yes" if main.outlined else "no",
            "size": "large" if main.radius >= LARGE_RADIUS else "ordinary",
            "distractor": "present" if other else "absent",
            "distractor_shape": other.shape if other else None,
            "distractor_colour": other.colour if other else None}


def patch_slots(scene: str) -> dict[str, str | None]:
    """The slots of an object-free background patch of ``scene``."""
    return {slot: None for slot in SLOT_VALUES} | {"object": "absent", "scene": scene}


def _object_words(slots: dict[str, str | None], texture: bool = True) -> str:
    words = ["large"] if slots.get("size") == "large" else []
    words.append(str(slots["colour"]))
    if slots.get("outlined") == "yes":
        words.append("outlined")
    elif texture:
        words.append(str(slots["texture"]))
    words.append(str(slots["shape"]))
    return " ".join(words)


def slots_caption(slots: dict[str, str | None], template: int = 0,
                  distractor: bool = True) -> str:
    """The caption of ``slots`` under template number ``template`` (0: the canonical one); the
    distractor (when present) is named when ``distractor`` is true."""
    if slots.get("object") == "absent":
        return _fill(PATCH_TEMPLATES[0], scene=str(slots["scene"]))
    form, with_texture, _ = TEMPLATES[template]
    text = _fill(form, object=_object_words(slots, with_texture), scene=str(slots["scene"]))
    if distractor and slots.get("distractor") == "present":
        thing = f"{slots['distractor_colour']} {slots['distractor_shape']}"
        text += DISTRACTOR_TEMPLATES[0].format(thing=thing)
    return text


def caption(spec: SceneSpec, template: int = 0, distractor: bool = True) -> str:
    """The caption of ``spec`` under template number ``template``; the distractor (if the spec
    has one) is mentioned when ``distractor`` is true."""
    return slots_caption(spec_slots(spec), template, distractor)


def canonical_caption(spec: SceneSpec) -> str:
    """The caption the toy captioner is trained to produce (template 0, distractor named)."""
    return caption(spec, 0, True)


def mentioned(template: int) -> tuple[str, ...]:
    """The world-concept categories of the main object that template ``template`` names."""
    _, texture, scene = TEMPLATES[template]
    return ("colour", "shape") + (("texture",) if texture else ()) + (("scene",) if scene else ())


# -- varied training captions ----------------------------------------------------------------
def _forms(name: str) -> tuple[str, ...]:
    """Every word naming a world concept, an extra texture or an open concept (itself first)."""
    from dndbench.toyworld.synonyms import concept_synonyms

    if name in OPEN_CONCEPTS:
        return (name, *OPEN_CONCEPTS[name])
    if name in EXTRA_TEXTURES:
        return (name, *OPEN_CONCEPTS.get(name, ()))
    return concept_synonyms(name)


def _word(name: str, rng: "np.random.Generator", canonical: float = 0.5) -> str:
    """``name`` itself with probability ``canonical``, else a random other form of it."""
    forms = _forms(name)
    if len(forms) == 1 or rng.random() < canonical:
        return forms[0]
    return forms[1 + int(rng.integers(len(forms) - 1))]


def random_caption(slots: dict[str, str | None] | SceneSpec, rng: "np.random.Generator") -> str:
    """A varied caption of ``slots`` (or of a spec's slots): a random template naming a random
    subset of the slots (shape and colour usually, texture, scene, size, outline and distractor
    less often), each concept by its name or a synonym."""
    s = spec_slots(slots) if isinstance(slots, SceneSpec) else slots
    scene = _word(str(s["scene"]), rng)
    if s.get("object") == "absent":
        return _fill(PATCH_TEMPLATES[int(rng.integers(len(PATCH_TEMPLATES)))], scene=scene)
    words = []
    if s.get("size") == "large" and rng.random() < 0.7:
        words.append(_word("large object", rng, 0.4))
    elif s.get("size") == "ordinary" and rng.random() < 0.08:
        words.append("medium")
    if rng.random() < 0.85:
        words.append(_word(str(s["colour"]), rng))
    if s.get("outlined") == "yes" and rng.random() < 0.75:
        words.append(_word("outlined", rng, 0.4))
    elif s.get("outlined") == "no" and rng.random() < 0.08:
        words.append("filled")
    elif rng.random() < 0.6:
        words.append(_word(str(s["texture"]), rng))
    words.append(_word(str(s["shape"]), rng) if rng.random() < 0.85 else "shape")
    form = TEMPLATES[int(rng.integers(len(TEMPLATES)))][0]
    if rng.random() < 0.3:
        form = "{a} {object}"
    text = _fill(form, object=" ".join(words), scene=scene)
    if s.get("distractor") == "present" and rng.random() < 0.6:
        thing = f"{_word(str(s['distractor_colour']), rng)} {_word(str(s['distractor_shape']), rng)}"
        text += DISTRACTOR_TEMPLATES[int(rng.integers(len(DISTRACTOR_TEMPLATES)))].format(
            thing=thing)
        if rng.random() < 0.25:
            text = _word("two objects", rng, 0.3) + " " + text
    elif s.get("distractor") == "absent" and rng.random() < 0.08:
        text += " as a single object"
    return text


# -- vocabulary and tokens -------------------------------------------------------------------
@lru_cache(maxsize=1)
def vocabulary() -> tuple[str, ...]:
    """Every token id's word: ``<pad>``, ``<unk>``, function words, then the words of every
    concept name, synonym and plural, extra texture and open concept."""
    from dndbench.toyworld.synonyms import concept_synonyms

    words = [PAD, UNK, *FUNCTION_WORDS]
    phrases = [form for names in CATEGORIES.values() for name in names
               for form in concept_synonyms(name)]
    phrases += [form for name in (*EXTRA_TEXTURES, *OPEN_CONCEPTS) for form in _forms(name)]
    for phrase in phrases:
        words += [w for w in _words(phrase) if w not in words]
    return tuple(words)


@lru_cache(maxsize=1)
def _ids() -> dict[str, int]:
    return {word: i for i, word in enumerate(vocabulary())}


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


def words(text: str) -> list[str]:
    """Lower-case alphabetic words of ``text``."""
    return _words(text)


def tokenize(text: str) -> list[int]:
    """Token ids of ``text``; unknown words map to ``<unk>``, an empty text to ``[<unk>]``."""
    ids = _ids()
    return [ids.get(w, ids[UNK]) for w in words(text)] or [ids[UNK]]
