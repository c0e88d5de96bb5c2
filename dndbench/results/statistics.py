"""The leaderboard's statistics: confidence intervals, paired tests, multiple testing, agreement.

Pure functions over numpy arrays and pandas objects; scipy is imported inside them.

* :func:`bootstrap_ci` — 95 % **percentile** bootstrap interval of the mean
  (``scipy.stats.bootstrap``, seeded).  Percentile rather than BCa because the benchmark's
  figures are often binary or constant within a setting (a hit rate of 1.0, a constant label's
  score), where BCa's acceleration is undefined and scipy returns NaN.
* :func:`wilcoxon_p` — two-sided Wilcoxon signed-rank test on paired differences
  (``scipy.stats.wilcoxon``; exact for small samples, asymptotic beyond 50 units).
* :func:`holm` — Holm's (1979) step-down adjustment of a family of p-values.
* :func:`paired_comparisons` — every pair of settings on the units both scored, Holm-adjusted
  over the pairs of one group.
* :func:`kendall_agreement` — Kendall's τ between the setting rankings of two metrics.
* :func:`pool_layers` — unit-weighted pooling of several layers' scores.
"""
from __future__ import annotations

import hashlib
import warnings
from itertools import combinations
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

N_BOOT = 2000
CONFIDENCE = 0.95
ALPHA = 0.05
#: paired differences are rounded to this many decimals, so float noise is not a difference
DECIMALS = 12
#: the ``layer`` of a group pooled over layers
ALL_LAYERS = "all layers"
PAIR_COLUMNS = ["setting_a", "setting_b", "n", "mean_diff", "p", "p_holm"]


