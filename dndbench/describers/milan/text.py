"""A lowercase word tokenizer and vocabulary; special tokens come after the words
(``<bos>``, ``<eos>``, ``<pad>``, ``<unk>``), the order MILAN's released indexers use."""
from __future__ import annotations

import re
from collections import Counter
from typing import Iterable, Sequence

SPECIALS = ("<bos>", "<eos>", "<pad>", "<unk>")
_WORD_RE = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[^\sa-z0-9]")


def tokenize(text: str) -> list[str]:
    """Lowercase words and single punctuation marks: ``"Red, things"`` -> ``[red, ",", things]``."""
    return _WORD_RE.findall(text.lower())


class Vocab:
    """Words (most frequent first) followed by the four special tokens."""

    def __init__(self, words: Sequence[str]) -> None:
        self.words = list(words)
        self.tokens = self.words + list(SPECIALS)
        self.index = {t: i for i, t in enumerate(self.tokens)}
        self.bos, self.eos, self.pad, self.unk = (self.index[s] for s in SPECIALS)

    @classmethod
    def build(cls, texts: Iterable[str], min_count: int = 1) -> "Vocab":
        """The words of ``texts`` seen at least ``min_count`` times (ties in first-seen order)."""
        counts = Counter(t for text in texts for t in tokenize(text))
        return cls([w for w, n in counts.most_common() if n >= min_count and w not in SPECIALS])

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, text: str, max_length: int | None = None) -> list[int]:
        """``<bos>`` word ids ``<eos>`` (words cut to ``max_length`` - 1 so the total with ``<eos>``
        is at most ``max_length`` + 1)."""
        ids = [self.index.get(t, self.unk) for t in tokenize(text)]
        if max_length is not None:
            ids = ids[:max_length - 1]
        return [self.bos, *ids, self.eos]

    def decode(self, ids: Iterable[int]) -> str:
        """Words up to the first ``<eos>``, special tokens dropped."""
        words = []
        for i in ids:
            if i == self.eos:
                break
            if i < len(self.words):
                words.append(self.words[i])
        return " ".join(words).replace(" ,", ",").replace(" .", ".")

    def pad_batch(self, sequences: Sequence[Sequence[int]]) -> "list[list[int]]":
        """Right-pad with ``<pad>`` to the longest sequence."""
        width = max((len(s) for s in sequences), default=0)
        return [list(s) + [self.pad] * (width - len(s)) for s in sequences]
