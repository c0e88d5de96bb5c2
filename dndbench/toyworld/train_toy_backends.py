"""Train the toy CLIP and the toy captioner (one :class:`ToyDual` network) on generated images.

``python -m dndbench.toyworld.train_toy_backends [--seed 0] [--out DIR]`` trains deterministically
(same machine and seed => same weights), reports held-out accuracy per caption slot and the
image->text retrieval top-1 of each slot's query words, on whole images, on DnD-style crops of
the main object and on object-free background patches, and writes ``weights.pt`` then
``meta.json`` atomically into ``<cache>/toy_backends/<key>/`` (``meta.json`` marks a finished
training).

Training views (:func:`dndbench.toyworld.backend_data.training_views`): every training image
whole; ``crops_per_image`` crops of its main object, cut much as DnD cuts its crops; and, for a
``patch_fraction`` of the images, an object-free background square whose only slots are the
scene and "no object".  Training scenes show more outlined main objects and second objects than
the world draws (``outlined_fraction``, ``distractor_fraction``).

Training signal per batch: symmetric InfoNCE between views and varied captions
(:func:`dndbench.toyworld.captions.random_caption`; the bare ``<unk>`` text is an extra negative,
so texts of unknown words match no image); a softmax over each slot's query texts
(:func:`~dndbench.toyworld.captions.slot_queries`: the bare concept words "red", "star",
"grass", "zigzag", ..., as CLIP-Dissect queries them, and word pairs such as "filled" /
"outlined"); and cross-entropy of
every caption slot head, each masked where a view does not show the slot; and the dense heads
(which object each 16x16 cell shows, its texture).  The object tower reads the true objects'
boxes (jittered by ``box_jitter``), and from mid-training on a ``predicted_boxes`` share of the
rows read the boxes the network finds itself.

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
from dndbench.errors import ConfigError
from dndbench.toyworld.backend_data import VIEWS, Views
from dndbench.toyworld.world import GENERATOR_VERSION, SceneSpec
from dndbench.training_checkpoint import CHECKPOINT_NAME, TrainingCheckpoint, remove_checkpoints

#: bump whenever a change of the network, the captions or training alters the trained weights
BACKENDS_VERSION = "toy-backends-v2"
BACKEND_STREAM_BASE = 2_000_000_000
#: the narrowest width: torch 2.14's oneDNN corrupts the heap in the backward pass of stride-2
#: convolutions with fewer than 16 output channels when it runs on two or more CPU threads
MIN_WIDTH = 16
NAMESPACE = "toy_backends"
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
    train_images: int = 8000
    test_images: int = 1000
    epochs: int = 8
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 5e-4
    widths: tuple[int, int, int, int] = (16, 32, 64, 128)
    dim: int = 64
    unk_prob: float = 0.2
    crops_per_image: int = 1
    patch_fraction: float = 0.25
    outlined_fraction: float = 0.45
    distractor_fraction: float = 0.6
    box_jitter: float = 0.1
    predicted_boxes: float = 0.7


def training_key(config: BackendTrainConfig) -> str:
    """Cache key of the weights ``config`` produces (config + code and generator versions)."""
    return stable_hash("toy-backends", BACKENDS_VERSION, GENERATOR_VERSION, asdict(config))


def out_dir(config: BackendTrainConfig, cache_root: Path | str | None = None) -> Path:
    """``<cache>/toy_backends/<key>``: where the toy backends look for these weights."""
    return Path(cache_root or default_cache_dir()) / NAMESPACE / training_key(config)


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


def _train_network(config: BackendTrainConfig, views: Views, progress: bool,
                   out: Path | None = None) -> Any:
    """Train the toy backends; with ``out``, a checkpoint saved there after every epoch lets a
    killed training resume with the same final weights (:mod:`dndbench.training_checkpoint`;
    each epoch's caption sampler is re-seeded from the epoch, so it needs no saved state)."""
    import torch
    from tqdm.auto import tqdm

    from dndbench.toyworld.backend_data import all_dense_targets, slot_targets, true_boxes
    from dndbench.toyworld.backend_network import ToyDual, normalise, text_batch

    torch.manual_seed(config.seed)
    model = ToyDual(tuple(config.widths), config.dim)  # type: ignore[arg-type]
    labels = {k: torch.from_numpy(v) for k, v in slot_targets(views.slots).items()}
    pixels, fixed = torch.from_numpy(views.images), _fixed_tokens()
    dense = all_dense_targets(views)
    flip_gen = torch.Generator().manual_seed(config.seed + 1)
    steps = (len(views) + config.batch_size - 1) // config.batch_size
    total = max(1, config.epochs * steps)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    # (at least 10 steps: the schedule needs a warm-up step)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, config.lr, total_steps=max(
        10, config.epochs * steps), pct_start=0.2)
    order_gen = torch.Generator().manual_seed(config.seed)
    checkpoint = None if out is None else TrainingCheckpoint(
        out / CHECKPOINT_NAME, training_key(config), modules={"model": model},
        optimizers={"opt": opt}, schedulers={"sched": sched},
        generators={"order": order_gen, "flip": flip_gen})
    resumed = checkpoint.resume() if checkpoint is not None else None
    first = resumed.epoch if resumed is not None else 0
    bar = tqdm(total=config.epochs * steps, desc="training toy backends", disable=not progress,
               mininterval=2.0, initial=first * steps)
    model.train()
    for epoch in range(first, config.epochs):
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
        if checkpoint is not None:
            checkpoint.save(epoch + 1)
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

    from dndbench.toyworld.backend_data import report_views
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
    """Images 0..count-1 of ``stream`` as the world draws them, and their specs."""
    from dndbench.toyworld.backend_data import world_data

    images, specs, _ = world_data(stream, count, workers)
    return images, specs


def train(config: BackendTrainConfig, out: Path | str, progress: bool = True,
          workers: int = 2) -> dict[str, Any]:
    """Train, evaluate and write ``weights.pt`` + ``meta.json`` into ``out``; return the meta."""
    import torch

    if min(config.widths) < MIN_WIDTH:
        raise ConfigError(f"toy backends: every width must be at least {MIN_WIDTH} channels "
                          f"(got {tuple(config.widths)}); narrower stride-2 convolutions crash "
                          f"the CPU convolution library torch ships")

    from dndbench.toyworld.backend_data import training_data, training_views, world_data

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
        images, specs, masks = training_data(stream, config.train_images,
                                             config.outlined_fraction,
                                             config.distractor_fraction, workers)
        views = training_views(images, specs, masks, stream, config.crops_per_image,
                               config.patch_fraction)
        del images, masks
        test_images, test_specs, test_masks = world_data(stream + 1, config.test_images, workers)
        generated = time.perf_counter()
        with torch.enable_grad():  # also when called inside a caller's no_grad block
            model = _train_network(config, views, progress, out)
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
    remove_checkpoints(out)
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
