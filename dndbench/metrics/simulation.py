"""Metric ``simulation``: correlation scoring of a description against a unit's activations.

As in the simulation evaluations of Linear Explanations (Oikarinen & Weng, ICML 2024) and of
automated interpretability (Bills et al., 2023): a description is good if the unit's activations
can be predicted from it alone.  The predictor here is the ``vlm`` backend: the predicted
activation of image ``x`` is the cosine between the image embedding of ``x`` and the text
embedding of ``template`` filled with the label.  Per unit:

* ``simulation`` -- Pearson correlation, over the held-out probe images, between predicted and
  true (spatially pooled) activations.

Held-out images: the other side of the probe's split when ``probe.split=describe`` (see
docs/metrics/simulation.md), else the whole probe, with a warning that the describers saw the
same images.  A description whose predictions are constant over the images (e.g. only words
the vlm does not know) scores 0; a unit whose true activations are constant over the images
(a dead unit) cannot be simulated and gets no row.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dndbench.errors import ConfigError
from dndbench.metrics.base import METRICS, Metric, MetricConfig
from dndbench.metrics.heldout import UnitPooling, described, scoring_context, subsample

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from dndbench.context import Context

log = logging.getLogger(__name__)

SIMULATION = "simulation"


def pearson(predicted: "np.ndarray", true: "np.ndarray") -> float | None:
    """Pearson correlation; 0.0 when ``predicted`` is constant, None when ``true`` is constant."""
    import numpy as np

    p = np.asarray(predicted, np.float64)
    t = np.asarray(true, np.float64)
    if _constant(t):
        return None
    if _constant(p):
        return 0.0
    p, t = p - p.mean(), t - t.mean()
    return float(np.clip(p @ t / np.sqrt((p @ p) * (t @ t)), -1.0, 1.0))


def _constant(x: "np.ndarray") -> bool:
    import numpy as np

    return len(x) < 2 or float(np.ptp(x)) <= 1e-7 * max(1.0, float(np.abs(x).max()))


def predicted_activations(image_embeddings: "np.ndarray", text_embeddings: "np.ndarray") -> "np.ndarray":
    """Cosine of every image with every text: (texts, images)."""
    import numpy as np

    def unit(x: "np.ndarray") -> "np.ndarray":
        x = np.asarray(x, np.float64)
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    return unit(text_embeddings) @ unit(image_embeddings).T


@dataclass
class SimulationConfig(MetricConfig):
    """Options of the ``simulation`` metric (the vlm is the run's ``vlm`` backend)."""

    #: text whose embedding is compared with the images; ``{label}`` is the description
    template: str = "a photo of {label}"
    #: score on at most this many held-out images (a seeded subsample); 0 = all of them
    max_images: int = 0
    #: seed of the subsample
    seed: int = 0
    #: how a unit's map becomes one activation (``mean`` or ``max``)
    pooling: UnitPooling = UnitPooling.mean


@METRICS.register("simulation")
class Simulation(Metric[SimulationConfig]):
    """Correlation between a unit's held-out activations and the vlm's image-text similarity
    to its description."""

    Config = SimulationConfig
    version = "1"

    def __init__(self, config: SimulationConfig) -> None:
        super().__init__(config)
        problems = []
        if "{label}" not in config.template:
            problems.append(f"template must contain {{label}} (got {config.template!r})")
        if config.max_images < 0:
            problems.append(f"max_images must be >= 0 (got {config.max_images})")
        if problems:
            raise ConfigError("metric 'simulation': " + "; ".join(problems))
        self._warned: set[str] = set()
        self._image_embeddings: dict[tuple[Any, ...], "np.ndarray"] = {}

    def applies_to(self, ctx: "Context") -> bool:
        return ctx.probe is not None and "vlm" in ctx.backends

    def images(self, ctx: "Context") -> tuple["Context", "np.ndarray"]:
        """The scoring context and the probe indices scored (held out, subsampled)."""
        scoring = scoring_context(ctx, SIMULATION, self._warned)
        return scoring, subsample(len(scoring.probe), self.config.max_images, self.config.seed)

    def image_embeddings(self, ctx: "Context", indices: "np.ndarray") -> "np.ndarray":
        """vlm embeddings of the scored probe images (one batched call, kept for the run)."""
        key = (str(ctx.cache.root), ctx.probe.config.name, ctx.probe.fingerprint(),
               tuple(int(i) for i in indices))
        if key not in self._image_embeddings:
            vlm = ctx.backend("vlm")
            before = vlm.computed
            images = [ctx.probe.image(int(i)) for i in indices]
            self._image_embeddings[key] = vlm.encode_images(images)
            ctx.count("simulation/vlm_images", vlm.computed - before)
        return self._image_embeddings[key]

    def score(self, descriptions: "pd.DataFrame", ctx: "Context") -> "pd.DataFrame":
        """One ``simulation`` row per described unit whose held-out activations vary."""
        import numpy as np
        import pandas as pd

        units, labels = described(descriptions)
        if not units:
            return pd.DataFrame(columns=["unit", "metric", "value"])
        scoring, indices = self.images(ctx)
        true = scoring.activations.pooled(ctx.layer).get(self.config.pooling)[indices]
        image_emb = self.image_embeddings(scoring, indices)
        texts = list(dict.fromkeys(self.config.template.replace("{label}", lab) for lab in labels))
        vlm = ctx.backend("vlm")
        before = vlm.computed
        text_emb = vlm.encode_texts(texts)
        ctx.count("simulation/vlm_texts", vlm.computed - before)
        predicted = predicted_activations(image_emb, text_emb)
        row = {t: r for r, t in enumerate(texts)}
        out_units, values = [], []
        for unit, label in zip(units, labels):
            value = pearson(predicted[row[self.config.template.replace("{label}", label)]],
                            true[:, unit])
            if value is not None:
                out_units.append(unit)
                values.append(value)
        return pd.DataFrame({"unit": np.asarray(out_units, np.int64), "metric": SIMULATION,
                             "value": np.asarray(values, np.float64)})
