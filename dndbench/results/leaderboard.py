"""Leaderboards: merge any number of run directories into one table.

Rows are grouped by the matched key (model, layer, neuron set, probe, metric); within a group
each describer setting gets its mean over units with a 95 % bootstrap confidence interval,
``n`` (units scored) and ``coverage`` (n / units in the neuron set).  When a model's scores span
several layers, each (model, probe, metric) also gets a pooled ``all layers`` group in which every
unit of every layer counts once.

Every pair of settings in a group is compared on the units both scored (Wilcoxon signed-rank,
Holm-adjusted over the group's pairs; see :mod:`dndbench.results.statistics`).  ``vs_best`` says
how each setting stands against the group's best method: ``best``, ``<`` (significantly below),
``>`` (significantly above: only a control or reference can be) or ``=`` (not distinguishable);
``p_vs_best`` is the adjusted p-value.  Optional columns of the scores table are carried along:
``role`` (``method`` / ``control`` / ``reference``; only methods can be best) and ``chance`` (a
metric's chance level, averaged over the units scored).  A run directory's ``costs.csv`` adds its
per-unit cost columns (``seconds_per_unit``, ``<kind>_per_unit``) by (setting, layer).

**Shards.**  Runs of one neuron set split across jobs (``neurons.shard=i/n``) carry the whole
set's key and size and a ``shard`` column, so their rows fall into the whole set's group and
``coverage`` is over the whole set; a ``shards`` column (``2 of 2``, or ``1 of 2, missing 1``)
says which parts were found, and the command warns when one is missing.  Shards that overlap
(the same unit twice) or were cut into different numbers of parts are a DataError; so is a
shard beside an unsharded run of the same setting.  Their costs are summed over the shards.
Each setting's values are taken in unit order, so the intervals do not depend on the order in
which runs were read (docs/cluster.md).

Outputs beside ``PREFIX.md`` / ``PREFIX.csv``: the long table of every pair (``pairs.csv``) and
Kendall's τ between metrics' rankings (``metric_agreement.csv``); with a prefix other than
``leaderboard`` these are ``PREFIX_pairs.csv`` and ``PREFIX_metric_agreement.csv``.

    python -m dndbench leaderboard outputs/ multirun/2026-11-25/ --out leaderboard --html
"""
from __future__ import annotations

import argparse
import html
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

import numpy as np

from dndbench.errors import DataError
from dndbench.results.statistics import (
    ALL_LAYERS,
    ALPHA,
    N_BOOT,
    bootstrap_ci,
    kendall_agreement,
    paired_comparisons,
    pool_kinds,
    pool_layers,
    tied_ranks,
)

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["ALL_LAYERS", "GROUP", "N_BOOT", "bootstrap_ci", "find_score_tables", "leaderboard",
           "load_costs", "load_scores", "main", "md_cell", "metric_agreement", "pairs_table",
           "to_markdown", "write_leaderboard"]

GROUP = ["model", "layer", "neuron_set", "probe", "metric"]
#: the scores' column naming a shard's part of the neuron set (``i/n``; empty: the whole set)
SHARD = "shard"
#: the ``role`` of a setting when the scores table says nothing
METHOD = "method"
AGREEMENT_BY = ["model", "layer", "neuron_set", "probe"]


@dataclass(frozen=True, eq=False)
class _Pairs:
    """The pairwise table, carried in ``table.attrs`` (shared, not copied, by pandas)."""

    frame: "pd.DataFrame"

    def __deepcopy__(self, memo: dict[int, Any]) -> "_Pairs":
        return self


def find_tables(paths: Iterable[Path], name: str, required: bool = True) -> list[Path]:
    """Every file called ``name`` at or below the given paths (a run dir, a sweep dir, a tree)."""
    found: list[Path] = []
    for path in paths:
        path = Path(path)
        if path.is_file():
            sibling = path if path.name == name else path.parent / name
            found += [sibling] if sibling.is_file() else []
        elif path.is_dir():
            found += sorted(path.rglob(name))
        elif required:
            raise DataError(f"{path} is neither a run directory nor a {name} file")
    return found


