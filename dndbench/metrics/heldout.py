"""What the activation-based metrics (``simulation``, ``cosy``) share: the held-out probe images
they score on, a seeded subsample of them, and the described units.

Describers and these metrics should see disjoint images: with ``probe.split=describe`` the
describers get one side of the probe's partition and :func:`scoring_context` gives the other
(:meth:`dndbench.context.Context.heldout`); otherwise it falls back to the whole probe and warns
once that the images overlap.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from dndbench.registry import Choice

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from dndbench.context import Context

log = logging.getLogger(__name__)


class UnitPooling(Choice):
    """How the activation-based metrics turn a unit's map into one activation."""

    mean = "mean"
    max = "max"


POOLINGS = tuple(UnitPooling.values())


def described(descriptions: "pd.DataFrame") -> tuple[list[int], list[str]]:
    """Units and labels of the rows that carry a non-empty label, in table order."""
    if descriptions.empty or "label" not in descriptions:
        return [], []
    rows = descriptions[descriptions["label"].notna()]
    labels = rows["label"].astype(str).str.strip()
    rows, labels = rows[labels != ""], labels[labels != ""]
    return [int(u) for u in rows["unit"]], labels.tolist()


def scoring_context(ctx: "Context", metric: str, warned: set[str]) -> "Context":
    """The context whose probe images ``metric`` scores on: the held-out split when the probe is
    split, else ``ctx`` itself (with one warning per metric and probe that images overlap)."""
    if ctx.has_heldout:
        return ctx.heldout()
    key = f"{ctx.probe.config.name}:{ctx.probe.fingerprint()}"
    if key not in warned:
        warned.add(key)
        log.warning("metric %s scores on the same probe images the describers saw (probe.split=%s); "
                    "set probe.split=describe to hold out the other half", metric,
                    getattr(ctx.probe.config, "split", "all"))
    return ctx


def subsample(n: int, max_images: int, seed: int) -> "np.ndarray":
    """Indices ``0..n-1``, or a seeded random ``max_images`` of them (sorted) when fewer."""
    import numpy as np

    if max_images <= 0 or max_images >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_images, replace=False))
