"""Layer-batched execution of DnD: each step runs once for all units of a chunk.

Work is shared without changing any unit's result:

* an image in several units' top sets is captioned once (the captioner gets the union);
* identical LLM conversations are answered once (one ``chat`` call per step, call cache);
* a concept that is a candidate for several units is drawn once (same prompt and seed);
* synthetic images (and crops) go through the target network in passes that record every unit
  of the layer.

Memory does not grow with the number of units: the describer hands :func:`describe_units` the
layer's units in chunks of ``units_per_batch``, and inside a chunk images are streamed, at most
:func:`images_per_pass` of them in memory at once.  Generated images live in the call cache on
disk (PNG, keyed by prompt, seed and index): step 3 draws them once for their activations and
reads the few it needs again from the cache for the CLIP term.  Probe images and crops are
rebuilt from the probe's files when they have left the small :class:`ImageBank` memo.

Per-unit results depend only on the unit: shuffles are seeded by (seed, unit, draw), ties are
broken by fixed orders, and every target-network pass is padded to whole batches of
``ctx.activations.batch_size`` so an image's activations do not depend on its batch companions
(CPU kernels are not bitwise batch-size invariant).  Pooled activations of extra images are
kept in the call cache keyed by (model, weights, layer, pooling, image hash), and each unit's
cropping result in the run cache, so sweeps recompute nothing upstream of what they change.

Counters (``ctx.counters``): ``dnd/captioned_images``, ``dnd/llm_calls``,
``dnd/generated_images``, ``dnd/clip_images`` (backend cache misses), ``dnd/forward_images``
(extra images pushed through the target network, cache misses, padding excluded),
``dnd/forward_padding`` and ``dnd/map_images`` (probe images re-run for their maps).
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from dndbench.cache import stable_hash
from dndbench.describers.dnd import candidates as cand
from dndbench.describers.dnd import cropping, selection
from dndbench.describers.dnd.config import DnDConfig
from dndbench.image_activations import forward_pooled, padded  # noqa: F401  (re-exported)

if TYPE_CHECKING:
    from PIL import Image

    from dndbench.context import Context
    from dndbench.describers.base import Description

#: a top image: (probe index, crop box or None for the whole image)
Source = tuple[int, cropping.Box | None]
#: bump when the cropping / forward caches would hold different values (2: crops cut from the
#: region the network saw, :mod:`dndbench.geometry`)
STAGE_VERSION = "2"
DOWNSCALE_SIZE = 32
#: target-network batches of images held in memory by one streamed pass
BATCHES_PER_PASS = 2
#: probe images and crops the :class:`ImageBank` keeps in memory
BANK_CAPACITY = 256


@dataclass
class UnitWork:
    """What DnD has worked out so far for one unit."""

    unit: int
    top: list[Source]
    n_crops: int = 0
    captions: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    raw: list[str] = field(default_factory=list)
    candidates: list[str] = field(default_factory=list)


# -- shared helpers ------------------------------------------------------------------------------
def counted(ctx: "Context", kind: str, counter: str, call: Callable[[Any], Any]) -> Any:
    """Run ``call(backend)`` and add the backend's new cache misses to ``ctx.counters``."""
    backend = ctx.backend(kind)
    before = backend.computed
    out = call(backend)
    ctx.count(counter, backend.computed - before)
    return out


def images_per_pass(ctx: "Context") -> int:
    """How many images a streamed step holds at once (whole target-network batches)."""
    return max(1, int(ctx.activations.batch_size)) * BATCHES_PER_PASS