def find_score_tables(paths: Iterable[Path]) -> list[Path]:
    """Every ``scores.csv`` at or below the given paths (a run dir, a sweep dir, a tree)."""
    return find_tables(paths, "scores.csv")


def load_scores(paths: Iterable[Path]) -> "pd.DataFrame":
    """Concatenate the score tables of many runs.

    A run's table found twice (overlapping paths) is read once; two different runs with the
    same setting label for the same matched group and units are a DataError naming both run
    directories, since keeping either would silently drop the other (give one a distinct
    ``describer.label_as=...``)."""
    import pandas as pd

    tables = list(dict.fromkeys(p.resolve() for p in find_score_tables(paths)))
    tables = [p for p in tables if _complete(p.parent)]
    if not tables:
        raise DataError("no scores.csv found under the given paths; pass run directories "
                        "written by `python -m dndbench`")
    frames = [pd.read_csv(p).assign(run=str(p.parent)) for p in tables]
    frames = [f for f in frames if len(f)]
    if not frames:
        raise DataError("the score tables found are all empty")
    scores = pd.concat(frames, ignore_index=True)
    check_shards(scores)
    check_one_run_per_label(scores)
    return scores


def _complete(run_dir: Path) -> bool:
    """False (with a warning) for a run directory whose job was killed while writing it (it
    still has the ``INCOMPLETE`` marker, see :func:`dndbench.cli.mark_incomplete`)."""
    if (run_dir / "INCOMPLETE").exists():
        import logging

        logging.getLogger("dndbench").warning(
            "skipping %s: the run did not finish writing its results (INCOMPLETE marker); "
            "rerun it", run_dir)
        return False
    return True


def check_one_run_per_label(scores: "pd.DataFrame") -> None:
    """Raise a DataError when two runs give one setting label to the same (group, unit)."""
    key = GROUP + ["setting", "unit"]
    rows = scores.drop_duplicates(key + ["run"])
    ident = rows[key].astype(str).agg("\x1f".join, axis=1)
    counts = rows.groupby(ident)["run"].nunique()
    clashes = counts[counts > 1]
    if not len(clashes):
        return
    mine = rows[ident == clashes.index[0]]
    where = mine.iloc[0]
    both = sorted(mine["run"].unique())
    if SHARD in mine and mine[SHARD].notna().any():
        parts = {str(r): _shard_text(mine[mine["run"] == r][SHARD].iloc[0]) for r in both}
        raise DataError(f"setting {where['setting']!r} has unit {where['unit']} of "
                        f"{where['model']}.{where['layer']} ({where['metric']}) twice: in "
                        f"{parts[both[0]]} ({both[0]}) and in {parts[both[1]]} ({both[1]}); "
                        f"the shards of one neuron set must not overlap, so pass each shard's "
                        f"run once (and no unsharded run of the same setting)")
    raise DataError(f"setting {where['setting']!r} has scores from two runs for "
                    f"{where['model']}.{where['layer']} ({where['metric']}, neuron set "
                    f"{str(where['neuron_set'])[:8]}): {both[0]} and {both[1]}; pass only one "
                    f"of them, or rerun one with describer.label_as=NAME to keep both")


def _shard_text(value: Any) -> str:
    return "the whole set" if _missing(value) else f"shard {value}"


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value)) or str(value) == ""


def _shard_parts(values: Iterable[Any]) -> tuple[set[int], set[int]]:
    """``(indices, counts)`` of the ``i/n`` shard values given (empty values skipped)."""
    indices, counts = set(), set()
    for value in values:
        if _missing(value):
            continue
        index, _, count = str(value).partition("/")
        try:
            indices.add(int(index))
            counts.add(int(count))
        except ValueError:
            raise DataError(f"shard {value!r} in a scores table is not of the form i/n; was "
                            f"the table edited by hand?") from None
    return indices, counts


