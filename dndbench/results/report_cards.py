"""The report's content as plain data: leaderboard sections and per-unit cards.

Built from the tables a run directory holds (descriptions, scores, the leaderboard, the pairwise
comparisons) and the pictures of :mod:`dndbench.results.report_media`; the HTML template only
lays this out.  Everything here is plain Python (str, float, list, dict), so the template never
sees a DataFrame and every string it prints goes through jinja2's escaping.
"""
from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from dndbench.results.report_media import UnitMedia

#: per-unit figures that say whether a description matches the ground truth (✓ / ✗)
HIT_METRICS = ("planted_hit", "final_layer_top1")
GROUP = ["model", "layer", "neuron_set", "probe", "metric"]
#: leaderboard columns that are not cost figures, in display order
STAT_COLUMNS = ["mean", "ci", "n", "coverage", "chance"]
#: extras not shown in a setting's generic detail list (shown elsewhere or too long)
HIDDEN_EXTRAS = {"candidate_scores", "caption_list", "top_images", "candidates", "captions",
                 "unit", "label", "label_2", "label_3", "score", "setting", "describer", "model",
                 "layer", "probe", "neuron_set", "num_units", "role", "run"}


def number(value: Any) -> float | None:
    """A finite float, or None (NaN, None, text)."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def text(value: Any) -> str:
    """A cell as text; empty for NaN / None."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value)


# -- leaderboards --------------------------------------------------------------------------------
@dataclass
class BoardRow:
    """One setting's row of one leaderboard group."""

    rank: int
    setting: str
    role: str
    mean: float | None
    ci_low: float | None
    ci_high: float | None
    n: int
    coverage: float | None
    chance: float | None
    costs: dict[str, float | None]
    vs_best: str
    p: float | None


@dataclass
class Board:
    """One matched group's leaderboard (a metric on a layer, or pooled over layers)."""

    title: str
    where: str
    metric: str
    layer: str
    rows: list[BoardRow]
    cost_columns: list[str]
    has_chance: bool
    pairs: list[dict[str, Any]] = field(default_factory=list)


def cost_columns(table: "pd.DataFrame") -> list[str]:
    """The table's per-unit cost columns: seconds first, then the kinds some setting used."""
    cols = [c for c in table.columns if str(c).endswith("_per_unit")
            and (c == "seconds_per_unit" or (table[c].fillna(0).astype(float) > 0).any())]
    return sorted(cols, key=lambda c: (c != "seconds_per_unit", cols.index(c)))


def cost_header(column: str) -> tuple[str, str]:
    """A cost column's short header and its explanation (per unit)."""
    from dndbench.costs import KINDS

    kind = column.removesuffix("_per_unit")
    if kind == "seconds":
        return "s", "describer seconds per unit (the shared probe pass excluded)"
    what = KINDS[kind][1] if kind in KINDS else kind.replace("_", " ")
    return kind.replace("_", " ").replace("llm", "LLM"), f"{what}, per unit"


def boards(table: "pd.DataFrame", pairs: "pd.DataFrame | None") -> list[Board]:
    """The leaderboard groups in table order, each with its pairwise comparisons."""
    from dndbench.results.statistics import ALL_LAYERS, tied_ranks

    costs = cost_columns(table)
    out = []
    for _, group in table.groupby(GROUP, sort=False, dropna=False):
        first = group.iloc[0]
        layer = str(first["layer"])
        where = (f"{first['model']}, all layers pooled" if layer == ALL_LAYERS
                 else f"{first['model']}.{layer}")
        rows = []
        for rank, r in zip(tied_ranks(group["mean"]), group.to_dict("records")):
            rows.append(BoardRow(
                rank=rank, setting=str(r["setting"]), role=text(r.get("role")) or "method",
                mean=number(r["mean"]), ci_low=number(r["ci_low"]), ci_high=number(r["ci_high"]),
                n=int(r["n"]), coverage=number(r["coverage"]), chance=number(r.get("chance")),
                costs={c: number(r.get(c)) for c in costs}, vs_best=text(r["vs_best"]),
                p=number(r["p_vs_best"])))
        board = Board(title=f"{first['metric']} — {where} (probe {first['probe']})",
                      where=f"{where} (probe {first['probe']})",
                      metric=str(first["metric"]), layer=layer, rows=rows, cost_columns=costs,
                      has_chance="chance" in group and group["chance"].notna().any())
        if pairs is not None and len(pairs):
            mask = True
            for col in GROUP:
                mask = mask & (pairs[col].astype(str) == str(first[col]))
            board.pairs = [{"a": str(p["setting_a"]), "b": str(p["setting_b"]), "n": int(p["n"]),
                            "diff": number(p["mean_diff"]), "p": number(p["p"]),
                            "p_holm": number(p["p_holm"])}
                           for p in pairs[mask].to_dict("records")]
        out.append(board)
    return out


