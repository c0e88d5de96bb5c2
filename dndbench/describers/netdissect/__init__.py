"""Network Dissection (Bau et al., CVPR 2017; the NetDissect-Lite procedure).

For every unit k of a layer:

1. T_k = the top-``quantile`` (0.5 %) value of the unit's activations over all spatial positions
   of all probe images (:mod:`~dndbench.describers.netdissect.thresholds`);
2. per image, the unit's map is upsampled (bilinear) to the label resolution and thresholded:
   M_k = map > T_k.  As in NetDissect-Lite, every image is fed to the network whole, at the
   probe's resolution (no resize-and-centre-crop: :meth:`NetDissect.fed_whole`), so the map
   covers the whole label grid;
3. over the probe set, per concept c: I = Σ|M_k ∩ L_c|, Σ|L_c| and ΣM_cat, the mask area of the
   images where the mask covers a label of c's category (or the image has an image-level label
   of it); IoU = I / (ΣM_cat + ΣL − I) (:mod:`~dndbench.describers.netdissect.tally`);
4. the label is the concept of highest IoU (each concept grouped under its primary category,
   which the probe assigns: Broden's by coverage); the unit is a "detector" if
   IoU > ``score_threshold``.  Names are cleaned as the authors' Broden concept list spells them
   (:func:`~dndbench.describers.published.clean_broden_label`).

By default (``maps=memmap``) the network runs over the probe set once: that pass writes the
unit maps to a temporary file in the run's cache folder
(:mod:`~dndbench.describers.netdissect.map_store`) and fills the quantile's coarse histograms;
the quantile's second pass and the tally read the maps back from the file.  With
``maps=stream`` nothing is written to disk and the network runs three times instead (two
quantile passes, one tally pass).  Both give identical results, after the cached pooled
min / max pass; resident memory does not grow with the number of probe images either way.
"""
from __future__ import annotations

import dataclasses
import logging
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from dndbench.describers.base import DESCRIBERS, Describer, DescriberConfig, Description
from dndbench.describers.netdissect.map_store import MapStore, free_bytes, store_bytes
from dndbench.describers.netdissect.tally import IoUTally, label_shape, tally_image
from dndbench.describers.netdissect.thresholds import StreamingQuantile
from dndbench.describers.published import clean_broden_label as clean_label
from dndbench.errors import ConfigError
from dndbench.registry import Choice

if TYPE_CHECKING:
    import torch

    from dndbench.context import Context
    from dndbench.probes.base import Concept, ProbeSet

log = logging.getLogger(__name__)
#: ``(probe indices, maps (B, U, h, w))`` batches over the whole probe set, in probe order
MapBatches = Iterable[tuple[np.ndarray, "torch.Tensor"]]


class MapsMode(Choice):
    """Where the probe maps come from after the first pass: ``memmap`` (a temporary file in the
    cache folder; one network pass) or ``stream`` (the network re-run; three passes, no disk)."""

    memmap = "memmap"
    stream = "stream"


@dataclass
class NetDissectConfig(DescriberConfig):
    """``quantile``: top fraction of activations kept (T_k); ``score_threshold``: IoU above
    which a unit is a detector; ``categories``: concept categories (None = all of the probe);
    ``batch_size``: images per streamed batch; ``clean_labels``: Broden names as the authors'
    cleaned concept list spells them (``wine_cellar-s`` -> ``wine cellar``);
    ``histogram_bins``: bins of the streaming quantile (precision (max - min) / bins**2);
    ``maps``: ``memmap`` (one network pass, maps kept in a temporary file; ``stream`` when
    the disk lacks the room) or ``stream`` (three network passes, nothing on disk)."""

    quantile: float = 0.005
    score_threshold: float = 0.04
    categories: list[str] | None = None
    batch_size: int = 64
    clean_labels: bool = True
    histogram_bins: int = 4096
    maps: MapsMode = MapsMode.memmap


