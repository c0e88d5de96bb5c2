"""The views the toy backends are trained and measured on (:mod:`dndbench.toyworld.train_toy_backends`).

* **Views** (:class:`Views`): network inputs (64x64) with their caption slots, their kind
  (``full``, ``crop``, ``patch``) and, for training, each view's object mask and its objects'
  shape and texture indices.  :func:`training_views` makes every training image whole, random
  crops of its main object (its box with a random 5-30 % margin and jittered edges, cut from the
  image enlarged to twice its size: :func:`fast_crop`, close to DnD's crops from the image
  enlarged to 375 px) and, for a share of the images, an object-free square at a random free
  place, whose only slots are the scene and "no object".  A crop's distractor slots describe
  the second object only when most of it is inside the crop.  :func:`report_views` cuts the
  held-out views exactly as ``toyworld-report`` does.
* **Dense targets** (:func:`dense_targets`): per 16x16 cell, the shares of background, main
  object and distractor pixels, and the texture there; :func:`true_boxes` reads the objects'
  boxes from the shares as the network reads them from its predicted masks.
* **Data**: :func:`training_data` draws the training scenes (more outlined main objects and
  second objects than the world draws), :func:`world_data` the world's own scenes.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from dndbench.toyworld.world import SceneSpec

#: the views the backends are trained and measured on
VIEWS = ("full", "crop", "patch")


@dataclass
class Views:
    """Network inputs with their slots and view kind, and (for training) each view's object
    mask (64x64: 0 background, 1 main object, 2 distractor) and its objects' shape and texture
    indices (``objects[i, k] = (shape, texture)`` of object k + 1, -1 when absent)."""

    images: np.ndarray                    # (N, 3, 64, 64) uint8
    slots: list[dict[str, str | None]]
    kinds: list[str]                      # "full", "crop" or "patch"
    masks: np.ndarray | None = None       # (N, 64, 64) int8
    objects: np.ndarray | None = None     # (N, 2, 2) int64

    def __len__(self) -> int:
        return len(self.kinds)


def _join(parts: list[Views]) -> Views:
    return Views(np.concatenate([p.images for p in parts]), [s for p in parts for s in p.slots],
                 [k for p in parts for k in p.kinds])


def _object_indices(spec: SceneSpec) -> np.ndarray:
    from dndbench.toyworld.captions import SLOT_VALUES

    out = np.full((2, 2), -1, np.int64)
    for k, obj in enumerate(spec.objects[:2]):
        out[k] = (SLOT_VALUES["shape"].index(obj.shape), SLOT_VALUES["texture"].index(obj.texture))
    return out


def crop_mask(mask: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """The object mask of a crop ``box``, resized (nearest) to the network's input size."""
    from PIL import Image

    from dndbench.toyworld.backend_network import INPUT_SIZE

    image = Image.fromarray(np.clip(mask, 0, 2).astype(np.uint8), "L")
    x0, y0, x1, y1 = (float(v) for v in box)
    return np.asarray(image.resize((INPUT_SIZE, INPUT_SIZE), Image.Resampling.NEAREST,
                                   box=(x0, y0, x1, y1))).astype(np.int8)


def crop_slots(spec: SceneSpec, mask: np.ndarray, box: tuple[int, int, int, int]
               ) -> dict[str, str | None]:
    """The slots of a crop ``box`` (x0, y0, x1, y1) of the main object: the image's, with the
    distractor present when at least half of its pixels are inside, absent when at most a
    tenth are, and unknown (None) in between."""
    from dndbench.toyworld.captions import DISTRACTOR_SLOTS, spec_slots

    slots = spec_slots(spec, mask)
    if slots["distractor"] == "present":
        x0, y0, x1, y1 = box
        share = float((mask[y0:y1, x0:x1] == 2).sum()) / max(1, int((mask == 2).sum()))
        if share <= 0.1:
            slots.update({"distractor": "absent", **{s: None for s in DISTRACTOR_SLOTS}})
        elif share < 0.5:
            slots.update({"distractor": None, **{s: None for s in DISTRACTOR_SLOTS}})
    return slots


def _random_box(mask: np.ndarray, rng: np.random.Generator) -> tuple[int, int, int, int] | None:
    """The main object's box with a random margin (5-30 % of the side) and jittered edges."""
    from dndbench.toyworld.world_report import main_object_box

    box = main_object_box(mask, margin=0.0)
    if box is None:
        return None
    side = mask.shape[0]
    pad = rng.uniform(0.05, 0.3) * side + rng.uniform(-0.04, 0.04, 4) * side
    x0, y0 = int(round(box[0] - pad[0])), int(round(box[1] - pad[1]))
    x1, y1 = int(round(box[2] + pad[2])), int(round(box[3] + pad[3]))
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(side, x1), min(side, y1)
    return (x0, y0, x1, y1) if x1 - x0 >= 4 and y1 - y0 >= 4 else None