def check_shards(scores: "pd.DataFrame") -> None:
    """Raise a DataError when the shards of one setting's neuron set were cut into different
    numbers of parts (``neurons.shard=0/2`` beside ``neurons.shard=1/3``)."""
    if SHARD not in scores or not scores[SHARD].notna().any():
        return
    sharded = scores[scores[SHARD].notna()]
    for key, rows in sharded.groupby(GROUP + ["setting"], sort=True, dropna=False):
        _, counts = _shard_parts(rows[SHARD].unique())
        if len(counts) > 1:
            where = dict(zip(GROUP + ["setting"], key))
            runs = sorted(rows["run"].unique())
            raise DataError(f"setting {where['setting']!r} on {where['model']}.{where['layer']} "
                            f"has shards of a split into {' and '.join(map(str, sorted(counts)))} "
                            f"parts ({', '.join(runs)}); merge the shards of one split "
                            f"(neurons.shard=i/n with the same n)")


def shard_status(rows: "pd.DataFrame") -> str:
    """``"2 of 2"`` when every shard of a setting's rows is present, ``"1 of 2, missing 1"``
    when some are not (shard 1/2 here), ``""`` for rows of an unsharded run."""
    if SHARD not in rows or not rows[SHARD].notna().any():
        return ""
    indices, counts = _shard_parts(rows[SHARD].unique())
    count = max(counts)
    missing = sorted(set(range(count)) - indices)
    text = f"{len(indices)} of {count}"
    return f"{text}, missing {', '.join(map(str, missing))}" if missing else text


def incomplete_shards(table: "pd.DataFrame") -> list[str]:
    """One line per leaderboard row whose setting lacks shards of its neuron set."""
    if "shards" not in table:
        return []
    rows = table[table["shards"].astype(str).str.contains("missing", na=False)]
    return [f"{row['setting']} on {row['model']}.{row['layer']} ({row['metric']}): shards "
            f"{row['shards']}; coverage {row['coverage']:.0%} of the neuron set"
            for row in rows.to_dict("records")]


def _merge_shard_costs(rows: "pd.DataFrame") -> dict[str, Any]:
    """One cost row for the shards of one (setting, layer): totals summed, per-unit figures
    weighted by each shard's units."""
    units = rows["units"].astype(float)
    total = max(float(units.sum()), 1.0)
    out: dict[str, Any] = {c: rows[c].iloc[0] for c in rows.columns
                           if not str(c).endswith("_per_unit")}
    out.update(units=int(units.sum()), seconds=float(rows["seconds"].astype(float).sum()))
    for column in [c for c in rows.columns if str(c).endswith("_per_unit")]:
        values = rows[column].astype(float)
        out[column] = (float((values * units).sum()) / total if values.notna().all()
                       else float("nan"))
    return out


def load_costs(paths: Iterable[Path]) -> "pd.DataFrame | None":
    """The ``costs.csv`` tables at or below the given paths, concatenated; None if there are none.

    Later runs win for the same (setting, layer); the rows of different shards of one
    (setting, layer) are combined (:func:`_merge_shard_costs`).
    """
    import pandas as pd

    frames = []
    for path in find_tables(paths, "costs.csv", required=False):
        frame = pd.read_csv(path)
        missing = {"setting", "layer"} - set(frame.columns)
        if missing:
            raise DataError(f"{path} lacks the column(s) {', '.join(sorted(missing))}; "
                            "a costs table needs setting, layer and <kind>_per_unit columns")
        frames.append(frame)
    frames = [f for f in frames if len(f)]
    if not frames:
        return None
    costs = pd.concat(frames, ignore_index=True)
    if SHARD in costs:
        costs = costs.drop_duplicates(subset=["setting", "layer", SHARD], keep="last")
        merged = [_merge_shard_costs(rows) for _, rows in costs[costs[SHARD].notna()]
                  .groupby(["setting", "layer"], sort=False)]
        costs = pd.concat([costs[costs[SHARD].isna()], pd.DataFrame(merged)],
                          ignore_index=True).drop(columns=SHARD)
    return costs.drop_duplicates(subset=["setting", "layer"], keep="last")


