"""The job: NeuronSet -> Activations -> Descriptions -> Scores -> results tables.

Every describer of a run sees the same :class:`~dndbench.context.Context` (same units, probe set
and cached activations), which is what makes the comparison matched.  A run may span several
layers (``neurons.layer=[layer2,layer3]``, ``neurons=planted``): it makes one context per layer,
sharing model, probe, cache and backends, and runs every describer on each.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from dndbench import costs
from dndbench.activations import pick_device
from dndbench.cache import Cache, stable_hash
from dndbench.config import RunSpec
from dndbench.context import Context
from dndbench.describers.base import DESCRIBERS, Describer
from dndbench.describers.describe_cache import describe_cached, descriptions_frame  # noqa: F401 (re-export)
from dndbench.errors import ConfigError, DataError
from dndbench.metrics.base import METRICS, Metric
from dndbench.models.base import MODELS
from dndbench.neurons import NeuronSet, resolve_neuron_sets
from dndbench.probes.base import PROBES
from dndbench.registry import Choice, ComponentConfig

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger("dndbench")


#: characters that make a text option ambiguous inside a label, so such values are quoted
_LABEL_SPECIAL = re.compile(r"""[\s,=()\[\]"'#~]""")


def label_value(value: Any) -> str:
    """An option's value as a setting label shows it: as is when plain; a path (a text with
    ``/``) as its last part plus ``~`` and a hash of the whole value, so two folders never give
    one label; other texts with spaces, commas, brackets or quotes in double quotes."""
    if isinstance(value, str) and not isinstance(value, Choice):
        if "/" in value:
            scheme = re.match(r"^[A-Za-z]\w*:(?!//)", value)
            short = (scheme.group(0) if scheme else "") + value.rstrip("/").rsplit("/", 1)[-1]
            digest = stable_hash("label", value, length=8)
            return f"{label_value(short) if short else json.dumps(value)}~{digest}"
        return json.dumps(value) if not value or _LABEL_SPECIAL.search(value) else value
    return str(value)


def setting_label(config: ComponentConfig) -> str:
    """What the tables call a setting: ``label_as`` when the config sets it, else the name
    (with the options the describer names itself by, ``published[dnd]``) plus the options
    that differ from the defaults, e.g. ``dnd(beta=3, q=5)``; distinct configs get distinct
    labels (see :func:`label_value`)."""
    label = str(getattr(config, "label_as", "") or "").strip()
    if label:
        from dndbench.spreadsheet import neutralise_cell

        if neutralise_cell(label) != label:  # scores.csv keeps labels raw: they are keys
            raise ConfigError(f"{config.name}.label_as={label!r} starts with {label[0]!r}, which "
                              f"spreadsheets run as a formula; start the label with a letter "
                              f"or a digit")
        return label
    shown = tuple(getattr(config, "label_options", ()))
    name = config.name + "".join(f"[{label_value(getattr(config, o))}]" for o in shown)
    defaults = type(config)(name=config.name)
    diffs = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.name in ("name", "label_as", *shown) or value == getattr(defaults, f.name):
            continue
        diffs.append(f"{f.name}={label_value(value)}")
    return f"{name}({', '.join(diffs)})" if diffs else name


#: backend options that do not change outputs, left out of the labels
_RUNTIME_OPTIONS = ("name", "label_as", "device", "batch_size")


def backend_label(config: ComponentConfig) -> str:
    """A backend config as a setting label shows it: its name plus the options that differ
    from its defaults (device and batch size left out), e.g. ``toy_weak(fraction=0.2)``."""
    defaults = type(config)(name=config.name)
    diffs = [f"{f.name}={label_value(getattr(config, f.name))}" for f in dataclasses.fields(config)
             if f.name not in _RUNTIME_OPTIONS
             and getattr(config, f.name) != getattr(defaults, f.name)]
    return f"{config.name}({', '.join(diffs)})" if diffs else config.name


