"""Layer-batched execution of DnD: each step runs once for all units being described.

Work is shared without changing any unit's result:

* an image in several units' top sets is captioned once (the captioner gets the union);
* identical LLM conversations are answered once (one ``chat`` call per step, call cache);
* a concept that is a candidate for several units is drawn once (same prompt and seed);
* all synthetic images (and crops) go through the target network in one pass that records
  every unit of the layer.

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

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

import numpy as np

from dndbench.cache import stable_hash
from dndbench.describers.dnd import candidates as cand
from dndbench.describers.dnd import cropping, selection

if TYPE_CHECKING:
    from PIL import Image

    from dndbench.context import Context
    from dndbench.describers.base import Description

#: a top image: (probe index, crop box or None for the whole image)
Source = tuple[int, Optional[cropping.Box]]
#: bump when the cropping / forward caches would hold different values
STAGE_VERSION = "1"
DOWNSCALE_SIZE = 32


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
def padded(items: list[Any], size: int) -> list[Any]:
    """``items`` with its last element repeated up to a multiple of ``size``."""
    return items + items[-1:] * ((-len(items)) % max(1, size)) if items else items


def counted(ctx: "Context", kind: str, counter: str, call: Callable[[Any], Any]) -> Any:
    """Run ``call(backend)`` and add the backend's new cache misses to ``ctx.counters``."""
    backend = ctx.backend(kind)
    before = backend.computed
    out = call(backend)
    ctx.count(counter, backend.computed - before)
    return out


class ImageBank:
    """Probe images and crops of them, each built once per run."""

    def __init__(self, ctx: "Context", crop_size: int) -> None:
        self.ctx, self.crop_size = ctx, crop_size
        self._memo: dict[Source, "Image.Image"] = {}

    def get(self, source: Source) -> "Image.Image":
        if source not in self._memo:
            index, box = source
            image = self.ctx.probe.image(index).convert("RGB")
            self._memo[source] = image if box is None else cropping.crop(image, box, self.crop_size)
        return self._memo[source]


def forward_pooled(ctx: "Context", images: Sequence["Image.Image"], pooling: str) -> np.ndarray:
    """Pooled activations (len(images), units of the layer) of extra images, cached per image."""
    from dndbench.backends.base import image_key
    from dndbench.backends.call_cache import CallCache, call_key

    if not images:
        return np.zeros((0, 0), np.float32)
    store = CallCache.for_cache(ctx.cache)
    layer = ctx.model.resolve_layer(ctx.layer)
    params = [STAGE_VERSION, ctx.model.weights_fingerprint(), layer, pooling]
    keys = [call_key("dnd:pooled", ctx.model.config.name, params, image_key(im)) for im in images]
    found = store.get_many(set(keys))
    todo: dict[str, "Image.Image"] = {}
    for key, image in zip(keys, images):
        if key not in found:
            todo.setdefault(key, image)
    if todo:
        batch = ctx.activations.batch_size
        batch_images = padded(list(todo.values()), batch)
        values = ctx.activations.pooled_for_images(layer, batch_images, pooling)[:len(todo)]
        new = {k: v.astype(np.float32) for k, v in zip(todo, values)}
        store.put_many(new)
        found.update(new)
        ctx.count("dnd/forward_images", len(todo))
        ctx.count("dnd/forward_padding", len(batch_images) - len(todo))
    return np.stack([found[k] for k in keys])


# -- step 1: top images and attention crops ------------------------------------------------------
def top_originals(ctx: "Context", units: Sequence[int], k: int, pooling: str) -> dict[int, list[int]]:
    """The ``k`` most activating probe images of each unit (ties: lower index first)."""
    acts = ctx.activations.pooled(ctx.layer).get(pooling)
    return {u: [int(i) for i in np.argsort(-acts[:, u], kind="stable")[:k]] for u in units}


def crop_key(ctx: "Context", cfg: Any, unit: int) -> str:
    """Cache key of one unit's cropping result."""
    return stable_hash("dnd-top", STAGE_VERSION, ctx.model.config.name,
                       ctx.model.weights_fingerprint(), ctx.probe.config.name,
                       ctx.probe.fingerprint(), ctx.model.resolve_layer(ctx.layer), unit, cfg.k,
                       cfg.pooling, cfg.crop_size, cfg.heatmap, cfg.max_crops_per_image,
                       cfg.crop_max_iou, cfg.crop_max_full_iou)


