"""The run's typed configuration and its registration with Hydra's ConfigStore.

Each registered component's ``Config`` dataclass becomes the Hydra config ``<kind>/<name>``, so
``describer=my_method describer.beta=3`` works without any YAML and values are type-checked.
Hydra stops at the CLI: :func:`to_run_spec` turns the composed DictConfig into plain typed
objects and nothing past it sees a DictConfig.

**Tracks.**  Every target model declares ``track = "toy" | "real"``.  The probe and backend
slots a run does not choose come from :data:`TRACK_DEFAULTS` of its model's track: the
defaults list selects ``auto_<model>`` in each of those groups (``probe: auto_${model}``), a
config stored here for every registered model, so an explicit ``captioner=toy`` on the command
line (or a preset's choice) always wins and ``llm.max_calls=...`` reaches the track's LLM.  On
the real track :func:`to_run_spec` also fills the options that have real defaults
(:data:`REAL_OPTION_DEFAULTS`: CLIP-Dissect's 20k-word concept set, the final-layer class
strings) and warns (:attr:`RunSpec.warnings`) when a toy-world component was chosen explicitly.

**Data.**  The real track's data folders are the ``data.*`` options (:class:`DataConfig`), each
defaulting to an environment variable (:data:`DATA_VARIABLES`): probe roots left empty are
filled from them, and presets refer to them as ``${data.published}``.  :func:`check_data`
raises a one-line ConfigError naming the option and the variable when a folder the run needs is
not set or does not exist.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dndbench.catalog import BACKEND_KINDS, KINDS
from dndbench.errors import ConfigError, UnknownOptionError
from dndbench.neurons import NeuronsConfig
from dndbench.registry import ComponentConfig, Registry, registries
from dndbench.results.reference import ReferenceFigures

#: the special component name that expands to a whole suite (all default describers / metrics)
ALL = "all"

#: the probe and backends of each track, for the slots a run does not choose; the toy track's
#: summariser is ``proposer`` (seeded sampling: N distinct candidates per unit, so DnD's step 3
#: has a choice); ``llm=keyword`` is its deterministic baseline
TRACK_DEFAULTS: dict[str, dict[str, str]] = {
    "toy": {"probe": "toyworld", "captioner": "toy", "llm": "proposer", "text2image": "toy",
            "vlm": "toy"},
    # the paper's setup: ImageNet-val ∪ Broden, BLIP, GPT-4 (the released code's model; the
    # paper names GPT-3.5-Turbo), SD v1-4 (the released code's), CLIP ViT-B/16
    "real": {"probe": "imagenet_broden", "captioner": "blip", "llm": "openai",
             "text2image": "sd14", "vlm": "clip_vitb16"},
}
#: probe options of each track's default probe: on the toy world describers see the probe's
#: ``describe`` half and held-out metrics score on the other (docs/metrics/simulation.md); the
#: real track keeps the paper's whole probe (``probe.split=describe`` opts in)
TRACK_PROBE_OPTIONS: dict[str, dict[str, str]] = {"toy": {"split": "describe"}, "real": {}}
#: prefix of the config-group options that stand for a model's track defaults
AUTO_PREFIX = "auto_"
#: data folder option -> the environment variable it defaults to
DATA_VARIABLES = {"imagenet": "DNDBENCH_IMAGENET", "broden": "DNDBENCH_BRODEN",
                  "published": "DNDBENCH_PUBLISHED"}
#: what each data folder holds (for error messages)
DATA_CONTENTS = {
    "imagenet": "the ImageNet validation images (flat or one folder per class)",
    "broden": "the unzipped Broden dataset (broden1_224; python -m dndbench download-broden)",
    "published": "the Describe-and-Dissect repository's data/ folder (20k.txt, "
                 "imagenet_labels.txt, DnD_results/, MILANNOTATIONS_resnet152_imagenet.csv, ...)",
}
#: probe -> {its root option: the data folder that fills it when it is left at its default}
PROBE_ROOTS: dict[str, dict[str, str]] = {
    "imagenet_broden": {"imagenet_root": "imagenet", "broden_root": "broden"},
    "imagenet_val": {"root": "imagenet"},
    "broden": {"root": "broden"},
}
#: Broden's folder when neither its option nor ``data.broden`` says otherwise
BRODEN_DEFAULT_ROOT = "data/broden1_224"
#: real-track defaults of component options: (group, component, option) -> (file in
#: ``data.published``, what it is); applied when the option is left at its toy default
REAL_OPTION_DEFAULTS: dict[tuple[str, str, str], tuple[str, str]] = {
    ("describer", "clip_dissect", "concept_set"): ("20k.txt", "CLIP-Dissect's 20k-word concept set"),
}


@dataclass
class DataConfig:
    """The real track's data folders; each defaults to its environment variable."""

    #: ImageNet validation images ($DNDBENCH_IMAGENET)
    imagenet: str = "${oc.env:DNDBENCH_IMAGENET,''}"
    #: the unzipped broden1_224 folder ($DNDBENCH_BRODEN)
    broden: str = "${oc.env:DNDBENCH_BRODEN,''}"
    #: the Describe-and-Dissect repository's data/ folder ($DNDBENCH_PUBLISHED)
    published: str = "${oc.env:DNDBENCH_PUBLISHED,''}"


