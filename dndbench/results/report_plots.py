"""The report's figures (matplotlib, returned as PNG bytes to inline).

* :func:`leaderboard_chart` — each setting's mean with its 95 % CI, one panel per metric;
* :func:`score_distributions` — per-unit scores of every setting, one panel per metric;
* :func:`metric_pairs` — per-unit scores of one metric against another, coloured by setting;
* :func:`quality_vs_cost` — each setting's mean against its seconds per unit.

Colours follow the role: methods blue, controls grey, references green.
"""
from __future__ import annotations

import io
from itertools import combinations
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

ROLE_COLOURS = {"method": "#4c72b0", "control": "#999999", "reference": "#55a868"}
#: distinct colours for settings in scatter plots
PALETTE = ["#4c72b0", "#dd8452", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c",
           "#ccb974", "#64b5cd", "#55a868"]
MAX_PANELS = 6
DPI = 80


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _horizontal() -> dict[str, Any]:
    """boxplot's keyword for horizontal boxes (``orientation`` since matplotlib 3.10)."""
    import matplotlib

    major, minor = (int(x) for x in matplotlib.__version__.split(".")[:2])
    return {"orientation": "horizontal"} if (major, minor) >= (3, 10) else {"vert": False}


def _png(fig: Any, dpi: int = DPI) -> bytes:
    """The figure as a PNG with a 64-colour palette (a third of the bytes, the same look)."""
    from PIL import Image

    plt = _pyplot()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    image = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    small = io.BytesIO()
    image.quantize(colors=64, method=Image.Quantize.MEDIANCUT).save(small, format="PNG",
                                                                     optimize=True)
    return small.getvalue()


def _role_of(frame: "pd.DataFrame") -> dict[str, str]:
    if "role" not in frame:
        return {}
    return {str(s): str(r) for s, r in frame.groupby("setting")["role"].first().items()}


def _short(text: str, n: int = 28) -> str:
    return text if len(text) <= n else text[:n - 1] + "…"


def chart_rows(rows: "pd.DataFrame") -> tuple["pd.DataFrame", str]:
    """One metric's bars: the pooled all-layers rows when there are any, else every row
    (labelled with its layer when several layers share the panel)."""
    from dndbench.results.statistics import ALL_LAYERS

    pooled = rows[rows.layer == ALL_LAYERS]
    if len(pooled):
        return pooled.assign(label=pooled.setting.astype(str)), f" ({ALL_LAYERS})"
    if rows[["model", "layer"]].drop_duplicates().shape[0] > 1:
        labels = (rows.setting.astype(str) + " · " + rows.model.astype(str) + "."
                  + rows.layer.astype(str))
        return rows.assign(label=labels), ""
    return rows.assign(label=rows.setting.astype(str)), ""


def leaderboard_chart(table: "pd.DataFrame", dpi: int = 110) -> bytes:
    """Horizontal bars of each setting's mean with its 95 % CI, one panel per metric."""
    plt = _pyplot()
    metrics = list(dict.fromkeys(table.metric))
    panels = {metric: chart_rows(table[table.metric == metric]) for metric in metrics}
    fig, axes = plt.subplots(1, len(metrics), squeeze=False, figsize=(
        4.5 * len(metrics), 0.5 + 0.45 * max(len(rows) for rows, _ in panels.values())))
    for ax, metric in zip(axes[0], metrics):
        rows, title = panels[metric]
        rows = rows.sort_values("mean")
        err = np.vstack([rows["mean"] - rows.ci_low, rows.ci_high - rows["mean"]]).clip(min=0)
        roles = rows["role"] if "role" in rows else ["method"] * len(rows)
        ax.barh([_short(str(x), 40) for x in rows["label"]], rows["mean"],
                xerr=np.nan_to_num(err), capsize=3,
                color=[ROLE_COLOURS.get(str(r), ROLE_COLOURS["method"]) for r in roles])
        ax.set_title(f"{metric}{title}", fontsize=10)
        ax.tick_params(labelsize=8)
    fig.tight_layout()
    return _png(fig, dpi)


