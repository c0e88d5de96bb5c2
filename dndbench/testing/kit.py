"""Plugin-author kit: a tiny model, a tiny annotated probe, offline backends and conformance checks.

A plugin's own tests call :func:`check_describer`, :func:`check_metric` or :func:`check_backend`;
they run the component on :func:`tiny_context` (seconds on a CPU, no download; give it
``backends=tiny_backends()`` for methods that call foundation models) and assert that its output
follows the contract the pipeline relies on.  ``python -m dndbench check-plugin FILE`` runs the
same checks on every component a plugin file registers (:mod:`dndbench.testing.check_plugin`).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from dndbench.backends.base import (
    LLM,
    Backend,
    Captioner,
    TextToImage,
    VisionLanguageModel,
    image_key,
)
from dndbench.backends.embedder import EMBEDDERS, Embedder
from dndbench.cache import Cache, stable_hash
from dndbench.context import Context
from dndbench.describers.base import Describer, DescriberConfig, Description
from dndbench.metrics.base import Metric
from dndbench.models.base import ModelConfig, TargetModel
from dndbench.probes.base import Annotation, Concept, ProbeConfig, ProbeSet
from dndbench.registry import ComponentConfig, registry_for

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

        torch.manual_seed(self.config.seed)
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
        return self.config.size

    def _layout(self, index: int) -> tuple[int, int, int, int]:
        rng = np.random.default_rng([self.config.seed, index])
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


@EMBEDDERS.register("kit_words")
class KitWordEmbedder(Embedder):
    """Bag of hashed words (tests only, registered by the kit): equal strings give cosine 1,
    strings without a shared word about 0; no model to load."""

    def _load_model(self, source: str, local_only: bool) -> None:
        return None

    def _encode(self, model: None, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), 256), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in text.lower().replace(",", " ").split():
                out[row, int(hashlib.sha256(word.encode()).hexdigest(), 16) % 256] += 1.0
        return out


#: options of the trained toy backends that make their first-use training take seconds
TINY_TOY_TRAINING = {"train_images": 256, "epochs": 1}


def tiny_backends() -> dict[str, ComponentConfig]:
    """Offline backend configs for every role, on the CPU: the toy world's captioner, CLIP and
    renderer (trained small on first use), the keyword summariser and :class:`KitWordEmbedder`."""
    configs = {"captioner": ("toy", TINY_TOY_TRAINING), "llm": ("keyword", {}),
               "text2image": ("toy", {"size": 32}), "vlm": ("toy", TINY_TOY_TRAINING),
               "embedder": ("kit_words", {})}
    return {kind: registry_for(kind).config(name, device="cpu", **options)
            for kind, (name, options) in configs.items()}


def tiny_context(tmp_dir: Path | str, layer: str = "fc", units: list[int] | None = None,
                 probe_size: int = 24,
                 backends: dict[str, ComponentConfig] | None = None) -> Context:
    """A complete context on the tiny model and probe, caching under ``tmp_dir``; ``backends``
    are its backend configs by kind (e.g. :func:`tiny_backends`)."""
    model = TinyModel(TinyModel.Config(name="tiny"))
    probe = TinyProbe(TinyProbe.Config(name="tiny", size=probe_size))
    cache = Cache(tmp_dir)
    model.cache = probe.cache = cache
    layer = model.resolve_layer(layer)
    units = list(range(model.num_units(layer))) if units is None else units
    return Context(model=model, probe=probe, layer=layer, units=units, cache=cache,
                   batch_size=8, progress=False, backends=dict(backends or {}))


def tiny_descriptions(ctx: Context) -> "pd.DataFrame":
    """A descriptions table for ``ctx.units`` as a describer run gives it to metrics: even units
    are labelled with their class name (the model's), odd units with another class's."""
    from dndbench.pipeline import descriptions_frame

    names = ctx.model.class_names() or list(TINY_COLOURS)
    labels = {u: names[(u + u % 2) % len(names)] for u in ctx.units}
    return descriptions_frame([Description(unit=u, label=label) for u, label in labels.items()])


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
    """Score ``descriptions`` with ``metric`` and assert the output contract; return the scores.

    The scores are a tidy table with columns ``unit, metric, value`` (first), one row per
    (unit, figure), only for described units, with finite or NaN values; scoring again gives
    the same table."""
    import pandas as pd

    scores = metric.score(descriptions, ctx)
    assert isinstance(scores, pd.DataFrame), "score() must return a pandas DataFrame"
    assert list(scores.columns[:3]) == ["unit", "metric", "value"], \
        "score() must return columns unit, metric, value"
    assert not scores.duplicated(["unit", "metric"]).any(), "one row per (unit, metric)"
    assert set(scores["unit"]) <= set(descriptions["unit"]), "scores only for described units"
    values = scores["value"].astype(float)
    assert not np.isinf(values).any(), "scores must be finite (or NaN where undefined)"
    again = metric.score(descriptions, ctx)
    assert scores.reset_index(drop=True).equals(again.reset_index(drop=True)), \
        "scoring the same descriptions twice must give the same result"
    return scores


def _round_trip_inputs() -> tuple[list["Image.Image"], list[str]]:
    probe = TinyProbe(TinyProbe.Config(name="tiny", size=3))
    return [probe.image(i) for i in range(3)], ["a red square", "blue", "a red square"]


def _call(backend: Backend[Any]) -> list[Any]:
    """The main method of each backend kind on the tiny inputs (its outputs, as a list)."""
    images, texts = _round_trip_inputs()
    if isinstance(backend, Captioner):
        return list(backend.caption(images))
    if isinstance(backend, LLM):
        return list(backend.chat([[{"role": "user", "content": f"Describe: {t}"}] for t in texts]))
    if isinstance(backend, TextToImage):
        return list(backend.generate(texts[:2], n=2, seed=0))
    if isinstance(backend, VisionLanguageModel):
        return [backend.encode_images(images), backend.encode_texts(texts)]
    if isinstance(backend, Embedder):
        return [backend.embed(texts)]
    raise AssertionError(f"{type(backend).__name__} is not a captioner, llm, text2image, vlm or "
                         f"embedder backend")


def _check_output(backend: Backend[Any], out: list[Any]) -> None:
    from PIL import Image

    images, texts = _round_trip_inputs()
    if isinstance(backend, (Captioner, LLM)):
        assert len(out) == len(texts if isinstance(backend, LLM) else images), \
            "one answer per input"
        assert all(isinstance(text, str) for text in out), "answers must be strings"
        return
    if isinstance(backend, TextToImage):
        assert [len(row) for row in out] == [2, 2], "n images per prompt"
        assert all(isinstance(im, Image.Image) and im.mode == "RGB" for row in out for im in row), \
            "generate() must return RGB PIL images"
        return
    expected = ([len(images)] if isinstance(backend, VisionLanguageModel) else []) + [len(texts)]
    for matrix, rows in zip(out, expected):  # vlm: images, texts; embedder: texts
        assert isinstance(matrix, np.ndarray) and matrix.dtype == np.float32, \
            "vectors must be a float32 numpy array"
        assert matrix.ndim == 2 and matrix.shape[0] == rows, "one row per input"
        np.testing.assert_allclose(np.linalg.norm(matrix, axis=1), 1.0, atol=1e-3,
                                   err_msg="vectors must be L2-normalised")
    np.testing.assert_array_equal(out[-1][0], out[-1][2], err_msg="equal texts, equal vectors")
    assert len({m.shape[1] for m in out}) == 1, "images and texts share one vector space"


def _same(a: Any, b: Any) -> bool:
    from PIL import Image

    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and np.array_equal(a, b)
    if isinstance(a, Image.Image):
        return isinstance(b, Image.Image) and image_key(a) == image_key(b)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(map(_same, a, b))
    return bool(a == b)


def check_backend(backend: Backend[Any]) -> list[Any]:
    """Call the backend's main method (``caption``, ``chat``, ``generate``, ``encode_images`` and
    ``encode_texts``, ``embed``) on tiny inputs twice and assert the output contract; return the
    first outputs.

    Create the backend with a fresh call cache (``services=services(Cache(tmp_dir))``): the first
    call must compute through the call cache (``computed`` counts its inputs) and the second
    must be answered from it (``computed`` unchanged) with equal outputs."""
    assert backend.call_cache is not None, \
        "create the backend with services=dndbench.backends.call_cache.services(cache)"
    first = _call(backend)
    _check_output(backend, first)
    computed = backend.computed
    assert computed > 0, "the first call must compute its inputs through Backend.cached " \
                         "(computed counts them); use a fresh call cache"
    second = _call(backend)
    assert backend.computed == computed, "the second call must be served from the call cache"
    assert _same(first, second), "the call cache must return what was computed"
    return first
