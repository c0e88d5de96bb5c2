"""DnD step 2: candidate concepts (METHODS.md §1.5) — prompts, answer clean-up, normalisation.

The conversations follow the structure of the released code (a one-shot chat to simplify a
caption, a two-shot chat to summarise a list of captions, one single-turn re-ask when the answer
lists several labels), worded in our own words.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

Messages = list[dict[str, str]]

_RULES = "Answer with the label only: no trailing period, no quotes, no numbering."

SIMPLIFY_REQUEST = ("Write one short concept label (1 to 5 words) that simplifies the description "
                    "below and leaves out unnecessary detail. " + _RULES + "\nDescription: ")
SIMPLIFY_SHOT = ("a red background with a red wall behind a red backdrop, red red red", "A red background")

SUMMARY_REQUEST = ("Write one coherent, concise concept label (1 to 5 words) that captures what "
                   "most, though not necessarily all, of the following descriptions have in "
                   "common.")
SUMMARY_SHOTS = (
    (["a soft purple background", "brown diagonal lines", "a windmill made of fabric",
      "beige linen cloth", "rough beige material"], "multicolored textiles"),
    (["a red tractor in a field", "a toy car on a red ottoman", "a woman in a red dress",
      "a red camaro parked outside", "a spool of red cable"], "red-themed scenes"),
)
SUMMARY_FINAL = (" " + _RULES + " Do not simply repeat the descriptions.")
MERGE_REQUEST = ("Write one concise concept label (1 to 5 words) that summarises the labels "
                 "below, which were proposed for one group of images. " + _RULES + "\nLabels: ")

#: last words after which "<candidate> background" is added as an extra candidate
BACKGROUND_WORDS = frozenset({"design", "designs", "graphic", "graphics"})


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def simplify_conversation(caption: str) -> Messages:
    """One-shot chat asking for a 1-5-word label simplifying ``caption``."""
    example, answer = SIMPLIFY_SHOT
    return [user(SIMPLIFY_REQUEST + example), assistant(answer), user(SIMPLIFY_REQUEST + caption)]


def summary_conversation(captions: Sequence[str]) -> Messages:
    """Two-shot chat asking for one label that summarises ``captions``."""
    messages: Messages = []
    for shot, answer in SUMMARY_SHOTS:
        messages += [user(f"{SUMMARY_REQUEST}\nDescriptions: {', '.join(shot)}"), assistant(answer)]
    messages.append(user(f"{SUMMARY_REQUEST}{SUMMARY_FINAL}\nDescriptions: {', '.join(captions)}"))
    return messages


def merge_conversation(answer: str) -> Messages:
    """Single-turn re-ask: one label for an answer that listed several comma-separated ones."""
    pieces = ", ".join(p.strip() for p in answer.split(",") if p.strip())
    return [user(MERGE_REQUEST + pieces)]


def after_colon(answer: str) -> str:
    """The text after the first ':' (all of it when there is none), stripped of quotes/space."""
    text = answer.split(":", 1)[1] if ":" in answer else answer
    return text.strip().strip("\"'`").strip()


def needs_merge(answer: str) -> bool:
    """True when a cleaned answer lists several comma-separated labels."""
    return "," in answer


def shuffled(captions: Sequence[str], seed: int, unit: int, draw: int) -> list[str]:
    """``captions`` in a random order that depends only on (seed, unit, draw)."""
    rng = np.random.default_rng([seed, unit, draw])
    return [captions[i] for i in rng.permutation(len(captions))]


def normalise_candidates(raw: Sequence[str]) -> list[str]:
    """Lowercase, drop one trailing '.', add "<c> background" after a design/graphic label,
    drop empties and duplicates (first occurrence kept, so the order is deterministic)."""
    out: list[str] = []
    for text in raw:
        c = " ".join(text.lower().split())
        if c.endswith("."):
            c = c[:-1].rstrip()
        if not c:
            continue
        extra = [f"{c} background"] if c.split()[-1] in BACKGROUND_WORDS else []
        for item in [c, *extra]:
            if item not in out:
                out.append(item)
    return out
