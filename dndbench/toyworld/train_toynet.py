"""Train ToyNet on freshly generated toy-world images, planting known concepts in hidden units.

``python -m dndbench.toyworld.train_toynet [--seed 0] [--out DIR]`` trains deterministically (same
machine and seed => same weights), prints progress, reports test accuracy and the selectivity
of every planted unit, and writes ``weights.pt`` and ``meta.json`` (atomically; ``meta.json``
last, so its presence marks a finished training).

Planted units (:mod:`dndbench.toyworld.planted`): chosen units of ``layer1``-``layer4`` are
computed by ToyNet's detector pathway (:mod:`dndbench.toyworld.network`) and trained to detect a
concept string, while the classification loss trains the trunk; gradients never cross.  Each
unit's map (the ReLU of its head's logits) follows the concept's mask (downsampled to the map
size): cross-entropy per cell, averaged separately inside the mask, on other objects' pixels
(hard negatives) and on the background; and at the image level, cross-entropy of its maximum
logit for "the image shows the concept".  Training-only dense read-outs (:func:`dense_labels`)
teach the detector pathway every object's shape, colour and style.  A share of the training
images is *seeded*: drawn to show a planted concept or a near miss of it (red circle -> orange
circle, red ring).  After training, each unit is measured
on a held-out stream: only units that pass the selectivity gate (pooled-activation ROC-AUC >=
0.95 for "the image shows the concept" and >= 9 of its 10 top images showing it) are recorded
as planted ground truth; every candidate's figures stay in the report.  The fc (class) units
face the same gate for "the main object is this class" (its logit's AUC, its top 10 images);
the ones that fail are listed in the metadata as ``flagged_fc_units``.
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
from dndbench.hooks import record_outputs
from dndbench.toyworld.render import REFERENCE_SIZE, concept_mask, render, shows
from dndbench.toyworld.world import GENERATOR_VERSION, SHAPES, all_concepts
from dndbench.training_checkpoint import CHECKPOINT_NAME, TrainingCheckpoint, remove_checkpoints

#: bump whenever a change of the network or of training alters the trained weights
TOYNET_VERSION = "toynet-v2"
#: training and test images come from these streams (offset by 2 * seed); probe sets use
#: small seeds (default 1000), so the network never sees probe images
TRAIN_STREAM_BASE = 1_000_000
#: spatial size of each layer's maps for a 64x64 input
MAP_SIZES = {"layer1": 16, "layer2": 16, "layer3": 8, "layer4": 4}


#: the selectivity gate a planted unit must pass on held-out images to count as ground truth
GATE_MIN_AUC, GATE_MIN_TOP10 = 0.95, 9


@dataclass
class TrainConfig:
    """Everything that determines ToyNet's trained weights.  ``catalogue`` names the planted
    concepts (:data:`dndbench.toyworld.planted.CATALOGUES`); ``planted`` overrides it."""

    seed: int = 0
    train_images: int = 8000
    test_images: int = 1000
    epochs: int = 14
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 5e-4
    aux_weight: float = 1.0
    seeded_fraction: float = 0.3
    widths: tuple[int, ...] = (24, 48, 96, 128)
    blocks: int = 1
    catalogue: str = "benchmark"
    planted: dict[str, dict[int, str]] | None = None


def planted_map(config: TrainConfig) -> dict[str, dict[int, str]]:
    """Layer -> unit -> concept string of the units ``config`` plants."""
    from dndbench.toyworld.planted import planted_units

    if config.planted is not None:
        return {layer: {int(u): c for u, c in units.items()} for layer, units in config.planted.items()}
    return planted_units(config.catalogue, tuple(config.widths))


def build_network(config: TrainConfig) -> Any:
    """An untrained ToyNet of ``config``'s shape, with a detector pathway for its planted
    units (:class:`dndbench.toyworld.network.ToyNet`)."""
    from dndbench.toyworld.network import ToyNet

    units = {layer: sorted(int(u) for u in units) for layer, units in planted_map(config).items()}
    return ToyNet(len(SHAPES), tuple(config.widths), config.blocks, units)


def config_from_dict(values: dict[str, Any]) -> TrainConfig:
    """The :class:`TrainConfig` that ``asdict`` wrote into a ``meta.json``."""
    values = dict(values)
    values["widths"] = tuple(values["widths"])
    return TrainConfig(**values)


def training_key(config: TrainConfig) -> str:
    """Cache key of the weights ``config`` produces (config + code and generator versions)."""
    return stable_hash("toynet", TOYNET_VERSION, GENERATOR_VERSION, asdict(config),
                       planted_map(config))


def default_out_dir(config: TrainConfig) -> Path:
    """Where the ``toynet`` model plugin looks for these weights in the default cache."""
    return default_cache_dir() / "toynet" / training_key(config)


def planted_list(config: TrainConfig) -> list[tuple[str, int, str]]:
    """Planted units as (layer, unit, concept), in a fixed order."""
    return [(layer, int(unit), name) for layer, units in sorted(planted_map(config).items())
            for unit, name in sorted(units.items(), key=lambda kv: int(kv[0]))]


# -- data ------------------------------------------------------------------------------------
@dataclass
class ToyData:
    """Generated images with class labels, planted-unit targets and object masks."""

    images: np.ndarray          # (N, 3, 64, 64) uint8
    labels: np.ndarray          # (N,) int64: index of the main object's shape
    targets: dict[str, np.ndarray]  # layer -> (N, units planted there, s, s) float32 in [0, 1]
    present: dict[str, np.ndarray]  # layer -> (N, units planted there) bool: image shows it
    objects: dict[str, np.ndarray]  # layer -> (N, 1, s, s) float32: share of object pixels
    masks: np.ndarray           # (N, 64, 64) int8 object masks (see render.render)
    specs: list[Any]
    dense: dict[str, np.ndarray] | None = None  # see dense_labels


#: the detector pathway's training-only dense targets: per cell of a stage's map (read at the
#: cell's centre pixel), the object's shape (0: background), colour and style (texture, or
#: "outlined"; -1 on the background), and per image which shapes and styles it shows, whether
#: it shows two objects and whether its main object is large
STYLES = ("plain", "striped", "dotted", "checkered", "wavy", "noisy", "zigzag", "outlined")
STAGE_SIZES = (16, 16, 8, 4)


def dense_labels(spec: Any, mask: np.ndarray) -> dict[str, np.ndarray]:
    """The dense training targets of one image (see :data:`STYLES`)."""
    from dndbench.toyworld.world import COLOURS, LARGE_RADIUS

    objects = spec.objects
    shape = np.array([0] + [SHAPES.index(o.shape) + 1 for o in objects], np.int8)
    colour = np.array([-1] + [list(COLOURS).index(o.colour) for o in objects], np.int8)
    style = np.array([-1] + [STYLES.index("outlined" if o.outlined else o.texture)
                             for o in objects], np.int8)
    out: dict[str, np.ndarray] = {}
    for size in sorted(set(STAGE_SIZES)):
        step = mask.shape[0] // size
        cells = mask[step // 2::step, step // 2::step]
        out[f"shape{size}"], out[f"colour{size}"] = shape[cells], colour[cells]
        out[f"style{size}"] = style[cells]
    visible = set(np.unique(mask)) - {0}
    image = np.zeros(len(SHAPES) + len(STYLES) + 2, np.float32)
    for k in visible:
        image[SHAPES.index(objects[k - 1].shape)] = 1
        image[len(SHAPES) + int(style[k])] = 1
    image[-2] = float(len(visible) > 1)
    image[-1] = float(objects[0].radius >= LARGE_RADIUS)
    out["image"] = image
    return out


def _pool(mask: np.ndarray, size: int) -> np.ndarray:
    factor = mask.shape[0] // size
    return mask.reshape(size, factor, size, factor).mean(axis=(1, 3), dtype=np.float32)


def _spec(stream: int, index: int, planted: list[tuple[str, int, str]],
          seeded_fraction: float) -> Any:
    """Image ``index``'s spec: a plain random scene, or (a ``seeded_fraction`` of images, two
    thirds positives, one third near misses) one seeded with a planted concept."""
    from dndbench.toyworld.planted import seeded_scene
    from dndbench.toyworld.world import sample_scene

    rng = np.random.default_rng([stream, index])
    if planted and rng.random() < seeded_fraction:
        concept = planted[int(rng.integers(len(planted)))][2]
        return seeded_scene(concept, rng, negative=bool(rng.random() < 1 / 3))
    return sample_scene(rng)


def _make_chunk(args: tuple[int, int, int, list[tuple[str, int, str]], float]) -> ToyData:
    stream, start, stop, planted, seeded_fraction = args
    images, labels, masks, specs, dense = [], [], [], [], []
    layers = sorted({layer for layer, _, _ in planted})
    targets: dict[str, list[np.ndarray]] = {layer: [] for layer in layers}
    present: dict[str, list[np.ndarray]] = {layer: [] for layer in layers}
    objects: dict[str, list[np.ndarray]] = {layer: [] for layer in layers}
    for index in range(start, stop):
        spec = _spec(stream, index, planted, seeded_fraction)
        rgb, mask = render(spec, REFERENCE_SIZE)
        images.append(rgb.transpose(2, 0, 1))
        labels.append(SHAPES.index(spec.main.shape))
        masks.append(mask.astype(np.int8))
        specs.append(spec)
        dense.append(dense_labels(spec, mask))
        for layer in layers:
            names = [name for lay, _, name in planted if lay == layer]
            size = MAP_SIZES[layer]
            targets[layer].append(np.stack([
                _pool(concept_mask(spec, mask, name).astype(np.float32), size) for name in names]))
            present[layer].append(np.array([shows(spec, mask, name) for name in names], bool))
            objects[layer].append(_pool((mask > 0).astype(np.float32), size)[None])
    return ToyData(np.stack(images), np.asarray(labels, np.int64),
                   {k: np.stack(v) for k, v in targets.items()},
                   {k: np.stack(v) for k, v in present.items()},
                   {k: np.stack(v) for k, v in objects.items()}, np.stack(masks), specs,
                   {k: np.stack([d[k] for d in dense]) for k in dense[0]})


def _concat(parts: list[ToyData]) -> ToyData:
    def join(field: str) -> dict[str, np.ndarray]:
        first: dict[str, np.ndarray] = getattr(parts[0], field)
        return {k: np.concatenate([getattr(p, field)[k] for p in parts]) for k in first}

    return ToyData(np.concatenate([p.images for p in parts]),
                   np.concatenate([p.labels for p in parts]),
                   join("targets"), join("present"), join("objects"),
                   np.concatenate([p.masks for p in parts]),
                   [s for p in parts for s in p.specs], join("dense"))


def make_data(stream: int, count: int, planted: list[tuple[str, int, str]],
              workers: int = 2, seeded_fraction: float = 0.0) -> ToyData:
    """Images 0..count-1 of ``stream`` (a ``seeded_fraction`` of them seeded with planted
    concepts), generated in ``workers`` processes when worth it."""
    chunk = 500
    jobs = [(stream, s, min(count, s + chunk), planted, seeded_fraction)
            for s in range(0, count, chunk)]
    if workers <= 1 or len(jobs) <= 1:
        return _concat([_make_chunk(job) for job in jobs])
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        return _concat(list(pool.map(_make_chunk, jobs)))


# -- training --------------------------------------------------------------------------------
def _unit_index(config: TrainConfig) -> dict[str, list[int]]:
    return {layer: [int(u) for u in sorted(units, key=int)]
            for layer, units in sorted(planted_map(config).items())}


def _aux_loss(logits: dict[str, Any], targets: dict[str, Any], present: dict[str, Any],
              objects: dict[str, Any]) -> Any:
    """The planted units' loss (see the module docstring), on the detector heads' logits (a
    unit's map is their ReLU): binary cross-entropy to the concept's mask share per cell,
    averaged separately inside the mask, on other objects and on the background (so rare
    concepts and hard negatives count), plus cross-entropy of each map's maximum for "the image
    shows the concept", positives and negatives weighted alike."""
    import torch
    import torch.nn.functional as F

    losses = []
    dims = (0, 2, 3)
    for layer, target in targets.items():
        z = logits[layer]
        err = F.binary_cross_entropy_with_logits(z, target, reduction="none")
        inside = (target > 0.1).float()
        on_objects = (1 - inside) * (objects[layer] > 0.5).float()
        background = (1 - inside) * (objects[layer] <= 0.5).float()
        pixel = sum((err * region).sum(dims) / region.sum(dims).clamp(min=1.0)
                    for region in (inside, on_objects, background))
        pos = present[layer].float()
        image_err = F.binary_cross_entropy_with_logits(z.amax((2, 3)), pos, reduction="none")
        image = ((image_err * pos).sum(0) / pos.sum(0).clamp(min=1.0)
                 + (image_err * (1 - pos)).sum(0) / (1 - pos).sum(0).clamp(min=1.0))
        losses.append(pixel + image)
    return torch.cat(losses).mean()


def _dense_heads() -> Any:
    """Training-only read-outs of the detector pathway's stages (not part of ToyNet): per cell,
    shape, colour and style logits; per image, the multi-label :func:`dense_labels` targets."""
    from torch import nn

    from dndbench.toyworld.network import DETECTOR_WIDTHS
    from dndbench.toyworld.world import COLOURS

    classes = len(SHAPES) + 1 + len(COLOURS) + len(STYLES)
    heads = nn.ModuleDict({f"layer{i + 1}": nn.Conv2d(DETECTOR_WIDTHS[i + 1], classes, 1)
                           for i in range(len(STAGE_SIZES))})
    heads["image"] = nn.Linear(DETECTOR_WIDTHS[-1], len(SHAPES) + len(STYLES) + 2)
    return heads


def _dense_loss(heads: Any, features: dict[str, Any], dense: dict[str, Any]) -> Any:
    """Cross-entropy of the dense read-outs: they teach the detector pathway the world's shapes,
    colours and styles everywhere, which its planted heads then combine."""
    import torch
    import torch.nn.functional as F

    from dndbench.toyworld.world import COLOURS

    losses = []
    for i, size in enumerate(STAGE_SIZES):
        out = heads[f"layer{i + 1}"](features[f"detector.layer{i + 1}"])
        for logits, name in zip(out.split([len(SHAPES) + 1, len(COLOURS), len(STYLES)], 1),
                                ("shape", "colour", "style")):
            target = dense[f"{name}{size}"].long()
            if bool((target >= 0).any()):
                losses.append(F.cross_entropy(logits, target, ignore_index=-1))
    pooled = features[f"detector.layer{len(STAGE_SIZES)}"].mean((2, 3))
    losses.append(F.binary_cross_entropy_with_logits(heads["image"](pooled), dense["image"]))
    return torch.stack(losses).sum()


def _train_network(config: TrainConfig, data: ToyData, progress: bool,
                   out_dir: Path | None = None) -> Any:
    """Train ToyNet on ``data``; with ``out_dir``, a checkpoint saved there after every epoch
    lets a killed training resume where it stopped, with the same final weights
    (:mod:`dndbench.training_checkpoint`)."""
    import torch
    import torch.nn.functional as F
    from tqdm.auto import tqdm

    from dndbench.toyworld.network import normalise

    torch.manual_seed(config.seed)
    net = build_network(config)
    units = _unit_index(config)
    images = torch.from_numpy(data.images)
    labels = torch.from_numpy(data.labels)
    targets = {k: torch.from_numpy(v) for k, v in data.targets.items()}
    present = {k: torch.from_numpy(v) for k, v in data.present.items()}
    objects = {k: torch.from_numpy(v) for k, v in data.objects.items()}
    dense = {k: torch.from_numpy(v) for k, v in (data.dense or {}).items()}
    heads = _dense_heads()
    steps_per_epoch = (len(labels) + config.batch_size - 1) // config.batch_size
    opt = torch.optim.AdamW([*net.parameters(), *heads.parameters()], lr=config.lr,
                            weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, config.lr, total_steps=max(
        1, config.epochs * steps_per_epoch), pct_start=0.2)
    order_gen = torch.Generator().manual_seed(config.seed)
    checkpoint = None if out_dir is None else TrainingCheckpoint(
        out_dir / CHECKPOINT_NAME, training_key(config), modules={"net": net, "heads": heads},
        optimizers={"opt": opt}, schedulers={"sched": sched}, generators={"order": order_gen})
    resumed = checkpoint.resume() if checkpoint is not None else None
    first = resumed.epoch if resumed is not None else 0
    net.train()
    bar = tqdm(total=config.epochs * steps_per_epoch, desc="training toynet", disable=not progress,
               mininterval=2.0, initial=first * steps_per_epoch)
    planted_heads = {f"{layer}.head": layer for layer in units}
    stages = ([f"detector.layer{i + 1}" for i in range(len(STAGE_SIZES))]
              if dense and net.detector is not None else [])
    with record_outputs(net, list(planted_heads) + stages) as outputs:
        for epoch in range(first, config.epochs):
            order = torch.randperm(len(labels), generator=order_gen)
            for step in range(steps_per_epoch):
                idx = order[step * config.batch_size:(step + 1) * config.batch_size]
                logits = net(normalise(images[idx]))
                ce = F.cross_entropy(logits, labels[idx])
                aux = _aux_loss({layer: outputs[head] for head, layer in planted_heads.items()},
                                {k: v[idx] for k, v in targets.items()},
                                {k: v[idx] for k, v in present.items()},
                                {k: v[idx] for k, v in objects.items()})
                if stages:
                    aux = aux + _dense_loss(heads, outputs, {k: v[idx] for k, v in dense.items()})
                loss = ce + config.aux_weight * aux
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                bar.update(1)
                bar.set_postfix(epoch=epoch + 1, ce=f"{ce.item():.3f}", aux=f"{aux.item():.3f}",
                                refresh=False)
            if checkpoint is not None:
                checkpoint.save(epoch + 1)
    bar.close()
    net.eval()
    return net


# -- evaluation ------------------------------------------------------------------------------
def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for boolean ``labels`` (ties count half)."""
    from scipy.stats import rankdata

    labels = labels.astype(bool).ravel()
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores.ravel())
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def unit_figures(activations: np.ndarray, present: np.ndarray) -> dict[str, Any]:
    """``auc`` of the pooled activations for ``present`` and ``top10`` (present among the 10
    most activating images; ties: lower index first)."""
    top = np.argsort(-activations, kind="stable")[:10]
    return {"auc": roc_auc(activations, present), "top10": int(present[top].sum()),
            "positives": int(present.sum())}


def passes_gate(auc: float, top10: int, min_auc: float = GATE_MIN_AUC,
                min_top10: int = GATE_MIN_TOP10) -> bool:
    """The ground-truth gate: ``auc >= min_auc`` and ``top10 >= min_top10`` (NaN fails)."""
    return bool(auc == auc and auc >= min_auc and top10 >= min_top10)


def _test_outputs(net: Any, data: ToyData, layers: list[str]
                  ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The class logits of ``data``'s images and the maps of ``layers``."""
    import torch

    from dndbench.toyworld.network import normalise

    logits: list[np.ndarray] = []
    maps: dict[str, list[np.ndarray]] = {layer: [] for layer in layers}
    with record_outputs(net, layers) as outputs, torch.no_grad():
        for start in range(0, len(data.labels), 256):
            batch = torch.from_numpy(data.images[start:start + 256])
            logits.append(net(normalise(batch)).numpy())
            for layer in layers:
                maps[layer].append(outputs[layer].numpy())
    return np.concatenate(logits), {k: np.concatenate(v) for k, v in maps.items()}


def _iou_top_quantile(unit_maps: np.ndarray, data: ToyData, concept: str,
                      quantile: float = 0.005) -> float:
    """Network Dissection's IoU: maps upsampled (bilinear) to image size, thresholded at the
    top ``quantile`` of all activations, against the concept's full-resolution masks."""
    import torch
    import torch.nn.functional as F

    up = F.interpolate(torch.from_numpy(unit_maps[:, None]), size=REFERENCE_SIZE,
                       mode="bilinear", align_corners=False)[:, 0].numpy()
    threshold = np.quantile(up, 1 - quantile)
    truth = np.stack([concept_mask(spec, mask, concept) for spec, mask in
                      zip(data.specs, data.masks.astype(np.int32))])
    hot = up > threshold
    union = np.logical_or(hot, truth).sum()
    return float(np.logical_and(hot, truth).sum() / union) if union else 0.0


def evaluate(net: Any, config: TrainConfig, data: ToyData) -> dict[str, Any]:
    """Test accuracy and, per planted unit, its selectivity for its concept: pixel-level
    (``pixel_auc``, ``iou_top0.5%``) and image-level, the gate's figures (``auc`` of the
    spatially averaged map for "the image shows the concept", ``top10``, ``gate``)."""
    planted = planted_list(config)
    layers = sorted({layer for layer, _, _ in planted})
    logits, maps = _test_outputs(net, data, layers)
    preds = logits.argmax(1)
    units = []
    for layer, unit, concept in planted:
        k = [u for lay, u, _ in planted if lay == layer].index(unit)
        act = maps[layer][:, unit]
        inside = data.targets[layer][:, k] >= 0.5
        present = data.present[layer][:, k]
        figures = unit_figures(act.mean(axis=(1, 2)), present)
        auc, top10 = figures["auc"], figures["top10"]
        units.append({
            "layer": layer, "unit": unit, "concept": concept,
            "mean_inside": float(act[inside].mean()) if inside.any() else float("nan"),
            "mean_outside": float(act[~inside].mean()) if (~inside).any() else float("nan"),
            "pixel_auc": roc_auc(act, inside),
            "iou_top0.5%": _iou_top_quantile(act, data, concept),
            "positives": figures["positives"], "auc": auc, "top10": top10,
            "gate": passes_gate(auc, top10),
        })
    return {"test_accuracy": float((preds == data.labels).mean()),
            "test_images": int(len(data.labels)), "planted_units": units,
            "fc_units": fc_units(logits, data.labels)}


def fc_units(logits: np.ndarray, labels: np.ndarray) -> list[dict[str, Any]]:
    """Each class unit's gate figures for "the main object is this class": its logit's
    ROC-AUC and how many of its 10 top images show the class (``gate``: both pass)."""
    units = []
    for unit, name in enumerate(SHAPES):
        figures = unit_figures(logits[:, unit], labels == unit)
        auc, top10 = figures["auc"], figures["top10"]
        units.append({"unit": unit, "concept": name, "auc": auc, "top10": top10,
                      "gate": passes_gate(auc, top10)})
    return units


def flagged_fc_units(report: dict[str, Any]) -> list[int]:
    """The class units whose top images disagree with their class (they fail the gate)."""
    return [u["unit"] for u in report.get("fc_units", []) if not u["gate"]]


# -- the whole job ---------------------------------------------------------------------------
def train(config: TrainConfig, out_dir: Path | str, progress: bool = True,
          workers: int = 2) -> dict[str, Any]:
    """Train, evaluate and write ``weights.pt`` + ``meta.json`` into ``out_dir``; return the meta."""
    import torch

    out_dir = Path(out_dir)
    started = time.perf_counter()
    planted = planted_list(config)
    # a module whose attribute is a property, which type checkers cannot see
    deterministic: Any = importlib.import_module("torch.utils.deterministic")
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    was_filling = deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True)
    # deterministic mode fills every new tensor with NaN by default, which doubles the step
    # time; every tensor here is fully written before use, so the weights do not change
    deterministic.fill_uninitialized_memory = False
    try:
        stream = TRAIN_STREAM_BASE + 2 * config.seed
        train_data = make_data(stream, config.train_images, planted, workers,
                               config.seeded_fraction)
        test_data = make_data(stream + 1, config.test_images, planted, workers)
        generated = time.perf_counter()
        net = _train_network(config, train_data, progress, out_dir)
        trained = time.perf_counter()
        report = evaluate(net, config, test_data)
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
        deterministic.fill_uninitialized_memory = was_filling
    report["seconds"] = {"generate": round(generated - started, 2),
                         "train": round(trained - generated, 2),
                         "total": round(time.perf_counter() - started, 2)}
    meta = {
        "version": TOYNET_VERSION, "generator": GENERATOR_VERSION, "key": training_key(config),
        "class_names": list(SHAPES),
        # ground truth: only the units that passed the gate on the held-out stream
        "planted": {layer: {str(u["unit"]): u["concept"] for u in report["planted_units"]
                            if u["layer"] == layer and u["gate"]}
                    for layer in sorted({u["layer"] for u in report["planted_units"]})},
        "gate": {"min_auc": GATE_MIN_AUC, "min_top10": GATE_MIN_TOP10,
                 "measured_on": f"{config.test_images} images of the held-out stream"},
        # class units that fail the same gate for their class (see the module docstring)
        "flagged_fc_units": flagged_fc_units(report),
        "concepts": [asdict(c) for c in all_concepts()],
        "config": asdict(config), "report": report,
    }
    with atomic_path(out_dir / "weights.pt") as tmp:
        torch.save(net.state_dict(), tmp)
    with atomic_path(out_dir / "meta.json") as tmp:
        tmp.write_text(json.dumps(meta, indent=2))
    remove_checkpoints(out_dir)
    return meta


