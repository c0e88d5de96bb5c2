"""Running a describer through the run cache: its table for ``ctx.units``, computed once.

The pipeline and describers that build on another describer's output (the ``shuffled`` control)
share this, so a method described once in a run (or an earlier run) is never described again.

Two guarantees live here:

* **Progress survives a kill.**  A describer that offers ``describe_units(ctx, units)`` (and
  optionally ``chunk_units()``, the units per chunk; 0 means all) is run chunk by chunk and each
  chunk's table is cached on its own (``descriptions_chunks``), so a killed run restarts where it
  stopped: the chunks already stored are read back, not recomputed.
* **A backend failure is never a score.**  When a chunk fails with a
  :class:`~dndbench.errors.BackendError`, its units are retried one at a time; a unit whose own
  call still fails is left out (missing, with the reason in ``failures``), never described by a
  fallback.  A table with failed units is not stored under the full key, so a rerun retries
  exactly those units.  A describer without ``describe_units`` lets the error end the job.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Sequence

from dndbench.cache import stable_hash
from dndbench.errors import BackendError

if TYPE_CHECKING:
    import pandas as pd

    from dndbench.context import Context
    from dndbench.describers.base import Describer, Description

#: columns every descriptions table starts with
COLUMNS = ["unit", "label", "label_2", "label_3", "score"]
#: units per cached chunk of a describer with ``describe_units`` but no ``chunk_units``
DEFAULT_CHUNK_UNITS = 64


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


def chunk_size(describer: "Describer", units: int) -> int:
    """Units per cached chunk: the describer's ``chunk_units()`` (0: all of them)."""
    size = getattr(describer, "chunk_units", None)
    n = int(size()) if callable(size) else DEFAULT_CHUNK_UNITS
    return n if n > 0 else max(1, units)


def one_line_error(exc: BaseException, limit: int = 300) -> str:
    """An exception as one short line (the reason recorded for a missing unit)."""
    return " ".join(str(exc).split())[:limit] or type(exc).__name__


class _Incomplete(Exception):
    """Raised inside the cache's compute so a table with failed units is not stored."""

    def __init__(self, frame: "pd.DataFrame") -> None:
        super().__init__("incomplete descriptions")
        self.frame = frame


def _chunk_frame(describer: "Describer", ctx: "Context", full_key: str,
                 units: Sequence[int]) -> "pd.DataFrame":
    """One chunk's table, from the cache when stored; counts ``describe/chunks_computed`` or
    ``describe/chunks_cached``."""
    computed = []

    def compute() -> "pd.DataFrame":
        computed.append(True)
        return descriptions_frame(describer.describe_units(ctx, list(units)))  # type: ignore[attr-defined]

    key = stable_hash("descriptions-chunk/v1", full_key, [int(u) for u in units])
    frame = ctx.cache.frame("descriptions_chunks", key, compute)
    ctx.count("describe/chunks_computed" if computed else "describe/chunks_cached")
    return frame


def _describe_chunked(describer: "Describer", ctx: "Context", full_key: str,
                      failures: dict[int, str]) -> "pd.DataFrame":
    import pandas as pd

    units = list(ctx.units)
    step = chunk_size(describer, len(units))
    frames = []
    for start in range(0, len(units), step):
        chunk = units[start:start + step]
        try:
            frames.append(_chunk_frame(describer, ctx, full_key, chunk))
            continue
        except BackendError as exc:
            if len(chunk) == 1:
                failures[int(chunk[0])] = one_line_error(exc)
                continue
        for unit in chunk:  # find the units whose own calls fail
            try:
                frames.append(_chunk_frame(describer, ctx, full_key, [unit]))
            except BackendError as exc:
                failures[int(unit)] = one_line_error(exc)
    frames = [f for f in frames if len(f)]
    if not frames:
        return descriptions_frame([])
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


def describe_cached(describer: "Describer", ctx: "Context",
                    prepare: Callable[[], None] | None = None,
                    failures: dict[int, str] | None = None) -> tuple["pd.DataFrame", bool]:
    """The describer's table for ``ctx.units`` and whether it came from the cache.

    ``prepare`` runs just before the describer actually computes (on a cache miss only).
    ``failures`` (if given) receives ``unit -> reason`` for units left out because a backend
    call failed (see the module docstring)."""
    computed = []
    lost: dict[int, str] = {}
    key = descriptions_key(describer, ctx)

    def compute() -> "pd.DataFrame":
        computed.append(True)
        if prepare is not None:
            prepare()
        if callable(getattr(describer, "describe_units", None)):
            frame = _describe_chunked(describer, ctx, key, lost)
        else:
            frame = descriptions_frame(describer.describe(ctx))
        if lost:
            raise _Incomplete(frame)
        return frame

    try:
        frame = ctx.cache.frame("descriptions", key, compute)
    except _Incomplete as incomplete:
        frame = incomplete.frame
    if failures is not None:
        failures.update(lost)
    return frame, not computed
