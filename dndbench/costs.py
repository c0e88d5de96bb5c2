"""What describing costs: model calls of each kind, read off a context before and after a step.

A :func:`snapshot` records, for a context, each backend's ``computed`` count (inputs the model
actually ran on, i.e. call-cache misses), the tokens of LLM backends that report them (a
``tokens`` attribute), and the images pushed through the target network.  The difference of two
snapshots is a step's cost; :func:`cost_row` turns one describer's cost on one layer into a row
of ``costs.csv``.  Work served from a cache costs nothing, so a warm rerun shows (near) zero.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dndbench.context import Context

#: cost kinds, in column order: kind -> (backend kind it is read from, what is counted)
KINDS: dict[str, tuple[str, str]] = {
    "captions": ("captioner", "captioned images"),
    "llm_calls": ("llm", "LLM conversations answered"),
    "llm_tokens": ("llm", "LLM tokens, where the backend reports them"),
    "generated_images": ("text2image", "images generated"),
    "forward_images": ("activations", "images pushed through the target network"),
    "vlm_inputs": ("vlm", "images and texts encoded by the VLM"),
    "embedded_texts": ("embedder", "texts embedded"),
}
#: the columns of ``costs.csv``
COLUMNS = ["setting", "describer", "layer", "units", "seconds", "seconds_per_unit",
           *(f"{kind}_per_unit" for kind in KINDS)]


def snapshot(ctx: "Context") -> dict[str, float]:
    """Running totals of every cost kind for ``ctx`` (a missing total is NaN: unknown)."""
    backends = ctx.backends_in_use()
    out: dict[str, float] = {}
    for kind, (source, _) in KINDS.items():
        if kind == "llm_tokens":
            backend = backends.get("llm")
            tokens = getattr(backend, "tokens", None) if backend is not None else 0
            out[kind] = float(tokens) if isinstance(tokens, (int, float)) else math.nan
        elif source == "activations":
            acts = ctx.__dict__.get("activations")  # only if the context created them
            out[kind] = float(acts.images_forwarded) if acts is not None else 0.0
        else:
            backend = backends.get(source)
            out[kind] = float(getattr(backend, "computed", 0)) if backend is not None else 0.0
    return out


def difference(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    """``after - before`` per kind.  Tokens the LLM backend does not report are NaN (unknown),
    unless the step made no LLM call at all (then 0)."""
    out = {}
    for kind in KINDS:
        a, b = after.get(kind, 0.0), before.get(kind, 0.0)
        if math.isnan(a):
            out[kind] = 0.0 if kind == "llm_tokens" and after.get("llm_calls", 0.0) == before.get(
                "llm_calls", 0.0) else math.nan
        else:
            out[kind] = a - (0.0 if math.isnan(b) else b)
    return out


def subtract(total: dict[str, float], part: dict[str, float]) -> dict[str, float]:
    """``total - part`` per kind (NaN stays NaN)."""
    return {kind: total.get(kind, 0.0) - part.get(kind, 0.0) for kind in KINDS}


def cost_row(setting: str, describer: str, layer: str, units: int, seconds: float,
             cost: dict[str, float]) -> dict[str, Any]:
    """One row of ``costs.csv``: totals divided by the number of units."""
    per = max(1, units)
    row: dict[str, Any] = {"setting": setting, "describer": describer, "layer": layer,
                           "units": int(units), "seconds": round(seconds, 4),
                           "seconds_per_unit": round(seconds / per, 6)}
    for kind in KINDS:
        value = cost.get(kind, 0.0)
        row[f"{kind}_per_unit"] = value / per if not math.isnan(value) else math.nan
    return row
