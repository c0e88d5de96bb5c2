"""Running a describer through the run cache: its table for ``ctx.units``, computed once.

The pipeline and describers that build on another describer's output (the ``shuffled`` control)
share this, so a method described once in a run (or an earlier run) is never described again.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from dndbench.cache import stable_hash

if TYPE_CHECKING:
    import pandas as pd

    from dndbench.context import Context
    from dndbench.describers.base import Describer, Description

#: columns every descriptions table starts with
COLUMNS = ["unit", "label", "label_2", "label_3", "score"]


def descriptions_frame(descriptions: list["Description"]) -> "pd.DataFrame":
    """One row per unit: unit, label, label_2, label_3, score and the describer's extras."""
    import pandas as pd

    rows = []
    for d in descriptions:
        alts = list(d.alternatives) + ["", ""]
        rows.append({"unit": int(d.unit), "label": d.label, "label_2": alts[0],
                     "label_3": alts[1], "score": float(d.score), **d.extras})
    return pd.DataFrame(rows, columns=None if rows else COLUMNS)


def descriptions_key(describer: "Describer", ctx: "Context") -> str:
    """Cache key of ``describer``'s table for this context (config, code version, inputs)."""
    return stable_hash("descriptions/v1", describer.config, describer.version,
                       describer.cache_key_parts(ctx))


def describe_cached(describer: "Describer", ctx: "Context",
                    prepare: Callable[[], None] | None = None) -> tuple["pd.DataFrame", bool]:
    """The describer's table for ``ctx.units`` and whether it came from the cache.

    ``prepare`` runs just before the describer actually computes (on a cache miss only)."""
    computed = []

    def compute() -> "pd.DataFrame":
        computed.append(True)
        if prepare is not None:
            prepare()
        return descriptions_frame(describer.describe(ctx))

    frame = ctx.cache.frame("descriptions", descriptions_key(describer, ctx), compute)
    return frame, not computed