@dataclass
class RunConfig:
    """Top-level options of ``python -m dndbench``.

    A component slot holds the chosen component's typed config: Hydra composes the group's
    config (``describer=netdissect``, a subclass of :class:`ComponentConfig`) into it, so its
    options are type-checked; ``None`` until a group option is chosen.
    """

    model: ComponentConfig | None = None
    probe: ComponentConfig | None = None
    describer: ComponentConfig | None = None
    metric: ComponentConfig | None = None
    neurons: NeuronsConfig = field(default_factory=NeuronsConfig)
    captioner: ComponentConfig | None = None
    llm: ComponentConfig | None = None
    text2image: ComponentConfig | None = None
    vlm: ComponentConfig | None = None
    cache_dir: str = ""  # empty: $DNDBENCH_CACHE or ~/.cache/dndbench
    device: str = "auto"
    batch_size: int = 64
    num_workers: int = 0
    seed: int = 0
    progress: bool = True
    plugins_dir: str = "plugins"
    #: the real track's data folders (``data.imagenet=...`` or the environment variables)
    data: DataConfig = field(default_factory=DataConfig)
    #: a paper's figures that a preset shows beside the run's (:mod:`dndbench.results.reference`)
    reference_figures: ReferenceFigures | None = None
    #: free variables of presets (``+experiment=NAME``), used by interpolation only
    preset: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunSpec:
    """The typed, Hydra-free form of one run."""

    model: ComponentConfig
    probe: ComponentConfig
    describers: list[ComponentConfig]
    metrics: list[ComponentConfig] | None  # None: every metric that applies
    neurons: NeuronsConfig
    options: RunConfig
    backends: dict[str, ComponentConfig] = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)
    #: the describers are the default suite (``describer=all``): one that does not apply to a
    #: layer (e.g. ``oracle`` without ground truth) is skipped there instead of failing
    describer_suite: bool = False
    #: the model's track (``toy`` or ``real``): where the unchosen slots' defaults came from
    track: str = "toy"
    #: lines for the log (a real model run with a toy-world component, ...)
    warnings: list[str] = field(default_factory=list)
    #: data the run needs but does not have, one message each (raised by :func:`check_data`)
    missing_data: list[str] = field(default_factory=list)


def component_registries() -> dict[str, Registry[Any]]:
    """The registries of the non-backend kinds (model, probe, describer, metric), by group name."""
    return registries(tuple(k for k in KINDS if k not in BACKEND_KINDS))


def backend_registries() -> dict[str, Registry[Any]]:
    """The backend registries (captioner, llm, text2image, vlm, embedder), by group name."""
    return registries(BACKEND_KINDS)