def matched_groups(scores: "pd.DataFrame",
                   ) -> Iterator[tuple[dict[str, Any], "pd.DataFrame", tuple[str, ...]]]:
    """``(key, scores, layers)`` of every matched group: per layer, then pooled, then (where
    the scores have a ``kind`` column: planted units) pooled per kind of planted concept
    (layer ``all layers, <kind>``), per model."""
    items: list[tuple[str, int, dict[str, Any], "pd.DataFrame", tuple[str, ...]]] = []
    for key, group in scores.groupby(GROUP, sort=True, dropna=False):
        items.append((str(key[0]), 0, dict(zip(GROUP, key)), group, (str(key[1]),)))
    for key, group in scores.groupby(["model", "probe", "metric"], sort=True, dropna=False):
        layers = tuple(sorted(str(layer) for layer in group["layer"].unique()))
        if len(layers) > 1:
            pooled = pool_layers(group)
            items.append((str(key[0]), 1, dict(zip(GROUP, pooled[GROUP].iloc[0])), pooled,
                          layers))
        for _, by_kind in pool_kinds(group):  # planted units, per kind of concept
            items.append((str(key[0]), 2, dict(zip(GROUP, by_kind[GROUP].iloc[0])), by_kind,
                          layers))
    items.sort(key=lambda item: (item[0], item[1]))  # stable: sorted order within each part
    for _, _, key_dict, group, layers in items:
        yield key_dict, group, layers


def _summarise_group(key: dict[str, Any], group: "pd.DataFrame", seed: int,
                     ) -> tuple[list[dict[str, Any]], "pd.DataFrame"]:
    """A group's leaderboard rows (best first) and its Holm-adjusted pairwise table."""
    # in unit order, so an interval does not depend on the order the rows were read in
    # (the shards of a neuron set merge into the whole set's figures)
    per_setting = {s: g.set_index("unit")["value"].astype(float).dropna().sort_index(kind="stable")
                   for s, g in group.groupby("setting", sort=True)}
    roles = ({str(s): str(r) for s, r in
              group["role"].fillna(METHOD).groupby(group["setting"]).first().items()}
             if "role" in group else {})
    means = {s: float(v.mean()) if len(v) else float("nan") for s, v in per_setting.items()}
    ranked = sorted(per_setting, key=lambda s: (np.isnan(means[s]), -np.nan_to_num(means[s]), s))
    methods = [s for s in ranked if roles.get(s, METHOD) == METHOD]
    best = (methods or ranked)[0]  # highest mean among methods; ties: first by name
    pairs = paired_comparisons({s: per_setting[s] for s in ranked})
    against = {}
    for pair in pairs.itertuples():
        if best in (pair.setting_a, pair.setting_b):
            other = pair.setting_b if pair.setting_a == best else pair.setting_a
            sign = -1.0 if pair.setting_a == best else 1.0  # mean of (other - best)
            against[other] = (sign * pair.mean_diff, pair.p_holm)
    rows = []
    for setting in ranked:
        values = per_setting[setting]
        mine = group[group.setting == setting]
        diff, p_adj = against.get(setting, (float("nan"), float("nan")))
        mark = ("best" if setting == best else "=" if not p_adj < ALPHA
                else "<" if diff < 0 else ">")
        row: dict[str, Any] = {**key, "setting": setting}
        if "role" in group:
            row["role"] = roles.get(setting, METHOD)
        low, high = bootstrap_ci(values.to_numpy(), seed)
        row.update({"mean": means[setting], "ci_low": low, "ci_high": high,
                    "n": len(values),
                    "coverage": len(values) / max(int(mine["num_units"].max()), 1)})
        if "chance" in group:
            scored = mine[mine["value"].notna()]["chance"].astype(float)
            row["chance"] = float(scored.mean()) if scored.notna().any() else float("nan")
        if SHARD in group and group[SHARD].notna().any():
            row["shards"] = shard_status(mine)
        row.update({"vs_best": mark, "p_vs_best": p_adj})
        rows.append(row)
    return rows, pairs.assign(**key)[GROUP + list(pairs.columns)]


