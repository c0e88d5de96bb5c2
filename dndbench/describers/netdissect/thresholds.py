"""Network Dissection's activation thresholds: the per-unit top-quantile value T_k of a unit's
activations over every spatial position of every probe image, found in bounded memory by a
two-pass histogram (:class:`StreamingQuantile`, :func:`streaming_quantile`)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Iterable, Iterator

import numpy as np

if TYPE_CHECKING:
    import torch


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


class StreamingQuantile:
    """Per-unit ``np.quantile(values, q)`` (linear interpolation) of maps fed as (B, U, h, w)
    batches in two passes over the same values: :meth:`add_coarse` for every batch, then
    :meth:`add_fine` for every batch again, then :meth:`result`.

    ``lo`` / ``hi`` (U,) bound each unit's values.  Memory is O(U * bins) plus a working set of
    ``max_values`` values, independent of the number of images.  The first pass builds a
    ``bins``-bin histogram per unit over [lo, hi]; the second splits each of the (at most two)
    bins holding the order statistics the quantile interpolates between into ``bins`` sub-bins
    and records each sub-bin's count and exact min and max value.  An order statistic is exact
    when it is the first or last value of its sub-bin (always so with <= 2 values or only ties
    in it); otherwise it is interpolated inside the sub-bin, so the error is at most about
    (hi - lo) / bins**2 — float32 resolution for the default 4096 bins.  Counts, minima and
    maxima do not depend on how the values are split into batches or on their order.
    """

    def __init__(self, lo: np.ndarray, hi: np.ndarray, q: float, bins: int = 4096,
                 device: str = "cpu", max_values: int = 1 << 22) -> None:
        import torch

        self.q, self.bins, self.max_values = q, bins, max_values
        self.dev = dev = torch.device(device)
        self.lo = torch.as_tensor(np.asarray(lo, np.float64), device=dev)
        hi_t = torch.as_tensor(np.asarray(hi, np.float64), device=dev)
        self.width = ((hi_t - self.lo) / bins).clamp_(min=1e-30)
        self.n_units = int(self.lo.shape[0])
        self.counts = torch.zeros(self.n_units, bins, dtype=torch.long, device=dev)
        self._fine: tuple["torch.Tensor", ...] | None = None

    def add_coarse(self, maps: "torch.Tensor") -> None:
        """Pass 1: add a batch (B, U, h, w) to the coarse histograms."""
        import torch

        bins = self.bins
        for part, x in _unit_chunks(maps, self.dev, self.max_values):
            idx = _bin_index(x, self.lo[part], self.width[part], bins)
            idx += torch.arange(idx.shape[0], device=self.dev)[:, None] * bins
            self.counts[part] += torch.bincount(idx.reshape(-1),
                                                minlength=idx.shape[0] * bins).view(-1, bins)

    def _start_fine(self) -> tuple["torch.Tensor", ...]:
        """After pass 1: the coarse bins of the order statistics and the sub-bin arrays."""
        import torch

        n_units, bins = self.n_units, self.bins
        total = self.counts.sum(1)
        if bool((total == 0).any()):
            raise ValueError("streaming_quantile: a unit has no values")
        r = self.q * (total - 1).double()
        k0 = r.floor().long()
        ranks = torch.stack([k0, torch.minimum(k0 + 1, total - 1)], 1)  # (U, 2) 0-based
        coarse, pos = (t.view(n_units, 2) for t in
                       _locate(self.counts.repeat_interleave(2, 0), ranks.view(-1)))
        fine_lo = self.lo[:, None] + coarse.double() * self.width[:, None]  # (U, 2)
        fine_w = (self.width / bins).clamp_(min=1e-30)
        fcount = torch.zeros(n_units * 2 * bins, dtype=torch.long, device=self.dev)
        fmin = torch.full_like(fcount, 0, dtype=torch.float64).fill_(float("inf"))
        fmax = torch.full_like(fmin, float("-inf"))
        return r, k0, coarse, pos, fine_lo, fine_w, fcount, fmin, fmax

    def add_fine(self, maps: "torch.Tensor") -> None:
        """Pass 2: add a batch (B, U, h, w) to the sub-bins of the order statistics' bins."""
        import torch

        if self._fine is None:
            self._fine = self._start_fine()
        _, _, coarse, _, fine_lo, fine_w, fcount, fmin, fmax = self._fine
        bins = self.bins
        for part, x in _unit_chunks(maps, self.dev, self.max_values):
            in_coarse = _bin_index(x, self.lo[part], self.width[part], bins)
            for which in (0, 1):
                unit, col = (in_coarse == coarse[part, which][:, None]).nonzero(as_tuple=True)
                unit += part.start
                vals = x[unit - part.start, col]
                sub = ((vals - fine_lo[unit, which]) / fine_w[unit]).floor_().clamp_(0, bins - 1)
                idx = (unit * 2 + which) * bins + sub.long()
                fcount.index_add_(0, idx, torch.ones_like(idx))
                fmin.scatter_reduce_(0, idx, vals, reduce="amin")
                fmax.scatter_reduce_(0, idx, vals, reduce="amax")

    def result(self) -> np.ndarray:
        """The per-unit quantiles (U,) once both passes have seen every batch."""
        import torch

        if self._fine is None:
            self._fine = self._start_fine()
        r, k0, _, pos, _, _, fcount, fmin, fmax = self._fine
        n_units, bins = self.n_units, self.bins
        fcount, fmin, fmax = (t.view(n_units * 2, bins) for t in (fcount, fmin, fmax))
        f, j = _locate(fcount, pos.reshape(-1))
        n = fcount.gather(1, f[:, None])[:, 0].double()
        vmin, vmax = fmin.gather(1, f[:, None])[:, 0], fmax.gather(1, f[:, None])[:, 0]
        t = torch.where(n > 1, j.double() / (n - 1).clamp(min=1), torch.zeros_like(n))
        stats = (vmin + (vmax - vmin) * t).view(n_units, 2).cpu().numpy()
        frac = (r - k0.double()).cpu().numpy()
        return stats[:, 0] + frac * (stats[:, 1] - stats[:, 0])


def streaming_quantile(batches: Callable[[], Iterable["torch.Tensor"]], lo: np.ndarray,
                       hi: np.ndarray, q: float, bins: int = 4096, device: str = "cpu",
                       max_values: int = 1 << 22) -> np.ndarray:
    """Per-unit ``np.quantile(values, q)`` of maps streamed as (B, U, h, w): ``batches()`` must
    yield the same values each time it is called (it is called twice); see
    :class:`StreamingQuantile` for the method, memory and precision."""
    quantile = StreamingQuantile(lo, hi, q, bins, device, max_values)
    for maps in batches():
        quantile.add_coarse(maps)
    for maps in batches():
        quantile.add_fine(maps)
    return quantile.result()
