"""DnD step 3: best concept selection (Bai et al., TMLR 2025; ``docs/describers/dnd.md``).

Candidate ``c`` has Q synthetic images; all M*Q images of a unit are ranked by the unit's pooled
activation (descending; ties go to the earlier candidate, then the earlier image), giving each
image its 0-based position.  Scores:

* ``mean`` — mean position of c's images (lower is better);
* ``topk_squared`` — mean squared position of c's ``beta`` best images (lower is better);
* ``image_products`` — mean cosine (CLIP image embeddings) between the unit's real top images and
  c's images inside the global top ``window``; -1 when c has none there (higher is better);
* ``topk_compare`` — (M - place of c by ``topk_squared``) x ``image_products`` (higher is better).

:func:`select` returns candidates best first (ties: lower candidate index first) with a value
oriented so that higher is better (rank scores are negated).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from dndbench.describers.dnd.config import Scoring

SCORINGS = tuple(Scoring.values())


def positions(activations: np.ndarray) -> np.ndarray:
    """Position (0 = most activating) of every image of an (M, Q) activation table."""
    flat = np.asarray(activations, np.float64).reshape(-1)
    order = np.argsort(-flat, kind="stable")
    pos = np.empty(len(flat), np.int64)
    pos[order] = np.arange(len(flat))
    return pos.reshape(np.shape(activations))


def score_mean(pos: np.ndarray) -> np.ndarray:
    """Mean position of each candidate's images (lower is better)."""
    return np.asarray(pos, np.float64).mean(axis=1)


def score_topk_squared(pos: np.ndarray, beta: int = 5) -> np.ndarray:
    """Mean squared position of each candidate's ``beta`` best images (lower is better)."""
    best = np.sort(np.asarray(pos, np.float64), axis=1)[:, :max(1, beta)]
    return (best ** 2).mean(axis=1)


def window_images(pos: np.ndarray, window: int = 10) -> list[np.ndarray]:
    """For each candidate, the indices of its images among the ``window`` most activating."""
    return [np.flatnonzero(row < window) for row in np.asarray(pos)]


def score_image_products(window_sims: Sequence[np.ndarray]) -> np.ndarray:
    """Per candidate: mean over its in-window images of their mean cosine with the real top
    images (= the mean over all pairs); -1 when it has no image in the window."""
    return np.array([float(np.mean(s)) if len(s) else -1.0 for s in window_sims])


def score_topk_compare(sq: np.ndarray, ip: np.ndarray) -> np.ndarray:
    """(M - place by ``topk_squared``, best place 0) x image products (higher is better)."""
    m = len(sq)
    order = sorted(range(m), key=lambda c: (sq[c], c))
    rho = np.empty(m)
    rho[order] = m - np.arange(m)
    return rho * np.asarray(ip, np.float64)


def oriented_scores(scoring: str, pos: np.ndarray, window_sims: Sequence[np.ndarray],
                    beta: int = 5) -> np.ndarray:
    """The ``scoring`` function's value per candidate, oriented so that higher is better."""
    if scoring == "mean":
        return -score_mean(pos)
    if scoring == "topk_squared":
        return -score_topk_squared(pos, beta)
    if scoring == "image_products":
        return score_image_products(window_sims)
    if scoring == "topk_compare":
        return score_topk_compare(score_topk_squared(pos, beta), score_image_products(window_sims))
    raise ValueError(f"scoring must be one of {SCORINGS}, got {scoring!r}")


def select(scoring: str, pos: np.ndarray, window_sims: Sequence[np.ndarray],
           beta: int = 5) -> tuple[list[int], np.ndarray]:
    """Candidate indices best first (ties: lower index first) and their oriented scores."""
    values = oriented_scores(scoring, pos, window_sims, beta)
    order = sorted(range(len(values)), key=lambda c: (-values[c], c))
    return order, values


def needs_images(scoring: str) -> bool:
    """Whether ``scoring`` uses CLIP image similarities."""
    return scoring in ("image_products", "topk_compare")
