"""Train the toy CLIP and the toy captioner (one :class:`ToyDual` network) on generated images.

``python -m dndbench.toyworld.train_toy_backends [--seed 0] [--out DIR]`` trains deterministically
(same machine and seed => same weights), reports held-out accuracy per caption slot and the
image->text retrieval top-1 of each slot's query words, on whole images, on DnD-style crops of
the main object and on object-free background patches, and writes ``weights.pt`` then
``meta.json`` atomically into ``<cache>/toy_backends/<key>/`` (``meta.json`` marks a finished
training).

Training views (:func:`training_views`): every training image whole; ``crops_per_image`` crops
of its main object (the object's box with a random margin of 5-30 % of the side and jittered
edges, cut from the image enlarged to twice its size, as DnD cuts crops from the image enlarged
to 375 px); and, for a ``patch_fraction`` of the images, an object-free square of 16-32 pixels
(a 64-pixel image) at a random free place, whose only slots are the scene and "no object".  A
crop's distractor slots describe the second object only when most of it is inside the crop.

Training signal per batch: symmetric InfoNCE between views and varied captions
(:func:`dndbench.toyworld.captions.random_caption`; the bare ``<unk>`` text is an extra negative,
so texts of unknown words match no image); a softmax over each slot's query texts
(:func:`~dndbench.toyworld.captions.slot_queries`: the bare concept words "red", "star",
"grass", "zigzag", ..., as CLIP-Dissect queries them, and word pairs such as "filled" /
"outlined"); and cross-entropy of
every caption slot head, each masked where a view does not show the slot.

Images come from the streams ``BACKEND_STREAM_BASE + 2 * seed`` (train) and ``+ 1`` (held
out), disjoint from the probe's (< 1,000,000) and ToyNet's (1,000,000 + 2 * seed) streams.
"""
from __future__ import annotations

import importlib
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dndbench.cache import atomic_path, default_cache_dir, stable_hash
from dndbench.toyworld.world import GENERATOR_VERSION, SceneSpec

#: bump whenever a change of the network, the captions or training alters the trained weights
BACKENDS_VERSION = "toy-backends-v2"
BACKEND_STREAM_BASE = 2_000_000_000
NAMESPACE = "toy_backends"
#: the views the backends are trained and measured on
VIEWS = ("full", "crop", "patch")
#: the slots each view shows (what its accuracy is measured on)
VIEW_SLOTS: dict[str, tuple[str, ...]] = {
    "full": ("object", "shape", "colour", "texture", "scene", "outlined", "size", "distractor",
             "distractor_shape", "distractor_colour"),
    "crop": ("object", "shape", "colour", "texture", "scene", "outlined", "size"),
    "patch": ("object", "scene"),
}


@dataclass
class BackendTrainConfig:
    """Everything that determines the toy backends' trained weights."""

    seed: int = 0
    train_images: int = 6000
    test_images: int = 1000
    epochs: int = 8
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 5e-4
    widths: tuple[int, int, int, int] = (32, 48, 96, 128)
    dim: int = 64
    unk_prob: float = 0.2
    crops_per_image: int = 1
    patch_fraction: float = 0.25
    box_jitter: float = 0.1
    predicted_boxes: float = 0.5


def training_key(config: BackendTrainConfig) -> str:
    """Cache key of the weights ``config`` produces (config + code and generator versions)."""
    return stable_hash("toy-backends", BACKENDS_VERSION, GENERATOR_VERSION, asdict(config))


def out_dir(config: BackendTrainConfig, cache_root: Path | str | None = None) -> Path:
    """``<cache>/toy_backends/<key>``: where the toy backends look for these weights."""
    return Path(cache_root or default_cache_dir()) / NAMESPACE / training_key(config)


# -- views -----------------------------------------------------------------------------------
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


def training_views(images: np.ndarray, specs: list[SceneSpec], masks: np.ndarray,
                   config: BackendTrainConfig, stream: int) -> Views:
    """Every image whole, ``crops_per_image`` random crops of its main object and (for a
    ``patch_fraction`` of the images) a random background patch (see the module docstring)."""
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
        for _ in range(config.crops_per_image):
            box = _random_box(mask, rng)
            if box is not None:
                out.append(fast_crop(rgb, box))
                slots.append(crop_slots(spec, mask, box))
                kinds.append("crop")
                view_masks.append(crop_mask(mask, box))
                objects.append(indices)
        if rng.random() < config.patch_fraction:
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


def slot_targets(slots: list[dict[str, str | None]], kinds: list[str] | None = None
                 ) -> dict[str, np.ndarray]:
    """Class index of every caption slot per view (-1: the view does not show it)."""
    from dndbench.toyworld.backend_network import SLOTS

    return {slot: np.array([-1 if s.get(slot) is None else SLOTS[slot].index(str(s[slot]))
                            for s in slots], np.int64) for slot in SLOTS}


