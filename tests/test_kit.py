"""The plugin-author kit (its checks accept conforming components and reject broken ones)
and the activation stage on the tiny model."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dndbench.backends.base import BackendConfig, Captioner, VisionLanguageModel
from dndbench.backends.call_cache import services
from dndbench.cache import Cache
from dndbench.describers.base import Describer, DescriberConfig, Description
from dndbench.metrics.base import Metric, MetricConfig
from dndbench.testing.kit import (
    check_backend,
    check_describer,
    check_metric,
    tiny_backends,
    tiny_context,
    tiny_descriptions,
)


class ArgmaxImage(Describer):
    """Labels a unit with the index of its top image (a conformance-test describer)."""

    Config = DescriberConfig

    def describe(self, ctx):
        acts = ctx.activations.pooled(ctx.layer).mean
        return [Description(unit=u, label=f"image {int(acts[:, u].argmax())}") for u in ctx.units]


class Duplicating(ArgmaxImage):
    def describe(self, ctx):
        return super().describe(ctx) * 2


def test_check_describer_accepts_a_conforming_describer(tmp_path: Path) -> None:
    frame = check_describer(ArgmaxImage(DescriberConfig(name="argmax")), tiny_context(tmp_path))
    assert list(frame.unit) == [0, 1, 2, 3]


def test_check_describer_rejects_duplicate_units(tmp_path: Path) -> None:
    with pytest.raises(AssertionError, match="one description per unit"):
        check_describer(Duplicating(DescriberConfig(name="dup")), tiny_context(tmp_path))


def test_pooled_activations_are_cached_and_match_a_direct_forward(tmp_path: Path) -> None:
    import torch

    ctx = tiny_context(tmp_path, layer="layer1")
    pooled = ctx.activations.pooled("layer1")
    assert pooled.mean.shape == (24, 16)
    assert (pooled.max >= pooled.mean).all() and (pooled.mean >= pooled.min).all()
    forwarded = ctx.activations.images_forwarded
    again = ctx.activations.pooled("layer1")
    assert ctx.activations.images_forwarded == forwarded, "second call must hit the cache"
    np.testing.assert_array_equal(again.mean, pooled.mean)
    net = ctx.model.network()
    transform = ctx.model.transform()
    with torch.no_grad():
        x = torch.stack([transform(ctx.probe.image(i)) for i in range(3)])
        direct = net[:3](x).mean((2, 3)).numpy()  # conv1, relu1, layer1 (the hooked one)
    np.testing.assert_allclose(pooled.mean[:3], direct, rtol=1e-5, atol=1e-6)


def test_streamed_maps_equal_the_chosen_image_maps(tmp_path: Path) -> None:
    ctx = tiny_context(tmp_path, layer="layer1")
    streamed = np.concatenate([m.numpy() for _, m in ctx.activations.stream_maps("layer1", [2, 5])])
    chosen = ctx.activations.maps("layer1", [2, 5], [0, 7, 23])
    np.testing.assert_allclose(streamed[[0, 7, 23]], chosen, rtol=1e-5, atol=1e-6)
    assert streamed.shape == (24, 2, 16, 16)


def test_a_new_context_on_the_same_cache_recomputes_nothing(tmp_path: Path) -> None:
    first = tiny_context(tmp_path, layer="layer1")
    first.activations.pooled("layer1")
    second = tiny_context(tmp_path, layer="layer1")
    second.activations.pooled("layer1")
    assert second.activations.images_forwarded == 0
    assert second.cache.hits == {"activations": 1}


class OutsideUnits(ArgmaxImage):
    def describe(self, ctx):
        return super().describe(ctx) + [Description(unit=max(ctx.units) + 1, label="extra")]


def test_check_describer_rejects_units_not_asked_for(tmp_path: Path) -> None:
    with pytest.raises(AssertionError, match="only for the requested units"):
        check_describer(OutsideUnits(DescriberConfig(name="outside")), tiny_context(tmp_path))


# -- check_metric ---------------------------------------------------------------------------------
class LabelLength(Metric):
    """Two figures per described unit: the label's length and NaN (an undefined figure)."""

    Config = MetricConfig

    def score(self, descriptions, ctx):
        units = descriptions["unit"].tolist()
        return pd.DataFrame({"unit": units * 2, "metric": ["length"] * len(units) + ["nan"] * len(units),
                             "value": [float(len(t)) for t in descriptions["label"]] + [np.nan] * len(units)})