def _random_patch(mask: np.ndarray, rng: np.random.Generator) -> tuple[int, int, int, int] | None:
    """An object-free square of 16-32 pixels (of a 64-pixel image) at a random free place."""
    occupied = np.pad((mask > 0).astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    scale = mask.shape[0] / 64
    for side64 in sorted(rng.choice(np.arange(16, 33), 4, replace=False).tolist(), reverse=True):
        side = max(1, int(round(side64 * scale)))
        n = mask.shape[0] - side + 1
        sums = (occupied[side:, side:] - occupied[:-side, side:] - occupied[side:, :-side]
                + occupied[:-side, :-side])[:n, :n]
        free = np.argwhere(sums == 0)
        if len(free):
            y, x = (int(v) for v in free[int(rng.integers(len(free)))])
            return (x, y, x + side, y + side)
    return None


def fast_crop(rgb: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """``box`` of an (H, W, 3) image as the network's (3, 64, 64) input: cut from the image
    enlarged (bicubic) to twice its size, then resized (bilinear), close to DnD's crops from
    the image enlarged to 375 px at a fraction of their cost."""
    from PIL import Image

    from dndbench.toyworld.backend_network import INPUT_SIZE

    x0, y0, x1, y1 = (float(v) for v in box)
    big = Image.fromarray(rgb).resize((2 * INPUT_SIZE, 2 * INPUT_SIZE),
                                      Image.Resampling.BICUBIC, box=(x0, y0, x1, y1))
    small = big.resize((INPUT_SIZE, INPUT_SIZE), Image.Resampling.BILINEAR)
    return np.asarray(small).transpose(2, 0, 1)


def training_views(images: np.ndarray, specs: list[SceneSpec], masks: np.ndarray, stream: int,
                   crops_per_image: int = 1, patch_fraction: float = 0.25) -> Views:
    """Every image whole, ``crops_per_image`` random crops of its main object and (for a
    ``patch_fraction`` of the images) a random background patch (see the module docstring);
    the random draws are seeded by ``stream`` and the image's index."""
    from dndbench.toyworld.captions import patch_slots, spec_slots

    out, slots, kinds, view_masks, objects = [], [], [], [], []
    for i, (pixels, spec) in enumerate(zip(images, specs)):
        mask = masks[i].astype(np.int32)
        rng = np.random.default_rng([stream, i, 7])
        indices = _object_indices(spec)
        out.append(pixels)
        slots.append(spec_slots(spec, mask))
        kinds.append("full")
        view_masks.append(np.clip(mask, 0, 2).astype(np.int8))
        objects.append(indices)
        rgb = pixels.transpose(1, 2, 0)
        for _ in range(crops_per_image):
            box = _random_box(mask, rng)
            if box is not None:
                out.append(fast_crop(rgb, box))
                slots.append(crop_slots(spec, mask, box))
                kinds.append("crop")
                view_masks.append(crop_mask(mask, box))
                objects.append(indices)
        if rng.random() < patch_fraction:
            patch = _random_patch(mask, rng)
            if patch is not None:
                out.append(fast_crop(rgb, patch))
                slots.append(patch_slots(spec.scene))
                kinds.append("patch")
                view_masks.append(np.zeros(mask.shape, np.int8))
                objects.append(indices)
    return Views(np.stack(out), slots, kinds, np.stack(view_masks), np.stack(objects))


def report_views(images: np.ndarray, specs: list[SceneSpec],
                 masks: np.ndarray | None = None) -> Views:
    """The held-out views as ``toyworld-report`` cuts them: every image whole, the crop of its
    main object's box and its first object-free patch, both cut as DnD cuts crops
    (:func:`dndbench.toyworld.world_report.dnd_crop`)."""
    from PIL import Image

    from dndbench.toyworld.backend_network import to_input_array
    from dndbench.toyworld.captions import patch_slots, spec_slots
    from dndbench.toyworld.render import render
    from dndbench.toyworld.world_report import background_box, dnd_crop, main_object_box

    parts: dict[str, Views] = {v: Views(np.zeros((0, 3, 64, 64), np.uint8), [], []) for v in VIEWS}
    arrays: dict[str, list[np.ndarray]] = {v: [] for v in VIEWS}
    for i, (pixels, spec) in enumerate(zip(images, specs)):
        mask = render(spec)[1] if masks is None else masks[i].astype(np.int32)
        image = Image.fromarray(pixels.transpose(1, 2, 0))
        truth = spec_slots(spec, mask)
        arrays["full"].append(pixels)
        parts["full"].slots.append(truth)
        box = main_object_box(mask)
        if box is not None:
            arrays["crop"].append(to_input_array(dnd_crop(image, box)))
            parts["crop"].slots.append(truth)
        patch = background_box(mask)
        if patch is not None:
            arrays["patch"].append(to_input_array(dnd_crop(image, patch)))
            parts["patch"].slots.append(patch_slots(spec.scene))
    for view, part in parts.items():
        part.kinds.extend([view] * len(part.slots))
        if arrays[view]:
            part.images = np.stack(arrays[view])
    return _join([parts[v] for v in VIEWS])


def slot_targets(slots: list[dict[str, str | None]]) -> dict[str, np.ndarray]:
    """Class index of every caption slot per view (-1: the view does not show it)."""
    from dndbench.toyworld.backend_network import SLOTS

    return {slot: np.array([-1 if s.get(slot) is None else SLOTS[slot].index(str(s[slot]))
                            for s in slots], np.int64) for slot in SLOTS}



def true_boxes(part16: Any, generator: Any | None = None, jitter: float = 0.0
               ) -> tuple[dict[int, Any], dict[int, Any]]:
    """The main object's and the distractor's boxes, and whether each was found, from the true
    part shares (``part16`` targets), as :class:`~dndbench.toyworld.backend_network.ToyDual`
    reads them from its predicted masks; ``jitter`` scales each box by up to that fraction
    and shifts its centre by up to that fraction of its half side."""
    import torch

    from dndbench.toyworld.backend_network import object_boxes, part_weights

    boxes, found = {}, {}
    for k in (1, 2):
        box, found[k] = object_boxes(part_weights(part16, k))
        if jitter:
            noise = torch.rand(len(box), 3, generator=generator) * 2 - 1
            half = box[:, 2] * (1 + jitter * noise[:, 2])
            centre = box[:, :2] + jitter * box[:, 2:] * noise[:, :2]
            box = torch.cat([centre, half[:, None]], 1)
        boxes[k] = box
    return boxes, found



def dense_targets(masks: Any, objects: Any) -> dict[str, Any]:
    """Targets of the dense heads (:data:`~dndbench.toyworld.backend_network.DENSE_HEADS`) from
    object masks (B, 64, 64) and object indices (B, 2, 2): ``part16`` the share of background,
    main and distractor pixels per 16x16 cell (soft labels); ``texture16`` the majority texture
    of the object pixels of each cell (-1 where less than a quarter of it is object, so thin
    outlines keep their labels)."""
    import torch
    import torch.nn.functional as F

    from dndbench.toyworld.backend_network import DENSE_HEADS

    m = masks.long()
    out = {"part16": F.avg_pool2d(F.one_hot(m, 3).permute(0, 3, 1, 2).float(), 4)}
    classes, side = DENSE_HEADS["texture16"][1:]
    values = torch.cat([torch.full_like(objects[:, :1, 1], -1), objects[:, :, 1]], 1)
    ids = torch.gather(values, 1, m.flatten(1)).view_as(m)
    onehot = F.one_hot(ids.clamp(min=0), classes).permute(0, 3, 1, 2).float()
    cells = F.avg_pool2d(onehot * (ids >= 0).unsqueeze(1).float(), m.shape[-1] // side)
    label = cells.argmax(1)
    label[cells.sum(1) < 0.25] = -1
    out["texture16"] = label
    return out


def all_dense_targets(views: Views) -> dict[str, Any]:
    import torch

    assert views.masks is not None and views.objects is not None
    parts = [dense_targets(torch.from_numpy(views.masks[i:i + 512]),
                           torch.from_numpy(views.objects[i:i + 512]))
             for i in range(0, len(views), 512)]
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}



def world_data(stream: int, count: int, workers: int
                     ) -> tuple[np.ndarray, list[SceneSpec], np.ndarray]:
    """Images 0..count-1 of ``stream`` as the world draws them (held-out images)."""
    from dndbench.toyworld.train_toynet import make_data

    data = make_data(stream, count, [], workers)
    return data.images, data.specs, data.masks


def _training_chunk(args: tuple[int, int, int, float, float]
                    ) -> tuple[np.ndarray, list[SceneSpec], np.ndarray]:
    from dndbench.toyworld.render import render
    from dndbench.toyworld.world import sample_scene

    stream, start, stop, outlined, distractor = args
    images, specs, masks = [], [], []
    for index in range(start, stop):
        rng = np.random.default_rng([stream, index])
        spec = sample_scene(rng, outlined=bool(rng.random() < outlined),
                            distractor=bool(rng.random() < distractor))
        rgb, mask = render(spec)
        images.append(rgb.transpose(2, 0, 1))
        specs.append(spec)
        masks.append(mask.astype(np.int8))
    return np.stack(images), specs, np.stack(masks)


def training_data(stream: int, count: int, outlined_fraction: float,
                  distractor_fraction: float, workers: int = 2
                  ) -> tuple[np.ndarray, list[SceneSpec], np.ndarray]:
    """Images 0..count-1 of the training ``stream`` with their specs and object masks: random
    scenes whose main object is outlined in an ``outlined_fraction`` and that show a second
    object in a ``distractor_fraction`` of them (the world draws 15 % and 30 %: those are the
    hardest slots to learn)."""
    chunk = 500
    jobs = [(stream, s, min(count, s + chunk), outlined_fraction, distractor_fraction)
            for s in range(0, count, chunk)]
    if workers <= 1 or len(jobs) <= 1:
        parts = [_training_chunk(job) for job in jobs]
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        context = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            parts = list(pool.map(_training_chunk, jobs))
    return (np.concatenate([p[0] for p in parts]), [s for p in parts for s in p[1]],
            np.concatenate([p[2] for p in parts]))
