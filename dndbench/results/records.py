"""Writing a run directory: tidy tables, summary.json and the run record (run.json).

Layout of a run directory::

    descriptions.csv   one row per (describer setting, unit)
    scores.csv         one row per (describer setting, unit, metric)
    summary.json       {"metrics": {"<metric>": {"mean": ..., "n": ...}}, "describers": {...}}
    run.json           resolved config (secrets removed), versions, timings, counts, neuron set
    leaderboard.md/.csv  this run's leaderboard

Every file is written atomically, so an interrupted run never leaves half a table.
"""
from __future__ import annotations

import json
import platform
import re
import time
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dndbench.cache import atomic_path

if TYPE_CHECKING:
    import pandas as pd

    from dndbench.pipeline import JobResult

SECRET_KEY = re.compile(r"(api_?key|token|secret|password)", re.IGNORECASE)
VERSIONED = ("dndbench", "torch", "torchvision", "numpy", "pandas", "hydra-core",
             "sentence-transformers", "transformers", "diffusers", "open_clip_torch", "openai")


def scrub_secrets(obj: Any) -> Any:
    """Replace values of secret-looking keys by ``"<redacted>"`` (recursively)."""
    if isinstance(obj, dict):
        return {k: ("<redacted>" if SECRET_KEY.search(str(k)) and v else scrub_secrets(v))
                for k, v in obj.items()}
    if isinstance(obj, list):
        return [scrub_secrets(v) for v in obj]
    return obj


def package_versions() -> dict[str, str]:
    """Installed versions of the packages that matter for reproducing a run."""
    versions = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


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


def tables(result: "JobResult", model: str, probe: str) -> tuple["pd.DataFrame", "pd.DataFrame"]:
    """The run's descriptions and scores tables with their identifying columns."""
    import pandas as pd

    ident = {"model": model, "layer": result.neurons.layer, "probe": probe,
             "neuron_set": result.neurons.key, "num_units": len(result.neurons.units)}
    descriptions, scores = [], []
    for run in result.runs:
        descriptions.append(run.descriptions.assign(describer=run.describer, setting=run.setting,
                                                    **ident))
        scores.append(run.scores.assign(describer=run.describer, setting=run.setting, **ident))
    front = ["setting", "describer", "model", "layer", "probe", "neuron_set", "num_units", "unit"]
    d = pd.concat(descriptions, ignore_index=True) if descriptions else pd.DataFrame(columns=front)
    s = pd.concat(scores, ignore_index=True) if scores else pd.DataFrame(columns=front)
    d = d[front + [c for c in d.columns if c not in front]]
    s = s[front + [c for c in s.columns if c not in front]]
    return d, s


def write_run(run_dir: Path, result: "JobResult", config: dict[str, Any], overrides: list[str],
              model: str, probe: str, started: float) -> tuple["pd.DataFrame", "pd.DataFrame"]:
    """Write every file of the run directory; return (descriptions, scores)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    descriptions, scores = tables(result, model, probe)
    write_csv(run_dir / "descriptions.csv", descriptions)
    write_csv(run_dir / "scores.csv", scores)
    per_describer = {run.setting: {"metrics": summarise(scores[scores.setting == run.setting])}
                     for run in result.runs}
    summary: dict[str, Any] = {"describers": per_describer}
    if len(result.runs) == 1:
        summary["metrics"] = next(iter(per_describer.values()))["metrics"]
    else:
        summary["metrics"] = {f"{setting}/{metric}": value
                              for setting, entry in per_describer.items()
                              for metric, value in entry["metrics"].items()}
    write_text(run_dir / "summary.json", json.dumps(summary, indent=2))
    record = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        "seconds": round(time.time() - started, 3),
        "config": scrub_secrets(config),
        "overrides": [o for o in overrides if not SECRET_KEY.search(o.split("=")[0])],
        "versions": package_versions(),
        "neurons": result.neurons.to_dict(),
        "timings": {k: round(v, 3) for k, v in result.timings.items()},
        "counts": {**result.counts, "units": len(result.neurons.units),
                   "descriptions": int(len(descriptions)), "scores": int(len(scores))},
        "describers": {run.setting: {"name": run.describer, "seconds": round(run.seconds, 3),
                                     "from_cache": run.from_cache,
                                     "missing_units": run.missing_units}
                       for run in result.runs},
    }
    write_text(run_dir / "run.json", json.dumps(record, indent=2, default=str))
    return descriptions, scores