def register_configs() -> None:
    """Store the run schema and every registered component config in Hydra's ConfigStore.

    A kind is a config group only when the run has a slot for it (a :class:`RunConfig` field):
    embedders are chosen per metric (``metric.embedder=mpnet``), so there is no ``embedder=``."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="run_schema", node=RunConfig)
    regs = registries()
    slots = set(RunConfig.__dataclass_fields__)
    for group, registry in regs.items():
        if group not in slots:
            continue
        for entry in registry.entries():
            cs.store(group=group, name=entry.name, node=entry.config_class(name=entry.name))
    for group in ("describer", "metric"):
        cs.store(group=group, name=ALL, node={"name": ALL})
    for model in regs["model"].entries():  # ``auto_<model>``: the model's track defaults
        for group, name in TRACK_DEFAULTS[track_of(model.cls, model.name)].items():
            track = track_of(model.cls, model.name)
            options = TRACK_PROBE_OPTIONS[track] if group == "probe" else {}
            cs.store(group=group, name=AUTO_PREFIX + model.name,
                     node=regs[group].entry(name).config_class(name=name, **options))
    register_resolvers()


def register_resolvers() -> None:
    """The OmegaConf resolvers presets use: ``${csv_units:PATH,COLUMN[,WHERE,VALUE]}``."""
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("csv_units", csv_units, replace=True)


def csv_units(path: str, column: str, where: str = "", value: Any = None) -> Any:
    """Unit ids from one column of a CSV file (only rows whose ``where`` column equals
    ``value`` when given), e.g. the units of a released descriptions file.

    A missing file gives ``file:PATH``, which the neuron selection rejects when the run starts;
    :func:`check_data` names the missing data folder first when the path came from ``data.*``.
    """
    import csv

    file = Path(str(path)).expanduser()
    if not file.is_file():
        return f"file:{file}"
    with open(file, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    for name in (column, where):
        if name and rows and name not in rows[0]:
            raise ConfigError(f"csv_units: {file} has no column {name!r}; its columns are "
                              f"{', '.join(rows[0])}")
    picked = [r for r in rows if not where or str(r[where]).strip() == str(value).strip()]
    try:
        return [int(float(r[column])) for r in picked]
    except ValueError:
        raise ConfigError(f"csv_units: column {column!r} of {file} holds non-integer unit ids") from None


def track_of(model_class: type, name: str = "") -> str:
    """The track a model class declares (``TargetModel.track``), checked."""
    track = str(getattr(model_class, "track", "real"))
    if track not in TRACK_DEFAULTS:
        raise ConfigError(f"model {name or model_class.__name__!r} declares track {track!r}; "
                          f"a track is one of {', '.join(TRACK_DEFAULTS)}")
    return track


def is_toy_component(group: str, name: str) -> bool:
    """Whether a registered component belongs to the toy world (its class says ``track =
    "toy"`` or lives in ``dndbench.toyworld``)."""
    cls = registries()[group].entry(name).cls
    track = getattr(cls, "track", None)
    return track == "toy" if isinstance(track, str) else cls.__module__.startswith("dndbench.toyworld")


def _component(group: str, node: Any) -> ComponentConfig:
    from omegaconf import DictConfig, OmegaConf

    if not isinstance(node, DictConfig) or "name" not in node:
        raise ConfigError(f"no {group} selected; choose one with {group}=<name>")
    registry = registries()[group]
    name = node["name"]
    cls = registry.entry(name).config_class
    check_keys(node, cls, f"{group} {name!r}")
    obj = OmegaConf.to_object(node)
    if not isinstance(obj, cls):  # a YAML-defined node: validate it against the typed config
        resolved = OmegaConf.to_container(node, resolve=True)  # interpolations see the whole run
        obj = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(cls), resolved))
    if not isinstance(obj, ComponentConfig):
        raise ConfigError(f"{group} {name!r}: its config is not a ComponentConfig")
    return obj


def check_keys(node: Any, cls: type, where: str) -> None:
    """Raise UnknownOptionError (valid options, close matches) for a key of ``node`` that the
    dataclass ``cls`` lacks, also in nested dataclass options (``neurons``, ``data``); keys
    added with ``+key=`` are caught here, since Hydra accepts them."""
    import dataclasses
    import typing

    from omegaconf import DictConfig

    if not isinstance(node, (DictConfig, dict)):
        return
    fields = {f.name for f in dataclasses.fields(cls)}
    for key in node.keys():
        if key not in fields:
            raise UnknownOptionError(where, str(key), sorted(fields - {"name"}))
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # annotations naming what only a type checker imports: no nested check
        return
    for key in fields:
        nested = [t for t in (hints.get(key), *typing.get_args(hints.get(key)))
                  if isinstance(t, type) and dataclasses.is_dataclass(t)]
        if nested and not issubclass(nested[0], ComponentConfig) and key in node:
            check_keys(node[key], nested[0], key)


#: order of the default suite's rows: methods, then controls, then references
ROLE_ORDER = ("method", "control", "reference")


def default_describers() -> list[ComponentConfig]:
    """Default configs of every describer in the default suite: methods, then controls, then
    references (each by name)."""
    from dndbench.describers.base import DESCRIBERS

    entries = [e for e in DESCRIBERS.entries() if e.in_default_suite]
    rank = {role: i for i, role in enumerate(ROLE_ORDER)}
    entries.sort(key=lambda e: rank.get(getattr(e.cls, "role", "method"), len(rank)))
    return [DESCRIBERS.config(e.name) for e in entries]


def to_run_spec(cfg: Any, overrides: list[str] | None = None) -> RunSpec:
    """Turn a composed Hydra config into a :class:`RunSpec`; errors become ConfigError.

    Also applies the track's option defaults and the data folders (see the module docstring);
    what is missing is recorded in ``missing_data`` for :func:`check_data`, so composing never
    needs the data."""
    from omegaconf import OmegaConf

    describer_node, metric_node = cfg.describer, cfg.metric
    for group, node in (("describer", describer_node), ("metric", metric_node)):
        extra = sorted(str(k) for k in node.keys() if k != "name") if node is not None else []
        if node is not None and node.get("name") == ALL and extra:
            raise ConfigError(f"{group}={ALL} runs every default {group} with its defaults, so "
                              f"{group}.{extra[0]} applies to none; choose one with "
                              f"{group}=<name> to set its options")
    describers = (default_describers() if describer_node.get("name") == ALL
                  else [_component("describer", describer_node)])
    metrics = None if metric_node.get("name") == ALL else [_component("metric", metric_node)]
    components = set(registries()) | {"hydra"}
    check_keys({k: v for k, v in cfg.items() if k not in components}, RunConfig, "the run")
    options = OmegaConf.to_object(OmegaConf.merge(
        OmegaConf.structured(RunConfig), {k: v for k, v in cfg.items() if k not in components}))
    if not isinstance(options, RunConfig):
        raise ConfigError("the run's options do not form a RunConfig")
    backends = {kind: _component(kind, cfg[kind]) for kind in backend_registries()
                if cfg.get(kind) is not None}
    spec = RunSpec(model=_component("model", cfg.model), probe=_component("probe", cfg.probe),
                   describers=describers, metrics=metrics, neurons=options.neurons,
                   options=options, backends=backends, overrides=list(overrides or []),
                   describer_suite=describer_node.get("name") == ALL)
    apply_data(spec, data_references(cfg))
    apply_track(spec)
    return spec


# -- tracks ----------------------------------------------------------------------------------------
def _given(spec: RunSpec, key: str) -> bool:
    """Whether the command line set ``key`` (``captioner=toy``, ``describer.concept_set=...``)."""
    return any(o.lstrip("+~").split("=", 1)[0] == key for o in spec.overrides)


def apply_track(spec: RunSpec) -> None:
    """Record the model's track; on the real track, warn about toy-world components and fill
    the options that have real defaults."""
    model_cls = registries()["model"].entry(spec.model.name).cls
    spec.track = track_of(model_cls, spec.model.name)
    if spec.track != "real":
        return
    slots = [("probe", spec.probe), *spec.backends.items()]
    for group, config in slots:
        if is_toy_component(group, config.name):
            spec.warnings.append(
                f"model {spec.model.name!r} is a real model but {group}={config.name} is a "
                f"toy-world component, chosen explicitly: this run is not the paper's setup")
    published = spec.options.data.published
    for (group, name, option), (file, what) in REAL_OPTION_DEFAULTS.items():
        configs = spec.describers if group == "describer" else (spec.metrics or [])
        for config in configs:
            if config.name != name or not hasattr(config, option):
                continue
            default = getattr(type(config)(name=name), option)
            if getattr(config, option) != default:
                continue
            key = f"{group}.{option}"
            if _given(spec, key):
                spec.warnings.append(f"model {spec.model.name!r} is a real model but {key}="
                                     f"{default} is the toy world's, chosen explicitly")
            elif published:
                setattr(config, option, str(Path(published).expanduser() / file))
            else:
                spec.missing_data.append(missing_message(
                    "published", f"{key} (real track: {what}, {file})"))
    _class_strings(spec)


def _class_strings(spec: RunSpec) -> None:
    """Real ImageNet models name their classes with the papers' strings (``imagenet_labels.txt``
    of ``data.published``) when that folder is set; otherwise say so once for final layers."""
    model_cls = registries()["model"].entry(spec.model.name).cls
    file = getattr(model_cls, "class_strings_file", "")
    if not file or not hasattr(spec.model, "class_strings") or spec.model.class_strings:
        return
    published = spec.options.data.published
    if published:
        spec.model.class_strings = str(Path(published).expanduser() / file)
    elif "final" in str(spec.neurons.layer) or "fc" in str(spec.neurons.layer):
        spec.warnings.append(
            f"final-layer class strings are torchvision's short names, not the papers' {file}: "
            f"set data.published=PATH or export {DATA_VARIABLES['published']}=PATH "
            f"(or model.class_strings=/path/to/{file})")


# -- data folders ----------------------------------------------------------------------------------
def missing_message(data: str, needed_by: str) -> str:
    """One line: which data folder is missing, who needs it and how to set it."""
    var = DATA_VARIABLES[data]
    return (f"{needed_by} needs {DATA_CONTENTS[data]}: set data.{data}=/path/to/it or export "
            f"{var}=/path/to/it")


def data_references(cfg: Any) -> list[tuple[str, str]]:
    """``(option, data folder)`` for every option of the composed config that interpolates
    ``${data.<folder>}`` (e.g. a preset's ``describer.path``); ``hydra`` and ``data`` skipped."""
    from omegaconf import OmegaConf

    found: list[tuple[str, str]] = []

    def walk(node: Any, key: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{key}.{k}" if key else str(k))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{key}[{i}]")
        elif isinstance(node, str):
            for data in DATA_VARIABLES:
                if "${data." + data + "}" in node:
                    found.append((key, data))

    raw = OmegaConf.to_container(cfg, resolve=False)
    if isinstance(raw, dict):
        walk({k: v for k, v in raw.items() if k not in ("hydra", "data")}, "")
    return found


def _needs_probe(spec: RunSpec) -> bool:
    from dndbench.describers.base import DESCRIBERS

    return any(getattr(DESCRIBERS.entry(d.name).cls, "needs_probe", True) for d in spec.describers)


def apply_data(spec: RunSpec, references: list[tuple[str, str]]) -> None:
    """Fill probe roots left at their defaults from ``data.*``; record what is missing (probe
    folders only when a describer needs the probe)."""
    data = spec.options.data
    needs_probe = _needs_probe(spec)
    probe = spec.probe
    for option, folder in PROBE_ROOTS.get(probe.name, {}).items():
        value = getattr(probe, option, None)
        if value is None:
            continue
        default = getattr(type(probe)(name=probe.name), option)
        if value == default and getattr(data, folder):
            value = getattr(data, folder)
            setattr(probe, option, value)
        if folder == "broden" and not value:
            value = BRODEN_DEFAULT_ROOT
        if needs_probe and (not value or not Path(str(value)).expanduser().is_dir()):
            where = f"probe {probe.name!r} (probe.{option}" + (f"={value})" if value else ")")
            spec.missing_data.append(missing_message(folder, where))
    for option, folder in references:
        if option.split(".", 1)[0] == "probe" and not needs_probe:
            continue
        if not getattr(data, folder):
            spec.missing_data.append(missing_message(folder, option))


def check_data(spec: RunSpec) -> None:
    """Raise a one-line ConfigError for the first data folder the run needs and lacks."""
    if spec.missing_data:
        more = len(spec.missing_data) - 1
        raise ConfigError(spec.missing_data[0] + (f" (and {more} more missing data folder"
                                                  f"{'s' if more > 1 else ''})" if more else ""))


# -- a user's config overlay (``--config-dir``) ----------------------------------------------------
def overlay_options(config_dir: str | None) -> dict[str, set[str]]:
    """The group options a ``--config-dir`` folder adds: ``{group: {name, ...}}`` from its
    ``<group>/<name>.yaml`` files (nested groups as ``a/b``)."""
    if not config_dir:
        return {}
    root = Path(config_dir).expanduser()
    if not root.is_dir():
        raise ConfigError(f"--config-dir {config_dir}: no such folder")
    out: dict[str, set[str]] = {}
    for path in root.rglob("*.yaml"):
        group = path.parent.relative_to(root).as_posix()
        if group != ".":
            out.setdefault(group, set()).add(path.stem)
    return out


def overlay_searchpath(config_dir: str | None) -> list[str]:
    """The override that adds a ``--config-dir`` folder to the search path of ``hydra.compose``
    (what ``--config-dir`` does for ``hydra.main``)."""
    if not config_dir:
        return []
    return [f"hydra.searchpath=[file://{Path(config_dir).expanduser().resolve()}]"]
