"""Train the toy CLIP and the toy captioner (one :class:`ToyDual` network) on generated images.

``python -m dndbench.toyworld.train_toy_backends [--seed 0] [--out DIR]`` trains deterministically
(same machine and seed => same weights), reports held-out caption accuracy (exact match and per
slot) and image->text retrieval top-1 (among the held-out captions, and among each category's
bare concept words), and writes ``weights.pt`` then ``meta.json`` atomically into
``<cache>/toy_backends/<key>/`` (``meta.json`` marks a finished training).

Training signal per batch: symmetric InfoNCE between images and random-template captions
(the bare ``<unk>`` text is an extra negative, so texts of unknown words match no image); a
softmax over each category's bare concept words ("red", "star", "grass", ...), as CLIP-Dissect
queries them; and cross-entropy of every caption slot head.

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
from dndbench.toyworld.world import CATEGORIES, GENERATOR_VERSION, SceneSpec
from dndbench.training_checkpoint import CHECKPOINT_NAME, TrainingCheckpoint, remove_checkpoints

#: bump whenever a change of the network, the captions or training alters the trained weights
BACKENDS_VERSION = "toy-backends-v1"
BACKEND_STREAM_BASE = 2_000_000_000
NAMESPACE = "toy_backends"


@dataclass
class BackendTrainConfig:
    """Everything that determines the toy backends' trained weights."""

    seed: int = 0
    train_images: int = 4000
    test_images: int = 500
    epochs: int = 5
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4
    widths: tuple[int, int, int, int] = (32, 48, 96, 128)
    dim: int = 64
    unk_prob: float = 0.2


def training_key(config: BackendTrainConfig) -> str:
    """Cache key of the weights ``config`` produces (config + code and generator versions)."""
    return stable_hash("toy-backends", BACKENDS_VERSION, GENERATOR_VERSION, asdict(config))


def out_dir(config: BackendTrainConfig, cache_root: Path | str | None = None) -> Path:
    """``<cache>/toy_backends/<key>``: where the toy backends look for these weights."""
    return Path(cache_root or default_cache_dir()) / NAMESPACE / training_key(config)


# -- data ------------------------------------------------------------------------------------
def slot_labels(specs: list[SceneSpec]) -> dict[str, np.ndarray]:
    """Class index of every caption slot per spec (-1: no distractor, nothing to predict)."""
    from dndbench.toyworld.backend_network import SLOTS

    def index(slot: str, spec: SceneSpec) -> int:
        main = spec.concept_names()
        if slot in main:
            return SLOTS[slot].index(main[slot])
        if slot == "distractor":
            return int(len(spec.objects) > 1)
        if len(spec.objects) < 2:
            return -1
        attr = slot.split("_", 1)[1]
        return SLOTS[slot].index(getattr(spec.objects[1], attr))

    return {slot: np.array([index(slot, s) for s in specs], np.int64) for slot in SLOTS}


def concept_texts() -> list[str]:
    """The bare concept words of every category, category by category."""
    return [name for names in CATEGORIES.values() for name in names]


def _caption_tokens(specs: list[SceneSpec], rng: np.random.Generator,
                    unk_prob: float) -> list[list[int]]:
    """Random-template captions; some get an ``<unk>`` token inserted at a random place."""
    from dndbench.toyworld.captions import random_caption, tokenize

    unk = tokenize("")[0]
    out = []
    for spec in specs:
        tokens = tokenize(random_caption(spec, rng))
        if rng.random() < unk_prob:
            tokens.insert(int(rng.integers(len(tokens) + 1)), unk)
        out.append(tokens)
    return out


# -- training --------------------------------------------------------------------------------
def _losses(model: Any, images: Any, text_ids: Any, labels: dict[str, Any]) -> dict[str, Any]:
    """The three training losses of one batch (see the module docstring).  ``text_ids`` holds
    the batch's captions, then every bare concept word, then the bare ``<unk>`` text."""
    import torch
    import torch.nn.functional as F

    img, slot_logits = model.encode_image(images)
    n = len(img)
    texts = model.encode_text(text_ids)
    caps, words, unk = texts[:n], texts[n:-1], texts[-1:]
    scale, target = model.scale(), torch.arange(n)
    clip = (F.cross_entropy(scale * img @ torch.cat([caps, unk]).T, target)
            + F.cross_entropy(scale * caps @ img.T, target)) / 2
    concept, start = [], 0
    for category, names in CATEGORIES.items():
        logits = scale * img @ words[start:start + len(names)].T
        concept.append(F.cross_entropy(logits, labels[category]))
        start += len(names)
    slots = [F.cross_entropy(slot_logits[s], y, ignore_index=-1) for s, y in labels.items()
             if bool((y >= 0).any())]
    return {"clip": clip, "concept": torch.stack(concept).mean(),
            "slots": torch.stack(slots).mean()}


def _fixed_tokens() -> list[list[int]]:
    from dndbench.toyworld.captions import UNK, tokenize

    return [tokenize(t) for t in concept_texts()] + [tokenize(UNK)]


