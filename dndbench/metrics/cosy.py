"""Metric ``cosy``: CoSy (Kopf et al., NeurIPS 2024) -- does the unit fire on images of its
description?

For each description, ``num_images`` images are generated from ``prompt`` (``{description}``
replaced by the label) with the ``text2image`` backend, pushed through the target model and
spatially pooled at the run's layer; the control is the unit's pooled activations on the probe
images (the held-out split when the probe is split).  Per unit:

* ``cosy_auc`` -- ROC-AUC of synthetic (1) against control (0) activations, the Mann-Whitney
  ``U / (n_synthetic * n_control)`` (ties count one half);
* ``cosy_mad`` -- (mean synthetic - mean control) / std control (population std); no row when
  the control activations are constant.

Generated images go through the backend's call cache, keyed by (prompt, seed, i), so they are
shared with DnD's step 3 whenever prompt and seed agree; their activations go through the
per-image cache of :mod:`dndbench.image_activations` (shared with DnD too).  Where the run's
text2image backend has a ``style`` option (the toy renderer), the metric renders in
``text2image_style`` (default ``heldout``), so a describer is not scored by the very generator
it optimised against; other backends have no styles and are used as configured.
"""
from __future__ import annotations

import dataclasses
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

AUC = "cosy_auc"
MAD = "cosy_mad"


def auc_and_mad(synthetic: "np.ndarray", control: "np.ndarray") -> tuple[float, float | None]:
    """ROC-AUC (synthetic = 1, control = 0) and MAD; MAD is None for a constant control."""
    import numpy as np
    from scipy.stats import mannwhitneyu

    syn = np.asarray(synthetic, np.float64)
    ctrl = np.asarray(control, np.float64)
    u = float(mannwhitneyu(syn, ctrl, alternative="two-sided").statistic)
    auc = u / (len(syn) * len(ctrl))
    std = float(ctrl.std())
    mad = None if std <= 1e-12 * max(1.0, float(np.abs(ctrl).max())) else \
        float((syn.mean() - ctrl.mean()) / std)
    return auc, mad


@dataclass
class CoSyConfig(MetricConfig):
    """Options of the ``cosy`` metric (the generator is the run's ``text2image`` backend)."""

    #: synthetic images per description
    num_images: int = 50
    #: seed of the text-to-image backend
    seed: int = 0
    #: generation prompt; ``{description}`` is the label
    prompt: str = "realistic photo of a close up of {description}"
    #: render style where the run's text2image backend has styles (the toy renderer); "" = as
    #: configured
    text2image_style: str = "heldout"
    #: use at most this many control (probe) images, a seeded subsample; 0 = all of them
    max_control: int = 0
    #: how a unit's map becomes one activation (``mean``, as in CoSy, or ``max``)
    pooling: UnitPooling = UnitPooling.mean


@METRICS.register("cosy")
class CoSy(Metric[CoSyConfig]):
    """CoSy: AUC and MAD of a unit's activations on images generated from its description
    against its activations on (held-out) probe images."""

    Config = CoSyConfig
    version = "1"

    def __init__(self, config: CoSyConfig) -> None:
        super().__init__(config)
        problems = []
        if config.num_images < 1:
            problems.append(f"num_images must be >= 1 (got {config.num_images})")
        if "{description}" not in config.prompt:
            problems.append(f"prompt must contain {{description}} (got {config.prompt!r})")
        if config.max_control < 0:
            problems.append(f"max_control must be >= 0 (got {config.max_control})")
        if problems:
            raise ConfigError("metric 'cosy': " + "; ".join(problems))
        self._warned: set[str] = set()
        self._generators: dict[tuple[str, str], Any] = {}

    def applies_to(self, ctx: "Context") -> bool:
        return ctx.probe is not None and "text2image" in ctx.backends

    def generator(self, ctx: "Context") -> Any:
        """The text-to-image backend: the run's, restyled to ``text2image_style`` where it has a
        ``style`` option (created once, with the run's call cache)."""
        style = self.config.text2image_style
        config = ctx.backends.get("text2image")
        if not style or config is None or not hasattr(config, "style") or config.style == style:
            return ctx.backend("text2image")
        restyled = dataclasses.replace(config, style=style)  # type: ignore[call-arg]
        key = (str(ctx.cache.root), repr(restyled))
        if key not in self._generators:
            from dndbench.backends.call_cache import services
            from dndbench.registry import registry_for

            self._generators[key] = registry_for("text2image").create(
                restyled, services=services(ctx.cache))
        return self._generators[key]

    def prompts(self, labels: list[str]) -> list[str]:
        return [self.config.prompt.replace("{description}", label) for label in labels]

    def synthetic_activations(self, ctx: "Context", labels: list[str]) -> "np.ndarray":
        """Pooled activations (labels, num_images, units) of each label's generated images."""
        from dndbench.image_activations import forward_pooled

        generator = self.generator(ctx)
        before = generator.computed
        images = generator.generate(self.prompts(labels), self.config.num_images,
                                    seed=self.config.seed)
        ctx.count("cosy/generated_images", generator.computed - before)
        flat = [im for ims in images for im in ims]
        acts = forward_pooled(ctx, flat, self.config.pooling, counter="cosy")
        return acts.reshape(len(labels), self.config.num_images, -1)

    def score(self, descriptions: "pd.DataFrame", ctx: "Context") -> "pd.DataFrame":
        """``cosy_auc`` and ``cosy_mad`` rows per described unit."""
        import numpy as np
        import pandas as pd

        units, labels = described(descriptions)
        if not units:
            return pd.DataFrame(columns=["unit", "metric", "value"])
        scoring = scoring_context(ctx, "cosy", self._warned)
        indices = subsample(len(scoring.probe), self.config.max_control, self.config.seed)
        control = scoring.activations.pooled(ctx.layer).get(self.config.pooling)[indices]
        unique = list(dict.fromkeys(labels))
        synthetic = self.synthetic_activations(ctx, unique)
        row = {label: r for r, label in enumerate(unique)}
        rows: list[tuple[int, str, float]] = []
        for unit, label in zip(units, labels):
            auc, mad = auc_and_mad(synthetic[row[label], :, unit], control[:, unit])
            rows.append((unit, AUC, auc))
            if mad is not None:
                rows.append((unit, MAD, mad))
        frame = pd.DataFrame(rows, columns=["unit", "metric", "value"])
        return frame.astype({"unit": np.int64, "value": np.float64})
