"""Cost beside quality: per (setting, layer) seconds and model calls per unit, from the run's
counters, in costs.csv and summary.json."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dndbench import costs, pipeline
from dndbench.backends.base import CAPTIONERS, Captioner
from dndbench.cache import Cache
from dndbench.config import RunConfig, RunSpec
from dndbench.describers.base import DESCRIBERS
from dndbench.neurons import NeuronsConfig
from dndbench.registry import Registry
from dndbench.results.records import write_run
from dndbench.testing.kit import TinyModel, TinyProbe, tiny_context

CAPTIONER = "costs_test_captioner"
#: caption_word's setting label: the captioner differs from the toy track's default, so it shows
WORDS = f"caption_word(k=3)[captioner={CAPTIONER}]"


@CAPTIONERS.register(CAPTIONER)
class CountingCaptioner(Captioner):
    """Captions an image by its mean brightness (offline, instant)."""

    def _caption_batch(self, images):
        return [f"a {'bright' if np.asarray(im.convert('L')).mean() > 128 else 'dark'} square"
                for im in images]


@pytest.fixture
def tiny_world(monkeypatch: pytest.MonkeyPatch) -> None:
    for attr, kind, name, cls in [("MODELS", "model", "tiny", TinyModel),
                                  ("PROBES", "probe", "tiny", TinyProbe),
                                  ("METRICS", "metric", "none", None)]:
        registry: Registry = Registry(kind)
        if cls is not None:
            registry.register(name, origin="test")(cls)
        monkeypatch.setattr(pipeline, attr, registry)


def job(layers) -> RunSpec:
    return RunSpec(model=TinyModel.Config(name="tiny"), probe=TinyProbe.Config(name="tiny", size=16),
                   describers=[DESCRIBERS.config("caption_word", k=3), DESCRIBERS.config("constant")],
                   metrics=None, neurons=NeuronsConfig(layer=layers, units="first:3"),
                   options=RunConfig(device="cpu", batch_size=8, progress=False),
                   backends={"captioner": CAPTIONERS.config(CAPTIONER, device="cpu")})


def run(tmp_path: Path, name: str, layers) -> tuple[pipeline.JobResult, Path]:
    result = pipeline.run_job(job(layers), Cache(tmp_path / "cache"))
    write_run(tmp_path / name, result, {}, [], "tiny", "tiny", 0.0)
    return result, tmp_path / name


def test_costs_csv_holds_per_unit_figures_consistent_with_the_counters(tmp_path: Path,
                                                                      tiny_world: None) -> None:
    result, out = run(tmp_path, "cold", ["conv1", "fc"])
    table = pd.read_csv(out / "costs.csv")
    assert list(table.columns) == costs.COLUMNS
    assert list(table.columns[:6]) == ["setting", "describer", "layer", "units", "seconds",
                                       "seconds_per_unit"]
    assert set(zip(table.setting, table.layer)) == {(s, layer) for s in (WORDS, "constant")
                                                   for layer in ("conv1", "fc")}
    assert (table.units == 3).all()
    assert (table.seconds_per_unit - table.seconds / table.units).abs().max() < 1e-4
    captioner = result.contexts[0].backend("captioner")
    words = table[table.describer == "caption_word"].set_index("layer")
    # every caption the backend computed is charged to caption_word, layer by layer
    assert (words.captions_per_unit * words.units).sum() == captioner.computed > 0
    for run_ in result.runs:
        if run_.describer == "caption_word":
            assert run_.counters["caption_word/captioned_images"] == run_.cost["captions"]
            assert words.loc[run_.layer, "captions_per_unit"] == run_.cost["captions"] / 3
    # the shared probe pass is accounted on its own, not charged to the first describer
    assert {"activations/conv1", "activations/fc"} <= set(result.timings)
    assert (table.forward_images_per_unit == 0).all()
    constant = table[table.describer == "constant"]
    per_unit = [c for c in costs.COLUMNS if c.endswith("_per_unit") and c != "seconds_per_unit"]
    assert (constant[per_unit] == 0).all().all()

    summary = json.loads((out / "summary.json").read_text())
    pooled = summary["costs"][WORDS]
    assert pooled["units"] == 6
    assert pooled["captions_per_unit"] == pytest.approx(captioner.computed / 6)
    layer = summary["layers"]["fc"]["costs"][WORDS]
    assert layer["captions_per_unit"] == words.loc["fc", "captions_per_unit"]


def test_a_warm_rerun_costs_no_model_calls(tmp_path: Path, tiny_world: None) -> None:
    run(tmp_path, "cold", "fc")
    result, out = run(tmp_path, "warm", "fc")
    assert all(r.from_cache for r in result.runs)
    table = pd.read_csv(out / "costs.csv")
    assert (table.captions_per_unit == 0).all() and (table.forward_images_per_unit == 0).all()


def test_llm_calls_count_and_unreported_tokens_are_unknown(tmp_path: Path) -> None:
    from dndbench.backends.base import LLMS

    ctx = tiny_context(tmp_path, backends={"llm": LLMS.config("keyword", device="cpu")})
    before = costs.snapshot(ctx)
    assert before["llm_calls"] == 0 and before["llm_tokens"] == 0  # no LLM yet: nothing spent
    llm = ctx.backend("llm")
    llm.chat([[{"role": "user", "content": "Describe: red, red, blue"}]])
    spent = costs.difference(costs.snapshot(ctx), before)
    assert spent["llm_calls"] == 1 and math.isnan(spent["llm_tokens"])
    idle = costs.snapshot(ctx)
    assert costs.difference(costs.snapshot(ctx), idle)["llm_tokens"] == 0
    llm.tokens = 42  # a backend that reports its tokens
    row = costs.cost_row("s", "d", "fc", 2, 1.0, costs.difference(costs.snapshot(ctx), idle))
    assert row["llm_tokens_per_unit"] == 21 and row["seconds_per_unit"] == 0.5