def concept_texts() -> list[str]:
    """Every query text of :func:`~dndbench.toyworld.captions.slot_queries`, slot by slot."""
    from dndbench.toyworld.captions import slot_queries

    return [text for texts in slot_queries().values() for text in texts]


def _caption_tokens(slots: list[dict[str, str | None]], rng: np.random.Generator,
                    unk_prob: float) -> list[list[int]]:
    """Varied captions; some get an ``<unk>`` token inserted at a random place."""
    from dndbench.toyworld.captions import random_caption, tokenize

    unk = tokenize("")[0]
    out = []
    for s in slots:
        tokens = tokenize(random_caption(s, rng))
        if rng.random() < unk_prob:
            tokens.insert(int(rng.integers(len(tokens) + 1)), unk)
        out.append(tokens)
    return out


# -- training --------------------------------------------------------------------------------
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


def _losses(model: Any, images: Any, text_ids: Any, labels: dict[str, Any],
            targets: dict[str, Any], boxes: tuple[dict[int, Any], dict[int, Any]] | None = None,
            predicted_rows: Any | None = None) -> dict[str, Any]:
    """The training losses of one batch (see the module docstring).  ``text_ids`` holds the
    batch's captions, then every query text, then the bare ``<unk>`` text."""
    import torch
    import torch.nn.functional as F

    from dndbench.toyworld.captions import slot_queries

    given, found = boxes if boxes is not None else (None, None)
    img, slot_logits, dense = model.encode_image_dense(images, given, found, predicted_rows)
    n = len(img)
    texts = model.encode_text(text_ids)
    caps, words, unk = texts[:n], texts[n:-1], texts[-1:]
    scale, target = model.scale(), torch.arange(n)
    clip = (F.cross_entropy(scale * img @ torch.cat([caps, unk]).T, target)
            + F.cross_entropy(scale * caps @ img.T, target)) / 2
    concept, start = [], 0
    for slot, names in slot_queries().items():
        logits = scale * img @ words[start:start + len(names)].T
        start += len(names)
        if bool((labels[slot] >= 0).any()):
            concept.append(F.cross_entropy(logits, labels[slot], ignore_index=-1))
    slots = [F.cross_entropy(slot_logits[s], y, ignore_index=-1) for s, y in labels.items()
             if bool((y >= 0).any())]
    return {"clip": clip, "concept": torch.stack(concept).sum(),
            "slots": torch.stack(slots).sum(), "dense": _dense_loss(dense, targets)}


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


def _all_dense_targets(views: Views) -> dict[str, Any]:
    import torch

    assert views.masks is not None and views.objects is not None
    parts = [dense_targets(torch.from_numpy(views.masks[i:i + 512]),
                           torch.from_numpy(views.objects[i:i + 512]))
             for i in range(0, len(views), 512)]
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


#: weights of a cell's part loss per share of main-object and distractor pixels (distractor
#: cells are rare: about 1 % of the cells)
PART_WEIGHTS = (1.0, 2.0, 8.0)


def _dense_loss(dense: dict[str, Any], targets: dict[str, Any]) -> Any:
    import torch
    import torch.nn.functional as F

    part = targets["part16"]
    weight = (part * torch.tensor(PART_WEIGHTS)[None, :, None, None]).sum(1)
    losses = [(-(part * F.log_softmax(dense["part16"], 1)).sum(1) * weight).mean()]
    for name, target in targets.items():
        if name != "part16" and bool((target >= 0).any()):
            losses.append(F.cross_entropy(dense[name], target, ignore_index=-1))
    return torch.stack(losses).sum()


def _fixed_tokens() -> list[list[int]]:
    from dndbench.toyworld.captions import UNK, tokenize

    return [tokenize(t) for t in concept_texts()] + [tokenize(UNK)]