def score_distributions(scores: "pd.DataFrame") -> bytes | None:
    """Per-unit scores of every setting (box and points), one panel per metric (all layers)."""
    metrics = list(dict.fromkeys(scores.metric))[:MAX_PANELS]
    if not metrics:
        return None
    plt = _pyplot()
    roles = _role_of(scores)
    settings = list(dict.fromkeys(scores.setting.astype(str)))
    fig, axes = plt.subplots(1, len(metrics), squeeze=False,
                             figsize=(3.6 * len(metrics), 0.9 + 0.32 * len(settings)))
    rng = np.random.default_rng(0)
    for ax, metric in zip(axes[0], metrics):
        rows = scores[scores.metric == metric]
        data = [rows[rows.setting.astype(str) == s]["value"].astype(float).dropna().to_numpy()
                for s in settings]
        ax.boxplot([d if len(d) else [np.nan] for d in data], widths=0.6, showfliers=False,
                   **_horizontal())
        for y, (setting, values) in enumerate(zip(settings, data), start=1):
            jitter = rng.uniform(-0.18, 0.18, len(values))
            ax.scatter(values, y + jitter, s=9, alpha=0.6,
                       color=ROLE_COLOURS.get(roles.get(setting, "method"), "#4c72b0"))
        ax.set_yticks(range(1, len(settings) + 1), [_short(s) for s in settings], fontsize=7)
        ax.set_title(metric, fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    return _png(fig)


def _pairs(scores: "pd.DataFrame") -> list[tuple[str, str]]:
    """Pairs of metrics to plot against each other, non-binary ones first."""
    metrics = list(dict.fromkeys(scores.metric))
    binary = {m for m in metrics
              if set(scores[scores.metric == m]["value"].dropna().unique()) <= {0.0, 1.0}}
    pairs = list(combinations(metrics, 2))
    pairs.sort(key=lambda p: (p[0] in binary) + (p[1] in binary))
    return pairs[:3]


def metric_pairs(scores: "pd.DataFrame") -> bytes | None:
    """Per-unit score of one metric against another (each point a unit and setting)."""
    pairs = _pairs(scores)
    if not pairs:
        return None
    plt = _pyplot()
    settings = list(dict.fromkeys(scores.setting.astype(str)))
    colour = {s: PALETTE[i % len(PALETTE)] for i, s in enumerate(settings)}
    wide = scores.assign(setting=scores.setting.astype(str), layer=scores.layer.astype(str)
                         ).pivot_table(index=["setting", "layer", "unit"], columns="metric",
                                       values="value", aggfunc="first")
    fig, axes = plt.subplots(1, len(pairs), squeeze=False, figsize=(3.8 * len(pairs) + 1.6, 3.4))
    for ax, (a, b) in zip(axes[0], pairs):
        both = wide[[a, b]].dropna()
        for setting in settings:
            if setting in both.index.get_level_values(0):
                part = both.xs(setting, level=0)
                ax.scatter(part[a], part[b], s=12, alpha=0.7, color=colour[setting],
                           label=_short(setting))
        ax.set_xlabel(a, fontsize=8)
        ax.set_ylabel(b, fontsize=8)
        ax.tick_params(labelsize=7)
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="center right", fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0, 1 - 1.6 / (3.8 * len(pairs) + 1.6), 1))
    return _png(fig)


def quality_vs_cost(table: "pd.DataFrame") -> bytes | None:
    """Each setting's mean (with its CI) against its seconds per unit, one panel per metric
    (pooled over layers when the table has pooled rows)."""
    if "seconds_per_unit" not in table or table["seconds_per_unit"].isna().all():
        return None
    metrics = list(dict.fromkeys(table.metric))[:MAX_PANELS]
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(metrics), squeeze=False, figsize=(3.8 * len(metrics), 3.2))
    for ax, metric in zip(axes[0], metrics):
        rows, title = chart_rows(table[table.metric == metric])
        rows = rows[rows["seconds_per_unit"].notna()]
        x = np.maximum(rows["seconds_per_unit"].astype(float).to_numpy(), 1e-4)
        y = rows["mean"].astype(float).to_numpy()
        low = np.nan_to_num(y - rows["ci_low"].astype(float).to_numpy())
        high = np.nan_to_num(rows["ci_high"].astype(float).to_numpy() - y)
        roles = rows["role"] if "role" in rows else ["method"] * len(rows)
        colours = [ROLE_COLOURS.get(str(r), "#4c72b0") for r in roles]
        ax.errorbar(x, y, yerr=np.vstack([low, high]).clip(min=0), fmt="none", ecolor="#bbbbbb")
        ax.scatter(x, y, c=colours, s=28, zorder=3)
        for xi, yi, label in zip(x, y, rows["label"]):
            ax.annotate(_short(str(label), 22), (xi, yi), fontsize=6, xytext=(3, 3),
                        textcoords="offset points")
        ax.set_xscale("log")
        ax.set_xlabel("seconds per unit (log)", fontsize=8)
        ax.set_title(f"{metric}{title}", fontsize=9)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    return _png(fig)
