"""Writing a run directory: tidy tables, summary.json and the run record (run.json).

Layout of a run directory::

    descriptions.csv   one row per (describer setting, layer, unit); ``role`` last; safe to
                       open in a spreadsheet (:func:`spreadsheet_safe`)
    descriptions.parquet  the same table with the exact text (read it with
                       :func:`dndbench.spreadsheet.read_descriptions`)
    scores.csv         one row per (describer setting, layer, unit, metric); ``role`` last
    costs.csv          one row per (describer setting, layer): seconds and model calls per unit
    summary.json       {"metrics": {"<metric>": {"mean": ..., "n": ...}}, "describers": {...},
                        "costs": {...}, "layers": {"<layer>": {the same, for that layer}}};
                       the top level pools every layer (each unit counts once)
    run.json           resolved config (secrets removed), versions, machine (torch threads, CPU
                       capability, torch version), timings, counts, neuron sets
    leaderboard.md/.csv  this run's leaderboard

Every file is written atomically, so an interrupted run never leaves half a table.

**Spreadsheet safety.**  Labels are written by models and by other authors' files, so a text
cell of ``descriptions.csv`` that a spreadsheet would run as a formula (it starts with ``=``,
``+``, ``-``, ``@``, a tab or a carriage return) gets a leading apostrophe; the rule is
reversible and documented in :mod:`dndbench.spreadsheet`, whose
:func:`~dndbench.spreadsheet.read_descriptions` reads the exact text back (from the parquet
copy when present).
"""
from __future__ import annotations

import json
import math
import platform
import time
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dndbench.cache import atomic_path
from dndbench.costs import COLUMNS as COST_COLUMNS
from dndbench.costs import cost_row
from dndbench.redact import is_secret_name, redact, scrub_secrets
from dndbench.spreadsheet import (  # noqa: F401 (re-exported: the rule belongs to these files)
    neutralise_cell,
    read_descriptions,
    restore_cell,
    spreadsheet_safe,
    text_columns,
)

if TYPE_CHECKING:
    import pandas as pd

    from dndbench.pipeline import JobResult

VERSIONED = ("dndbench", "torch", "torchvision", "numpy", "pandas", "hydra-core",
             "sentence-transformers", "transformers", "diffusers", "open_clip_torch", "openai")
def write_parquet(path: Path, frame: "pd.DataFrame") -> None:
    """``frame`` as parquet, atomically; a column of mixed types is stored as text."""
    try:
        with atomic_path(path) as tmp:
            frame.to_parquet(tmp, index=False)
        return
    except (TypeError, ValueError):  # pyarrow's ArrowTypeError / ArrowInvalid: mixed types
        pass
    mixed = frame.copy()
    for column in text_columns(mixed):
        mixed[column] = mixed[column].map(
                lambda v: v if v is None or isinstance(v, str) else str(v))
    with atomic_path(path) as tmp:
        mixed.to_parquet(tmp, index=False)


def package_versions() -> dict[str, str]:
    """Installed versions of the packages that matter for reproducing a run."""
    versions = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def machine_record() -> dict[str, Any]:
    """What CPU results depend on besides the code and the packages: torch's thread count
    (``torch.get_num_threads()``), the CPU kernels it dispatches to
    (``torch.backends.cpu.get_cpu_capability()``), the torch version and the platform."""
    import torch

    return {"torch_threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "torch": torch.__version__, "machine": platform.machine(),
            "system": platform.system()}


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_csv(path: Path, frame: "pd.DataFrame") -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def summarise(scores: "pd.DataFrame") -> dict[str, dict[str, float]]:
    """``{metric: {"mean": ..., "n": ...}}`` over units."""
    out = {}
    for metric, group in scores.groupby("metric", sort=True):
        values = group["value"].astype(float).dropna()
        out[str(metric)] = {"mean": float(values.mean()) if len(values) else float("nan"),
                            "n": int(len(values))}
    return out


def _ident(result: "JobResult", layer: str, model: str, probe: str) -> dict[str, Any]:
    """The identifying columns of one layer's rows; a shard's (``neurons.shard=i/n``) carry
    the whole selection's key and size and, in ``shard``, which part they are."""
    sets = {n.layer: n for n in result.neuron_sets}
    neurons = sets.get(layer, result.neurons)
    out: dict[str, Any] = {"model": model, "layer": neurons.layer, "probe": probe,
                           "neuron_set": neurons.key, "num_units": neurons.size}
    if neurons.shard is not None:
        out["shard"] = str(neurons.shard)
    return out


def tables(result: "JobResult", model: str, probe: str) -> tuple["pd.DataFrame", "pd.DataFrame"]:
    """The run's descriptions and scores tables with their identifying columns (per layer)
    first and each setting's ``role`` last."""
    import pandas as pd

    descriptions, scores = [], []
    for run in result.runs:
        extra = {"describer": run.describer, "setting": run.setting,
                 **_ident(result, run.layer, model, probe)}
        descriptions.append(run.descriptions.assign(**extra).assign(role=run.role))
        scores.append(run.scores.assign(**extra).assign(role=run.role))
    front = ["setting", "describer", "model", "layer", "probe", "neuron_set", "num_units", "unit"]
    empty = pd.DataFrame(columns=[*front, "role"])
    d = pd.concat(descriptions, ignore_index=True) if descriptions else empty
    s = pd.concat(scores, ignore_index=True) if scores else empty
    d = d[front + [c for c in d.columns if c not in front and c != "role"] + ["role"]]
    s = s[front + [c for c in s.columns if c not in front and c != "role"] + ["role"]]
    return d, s