def _train_network(config: BackendTrainConfig, images: np.ndarray, specs: list[SceneSpec],
                   progress: bool, out: Path | None = None) -> Any:
    """Train the toy backends; with ``out``, a checkpoint saved there after every epoch lets a
    killed training resume with the same final weights (:mod:`dndbench.training_checkpoint`;
    each epoch's caption sampler is re-seeded from the epoch, so it needs no saved state)."""
    import torch
    from tqdm.auto import tqdm

    from dndbench.toyworld.backend_network import ToyDual, normalise, text_batch

    torch.manual_seed(config.seed)
    model = ToyDual(tuple(config.widths), config.dim)  # type: ignore[arg-type]
    labels = {k: torch.from_numpy(v) for k, v in slot_labels(specs).items()}
    pixels, fixed = torch.from_numpy(images), _fixed_tokens()
    steps = (len(specs) + config.batch_size - 1) // config.batch_size
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, config.lr, total_steps=max(
        1, config.epochs * steps), pct_start=0.2)
    order_gen = torch.Generator().manual_seed(config.seed)
    checkpoint = None if out is None else TrainingCheckpoint(
        out / CHECKPOINT_NAME, training_key(config), modules={"model": model},
        optimizers={"opt": opt}, schedulers={"sched": sched}, generators={"order": order_gen})
    resumed = checkpoint.resume() if checkpoint is not None else None
    first = resumed.epoch if resumed is not None else 0
    bar = tqdm(total=config.epochs * steps, desc="training toy backends", disable=not progress,
               mininterval=2.0, initial=first * steps)
    model.train()
    for epoch in range(first, config.epochs):
        rng = np.random.default_rng([config.seed, epoch])
        captions = _caption_tokens(specs, rng, config.unk_prob)
        order = torch.randperm(len(specs), generator=order_gen)
        for step in range(steps):
            idx = order[step * config.batch_size:(step + 1) * config.batch_size]
            text_ids = text_batch([captions[int(i)] for i in idx] + fixed)
            parts = _losses(model, normalise(pixels[idx]), text_ids,
                            {k: v[idx] for k, v in labels.items()})
            loss = parts["clip"] + parts["concept"] + parts["slots"]
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

    embs, preds = [], []
    with torch.no_grad():
        for start in range(0, len(images), 256):
            emb, logits = model.encode_image(normalise(torch.from_numpy(images[start:start + 256])))
            embs.append(emb.numpy())
            preds.append({k: v.argmax(1).numpy() for k, v in logits.items()})
    return np.concatenate(embs), {k: np.concatenate([p[k] for p in preds]) for k in preds[0]}


def encode_texts(model: Any, texts: list[str], device: str = "cpu") -> np.ndarray:
    """L2-normalised embeddings of ``texts`` under ``model``."""
    import torch

    from dndbench.toyworld.backend_network import text_batch
    from dndbench.toyworld.captions import tokenize

    with torch.no_grad():
        ids = text_batch([tokenize(t) for t in texts]).to(device)
        return model.encode_text(ids).cpu().numpy()


def predicted_captions(preds: dict[str, np.ndarray]) -> list[str]:
    """Canonical captions of per-slot predicted class indices."""
    from dndbench.toyworld.backend_network import SLOTS, slots_to_caption

    count = len(next(iter(preds.values())))
    return [slots_to_caption({s: SLOTS[s][int(preds[s][i])] for s in SLOTS}) for i in range(count)]


def evaluate(model: Any, images: np.ndarray, specs: list[SceneSpec]) -> dict[str, Any]:
    """Held-out caption accuracy and image->text retrieval top-1 (with chance levels)."""
    from dndbench.toyworld.captions import canonical_caption

    emb, preds = _encode_all(model, images)
    labels = slot_labels(specs)
    slot_acc = {s: float((preds[s] == y)[y >= 0].mean()) for s, y in labels.items()}
    truth = [canonical_caption(s) for s in specs]
    exact = float(np.mean([p == t for p, t in zip(predicted_captions(preds), truth)]))
    unique = sorted(set(truth))
    best = (emb @ encode_texts(model, unique).T).argmax(1)
    caption_top1 = float(np.mean([unique[b] == t for b, t in zip(best, truth)]))
    words, start, word_top1 = encode_texts(model, concept_texts()), 0, {}
    for category, names in CATEGORIES.items():
        hits = (emb @ words[start:start + len(names)].T).argmax(1) == labels[category]
        word_top1[category] = {"top1": float(hits.mean()), "chance": 1 / len(names)}
        start += len(names)
    return {"test_images": len(specs), "caption_exact_match": exact, "slot_accuracy": slot_acc,
            "caption_retrieval_top1": caption_top1, "caption_retrieval_candidates": len(unique),
            "concept_word_top1": word_top1}


# -- the whole job ---------------------------------------------------------------------------
def _data(stream: int, count: int, workers: int) -> tuple[np.ndarray, list[SceneSpec]]:
    from dndbench.toyworld.train_toynet import make_data

    data = make_data(stream, count, [], workers)
    return data.images, data.specs


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
        train_images, train_specs = _data(stream, config.train_images, workers)
        test_images, test_specs = _data(stream + 1, config.test_images, workers)
        generated = time.perf_counter()
        with torch.enable_grad():  # also when called inside a caller's no_grad block
            model = _train_network(config, train_images, train_specs, progress, out)
        trained = time.perf_counter()
        report = evaluate(model, test_images, test_specs)
    finally:
        torch.use_deterministic_algorithms(was[0])
        deterministic.fill_uninitialized_memory = was[1]
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
             f"caption exact match: {report['caption_exact_match']:.3f}",
             "slot accuracy: " + ", ".join(f"{k} {v:.3f}" for k, v in report["slot_accuracy"].items()),
             f"image->caption retrieval top-1: {report['caption_retrieval_top1']:.3f} "
             f"(among {report['caption_retrieval_candidates']} captions)",
             "image->concept word top-1: " + ", ".join(
                 f"{k} {v['top1']:.3f} (chance {v['chance']:.3f})"
                 for k, v in report["concept_word_top1"].items())]
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
