"""A small generated annotation folder in the released MILANNOTATIONS layout, for tests:
``annotations.csv`` (layer,unit,summary) and per layer ``images.npy`` (units, k, 3, H, W) uint8,
``masks.npy`` (units, k, 1, H, W) and (for ``layer2``) ``units.npy``."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 60, 220)}
#: (layer, unit) -> colour its exemplars show; layer2 stores units 5, 7, 9 (via units.npy)
UNITS = {("layer1", 0): "red", ("layer1", 1): "green", ("layer1", 2): "blue",
         ("layer2", 5): "blue", ("layer2", 7): "red", ("layer2", 9): "green"}


def make_milannotations(root: Path | str, k: int = 4, size: int = 16, seed: int = 0) -> Path:
    """Write the fixture under ``root`` and return it; unit (layer1, 2) has no description."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    rows = []
    for layer in ("layer1", "layer2"):
        units = [u for (lay, u) in UNITS if lay == layer]
        images = np.zeros((len(units), k, 3, size, size), np.uint8)
        masks = np.zeros((len(units), k, 1, size, size), np.float32)
        for i, unit in enumerate(units):
            colour = UNITS[layer, unit]
            images[i] = rng.integers(100, 150, size=(k, 3, size, size), dtype=np.uint8)
            for j in range(k):
                y, x = rng.integers(0, size // 2, size=2)
                images[i, j, :, y:y + size // 2, x:x + size // 2] = np.array(COLOURS[colour])[:, None, None]
                masks[i, j, 0, y:y + size // 2, x:x + size // 2] = 1
            if (layer, unit) != ("layer1", 2):
                rows += [(layer, unit, f"{colour} things"), (layer, unit, f"the colour {colour}"),
                         (layer, unit, f"{colour} regions")]
        folder = root / layer
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / "images.npy", images)
        np.save(folder / "masks.npy", masks)
        if layer == "layer2":
            np.save(folder / "units.npy", np.array(units, np.int64))
    with open(root / "annotations.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["layer", "unit", "summary"])
        writer.writerows(rows)
    return root
