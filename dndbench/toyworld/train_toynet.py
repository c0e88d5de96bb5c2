"""Train ToyNet on freshly generated toy-world images, planting known concepts in hidden units.

``python -m dndbench.toyworld.train_toynet [--seed 0] [--out DIR]`` trains deterministically (same
machine and seed => same weights), prints progress, reports test accuracy and the selectivity
of every planted unit, and writes ``weights.pt`` and ``meta.json`` (atomically; ``meta.json``
last, so its presence marks a finished training).

Planted units: besides the classification loss, chosen units of ``layer2``/``layer3`` are
trained to reproduce a concept's mask (downsampled to the unit's map size) with their
post-ReLU activation map, so their meaning is known by construction.
"""
from __future__ import annotations

import importlib
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dndbench.cache import atomic_path, default_cache_dir, stable_hash
from dndbench.hooks import record_outputs
from dndbench.toyworld.render import REFERENCE_SIZE, concept_mask, generate
from dndbench.toyworld.world import GENERATOR_VERSION, SHAPES, all_concepts
from dndbench.training_checkpoint import CHECKPOINT_NAME, TrainingCheckpoint, remove_checkpoints

#: bump whenever a change of the network or of training alters the trained weights
TOYNET_VERSION = "toynet-v1"
#: training and test images come from these streams (offset by 2 * seed); probe sets use
#: small seeds (default 1000), so the network never sees probe images
TRAIN_STREAM_BASE = 1_000_000
#: spatial size of each layer's maps for a 64x64 input
MAP_SIZES = {"layer1": 16, "layer2": 16, "layer3": 8, "layer4": 4}


def _default_planted() -> dict[str, dict[int, str]]:
    return {
        "layer2": {3: "yellow", 11: "dotted", 24: "grass"},
        "layer3": {2: "red", 9: "blue", 17: "striped", 26: "checkered", 35: "water",
                   44: "brick wall", 51: "star", 60: "heart"},
    }


@dataclass
class TrainConfig:
    """Everything that determines ToyNet's trained weights."""

    seed: int = 0
    train_images: int = 6000
    test_images: int = 1000
    epochs: int = 6
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 5e-4
    aux_weight: float = 1.0
    widths: tuple[int, ...] = (16, 32, 64, 128)
    blocks: int = 1
    planted: dict[str, dict[int, str]] = field(default_factory=_default_planted)


def training_key(config: TrainConfig) -> str:
    """Cache key of the weights ``config`` produces (config + code and generator versions)."""
    return stable_hash("toynet", TOYNET_VERSION, GENERATOR_VERSION, asdict(config))


def default_out_dir(config: TrainConfig) -> Path:
    """Where the ``toynet`` model plugin looks for these weights in the default cache."""
    return default_cache_dir() / "toynet" / training_key(config)


def planted_list(config: TrainConfig) -> list[tuple[str, int, str]]:
    """Planted units as (layer, unit, concept), in a fixed order."""
    return [(layer, int(unit), name) for layer, units in sorted(config.planted.items())
            for unit, name in sorted(units.items(), key=lambda kv: int(kv[0]))]


# -- data ------------------------------------------------------------------------------------
@dataclass
class ToyData:
    """Generated images with class labels, planted-unit targets and object masks."""

    images: np.ndarray          # (N, 3, 64, 64) uint8
    labels: np.ndarray          # (N,) int64: index of the main object's shape
    targets: dict[str, np.ndarray]  # layer -> (N, units planted there, s, s) float32 in [0, 1]
    masks: np.ndarray           # (N, 64, 64) int8 object masks (see render.render)
    specs: list[Any]


def _pool(mask: np.ndarray, size: int) -> np.ndarray:
    factor = mask.shape[0] // size
    return mask.reshape(size, factor, size, factor).mean(axis=(1, 3), dtype=np.float32)


def _make_chunk(args: tuple[int, int, int, list[tuple[str, int, str]]]) -> ToyData:
    stream, start, stop, planted = args
    images, labels, masks, specs = [], [], [], []
    targets: dict[str, list[np.ndarray]] = {layer: [] for layer, _, _ in planted}
    for index in range(start, stop):
        rgb, spec, mask = generate(stream, index, REFERENCE_SIZE)
        images.append(rgb.transpose(2, 0, 1))
        labels.append(SHAPES.index(spec.main.shape))
        masks.append(mask.astype(np.int8))
        specs.append(spec)
        for layer in targets:
            targets[layer].append(np.stack([
                _pool(concept_mask(spec, mask, name).astype(np.float32), MAP_SIZES[layer])
                for lay, _, name in planted if lay == layer]))
    return ToyData(np.stack(images), np.asarray(labels, np.int64),
                   {k: np.stack(v) for k, v in targets.items()}, np.stack(masks), specs)


def _concat(parts: list[ToyData]) -> ToyData:
    return ToyData(np.concatenate([p.images for p in parts]),
                   np.concatenate([p.labels for p in parts]),
                   {k: np.concatenate([p.targets[k] for p in parts]) for k in parts[0].targets},
                   np.concatenate([p.masks for p in parts]),
                   [s for p in parts for s in p.specs])


def make_data(stream: int, count: int, planted: list[tuple[str, int, str]],
              workers: int = 2) -> ToyData:
    """Images 0..count-1 of ``stream``, generated in ``workers`` processes when worth it."""
    chunk = 500
    jobs = [(stream, s, min(count, s + chunk), planted) for s in range(0, count, chunk)]
    if workers <= 1 or len(jobs) <= 1:
        return _concat([_make_chunk(job) for job in jobs])
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        return _concat(list(pool.map(_make_chunk, jobs)))


