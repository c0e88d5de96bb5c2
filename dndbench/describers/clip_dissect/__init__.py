"""CLIP-Dissect (Oikarinen & Weng, ICLR 2023), implemented from the paper and its released code
(``docs/describers/clip_dissect.md``).

1. Concept-activation matrix P (images x concepts): cosine of each probe image's embedding with
   the embedding of each bare concept word (no prompt template), both from the run's
   vision-language model (``vlm=...``, CLIP ViT-B/16 in the paper); embeddings are cached per
   input by the backend's call cache, so the probe set is encoded once across runs.
2. Neuron summaries: pooled (spatial mean by default) activations of **all** units of the layer
   (SoftWPMI's p(t) averages over them); descriptions are returned for ``ctx.units``.
3. Similarity (:mod:`dndbench.describers.clip_dissect.similarity`) and label = the argmax concept; ``score``
   is the maximum similarity, ``alternatives`` the next two concepts.

Parameters left as ``None`` take the chosen similarity function's published default
(soft_wpmi: a=10, top_k=100, lam=1; wpmi: a=2, top_k=28, lam=0.6).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from dndbench.cache import stable_hash
from dndbench.describers.base import DESCRIBERS, Describer, DescriberConfig, Description, Pooling
from dndbench.describers.clip_dissect.concept_sets import load_concept_set
from dndbench.describers.clip_dissect.similarity import SIMILARITIES, Similarity
from dndbench.errors import ConfigError

if TYPE_CHECKING:
    from dndbench.backends.base import VisionLanguageModel
    from dndbench.context import Context


@dataclass
class ClipDissectConfig(DescriberConfig):
    """``concept_set``: ``toy``, ``imagenet`` (model class names), ``probe``/``broden`` (probe
    concepts) or a file with one concept per line; ``similarity``: soft_wpmi, wpmi, cos,
    cos_pow3 or rank_reorder; ``a`` softmax scale, ``top_k`` top images, ``lam`` weight of
    log p(t) (None = the function's default); ``p_start``/``p_end``: SoftWPMI membership
    of the first / last top image; ``top_fraction``, ``power``, ``scale_p``: rank_reorder;
    ``pooling``: mean, max or min; ``batch_size``: probe images per VLM call."""

    concept_set: str = "toy"
    similarity: Similarity = Similarity.soft_wpmi
    a: float | None = None
    top_k: int | None = None
    lam: float | None = None
    p_start: float = 0.998
    p_end: float = 0.97
    top_fraction: float = 0.05
    power: float = 3.0
    scale_p: float = 0.5
    pooling: Pooling = Pooling.mean
    batch_size: int = 256


@DESCRIBERS.register("clip_dissect")
class ClipDissect(Describer[ClipDissectConfig]):
    """CLIP-Dissect: label = the concept word whose CLIP image-text similarity pattern over the
    probe set best matches the unit's top-activating images (SoftWPMI)."""

    Config = ClipDissectConfig

    needs_weights = True
    needs_probe = True
    uses_backends = ("vlm",)
    version = "1"

    def __init__(self, config: ClipDissectConfig) -> None:
        super().__init__(config)
        self._validate()

    def _validate(self) -> None:
        c = self.config
        if (c.top_k is not None and c.top_k < 1) or c.batch_size < 1:
            raise ConfigError("clip_dissect: top_k and batch_size must be >= 1")
        if not 0 < c.p_end <= c.p_start <= 1 or not 0 < c.top_fraction <= 1:
            raise ConfigError("clip_dissect: need 0 < p_end <= p_start <= 1 and 0 < top_fraction <= 1")

    # -- inputs ---------------------------------------------------------------------------------
    def concepts(self, ctx: "Context") -> list[str]:
        """The concept words labels are chosen from."""
        return load_concept_set(self.config.concept_set, ctx.model, ctx.probe)

    def cache_key_parts(self, ctx: "Context") -> tuple[Any, ...]:
        """Also the concept list's content (a concept file may change under the same path)."""
        return (*super().cache_key_parts(ctx), stable_hash("concepts", self.concepts(ctx)))

    def image_embeddings(self, ctx: "Context", vlm: "VisionLanguageModel") -> np.ndarray:
        """VLM embeddings (images, dim) of the whole probe set, in batches with a progress bar."""
        from tqdm.auto import tqdm

        size = self.config.batch_size
        starts = range(0, len(ctx.probe), size)
        rows = []
        for start in tqdm(starts, desc="clip_dissect: encode probe", unit="batch",
                          disable=not ctx.progress, leave=False):
            images = [ctx.probe.image(i) for i in range(start, min(start + size, len(ctx.probe)))]
            rows.append(vlm.encode_images(images))
        return np.concatenate(rows)

    def concept_matrix(self, ctx: "Context", concepts: Sequence[str]) -> np.ndarray:
        """P (images, concepts): cosine of image and bare-concept-word embeddings."""
        vlm = ctx.backend("vlm")
        before = vlm.computed
        images = self.image_embeddings(ctx, vlm)
        texts = vlm.encode_texts(list(concepts))
        ctx.count("vlm_inputs_encoded", vlm.computed - before)
        return images.astype(np.float64) @ texts.astype(np.float64).T

    def similarity_params(self) -> dict[str, Any]:
        """Keyword arguments of the similarity function (None values take its defaults)."""
        c = self.config
        params = {"a": c.a, "top_k": c.top_k, "lam": c.lam, "p_start": c.p_start,
                  "p_end": c.p_end, "top_fraction": c.top_fraction, "power": c.power,
                  "scale_p": c.scale_p}
        return {k: v for k, v in params.items() if v is not None}

    # -- the method -----------------------------------------------------------------------------
    def similarities(self, ctx: "Context", concepts: Sequence[str]) -> np.ndarray:
        """sim (len(ctx.units), concepts) of the configured similarity function."""
        P = self.concept_matrix(ctx, concepts)
        acts = ctx.activations.pooled(ctx.layer).get(self.config.pooling)
        if acts.shape[0] != P.shape[0]:
            raise ConfigError(f"clip_dissect: {acts.shape[0]} activation rows but {P.shape[0]} "
                              f"probe embeddings")
        fn = SIMILARITIES[self.config.similarity]
        return fn(P, acts.astype(np.float64), list(ctx.units), **self.similarity_params())

    def describe(self, ctx: "Context") -> list[Description]:
        if not ctx.units:
            return []
        concepts = self.concepts(ctx)
        sim = self.similarities(ctx, concepts)
        return [self.summarise(unit, sim[row], concepts) for row, unit in enumerate(ctx.units)]

    def describe_units(self, ctx: "Context", units: list[int]) -> list[Description]:
        """``units`` only (one chunk of the describe cache, so a killed run keeps the chunks it
        stored); every unit's similarities depend on that unit's activations alone."""
        import dataclasses

        return self.describe(dataclasses.replace(ctx, units=list(units)))

    def summarise(self, unit: int, sim: np.ndarray, concepts: Sequence[str]) -> Description:
        """One unit's description from its similarity row (concepts,)."""
        order = np.argsort(-sim, kind="stable")
        return Description(unit=unit, label=concepts[order[0]],
                           alternatives=[concepts[i] for i in order[1:3]],
                           score=float(sim[order[0]]),
                           extras={"similarity_fn": str(self.config.similarity),
                                   "concept_set_size": len(concepts)})