def _train_network(config: BackendTrainConfig, views: Views, progress: bool) -> Any:
    import torch
    from tqdm.auto import tqdm

    from dndbench.toyworld.backend_network import ToyDual, normalise, text_batch

    torch.manual_seed(config.seed)
    model = ToyDual(tuple(config.widths), config.dim)  # type: ignore[arg-type]
    labels = {k: torch.from_numpy(v) for k, v in slot_targets(views.slots).items()}
    pixels, fixed = torch.from_numpy(views.images), _fixed_tokens()
    dense = _all_dense_targets(views)
    flip_gen = torch.Generator().manual_seed(config.seed + 1)
    steps = (len(views) + config.batch_size - 1) // config.batch_size
    total = max(1, config.epochs * steps)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, config.lr, total_steps=max(
        1, config.epochs * steps), pct_start=0.2)
    order_gen = torch.Generator().manual_seed(config.seed)
    bar = tqdm(total=config.epochs * steps, desc="training toy backends", disable=not progress,
               mininterval=2.0)
    model.train()
    for epoch in range(config.epochs):
        rng = np.random.default_rng([config.seed, epoch])
        captions = _caption_tokens(views.slots, rng, config.unk_prob)
        order = torch.randperm(len(views), generator=order_gen)
        for step in range(steps):
            idx = order[step * config.batch_size:(step + 1) * config.batch_size]
            text_ids = text_batch([captions[int(i)] for i in idx] + fixed)
            batch = pixels[idx]
            flip = torch.rand(len(idx), generator=flip_gen) < 0.5  # mirror images: same slots
            batch = torch.where(flip[:, None, None, None], batch.flip(-1), batch)
            targets = {}
            for name, maps in dense.items():
                chosen = maps[idx]
                rows = flip.view(-1, *([1] * (chosen.dim() - 1)))
                targets[name] = torch.where(rows, chosen.flip(-1), chosen)
            boxes = true_boxes(targets["part16"], flip_gen, config.box_jitter)
            # the object tower also learns from the boxes the model finds itself, more of them
            # as its masks improve (up to predicted_boxes of the rows from mid-training on)
            share = config.predicted_boxes * min(1.0, 2 * (epoch * steps + step) / total)
            predicted_rows = torch.rand(len(idx), generator=flip_gen) < share
            parts = _losses(model, normalise(batch), text_ids,
                            {k: v[idx] for k, v in labels.items()}, targets, boxes,
                            predicted_rows)
            loss = parts["clip"] + parts["concept"] + parts["slots"] + parts["dense"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, **{k: f"{v.item():.2f}" for k, v in parts.items()},
                            refresh=False)
    bar.close()
    model.eval()
    return model


