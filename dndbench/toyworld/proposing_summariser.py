"""``llm=proposer``: an offline summariser that *proposes* — seeded sampling over its evidence,
so repeated summarise requests give distinct candidates, as a real LLM's do.  **Not a language
model.**

It parses conversations as the deterministic ``keyword`` baseline does
(:mod:`dndbench.toyworld.keyword_summariser`: the text after the last ``:`` or line break of the
last user message, split into descriptions at commas; content words with multi-word toy concept
names kept as one term):

* one description (DnD's per-caption "simplify" request): its content words in their order,
  at most ``max_simplify_words`` — the same answer as ``keyword``;
* several descriptions (the "summarise" request): a *sampled* label.  The evidence is each
  term's share of descriptions that mention it; the label's length is drawn uniformly from
  1 .. ``max_terms`` and its terms are drawn without replacement with weights
  ``share ** sharpness``, so frequent terms dominate but every term of at least ``min_share``
  (default 0: every term) can be proposed.  Terms are written in toy-concept order (colour,
  texture, shape, scene), other words after them in order of first appearance.

The draw is seeded by (``seed``, the whole conversation), so one conversation always gets one
answer — what the call cache, which keys on the conversation, stores — while different
conversations draw independently.  DnD asks its N summaries of a unit over N seeded shuffles of
the unit's descriptions (:func:`dndbench.describers.dnd.candidates.shuffled`), so the N
conversations differ and give up to N distinct candidates; rerunning gives the same ones.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np

from dndbench.backends.base import LLM, LLMS, BackendConfig, Messages
from dndbench.toyworld.keyword_summariser import (
    _ordered,
    _unique,
    content_terms,
    payload,
    split_descriptions,
)


@dataclass
class ProposerConfig(BackendConfig):
    """``max_terms``: longest label (lengths 1 .. max_terms are equally likely);
    ``sharpness``: exponent of a term's description share in its sampling weight (0 = uniform
    over terms); ``min_share``: share of descriptions a term must occur in to be proposed
    (0 = every term); ``seed``: seeds every draw; ``max_simplify_words``: terms of a
    one-description answer."""

    max_terms: int = 3
    sharpness: float = 2.0
    min_share: float = 0.0
    seed: int = 0
    max_simplify_words: int = 6


@LLMS.register("proposer")
class ProposingLLM(LLM[ProposerConfig]):
    """Proposing summariser (not an LLM): seeded samples of the captions' frequent terms."""

    Config = ProposerConfig

    @property
    def model_id(self) -> str:
        return "proposing-summariser"

    def _chat_batch(self, conversations: list[Messages]) -> list[str]:
        return [self.answer(c) for c in conversations]

    def answer(self, conversation: Messages) -> str:
        """The answer to one conversation (see the module docstring)."""
        descriptions = split_descriptions(payload(conversation))
        terms = [t for t in (content_terms(d) for d in descriptions) if t]
        if not terms:
            return descriptions[0] if descriptions else ""
        c = self.config
        if len(terms) == 1:
            return " ".join(_unique(terms[0])[:c.max_simplify_words])
        rng = np.random.default_rng(conversation_seed(c.seed, conversation))
        return " ".join(propose(terms, rng, c.max_terms, c.sharpness, c.min_share))


def conversation_seed(seed: int, conversation: Messages) -> list[int]:
    """Seed words for ``np.random.default_rng`` from ``seed`` and the conversation's content."""
    text = json.dumps(conversation, sort_keys=True, ensure_ascii=False)
    digest = hashlib.sha256(text.encode()).digest()
    return [int(seed), *(int.from_bytes(digest[i:i + 4], "little") for i in range(0, 16, 4))]


def term_weights(term_lists: list[list[str]], sharpness: float = 2.0,
                 min_share: float = 0.0) -> dict[str, float]:
    """Sampling weight of every eligible term, in order of first appearance: its share of the
    descriptions (lists) that contain it, to the power ``sharpness``; terms below ``min_share``
    are left out, except the most frequent term, which is always eligible."""
    first_seen = _unique([t for terms in term_lists for t in terms])
    share = {t: sum(t in terms for terms in term_lists) / len(term_lists) for t in first_seen}
    top = max(share.values())
    return {t: s ** sharpness for t, s in share.items() if s >= min_share or s == top}


def propose(term_lists: list[list[str]], rng: np.random.Generator, max_terms: int = 3,
            sharpness: float = 2.0, min_share: float = 0.0) -> list[str]:
    """One sampled label (a list of terms) for the descriptions' ``term_lists``."""
    weights = term_weights(term_lists, sharpness, min_share)
    names = list(weights)
    length = int(rng.integers(1, max(1, max_terms) + 1))
    length = min(length, len(names))
    p = np.array([weights[t] for t in names], np.float64)
    picked = rng.choice(len(names), size=length, replace=False, p=p / p.sum())
    return _ordered([names[i] for i in sorted(int(i) for i in picked)])