def run_setting_label(spec: RunSpec, config: ComponentConfig) -> str:
    """The setting label of a describer in a run: :func:`setting_label`, plus, in brackets, the
    backends the describer uses (``uses_backends``) that differ from the defaults of the run's
    track, e.g. ``dnd[captioner=oracle, vlm=oracle]``; so runs of one describer with different
    backends keep apart in merged tables.  An explicit ``label_as`` is used as it is."""
    from dndbench.config import TRACK_DEFAULTS

    label = setting_label(config)
    if str(getattr(config, "label_as", "") or "").strip():
        return label
    uses = getattr(DESCRIBERS.entry(config.name).cls, "uses_backends", ())
    defaults = TRACK_DEFAULTS.get(spec.track, {})
    shown = [f"{kind}={backend_label(spec.backends[kind])}" for kind in uses
             if kind in spec.backends and backend_label(spec.backends[kind]) != defaults.get(kind)]
    return f"{label}[{', '.join(shown)}]" if shown else label


@dataclass
class DescriberRun:
    """What one describer produced on one layer of a run.

    ``seconds`` and ``cost`` (model calls by kind, see :mod:`dndbench.costs`) are the
    describer's own: the shared pass of the probe through the network is accounted separately
    (``timings["activations/<layer>"]``), so a setting's cost does not depend on running first.
    """

    setting: str
    describer: str
    descriptions: "pd.DataFrame"
    scores: "pd.DataFrame"
    missing_units: list[int]
    seconds: float
    from_cache: bool
    layer: str = ""
    role: str = "method"
    units: int = 0
    cost: dict[str, float] = field(default_factory=dict)
    #: deltas of the named run counters (``ctx.count``) while this describer ran
    counters: dict[str, int] = field(default_factory=dict)
    #: why each missing unit is missing (a failed backend call's message, or "no description")
    missing_reasons: dict[int, str] = field(default_factory=dict)


@dataclass
class JobResult:
    """Everything a run produced, before it is written to the run directory: one neuron set and
    one context per layer (in order), and one :class:`DescriberRun` per (layer, setting)."""

    neuron_sets: list[NeuronSet]
    runs: list[DescriberRun]
    contexts: list[Context] = field(default_factory=list)
    #: whether any describer looked at probe images (if not, the probe is not part of the result)
    probe_used: bool = False
    timings: dict[str, float] = field(default_factory=dict)
    counts: dict[str, Any] = field(default_factory=dict)

    @property
    def neurons(self) -> NeuronSet:
        """The first layer's neuron set (the only one of a single-layer run)."""
        return self.neuron_sets[0]

    @property
    def context(self) -> Context | None:
        """The first layer's context (the only one of a single-layer run)."""
        return self.contexts[0] if self.contexts else None

    @property
    def layers(self) -> list[str]:
        return [n.layer for n in self.neuron_sets]


def build_contexts(spec: RunSpec, cache: Cache) -> list[tuple[Context, NeuronSet]]:
    """Instantiate model and probe, resolve the neuron sets and make one context per layer.

    The contexts share model, probe, cache, backends and counters; each computes (and caches)
    the activations of its own layer."""
    model = MODELS.create(spec.model)
    model.cache = cache
    model.progress = spec.options.progress
    probe = PROBES.create(spec.probe)
    probe.cache = cache
    o = spec.options
    counters: dict[str, int] = {}
    backend_objects: dict[str, Any] = {}
    out = []
    for neurons in resolve_neuron_sets(model, spec.neurons):
        ctx = Context(model=model, probe=probe, layer=neurons.layer, units=list(neurons.units),
                      cache=cache, device=pick_device(o.device), batch_size=o.batch_size,
                      num_workers=o.num_workers, seed=o.seed, progress=o.progress,
                      counters=counters, backends=dict(spec.backends),
                      _backend_objects=backend_objects)
        out.append((ctx, neurons))
    return out


