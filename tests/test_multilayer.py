"""Runs that span several layers: layer selection (``neurons.layer`` lists, ``planted``), one
context per layer, and run directories with a ``layer`` column and per-layer summaries."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from dndbench import pipeline
from dndbench.cache import Cache
from dndbench.config import RunConfig, RunSpec
from dndbench.describers.base import DESCRIBERS
from dndbench.describers.controls import ground_truth
from dndbench.errors import ConfigError
from dndbench.metrics.base import Metric, MetricConfig
from dndbench.neurons import NeuronsConfig, layer_names, resolve_neuron_sets, resolve_neurons
from dndbench.registry import Registry
from dndbench.results.records import write_run
from dndbench.testing.kit import TinyModel, TinyProbe

PLANTED = {"conv1": {1: "red", 5: "green"}, "layer1": {0: "blue", 4: "yellow", 9: "red"}}
FRONT = ["setting", "describer", "model", "layer", "probe", "neuron_set", "num_units", "unit"]


class PlantedTiny(TinyModel):
    """The kit's tiny model with planted units in two layers."""

    def planted_concepts(self, layer: str) -> dict[int, str]:
        return dict(PLANTED.get(layer, {}))


class MatchesTruth(Metric):
    """1 where the label is the unit's ground truth, else 0 (any layer with ground truth)."""

    @dataclass
    class Config(MetricConfig):
        pass

    def applies_to(self, ctx) -> bool:
        return bool(ground_truth(ctx))

    def score(self, descriptions, ctx):
        truth = ground_truth(ctx)
        return pd.DataFrame([{"unit": int(r.unit), "metric": "matches_truth",
                              "value": float(truth.get(int(r.unit)) == r.label)}
                             for r in descriptions.itertuples()])


@pytest.fixture
def tiny_world(monkeypatch: pytest.MonkeyPatch) -> None:
    """The pipeline's model, probe and metric registries hold only the tiny components."""
    for attr, kind, name, cls in [("MODELS", "model", "tiny_planted", PlantedTiny),
                                  ("PROBES", "probe", "tiny", TinyProbe),
                                  ("METRICS", "metric", "matches_truth", MatchesTruth)]:
        registry: Registry = Registry(kind)
        registry.register(name, origin="test")(cls)
        monkeypatch.setattr(pipeline, attr, registry)


def spec(layer, describers, units="planted") -> RunSpec:
    return RunSpec(model=PlantedTiny.Config(name="tiny_planted"),
                   probe=TinyProbe.Config(name="tiny", size=16),
                   describers=[DESCRIBERS.config(name, **options) for name, options in describers],
                   metrics=None, neurons=NeuronsConfig(layer=layer, units=units),
                   options=RunConfig(device="cpu", batch_size=8, progress=False),
                   describer_suite=True)


def run(tmp_path: Path, job: RunSpec) -> tuple[pipeline.JobResult, Path]:
    result = pipeline.run_job(job, Cache(tmp_path / "cache"))
    out = tmp_path / "run"
    write_run(out, result, {}, [], "tiny_planted", "tiny", 0.0)
    return result, out


CONTROLS = [("constant", {}), ("oracle", {}), ("shuffled", {"source": "oracle"})]


def compose_spec(overrides: list[str]) -> RunSpec:
    from hydra import compose, initialize_config_module

    from dndbench.config import register_configs, to_run_spec

    register_configs()
    with initialize_config_module("dndbench.conf", version_base="1.3"):
        return to_run_spec(compose("config", overrides=overrides))


@pytest.mark.parametrize("layer", ["planted", "all", "planted,layer1", ["conv1", "layer1"]])
def test_planted_layers_resolve_to_every_layer_with_planted_units(layer) -> None:
    model = PlantedTiny(TinyModel.Config(name="tiny"))
    sets = resolve_neuron_sets(model, NeuronsConfig(layer=layer, units="planted"))
    assert [(s.layer, list(s.units)) for s in sets] == [("conv1", [1, 5]), ("layer1", [0, 4, 9])]


@pytest.mark.parametrize("layer, expected", [
    ("final", ["fc"]), ("layer1, fc", ["layer1", "fc"]), (["fc", "final", "conv1"], ["fc", "conv1"]),
])
def test_layer_lists_keep_order_and_drop_repeats(layer, expected) -> None:
    model = PlantedTiny(TinyModel.Config(name="tiny"))
    assert layer_names(model, NeuronsConfig(layer=layer)) == expected