def _cost_columns(costs: "pd.DataFrame") -> list[str]:
    cols = [c for c in costs.columns if str(c).endswith("_per_unit")]
    return sorted(cols, key=lambda c: (c != "seconds_per_unit", cols.index(c)))


def _costs_for(costs: "pd.DataFrame", setting: str, layers: tuple[str, ...],
               columns: list[str]) -> dict[str, float]:
    """Per-unit costs of a setting over some layers: the unit-weighted mean of the layers'
    figures (NaN where a layer's figure is unknown or the setting has no cost row)."""
    rows = costs[(costs["setting"].astype(str) == str(setting))
                 & costs["layer"].astype(str).isin(layers)]
    if not len(rows):
        return {c: float("nan") for c in columns}
    weights = (rows["units"].astype(float) if "units" in rows
               else np.ones(len(rows), dtype=float))
    out = {}
    for col in columns:
        values = rows[col].astype(float)
        out[col] = (float((values * weights).sum() / max(float(np.sum(weights)), 1.0))
                    if values.notna().all() else float("nan"))
    return out


def leaderboard(scores: "pd.DataFrame", seed: int = 0,
                costs: "pd.DataFrame | None" = None) -> "pd.DataFrame":
    """One row per (matched group, setting), best first within each group.

    ``costs`` (see :func:`load_costs`) adds its per-unit columns by (setting, layer).  The
    pairwise table travels in ``table.attrs``; read it with :func:`pairs_table`.
    """
    import pandas as pd

    rows, pair_frames = [], []
    for key, group, layers in matched_groups(scores):
        group_rows, pairs = _summarise_group(key, group, seed)
        if costs is not None:
            columns = _cost_columns(costs)
            for row in group_rows:
                row.update(_costs_for(costs, row["setting"], layers, columns))
        rows += group_rows
        pair_frames.append(pairs)
    table = pd.DataFrame(rows) if rows else pd.DataFrame(columns=[
        *GROUP, "setting", "mean", "ci_low", "ci_high", "n", "coverage", "vs_best", "p_vs_best"])
    pairs = (pd.concat(pair_frames, ignore_index=True) if pair_frames
             else pd.DataFrame(columns=GROUP + ["setting_a", "setting_b", "n", "mean_diff", "p",
                                                "p_holm"]))
    table.attrs["pairs"] = _Pairs(pairs)
    return table


def pairs_table(table: "pd.DataFrame") -> "pd.DataFrame | None":
    """The pairwise comparisons of a table made by :func:`leaderboard` (None if it has none)."""
    pairs = table.attrs.get("pairs")
    return pairs.frame if isinstance(pairs, _Pairs) else None


def metric_agreement(table: "pd.DataFrame") -> "pd.DataFrame":
    """Kendall's τ between every two metrics' setting means within (model, layer, set, probe)."""
    return kendall_agreement(table, AGREEMENT_BY)


def md_cell(value: Any) -> str:
    """Text safe inside a Markdown table cell: HTML-special characters and ``|`` escaped."""
    text = html.escape(str(value), quote=False).replace("\\", "\\\\").replace("|", "\\|")
    return " ".join(text.splitlines())


def _fmt(value: float, spec: str = ".3f") -> str:
    return "—" if value is None or np.isnan(value) else format(value, spec)