class Duplicated(LabelLength):
    def score(self, descriptions, ctx):
        return pd.concat([super().score(descriptions, ctx)] * 2)


class Infinite(LabelLength):
    def score(self, descriptions, ctx):
        return super().score(descriptions, ctx).assign(value=np.inf)


class Undescribed(LabelLength):
    def score(self, descriptions, ctx):
        scores = super().score(descriptions, ctx)
        return scores.assign(unit=scores["unit"] + 100)


class WrongColumns(LabelLength):
    def score(self, descriptions, ctx):
        return super().score(descriptions, ctx).rename(columns={"value": "score"})


class Drifting(LabelLength):
    calls = 0

    def score(self, descriptions, ctx):
        Drifting.calls += 1
        return super().score(descriptions, ctx).assign(value=float(Drifting.calls))


def test_check_metric_accepts_a_conforming_metric_with_nan(tmp_path: Path) -> None:
    ctx = tiny_context(tmp_path)
    descriptions = tiny_descriptions(ctx)
    scores = check_metric(LabelLength(MetricConfig(name="length")), descriptions, ctx)
    assert len(scores) == 2 * len(ctx.units) and scores["value"].isna().sum() == len(ctx.units)
    assert list(descriptions["label"]) == ["red", "blue", "blue", "red"]  # even units: own class


@pytest.mark.parametrize("metric, message", [
    (Duplicated, "one row per"), (Infinite, "finite"), (Undescribed, "described units"),
    (WrongColumns, "columns unit, metric, value"), (Drifting, "twice"),
], ids=["duplicated", "infinite", "undescribed", "wrong_columns", "drifting"])
def test_check_metric_rejects(metric: type, message: str, tmp_path: Path) -> None:
    ctx = tiny_context(tmp_path)
    with pytest.raises(AssertionError, match=message):
        check_metric(metric(MetricConfig(name="bad")), tiny_descriptions(ctx), ctx)


# -- check_backend --------------------------------------------------------------------------------
class SizeCaptioner(Captioner):
    """Captions an image with its size (a conforming captioner)."""

    def _caption_batch(self, images):
        return [f"an image of {im.size[0]} pixels" for im in images]


class Uncached(SizeCaptioner):
    def caption(self, images):  # bypasses Backend.cached: computes every time, counts nothing
        return self._caption_batch(list(images))


class Recomputing(SizeCaptioner):
    def caption(self, images):  # computes again on every call
        self.computed += len(images)
        return self._caption_batch(list(images))


class Unnormalised(VisionLanguageModel):
    def _encode_images(self, images):
        return np.ones((len(images), 3), np.float32)

    def _encode_texts(self, texts):
        return np.ones((len(texts), 3), np.float32)


def make_backend(cls: type, tmp_path: Path):
    return cls(BackendConfig(name="kit-test", device="cpu"), **services(Cache(tmp_path)))


def test_check_backend_accepts_a_conforming_captioner(tmp_path: Path) -> None:
    backend = make_backend(SizeCaptioner, tmp_path)
    assert check_backend(backend) == ["an image of 32 pixels"] * 3
    assert backend.computed == 3


@pytest.mark.parametrize("cls, message", [
    (Uncached, "compute its inputs through Backend.cached"),
    (Recomputing, "served from the call cache"),
    (Unnormalised, "L2-normalised"),
], ids=["uncached", "recomputing", "unnormalised"])
def test_check_backend_rejects(cls: type, message: str, tmp_path: Path) -> None:
    with pytest.raises(AssertionError, match=message):
        check_backend(make_backend(cls, tmp_path))


def test_check_backend_needs_a_call_cache() -> None:
    with pytest.raises(AssertionError, match="services"):
        check_backend(SizeCaptioner(BackendConfig(name="kit-test", device="cpu")))


def test_tiny_backends_cover_every_backend_kind_offline() -> None:
    from dndbench.catalog import BACKEND_KINDS

    configs = tiny_backends()
    assert set(configs) == set(BACKEND_KINDS)
    assert all(c.device == "cpu" for c in configs.values())
    assert configs["embedder"].name == "kit_words" and configs["llm"].name == "keyword"
