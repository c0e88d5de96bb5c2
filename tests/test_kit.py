"""The plugin-author kit and the activation stage on the tiny model."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dndbench.describers.base import Describer, DescriberConfig, Description
from dndbench.testing.kit import check_describer, tiny_context


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