def costs_table(result: "JobResult") -> "pd.DataFrame":
    """One row per (setting, layer): seconds and model calls per unit (:data:`COLUMNS
    <dndbench.costs.COLUMNS>`)."""
    import pandas as pd

    rows = [cost_row(run.setting, run.describer, run.layer, run.units, run.seconds, run.cost)
            for run in result.runs]
    frame = pd.DataFrame(rows, columns=COST_COLUMNS)
    shards = {n.layer: str(n.shard) for n in result.neuron_sets if n.shard is not None}
    if shards:  # which part of the selection each row's units are (see load_costs)
        frame["shard"] = frame["layer"].map(shards)
    return frame


def pooled_costs(costs: "pd.DataFrame") -> dict[str, dict[str, Any]]:
    """Each setting's cost over all its layers: totals over units, divided by all units."""
    out: dict[str, dict[str, Any]] = {}
    per_unit = [c for c in COST_COLUMNS if c.endswith("_per_unit")]
    for setting, rows in costs.groupby("setting", sort=False):
        units = int(rows["units"].sum())
        entry: dict[str, Any] = {"describer": str(rows["describer"].iloc[0]), "units": units,
                                 "seconds": round(float(rows["seconds"].sum()), 4)}
        for column in per_unit:  # unit-weighted mean of the layers' per-unit figures
            values = rows[column].astype(float) * rows["units"]
            entry[column] = (float(values.sum()) / max(1, units) if values.notna().all()
                             else None)
        out[str(setting)] = entry
    return out


def _layer_costs(costs: "pd.DataFrame") -> dict[str, dict[str, Any]]:
    out = {}
    for row in costs.to_dict("records"):
        out[str(row["setting"])] = {k: (None if isinstance(v, float) and math.isnan(v) else v)
                                    for k, v in row.items() if k not in ("setting", "layer")}
    return out


def _metrics_entry(scores: "pd.DataFrame", settings: dict[str, str]) -> dict[str, Any]:
    """``{"describers": {setting: {"role", "metrics"}}, "metrics": ...}`` over ``scores``;
    ``metrics`` is the one setting's, or ``<setting>/<metric>`` keys with several."""
    per_describer: dict[str, dict[str, Any]] = {
        setting: {"metrics": summarise(scores[scores.setting == setting]), "role": role}
        for setting, role in settings.items()}
    entry: dict[str, Any] = {"describers": per_describer}
    if len(per_describer) == 1:
        entry["metrics"] = next(iter(per_describer.values()))["metrics"]
    else:
        entry["metrics"] = {f"{setting}/{metric}": value
                            for setting, e in per_describer.items()
                            for metric, value in e["metrics"].items()}
    return entry


def summary(result: "JobResult", scores: "pd.DataFrame", costs: "pd.DataFrame") -> dict[str, Any]:
    """summary.json: pooled over every layer (unit-weighted) at the top, per layer under
    ``layers``; ``costs`` beside the metrics in both."""
    settings = {run.setting: run.role for run in result.runs}
    out = _metrics_entry(scores, settings)
    out["costs"] = pooled_costs(costs)
    out["layers"] = {}
    for neurons in result.neuron_sets:
        layer_settings = {r.setting: r.role for r in result.runs if r.layer == neurons.layer}
        entry = _metrics_entry(scores[scores.layer == neurons.layer], layer_settings)
        entry["units"] = len(neurons.units)
        entry["costs"] = _layer_costs(costs[costs.layer == neurons.layer])
        out["layers"][neurons.layer] = entry
    return out


def write_run(run_dir: Path, result: "JobResult", config: dict[str, Any], overrides: list[str],
              model: str, probe: str, started: float) -> tuple["pd.DataFrame", "pd.DataFrame"]:
    """Write every file of the run directory; return (descriptions, scores)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    descriptions, scores = tables(result, model, probe)
    costs = costs_table(result)
    write_csv(run_dir / "descriptions.csv", spreadsheet_safe(descriptions))
    write_parquet(run_dir / "descriptions.parquet", descriptions)
    write_csv(run_dir / "scores.csv", scores)
    write_csv(run_dir / "costs.csv", costs)
    write_text(run_dir / "summary.json", json.dumps(summary(result, scores, costs), indent=2))
    several = len(result.neuron_sets) > 1
    record = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        "seconds": round(time.time() - started, 3),
        "config": scrub_secrets(config),
        "overrides": [redact(o) for o in overrides
                      if not is_secret_name(o.lstrip("+~").split("=")[0])],
        "versions": package_versions(),
        "machine": machine_record(),
        "neurons": result.neurons.to_dict(),
        "neuron_sets": [n.to_dict() for n in result.neuron_sets],
        "timings": {k: round(v, 3) for k, v in result.timings.items()},
        "counts": {**result.counts, "units": sum(len(n.units) for n in result.neuron_sets),
                   "descriptions": int(len(descriptions)), "scores": int(len(scores))},
        "describers": {(f"{run.layer}/{run.setting}" if several else run.setting): {
            "name": run.describer, "layer": run.layer, "role": run.role,
            "seconds": round(run.seconds, 3), "from_cache": run.from_cache,
            "missing_units": run.missing_units,
            "missing_reasons": {str(u): r for u, r in
                                getattr(run, "missing_reasons", {}).items()},
            "counters": run.counters}
            for run in result.runs},
    }
    write_text(run_dir / "run.json", json.dumps(record, indent=2, default=str))
    return descriptions, scores