def _header(table: "pd.DataFrame", group: "pd.DataFrame") -> str:
    row = group.iloc[0]
    model, layer, probe, metric = (md_cell(row[c]) for c in ("model", "layer", "probe", "metric"))
    if str(row["layer"]).startswith(ALL_LAYERS + ", "):
        return (f"### {metric} — {model}, planted units of kind "
                f"{md_cell(str(row['layer'])[len(ALL_LAYERS) + 2:])}, all layers pooled "
                f"({group.n.max()} units; probe {probe})")
    if row["layer"] != ALL_LAYERS:
        return (f"### {metric} — {model}.{layer} ({group.n.max()} units, probe {probe}, "
                f"neuron set {md_cell(str(row['neuron_set'])[:8])})")
    same = ((table.model == row["model"]) & (table.probe == row["probe"])
            & (table.metric == row["metric"])
            & ~table.layer.astype(str).str.startswith(ALL_LAYERS))
    layers = ", ".join(md_cell(x) for x in dict.fromkeys(table[same].layer))
    return (f"### {metric} — {model}, all layers pooled ({group.n.max()} units, each counted "
            f"once; layers {layers}; probe {probe})")


def _group_markdown(table: "pd.DataFrame", group: "pd.DataFrame") -> list[str]:
    has_role, has_chance = "role" in group, "chance" in group
    has_cost = "seconds_per_unit" in group
    has_shards = "shards" in group and group["shards"].fillna("").astype(str).ne("").any()
    head = ["rank", "setting", "mean", "95% CI", "n", "coverage"]
    align = ["---:", "---", "---:", "---", "---:", "---:"]
    if has_shards:
        head, align = head + ["shards"], align + ["---"]
    if has_chance:
        head, align = head + ["chance"], align + ["---:"]
    if has_cost:
        head, align = head + ["s/unit"], align + ["---:"]
    head, align = head + ["vs best"], align + [":---:"]
    lines = [_header(table, group), "", f"| {' | '.join(head)} |", f"|{'|'.join(align)}|"]
    for rank, row in zip(tied_ranks(group["mean"]), group.to_dict("records")):
        setting = md_cell(row["setting"])
        if has_role and row["role"] != METHOD:
            setting += f" ({md_cell(row['role'])})"
        ci = ("—" if np.isnan(row["ci_low"])
              else f"[{row['ci_low']:.3f}, {row['ci_high']:.3f}]")
        cells = [str(rank), setting, f"{row['mean']:.3f}", ci, str(row["n"]),
                 f"{row['coverage']:.0%}"]
        if has_shards:
            shards = row["shards"] if isinstance(row["shards"], str) else ""
            cells.append(md_cell(shards or "whole set"))
        if has_chance:
            cells.append(_fmt(row["chance"]))
        if has_cost:
            cells.append(_fmt(row["seconds_per_unit"], ".3g"))
        lines.append(f"| {' | '.join(cells + [row['vs_best']])} |")
    k = len(group)
    best = "best method" if has_role else "best setting"
    if has_shards and group["shards"].astype(str).str.contains("missing", na=False).any():
        lines += ["", "**Incomplete:** shards of the neuron set are missing (column shards); "
                      "coverage counts the whole set."]
    lines += ["", f"vs best: `<` / `>` significantly below / above the {best} (Wilcoxon "
              f"signed-rank on the units both scored, Holm-adjusted over the group's "
              f"{k * (k - 1) // 2} pairs, p < {ALPHA}); `=` not distinguishable."
              + (" Controls and references are marked and never ranked best." if has_role
                 else ""), ""]
    return lines


