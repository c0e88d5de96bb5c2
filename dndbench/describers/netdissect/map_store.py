"""A disk-backed store of one layer's activation maps over the probe set, so Network Dissection
runs the network once and reads the maps back as often as it needs (the NetDissect-Lite way).

:class:`MapStore` appends float32 batches (B, U, h, w) to a raw file in the run's cache folder
and reads them back in batches through short-lived :class:`numpy.memmap` windows: each window is
copied out and unmapped at once, so resident memory stays one batch whatever the probe size (a
single mapping of the whole file would keep every page it touched resident).  The file is
deleted when the store is closed.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Iterator

import numpy as np

if TYPE_CHECKING:
    import torch


def store_bytes(n_images: int, n_units: int, map_shape: tuple[int, int]) -> int:
    """Size in bytes of the maps of ``n_images`` images, ``n_units`` units, (h, w) each."""
    return 4 * n_images * n_units * map_shape[0] * map_shape[1]


def free_bytes(folder: Path) -> int:
    """Free disk space where ``folder`` is (or would be created)."""
    path = Path(folder)
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


class MapStore:
    """Maps (N, U, h, w) float32 in a temporary file under ``folder``, in probe order.

    Use as a context manager; :meth:`append` the batches of one pass in order, then iterate
    :meth:`batches` as often as needed."""

    def __init__(self, folder: Path | str) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=folder, prefix="maps-", suffix=".f32")
        self.path = Path(name)
        self._file = os.fdopen(fd, "wb")
        self.n_images = 0
        self.item_shape: tuple[int, ...] | None = None

    def append(self, maps: "torch.Tensor") -> None:
        """Append a batch of maps (B, U, h, w)."""
        array = np.ascontiguousarray(maps.detach().cpu().numpy(), dtype=np.float32)
        if self.item_shape is None:
            self.item_shape = tuple(array.shape[1:])
        elif tuple(array.shape[1:]) != self.item_shape:
            raise ValueError(f"map store: batch maps {array.shape[1:]} after {self.item_shape}")
        self._file.write(array.tobytes())
        self.n_images += len(array)

    def batches(self, batch_size: int) -> Iterator[tuple[np.ndarray, "torch.Tensor"]]:
        """``(probe indices, maps)`` per batch of ``batch_size`` images, in the order appended."""
        import torch

        self._file.flush()
        if self.item_shape is None:
            return
        item = int(np.prod(self.item_shape))
        for start in range(0, self.n_images, batch_size):
            count = min(batch_size, self.n_images - start)
            window = np.memmap(self.path, dtype=np.float32, mode="r", offset=4 * item * start,
                               shape=(count, *self.item_shape))
            maps = torch.from_numpy(np.array(window))  # copy out, then unmap
            del window
            yield np.arange(start, start + count), maps

    def close(self) -> None:
        """Close and delete the file."""
        if not self._file.closed:
            self._file.close()
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> "MapStore":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
