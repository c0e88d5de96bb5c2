"""The activation stage: unit activations of one layer over a probe set, via forward hooks
(:func:`dndbench.hooks.record_outputs`).

* :meth:`Activations.pooled` — per-unit spatial mean / max / min for every probe image and every
  unit of the layer, computed in one streamed pass (peak memory is one batch plus the
  ``images x units`` result, written in place batch by batch) and cached under a
  content-addressed key.
* :meth:`Activations.stream_maps` — the un-pooled maps of chosen units, streamed batch by batch
  and never stored, for describers that need them over the whole probe set (Network Dissection).
* :meth:`Activations.maps` — un-pooled maps of chosen units for a few chosen images (top-k).
* :meth:`Activations.pooled_for_images` — pooled activations of arbitrary extra images
  (crops, generated images).

The forward pass stops as soon as the hooked layer has run, so early layers are cheap.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np

from dndbench.cache import Cache, stable_hash
from dndbench.errors import DataError
from dndbench.hooks import first_tensor, record_outputs

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from dndbench.models.base import TargetModel
    from dndbench.probes.base import ProbeSet

POOLINGS = ("mean", "max", "min")


@dataclass
class PooledActivations:
    """Pooled activations of all units of a layer: arrays of shape (images, units)."""

    mean: np.ndarray
    max: np.ndarray
    min: np.ndarray

    def get(self, pooling: str) -> np.ndarray:
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        return getattr(self, pooling)


def pool_stats(out: "torch.Tensor") -> "torch.Tensor":
    """Per-unit spatial mean, max and min (3, B, U) of a layer output (B, U, h, w); outputs
    without spatial extent (B, U) are their own mean, max and min."""
    import torch

    if out.dim() != 4:
        return out.expand(3, *out.shape)
    flat = out.flatten(2)
    return torch.stack([flat.mean(2), flat.amax(2), flat.amin(2)])


class _ProbeImages:
    """Map-style dataset: probe index -> (index, transformed image)."""

    def __init__(self, probe: "ProbeSet", transform: Any, indices: Sequence[int] | None = None):
        self.probe, self.transform = probe, transform
        self.indices = list(range(len(probe))) if indices is None else list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[int, "torch.Tensor"]:
        index = self.indices[i]
        return index, self.transform(self.probe.image(index))


def pick_device(requested: str) -> str:
    """``auto`` -> cuda if available, else cpu."""
    if requested != "auto":
        return requested
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class Activations:
    """Activations of ``model`` over ``probe``; one instance is shared by all describers of a run."""

    def __init__(self, model: "TargetModel", probe: "ProbeSet", cache: Cache, *,
                 device: str = "cpu", batch_size: int = 64, num_workers: int = 0,
                 progress: bool = True) -> None:
        self.model, self.probe, self.cache = model, probe, cache
        self.device = pick_device(device)
        self.batch_size, self.num_workers, self.progress = batch_size, num_workers, progress
        self.images_forwarded = 0  # probe/extra images pushed through the network by this object

    # -- keys ------------------------------------------------------------------------------------
    def key(self, layer: str) -> str:
        """Cache key of the pooled activations of ``layer``."""
        return stable_hash("activations/v1", self.model.config.name, self.model.weights_fingerprint(),
                           self.probe.config.name, self.probe.fingerprint(),
                           self.model.resolve_layer(layer))

    # -- internals -------------------------------------------------------------------------------
    def _network(self) -> "torch.nn.Module":
        return self.model.network(pretrained=True).to(self.device)

    def _loader(self, indices: Sequence[int] | None = None, batch_size: int | None = None) -> Any:
        from torch.utils.data import DataLoader

        dataset: Any = _ProbeImages(self.probe, self.model.transform(), indices)  # map-style
        return DataLoader(dataset, batch_size=batch_size or self.batch_size, shuffle=False,
                          num_workers=self.num_workers)

    def _layer_output(self, net: "torch.nn.Module", layer: str, batch: "torch.Tensor") -> "torch.Tensor":
        """Run ``batch`` up to ``layer`` and return its output (B, U) or (B, U, h, w)."""
        import torch

        with record_outputs(net, [layer], first_tensor, stop=True) as captured, torch.no_grad():
            net(batch.to(self.device))
        if layer not in captured:
            raise DataError(f"layer {layer!r} did not run during the forward pass")
        out = captured[layer]
        if out.dim() == 3:  # transformer tokens (B, T, D): use the CLS token, as DnD does
            out = out[:, 0]
        return out.float()

    def _progress(self, iterable: Any, desc: str, total: int | None = None) -> Any:
        from tqdm.auto import tqdm

        return tqdm(iterable, desc=desc, total=total, disable=not self.progress, leave=False,
                    unit="batch")

    # -- public API ------------------------------------------------------------------------------
    def pooled(self, layer: str) -> PooledActivations:
        """Mean/max/min over space of every unit of ``layer`` for every probe image (cached)."""
        layer = self.model.resolve_layer(layer)
        key = self.key(layer)

        def compute() -> np.ndarray:
            net = self._network()
            result = np.zeros((3, len(self.probe), 0), np.float32)
            row = 0
            for _, batch in self._progress(self._loader(), f"activations {layer}"):
                stats = self.pooled_batch(net, layer, batch)
                if row == 0:  # the units are known once the layer has run
                    result = np.empty((3, len(self.probe), stats.shape[2]), np.float32)
                result[:, row:row + len(batch)] = stats  # one copy per batch
                row += len(batch)
            return result

        arr = self.cache.array("activations", key, compute)
        return PooledActivations(mean=arr[0], max=arr[1], min=arr[2])

    def pooled_batch(self, net: "torch.nn.Module", layer: str, batch: "torch.Tensor") -> np.ndarray:
        """The per-batch step of :meth:`pooled`: mean / max / min (3, B, U) of one input batch."""
        stats = pool_stats(self._layer_output(net, layer, batch))
        self.images_forwarded += len(batch)
        return stats.cpu().numpy()

    def stream_maps(self, layer: str, units: Sequence[int],
                    batch_size: int | None = None) -> Iterator[tuple[np.ndarray, "torch.Tensor"]]:
        """Yield ``(probe indices, maps)`` per batch; maps is (B, len(units), h, w), h = w = 1 for
        layers without spatial extent.  Nothing is stored, so memory does not grow with the probe."""
        layer = self.model.resolve_layer(layer)
        units_t = list(units)
        net = self._network()
        for indices, batch in self._progress(self._loader(batch_size=batch_size), f"maps {layer}"):
            out = self._layer_output(net, layer, batch)
            self.images_forwarded += len(batch)
            out = out[:, units_t]
            if out.dim() == 2:
                out = out[:, :, None, None]
            yield indices.numpy(), out

    def maps(self, layer: str, units: Sequence[int], image_indices: Sequence[int]) -> np.ndarray:
        """Un-pooled maps (len(image_indices), len(units), h, w) for chosen probe images."""
        layer = self.model.resolve_layer(layer)
        net = self._network()
        order = list(image_indices)
        outs = []
        for _, batch in self._loader(order):
            out = self._layer_output(net, layer, batch)[:, list(units)]
            self.images_forwarded += len(batch)
            outs.append((out if out.dim() == 4 else out[:, :, None, None]).cpu().numpy())
        return np.concatenate(outs) if outs else np.zeros((0, len(units), 1, 1), np.float32)

    def pooled_for_images(self, layer: str, images: Sequence["Image.Image"],
                          pooling: str = "mean") -> np.ndarray:
        """Pooled activations (len(images), units) of arbitrary PIL images (not cached here)."""
        import torch

        layer = self.model.resolve_layer(layer)
        net = self._network()
        transform = self.model.transform()
        outs = []
        for start in range(0, len(images), self.batch_size):
            batch = torch.stack([transform(im) for im in images[start:start + self.batch_size]])
            out = self._layer_output(net, layer, batch)
            self.images_forwarded += len(batch)
            if out.dim() == 4:
                out = {"mean": out.mean((2, 3)), "max": out.amax((2, 3)),
                       "min": out.amin((2, 3))}[pooling]
            outs.append(out.cpu().numpy())
        return np.concatenate(outs) if outs else np.zeros((0, 0), np.float32)
