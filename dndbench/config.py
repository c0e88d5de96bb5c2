"""The run's typed configuration and its registration with Hydra's ConfigStore.

Each registered component's ``Config`` dataclass becomes the Hydra config ``<kind>/<name>``, so
``describer=my_method describer.beta=3`` works without any YAML and values are type-checked.
Hydra stops at the CLI: :func:`to_run_spec` turns the composed DictConfig into plain typed
objects and nothing past it sees a DictConfig.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dndbench.errors import ConfigError
from dndbench.catalog import BACKEND_KINDS, KINDS
from dndbench.neurons import NeuronsConfig
from dndbench.registry import ComponentConfig, Registry, registries

#: the special component name that expands to a whole suite (all default describers / metrics)
ALL = "all"


@dataclass
class RunConfig:
    """Top-level options of ``python -m dndbench``."""

    model: Any = None
    probe: Any = None
    describer: Any = None
    metric: Any = None
    neurons: NeuronsConfig = field(default_factory=NeuronsConfig)
    captioner: Any = None
    llm: Any = None
    text2image: Any = None
    vlm: Any = None
    embedder: Any = None
    cache_dir: str = ""  # empty: $DNDBENCH_CACHE or ~/.cache/dndbench
    device: str = "auto"
    batch_size: int = 64
    num_workers: int = 0
    seed: int = 0
    progress: bool = True
    plugins_dir: str = "plugins"


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


def component_registries() -> dict[str, Registry[Any]]:
    """The registries of the non-backend kinds (model, probe, describer, metric), by group name."""
    return registries(tuple(k for k in KINDS if k not in BACKEND_KINDS))


def backend_registries() -> dict[str, Registry[Any]]:
    """The backend registries (captioner, llm, text2image, vlm, embedder), by group name."""
    return registries(BACKEND_KINDS)


def register_configs() -> None:
    """Store the run schema and every registered component config in Hydra's ConfigStore."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="run_schema", node=RunConfig)
    for group, registry in registries().items():
        for entry in registry.entries():
            cs.store(group=group, name=entry.name, node=entry.config_class(name=entry.name))
    for group in ("describer", "metric"):
        cs.store(group=group, name=ALL, node={"name": ALL})


def _component(group: str, node: Any) -> ComponentConfig:
    from omegaconf import DictConfig, OmegaConf

    if not isinstance(node, DictConfig) or "name" not in node:
        raise ConfigError(f"no {group} selected; choose one with {group}=<name>")
    registry = registries()[group]
    name = node["name"]
    cls = registry.entry(name).config_class
    obj = OmegaConf.to_object(node)
    if not isinstance(obj, cls):  # a YAML-defined node: validate it against the typed config
        obj = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(cls), node))
    return obj  # type: ignore[return-value]


def default_describers() -> list[ComponentConfig]:
    """Default configs of every describer in the default suite."""
    from dndbench.describers.base import DESCRIBERS

    return [DESCRIBERS.config(e.name) for e in DESCRIBERS.entries() if e.cls.in_default_suite]


def to_run_spec(cfg: Any, overrides: list[str] | None = None) -> RunSpec:
    """Turn a composed Hydra config into a :class:`RunSpec`; errors become ConfigError."""
    from omegaconf import OmegaConf

    describer_node, metric_node = cfg.describer, cfg.metric
    describers = (default_describers() if describer_node.get("name") == ALL
                  else [_component("describer", describer_node)])
    metrics = None if metric_node.get("name") == ALL else [_component("metric", metric_node)]
    components = set(registries()) | {"hydra"}
    options = OmegaConf.to_object(OmegaConf.merge(
        OmegaConf.structured(RunConfig), {k: v for k, v in cfg.items() if k not in components}))
    backends = {kind: _component(kind, cfg[kind]) for kind in backend_registries()
                if cfg.get(kind) is not None}
    return RunSpec(model=_component("model", cfg.model), probe=_component("probe", cfg.probe),
                   describers=describers, metrics=metrics, neurons=options.neurons,
                   options=options, backends=backends, overrides=list(overrides or []))