def build_context(spec: RunSpec, cache: Cache) -> tuple[Context, NeuronSet]:
    """The context of a single-layer run (see :func:`build_contexts`)."""
    contexts = build_contexts(spec, cache)
    if len(contexts) > 1:
        raise ConfigError(f"neurons.layer selects {len(contexts)} layers; use build_contexts")
    return contexts[0]


def describe(describer: Describer, ctx: Context) -> tuple["pd.DataFrame", bool]:
    """The describer's table for ctx.units, from the cache when this exact work was done before."""
    return describe_cached(describer, ctx)


def create_metrics(spec: RunSpec) -> list[Metric]:
    """The configured metrics, or (``metric=all``) every registered metric; created once per
    run, so the models they load serve every layer."""
    if spec.metrics is not None:
        return [METRICS.create(m) for m in spec.metrics]
    return [METRICS.create(METRICS.config(name)) for name in METRICS.names()]


def metrics_for(spec: RunSpec, ctx: Context, metrics: list[Metric] | None = None) -> list[Metric]:
    """The configured metrics, or (``metric=all``) every registered metric that applies to
    ``ctx``; ``metrics`` are the run's instances (default: new ones)."""
    metrics = create_metrics(spec) if metrics is None else metrics
    return metrics if spec.metrics is not None else [m for m in metrics if m.applies_to(ctx)]


class _ProbePass:
    """The shared pass of the probe through the network: run once per layer, just before the
    first describer that computes with the probe, and measured on its own."""

    def __init__(self, result: JobResult) -> None:
        self.result = result
        self.done: set[str] = set()

    def before(self, describer: Describer, ctx: Context,
               measured: dict[str, Any]) -> Callable[[], None]:
        """A ``prepare`` hook for :func:`describe_cached`; it stores what the pass cost in
        ``measured`` (``seconds``, ``cost``)."""

        def run() -> None:
            if not describer.needs_probe or ctx.layer in self.done:
                return
            self.done.add(ctx.layer)
            before, t = costs.snapshot(ctx), time.perf_counter()
            ctx.activations.pooled(ctx.layer)
            measured["seconds"] = time.perf_counter() - t
            measured["cost"] = costs.difference(costs.snapshot(ctx), before)
            key = f"activations/{ctx.layer}"
            self.result.timings[key] = self.result.timings.get(key, 0.0) + measured["seconds"]

        return run


