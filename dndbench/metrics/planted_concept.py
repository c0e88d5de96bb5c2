"""Metric ``planted_concept``: descriptions of units whose concept is known by construction.

Applies where the model records planted concepts for the context's units (the toy network's
planted units).  Per unit it emits

* ``planted_hit`` -- 1.0 if the description names the planted concept as whole words (the toy
  world's synonyms and plurals accepted; every part of a compositional concept such as
  "red circle"; both parts of a polysemantic "A or B"), else 0.0;
* ``planted_rank`` -- reciprocal rank of the planted concept among all the world's concepts,
  ranked by embedder cosine to the description (ties share their ranks evenly).

Each row carries ``chance``: the figure's expected value for a label drawn uniformly from the
world's concepts.  See ``docs/metrics/planted_concept.md``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from dndbench.metrics.base import METRICS, Metric, MetricConfig
from dndbench.metrics.embedding import EmbedderPool

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from dndbench.context import Context

HIT = "planted_hit"
RANK = "planted_rank"
COLUMNS = ["unit", "metric", "value", "chance"]


def world_concept_names() -> list[str]:
    """The names of every toy-world concept, in concept-id order."""
    from dndbench.toyworld.world import all_concepts

    return [c.name for c in all_concepts()]


def is_hit(label: str, concept: str) -> bool:
    """Whether ``label`` names ``concept`` (rules in :func:`dndbench.toyworld.synonyms.names_concept`)."""
    from dndbench.toyworld.synonyms import names_concept

    return names_concept(label, concept)


def hit_chance(concept: str, candidates: list[str]) -> float:
    """The share of ``candidates`` (as labels) that hit ``concept``: planted_hit's chance level."""
    return sum(is_hit(c, concept) for c in candidates) / len(candidates)


def rank_chance(k: int) -> float:
    """Mean reciprocal rank of a uniformly random rank among ``k``: H_k / k."""
    return sum(1.0 / r for r in range(1, k + 1)) / k


def reciprocal_rank(sims: "np.ndarray", target: int) -> float:
    """Expected reciprocal rank of ``target`` when candidates tied with it are ordered at random."""
    own = sims[target]
    above = int((sims > own + 1e-6).sum())
    tied = int((abs(sims - own) <= 1e-6).sum())  # includes the target itself
    return sum(1.0 / r for r in range(above + 1, above + tied + 1)) / tied


def candidates_for(concept: str, names: list[str]) -> tuple[list[str], int]:
    """The ranked candidates for ``concept`` (the world's concepts, plus ``concept`` itself when it
    is not one of them, e.g. a compositional "red circle") and the index of ``concept``."""
    if concept in names:
        return names, names.index(concept)
    return [*names, concept], len(names)


@dataclass
class PlantedConceptConfig(MetricConfig):
    """Options of ``planted_concept``: the embedder that ranks concepts (and its local folder)."""

    embedder: str = "minilm"
    #: local model folder for the embedder
    embedder_path: str = ""


@METRICS.register("planted_concept")
class PlantedConcept(Metric[PlantedConceptConfig]):
    """Planted units: does the description name the planted concept, and how highly does it rank it?"""

    Config = PlantedConceptConfig

    def __init__(self, config: PlantedConceptConfig) -> None:
        super().__init__(config)
        EmbedderPool.check(config.embedder)  # unknown names fail here, with suggestions
        self._embedders = EmbedderPool()

    def applies_to(self, ctx: "Context") -> bool:
        planted = ctx.model.planted_concepts(ctx.layer)
        return any(u in planted for u in ctx.units)

    def score(self, descriptions: "pd.DataFrame", ctx: "Context") -> "pd.DataFrame":
        """Rows ``unit, metric, value, chance`` for both figures; units without a planted
        concept or without a label are skipped."""
        import numpy as np
        import pandas as pd

        planted = ctx.model.planted_concepts(ctx.layer)
        rows = descriptions[descriptions["label"].notna()]
        rows = rows[rows["label"].astype(str).str.strip() != ""]
        rows = rows[rows["unit"].astype(int).isin(list(planted))]
        if rows.empty:
            return pd.DataFrame(columns=COLUMNS)
        units = rows["unit"].astype(int).tolist()
        labels = rows["label"].astype(str).tolist()
        names = world_concept_names()
        truths = [planted[u] for u in units]
        extra = sorted({t for t in truths if t not in names})
        vectors = self._embedders.embed(ctx, self.config.embedder, names + extra + labels,
                                        self.config.embedder_path)
        index = {text: i for i, text in enumerate(names + extra)}
        described = vectors[len(names) + len(extra):]
        out = []
        for unit, label, truth, vec in zip(units, labels, truths, described):
            candidates, target = candidates_for(truth, names)
            sims = vectors[[index[c] for c in candidates]] @ vec
            out.append({"unit": unit, "metric": HIT, "value": float(is_hit(label, truth)),
                        "chance": hit_chance(truth, names)})
            out.append({"unit": unit, "metric": RANK, "value": reciprocal_rank(sims, target),
                        "chance": rank_chance(len(candidates))})
        frame = pd.DataFrame(out, columns=COLUMNS)
        frame = pd.concat([frame[frame.metric == HIT], frame[frame.metric == RANK]], ignore_index=True)
        return frame.astype({"unit": np.int64, "value": np.float64, "chance": np.float64})