@dataclass
class Overview:
    """Every metric of one place (a layer, or all layers pooled) side by side: one row per
    setting, one cell per metric (its leaderboard row), and the setting's costs."""

    where: str
    metrics: list[str]
    chance: dict[str, float | None]
    rows: list[dict[str, Any]]
    cost_columns: list[str]


def overviews(board_list: list[Board]) -> list[Overview]:
    """The boards regrouped by place; settings in the first metric's order, then any others."""
    places: dict[str, list[Board]] = {}
    for board in board_list:
        places.setdefault(board.where, []).append(board)
    out = []
    for where, group in places.items():
        order = list(dict.fromkeys(r.setting for b in group for r in b.rows))
        cells = {b.metric: {r.setting: r for r in b.rows} for b in group}
        rows = []
        for setting in order:
            mine = [cells[b.metric][setting] for b in group if setting in cells[b.metric]]
            rows.append({"setting": setting, "role": mine[0].role,
                         "cells": {b.metric: cells[b.metric].get(setting) for b in group},
                         "costs": mine[0].costs})
        chance = {}
        for b in group:
            values = [r.chance for r in b.rows if r.chance is not None]
            chance[b.metric] = values[0] if values else None
        out.append(Overview(where=where, metrics=[b.metric for b in group], chance=chance,
                            rows=rows, cost_columns=group[0].cost_columns))
    return out


@dataclass
class Agreement:
    """Kendall's τ between every two metrics at one place, as a matrix."""

    where: str
    metrics: list[str]
    tau: dict[tuple[str, str], tuple[float | None, float | None, int]]


def agreement_matrices(agreement: "pd.DataFrame") -> list[Agreement]:
    """One τ matrix per (model.layer, probe) of the agreement table."""
    out: dict[str, Agreement] = {}
    for r in agreement.to_dict("records"):
        from dndbench.results.statistics import ALL_LAYERS

        place = (f"{r['model']}, all layers pooled" if str(r["layer"]) == ALL_LAYERS
                 else f"{r['model']}.{r['layer']}")
        where = f"{place} (probe {r['probe']})"
        item = out.setdefault(where, Agreement(where, [], {}))
        for m in (text(r["metric_a"]), text(r["metric_b"])):
            if m not in item.metrics:
                item.metrics.append(m)
        cell = (number(r["tau"]), number(r["p"]), int(r["n_settings"]))
        item.tau[(text(r["metric_a"]), text(r["metric_b"]))] = cell
        item.tau[(text(r["metric_b"]), text(r["metric_a"]))] = cell
    return list(out.values())


def agreement_rows(agreement: "pd.DataFrame") -> list[dict[str, Any]]:
    """Kendall's τ rows as plain dicts."""
    return [{"where": f"{r['model']}.{r['layer']}", "probe": text(r["probe"]),
             "a": text(r["metric_a"]), "b": text(r["metric_b"]), "n": int(r["n_settings"]),
             "tau": number(r["tau"]), "p": number(r["p"])} for r in agreement.to_dict("records")]


# -- cards ---------------------------------------------------------------------------------------
@dataclass
class Candidate:
    """A DnD candidate concept with its step-3 score and a strip of its generated images."""

    concept: str
    score: float | None
    images: str = ""
    chosen: bool = False


@dataclass
class SettingRow:
    """What one setting says about one unit."""

    setting: str
    describer: str
    role: str
    labels: list[str]
    own_score: float | None
    scores: dict[str, float | None]
    hit: bool | None
    captions: list[str] = field(default_factory=list)
    candidates: list[Candidate] = field(default_factory=list)
    mask: str = ""
    details: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Card:
    """One unit: its pictures, its ground truth and every setting's row."""

    key: str
    model: str
    layer: str
    unit: int
    truth: str
    rows: list[SettingRow]
    media: "UnitMedia | None"
    disagreement: float
    failures: list[str]

    @property
    def where(self) -> str:
        return f"{self.model}.{self.layer}"

    def scores_json(self) -> str:
        return json.dumps({r.setting: {m: v for m, v in r.scores.items() if v is not None}
                           for r in self.rows})

    def failures_json(self) -> str:
        return json.dumps(self.failures)

    def search_text(self) -> str:
        words = [self.truth] + [w for r in self.rows for w in r.labels + [r.setting]]
        return " ".join(words).lower()


