"""CLIP-Dissect's similarity functions between neurons and concepts (Oikarinen & Weng, ICLR 2023;
``docs/describers/clip_dissect.md``).

Every function takes

* ``P`` (images, concepts): cosine of each probe image's CLIP embedding with each concept's;
* ``acts`` (images, units): pooled activations of **all** units of the layer (SoftWPMI / WPMI
  estimate p(t) over them);
* ``units``: the unit columns to return,

and returns sim (len(units), concepts), higher = better match.  Work is vectorised and done in
chunks of units whose gathered (units, images, concepts) block holds at most ``max_elements``
values, so memory stays bounded for large layers and concept sets.

Where the released code is random or undefined the choice made here is documented on the function.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np

from dndbench.registry import Choice

if TYPE_CHECKING:
    import torch

#: largest gathered (units, images, concepts) block; all arithmetic is float64
_MAX_ELEMENTS = 1 << 24


def _tensor(x: np.ndarray) -> "torch.Tensor":
    import torch

    return torch.as_tensor(np.asarray(x), dtype=torch.float64)


def top_indices(acts: "torch.Tensor", k: int) -> "torch.Tensor":
    """Indices (k, units) of each unit's k most activating images, highest first; ties keep the
    lower image index first (a stable sort, so results do not depend on the platform)."""
    import torch

    k = min(k, acts.shape[0])
    return torch.sort(acts, dim=0, descending=True, stable=True).indices[:k]


def _chunks(n_units: int, per_unit: int, max_elements: int) -> Iterator[slice]:
    step = max(1, max_elements // max(per_unit, 1))
    for start in range(0, n_units, step):
        yield slice(start, min(start + step, n_units))


def _log_conditional(probs: "torch.Tensor", order: "torch.Tensor",
                     membership: "torch.Tensor | None", min_prob: float,
                     max_elements: int) -> Iterator[tuple[slice, "torch.Tensor"]]:
    """Per chunk of units: log p(t | B_k) (chunk, concepts) from the top images ``order``
    (k, units).  ``membership`` (k,) = soft membership p_j (SoftWPMI) or None (hard set, WPMI)."""
    k, n_units = order.shape
    for part in _chunks(n_units, k * probs.shape[1], max_elements):
        gathered = probs[order[:, part].T]  # (chunk, k, concepts), a copy: modified in place
        if membership is not None:
            gathered.sub_(1).mul_(membership[None, :, None]).add_(1)
        yield part, gathered.add_(min_prob).log_().sum(1)


def _pmi(P: np.ndarray, acts: np.ndarray, units: Sequence[int], *, a: float, top_k: int,
         lam: float, membership: Callable[[int], "torch.Tensor"] | None,
         min_prob: float = 1e-7, max_elements: int = _MAX_ELEMENTS) -> np.ndarray:
    """log p(t|B_k) - lam * log p(t), with log p(t) = logsumexp_k log p(t|B_k) - log(#units)."""
    import torch

    probs = torch.softmax(a * _tensor(P), dim=1)
    order = top_indices(_tensor(acts), top_k)
    weights = membership(order.shape[0]) if membership is not None else None
    wanted = torch.as_tensor(list(units), dtype=torch.long)
    kept = torch.zeros(len(wanted), probs.shape[1], dtype=torch.float64)
    total = torch.full((probs.shape[1],), -math.inf, dtype=torch.float64)
    for part, log_cond in _log_conditional(probs, order, weights, min_prob, max_elements):
        total = torch.logaddexp(total, torch.logsumexp(log_cond, dim=0))
        inside = (wanted >= part.start) & (wanted < part.stop)
        kept[inside] = log_cond[wanted[inside] - part.start]
    log_prior = total - math.log(acts.shape[1])
    return (kept - lam * log_prior[None]).numpy()


def soft_membership(k: int, top_k: int, p_start: float, p_end: float) -> "torch.Tensor":
    """p_j = p_start - (j / top_k)(p_start - p_end) for the j-th ranked image, j = 0..k-1
    (linear 0.998 -> ~0.9703 for the defaults; ``k`` < ``top_k`` when the probe is small)."""
    import torch

    j = torch.arange(k, dtype=torch.float64)
    return p_start - j / top_k * (p_start - p_end)


def soft_wpmi(P: np.ndarray, acts: np.ndarray, units: Sequence[int], *, a: float = 10.0,
              top_k: int = 100, lam: float = 1.0, p_start: float = 0.998, p_end: float = 0.97,
              max_elements: int = _MAX_ELEMENTS, **_: Any) -> np.ndarray:
    """SoftWPMI (the default): p(t|x) = softmax(a P); B_k = top ``top_k`` images with soft
    membership p_j; log p(t|B_k) = Σ_j log(1 + p_j (p(t|x_j) - 1) + 1e-7)."""
    return _pmi(P, acts, units, a=a, top_k=top_k, lam=lam, max_elements=max_elements,
                membership=lambda k: soft_membership(k, top_k, p_start, p_end))


def wpmi(P: np.ndarray, acts: np.ndarray, units: Sequence[int], *, a: float = 2.0,
         top_k: int = 28, lam: float = 0.6, max_elements: int = _MAX_ELEMENTS,
         **_: Any) -> np.ndarray:
    """WPMI: hard top-``top_k`` set, log p(t|B_k) = Σ_j log(p(t|x_j) + 1e-7)."""
    return _pmi(P, acts, units, a=a, top_k=top_k, lam=lam, membership=None,
                max_elements=max_elements)


def _normalise_columns(x: "torch.Tensor", min_norm: float) -> "torch.Tensor":
    return x / x.norm(dim=0, keepdim=True).clamp(min=min_norm)


def cos(P: np.ndarray, acts: np.ndarray, units: Sequence[int], **_: Any) -> np.ndarray:
    """Cosine over the probe images between a unit's activations and a concept's P column
    (no centring, as released; a constant column gets similarity 0)."""
    a = _normalise_columns(_tensor(acts)[:, list(units)], 1e-12)
    return (a.T @ _normalise_columns(_tensor(P), 1e-12)).numpy()


def cos_pow3(P: np.ndarray, acts: np.ndarray, units: Sequence[int], **_: Any) -> np.ndarray:
    """Cosine of mean-centred, cubed vectors (column norms clamped at 1e-3, as released)."""
    def prepare(x: "torch.Tensor") -> "torch.Tensor":
        return _normalise_columns((x - x.mean(dim=0, keepdim=True)) ** 3, 1e-3)

    return (prepare(_tensor(acts)[:, list(units)]).T @ prepare(_tensor(P))).numpy()


def rank_reorder(P: np.ndarray, acts: np.ndarray, units: Sequence[int], *,
                 top_fraction: float = 0.05, power: float = 3.0, scale_p: float = 0.5,
                 max_elements: int = _MAX_ELEMENTS, **_: Any) -> np.ndarray:
    """Rank-reorder: on the unit's top ``top_fraction`` images (at least 2) with activations
    t_1 >= ... >= t_n, reorder the activations by the concept's P ranking (the image with the
    r-th highest P gets the r-th highest activation) and measure
    err = mean_j |t_j - t_reordered_j|^p / base,  sim = -err / mean_j(P_j)^scale_p.

    ``base`` is the released code's normaliser — the mean |t - t_shuffled|^p over 5 random
    shuffles — replaced by its exact expectation mean_{i,j} |t_i - t_j|^p (deterministic);
    the mean P is clamped at 1e-6 before the power (the released code gives NaN for P <= 0).
    """
    import torch

    acts_u = _tensor(acts)[:, list(units)]
    n = min(acts_u.shape[0], max(2, int(acts_u.shape[0] * top_fraction)))
    order = top_indices(acts_u, n)  # (n, units)
    target = acts_u.gather(0, order).T  # (units, n), descending
    base = (target[:, :, None] - target[:, None, :]).abs().pow(power).mean((1, 2)).clamp(min=1e-12)
    clip = _tensor(P)
    out = torch.empty(len(units), clip.shape[1], dtype=torch.float64)
    for part in _chunks(len(units), 2 * n * clip.shape[1], max_elements):
        values = clip[order[:, part].T]  # (chunk, n, concepts)
        by_p = torch.sort(values, dim=1, descending=True, stable=True).indices  # r-th highest P
        t = target[part]
        reordered = torch.empty_like(values).scatter_(1, by_p, t[:, :, None].expand_as(values))
        err = (t[:, :, None] - reordered).abs().pow(power).mean(1) / base[part, None]
        out[part] = -err / values.mean(1).clamp(min=1e-6).pow(scale_p)
    return out.numpy()


class Similarity(Choice):
    """The ``similarity`` option: a key of :data:`SIMILARITIES`."""

    soft_wpmi = "soft_wpmi"
    wpmi = "wpmi"
    cos = "cos"
    cos_pow3 = "cos_pow3"
    rank_reorder = "rank_reorder"


SIMILARITIES: dict[str, Callable[..., np.ndarray]] = {
    Similarity.soft_wpmi.value: soft_wpmi,
    Similarity.wpmi.value: wpmi,
    Similarity.cos.value: cos,
    Similarity.cos_pow3.value: cos_pow3,
    Similarity.rank_reorder.value: rank_reorder,
}
