"""A tiny Broden-layout folder for tests, with known planted structure.

Every image is ``size`` x ``size`` px, labels are at half resolution (like ``broden1_224``: 224 px
images, 112 px labels).  Planted content, all aligned to a grid of 8 image pixels:

* a grey wall (object ``wall``, colour ``grey-c``) filling the background;
* in every third image (0, 3, 6, ...), a small **red** square of 8 x 8 px (colour ``red-c``, no
  object) with noisy intensity, so a red-sensitive unit has a well defined top quantile;
* a blue ball, 16 x 16 px (object ``ball``, colour ``blue-c``);
* in every other image, a second object layer marks a ``table`` overlapping half of the ball
  (two label PNGs in one cell), and a part ``handle`` on the ball's top rows (label.csv lists
  ``handle`` as ``part(5);object(1)``, so its category is ``part``).  Images without a handle have
  no part annotation at all (empty ``part`` cell);
* scenes ``kitchen-s`` / ``wine_cellar-s`` alternate; every third image has texture ``striped``
  (others: no texture annotation); ``material`` is never annotated.

Image 0 always has its red square at :data:`RED_BOX_0`; other positions are drawn from ``seed``.
"""
from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

LABELS: list[tuple[int, str, str]] = [
    (1, "red-c", "color(12)"),
    (2, "blue-c", "color(12)"),
    (3, "grey-c", "color(12)"),
    (4, "wall", "object(12)"),
    (5, "ball", "object(12)"),
    (6, "table", "object(6)"),
    (7, "handle", "part(5);object(1)"),
    (8, "kitchen-s", "scene(6)"),
    (9, "wine_cellar-s", "scene(6)"),
    (10, "striped", "texture(4)"),
    (11, "dotted", "texture(0)"),
]
RED, BLUE, GREY, WALL, BALL, TABLE, HANDLE, KITCHEN, CELLAR, STRIPED, DOTTED = range(1, 12)
CATEGORIES = ("color", "object", "part", "material", "scene", "texture")
#: (row, col, side) of image 0's red square, in image pixels
RED_BOX_0 = (8, 8, 8)


def encode_labels(labels: np.ndarray) -> np.ndarray:
    """Label numbers (H, W) -> a Broden label PNG array (H, W, 3): R = n % 256, G = n // 256."""
    rgb = np.zeros(labels.shape + (3,), np.uint8)
    rgb[..., 0] = labels % 256
    rgb[..., 1] = labels // 256
    return rgb


def _layout(rng: np.random.Generator, index: int, size: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Top-left corners of the red square (8 px) and the ball (16 px), not overlapping."""
    cells = size // 8
    while True:
        red = RED_BOX_0[:2] if index == 0 else tuple(8 * rng.integers(0, cells, 2))
        ball = tuple(8 * rng.integers(0, cells - 1, 2))
        if not (ball[0] - 8 < red[0] < ball[0] + 16 and ball[1] - 8 < red[1] < ball[1] + 16):
            return red, ball


def _image(rng: np.random.Generator, size: int, red: tuple[int, int] | None,
           ball: tuple[int, int]) -> np.ndarray:
    img = np.full((size, size, 3), 128, np.float64) + rng.normal(0, 3, (size, size, 3))
    if red is not None:
        r, c = red
        img[r:r + 8, c:c + 8] = [0, 20, 20]
        img[r:r + 8, c:c + 8, 0] = rng.uniform(140, 255) + rng.normal(0, 12, (8, 8))
    r, c = ball
    img[r:r + 16, c:c + 16] = [20, 30, 220]
    return np.clip(img, 0, 255).astype(np.uint8)


def _save_png(path: Path, labels: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(encode_labels(labels)).save(path)


def make_broden_fixture(root: Path | str, n_images: int = 12, seed: int = 0,
                        size: int = 64) -> Path:
    """Write a valid Broden-layout folder with ``n_images`` images under ``root``; return ``root``."""
    from PIL import Image

    if size % 16 or size < 32:
        raise ValueError("size must be a multiple of 16 and at least 32")
    root = Path(root)
    (root / "images" / "fix").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    seg = size // 2
    rows = []
    for i in range(n_images):
        red, ball = _layout(rng, i, size)
        has_red = i % 3 == 0
        name = f"fix/img_{i:04d}"
        Image.fromarray(_image(rng, size, red if has_red else None, ball)).save(
            root / "images" / f"{name}.jpg", quality=95, subsampling=0)
        half = lambda yx: (yx[0] // 2, yx[1] // 2)  # noqa: E731
        (rr, rc), (br, bc) = half(red), half(ball)
        color = np.full((seg, seg), GREY, np.int32)
        if has_red:
            color[rr:rr + 4, rc:rc + 4] = RED
        color[br:br + 8, bc:bc + 8] = BLUE
        obj = np.full((seg, seg), WALL, np.int32)
        obj[br:br + 8, bc:bc + 8] = BALL
        _save_png(root / "images" / f"{name}_color.png", color)
        _save_png(root / "images" / f"{name}_object.png", obj)
        cells = {c: "" for c in CATEGORIES}
        cells["color"] = f"{name}_color.png"
        cells["object"] = f"{name}_object.png"
        if i % 2 == 0:
            table = np.zeros((seg, seg), np.int32)
            table[br:br + 8, bc:bc + 4] = TABLE
            _save_png(root / "images" / f"{name}_object2.png", table)
            cells["object"] += f";{name}_object2.png"
            part = np.zeros((seg, seg), np.int32)
            part[br:br + 2, bc:bc + 8] = HANDLE
            _save_png(root / "images" / f"{name}_part.png", part)
            cells["part"] = f"{name}_part.png"
        cells["scene"] = str(KITCHEN if i % 2 == 0 else CELLAR)
        if i % 3 == 0:
            cells["texture"] = str(STRIPED)
        rows.append({"image": f"{name}.jpg", "split": "train" if i % 4 else "val",
                     "ih": size, "iw": size, "sh": seg, "sw": seg, **cells})
    _write_csv(root / "index.csv", ["image", "split", "ih", "iw", "sh", "sw", *CATEGORIES], rows)
    _write_labels(root)
    return root


def _write_csv(path: Path, fields: list[str], rows: Sequence[Mapping[str, object]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def _write_labels(root: Path) -> None:
    rows = [{"number": n, "name": name, "category": cat, "frequency": 1, "coverage": 0.1,
             "syns": ""} for n, name, cat in LABELS]
    _write_csv(root / "label.csv", ["number", "name", "category", "frequency", "coverage", "syns"],
               rows)
    for category in CATEGORIES:
        members = [(n, name) for n, name, cat in LABELS if cat.split("(")[0] == category]
        _write_csv(root / f"c_{category}.csv", ["code", "number", "name", "frequency", "coverage"],
                   [{"code": code, "number": n, "name": name, "frequency": 1, "coverage": 0.1}
                    for code, (n, name) in enumerate(members, start=1)])