# -- training --------------------------------------------------------------------------------
def _unit_index(config: TrainConfig) -> dict[str, list[int]]:
    return {layer: [int(u) for u in sorted(units, key=int)] for layer, units in config.planted.items()}


def _aux_loss(outputs: dict[str, Any], targets: dict[str, Any], units: dict[str, list[int]]) -> Any:
    """Class-balanced squared error between planted units' maps and their concept masks:
    errors inside and outside the masks are averaged separately, so rare concepts count."""
    import torch

    losses = []
    for layer, target in targets.items():
        err = (outputs[layer][:, units[layer]] - target) ** 2
        pos = (target > 0.5).float()
        dims = (0, 2, 3)
        inside = (err * pos).sum(dims) / pos.sum(dims).clamp(min=1.0)
        outside = (err * (1 - pos)).sum(dims) / (1 - pos).sum(dims).clamp(min=1.0)
        losses.append(inside + outside)
    return torch.cat(losses).mean()


def _train_network(config: TrainConfig, data: ToyData, progress: bool,
                   out_dir: Path | None = None) -> Any:
    """Train ToyNet on ``data``; with ``out_dir``, a checkpoint saved there after every epoch
    lets a killed training resume where it stopped, with the same final weights
    (:mod:`dndbench.training_checkpoint`)."""
    import torch
    import torch.nn.functional as F
    from tqdm.auto import tqdm

    from dndbench.toyworld.network import ToyNet, normalise

    torch.manual_seed(config.seed)
    net = ToyNet(len(SHAPES), tuple(config.widths), config.blocks)
    units = _unit_index(config)
    images = torch.from_numpy(data.images)
    labels = torch.from_numpy(data.labels)
    targets = {k: torch.from_numpy(v) for k, v in data.targets.items()}
    steps_per_epoch = (len(labels) + config.batch_size - 1) // config.batch_size
    opt = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, config.lr, total_steps=max(
        1, config.epochs * steps_per_epoch), pct_start=0.2)
    order_gen = torch.Generator().manual_seed(config.seed)
    checkpoint = None if out_dir is None else TrainingCheckpoint(
        out_dir / CHECKPOINT_NAME, training_key(config), modules={"net": net},
        optimizers={"opt": opt}, schedulers={"sched": sched}, generators={"order": order_gen})
    resumed = checkpoint.resume() if checkpoint is not None else None
    first = resumed.epoch if resumed is not None else 0
    net.train()
    bar = tqdm(total=config.epochs * steps_per_epoch, desc="training toynet", disable=not progress,
               mininterval=2.0, initial=first * steps_per_epoch)
    with record_outputs(net, list(units)) as outputs:
        for epoch in range(first, config.epochs):
            order = torch.randperm(len(labels), generator=order_gen)
            for step in range(steps_per_epoch):
                idx = order[step * config.batch_size:(step + 1) * config.batch_size]
                logits = net(normalise(images[idx]))
                ce = F.cross_entropy(logits, labels[idx])
                aux = _aux_loss(outputs, {k: v[idx] for k, v in targets.items()}, units)
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


def _test_outputs(net: Any, data: ToyData, layers: list[str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    import torch

    from dndbench.toyworld.network import normalise

    preds: list[np.ndarray] = []
    maps: dict[str, list[np.ndarray]] = {layer: [] for layer in layers}
    with record_outputs(net, layers) as outputs, torch.no_grad():
        for start in range(0, len(data.labels), 256):
            batch = torch.from_numpy(data.images[start:start + 256])
            preds.append(net(normalise(batch)).argmax(1).numpy())
            for layer in layers:
                maps[layer].append(outputs[layer].numpy())
    return np.concatenate(preds), {k: np.concatenate(v) for k, v in maps.items()}


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
    """Test accuracy and, per planted unit, its selectivity for its concept."""
    planted = planted_list(config)
    layers = sorted({layer for layer, _, _ in planted})
    preds, maps = _test_outputs(net, data, layers)
    units = []
    for layer, unit, concept in planted:
        k = [u for lay, u, _ in planted if lay == layer].index(unit)
        act = maps[layer][:, unit]
        inside = data.targets[layer][:, k] >= 0.5
        units.append({
            "layer": layer, "unit": unit, "concept": concept,
            "mean_inside": float(act[inside].mean()) if inside.any() else float("nan"),
            "mean_outside": float(act[~inside].mean()) if (~inside).any() else float("nan"),
            "auc": roc_auc(act, inside),
            "iou_top0.5%": _iou_top_quantile(act, data, concept),
        })
    return {"test_accuracy": float((preds == data.labels).mean()),
            "test_images": int(len(data.labels)), "planted_units": units}


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
        train_data = make_data(stream, config.train_images, planted, workers)
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
        "planted": {layer: {str(u): name for u, name in sorted(units.items(), key=lambda kv: int(kv[0]))}
                    for layer, units in config.planted.items()},
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
    lines.append(f"{'layer':8} {'unit':>4}  {'concept':12} {'in':>6} {'out':>6} {'AUC':>6} {'IoU@0.5%':>8}")
    for u in report["planted_units"]:
        lines.append(f"{u['layer']:8} {u['unit']:>4}  {u['concept']:12} {u['mean_inside']:6.3f} "
                     f"{u['mean_outside']:6.3f} {u['auc']:6.3f} {u['iou_top0.5%']:8.3f}")
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