def slices(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    """``items`` cut into consecutive pieces of at most ``size``."""
    return [items[start:start + size] for start in range(0, len(items), max(1, size))]


class ImageBank:
    """Probe images and crops of them, built on demand and kept in a small LRU memo (at most
    ``capacity``), so memory does not grow with the number of units; an image that left the
    memo is rebuilt, identically, from the probe."""

    def __init__(self, ctx: "Context", crop_size: int, capacity: int | None = None) -> None:
        self.ctx, self.crop_size = ctx, crop_size
        self.capacity = max(1, BANK_CAPACITY if capacity is None else capacity)
        self._memo: OrderedDict[Source, "Image.Image"] = OrderedDict()

    def get(self, source: Source) -> "Image.Image":
        if source in self._memo:
            self._memo.move_to_end(source)
            return self._memo[source]
        index, box = source
        image = self.ctx.probe.image(index).convert("RGB")
        if box is not None:
            image = cropping.crop(image, box, self.crop_size, self.ctx.model.preprocessing())
        self._memo[source] = image
        if len(self._memo) > self.capacity:
            self._memo.popitem(last=False)
        return image

    def __len__(self) -> int:
        return len(self._memo)


def forward_sources(ctx: "Context", bank: ImageBank, sources: Sequence[Source],
                    pooling: str) -> np.ndarray:
    """Pooled activations (len(sources), units of the layer) of probe images / crops, streamed."""
    parts = [forward_pooled(ctx, [bank.get(s) for s in part], pooling)
             for part in slices(sources, images_per_pass(ctx))]
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


# -- step 1: top images and attention crops ------------------------------------------------------
def top_originals(ctx: "Context", units: Sequence[int], k: int, pooling: str) -> dict[int, list[int]]:
    """The ``k`` most activating probe images of each unit (ties: lower index first)."""
    acts = ctx.activations.pooled(ctx.layer).get(pooling)
    return {u: [int(i) for i in np.argsort(-acts[:, u], kind="stable")[:k]] for u in units}


def crop_key(ctx: "Context", cfg: DnDConfig, unit: int) -> str:
    """Cache key of one unit's cropping result."""
    return stable_hash("dnd-top", STAGE_VERSION, ctx.model.config.name,
                       ctx.model.weights_fingerprint(), ctx.probe.config.name,
                       ctx.probe.fingerprint(), ctx.model.resolve_layer(ctx.layer), unit, cfg.k,
                       cfg.pooling, cfg.crop_size, cfg.heatmap, cfg.max_crops_per_image,
                       cfg.crop_max_iou, cfg.crop_max_full_iou)


def crop_boxes(ctx: "Context", cfg: DnDConfig, originals: dict[int, list[int]]
               ) -> dict[tuple[int, int], list[cropping.Box]]:
    """Boxes per (unit, probe index), from one padded pass over the union of top images."""
    union = sorted({i for idx in originals.values() for i in idx})
    wanted = {i: [u for u, idx in originals.items() if i in idx] for i in union}
    units = list(originals)
    batch = ctx.activations.batch_size
    boxes: dict[tuple[int, int], list[cropping.Box]] = {}
    for start in range(0, len(union), batch):
        chunk = union[start:start + batch]
        maps = ctx.activations.maps(ctx.layer, units, padded(chunk, batch))
        ctx.count("dnd/map_images", len(chunk))
        for row, index in enumerate(chunk):
            for u in wanted[index]:
                heat = maps[row, units.index(u)]
                boxes[(u, index)] = [] if heat.size <= 1 else cropping.crop_boxes(
                    heat, cfg.crop_size, cfg.heatmap, cfg.max_crops_per_image,
                    cfg.crop_max_iou, cfg.crop_max_full_iou)
    return boxes


def rerank_with_crops(ctx: "Context", cfg: DnDConfig, bank: ImageBank, originals: dict[int, list[int]]
                      ) -> dict[int, dict[str, Any]]:
    """Top ``k`` of originals and crops per unit, by the unit's pooled activation."""
    boxes = crop_boxes(ctx, cfg, originals)
    crops = {u: [(i, b) for i in idx for b in boxes[(u, i)]] for u, idx in originals.items()}
    unique = list(dict.fromkeys(s for lst in crops.values() for s in lst))
    acts = forward_sources(ctx, bank, unique, cfg.pooling)
    row = {s: r for r, s in enumerate(unique)}
    probe_acts = ctx.activations.pooled(ctx.layer).get(cfg.pooling)
    out = {}
    for u, idx in originals.items():
        pool: list[tuple[Source, float]] = [((i, None), float(probe_acts[i, u])) for i in idx]
        pool += [(s, float(acts[row[s], u])) for s in crops[u]]
        order = sorted(range(len(pool)), key=lambda j: (-pool[j][1], j))[:cfg.k]
        out[u] = {"top": [[pool[j][0][0], pool[j][0][1]] for j in order], "n_crops": len(crops[u])}
    return out


def top_images(ctx: "Context", cfg: DnDConfig, units: Sequence[int], bank: ImageBank) -> list[UnitWork]:
    """Step 1 for every unit: the re-ranked top images (crop stage cached per unit)."""
    originals = top_originals(ctx, units, cfg.k, cfg.pooling)
    if not cfg.crops or ctx.is_final_layer:
        return [UnitWork(u, [(i, None) for i in originals[u]]) for u in units]
    keys = {u: crop_key(ctx, cfg, u) for u in units}
    missing = {u: originals[u] for u in units if not ctx.cache.path("dnd_top", keys[u], ".json").exists()}
    fresh = rerank_with_crops(ctx, cfg, bank, missing) if missing else {}
    work = []
    for u in units:
        entry = ctx.cache.json("dnd_top", keys[u], partial(fresh.__getitem__, u))
        top = [(int(i), tuple(b) if b is not None else None) for i, b in entry["top"]]
        work.append(UnitWork(u, top, int(entry["n_crops"])))
    return work


# -- step 2: candidate concepts ------------------------------------------------------------------
def _caption(backend: Any, images: list["Image.Image"]) -> list[str]:
    return list(backend.caption(images))


def add_captions(ctx: "Context", work: list[UnitWork], bank: ImageBank) -> None:
    """Caption the union of all units' top images (streamed: one call per pass)."""
    unique = list(dict.fromkeys(s for w in work for s in w.top))
    captions: list[str] = []
    for part in slices(unique, images_per_pass(ctx)):
        images = [bank.get(s) for s in part]
        captions += counted(ctx, "captioner", "dnd/captioned_images",
                            partial(_caption, images=images))
        del images
    by_source = dict(zip(unique, captions))
    for w in work:
        w.captions = [by_source[s] for s in w.top]


def add_texts(ctx: "Context", cfg: DnDConfig, work: list[UnitWork]) -> None:
    """The texts to summarise: simplified captions (one LLM call per distinct caption) or the
    captions themselves."""
    if not cfg.simplify:
        for w in work:
            w.texts = list(w.captions)
        return
    unique = list(dict.fromkeys(c for w in work for c in w.captions))
    answers = ask(ctx, [cand.simplify_conversation(c, cfg.simplify_prompt) for c in unique])
    simple = {c: a or c for c, a in zip(unique, answers)}
    for w in work:
        w.texts = [simple[c] for c in w.captions]


def ask(ctx: "Context", conversations: list[cand.Messages]) -> list[str]:
    """LLM answers with the text after ':' kept (one batched call)."""
    if not conversations:
        return []
    answers = counted(ctx, "llm", "dnd/llm_calls", lambda b: b.chat(conversations))
    return [cand.after_colon(a) for a in answers]


def add_candidates(ctx: "Context", cfg: DnDConfig, work: list[UnitWork]) -> None:
    """N summaries per unit over seeded shuffles, re-asking once for comma-separated answers."""
    conversations = [cand.summary_conversation(cand.shuffled(w.texts, cfg.seed, w.unit, i),
                                               cfg.summary_prompt, cfg.answer_rules)
                     for w in work for i in range(cfg.n)]
    answers = ask(ctx, conversations)
    merge_at = [j for j, a in enumerate(answers) if cand.needs_merge(a)]
    merged = ask(ctx, [cand.merge_conversation(answers[j], cfg.merge_prompt, cfg.answer_rules)
                       for j in merge_at])
    for j, text in zip(merge_at, merged):
        answers[j] = text
    for pos, w in enumerate(work):
        w.raw = answers[pos * cfg.n:(pos + 1) * cfg.n]
        w.candidates = cand.normalise_candidates(w.raw)
        if not w.candidates:  # the LLM gave nothing usable: the unit is missing, not guessed
            ctx.count("dnd/units_without_candidates")


# -- step 3: best concept selection --------------------------------------------------------------
def generate(ctx: "Context", cfg: DnDConfig, concepts: Sequence[str]) -> dict[str, list["Image.Image"]]:
    """Q images per concept from one text-to-image call (optionally downscaled to 32x32); images
    drawn before come from the call cache."""
    prompts = [cfg.prompt_template.replace("{concept}", c) for c in concepts]
    images = counted(ctx, "text2image", "dnd/generated_images",
                     lambda b: b.generate(prompts, cfg.q, seed=cfg.seed)) if prompts else []
    if cfg.downscale:
        images = [[im.resize((DOWNSCALE_SIZE, DOWNSCALE_SIZE)) for im in ims] for ims in images]
    return dict(zip(concepts, images))


def clip_embeddings(ctx: "Context", images: list["Image.Image"]) -> np.ndarray:
    """CLIP image embeddings (one batched call)."""
    return counted(ctx, "vlm", "dnd/clip_images", lambda b: b.encode_images(images))


def concepts_per_pass(ctx: "Context", cfg: DnDConfig) -> int:
    """Concepts whose ``q`` images one streamed pass holds."""
    return max(1, images_per_pass(ctx) // max(1, cfg.q))


def concept_activations(ctx: "Context", cfg: DnDConfig, concepts: Sequence[str]) -> np.ndarray:
    """Pooled activations (concepts, q, units of the layer) of every concept's synthetic images,
    drawn and pushed through the network a few concepts at a time."""
    parts = []
    for part in slices(concepts, concepts_per_pass(ctx, cfg)):
        synthetic = generate(ctx, cfg, part)
        flat = [im for c in part for im in synthetic[c]]
        del synthetic
        parts.append(forward_pooled(ctx, flat, cfg.pooling).reshape(len(part), cfg.q, -1))
    return np.concatenate(parts)


def describe_work(ctx: "Context", cfg: DnDConfig, work: list[UnitWork], bank: ImageBank
                  ) -> list["Description"]:
    """Score every unit's candidates on one shared pool of synthetic images."""
    from dndbench.describers.base import Description

    work = [w for w in work if w.candidates]  # a unit without any usable text is left out
    if not work:
        return []
    concepts = list(dict.fromkeys(c for w in work for c in w.candidates))
    acts = concept_activations(ctx, cfg, concepts)
    at = {c: j for j, c in enumerate(concepts)}
    pos = {w.unit: selection.positions(np.stack([acts[at[c], :, w.unit] for c in w.candidates]))
           for w in work}
    windows = {w.unit: selection.window_images(pos[w.unit], cfg.top_window) for w in work}
    sims = (window_similarities(ctx, cfg, work, windows, bank)
            if selection.needs_images(cfg.scoring) else {w.unit: [] for w in work})
    out = []
    for w in work:
        order, values = selection.select(cfg.scoring, pos[w.unit], sims[w.unit], cfg.beta)
        labels = [w.candidates[j] for j in order]
        out.append(Description(unit=w.unit, label=labels[0], alternatives=labels[1:3],
                               score=float(values[order[0]]), extras={
                                   "candidates": " | ".join(w.candidates),
                                   "captions": " | ".join(w.captions),
                                   "n_crops": w.n_crops,
                                   **report_extras(cfg, w, order, values)}))
    return out


def report_extras(cfg: DnDConfig, work: UnitWork, order: Sequence[int],
                  values: np.ndarray) -> dict[str, str]:
    """What the report shows of a unit's steps, as JSON strings (extras stay flat):
    ``candidate_scores`` — ``[[candidate, step-3 score], ...]`` best first (the ``scoring``
    value, oriented so that higher is better); ``caption_list`` — the captions of the top images
    in order; ``top_images`` — ``{"size": crop_size, "images": [[probe index, box or null],
    ...]}``, the re-ranked top images (a box is an attention crop in pixels of the
    ``size`` x ``size`` frame the network saw, see :mod:`~dndbench.describers.dnd.cropping`)."""
    import json

    ranked = [[work.candidates[j], round(float(values[j]), 6)] for j in order]
    top = [[int(i), list(box) if box is not None else None] for i, box in work.top]
    return {"candidate_scores": json.dumps(ranked), "caption_list": json.dumps(work.captions),
            "top_images": json.dumps({"size": cfg.crop_size, "images": top})}


def window_similarities(ctx: "Context", cfg: DnDConfig, work: list[UnitWork],
                        windows: dict[int, list[np.ndarray]], bank: ImageBank
                        ) -> dict[int, list[np.ndarray]]:
    """Per unit and candidate: mean cosine of each in-window image with the real top images.

    Only embeddings are kept: real images are encoded a pass at a time, and the in-window
    synthetic images are read back from the call cache a few concepts at a time."""
    real = list(dict.fromkeys(s for w in work for s in w.top))
    real_rows: dict[Source, np.ndarray] = {}
    for part in slices(real, images_per_pass(ctx)):
        real_rows.update(zip(part, clip_embeddings(ctx, [bank.get(s) for s in part])))
    wanted: dict[str, set[int]] = {}
    for w in work:
        for c, idx in zip(w.candidates, windows[w.unit]):
            wanted.setdefault(c, set()).update(int(j) for j in idx)
    gen_rows: dict[tuple[str, int], np.ndarray] = {}
    for part in slices([c for c in wanted if wanted[c]], concepts_per_pass(ctx, cfg)):
        synthetic = generate(ctx, cfg, part)
        keys = [(c, j) for c in part for j in sorted(wanted[c])]
        gen_rows.update(zip(keys, clip_embeddings(ctx, [synthetic[c][j] for c, j in keys])))
    out = {}
    for w in work:
        top = np.stack([real_rows[s] for s in w.top])
        out[w.unit] = [(np.stack([gen_rows[(c, int(j))] for j in idx]) @ top.T).mean(axis=1)
                       if len(idx) else np.zeros(0, np.float32)
                       for c, idx in zip(w.candidates, windows[w.unit])]
    return out


def describe_units(ctx: "Context", cfg: DnDConfig, units: Sequence[int]) -> list["Description"]:
    """All three DnD steps for ``units``, each step batched over the units."""
    if not units:
        return []
    bank = ImageBank(ctx, cfg.crop_size)
    work = top_images(ctx, cfg, units, bank)
    add_captions(ctx, work, bank)
    add_texts(ctx, cfg, work)
    add_candidates(ctx, cfg, work)
    return describe_work(ctx, cfg, work, bank)