def format_report(report: dict[str, Any]) -> str:
    """A human-readable summary of :func:`evaluate`'s report."""
    lines = [f"test accuracy: {report['test_accuracy']:.3f} on {report['test_images']} images"]
    if "seconds" in report:
        s = report["seconds"]
        lines.append(f"time: {s['total']:.1f}s (generate {s['generate']:.1f}s, train {s['train']:.1f}s)")
    units = report["planted_units"]
    passed = sum(bool(u.get("gate")) for u in units)
    lines.append(f"planted units passing the gate (AUC >= {GATE_MIN_AUC}, top10 >= "
                 f"{GATE_MIN_TOP10}): {passed} of {len(units)}")
    lines.append(f"{'layer':7} {'unit':>4}  {'concept':15} {'in':>6} {'out':>6} {'pixAUC':>6} "
                 f"{'AUC':>6} {'top10':>5} {'pos':>5}  gate")
    for u in units:
        lines.append(f"{u['layer']:7} {u['unit']:>4}  {u['concept']:15} {u['mean_inside']:6.3f} "
                     f"{u['mean_outside']:6.3f} {u['pixel_auc']:6.3f} {u['auc']:6.3f} "
                     f"{u['top10']:>5} {u['positives']:>5}  {'pass' if u['gate'] else 'FAIL'}")
    if "fc_units" in report:
        flagged = [f"{u['unit']} {u['concept']} (AUC {u['auc']:.3f}, top10 {u['top10']})"
                   for u in report["fc_units"] if not u["gate"]]
        lines.append(f"fc units flagged (top images disagree with their class): "
                     f"{len(flagged)} of {len(report['fc_units'])}"
                     + (": " + ", ".join(flagged) if flagged else ""))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m dndbench.toyworld.train_toynet``: train, report, save."""
    from dndbench.toyworld.training_cli import run_training_command

    return run_training_command(argv, prog="python -m dndbench.toyworld.train_toynet",
                                description="Train ToyNet on generated toy-world images.",
                                config_class=TrainConfig, default_out=default_out_dir,
                                train=train, format_report=format_report)


if __name__ == "__main__":
    sys.exit(main())
