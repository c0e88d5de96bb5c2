"""``llm=keyword``: a deterministic keyword summariser — a baseline, **not a language model**.

It reads only the last user message of a conversation, takes the part after its last ``:`` or
line break (where DnD's prompts put the captions), splits that into descriptions at commas and
answers with content words (stop words removed; multi-word toy concept names such as
"brick wall" stay one term):

* one description (DnD's per-caption "simplify" request): its content words in their order,
  at most ``max_simplify_words``;
* several descriptions (the "summarise" request): the term found in the most descriptions,
  plus up to ``max_words - 1`` more terms that occur in at least ``min_share`` of them.
  Ties go to the term that appears first, so shuffled inputs may give different answers,
  as DnD's repeated summarise calls expect.

Summary terms are written in toy-concept order (colour, texture, shape, scene), other words after them
in order of first appearance, e.g. "red striped star".
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from dndbench.backends.base import LLM, LLMS, BackendConfig, Messages

#: words no summary keeps ("two", "large" and "big" stay: open-vocabulary units need them)
STOP_WORDS = frozenset("""
a an the and or but of on in at to for from with without by as into onto over under near
next behind front top bottom left right middle is are was were be been being it its this that
these those there here some any one three several many few small little very
image images photo photos picture pictures realistic showing shows shown depicting view
kind sort type""".split())
#: toy concept categories in answer order
_CATEGORY_ORDER = ("colour", "texture", "shape", "scene")


@dataclass
class KeywordConfig(BackendConfig):
    """``max_words``: terms in a summary; ``min_share``: share of descriptions a term beyond the
    first must occur in; ``max_simplify_words``: terms of a one-caption answer."""

    max_words: int = 3
    min_share: float = 0.5
    max_simplify_words: int = 6


@LLMS.register("keyword")
class KeywordLLM(LLM[KeywordConfig]):
    """Keyword baseline (not an LLM): answers the most frequent content words of the captions."""

    Config = KeywordConfig

    @property
    def model_id(self) -> str:
        return "keyword-baseline"

    def _chat_batch(self, conversations: list[Messages]) -> list[str]:
        return [self.answer(c) for c in conversations]

    def answer(self, conversation: Messages) -> str:
        """The answer to one conversation (see the module docstring)."""
        descriptions = split_descriptions(payload(conversation))
        terms = [content_terms(d) for d in descriptions]
        terms = [t for t in terms if t]
        if not terms:
            return descriptions[0] if descriptions else ""
        c = self.config
        if len(terms) == 1:
            return " ".join(_unique(terms[0])[:c.max_simplify_words])
        return " ".join(_ordered(frequent_terms(terms, c.max_words, c.min_share)))


def payload(conversation: Messages) -> str:
    """The text after the last ``:`` or line break of the last user message, once a trailing
    label line such as ``Answer:`` is dropped."""
    users = [m.get("content", "") for m in conversation if m.get("role") == "user"]
    text = (users[-1] if users else "").strip()
    text = re.sub(r"(^|\n)[^\n:]*:\s*$", "", text).strip()  # a trailing "Answer:" line
    return re.split(r"[:\n]", text)[-1].strip() or text


def split_descriptions(text: str) -> list[str]:
    """Comma-, semicolon- or line-separated descriptions, stripped of quotes and numbering."""
    pieces = re.split(r"[,;\n]", text)
    cleaned = [re.sub(r"^\s*(\d+[.)]\s*|[-*]\s*)", "", p).strip(" \"'.") for p in pieces]
    return [p for p in cleaned if p]


def _toy_phrases() -> list[str]:
    from dndbench.toyworld.world import all_concepts

    return [c.name for c in all_concepts() if " " in c.name]


def content_terms(text: str) -> list[str]:
    """Content words of ``text`` in order, multi-word toy concept names kept as one term."""
    lowered = text.lower()
    for phrase in _toy_phrases():
        lowered = re.sub(rf"\b{re.escape(phrase)}\b", phrase.replace(" ", "_"), lowered)
    words = re.findall(r"[a-z_]+", lowered)
    return [w.replace("_", " ") for w in words if w not in STOP_WORDS and w.strip("_")]


def _unique(terms: list[str]) -> list[str]:
    return list(dict.fromkeys(terms))


def frequent_terms(term_lists: list[list[str]], max_words: int, min_share: float) -> list[str]:
    """The term in most lists, then up to ``max_words - 1`` terms in >= ``min_share`` of them."""
    first_seen = _unique([t for terms in term_lists for t in terms])
    counts = {t: sum(t in terms for terms in term_lists) for t in first_seen}
    ranked = sorted(first_seen, key=lambda t: -counts[t])  # stable: ties by first appearance
    need = min_share * len(term_lists)
    return ranked[:1] + [t for t in ranked[1:max_words] if counts[t] >= need]


def _ordered(terms: list[str]) -> list[str]:
    """Toy concept terms in category order (colour, texture, shape, scene), then the rest."""
    from dndbench.toyworld.world import CATEGORIES

    rank = {name: i for i, cat in enumerate(_CATEGORY_ORDER) for name in CATEGORIES[cat]}
    return sorted(terms, key=lambda t: rank.get(t, len(_CATEGORY_ORDER)))
