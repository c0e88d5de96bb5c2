"""Leaderboards: merge any number of run directories into one table.

Rows are grouped by the matched key (model, layer, neuron set, probe, metric); within a group
each describer setting gets its mean over units with a 95 % bootstrap confidence interval,
``n`` (units scored) and ``coverage`` (n / units in the neuron set).  ``vs_best`` compares each
setting with the group's best on the units both scored (paired bootstrap): ``=`` not
distinguishable, ``<`` significantly lower.

    python -m dndbench leaderboard outputs/ multirun/2026-11-25/ --out leaderboard
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import numpy as np

from dndbench.errors import DataError

if TYPE_CHECKING:
    import pandas as pd

GROUP = ["model", "layer", "neuron_set", "probe", "metric"]
N_BOOT = 1000


def find_score_tables(paths: Iterable[Path]) -> list[Path]:
    """Every ``scores.csv`` at or below the given paths (a run dir, a sweep dir, a tree)."""
    found: list[Path] = []
    for path in paths:
        path = Path(path)
        if path.is_file() and path.name == "scores.csv":
            found.append(path)
        elif path.is_dir():
            found += sorted(path.rglob("scores.csv"))
        else:
            raise DataError(f"{path} is neither a run directory nor a scores.csv file")
    return found


def load_scores(paths: Iterable[Path]) -> "pd.DataFrame":
    """Concatenate the score tables of many runs (later runs of the same setting win)."""
    import pandas as pd

    tables = find_score_tables(paths)
    if not tables:
        raise DataError("no scores.csv found under the given paths; pass run directories "
                        "written by `python -m dndbench`")
    frames = [pd.read_csv(p).assign(run=str(p.parent)) for p in tables]
    frames = [f for f in frames if len(f)]
    if not frames:
        raise DataError("the score tables found are all empty")
    scores = pd.concat(frames, ignore_index=True)
    return scores.drop_duplicates(subset=GROUP + ["setting", "unit"], keep="last")


def bootstrap_ci(values: np.ndarray, rng: np.random.Generator, n_boot: int = N_BOOT,
                 ) -> tuple[float, float]:
    """95 % percentile bootstrap interval of the mean."""
    if len(values) < 2:
        return float("nan"), float("nan")
    means = values[rng.integers(0, len(values), size=(n_boot, len(values)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def paired_lower(best: "pd.Series", other: "pd.Series", rng: np.random.Generator) -> str:
    """``<`` if other is significantly below best on their common units, else ``=``."""
    common = best.index.intersection(other.index)
    if len(common) < 2:
        return "="
    diff = (best.loc[common] - other.loc[common]).to_numpy(dtype=float)
    low, _ = bootstrap_ci(diff, rng)
    return "<" if low > 0 else "="


def leaderboard(scores: "pd.DataFrame", seed: int = 0) -> "pd.DataFrame":
    """One row per (matched group, setting), best first within each group."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    rows = []
    for key, group in scores.groupby(GROUP, sort=True, dropna=False):
        per_setting = {s: g.set_index("unit")["value"].astype(float).dropna()
                       for s, g in group.groupby("setting")}
        means = {s: v.mean() for s, v in per_setting.items()}
        best = min(means, key=lambda s: (-means[s], s))  # highest mean; ties: first by name
        for setting, values in per_setting.items():
            total = int(group[group.setting == setting]["num_units"].max())
            low, high = bootstrap_ci(values.to_numpy(), rng)
            rows.append({**dict(zip(GROUP, key)), "setting": setting,
                         "mean": float(values.mean()), "ci_low": low, "ci_high": high,
                         "n": int(len(values)), "coverage": len(values) / max(total, 1),
                         "vs_best": "best" if setting == best
                         else paired_lower(per_setting[best], values, rng)})
    table = pd.DataFrame(rows)
    return table.sort_values(GROUP + ["mean", "setting"],
                             ascending=[True] * len(GROUP) + [False, True], ignore_index=True)


def to_markdown(table: "pd.DataFrame") -> str:
    """A Markdown rendering: one section per matched group."""
    lines = []
    for key, group in table.groupby(GROUP, sort=False):
        model, layer, neuron_set, probe, metric = key
        lines += [f"### {metric} — {model}.{layer} ({group.n.max()} units, probe {probe}, "
                  f"neuron set {neuron_set[:8]})", "",
                  "| rank | setting | mean | 95% CI | n | coverage | vs best |",
                  "|---:|---|---:|---|---:|---:|:---:|"]
        for rank, row in enumerate(group.itertuples(), start=1):
            ci = "—" if np.isnan(row.ci_low) else f"[{row.ci_low:.3f}, {row.ci_high:.3f}]"
            lines.append(f"| {rank} | {row.setting} | {row.mean:.3f} | {ci} | {row.n} | "
                         f"{row.coverage:.0%} | {row.vs_best} |")
        lines.append("")
    return "\n".join(lines)


def write_leaderboard(table: "pd.DataFrame", prefix: Path) -> tuple[Path, Path]:
    """Write ``<prefix>.md`` and ``<prefix>.csv`` atomically."""
    from dndbench.results.records import write_csv, write_text

    md, csv = prefix.with_suffix(".md"), prefix.with_suffix(".csv")
    write_text(md, to_markdown(table))
    write_csv(csv, table)
    return md, csv


def main(argv: list[str] | None = None) -> int:
    """``dndbench leaderboard RUN_DIR... [--out PREFIX]``."""
    parser = argparse.ArgumentParser(prog="dndbench leaderboard",
                                     description="Merge run directories into one leaderboard.")
    parser.add_argument("paths", nargs="+", type=Path, help="run / sweep directories")
    parser.add_argument("--out", type=Path, default=Path("leaderboard"),
                        help="output prefix: writes PREFIX.md and PREFIX.csv (default: leaderboard)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    args = parser.parse_args(argv)
    table = leaderboard(load_scores(args.paths), seed=args.seed)
    md, csv = write_leaderboard(table, args.out)
    print(to_markdown(table))
    print(f"wrote {md} and {csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
