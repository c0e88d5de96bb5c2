"""The job: NeuronSet -> Activations -> Descriptions -> Scores -> results tables.

Every describer of a run sees the same :class:`~dndbench.context.Context` (same units, probe set
and cached activations), which is what makes the comparison matched.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dndbench.activations import pick_device
from dndbench.cache import Cache, stable_hash
from dndbench.config import RunSpec
from dndbench.context import Context
from dndbench.describers.base import DESCRIBERS, Describer, Description
from dndbench.metrics.base import METRICS, Metric
from dndbench.models.base import MODELS
from dndbench.neurons import NeuronSet, resolve_neurons
from dndbench.probes.base import PROBES
from dndbench.registry import ComponentConfig

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger("dndbench")


def setting_label(config: ComponentConfig) -> str:
    """``name`` plus the options that differ from the defaults, e.g. ``dnd(beta=3, q=5)``."""
    defaults = type(config)(name=config.name)
    diffs = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.name != "name" and value != getattr(defaults, f.name):
            if isinstance(value, str) and "/" in value:
                value = Path(value).name
            diffs.append(f"{f.name}={value}")
    return f"{config.name}({', '.join(diffs)})" if diffs else config.name


def descriptions_frame(descriptions: list[Description]) -> "pd.DataFrame":
    """One row per unit: unit, label, label_2, label_3, score and the describer's extras."""
    import pandas as pd

    rows = []
    for d in descriptions:
        alts = list(d.alternatives) + ["", ""]
        rows.append({"unit": int(d.unit), "label": d.label, "label_2": alts[0],
                     "label_3": alts[1], "score": float(d.score), **d.extras})
    columns = ["unit", "label", "label_2", "label_3", "score"]
    return pd.DataFrame(rows, columns=None if rows else columns)


@dataclass
class DescriberRun:
    """What one describer produced in a run."""

    setting: str
    describer: str
    descriptions: "pd.DataFrame"
    scores: "pd.DataFrame"
    missing_units: list[int]
    seconds: float
    from_cache: bool


@dataclass
class JobResult:
    """Everything a run produced, before it is written to the run directory."""

    neurons: NeuronSet
    runs: list[DescriberRun]
    context: Context | None = None
    #: whether any describer looked at probe images (if not, the probe is not part of the result)
    probe_used: bool = False
    timings: dict[str, float] = field(default_factory=dict)
    counts: dict[str, Any] = field(default_factory=dict)


def build_context(spec: RunSpec, cache: Cache) -> tuple[Context, NeuronSet]:
    """Instantiate model and probe, resolve the neuron set, and make the shared context."""
    model = MODELS.create(spec.model)
    model.cache = cache
    probe = PROBES.create(spec.probe)
    probe.cache = cache
    neurons = resolve_neurons(model, spec.neurons)
    o = spec.options
    ctx = Context(model=model, probe=probe, layer=neurons.layer, units=list(neurons.units),
                  cache=cache, device=pick_device(o.device), batch_size=o.batch_size,
                  num_workers=o.num_workers, seed=o.seed, progress=o.progress,
                  backends=dict(spec.backends))
    return ctx, neurons


def describe(describer: Describer, ctx: Context) -> tuple["pd.DataFrame", bool]:
    """The describer's table for ctx.units, from the cache when this exact work was done before."""
    key = stable_hash("descriptions/v1", describer.config, describer.version,
                      describer.cache_key_parts(ctx))
    computed = []

    def compute() -> "pd.DataFrame":
        computed.append(True)
        return descriptions_frame(describer.describe(ctx))

    frame = ctx.cache.frame("descriptions", key, compute)
    return frame, not computed


def metrics_for(spec: RunSpec, ctx: Context) -> list[Metric]:
    """The configured metrics, or (``metric=all``) every registered metric that applies."""
    if spec.metrics is not None:
        return [METRICS.create(m) for m in spec.metrics]
    candidates = [METRICS.create(METRICS.config(name)) for name in METRICS.names()]
    return [m for m in candidates if m.applies_to(ctx)]


def run_job(spec: RunSpec, cache: Cache) -> JobResult:
    """Describe the neuron set with every describer and score every description."""
    import pandas as pd

    t0 = time.perf_counter()
    ctx, neurons = build_context(spec, cache)
    result = JobResult(neurons=neurons, runs=[], context=ctx)
    result.timings["setup"] = time.perf_counter() - t0
    metrics = metrics_for(spec, ctx)
    if not metrics:
        log.warning("no metric applies to layer %s of %s; descriptions are written unscored",
                    neurons.layer, neurons.model)
    for config in spec.describers:
        describer = DESCRIBERS.create(config)
        result.probe_used |= describer.needs_probe
        setting = setting_label(config)
        t = time.perf_counter()
        log.info("describing %d units of %s.%s with %s", len(neurons.units), neurons.model,
                 neurons.layer, setting)
        frame, from_cache = describe(describer, ctx)
        seconds = time.perf_counter() - t
        missing = sorted(set(neurons.units) - set(frame["unit"].tolist()))
        if missing:
            log.warning("%s: %d of %d units have no description (first: %s)", setting,
                        len(missing), len(neurons.units), missing[:10])
        t = time.perf_counter()
        scores = [m.score(frame, ctx) for m in metrics]
        scores_frame = (pd.concat(scores, ignore_index=True) if scores
                        else pd.DataFrame(columns=["unit", "metric", "value"]))
        result.timings[f"describe/{setting}"] = seconds
        result.timings[f"score/{setting}"] = time.perf_counter() - t
        result.runs.append(DescriberRun(setting, config.name, frame, scores_frame, missing,
                                        seconds, from_cache))
    result.timings["total"] = time.perf_counter() - t0
    if "activations" in ctx.__dict__:
        result.counts["images_forwarded"] = ctx.activations.images_forwarded
    result.counts.update(ctx.counters)
    result.counts["cache_hits"] = dict(cache.hits)
    result.counts["cache_misses"] = dict(cache.misses)
    return result
