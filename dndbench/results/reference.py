"""Published figures shown beside a run's own: the ``reference_figures:`` block of a preset.

A preset (``dndbench/conf/experiment/*.yaml``) that reproduces a paper's table carries that
table's numbers::

    reference_figures:
      source: "Bai et al. (TMLR 2025), MILANNOTATIONS comparison on ResNet-152"
      metric: milannotations_similarity   # our figure that is comparable ("" when none is)
      measure: "CLIP ViT-B/16 text cosine with the three annotations, mean over kept units"
      rows:                                # published setting -> layer -> value
        DnD: {layer1: 0.7454, all layers: 0.7766}

After the leaderboard the run prints :func:`render`: one row per published setting and one per
setting of this run (its leaderboard means for ``metric``), one column per layer.  The block
travels with the run's config (``run.json``), so the figures stay next to the results they
were compared with.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dndbench.errors import ConfigError

if TYPE_CHECKING:
    import pandas as pd

#: the column of figures pooled over every layer (the leaderboard's label for it)
ALL_LAYERS = "all layers"


@dataclass
class ReferenceFigures:
    """A paper's numbers for the setup a preset runs (see the module docstring)."""

    #: the paper and the table or figure the numbers come from
    source: str = ""
    #: the metric figure of ours they are comparable with ("" when none of ours is)
    metric: str = ""
    #: what the published numbers measure, in words
    measure: str = ""
    #: caveats (different units, unverified values, ...)
    note: str = ""
    #: published setting -> {layer (or "all layers"): value}
    rows: dict[str, Any] = field(default_factory=dict)


def published_rows(ref: ReferenceFigures) -> dict[str, dict[str, float]]:
    """``rows`` as floats, checked: a ConfigError names the first value that is not a number."""
    out: dict[str, dict[str, float]] = {}
    for setting, values in dict(ref.rows).items():
        if not hasattr(values, "items"):
            raise ConfigError(f"reference_figures.rows.{setting} must map layers to numbers, "
                              f"got {values!r}")
        row: dict[str, float] = {}
        for layer, value in dict(values).items():
            try:
                row[str(layer)] = float(value)
            except (TypeError, ValueError):
                raise ConfigError(f"reference_figures.rows.{setting}.{layer} must be a number, "
                                  f"got {value!r}") from None
        out[str(setting)] = row
    return out


def our_rows(table: "pd.DataFrame | None", metric: str) -> dict[str, dict[str, float]]:
    """This run's leaderboard means for ``metric``, by setting and layer."""
    out: dict[str, dict[str, float]] = {}
    if table is None or not metric or not len(table):
        return out
    rows = table[table["metric"] == metric]
    for record in rows.to_dict("records"):
        out.setdefault(str(record["setting"]), {})[str(record["layer"])] = float(record["mean"])
    return out


def _columns(*row_sets: dict[str, dict[str, float]]) -> list[str]:
    """Layers in first-seen order, ``all layers`` last."""
    seen = dict.fromkeys(layer for rows in row_sets for values in rows.values() for layer in values)
    layers = [layer for layer in seen if layer != ALL_LAYERS]
    return layers + ([ALL_LAYERS] if ALL_LAYERS in seen else [])


def _cell(value: float | None) -> str:
    return "—" if value is None or math.isnan(value) else f"{value:.4f}"


def render(ref: ReferenceFigures, table: "pd.DataFrame | None") -> str:
    """Markdown: the published rows, then this run's rows for ``ref.metric``."""
    published = published_rows(ref)
    ours = our_rows(table, ref.metric)
    layers = _columns(published, ours) or [ALL_LAYERS]
    lines = [f"Published figures: {ref.source or 'reference'}"]
    if ref.measure:
        lines.append(f"  published: {ref.measure}")
    lines.append(f"  ours: {ref.metric}" if ref.metric else
                 "  ours: no metric of this run measures the same thing; shown for context only")
    if ref.note:
        lines.append(f"  note: {ref.note}")
    lines += ["", "| setting | " + " | ".join(layers) + " |",
              "|---|" + "---|" * len(layers)]
    from dndbench.results.leaderboard import md_cell

    for label, rows in (("published", published), ("this run", ours)):
        for setting, values in rows.items():
            cells = " | ".join(_cell(values.get(layer)) for layer in layers)
            lines.append(f"| {md_cell(setting)} ({label}) | {cells} |")
    if not ours and ref.metric:
        lines.append(f"(this run has no {ref.metric} figures)")
    return "\n".join(lines)
