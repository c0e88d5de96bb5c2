"""Network Dissection (Bau et al. 2017, NetDissect-Lite), implemented from METHODS.md §3.

For every unit k of a layer:

1. T_k = the top-``quantile`` (0.5 %) value of the unit's activations over all spatial positions
   of all probe images, found by :func:`streaming_quantile` in bounded memory;
2. per image, the unit's map is upsampled (bilinear) to the label resolution and thresholded:
   M_k = map > T_k;
3. over the probe set, per concept c: I = Σ|M_k ∩ L_c|, Σ|M_k| over images where c's category is
   annotated, Σ|L_c|; IoU = I / (ΣM_cat + ΣL − I) (:class:`IoUTally`);
4. the label is the concept of highest IoU; the unit is a "detector" if IoU > ``score_threshold``.

Concept ids are global: a concept's pixels are counted on every label layer of the tallied
categories, image-level labels (scenes, textures) cover every pixel at the label resolution, and
units whose map never exceeds T_k in an image are skipped for that image (upsampling cannot
exceed the map's maximum).

The activations are streamed three times (two quantile passes, one tally pass), plus the cached
pooled min / max pass; nothing grows with the number of probe images.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from dndbench.describers.base import DESCRIBERS, Describer, DescriberConfig, Description
from dndbench.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from dndbench.context import Context
    from dndbench.probes.base import Annotation, Concept, ProbeSet

_SUFFIX_RE = re.compile(r"-[cs]$")


def clean_label(name: str) -> str:
    """Readable Broden name: drop the ``-c`` (colour) / ``-s`` (scene) suffix, ``_`` -> space,
    other ``-`` -> ", " (``blue-c`` -> ``blue``, ``wine_cellar-s`` -> ``wine cellar``)."""
    name = _SUFFIX_RE.sub("", name.strip())
    return name.replace("_", " ").replace("-", ", ").strip()


# -- 1. streaming quantile ----------------------------------------------------------------------
def _bin_index(x: "torch.Tensor", lo: "torch.Tensor", width: "torch.Tensor", bins: int) -> "torch.Tensor":
    """Bin of each value of ``x`` (rows, n) for per-row bins [lo + i*width, lo + (i+1)*width)."""
    return ((x - lo[:, None]) / width[:, None]).floor().clamp_(0, bins - 1).long()


def _locate(counts: "torch.Tensor", ranks: "torch.Tensor") -> tuple["torch.Tensor", "torch.Tensor"]:
    """For rows of histogram ``counts`` (R, bins) and 0-based ``ranks`` (R,): the bin holding
    each rank and the rank's position inside that bin."""
    import torch

    cum = counts.cumsum(1)
    b = torch.searchsorted(cum, ranks[:, None], right=True)[:, 0].clamp_(max=counts.shape[1] - 1)
    below = cum.gather(1, b[:, None])[:, 0] - counts.gather(1, b[:, None])[:, 0]
    return b, ranks - below


