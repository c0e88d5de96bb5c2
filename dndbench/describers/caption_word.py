"""Trivial baseline ``caption_word``: the most frequent content word in the captions of a
unit's top-``k`` probe images (ties: the word seen first, captions in activation order)."""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

from dndbench.describers.base import DESCRIBERS, Describer, DescriberConfig, Description, Pooling

if TYPE_CHECKING:
    from dndbench.context import Context

STOPWORDS = frozenset("""
a an the of on in at to with and or is are was were be been it its this that these those there
some one two three many few very by for from as into onto over under near next behind front top
up down left right small large big little image picture photo photograph view close closeup
shot has have having his her their them they he she we you i which what who while""".split())
_WORD = re.compile(r"[a-z]+(?:-[a-z]+)*")


def content_words(caption: str) -> list[str]:
    """Lowercase words of ``caption`` that are not stopwords."""
    return [w for w in _WORD.findall(caption.lower()) if w not in STOPWORDS and len(w) > 1]


def most_frequent_word(captions: Sequence[str]) -> tuple[str, int]:
    """The most frequent content word and its count (``("", 0)`` if there is none)."""
    words = [w for c in captions for w in content_words(c)]
    if not words:
        return "", 0
    counts = Counter(words)
    best = max(counts.values())
    return next(w for w in words if counts[w] == best), best


@dataclass
class CaptionWordConfig(DescriberConfig):
    """``k`` top images per unit, ranked by their ``pooling`` of the unit's map."""

    k: int = 10
    pooling: Pooling = Pooling.mean


@DESCRIBERS.register("caption_word")
class CaptionWordDescriber(Describer[CaptionWordConfig]):
    """Baseline: the most frequent content word among the captions of the unit's top images."""

    Config = CaptionWordConfig

    uses_backends = ("captioner",)
    in_default_suite = True

    def describe(self, ctx: "Context") -> list[Description]:
        acts = ctx.activations.pooled(ctx.layer).get(self.config.pooling)
        tops = {u: [int(i) for i in np.argsort(-acts[:, u], kind="stable")[:self.config.k]]
                for u in ctx.units}
        unique = list(dict.fromkeys(i for idx in tops.values() for i in idx))
        captioner = ctx.backend("captioner")
        before = captioner.computed
        captions = dict(zip(unique, captioner.caption([ctx.probe.image(i) for i in unique])))
        ctx.count("caption_word/captioned_images", captioner.computed - before)
        out = []
        for u in ctx.units:
            texts = [captions[i] for i in tops[u]]
            word, count = most_frequent_word(texts)
            out.append(Description(unit=u, label=word or "unknown", score=count / max(1, len(texts)),
                                   extras={"captions": " | ".join(texts)}))
        return out
