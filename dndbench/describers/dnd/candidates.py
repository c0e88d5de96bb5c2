"""DnD step 2: candidate concepts (Bai et al., TMLR 2025; ``docs/describers/dnd.md``) — prompts,
answer clean-up, normalisation.

The conversations follow the structure of the released code, worded in our own words:

* **simplify** (one-shot): the demonstration asks for a label of 1 to 5 words for a repetitive
  caption; the real request asks for one concise label that simplifies the caption, without a
  length limit (as in the reference);
* **summarise** (two-shot): each request asks for one coherent, concise label of 1 to 5 words
  for what *most, not necessarily all*, of the listed descriptions share; the first
  demonstration lists four textile captions and one outlier (a windmill) and still answers
  "multicolored textiles", which is what teaches "most, not all"; the final request adds the
  answer rules and asks not to repeat the descriptions;
* **merge** (single turn): one label for an answer that listed several comma-separated ones.

Every request is an option of ``describer=dnd`` (``simplify_prompt``, ``summary_prompt``,
``merge_prompt``, ``answer_rules``).  Whatever the wording, the payload keeps one format: the
request, a line break, then ``Description: <caption>``, ``Descriptions: <a>, <b>, ...`` or
``Labels: <a>, <b>``.  The offline ``keyword`` summariser reads only the text after the last ':'
or line break, so rewording a request does not change its answers (the ``proposer`` seeds its
draw with the whole conversation, so its answers do change).
"""
from __future__ import annotations

from typing import Sequence

Messages = list[dict[str, str]]

#: rules added to the final request of each conversation
ANSWER_RULES = "Reply with the label alone: no full stop at the end, no quotation marks, no numbering."

#: the simplify demonstration: its request (with the 1-5 word limit), caption and answer
SIMPLIFY_SHOT_REQUEST = "Turn the description below into a concept label of 1 to 5 words."
SIMPLIFY_SHOT = ("a red background with a red wall behind a red backdrop, red red red", "A red background")
#: the real simplify request (no length limit, as in the reference)
SIMPLIFY_REQUEST = ("Give only one concise concept label that simplifies the description below "
                    "and drops details that are not needed. " + ANSWER_RULES)

SUMMARY_REQUEST = ("Give one coherent, concise concept label of 1 to 5 words that semantically "
                   "sums up what most, not necessarily all, of the descriptions below have in "
                   "common.")
#: the two summarise demonstrations; the first has an outlier caption (the windmill)
SUMMARY_SHOTS = (
    (["a soft lilac cloth", "diagonal brown stripes", "a windmill by a canal",
      "beige linen fabric", "coarse beige burlap"], "multicolored textiles"),
    (["a red tractor in a field", "a toy car on a red ottoman", "a woman in a red dress",
      "a red camaro parked outside", "a spool of red cable"], "red-themed scenes"),
)
#: what the final summarise request adds after the answer rules
SUMMARY_FINAL = "Do not just repeat the descriptions."
MERGE_REQUEST = ("Give one concise concept label of 1 to 5 words that sums up the labels below, "
                 "all proposed for one group of images.")

#: last words after which "<candidate> background" is added as an extra candidate
BACKGROUND_WORDS = frozenset({"design", "designs", "graphic", "graphics"})


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def simplify_conversation(caption: str, request: str = SIMPLIFY_REQUEST) -> Messages:
    """One-shot chat asking for one concise label simplifying ``caption``."""
    example, answer = SIMPLIFY_SHOT
    return [user(f"{SIMPLIFY_SHOT_REQUEST}\nDescription: {example}"), assistant(answer),
            user(f"{request}\nDescription: {caption}")]


def summary_conversation(captions: Sequence[str], request: str = SUMMARY_REQUEST,
                         rules: str = ANSWER_RULES) -> Messages:
    """Two-shot chat asking for one label that summarises most of ``captions``."""
    messages: Messages = []
    for shot, answer in SUMMARY_SHOTS:
        messages += [user(f"{request}\nDescriptions: {', '.join(shot)}"), assistant(answer)]
    final = " ".join(part for part in (request, rules, SUMMARY_FINAL) if part)
    messages.append(user(f"{final}\nDescriptions: {', '.join(captions)}"))
    return messages


def merge_conversation(answer: str, request: str = MERGE_REQUEST,
                       rules: str = ANSWER_RULES) -> Messages:
    """Single-turn re-ask: one label for an answer that listed several comma-separated ones."""
    pieces = ", ".join(p.strip() for p in answer.split(",") if p.strip())
    text = " ".join(part for part in (request, rules) if part)
    return [user(f"{text}\nLabels: {pieces}")]


def after_colon(answer: str) -> str:
    """The text after the first ':' (all of it when there is none), stripped of quotes/space."""
    text = answer.split(":", 1)[1] if ":" in answer else answer
    return text.strip().strip("\"'`").strip()


def needs_merge(answer: str) -> bool:
    """True when a cleaned answer lists several comma-separated labels."""
    return "," in answer


def shuffled(captions: Sequence[str], seed: int, unit: int, draw: int) -> list[str]:
    """``captions`` in a random order that depends only on (seed, unit, draw)."""
    import numpy as np

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
