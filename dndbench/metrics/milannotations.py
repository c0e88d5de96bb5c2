"""Metric ``milannotations``: agreement of descriptions with human annotations of the same units.

The annotations file has the MILANNOTATIONS layout: a CSV with columns ``layer,unit,summary``
and several rows (one per annotator) per unit.  Per annotated unit it emits

* ``milannotations_similarity`` -- the mean over the unit's annotations of the embedder cosine
  between the description and the annotation (as in the DnD paper's MILANNOTATIONS comparison);
* ``inter_annotator`` -- the mean pairwise cosine among the unit's annotations (a reference
  figure that does not depend on the description; units with one annotation have none).

``reliability_threshold`` keeps only units some pair of whose annotations has a cosine above it
under ``filter_embedder`` (the DnD paper used CLIP ViT-B/16 and 0.81); 0 keeps every unit and loads
no filter model.  Units without annotations are not scored.  See ``docs/metrics/milannotations.md``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dndbench.errors import ConfigError, DataError
from dndbench.metrics.base import METRICS, Metric, MetricConfig
from dndbench.metrics.embedding import EmbedderPool

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from dndbench.context import Context

log = logging.getLogger(__name__)

SIMILARITY = "milannotations_similarity"
INTER = "inter_annotator"
REQUIRED = ["layer", "unit", "summary"]


@lru_cache(maxsize=8)
def _read(path: str, mtime: float) -> "pd.DataFrame":
    import pandas as pd

    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read annotations file {path!r}: {exc}") from None
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise DataError(f"annotations file {path!r} needs columns {REQUIRED} (the MILANNOTATIONS "
                        f"layout), it lacks {missing}; its columns are {list(df.columns)}")
    df = df.assign(layer=df["layer"].str.strip(), summary=df["summary"].str.strip(),
                   unit=pd.to_numeric(df["unit"].str.strip(), errors="coerce"))
    bad = df[df["unit"].isna()]
    if len(bad):
        raise DataError(f"annotations file {path!r}: row {int(bad.index[0]) + 2} has a unit that is "
                        f"not an integer")
    df = df[df["summary"] != ""]
    return df.astype({"unit": "int64"})[REQUIRED].reset_index(drop=True)


def read_annotations(path: Path | str) -> "pd.DataFrame":
    """The annotations table (``layer, unit, summary``; empty summaries dropped), read once per
    version of the file."""
    resolved = Path(path).expanduser()
    if not resolved.is_file():
        raise ConfigError(f"metric 'milannotations': annotations file {str(resolved)!r} does not exist")
    return _read(str(resolved.resolve()), resolved.stat().st_mtime)


def annotations_by_unit(table: "pd.DataFrame", layer: str) -> dict[int, list[str]]:
    """The annotations of each unit of ``layer``, in file order."""
    rows = table[table["layer"] == layer]
    out: dict[int, list[str]] = {}
    for unit, summary in zip(rows["unit"].tolist(), rows["summary"].tolist()):
        out.setdefault(int(unit), []).append(str(summary))
    return out


def pairwise_cosines(vectors: "np.ndarray") -> "np.ndarray":
    """The cosines of every pair i < j of the (unit-norm) rows."""
    import numpy as np

    sims = vectors @ vectors.T
    upper = np.triu_indices(len(vectors), k=1)
    return sims[upper]


@dataclass
class MilannotationsConfig(MetricConfig):
    """Options of ``milannotations``."""

    #: CSV in the MILANNOTATIONS layout (``layer,unit,summary``); empty: the metric does not apply
    annotations: str = ""
    #: the annotations' name for the layer, when it differs from the model's module name
    layer: str = ""
    embedder: str = "minilm"
    #: local model folder for the embedder
    embedder_path: str = ""
    #: keep a unit only if some pair of its annotations has cosine above this (0: keep every unit)
    reliability_threshold: float = 0.0
    filter_embedder: str = "clip"
    filter_embedder_path: str = ""


@METRICS.register("milannotations")
class Milannotations(Metric[MilannotationsConfig]):
    """Agreement with human annotations (MILANNOTATIONS layout), beside the inter-annotator agreement."""

    Config = MilannotationsConfig
    #: figures that do not depend on the description (the sanity checks leave them out)
    reference_figures = (INTER,)

    def __init__(self, config: MilannotationsConfig) -> None:
        super().__init__(config)
        EmbedderPool.check(config.embedder)
        if config.reliability_threshold > 0:
            EmbedderPool.check(config.filter_embedder)
        if not -1.0 <= config.reliability_threshold <= 1.0:
            raise ConfigError(f"metric 'milannotations': reliability_threshold is a cosine, between "
                              f"-1 and 1; got {config.reliability_threshold}")
        self._embedders = EmbedderPool()

    @classmethod
    def sanity_options(cls, workdir: Path, truths: dict[str, dict[int, str]]) -> dict[str, Any]:
        """For ``check-metrics``: an annotations file in which three "annotators" phrase each
        toy unit's truth their own way (so the true description should agree best)."""
        import pandas as pd

        workdir.mkdir(parents=True, exist_ok=True)
        path = workdir / "annotations.csv"
        rows = [(layer, unit, text) for layer, units in truths.items() for unit, truth in units.items()
                for text in (truth, f"{truth} in the image", f"pictures of {truth}")]
        pd.DataFrame(rows, columns=REQUIRED).to_csv(path, index=False)
        return {"annotations": str(path)}

    def annotations(self, ctx: "Context") -> dict[int, list[str]]:
        """The annotations of the context's layer, by unit (all units of the layer)."""
        if not self.config.annotations:
            raise ConfigError("metric 'milannotations' needs metric.annotations=PATH (a CSV with "
                              "columns layer,unit,summary)")
        layer = self.config.layer or ctx.layer
        table = read_annotations(self.config.annotations)
        found = annotations_by_unit(table, layer)
        if not found:
            layers = ", ".join(sorted(table["layer"].unique()))
            log.warning("annotations file %s has no rows for layer %r (its layers: %s)",
                        self.config.annotations, layer, layers)
        return found

    def applies_to(self, ctx: "Context") -> bool:
        if not self.config.annotations:
            return False
        annotated = self.annotations(ctx)
        return any(u in annotated for u in ctx.units)

    def reliable(self, ctx: "Context", annotated: dict[int, list[str]]) -> dict[int, list[str]]:
        """The units kept by the reliability filter (all of them when the threshold is <= 0)."""
        threshold = self.config.reliability_threshold
        if threshold <= 0:
            return annotated
        texts = sorted({t for anns in annotated.values() for t in anns})
        vectors = self._embedders.embed(ctx, self.config.filter_embedder, texts,
                                        self.config.filter_embedder_path)
        index = {t: i for i, t in enumerate(texts)}
        kept = {}
        for unit, anns in annotated.items():
            pairs = pairwise_cosines(vectors[[index[t] for t in anns]])
            if pairs.size and float(pairs.max()) > threshold:
                kept[unit] = anns
        return kept

    def score(self, descriptions: "pd.DataFrame", ctx: "Context") -> "pd.DataFrame":
        """Rows ``unit, metric, value`` for both figures, for described units with annotations."""
        import numpy as np
        import pandas as pd

        rows = descriptions[descriptions["label"].notna()]
        rows = rows[rows["label"].astype(str).str.strip() != ""]
        annotated = self.annotations(ctx)
        described = {int(u): str(label) for u, label in zip(rows["unit"], rows["label"])
                     if int(u) in annotated}
        kept = self.reliable(ctx, {u: annotated[u] for u in described})
        level = logging.INFO if len(kept) < len(rows) else logging.DEBUG
        log.log(level, "milannotations: %d of %d described units have annotations, %d kept "
                "(reliability threshold %g)", len(described), len(rows), len(kept),
                self.config.reliability_threshold)
        if not kept:
            return pd.DataFrame(columns=["unit", "metric", "value"])
        units = sorted(kept)
        texts = list(dict.fromkeys([described[u] for u in units] + [t for u in units for t in kept[u]]))
        vectors = self._embedders.embed(ctx, self.config.embedder, texts, self.config.embedder_path)
        index = {t: i for i, t in enumerate(texts)}
        out = []
        for unit in units:
            label = vectors[index[described[unit]]]
            anns = vectors[[index[t] for t in kept[unit]]]
            out.append({"unit": unit, "metric": SIMILARITY, "value": float(np.mean(anns @ label))})
        for unit in units:
            pairs = pairwise_cosines(vectors[[index[t] for t in kept[unit]]])
            if pairs.size:
                out.append({"unit": unit, "metric": INTER, "value": float(pairs.mean())})
        return pd.DataFrame(out, columns=["unit", "metric", "value"]).astype(
            {"unit": np.int64, "value": np.float64})
