"""Pictures of a run: a leaderboard chart and an HTML page of per-neuron cards.

``report.html`` shows, for each described unit, its top-activating probe images side by side with
every method's label (and the unit's ground truth when the model knows it), which is what a
researcher looks at to judge a description.  Images are embedded, so the page is one file.
"""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dndbench.cache import atomic_path

if TYPE_CHECKING:
    import pandas as pd

    from dndbench.context import Context

TOP_IMAGES = 8
MAX_CARDS = 200


def leaderboard_chart(table: "pd.DataFrame", path: Path) -> Path:
    """Horizontal bars of each setting's mean with its 95 % CI, one panel per metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = list(dict.fromkeys(table.metric))
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.5 * len(metrics), 0.5 + 0.45 * table.setting.nunique()),
                             squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        rows = table[table.metric == metric].sort_values("mean")
        err = np.vstack([rows["mean"] - rows.ci_low, rows.ci_high - rows["mean"]]).clip(min=0)
        ax.barh(rows.setting, rows["mean"], xerr=np.nan_to_num(err), color="#4c72b0", capsize=3)
        ax.set_title(metric, fontsize=10)
        ax.tick_params(labelsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


def _montage(ctx: "Context", image_ids: list[int], size: int = 96) -> str:
    """The given probe images side by side, as a base64 PNG."""
    from PIL import Image

    strip = Image.new("RGB", (size * len(image_ids), size), "white")
    for i, index in enumerate(image_ids):
        strip.paste(ctx.probe.image(int(index)).convert("RGB").resize((size, size)), (i * size, 0))
    buffer = io.BytesIO()
    strip.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def neuron_cards(ctx: "Context", descriptions: "pd.DataFrame", path: Path,
                 chart: Path | None = None) -> Path:
    """Write ``report.html``: one card per unit with top images and every method's label."""
    pooled = ctx.activations.pooled(ctx.layer).mean
    planted = ctx.model.planted_concepts(ctx.layer)
    classes = ctx.model.class_names() if ctx.is_final_layer else None
    parts = ["<!doctype html><meta charset='utf-8'><title>dndbench report</title>",
             "<style>body{font-family:sans-serif;margin:2em}.card{border:1px solid #ccc;"
             "border-radius:6px;padding:.6em;margin:.6em 0}td{padding:0 .8em}</style>",
             f"<h1>{html.escape(ctx.model.config.name)}.{html.escape(ctx.layer)}</h1>"]
    if chart is not None:
        parts.append(f"<img src='{chart.name}' alt='leaderboard chart'>")
    for unit in ctx.units[:MAX_CARDS]:
        top = np.argsort(-pooled[:, unit], kind="stable")[:TOP_IMAGES].tolist()
        rows = descriptions[descriptions.unit == unit]
        truth = planted.get(unit) or (classes[unit] if classes and unit < len(classes) else None)
        cells = "".join(f"<tr><td>{html.escape(str(r.setting))}</td>"
                        f"<td><b>{html.escape(str(r.label))}</b></td></tr>"
                        for r in rows.itertuples())
        truth_html = f" — ground truth: <i>{html.escape(truth)}</i>" if truth else ""
        parts.append(f"<div class='card'><h3>unit {unit}{truth_html}</h3>"
                     f"<img src='data:image/png;base64,{_montage(ctx, top)}'>"
                     f"<table>{cells}</table></div>")
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(parts))
    return path
