"""Plugin-author kit: a tiny model, a tiny annotated probe and conformance checks.

A plugin's own tests call :func:`check_describer` / :func:`check_metric`; they run the component
on :func:`tiny_context` (seconds on a CPU, no download) and assert that its output follows the
contract the pipeline relies on.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from dndbench.cache import Cache, stable_hash
from dndbench.context import Context
from dndbench.describers.base import Describer, DescriberConfig, Description
from dndbench.metrics.base import Metric
from dndbench.models.base import ModelConfig, TargetModel
from dndbench.probes.base import Annotation, Concept, ProbeConfig, ProbeSet

if TYPE_CHECKING:
    import pandas as pd
    import torch
    from PIL import Image

TINY_COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 60, 220),
                "yellow": (230, 220, 40)}


class TinyModel(TargetModel):
    """A 3-layer CNN on 32x32 inputs with 4 named classes; seeded random weights."""

    @dataclass
    class Config(ModelConfig):
        seed: int = 0

    final_layer = "fc"
    input_size = 32

    def build(self, pretrained: bool) -> "torch.nn.Module":
        from collections import OrderedDict

        import torch
        from torch import nn

        torch.manual_seed(self.config.seed)  # type: ignore[attr-defined]
        return nn.Sequential(OrderedDict({
            "conv1": nn.Conv2d(3, 8, 3, padding=1), "relu1": nn.ReLU(),
            "layer1": nn.Conv2d(8, 16, 3, stride=2, padding=1), "relu2": nn.ReLU(),
            "pool": nn.AdaptiveAvgPool2d(1), "flatten": nn.Flatten(),
            "fc": nn.Linear(16, len(TINY_COLOURS))}))

    def transform(self) -> Callable[["Image.Image"], "torch.Tensor"]:
        from torchvision import transforms

        return transforms.Compose([transforms.Resize((32, 32)), transforms.ToTensor()])

    def class_names(self) -> list[str]:
        return list(TINY_COLOURS)


class TinyProbe(ProbeSet):
    """``size`` 32x32 images: a coloured square on grey; colours annotated per pixel."""

    @dataclass
    class Config(ProbeConfig):
        size: int = 24
        seed: int = 0

    def __len__(self) -> int:
        return self.config.size  # type: ignore[attr-defined]

    def _layout(self, index: int) -> tuple[int, int, int, int]:
        rng = np.random.default_rng([self.config.seed, index])  # type: ignore[attr-defined]
        colour = int(rng.integers(len(TINY_COLOURS)))
        x, y = rng.integers(0, 16, size=2)
        side = int(rng.integers(8, 16))
        return colour, int(x), int(y), side

    def image(self, index: int) -> "Image.Image":
        from PIL import Image

        colour, x, y, side = self._layout(index)
        pixels = np.full((32, 32, 3), 128, np.uint8)
        pixels[y:y + side, x:x + side] = list(TINY_COLOURS.values())[colour]
        return Image.fromarray(pixels)

    def fingerprint(self) -> str:
        return stable_hash("tiny-probe/v1", self.config)

    def concepts(self) -> list[Concept]:
        return [Concept(i + 1, name, "colour") for i, name in enumerate(TINY_COLOURS)]

    def annotation(self, index: int) -> Annotation:
        colour, x, y, side = self._layout(index)
        labels = np.zeros((1, 32, 32), np.int64)
        labels[0, y:y + side, x:x + side] = colour + 1
        return Annotation(pixel={"colour": labels})


def tiny_context(tmp_dir: Path | str, layer: str = "fc", units: list[int] | None = None,
                 probe_size: int = 24) -> Context:
    """A complete context on the tiny model and probe, caching under ``tmp_dir``."""
    model = TinyModel(TinyModel.Config(name="tiny"))
    probe = TinyProbe(TinyProbe.Config(name="tiny", size=probe_size))
    cache = Cache(tmp_dir)
    model.cache = probe.cache = cache
    layer = model.resolve_layer(layer)
    units = list(range(model.num_units(layer))) if units is None else units
    return Context(model=model, probe=probe, layer=layer, units=units, cache=cache,
                   batch_size=8, progress=False)


def check_describer(describer: Describer, ctx: Context) -> "pd.DataFrame":
    """Run ``describer`` on ``ctx`` and assert the output contract; return the table."""
    from dndbench.pipeline import descriptions_frame

    assert isinstance(describer.config, DescriberConfig), "config must derive from DescriberConfig"
    out = describer.describe(ctx)
    assert isinstance(out, list) and all(isinstance(d, Description) for d in out), \
        "describe() must return a list of Description"
    units = [d.unit for d in out]
    assert len(set(units)) == len(units), "one description per unit"
    assert set(units) <= set(ctx.units), "descriptions only for the requested units"
    assert all(isinstance(d.label, str) and d.label.strip() for d in out), "labels are non-empty"
    frame = descriptions_frame(out)
    again = descriptions_frame(describer.describe(ctx))
    assert frame.equals(again), "describing the same units twice must give the same result"
    return frame


def check_metric(metric: Metric, descriptions: "pd.DataFrame", ctx: Context) -> "pd.DataFrame":
    """Score ``descriptions`` with ``metric`` and assert the output contract; return the scores."""
    scores = metric.score(descriptions, ctx)
    assert list(scores.columns[:3]) == ["unit", "metric", "value"], \
        "score() must return columns unit, metric, value"
    assert set(scores["unit"]) <= set(descriptions["unit"]), "scores only for described units"
    assert np.isfinite(scores["value"].astype(float)).all(), "scores must be finite"
    return scores