# -- evaluation ------------------------------------------------------------------------------
def _encode_all(model: Any, images: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    import torch

    from dndbench.toyworld.backend_network import normalise

    embs, logits = [], []
    with torch.no_grad():
        for start in range(0, len(images), 256):
            emb, out = model.encode_image(normalise(torch.from_numpy(images[start:start + 256])))
            embs.append(emb.numpy())
            logits.append({k: v.numpy() for k, v in out.items()})
    return np.concatenate(embs), {k: np.concatenate([p[k] for p in logits]) for k in logits[0]}


def encode_texts(model: Any, texts: list[str], device: str = "cpu") -> np.ndarray:
    """L2-normalised embeddings of ``texts`` under ``model``."""
    import torch

    from dndbench.toyworld.backend_network import text_batch
    from dndbench.toyworld.captions import tokenize

    with torch.no_grad():
        ids = text_batch([tokenize(t) for t in texts]).to(device)
        return model.encode_text(ids).cpu().numpy()


def predicted_captions(logits: dict[str, np.ndarray]) -> list[str]:
    """Canonical captions of per-slot logits (or predicted class indices, one per image)."""
    import torch

    from dndbench.toyworld.backend_network import SLOTS, predicted_slots, slots_to_caption

    as_logits = {}
    for slot, values in logits.items():
        values = np.asarray(values)
        if values.ndim == 1:  # class indices
            values = np.eye(len(SLOTS[slot]), dtype=np.float32)[values]
        as_logits[slot] = torch.from_numpy(values)
    return [slots_to_caption(s) for s in predicted_slots(as_logits)]


def _accuracy(predicted: list[dict[str, str | None]], truth: list[dict[str, str | None]],
              slots: tuple[str, ...]) -> dict[str, float]:
    out = {}
    for slot in slots:
        pairs = [(p.get(slot), t[slot]) for p, t in zip(predicted, truth) if t.get(slot) is not None]
        out[slot] = float(np.mean([p == t for p, t in pairs])) if pairs else float("nan")
    return out


def evaluate(model: Any, images: np.ndarray, specs: list[SceneSpec],
             masks: np.ndarray | None = None) -> dict[str, Any]:
    """Held-out accuracy per view (:data:`VIEW_SLOTS`) of the caption slots and of each slot's
    query-text retrieval top-1; ``slot_accuracy`` and ``caption_exact_match`` are the whole
    images' (masks are rendered when not given)."""
    import torch

    from dndbench.toyworld.backend_network import predicted_slots
    from dndbench.toyworld.captions import SLOT_VALUES, slot_queries, slots_caption

    views = report_views(images, specs, masks)
    emb, logits = _encode_all(model, views.images)
    predicted = predicted_slots({k: torch.from_numpy(v) for k, v in logits.items()})
    queries = slot_queries()
    text = encode_texts(model, concept_texts())
    retrieved: list[dict[str, str | None]] = [{} for _ in predicted]
    start = 0
    for slot, names in queries.items():
        best = (emb @ text[start:start + len(names)].T).argmax(1)
        start += len(names)
        values = SLOT_VALUES[slot]
        for row, b in zip(retrieved, best):
            row[slot] = values[int(b)]
    per_view: dict[str, Any] = {}
    for view in VIEWS:
        rows = [i for i, k in enumerate(views.kinds) if k == view]
        truth = [views.slots[i] for i in rows]
        per_view[view] = {
            "images": len(rows),
            "captioner": _accuracy([predicted[i] for i in rows], truth, VIEW_SLOTS[view]),
            "vlm": _accuracy([retrieved[i] for i in rows], truth,
                             tuple(s for s in VIEW_SLOTS[view] if s in queries))}
    full = [i for i, k in enumerate(views.kinds) if k == "full"]
    exact = float(np.mean([slots_caption(predicted[i]) == slots_caption(views.slots[i])
                           for i in full]))
    return {"test_images": len(specs), "slot_accuracy": per_view["full"]["captioner"],
            "caption_exact_match": exact, "views": per_view}


# -- the whole job ---------------------------------------------------------------------------
def _data(stream: int, count: int, workers: int) -> tuple[np.ndarray, list[SceneSpec]]:
    images, specs, _ = _data_with_masks(stream, count, workers)
    return images, specs


def _data_with_masks(stream: int, count: int, workers: int
                     ) -> tuple[np.ndarray, list[SceneSpec], np.ndarray]:
    from dndbench.toyworld.train_toynet import make_data

    data = make_data(stream, count, [], workers)
    return data.images, data.specs, data.masks


def train(config: BackendTrainConfig, out: Path | str, progress: bool = True,
          workers: int = 2) -> dict[str, Any]:
    """Train, evaluate and write ``weights.pt`` + ``meta.json`` into ``out``; return the meta."""
    import torch

    out = Path(out)
    started = time.perf_counter()
    # a module whose attribute is a property, which type checkers cannot see
    deterministic: Any = importlib.import_module("torch.utils.deterministic")
    was = (torch.are_deterministic_algorithms_enabled(), deterministic.fill_uninitialized_memory)
    torch.use_deterministic_algorithms(True)
    # filling every new tensor with NaN (on by default in deterministic mode) doubles the step time
    deterministic.fill_uninitialized_memory = False
    try:
        stream = BACKEND_STREAM_BASE + 2 * config.seed
        images, specs, masks = _data_with_masks(stream, config.train_images, workers)
        views = training_views(images, specs, masks, config, stream)
        test_images, test_specs, test_masks = _data_with_masks(stream + 1, config.test_images,
                                                               workers)
        generated = time.perf_counter()
        with torch.enable_grad():  # also when called inside a caller's no_grad block
            model = _train_network(config, views, progress)
        trained = time.perf_counter()
        report = evaluate(model, test_images, test_specs, test_masks)
    finally:
        torch.use_deterministic_algorithms(was[0])
        deterministic.fill_uninitialized_memory = was[1]
    report["train_views"] = {v: views.kinds.count(v) for v in VIEWS}
    report["seconds"] = {"generate": round(generated - started, 2),
                         "train": round(trained - generated, 2),
                         "total": round(time.perf_counter() - started, 2)}
    meta = {"version": BACKENDS_VERSION, "generator": GENERATOR_VERSION,
            "key": training_key(config), "config": asdict(config), "report": report}
    with atomic_path(out / "weights.pt") as tmp:
        torch.save(model.state_dict(), tmp)
    with atomic_path(out / "meta.json") as tmp:
        tmp.write_text(json.dumps(meta, indent=2))
    return meta


def format_report(report: dict[str, Any]) -> str:
    """A human-readable summary of :func:`evaluate`'s report."""
    lines = [f"held-out images: {report['test_images']}",
             f"caption exact match (whole images): {report['caption_exact_match']:.3f}"]
    for view, entry in report.get("views", {}).items():
        for kind in ("captioner", "vlm"):
            lines.append(f"{kind:9} {view:5} ({entry['images']} views): " + ", ".join(
                f"{k} {v:.3f}" for k, v in entry[kind].items()))
    if "seconds" in report:
        s = report["seconds"]
        lines.append(f"time: {s['total']:.1f}s (generate {s['generate']:.1f}s, "
                     f"train {s['train']:.1f}s)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m dndbench.toyworld.train_toy_backends``: train, report, save."""
    from dndbench.toyworld.training_cli import run_training_command

    return run_training_command(argv, prog="python -m dndbench.toyworld.train_toy_backends",
                                description="Train the toy CLIP and toy captioner.",
                                config_class=BackendTrainConfig, default_out=out_dir,
                                train=train, format_report=format_report)


if __name__ == "__main__":
    sys.exit(main())