def bootstrap_ci(values: np.ndarray | Sequence[float],
                 rng: np.random.Generator | int | None = 0, n_boot: int = N_BOOT,
                 confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean; ``(nan, nan)`` below two values.

    ``rng`` is a seed or a generator: the same seed gives the same interval.
    """
    from scipy.stats import bootstrap

    data = np.asarray(values, dtype=float)
    data = data[~np.isnan(data)]
    if len(data) < 2:
        return float("nan"), float("nan")
    generator = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    batch = max(1, min(n_boot, 2_000_000 // len(data)))  # bounds memory on large unit sets
    result = bootstrap((data,), np.mean, n_resamples=n_boot, batch=batch, vectorized=True,
                       confidence_level=confidence, method="percentile", rng=generator)
    interval = result.confidence_interval
    return float(interval.low), float(interval.high)


def wilcoxon_p(differences: np.ndarray | Sequence[float]) -> float:
    """Two-sided Wilcoxon signed-rank p-value of paired differences.

    NaN with fewer than two pairs (no test possible); 1.0 when every difference is zero (the
    two settings agree on every unit).  Zero differences are dropped (Wilcoxon's convention).
    """
    from scipy.stats import wilcoxon

    diff = np.round(np.asarray(differences, dtype=float), DECIMALS)
    diff = diff[~np.isnan(diff)]
    if len(diff) < 2:
        return float("nan")
    if not np.any(diff):
        return 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(wilcoxon(diff, zero_method="wilcox", alternative="two-sided").pvalue)


def holm(pvalues: np.ndarray | Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values, in the input's order; NaNs stay NaN and don't count."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    order = valid[np.argsort(p[valid], kind="stable")]
    m = len(order)
    scaled = (m - np.arange(m)) * p[order]           # (m - i) p_(i), i = 0 .. m-1
    out[order] = np.minimum(1.0, np.maximum.accumulate(scaled))
    return out


def paired_comparisons(per_setting: Mapping[str, "pd.Series"]) -> "pd.DataFrame":
    """Every pair of settings on their common units (Series indexed by unit), Holm-adjusted.

    Pairs follow the mapping's order (``setting_a`` listed before ``setting_b``);
    ``mean_diff`` is the mean of a − b over the ``n`` units both scored.
    """
    import pandas as pd

    rows = []
    for a, b in combinations(per_setting, 2):
        common = per_setting[a].index.intersection(per_setting[b].index)
        diff = (per_setting[a].loc[common].to_numpy(dtype=float)
                - per_setting[b].loc[common].to_numpy(dtype=float))
        rows.append({"setting_a": a, "setting_b": b, "n": len(common),
                     "mean_diff": float(diff.mean()) if len(diff) else float("nan"),
                     "p": wilcoxon_p(diff)})
    pairs = pd.DataFrame(rows, columns=PAIR_COLUMNS[:-1])
    pairs["p_holm"] = holm(pairs["p"].to_numpy()) if len(pairs) else []
    return pairs


def _pooled_id(neuron_sets: Iterable[Any]) -> str:
    """A stable identifier for the union of several layers' neuron sets."""
    joined = "+".join(sorted(str(s) for s in neuron_sets))
    return "pooled-" + hashlib.sha256(joined.encode()).hexdigest()[:12]


def pool_layers(scores: "pd.DataFrame") -> "pd.DataFrame":
    """Unit-weighted pooling of one (model, probe, metric)'s scores over all its layers.

    Units are concatenated across layers (renamed ``layer:unit``, so every unit of every layer
    counts once); ``layer`` becomes :data:`ALL_LAYERS`, ``neuron_set`` an identifier of the union
    and ``num_units`` the units of all the layers' neuron sets together.
    """
    per_set = scores.groupby(["layer", "neuron_set"], dropna=False)["num_units"].max()
    pooled = scores.assign(unit=scores["layer"].astype(str) + ":" + scores["unit"].astype(str),
                           layer=ALL_LAYERS, neuron_set=_pooled_id(scores["neuron_set"].unique()),
                           num_units=int(per_set.sum()))
    return pooled.drop_duplicates(subset=["setting", "unit"], keep="last")


#: the ``layer`` of a pooled group restricted to one kind of planted concept
KIND_LAYERS = "all layers, {kind}"


def pool_kinds(scores: "pd.DataFrame") -> list[tuple[str, "pd.DataFrame"]]:
    """One pooled group per kind of planted concept (the scores' ``kind`` column, written for
    units with a planted concept: single, compositional, polysemantic, open-vocabulary), over
    every layer: like :func:`pool_layers`, but only the units of that kind; ``num_units`` is
    the number of units of that kind found in the scores (any setting's).  Empty when the
    scores have no kind."""
    if "kind" not in scores or not scores["kind"].notna().any():
        return []
    out = []
    for kind in sorted(str(k) for k in scores["kind"].dropna().unique()):
        mine = scores[scores["kind"] == kind]
        units = mine.drop_duplicates(subset=["layer", "unit"])
        pooled = mine.assign(unit=mine["layer"].astype(str) + ":" + mine["unit"].astype(str),
                             layer=KIND_LAYERS.format(kind=kind),
                             neuron_set=_pooled_id(scores["neuron_set"].unique()) + f"-{kind}",
                             num_units=len(units))
        out.append((kind, pooled.drop_duplicates(subset=["setting", "unit"], keep="last")))
    return out


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Kendall's τ-b and its p-value; NaN below two items or when one side is constant."""
    from scipy.stats import kendalltau

    if len(x) < 2:
        return float("nan"), float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = kendalltau(np.asarray(x, dtype=float), np.asarray(y, dtype=float))
    return float(result.statistic), float(result.pvalue)


def tied_ranks(values: Sequence[float]) -> list[int]:
    """Ranks of ``values``, highest first; equal values share the best rank of their tie
    (1, 1, 3, ...) and NaN ranks last, so a table never orders settings it cannot tell apart."""
    import pandas as pd

    ranks = pd.Series(list(values), dtype=float).rank(method="min", ascending=False,
                                                      na_option="bottom")
    return [int(r) for r in ranks]


def kendall_agreement(means: "pd.DataFrame", by: list[str], metric: str = "metric",
                      setting: str = "setting", value: str = "mean") -> "pd.DataFrame":
    """Kendall's τ between each pair of metrics' setting rankings, per group of ``by`` columns.

    ``means`` has one row per (group, metric, setting); a pair of metrics is compared on the
    settings both scored.  Columns: ``by``, metric_a, metric_b, n_settings, tau, p.
    """
    import pandas as pd

    rows = []
    for key, group in means.groupby(by, sort=False, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        wide = group.pivot_table(index=setting, columns=metric, values=value, aggfunc="first",
                                 sort=False, dropna=False)
        for a, b in combinations(list(dict.fromkeys(group[metric])), 2):
            both = wide[[a, b]].dropna()
            tau, p = kendall_tau(both[a].to_numpy(), both[b].to_numpy())
            rows.append({**dict(zip(by, key)), "metric_a": a, "metric_b": b,
                         "n_settings": len(both), "tau": tau, "p": p})
    return pd.DataFrame(rows, columns=[*by, "metric_a", "metric_b", "n_settings", "tau", "p"])