def _unit_chunks(maps: "torch.Tensor", device: "torch.device",
                 max_values: int) -> Iterator[tuple[slice, "torch.Tensor"]]:
    """Split a batch (B, U, h, w) into (unit slice, values (units, B*h*w) float64) pieces of at
    most ``max_values`` values, so the working memory does not depend on the batch size."""
    rows = maps.to(device).transpose(0, 1).reshape(maps.shape[1], -1)
    step = max(1, max_values // max(rows.shape[1], 1))
    for start in range(0, rows.shape[0], step):
        part = slice(start, min(start + step, rows.shape[0]))
        yield part, rows[part].double()


def streaming_quantile(batches: Callable[[], Iterable["torch.Tensor"]], lo: np.ndarray,
                       hi: np.ndarray, q: float, bins: int = 4096, device: str = "cpu",
                       max_values: int = 1 << 22) -> np.ndarray:
    """Per-unit ``np.quantile(values, q)`` (linear interpolation) of maps streamed as (B, U, h, w).

    ``batches()`` must yield the same values each time it is called (it is called twice);
    ``lo`` / ``hi`` (U,) bound each unit's values.  Memory is O(U * bins) plus a working set of
    ``max_values`` values, independent of the number of images.  Pass 1 builds a ``bins``-bin
    histogram per unit over [lo, hi]; pass 2 splits each of the (at most two) bins holding the
    order statistics the quantile interpolates between into ``bins`` sub-bins and records each
    sub-bin's count and exact min and max value.  An order statistic is exact when it is the
    first or last value of its sub-bin (always so with <= 2 values or only ties in it);
    otherwise it is interpolated inside the sub-bin, so the error is at most about
    (hi - lo) / bins**2 — float32 resolution for the default 4096 bins.
    """
    import torch

    dev = torch.device(device)
    lo_t = torch.as_tensor(np.asarray(lo, np.float64), device=dev)
    width = ((torch.as_tensor(np.asarray(hi, np.float64), device=dev) - lo_t) / bins).clamp_(min=1e-30)
    n_units = lo_t.shape[0]

    counts = torch.zeros(n_units, bins, dtype=torch.long, device=dev)
    for maps in batches():
        for part, x in _unit_chunks(maps, dev, max_values):
            idx = _bin_index(x, lo_t[part], width[part], bins)
            idx += torch.arange(idx.shape[0], device=dev)[:, None] * bins
            counts[part] += torch.bincount(idx.reshape(-1), minlength=idx.shape[0] * bins).view(-1, bins)
    total = counts.sum(1)
    if bool((total == 0).any()):
        raise ValueError("streaming_quantile: a unit has no values")
    r = q * (total - 1).double()
    k0 = r.floor().long()
    ranks = torch.stack([k0, torch.minimum(k0 + 1, total - 1)], 1)  # (U, 2) 0-based order stats
    coarse, pos = (t.view(n_units, 2) for t in _locate(counts.repeat_interleave(2, 0), ranks.view(-1)))
    fine_lo = lo_t[:, None] + coarse.double() * width[:, None]  # (U, 2)
    fine_w = (width / bins).clamp_(min=1e-30)

    fcount = torch.zeros(n_units * 2 * bins, dtype=torch.long, device=dev)
    fmin = torch.full_like(fcount, 0, dtype=torch.float64).fill_(float("inf"))
    fmax = torch.full_like(fmin, float("-inf"))
    for maps in batches():
        for part, x in _unit_chunks(maps, dev, max_values):
            in_coarse = _bin_index(x, lo_t[part], width[part], bins)
            for which in (0, 1):
                unit, col = (in_coarse == coarse[part, which][:, None]).nonzero(as_tuple=True)
                unit += part.start
                vals = x[unit - part.start, col]
                sub = ((vals - fine_lo[unit, which]) / fine_w[unit]).floor_().clamp_(0, bins - 1)
                idx = (unit * 2 + which) * bins + sub.long()
                fcount.index_add_(0, idx, torch.ones_like(idx))
                fmin.scatter_reduce_(0, idx, vals, reduce="amin")
                fmax.scatter_reduce_(0, idx, vals, reduce="amax")
    fcount, fmin, fmax = (t.view(n_units * 2, bins) for t in (fcount, fmin, fmax))
    f, j = _locate(fcount, pos.reshape(-1))
    n = fcount.gather(1, f[:, None])[:, 0].double()
    vmin, vmax = fmin.gather(1, f[:, None])[:, 0], fmax.gather(1, f[:, None])[:, 0]
    t = torch.where(n > 1, j.double() / (n - 1).clamp(min=1), torch.zeros_like(n))
    stats = (vmin + (vmax - vmin) * t).view(n_units, 2).cpu().numpy()
    frac = (r - k0.double()).cpu().numpy()
    return stats[:, 0] + frac * (stats[:, 1] - stats[:, 0])


# -- 2./3. masks and the IoU tally ---------------------------------------------------------------
def label_shape(ann: "Annotation", probe: "ProbeSet", index: int) -> tuple[int, int]:
    """The label resolution (H, W) of image ``index``."""
    if ann.shape is not None:
        return int(ann.shape[0]), int(ann.shape[1])
    for layers in ann.pixel.values():
        return int(layers.shape[-2]), int(layers.shape[-1])
    width, height = probe.image(index).size
    return height, width


def unit_masks(maps: "torch.Tensor", thresholds: "torch.Tensor", shape: tuple[int, int]) -> "torch.Tensor":
    """Bilinearly upsample one image's maps (U, h, w) to ``shape``; return the masks map > T (U, H, W)."""
    import torch
    import torch.nn.functional as F

    if maps.shape[0] == 0:
        return torch.zeros((0, *shape), dtype=torch.bool, device=maps.device)
    up = F.interpolate(maps[None].float(), size=shape, mode="bilinear", align_corners=False)[0]
    return up > float32_floor(thresholds.to(up.device))[:, None, None]


def float32_floor(thresholds: "torch.Tensor") -> "torch.Tensor":
    """The largest float32 <= each threshold: for float32 x, ``x > T`` iff ``x > float32_floor(T)``."""
    import torch

    t32 = thresholds.float()
    above = t32.double() > thresholds.double()
    return torch.where(above, torch.nextafter(t32, torch.full_like(t32, float("-inf"))), t32)


def tally_image(tally: "IoUTally", maps: "torch.Tensor", thresholds: "torch.Tensor",
                ann: "Annotation", shape: tuple[int, int]) -> None:
    """Add one image's maps (U, h, w) to ``tally``; only units whose map exceeds its threshold
    somewhere are upsampled (bilinear values never exceed the map's maximum)."""
    active = (maps.flatten(1).amax(1) > float32_floor(thresholds)).nonzero()[:, 0]
    masks = unit_masks(maps[active], thresholds[active], shape)
    tally.add(masks, ann, active)


class IoUTally:
    """Streaming intersection / mask / label counts of units x concepts (see module docstring)."""

    def __init__(self, concepts: Sequence["Concept"], n_units: int, device: str = "cpu") -> None:
        import torch

        self.concepts = list(concepts)
        self.categories = list(dict.fromkeys(c.category for c in self.concepts))
        ids = np.array([c.id for c in self.concepts], np.int64)
        self.lookup = np.full(int(ids.max()) + 1 if len(ids) else 1, -1, np.int64)
        self.lookup[ids] = np.arange(len(ids))
        self.device = torch.device(device)
        self.concept_category = torch.as_tensor(
            [self.categories.index(c.category) for c in self.concepts], device=self.device)
        self.intersection = torch.zeros(n_units, len(ids), dtype=torch.long, device=self.device)
        self.label_count = torch.zeros(len(ids), dtype=torch.long, device=self.device)
        self.mask_by_category = torch.zeros(n_units, len(self.categories), dtype=torch.long,
                                            device=self.device)

    def columns(self, ids: np.ndarray) -> np.ndarray:
        """Concept ids -> tally columns (-1 for 0 / unknown ids)."""
        ids = np.asarray(ids, np.int64)
        ok = (ids > 0) & (ids < len(self.lookup))
        return np.where(ok, self.lookup[np.clip(ids, 0, len(self.lookup) - 1)], -1)

    def add(self, masks: "torch.Tensor", ann: "Annotation",
            units: "torch.Tensor | None" = None) -> None:
        """Add one image: ``masks`` (A, H, W) bool at the label resolution for the tally rows
        ``units`` (default: all rows, A = n_units), ``ann`` the image's labels.  Rows left out
        are units whose mask is empty in this image; labels are counted either way."""
        import torch

        present = [k for k, c in enumerate(self.categories) if c in ann.categories]
        if not present:
            return
        shape = (int(masks.shape[1]), int(masks.shape[2]))
        n_pixels = shape[0] * shape[1]
        whole = self._image_level_columns(ann)
        cols, onehot = self._pixel_onehot(ann, shape, exclude=whole)
        self.label_count[torch.as_tensor(whole, device=self.device)] += n_pixels
        self.label_count[cols] += onehot.sum(1)
        if units is None:
            units = torch.arange(self.intersection.shape[0], device=self.device)
        if not len(units):
            return
        units = units.to(self.device)[:, None]
        flat = masks.to(self.device).reshape(len(units), n_pixels).float()
        weights = torch.cat([onehot.float(), torch.ones(1, n_pixels, device=self.device)])
        counts = (flat @ weights.T).round_().long()  # exact: integer counts < 2**24
        mask_sum = counts[:, -1:]
        accumulate = lambda t, c, v: t.index_put_((units, c[None]), v, accumulate=True)  # noqa: E731
        accumulate(self.mask_by_category, torch.as_tensor(present, device=self.device),
                   mask_sum.expand(-1, len(present)))
        accumulate(self.intersection, cols, counts[:, :-1])
        whole_t = torch.as_tensor(whole, device=self.device)
        accumulate(self.intersection, whole_t, mask_sum.expand(-1, len(whole)))

    def _image_level_columns(self, ann: "Annotation") -> np.ndarray:
        ids = [i for c, lst in ann.image_level.items() if c in self.categories for i in lst]
        cols = self.columns(np.array(ids, np.int64))
        return np.unique(cols[cols >= 0])

    def _pixel_onehot(self, ann: "Annotation", shape: tuple[int, int],
                      exclude: np.ndarray) -> tuple["torch.Tensor", "torch.Tensor"]:
        """Columns (n,) of the concepts labelled at pixels, and their masks (n, H*W) bool; a
        concept on several layers of one pixel counts once; ``exclude`` columns are left out."""
        import torch

        layers = [self._layers_at(arr, shape) for c, arr in ann.pixel.items() if c in self.categories]
        if not layers:
            return (torch.zeros(0, dtype=torch.long, device=self.device),
                    torch.zeros(0, shape[0] * shape[1], dtype=torch.bool, device=self.device))
        cols = self.columns(np.concatenate(layers))  # (L, H*W)
        if len(exclude):
            cols[np.isin(cols, exclude)] = -1
        layer_idx, pixel_idx = np.nonzero(cols >= 0)
        hit = cols[layer_idx, pixel_idx]
        present = np.flatnonzero(np.bincount(hit, minlength=len(self.concepts)))
        local = np.zeros(len(self.concepts), np.int64)
        local[present] = np.arange(len(present))
        onehot = torch.zeros(len(present), shape[0] * shape[1], dtype=torch.bool, device=self.device)
        onehot[torch.as_tensor(local[hit], device=self.device),
               torch.as_tensor(pixel_idx, device=self.device)] = True
        return torch.as_tensor(present, device=self.device), onehot

    @staticmethod
    def _layers_at(arr: "np.ndarray", shape: tuple[int, int]) -> np.ndarray:
        """Label layers (L, H, W) as (L, H*W) at ``shape`` (nearest-neighbour if resized)."""
        arr = np.asarray(arr, np.int64)
        arr = arr.reshape(-1, *arr.shape[-2:])
        if arr.shape[-2:] != shape:
            rows = (np.arange(shape[0]) * arr.shape[-2]) // shape[0]
            cols = (np.arange(shape[1]) * arr.shape[-1]) // shape[1]
            arr = arr[:, rows[:, None], cols[None, :]]
        return arr.reshape(arr.shape[0], -1)

    def iou(self) -> np.ndarray:
        """IoU (units, concepts) = I / (ΣM_cat + ΣL − I), 0 where the denominator is 0."""
        mask = self.mask_by_category[:, self.concept_category]
        union = (mask + self.label_count[None] - self.intersection).double()
        iou = self.intersection.double() / union.clamp(min=1)
        return iou.masked_fill_(union <= 0, 0.0).cpu().numpy()


# -- the describer -------------------------------------------------------------------------------
@DESCRIBERS.register("netdissect")
class NetDissect(Describer):
    """Network Dissection: label = the Broden concept whose masks best overlap (IoU) the unit's
    top-0.5 % activation region."""

    @dataclass
    class Config(DescriberConfig):
        """``quantile``: top fraction of activations kept (T_k); ``score_threshold``: IoU above
        which a unit is a detector; ``categories``: concept categories (None = all of the probe);
        ``batch_size``: images per streamed batch; ``clean_labels``: readable Broden names;
        ``histogram_bins``: bins of the streaming quantile (precision (max - min) / bins**2)."""

        quantile: float = 0.005
        score_threshold: float = 0.04
        categories: list[str] | None = None
        batch_size: int = 64
        clean_labels: bool = True
        histogram_bins: int = 4096

    needs_weights = True
    needs_probe = True
    version = "1"

    def __init__(self, config: "NetDissect.Config") -> None:
        super().__init__(config)
        self.config: NetDissect.Config = config
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

    def thresholds(self, ctx: "Context") -> np.ndarray:
        """T_k for every unit of ``ctx.units``: the top-``quantile`` activation value."""
        units = list(ctx.units)
        pooled = ctx.activations.pooled(ctx.layer)
        lo = pooled.min[:, units].min(0).astype(np.float64)
        hi = pooled.max[:, units].max(0).astype(np.float64)
        return streaming_quantile(lambda: self._maps(ctx), lo, hi, 1.0 - self.config.quantile,
                                  bins=self.config.histogram_bins, device=ctx.activations.device)

    def _maps(self, ctx: "Context") -> Iterable["torch.Tensor"]:
        for _, maps in ctx.activations.stream_maps(ctx.layer, ctx.units, self.config.batch_size):
            yield maps

    def tally(self, ctx: "Context", concepts: Sequence["Concept"],
              thresholds: np.ndarray) -> IoUTally:
        """Stream the maps once more and count intersections / masks / labels."""
        import torch

        device = ctx.activations.device
        tally = IoUTally(concepts, len(ctx.units), device=device)
        t = torch.as_tensor(thresholds, dtype=torch.float64, device=device)
        wanted = set(tally.categories)
        for indices, maps in ctx.activations.stream_maps(ctx.layer, ctx.units,
                                                         self.config.batch_size):
            for j, index in enumerate(indices.tolist()):
                ann = ctx.probe.annotation(index)
                if not ann.categories & wanted:
                    continue
                tally_image(tally, maps[j].to(device), t, ann,
                            label_shape(ann, ctx.probe, index))
        return tally

    def describe(self, ctx: "Context") -> list[Description]:
        concepts = self.select_concepts(ctx.probe)
        if not ctx.units:
            return []
        thresholds = self.thresholds(ctx)
        tally = self.tally(ctx, concepts, thresholds)
        iou = tally.iou()
        return [self.summarise(unit, iou[row], tally, float(thresholds[row]))
                for row, unit in enumerate(ctx.units)]

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