@DESCRIBERS.register("netdissect")
class NetDissect(Describer[NetDissectConfig]):
    """Network Dissection: label = the Broden concept whose masks best overlap (IoU) the unit's
    top-0.5 % activation region."""

    Config = NetDissectConfig
    needs_weights = True
    needs_probe = True
    version = "2"  # 2: images fed whole, NetDissect-Lite's ΣM_cat, primary categories by coverage

    def __init__(self, config: NetDissectConfig) -> None:
        super().__init__(config)
        if not 0 < config.quantile < 1:
            raise ConfigError(f"netdissect: quantile must be in (0, 1), got {config.quantile}")
        if config.batch_size < 1 or config.histogram_bins < 2:
            raise ConfigError("netdissect: batch_size must be >= 1 and histogram_bins >= 2")

    def select_concepts(self, probe: "ProbeSet") -> list["Concept"]:
        """The probe's concepts of the configured categories; ConfigError if there are none."""
        concepts = probe.concepts()
        if not concepts:
            raise ConfigError(f"netdissect needs a probe with concept annotations (e.g. "
                              f"probe=broden); probe {probe.config.name!r} has none")
        wanted = self.config.categories
        if wanted is None:
            return concepts
        available = sorted({c.category for c in concepts})
        unknown = [c for c in wanted if c not in available]
        if unknown:
            raise ConfigError(f"netdissect: probe {probe.config.name!r} has no categor(ies) "
                              f"{unknown}; it has {available}")
        return [c for c in concepts if c.category in wanted]

    def quantile(self, ctx: "Context") -> StreamingQuantile:
        """An empty streaming quantile for T_k of every unit of ``ctx.units``, bounded by the
        units' pooled min / max."""
        units = list(ctx.units)
        pooled = ctx.activations.pooled(ctx.layer)
        lo = pooled.min[:, units].min(0).astype(np.float64)
        hi = pooled.max[:, units].max(0).astype(np.float64)
        return StreamingQuantile(lo, hi, 1.0 - self.config.quantile,
                                 bins=self.config.histogram_bins, device=ctx.activations.device)

    def thresholds(self, ctx: "Context", maps: Callable[[], MapBatches] | None = None,
                   quantile: StreamingQuantile | None = None) -> np.ndarray:
        """T_k for every unit of ``ctx.units``: the top-``quantile`` activation value.

        ``maps()`` yields the probe maps (default: a fresh network pass each call);
        ``quantile`` may arrive with its first pass already done (its coarse histograms
        filled), and then ``maps`` is read once."""
        maps = maps or (lambda: self._stream(ctx))
        if quantile is None:
            quantile = self.quantile(ctx)
            for _, batch in maps():
                quantile.add_coarse(batch)
        for _, batch in maps():
            quantile.add_fine(batch)
        return quantile.result()

    def _stream(self, ctx: "Context") -> MapBatches:
        return ctx.activations.stream_maps(ctx.layer, ctx.units, self.config.batch_size)

    def tally(self, ctx: "Context", concepts: Sequence["Concept"], thresholds: np.ndarray,
              maps: MapBatches | None = None) -> IoUTally:
        """Count intersections / masks / labels over ``maps`` (default: a fresh network pass)."""
        import torch

        device = ctx.activations.device
        tally = IoUTally(concepts, len(ctx.units), device=device)
        t = torch.as_tensor(thresholds, dtype=torch.float64, device=device)
        for indices, batch in (self._stream(ctx) if maps is None else maps):
            for j, index in enumerate(indices.tolist()):
                ann = ctx.probe.annotation(index)
                if not ann.categories:  # (a tallied concept may sit on any category's layer)
                    continue
                tally_image(tally, batch[j].to(device), t, ann,
                            label_shape(ann, ctx.probe, index))
        return tally

    @staticmethod
    def fed_whole(ctx: "Context") -> "Context":
        """``ctx`` with its model fed every probe image whole, at the probe's resolution (the size
        of its first image), as NetDissect-Lite feeds Broden, so a unit's map covers the whole
        label grid; ``ctx`` itself when the model's transform already does that."""
        width, height = ctx.probe.image(0).size
        model = ctx.model.fed_whole(width, height)
        return ctx if model is ctx.model else dataclasses.replace(ctx, model=model)

    def describe(self, ctx: "Context") -> list[Description]:
        concepts = self.select_concepts(ctx.probe)
        if not ctx.units:
            return []
        ctx = self.fed_whole(ctx)
        with self._first_pass(ctx) as (quantile, maps):
            thresholds = self.thresholds(ctx, maps, quantile)
            tally = self.tally(ctx, concepts, thresholds, maps())
        iou = tally.iou()
        return [self.summarise(unit, iou[row], tally, float(thresholds[row]))
                for row, unit in enumerate(ctx.units)]

    @contextmanager
    def _first_pass(self, ctx: "Context") -> Iterator[tuple[StreamingQuantile,
                                                            Callable[[], MapBatches]]]:
        """One network pass over the probe that fills the quantile's coarse histograms and, with
        ``maps=memmap``, stores the maps on disk; yields the quantile and the source of the
        maps for the later passes (the stored file, or the network again)."""
        quantile = self.quantile(ctx)
        store = MapStore(ctx.cache.root / "tmp" / "netdissect") \
            if self.config.maps == MapsMode.memmap else None
        try:
            for indices, batch in self._stream(ctx):
                if store is not None and store.n_images == 0 and not _room_for(ctx, batch):
                    store.close()
                    store = None
                if store is not None:
                    if indices.tolist() != list(range(store.n_images, store.n_images + len(batch))):
                        raise AssertionError("netdissect: probe maps must arrive in probe order")
                    store.append(batch)
                quantile.add_coarse(batch)
            if store is None:
                yield quantile, lambda: self._stream(ctx)
            else:
                stored = store
                yield quantile, lambda: stored.batches(self.config.batch_size)
        finally:
            if store is not None:
                store.close()

    def _name(self, concept: "Concept") -> str:
        return clean_label(concept.name) if self.config.clean_labels else concept.name

    def summarise(self, unit: int, iou: np.ndarray, tally: IoUTally,
                  threshold: float) -> Description:
        """One unit's description from its IoU row (concepts,)."""
        order = np.argsort(-iou, kind="stable")
        best = tally.concepts[order[0]]
        score = float(iou[order[0]])
        label = self._name(best)
        extras: dict[str, Any] = {"category": best.category,
                                  "detector": bool(score > self.config.score_threshold),
                                  "threshold": threshold}
        concept_category = tally.concept_category.cpu().numpy()
        for k, category in enumerate(tally.categories):
            cols = np.flatnonzero(concept_category == k)
            top = cols[np.argmax(iou[cols])]
            extras[f"label_{category}"] = self._name(tally.concepts[top])
            extras[f"iou_{category}"] = float(iou[top])
        alternatives: list[str] = []
        for col in order[1:]:
            name = self._name(tally.concepts[col])
            if name != label and name not in alternatives:
                alternatives.append(name)
            if len(alternatives) == 2:
                break
        return Description(unit=unit, label=label, alternatives=alternatives, score=score,
                           extras=extras)


def _room_for(ctx: "Context", batch: "torch.Tensor") -> bool:
    """Whether the cache folder's disk can hold the maps of the whole probe set (judged from
    the first batch, with a margin); logs a warning when it cannot."""
    shape = (int(batch.shape[-2]), int(batch.shape[-1]))
    need = store_bytes(len(ctx.probe), int(batch.shape[1]), shape)
    free = free_bytes(ctx.cache.root)
    if need * 1.1 + (256 << 20) <= free:
        return True
    log.warning("netdissect: the probe maps need %.1f GB but %s has %.1f GB free; running the "
                "network again instead of storing them", need / 1e9, ctx.cache.root, free / 1e9)
    return False