def _describe_layer(spec: RunSpec, ctx: Context, neurons: NeuronSet,
                    describers: list[tuple[ComponentConfig, Describer]], all_metrics: list[Metric],
                    probe_pass: _ProbePass, result: JobResult) -> None:
    """Describe one layer's units with every describer and score every description."""
    import pandas as pd

    metrics = metrics_for(spec, ctx, all_metrics)
    if not metrics:
        log.warning("no metric applies to layer %s of %s; descriptions are written unscored",
                    neurons.layer, neurons.model)
    for config, describer in describers:
        setting = run_setting_label(spec, config)
        if spec.describer_suite and not describer.applies_to(ctx):
            log.info("skipping %s on %s.%s: it does not apply there", setting, neurons.model,
                     neurons.layer)
            continue
        result.probe_used |= describer.needs_probe
        log.info("describing %d units of %s.%s with %s", len(neurons.units), neurons.model,
                 neurons.layer, setting)
        counters_before = dict(ctx.counters)
        shared: dict[str, Any] = {}  # what the shared probe pass cost, if it ran here
        before, t = costs.snapshot(ctx), time.perf_counter()
        failures: dict[int, str] = {}  # units whose backend calls failed, with the reason
        frame, from_cache = describe_cached(describer, ctx, probe_pass.before(describer, ctx, shared),
                                            failures=failures)
        seconds = time.perf_counter() - t - shared.get("seconds", 0.0)
        cost = costs.subtract(costs.difference(costs.snapshot(ctx), before), shared.get("cost", {}))
        counters = {k: v - counters_before.get(k, 0) for k, v in ctx.counters.items()
                    if v != counters_before.get(k, 0)}
        missing = sorted(set(neurons.units) - set(frame["unit"].tolist()))
        if len(missing) == len(neurons.units):
            why = (f"; a backend call failed: {next(iter(failures.values()))}" if failures
                   else "")
            raise DataError(f"{setting} described none of the {len(neurons.units)} requested "
                            f"units of {neurons.model}.{neurons.layer} (first: "
                            f"{', '.join(map(str, missing[:5]))}){why}; check the describer's "
                            f"inputs or choose units it covers with neurons.units=...")
        if failures:
            log.warning("%s: %d units are missing because a backend call failed (first: unit "
                        "%d: %s)", setting, len(failures), min(failures), failures[min(failures)])
        if missing:
            log.warning("%s: %d of %d units have no description (first: %s)", setting,
                        len(missing), len(neurons.units), missing[:10])
        t = time.perf_counter()
        scores = [m.score(frame, ctx) for m in metrics]
        scores_frame = (pd.concat(scores, ignore_index=True) if scores
                        else pd.DataFrame(columns=["unit", "metric", "value"]))
        kinds = planted_kinds(ctx)
        if kinds:
            scores_frame["kind"] = scores_frame["unit"].map(kinds)
        suffix = setting if len(result.neuron_sets) == 1 else f"{neurons.layer}/{setting}"
        result.timings[f"describe/{suffix}"] = seconds
        result.timings[f"score/{suffix}"] = time.perf_counter() - t
        result.runs.append(DescriberRun(setting, config.name, frame, scores_frame, missing,
                                        seconds, from_cache, layer=neurons.layer,
                                        role=describer.role, units=len(neurons.units),
                                        cost=cost, counters=counters,
                                        missing_reasons={u: failures.get(u, "no description")
                                                         for u in missing}))


def planted_kinds(ctx: Context) -> dict[int, str]:
    """Unit -> kind of its planted concept (single, compositional, polysemantic,
    open-vocabulary; :func:`dndbench.toyworld.world_report.concept_kind`) for the context's
    layer; empty when the model plants nothing there.  Written as the scores' ``kind`` column,
    so leaderboards can break planted units down by kind."""
    planted = ctx.model.planted_concepts(ctx.layer)
    if not planted:
        return {}
    from dndbench.toyworld.world_report import concept_kind

    return {unit: concept_kind(concept) for unit, concept in planted.items()}


def quiet_library_bars() -> None:
    """Silence the progress bars of the libraries the backends load models with (Hugging Face
    hub downloads, transformers' weight loading); the run's own bars follow ``ctx.progress``."""
    import importlib.util

    if importlib.util.find_spec("huggingface_hub") is not None:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    if importlib.util.find_spec("transformers") is not None:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


def run_job(spec: RunSpec, cache: Cache) -> JobResult:
    """Describe each layer's units with every describer and score every description."""
    t0 = time.perf_counter()
    if not spec.options.progress:
        quiet_library_bars()
    contexts = build_contexts(spec, cache)
    result = JobResult(neuron_sets=[n for _, n in contexts], runs=[],
                       contexts=[c for c, _ in contexts])
    result.timings["setup"] = time.perf_counter() - t0
    describers = [(config, DESCRIBERS.create(config)) for config in spec.describers]
    metrics = create_metrics(spec)
    probe_pass = _ProbePass(result)
    for ctx, neurons in contexts:
        _describe_layer(spec, ctx, neurons, describers, metrics, probe_pass, result)
    result.timings["total"] = time.perf_counter() - t0
    forwarded = [c.activations.images_forwarded for c in result.contexts
                 if "activations" in c.__dict__]
    if forwarded:
        result.counts["images_forwarded"] = sum(forwarded)
    for ctx in result.contexts[:1]:  # the counters are shared by every layer's context
        result.counts.update(ctx.counters)
    result.counts["cache_hits"] = dict(cache.hits)
    result.counts["cache_misses"] = dict(cache.misses)
    return result