def crop_boxes(ctx: "Context", cfg: Any, originals: dict[int, list[int]]
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


def rerank_with_crops(ctx: "Context", cfg: Any, bank: ImageBank, originals: dict[int, list[int]]
                      ) -> dict[int, dict[str, Any]]:
    """Top ``k`` of originals and crops per unit, by the unit's pooled activation."""
    boxes = crop_boxes(ctx, cfg, originals)
    crops = {u: [(i, b) for i in idx for b in boxes[(u, i)]] for u, idx in originals.items()}
    unique = list(dict.fromkeys(s for lst in crops.values() for s in lst))
    acts = forward_pooled(ctx, [bank.get(s) for s in unique], cfg.pooling)
    row = {s: r for r, s in enumerate(unique)}
    probe_acts = ctx.activations.pooled(ctx.layer).get(cfg.pooling)
    out = {}
    for u, idx in originals.items():
        pool: list[tuple[Source, float]] = [((i, None), float(probe_acts[i, u])) for i in idx]
        pool += [(s, float(acts[row[s], u])) for s in crops[u]]
        order = sorted(range(len(pool)), key=lambda j: (-pool[j][1], j))[:cfg.k]
        out[u] = {"top": [[pool[j][0][0], pool[j][0][1]] for j in order], "n_crops": len(crops[u])}
    return out


def top_images(ctx: "Context", cfg: Any, units: Sequence[int], bank: ImageBank) -> list[UnitWork]:
    """Step 1 for every unit: the re-ranked top images (crop stage cached per unit)."""
    originals = top_originals(ctx, units, cfg.k, cfg.pooling)
    if not cfg.crops or ctx.is_final_layer:
        return [UnitWork(u, [(i, None) for i in originals[u]]) for u in units]
    keys = {u: crop_key(ctx, cfg, u) for u in units}
    missing = {u: originals[u] for u in units if not ctx.cache.path("dnd_top", keys[u], ".json").exists()}
    fresh = rerank_with_crops(ctx, cfg, bank, missing) if missing else {}
    work = []
    for u in units:
        entry = ctx.cache.json("dnd_top", keys[u], lambda u=u: fresh[u])
        top = [(int(i), tuple(b) if b is not None else None) for i, b in entry["top"]]
        work.append(UnitWork(u, top, int(entry["n_crops"])))  # type: ignore[arg-type]
    return work


# -- step 2: candidate concepts ------------------------------------------------------------------
def add_captions(ctx: "Context", work: list[UnitWork], bank: ImageBank) -> None:
    """Caption the union of all units' top images in one call."""
    unique = list(dict.fromkeys(s for w in work for s in w.top))
    captions = counted(ctx, "captioner", "dnd/captioned_images",
                       lambda b: b.caption([bank.get(s) for s in unique]))
    by_source = dict(zip(unique, captions))
    for w in work:
        w.captions = [by_source[s] for s in w.top]


def add_texts(ctx: "Context", cfg: Any, work: list[UnitWork]) -> None:
    """The texts to summarise: simplified captions (one LLM call per distinct caption) or the
    captions themselves."""
    if not cfg.simplify:
        for w in work:
            w.texts = list(w.captions)
        return
    unique = list(dict.fromkeys(c for w in work for c in w.captions))
    answers = ask(ctx, [cand.simplify_conversation(c) for c in unique])
    simple = {c: a or c for c, a in zip(unique, answers)}
    for w in work:
        w.texts = [simple[c] for c in w.captions]


def ask(ctx: "Context", conversations: list[cand.Messages]) -> list[str]:
    """LLM answers with the text after ':' kept (one batched call)."""
    if not conversations:
        return []
    answers = counted(ctx, "llm", "dnd/llm_calls", lambda b: b.chat(conversations))
    return [cand.after_colon(a) for a in answers]


def add_candidates(ctx: "Context", cfg: Any, work: list[UnitWork]) -> None:
    """N summaries per unit over seeded shuffles, re-asking once for comma-separated answers."""
    conversations = [cand.summary_conversation(cand.shuffled(w.texts, cfg.seed, w.unit, i))
                     for w in work for i in range(cfg.n)]
    answers = ask(ctx, conversations)
    merge_at = [j for j, a in enumerate(answers) if cand.needs_merge(a)]
    merged = ask(ctx, [cand.merge_conversation(answers[j]) for j in merge_at])
    for j, text in zip(merge_at, merged):
        answers[j] = text
    for pos, w in enumerate(work):
        w.raw = answers[pos * cfg.n:(pos + 1) * cfg.n]
        w.candidates = cand.normalise_candidates(w.raw)
        if not w.candidates:  # the LLM gave nothing usable: fall back to the texts
            ctx.count("dnd/fallback_units")
            w.candidates = cand.normalise_candidates(w.texts)[:max(1, cfg.n)]


# -- step 3: best concept selection --------------------------------------------------------------
def generate(ctx: "Context", cfg: Any, concepts: list[str]) -> dict[str, list["Image.Image"]]:
    """Q images per concept from one text-to-image call (optionally downscaled to 32x32)."""
    prompts = [cfg.prompt_template.replace("{concept}", c) for c in concepts]
    images = counted(ctx, "text2image", "dnd/generated_images",
                     lambda b: b.generate(prompts, cfg.q, seed=cfg.seed)) if prompts else []
    if cfg.downscale:
        images = [[im.resize((DOWNSCALE_SIZE, DOWNSCALE_SIZE)) for im in ims] for ims in images]
    return dict(zip(concepts, images))


def clip_embeddings(ctx: "Context", images: list["Image.Image"]) -> np.ndarray:
    """CLIP image embeddings (one batched call)."""
    return counted(ctx, "vlm", "dnd/clip_images", lambda b: b.encode_images(images))


def describe_work(ctx: "Context", cfg: Any, work: list[UnitWork], bank: ImageBank
                  ) -> list["Description"]:
    """Score every unit's candidates on one shared pool of synthetic images."""
    from dndbench.describers.base import Description

    work = [w for w in work if w.candidates]  # a unit without any usable text is left out
    if not work:
        return []
    concepts = list(dict.fromkeys(c for w in work for c in w.candidates))
    synthetic = generate(ctx, cfg, concepts)
    flat = [im for c in concepts for im in synthetic[c]]
    acts = forward_pooled(ctx, flat, cfg.pooling).reshape(len(concepts), cfg.q, -1) if flat else None
    at = {c: j for j, c in enumerate(concepts)}
    pos = {w.unit: selection.positions(np.stack([acts[at[c], :, w.unit] for c in w.candidates]))
           for w in work}
    windows = {w.unit: selection.window_images(pos[w.unit], cfg.top_window) for w in work}
    sims = (window_similarities(ctx, work, synthetic, windows, bank)
            if selection.needs_images(cfg.scoring) else {w.unit: [] for w in work})
    out = []
    for w in work:
        order, values = selection.select(cfg.scoring, pos[w.unit], sims[w.unit], cfg.beta)
        labels = [w.candidates[j] for j in order]
        out.append(Description(unit=w.unit, label=labels[0], alternatives=labels[1:3],
                               score=float(values[order[0]]), extras={
                                   "candidates": " | ".join(w.candidates),
                                   "captions": " | ".join(w.captions),
                                   "n_crops": w.n_crops}))
    return out


def window_similarities(ctx: "Context", work: list[UnitWork],
                        synthetic: dict[str, list["Image.Image"]],
                        windows: dict[int, list[np.ndarray]], bank: ImageBank
                        ) -> dict[int, list[np.ndarray]]:
    """Per unit and candidate: mean cosine of each in-window image with the real top images."""
    needed: dict[Any, "Image.Image"] = {}
    for w in work:
        for s in w.top:
            needed.setdefault(("real", s), bank.get(s))
        for c, idx in zip(w.candidates, windows[w.unit]):
            for j in idx:
                needed.setdefault(("gen", c, int(j)), synthetic[c][int(j)])
    keys = list(needed)
    emb = clip_embeddings(ctx, list(needed.values())) if keys else np.zeros((0, 0))
    row = {k: r for r, k in enumerate(keys)}
    out = {}
    for w in work:
        real = emb[[row[("real", s)] for s in w.top]]
        out[w.unit] = [emb[[row[("gen", c, int(j))] for j in idx]] @ real.T if len(idx) else
                       np.zeros((0, len(w.top))) for c, idx in zip(w.candidates, windows[w.unit])]
        out[w.unit] = [m.mean(axis=1) for m in out[w.unit]]
    return out


def describe_units(ctx: "Context", cfg: Any, units: Sequence[int]) -> list["Description"]:
    """All three DnD steps for ``units``, each step batched over the units."""
    if not units:
        return []
    bank = ImageBank(ctx, cfg.crop_size)
    work = top_images(ctx, cfg, units, bank)
    add_captions(ctx, work, bank)
    add_texts(ctx, cfg, work)
    add_candidates(ctx, cfg, work)
    return describe_work(ctx, cfg, work, bank)