def _agreement_markdown(agreement: "pd.DataFrame") -> list[str]:
    if not len(agreement):
        return []
    lines = ["### Do the metrics agree? Kendall's τ between the metrics' setting rankings", "",
             "| model.layer | probe | metric a | metric b | settings | τ | p |",
             "|---|---|---|---|---:|---:|---:|"]
    for row in agreement.to_dict("records"):
        cells = [f"{md_cell(row['model'])}.{md_cell(row['layer'])}", md_cell(row["probe"]),
                 md_cell(row["metric_a"]), md_cell(row["metric_b"]), str(row["n_settings"]),
                 _fmt(row["tau"], ".2f"), _fmt(row["p"], ".3g")]
        lines.append(f"| {' | '.join(cells)} |")
    return lines + ["", "τ = 1: the metrics rank the settings identically; −1: in reverse.", ""]


def to_markdown(table: "pd.DataFrame") -> str:
    """A Markdown rendering: one section per matched group, then the metrics' agreement."""
    lines: list[str] = []
    for _, group in table.groupby(GROUP, sort=False, dropna=False):
        lines += _group_markdown(table, group)
    lines += _agreement_markdown(metric_agreement(table))
    return "\n".join(lines)


def sidecar(prefix: Path, name: str) -> Path:
    """``pairs.csv`` beside ``leaderboard.csv``; ``PREFIX_pairs.csv`` for other prefixes."""
    stem = name if prefix.name == "leaderboard" else f"{prefix.name}_{name}"
    return prefix.parent / f"{stem}.csv"


def write_leaderboard(table: "pd.DataFrame", prefix: Path,
                      pairs: "pd.DataFrame | None" = None) -> tuple[Path, Path]:
    """Write ``<prefix>.md`` and ``<prefix>.csv`` atomically, with the pairs and agreement tables.

    ``pairs`` defaults to the table's own (:func:`pairs_table`); returns the .md and .csv paths.
    """
    from dndbench.results.records import write_csv, write_text

    prefix = Path(prefix)
    md, csv = prefix.with_suffix(".md"), prefix.with_suffix(".csv")
    write_text(md, to_markdown(table))
    write_csv(csv, table)
    pairs = pairs if pairs is not None else pairs_table(table)
    if pairs is not None:
        write_csv(sidecar(prefix, "pairs"), pairs)
    write_csv(sidecar(prefix, "metric_agreement"), metric_agreement(table))
    return md, csv


def main(argv: list[str] | None = None) -> int:
    """``dndbench leaderboard RUN_DIR... [--out PREFIX]``."""
    from dndbench.results.report import leaderboard_chart

    parser = argparse.ArgumentParser(prog="dndbench leaderboard",
                                     description="Merge run directories into one leaderboard.")
    parser.add_argument("paths", nargs="+", type=Path, help="run / sweep directories")
    parser.add_argument("--out", type=Path, default=Path("leaderboard"),
                        help="output prefix: writes PREFIX.md, PREFIX.csv and PREFIX.png, plus "
                             "the pairs and metric-agreement tables (and with --html PREFIX.html; "
                             "default: leaderboard)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    parser.add_argument("--html", action="store_true",
                        help="also write PREFIX.html: the merged report (leaderboards, figures "
                             "and every unit's card; pictures from the runs' report_files/ are "
                             "copied to PREFIX_files/)")
    args = parser.parse_args(argv)
    scores = load_scores(args.paths)
    table = leaderboard(scores, seed=args.seed, costs=load_costs(args.paths))
    md, csv = write_leaderboard(table, args.out)
    chart = leaderboard_chart(table, args.out.with_suffix(".png"))
    print(to_markdown(table))
    for line in incomplete_shards(table):
        print(f"warning: incomplete shards: {line}", file=sys.stderr)
    written = [str(md), str(csv), str(chart)]
    if args.html:
        from dndbench.results.report import Standings, write_merged_report

        dirs = [Path(run) for run in dict.fromkeys(scores["run"])]  # the complete runs read
        standings = Standings(table, pairs_table(table), metric_agreement(table))
        written.append(str(write_merged_report(dirs, scores, standings,
                                               args.out.with_suffix(".html"))))
    print(f"wrote {', '.join(written)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