@pytest.mark.parametrize("config, pattern", [
    (NeuronsConfig(layer="all", units="first:2"), "needs neurons.units=planted"),
    (NeuronsConfig(layer="conv1,nope"), "no layer 'nope'"),
    (NeuronsConfig(layer=" , "), "empty"),
])
def test_bad_layer_selections_are_config_errors(config: NeuronsConfig, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        resolve_neuron_sets(PlantedTiny(TinyModel.Config(name="tiny")), config)


def test_models_without_planted_units_and_single_layer_resolution() -> None:
    with pytest.raises(ConfigError, match="no planted units in any layer"):
        resolve_neuron_sets(TinyModel(TinyModel.Config(name="tiny")), NeuronsConfig(layer="planted"))
    model = PlantedTiny(TinyModel.Config(name="tiny"))
    assert resolve_neurons(model, NeuronsConfig(layer="final", units="first:2")).units == (0, 1)
    with pytest.raises(ConfigError, match="selects 2 layers"):
        resolve_neurons(model, NeuronsConfig(layer="planted", units="planted"))


def test_toynet_planted_config_covers_every_planted_layer(monkeypatch: pytest.MonkeyPatch) -> None:
    """``neurons=planted`` on ToyNet: both layers of the training config (no training: the
    recorded planted units are read from the config the weights would be trained with)."""
    from dndbench.models.base import MODELS
    from dndbench.toyworld.target_model import ToyNetModel
    from dndbench.toyworld.train_toynet import TrainConfig, planted_map

    planted = planted_map(TrainConfig())
    meta = {"planted": {layer: {str(u): c for u, c in units.items()} for layer, units in planted.items()}}
    monkeypatch.setattr(ToyNetModel, "meta", lambda self: meta)
    job = compose_spec(["neurons=planted"])
    sets = resolve_neuron_sets(MODELS.create(job.model), job.neurons)
    assert [s.layer for s in sets] == sorted(planted) and len(sets) >= 2
    assert {s.layer: set(s.units) for s in sets} == {k: set(v) for k, v in planted.items()}


def test_layer_list_override_composes() -> None:
    assert compose_spec(["neurons.layer=[layer2,layer3]"]).neurons.layer == ["layer2", "layer3"]
    assert compose_spec(["neurons.layer='layer2,layer3'"]).neurons.layer == "layer2,layer3"


def test_a_run_over_two_layers_writes_rows_and_summaries_per_layer(tmp_path: Path,
                                                                   tiny_world: None) -> None:
    result, out = run(tmp_path, spec("planted", CONTROLS))
    assert result.layers == ["conv1", "layer1"] and len(result.contexts) == 2
    assert result.neurons.layer == "conv1" and result.context is result.contexts[0]
    descriptions = pd.read_csv(out / "descriptions.csv")
    scores = pd.read_csv(out / "scores.csv")
    for table in (descriptions, scores):
        assert list(table.columns[:8]) == FRONT and table.columns[-1] == "role"
        assert set(table.layer) == {"conv1", "layer1"}
        assert set(table.setting) == {"constant", "oracle", "shuffled(source=oracle)"}
    per_layer = descriptions.groupby(["layer", "setting"]).unit.apply(sorted).to_dict()
    assert per_layer[("conv1", "oracle")] == [1, 5]
    assert per_layer[("layer1", "shuffled(source=oracle)")] == [0, 4, 9]
    assert descriptions.groupby("layer").num_units.first().to_dict() == {"conv1": 2, "layer1": 3}
    assert descriptions.groupby("layer").neuron_set.nunique().to_dict() == {"conv1": 1, "layer1": 1}
    roles = descriptions.groupby("setting").role.first().to_dict()
    assert roles == {"constant": "control", "oracle": "reference",
                     "shuffled(source=oracle)": "control"}

    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["layers"]) == {"conv1", "layer1"}
    for layer, n in (("conv1", 2), ("layer1", 3)):
        entry = summary["layers"][layer]["describers"]["oracle"]["metrics"]["matches_truth"]
        assert entry == {"mean": 1.0, "n": n}
        assert summary["layers"][layer]["describers"]["constant"]["metrics"]["matches_truth"] \
            == {"mean": 0.0, "n": n}
    pooled = summary["describers"]["oracle"]
    assert pooled["role"] == "reference" and pooled["metrics"]["matches_truth"] == {"mean": 1.0, "n": 5}
    # the shuffled control: a derangement within each layer, so no unit keeps its own truth
    assert summary["describers"]["shuffled(source=oracle)"]["metrics"]["matches_truth"]["mean"] == 0.0
    assert summary["metrics"]["oracle/matches_truth"]["n"] == 5

    record = json.loads((out / "run.json").read_text())
    assert [n["layer"] for n in record["neuron_sets"]] == ["conv1", "layer1"]
    assert record["counts"]["units"] == 5
    assert {"conv1/oracle", "layer1/oracle"} <= set(record["describers"])


def test_the_suite_skips_the_oracle_on_layers_without_ground_truth(tmp_path: Path,
                                                                   tiny_world: None) -> None:
    result, out = run(tmp_path, spec(["conv1", "pool"], CONTROLS, units="first:2"))
    ran = {(r.layer, r.setting) for r in result.runs}
    assert ("conv1", "oracle") in ran and ("pool", "oracle") not in ran
    assert ("pool", "shuffled(source=oracle)") not in ran and ("pool", "constant") in ran
    summary = json.loads((out / "summary.json").read_text())
    assert "oracle" not in summary["layers"]["pool"]["describers"]
    explicit = spec(["conv1", "pool"], [("oracle", {})], units="first:2")
    explicit.describer_suite = False
    with pytest.raises(ConfigError, match="no ground truth"):
        pipeline.run_job(explicit, Cache(tmp_path / "cache"))


def test_a_single_layer_run_keeps_its_layout_with_role_last(tmp_path: Path,
                                                            tiny_world: None) -> None:
    _, out = run(tmp_path, spec("final", CONTROLS, units="all"))
    descriptions = pd.read_csv(out / "descriptions.csv")
    assert list(descriptions.columns) == [*FRONT, "label", "label_2", "label_3", "score", "role"]
    assert list(pd.read_csv(out / "scores.csv").columns) == [*FRONT, "metric", "value", "role"]
    assert list(descriptions.setting.unique()) == ["constant", "oracle", "shuffled(source=oracle)"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["layers"]["fc"]["describers"] == summary["describers"]
    record = json.loads((out / "run.json").read_text())
    assert record["neurons"]["layer"] == "fc" and set(record["describers"]) == {
        "constant", "oracle", "shuffled(source=oracle)"}
    assert "describe/oracle" in record["timings"]
