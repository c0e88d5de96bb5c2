"""Metric ``final_layer_similarity``: final-layer descriptions against the units' class names.

Follows CLIP-Dissect's final-layer evaluation (Oikarinen & Weng, ICLR 2023), which the DnD paper
reuses; see ``docs/metrics/final_layer_similarity.md``.  Unit i of the output layer
should be described by class i's name.  Emits, per unit,

* ``final_layer_similarity`` -- cosine of the description's and the class string's text embeddings;
* ``final_layer_top1`` -- 1.0 if, among all class strings, the description is nearest to the unit's
  own (ties count as correct, so two classes with the same string do not cost a hit), else 0.0.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dndbench.backends.call_cache import services
from dndbench.backends.embedder import EMBEDDERS, Embedder
from dndbench.errors import ConfigError
from dndbench.metrics.base import METRICS, Metric, MetricConfig

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from dndbench.context import Context

SIMILARITY = "final_layer_similarity"
TOP1 = "final_layer_top1"


def read_class_names(path: Path | str) -> list[str]:
    """One class string per line (line i = unit i); trailing blank lines are ignored."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"metric 'final_layer_similarity': class_names file {str(path)!r} does not exist")
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def similarity_and_top1(labels: list[str], units: "np.ndarray", class_names: list[str],
                        embedder: Embedder[Any]) -> tuple["np.ndarray", "np.ndarray"]:
    """Cosine of each label with its unit's class string, and whether that class is the nearest."""
    import numpy as np

    classes = embedder.embed(class_names).astype(np.float64)
    described = embedder.embed(labels).astype(np.float64)
    sims = described @ classes.T
    own = sims[np.arange(len(labels)), units]
    return own, (own >= sims.max(axis=1) - 1e-6).astype(np.float64)


@dataclass
class FinalLayerSimilarityConfig(MetricConfig):
    """``embedder``: a registered embedder; ``class_names``: a file with one class per line
    (empty: the model's own class names)."""

    embedder: str = "minilm"
    class_names: str = ""
    #: local model folder for the embedder (needed offline for ``clip``)
    embedder_path: str = ""


@METRICS.register("final_layer_similarity")
class FinalLayerSimilarity(Metric[FinalLayerSimilarityConfig]):
    """Text similarity of final-layer descriptions to the units' class names, plus top-1 accuracy."""

    Config = FinalLayerSimilarityConfig

    def __init__(self, config: FinalLayerSimilarityConfig) -> None:
        super().__init__(config)
        EMBEDDERS.entry(config.embedder)  # unknown names fail here, with suggestions
        self._embedders: dict[tuple[str, str], Embedder[Any]] = {}

    def class_names(self, ctx: "Context") -> list[str]:
        """The class strings: from the ``class_names`` file, else from the model."""
        if self.config.class_names:
            return read_class_names(self.config.class_names)
        names = ctx.model.class_names()
        if names is None:
            raise ConfigError(f"metric 'final_layer_similarity' needs class names: model "
                              f"{ctx.model.config.name!r} has none, so set metric.class_names to a "
                              f"file with one class per line")
        return list(names)

    def applies_to(self, ctx: "Context") -> bool:
        return ctx.is_final_layer and (bool(self.config.class_names) or ctx.model.class_names() is not None)

    def embedder(self, ctx: "Context") -> Embedder[Any]:
        """The configured embedder, with its call cache under the run's cache."""
        key = (str(ctx.cache.root), ctx.device)
        if key not in self._embedders:
            overrides: dict[str, Any] = {"device": ctx.device}
            if self.config.embedder_path:
                overrides["path"] = self.config.embedder_path
            self._embedders[key] = EMBEDDERS.create(self.config.embedder, services=services(ctx.cache),
                                                     **overrides)
        return self._embedders[key]

    def score(self, descriptions: "pd.DataFrame", ctx: "Context") -> "pd.DataFrame":
        """Per-unit rows ``unit, metric, value`` for both figures (units without a label are skipped)."""
        import numpy as np
        import pandas as pd

        names = self.class_names(ctx)
        rows = descriptions[descriptions["label"].notna()]
        rows = rows[rows["label"].astype(str).str.strip() != ""]
        if rows.empty:
            return pd.DataFrame(columns=["unit", "metric", "value"])
        units = rows["unit"].astype(int).to_numpy()
        self._check_units(units, len(names))
        embedder = self.embedder(ctx)
        before = embedder.computed
        sims, top1 = similarity_and_top1(rows["label"].astype(str).tolist(), units, names, embedder)
        ctx.count(f"embedded_texts.{self.config.embedder}", embedder.computed - before)
        return pd.concat([
            pd.DataFrame({"unit": units, "metric": SIMILARITY, "value": sims}),
            pd.DataFrame({"unit": units, "metric": TOP1, "value": top1}),
        ], ignore_index=True).astype({"unit": np.int64, "value": np.float64})

    @staticmethod
    def _check_units(units: "np.ndarray", n_classes: int) -> None:
        bad = units[(units < 0) | (units >= n_classes)]
        if bad.size:
            raise ConfigError(f"metric 'final_layer_similarity': unit {int(bad[0])} has no class name "
                              f"(there are {n_classes} classes); check metric.class_names and the layer")