def _json(value: Any) -> Any:
    if not isinstance(value, str) or not value:
        return None
    try:
        return json.loads(value)
    except ValueError:
        return None


def _captions(row: dict[str, Any]) -> list[str]:
    listed = _json(row.get("caption_list"))
    if isinstance(listed, list):
        return [str(c) for c in listed]
    joined = text(row.get("captions"))
    return [c for c in joined.split(" | ") if c] if joined else []


def _candidates(row: dict[str, Any], images: dict[str, str]) -> list[Candidate]:
    ranked = _json(row.get("candidate_scores"))
    label = text(row.get("label"))
    if isinstance(ranked, list):
        return [Candidate(str(c), number(s), images.get(str(c), ""), str(c) == label)
                for c, s in ranked]
    joined = text(row.get("candidates"))
    return [Candidate(c, None, images.get(c, ""), c == label) for c in joined.split(" | ") if c]


def _details(row: dict[str, Any]) -> list[tuple[str, str]]:
    out = []
    for key, value in row.items():
        if key in HIDDEN_EXTRAS or text(value) == "":
            continue
        num = number(value)
        shown = (f"{num:.4g}" if num is not None and not isinstance(value, bool) else text(value))
        out.append((str(key), shown[:200]))
    return out


def setting_row(row: dict[str, Any], scores: dict[str, float | None],
                media: "UnitMedia | None") -> SettingRow:
    """One descriptions row (with its extras) and its per-unit scores as a card row."""
    describer = text(row.get("describer"))
    setting = text(row.get("setting"))
    labels = [text(row.get(c)) for c in ("label", "label_2", "label_3")]
    hits = [v for v in (scores.get(m) for m in HIT_METRICS) if v is not None]
    out = SettingRow(setting=setting, describer=describer, role=text(row.get("role")) or "method",
                     labels=[x for x in labels if x], own_score=number(row.get("score")),
                     scores=scores, hit=(bool(hits[0] >= 0.5) if hits else None))
    if describer in ("dnd", "caption_word"):
        out.captions = _captions(row)
    if describer == "dnd":
        generated = media.generated.get(setting, {}) if media is not None else {}
        out.candidates = _candidates(row, generated)
    if describer == "netdissect" and media is not None:
        out.mask = media.masks.get(setting, "")
    out.details = _details(row)
    return out


def disagreement(rows: list[SettingRow]) -> float:
    """1 − the share of methods that give the most common label 1 (0: they all agree)."""
    labels = [r.labels[0].strip().lower() for r in rows if r.role == "method" and r.labels]
    if len(labels) < 2:
        return 0.0
    return 1.0 - Counter(labels).most_common(1)[0][1] / len(labels)


def cards(descriptions: "pd.DataFrame", scores: "pd.DataFrame",
          media: dict[tuple[str, str, int], "UnitMedia"]) -> list[Card]:
    """One card per (model, layer, unit) of the descriptions, in layer then unit order."""
    per_unit: dict[tuple[str, str, str, int], dict[str, float | None]] = {}
    if len(scores):
        for r in scores[["setting", "model", "layer", "unit", "metric", "value"]].itertuples(
                index=False):
            per_unit.setdefault((str(r.setting), str(r.model), str(r.layer), int(r.unit)), {})[
                str(r.metric)] = number(r.value)
    layer_order = {k: i for i, k in enumerate(dict.fromkeys(
        zip(descriptions.model.astype(str), descriptions.layer.astype(str))))}
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for row in descriptions.to_dict("records"):
        key = (str(row["model"]), str(row["layer"]), int(row["unit"]))
        groups.setdefault(key, []).append(row)
    for model, layer, unit in media:  # units nobody described still get a card
        groups.setdefault((model, layer, unit), [])
        layer_order.setdefault((model, layer), len(layer_order))
    out = []
    for (model, layer, unit) in sorted(groups, key=lambda k: (layer_order[k[:2]], k[2])):
        unit_media = media.get((model, layer, unit))
        rows = [setting_row(r, per_unit.get((text(r["setting"]), model, layer, unit), {}),
                            unit_media) for r in groups[(model, layer, unit)]]
        truth = unit_media.truth if unit_media is not None else ""
        truth = truth or next((r.labels[0] for r in rows if r.describer == "oracle" and r.labels),
                              "")
        out.append(Card(key=f"{model}|{layer}|{unit}", model=model, layer=layer, unit=unit,
                        truth=truth, rows=rows,
                        media=unit_media, disagreement=disagreement(rows),
                        failures=[r.setting for r in rows
                                  if r.hit is False and r.role == "method"]))
    return out
