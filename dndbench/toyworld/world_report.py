"""``python -m dndbench toyworld-report``: the toy world's measured facts.

What a ranking on the toy world rests on, measured rather than assumed:

* **ToyNet**: its recorded test accuracy (training report, ToyNet's own held-out stream) and its
  accuracy on the probe images measured here;
* **planted units**: every unit the network records as planted, as ``{layer, unit, concept,
  kind, auc, top10, gate}``.  ``auc`` is the ROC-AUC of the unit's pooled activation (spatial
  mean, the describers' default; ``auc_mean`` and ``auc_max`` give both poolings) for "the
  image contains the concept" (any visible object, the distractor included) over the probe images
  (a probe seed ToyNet was not trained on); ``top10`` is how many of its 10 most activating
  probe images contain it; ``gate`` passes when ``auc >= 0.95`` and ``top10 >= 9``, the
  selectivity a unit needs to count as ground truth.  Containment is read from the probe's
  annotations (:func:`dndbench.toyworld.render.annotate`): a concept string is alternatives
  of parts (:func:`dndbench.toyworld.synonyms.concept_parts`: "red circle" needs one object
  that is red and a circle, "star or water" either); parts that are no world concept
  (``large object``, ``outlined``, ``zigzag``, ``two objects``) are read from the image's spec
  (:func:`dndbench.toyworld.render.shows`);
* **fc units**: the same figures for each class unit against "the main object is this class";
  units that fail the gate are *flagged* (their top images disagree with their class), with
  the classes of their top-10 images;
* **backends**: each captioner's and VLM's accuracy per slot on probe images, on DnD-style
  crops (the main object's box, cut from the image enlarged to 375 px and resized, as DnD's
  attention crops are) and on background patches (an object-free square: only the scene is
  visible).  A captioner's caption is read back into slots (:func:`caption_slots`); a VLM's
  slot answer is its most similar query text of the slot: the bare concept word of the
  category, as CLIP-Dissect queries it, or one of a word pair for outline, size and a second
  object (:func:`dndbench.toyworld.captions.slot_queries`);
* **summariser candidates**: the number of distinct candidate concepts DnD's step 2 gets per
  unit of a reference layer (``fc``) with each summariser (``keyword``, ``proposer``); DnD runs
  through the describer registry (the toy world is a lower layer than the describers and
  imports none of them).

``--json PATH`` writes the report as JSON.  The default sizes (1000 probe images, 300 backend
images) run in a few minutes on two CPU cores.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from dndbench.cache import Cache

# the gate is training's (one definition): the report re-measures it on the probe
from dndbench.toyworld.train_toynet import GATE_MIN_AUC as MIN_AUC
from dndbench.toyworld.train_toynet import GATE_MIN_TOP10 as MIN_TOP10
from dndbench.toyworld.train_toynet import passes_gate, unit_figures

if TYPE_CHECKING:
    from PIL import Image

    from dndbench.probes.base import Annotation
    from dndbench.registry import ComponentConfig
    from dndbench.toyworld.probe_set import ToyWorldProbe
    from dndbench.toyworld.target_model import ToyNetModel
    from dndbench.toyworld.world import SceneSpec

#: the selectivity gate of a ground-truth unit
#: the caption slots a report scores, per view
FULL_SLOTS = ("shape", "colour", "texture", "scene", "outlined", "size", "distractor",
              "distractor_shape", "distractor_colour")
CROP_SLOTS = ("shape", "colour", "texture", "scene", "outlined", "size")
PATCH_SLOTS = ("scene", "object")
#: DnD's crop resolution
CROP_SIZE = 375


@dataclass
class ReportOptions:
    """What the report measures and on how many images."""

    probe_seed: int = 1000
    probe_size: int = 1000
    backend_images: int = 300
    pooling: str = "mean"
    reference_layer: str = "fc"
    summarisers: tuple[str, ...] = ("keyword", "proposer")
    #: options of the DnD run that counts candidates (``q`` only affects its step 3)
    dnd_options: dict[str, Any] = field(default_factory=lambda: {"q": 2})


# -- planted units ------------------------------------------------------------------------------
def planted_entries(meta: dict[str, Any]) -> list[dict[str, Any]]:
    """The planted units a ToyNet ``meta.json`` records, as ``{layer, unit, concept, kind,
    recorded}``: every unit trained as a candidate (its training report), ``recorded`` when it
    passed the gate at training time and so counts as ground truth (``meta["planted"]``).

    A unit's entry in ``planted`` is a concept string (``"yellow"``) or a dict with ``concept``
    (or ``name``) and optionally ``kind``; the kind is inferred from the string otherwise."""
    recorded: dict[tuple[str, int], dict[str, Any]] = {}
    for layer, units in sorted(meta.get("planted", {}).items()):
        for unit, value in sorted(units.items(), key=lambda kv: int(kv[0])):
            if isinstance(value, dict):
                concept = str(value.get("concept") or value.get("name"))
                kind = str(value.get("kind") or concept_kind(concept))
            else:
                concept, kind = str(value), concept_kind(str(value))
            recorded[(layer, int(unit))] = {"layer": layer, "unit": int(unit), "concept": concept,
                                            "kind": kind, "recorded": True}
    for u in meta.get("report", {}).get("planted_units", []):
        key = (str(u["layer"]), int(u["unit"]))
        if key not in recorded:
            recorded[key] = {"layer": key[0], "unit": key[1], "concept": str(u["concept"]),
                             "kind": concept_kind(str(u["concept"])), "recorded": False}
    return [recorded[k] for k in sorted(recorded, key=lambda k: (k[0], k[1]))]


def _world_names() -> set[str]:
    from dndbench.toyworld.world import all_concepts

    return {c.name for c in all_concepts()}


def concept_kind(concept: str) -> str:
    """``single``, ``compositional`` (one alternative of several parts), ``polysemantic``
    (several alternatives) or ``open-vocabulary`` (a part that is no world concept)."""
    from dndbench.toyworld.synonyms import concept_parts

    parts = concept_parts(concept)
    if any(p not in _world_names() for alternative in parts for p in alternative):
        return "open-vocabulary"
    if len(parts) > 1:
        return "polysemantic"
    return "compositional" if len(parts[0]) > 1 else "single"


def contains(concept: str, annotation: "Annotation", spec: "SceneSpec | None" = None,
             mask: np.ndarray | None = None) -> bool | None:
    """Whether an image shows ``concept``: from its spec and object mask when given
    (:func:`dndbench.toyworld.render.shows`, every kind of concept), otherwise from its
    annotation (world concepts only; None when a part is no world concept)."""
    from dndbench.toyworld.synonyms import concept_parts
    from dndbench.toyworld.world import concept_category, concept_id

    if spec is not None and mask is not None:
        from dndbench.toyworld.render import shows

        return shows(spec, mask, concept)
    names = _world_names()
    for alternative in concept_parts(concept):
        if any(part not in names for part in alternative):
            return None
    for alternative in concept_parts(concept):
        pixels: np.ndarray | None = None
        holds = True
        for part in alternative:
            category = concept_category(part)
            if category in annotation.pixel:
                hit = annotation.pixel[category][0] == concept_id(part)
                pixels = hit if pixels is None else pixels & hit
            else:
                holds = holds and concept_id(part) in annotation.image_level.get(category, [])
        if holds and (pixels is None or bool(pixels.any())):
            return True
    return False


def _context(model: "ToyNetModel", probe: "ToyWorldProbe", layer: str, cache: Cache,
             backends: dict[str, "ComponentConfig"] | None = None) -> Any:
    from dndbench.context import Context

    return Context(model=model, probe=probe, layer=model.resolve_layer(layer),
                   units=list(range(model.num_units(layer))), cache=cache, progress=False,
                   backends=dict(backends or {}))


def planted_report(model: "ToyNetModel", probe: "ToyWorldProbe", cache: Cache,
                   pooling: str = "mean") -> list[dict[str, Any]]:
    """Every planted unit's figures and gate on the probe."""
    entries = planted_entries(model.meta())
    annotations = [probe.annotation(i) for i in range(len(probe))]
    renders = [probe._render(i) for i in range(len(probe))]
    pooled: dict[str, Any] = {}
    out = []
    for entry in entries:
        layer = entry["layer"]
        if layer not in pooled:
            pooled[layer] = _context(model, probe, layer, cache).activations.pooled(layer)
        found = [contains(entry["concept"], a, spec, mask)
                 for a, (_, spec, mask) in zip(annotations, renders)]
        if any(f is None for f in found):
            figures: dict[str, Any] = {"auc": float("nan"), "top10": 0, "positives": 0}
            others = {f"auc_{other}": float("nan") for other in ("mean", "max")}
        else:
            present = np.array(found, bool)
            figures = unit_figures(pooled[layer].get(pooling)[:, entry["unit"]], present)
            others = {f"auc_{other}": unit_figures(pooled[layer].get(other)[:, entry["unit"]],
                                                   present)["auc"] for other in ("mean", "max")}
        out.append({**entry, **figures, **others,
                    "gate": passes_gate(figures["auc"], figures["top10"])})
    return out


def fc_report(model: "ToyNetModel", probe: "ToyWorldProbe", cache: Cache) -> dict[str, Any]:
    """Probe accuracy and, per class unit of ``fc``, its figures for "the main object is this
    class"; ``flagged`` lists the units that fail the gate."""
    classes = model.class_names()
    logits = _context(model, probe, model.final_layer, cache).activations.pooled(
        model.final_layer).get("mean")
    truth = np.array([classes.index(probe.spec(i).main.shape) for i in range(len(probe))])
    units = []
    for unit, name in enumerate(classes):
        figures = unit_figures(logits[:, unit], truth == unit)
        top = np.argsort(-logits[:, unit], kind="stable")[:10]
        shown: dict[str, int] = {}
        for i in top:
            shown[classes[truth[i]]] = shown.get(classes[truth[i]], 0) + 1
        gate = passes_gate(figures["auc"], figures["top10"])
        units.append({"layer": model.final_layer, "unit": unit, "concept": name, **figures,
                      "gate": gate, "top10_classes": dict(sorted(shown.items(),
                                                                 key=lambda kv: -kv[1]))})
    return {"probe_accuracy": float((logits.argmax(1) == truth).mean()), "units": units,
            "flagged": [u for u in units if not u["gate"]]}


# -- backends -------------------------------------------------------------------------------------
def _first_mention(text: str, names: Sequence[str]) -> str | None:
    """The name among ``names`` that ``text`` mentions first (by any of its synonyms; a name
    that is no world concept, such as ``zigzag``, by its open-concept synonyms)."""
    from dndbench.toyworld.synonyms import concept_synonyms, normalise_text, open_synonyms

    lowered, best = normalise_text(text), None
    world = _world_names()
    for name in names:
        for form in concept_synonyms(name) if name in world else open_synonyms(name):
            words = normalise_text(form).split()
            match = re.search(r"\b" + r"\s+".join(map(re.escape, words)) + r"\b", lowered)
            if match and (best is None or match.start() < best[0]
                          or (match.start() == best[0] and len(form) > best[2])):
                best = (match.start(), name, len(form))
    return best[1] if best else None


_DISTRACTOR = re.compile(r"\s+and\s+(?:a|an)\s+small\s+|\s+and\s+")


def caption_slots(text: str) -> dict[str, str | None]:
    """A caption read back into the toy captioner's slots (:data:`dndbench.toyworld.captions.
    SLOT_VALUES`; main object first, then the distractor after "and (a small)"); a slot the
    caption does not name is None.  ``object`` is absent when no shape (nor "object", "shape")
    is named; an outlined object's texture is plain unless the caption names one; ``outlined``,
    ``size`` (large) and ``distractor`` (a second shape or "two objects") are read with
    :func:`dndbench.toyworld.synonyms.names_concept`."""
    from dndbench.toyworld.captions import SLOT_VALUES
    from dndbench.toyworld.synonyms import names_concept

    parts = _DISTRACTOR.split(text, maxsplit=1)
    main, rest = parts[0], (parts[1] if len(parts) == 2 else "")
    out: dict[str, str | None] = {
        slot: _first_mention(main, SLOT_VALUES[slot])
        for slot in ("shape", "colour", "texture", "scene")}
    if out["scene"] is None and rest:
        out["scene"] = _first_mention(rest, SLOT_VALUES["scene"])
    named_object = out["shape"] is not None or bool(re.search(r"\b(object|shape)s?\b", main))
    out["object"] = "present" if named_object else "absent"
    out["outlined"] = "yes" if names_concept(main, "outlined") else "no"
    if out["outlined"] == "yes" and out["texture"] is None:
        out["texture"] = "plain"
    out["size"] = "large" if names_concept(main, "large object") else "ordinary"
    other = _first_mention(rest, SLOT_VALUES["shape"]) if rest else None
    two = other is not None or names_concept(text, "two objects")
    out["distractor"] = "present" if two else "absent"
    out["distractor_shape"] = other
    out["distractor_colour"] = _first_mention(rest, SLOT_VALUES["colour"]) if rest else None
    return out


def true_slots(spec: "SceneSpec", mask: np.ndarray | None = None) -> dict[str, str | None]:
    """The slots of a spec (:func:`dndbench.toyworld.captions.spec_slots`: distractor slots None
    when it has none, or with the object ``mask``, when its distractor is not visible)."""
    from dndbench.toyworld.captions import spec_slots

    return spec_slots(spec, mask)


def main_object_box(mask: np.ndarray, margin: float = 0.15) -> tuple[int, int, int, int] | None:
    """``(x0, y0, x1, y1)`` around the main object's visible pixels, ``margin`` of the side
    added on each edge (None when it is not visible)."""
    ys, xs = np.nonzero(mask == 1)
    if not len(ys):
        return None
    side, pad = mask.shape[0], int(round(margin * mask.shape[0]))
    return (max(0, int(xs.min()) - pad), max(0, int(ys.min()) - pad),
            min(side, int(xs.max()) + 1 + pad), min(side, int(ys.max()) + 1 + pad))


def background_box(mask: np.ndarray, sides: Sequence[int] = (32, 28, 24, 20, 16)
                   ) -> tuple[int, int, int, int] | None:
    """The largest object-free square (first found, row by row) of one of ``sides`` pixels
    of a 64-pixel image (scaled for other sizes), or None."""
    scale = mask.shape[0] / 64
    occupied = np.pad((mask > 0).astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    for side64 in sides:
        side = max(1, int(round(side64 * scale)))
        n = mask.shape[0] - side + 1
        if n < 1:
            continue
        sums = (occupied[side:, side:] - occupied[:-side, side:] - occupied[side:, :-side]
                + occupied[:-side, :-side])[:n, :n]
        free = np.argwhere(sums == 0)
        if len(free):
            y, x = (int(v) for v in free[0])
            return (x, y, x + side, y + side)
    return None


def dnd_crop(image: "Image.Image", box: tuple[int, int, int, int]) -> "Image.Image":
    """``box`` (image pixels) as DnD cuts a crop: from the image enlarged to 375 x 375, then
    resized to 375 x 375 (PIL's default filter); the image's spec tag is kept."""
    from dndbench.geometry import crop_region, full_region

    scale = CROP_SIZE / image.size[0]
    frame = crop_region(image.convert("RGB"), full_region(*image.size), (CROP_SIZE, CROP_SIZE))
    scaled = tuple(int(round(v * scale)) for v in box)
    return frame.crop(scaled).resize((CROP_SIZE, CROP_SIZE))  # type: ignore[arg-type]


def backend_views(probe: "ToyWorldProbe", count: int
                  ) -> dict[str, tuple[list["Image.Image"], list[dict[str, str | None]]]]:
    """Images and true slots of the three views: ``full``, ``crop``, ``background`` (a
    patch's slots: its scene and no object)."""
    from dndbench.toyworld.captions import patch_slots

    views: dict[str, tuple[list[Any], list[dict[str, str | None]]]] = {
        "full": ([], []), "crop": ([], []), "background": ([], [])}
    for i in range(min(count, len(probe))):
        image = probe.image(i)
        _, spec, mask = probe._render(i)
        truth = true_slots(spec, mask)
        views["full"][0].append(image)
        views["full"][1].append(truth)
        box = main_object_box(mask)
        if box is not None:
            views["crop"][0].append(dnd_crop(image, box))
            views["crop"][1].append(truth)
        patch = background_box(mask)
        if patch is not None:
            views["background"][0].append(dnd_crop(image, patch))
            views["background"][1].append(patch_slots(spec.scene))
    return views


def _slot_accuracy(predicted: list[dict[str, str | None]], truth: list[dict[str, str | None]],
                   slots: Sequence[str]) -> dict[str, float]:
    out = {}
    for slot in slots:
        pairs = [(p.get(slot), t[slot]) for p, t in zip(predicted, truth) if t[slot] is not None]
        out[slot] = float(np.mean([p == t for p, t in pairs])) if pairs else float("nan")
    return out


VIEW_SLOTS = {"full": FULL_SLOTS, "crop": CROP_SLOTS, "background": PATCH_SLOTS}


def captioner_accuracy(captioner: Any, views: dict[str, Any]) -> dict[str, Any]:
    """Per view: the number of images and each slot's accuracy of the captions."""
    out = {}
    for view, (images, truth) in views.items():
        captions = captioner.caption(images) if images else []
        out[view] = {"images": len(images), "slots": _slot_accuracy(
            [caption_slots(c) for c in captions], truth, VIEW_SLOTS[view])}
    return out


def vlm_accuracy(vlm: Any, views: dict[str, Any]) -> dict[str, Any]:
    """Per view: each slot's top-1 accuracy among its query texts
    (:func:`dndbench.toyworld.captions.slot_queries`: each category's bare concept words, as
    CLIP-Dissect queries them; a word pair such as "filled" / "outlined" per binary slot)."""
    from dndbench.toyworld.captions import SLOT_VALUES, slot_queries

    queries = slot_queries()
    words = [w for texts in queries.values() for w in texts]
    text = vlm.encode_texts(words)
    out = {}
    for view, (images, truth) in views.items():
        slots = [s for s in VIEW_SLOTS[view] if s in queries]
        if not images:
            out[view] = {"images": 0, "slots": {s: float("nan") for s in slots}}
            continue
        sims = vlm.encode_images(images) @ text.T
        predicted: list[dict[str, str | None]] = [{} for _ in images]
        start = 0
        for slot, texts in queries.items():
            best = sims[:, start:start + len(texts)].argmax(1)
            for row, b in zip(predicted, best):
                row[slot] = SLOT_VALUES[slot][int(b)]
            start += len(texts)
        out[view] = {"images": len(images), "slots": _slot_accuracy(predicted, truth, slots)}
    return out


# -- summariser candidates ------------------------------------------------------------------------
def candidate_counts(model: "ToyNetModel", probe: "ToyWorldProbe", cache: Cache, layer: str,
                     backends: dict[str, "ComponentConfig"], summarisers: Sequence[str],
                     dnd_options: dict[str, Any]) -> dict[str, Any]:
    """Per summariser: DnD's distinct candidates per unit of ``layer`` (its mean, min, max and
    the per-unit counts); summarisers that are not registered are skipped with a note."""
    from dndbench.registry import registry_for

    llms, describers = registry_for("llm"), registry_for("describer")
    out: dict[str, Any] = {}
    for name in summarisers:
        if name not in llms.names():
            out[name] = {"skipped": f"llm={name} is not registered"}
            continue
        ctx = _context(model, probe, layer, cache,
                       {**backends, "llm": llms.config(name, device="cpu")})
        dnd = describers.create(describers.config("dnd", **dnd_options))
        counts = {int(d.unit): len([c for c in str(d.extras.get("candidates", "")).split(" | ")
                                    if c.strip()]) for d in dnd.describe(ctx)}
        values = list(counts.values())
        n = int(dnd_options.get("n", getattr(describers.config("dnd"), "n", 0)))
        out[name] = {"n": n, "units": len(values),
                     "mean": float(np.mean(values)) if values else float("nan"),
                     "min": min(values, default=0), "max": max(values, default=0),
                     "one_candidate_units": sum(v <= 1 for v in values), "per_unit": counts}
    return out


# -- the whole report -----------------------------------------------------------------------------
def default_backends(names: Sequence[str] = ("toy",)) -> dict[str, dict[str, "ComponentConfig"]]:
    """``{"captioner": {name: config}, "vlm": {...}}`` for the named backends (CPU)."""
    from dndbench.registry import registry_for

    return {kind: {name: registry_for(kind).config(name, device="cpu") for name in names
                   if name in registry_for(kind).names()} for kind in ("captioner", "vlm")}


def build_report(model: "ToyNetModel", cache: Cache, options: ReportOptions | None = None,
                 backends: dict[str, dict[str, "ComponentConfig"]] | None = None,
                 candidates: bool = True, log: Callable[[str], None] | None = None
                 ) -> dict[str, Any]:
    """Measure everything of the module docstring; ``backends`` as :func:`default_backends`
    gives (the first captioner and VLM also serve DnD's candidate count)."""
    from dndbench.backends.call_cache import services
    from dndbench.registry import registry_for
    from dndbench.toyworld.probe_set import ToyWorldConfig, ToyWorldProbe

    o = options or ReportOptions()
    say = log or (lambda text: None)
    backends = backends if backends is not None else default_backends()
    started = time.perf_counter()
    probe = ToyWorldProbe(ToyWorldConfig(name="toyworld", seed=o.probe_seed, size=o.probe_size))
    probe.cache = cache
    probe._KEEP = o.probe_size  # every image is revisited (annotations, views)
    meta = model.meta()
    report: dict[str, Any] = {
        "model": {"name": "toynet", "weights": model.weights_fingerprint(),
                  "shipped": "shipped" in meta,
                  "test_accuracy": meta.get("report", {}).get("test_accuracy"),
                  "test_images": meta.get("report", {}).get("test_images"),
                  "flagged_fc_units": meta.get("flagged_fc_units")},
        "probe": {"seed": o.probe_seed, "size": o.probe_size, "pooling": o.pooling},
        "gate": {"min_auc": MIN_AUC, "min_top10": MIN_TOP10},
    }
    say("planted units")
    planted = planted_report(model, probe, cache, o.pooling)
    report["planted_units"] = planted
    report["planted_summary"] = {"units": len(planted), "pass": sum(u["gate"] for u in planted),
                                 "recorded": sum(bool(u.get("recorded", True)) for u in planted),
                                 "by_kind": _gate_tally(planted, "kind"),
                                 "by_layer": _gate_tally(planted, "layer")}
    say("fc units")
    fc = fc_report(model, probe, cache)
    report["model"]["probe_accuracy"] = fc["probe_accuracy"]
    report["fc_units"] = fc["units"]
    report["flagged_fc_units"] = [{k: u[k] for k in ("unit", "concept", "auc", "top10",
                                                     "top10_classes")} for u in fc["flagged"]]
    say("backends")
    views = backend_views(probe, o.backend_images)
    report["backends"] = {"images": {v: len(images) for v, (images, _) in views.items()}}
    for kind, measure in (("captioner", captioner_accuracy), ("vlm", vlm_accuracy)):
        report["backends"][kind] = {}
        for name, config in backends.get(kind, {}).items():
            backend = registry_for(kind).create(config, services=services(cache))
            report["backends"][kind][name] = measure(backend, views)
    if candidates:
        say("summariser candidates")
        chosen = {kind: next(iter(backends.get(kind, {}).values()), None)
                  for kind in ("captioner", "vlm")}
        dnd_backends = {k: v for k, v in chosen.items() if v is not None}
        dnd_backends["text2image"] = registry_for("text2image").config("toy", device="cpu")
        report["summariser_candidates"] = {
            "layer": o.reference_layer, **candidate_counts(
                model, probe, cache, o.reference_layer, dnd_backends, o.summarisers,
                o.dnd_options)}
    report["seconds"] = round(time.perf_counter() - started, 1)
    return report


def _gate_tally(units: list[dict[str, Any]], key: str) -> dict[str, dict[str, int]]:
    """Units and gate passes per value of ``key`` (``kind`` or ``layer``)."""
    out: dict[str, dict[str, int]] = {}
    for u in units:
        entry = out.setdefault(u[key], {"units": 0, "pass": 0})
        entry["units"] += 1
        entry["pass"] += int(u["gate"])
    return out


def _f(value: Any, spec: str = ".3f") -> str:
    return "—" if value is None or value != value else format(float(value), spec)


def format_report(report: dict[str, Any]) -> str:
    """The report as readable text."""
    m, p = report["model"], report["probe"]
    lines = [f"ToyNet {m['weights']} ({'shipped weights' if m['shipped'] else 'trained here'}): "
             f"test accuracy {_f(m['test_accuracy'])} on {m['test_images']} held-out images, "
             f"{_f(m.get('probe_accuracy'))} on the probe",
             f"probe: seed {p['seed']}, {p['size']} images, {p['pooling']}-pooled activations; "
             f"gate: AUC >= {report['gate']['min_auc']} and >= {report['gate']['min_top10']} "
             f"of the top 10",
             "", "planted units:",
             f"  {'layer':7} {'unit':>4}  {'concept':18} {'kind':15} {'AUC':>6} {'top10':>5}  gate"
             f"  recorded  (AUC mean / max pooled)"]
    for u in report["planted_units"]:
        lines.append(f"  {u['layer']:7} {u['unit']:>4}  {u['concept']:18} {u['kind']:15} "
                     f"{_f(u['auc']):>6} {u['top10']:>5}  {'pass' if u['gate'] else 'FAIL'}"
                     f"  {'yes' if u.get('recorded', True) else 'no ':8}"
                     f"  ({_f(u.get('auc_mean'))} / {_f(u.get('auc_max'))})")
    s = report["planted_summary"]
    lines.append(f"  {s['pass']} of {s['units']} pass on the probe ({s.get('recorded')} recorded "
                 f"as ground truth at training time); by layer "
                 + ", ".join(f"{k} {v['pass']}/{v['units']}" for k, v in s["by_layer"].items())
                 + "; by kind " + ", ".join(f"{k} {v['pass']}/{v['units']}"
                                           for k, v in s["by_kind"].items()))
    lines += ["", "fc units (class = the main object's shape):"]
    for u in report["fc_units"]:
        top = ", ".join(f"{k} {v}" for k, v in u["top10_classes"].items())
        lines.append(f"  {u['unit']:>3} {u['concept']:10} AUC {_f(u['auc'])} top10 {u['top10']:>2}"
                     f"  {'' if u['gate'] else 'FLAGGED '}(top 10: {top})")
    lines.append(f"  flagged: {len(report['flagged_fc_units'])} of {len(report['fc_units'])}")
    at_training = report["model"].get("flagged_fc_units")
    if at_training is not None:
        lines.append(f"  flagged in the network's metadata (held-out stream, at training): "
                     f"{len(at_training)}" + (f" (units {at_training})" if at_training else ""))
    b = report["backends"]
    lines += ["", "backends (accuracy per slot; images: "
              + ", ".join(f"{k} {v}" for k, v in b["images"].items()) + "):"]
    for kind in ("captioner", "vlm"):
        for name, views in b.get(kind, {}).items():
            for view, entry in views.items():
                slots = ", ".join(f"{k} {_f(v)}" for k, v in entry["slots"].items())
                lines.append(f"  {kind}={name:9} {view:10} {slots}")
    cands = report.get("summariser_candidates")
    if cands:
        lines += ["", f"distinct DnD candidates per unit ({cands['layer']}):"]
        for name, entry in cands.items():
            if name == "layer":
                continue
            if "skipped" in entry:
                lines.append(f"  llm={name}: {entry['skipped']}")
                continue
            lines.append(f"  llm={name:9} mean {entry['mean']:.2f} of n={entry['n']} (min "
                         f"{entry['min']}, max {entry['max']}; {entry['one_candidate_units']} of "
                         f"{entry['units']} units with a single candidate)")
    lines.append(f"\n({report['seconds']} s)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m dndbench toyworld-report [--json PATH] [options]``."""
    from pathlib import Path

    from dndbench.registry import registry_for

    parser = argparse.ArgumentParser(prog="python -m dndbench toyworld-report",
                                     description="Measure the toy world's facts: ToyNet accuracy, "
                                                 "planted-unit gates, backend accuracy, "
                                                 "summariser candidates.")
    parser.add_argument("--json", type=Path, default=None, help="also write the report here")
    parser.add_argument("--cache", type=Path, default=None,
                        help="cache folder (default: $DNDBENCH_CACHE or ~/.cache/dndbench)")
    parser.add_argument("--seed", type=int, default=0, help="ToyNet's seed (model.seed)")
    parser.add_argument("--probe-seed", type=int, default=ReportOptions.probe_seed)
    parser.add_argument("--probe-size", type=int, default=ReportOptions.probe_size)
    parser.add_argument("--backend-images", type=int, default=ReportOptions.backend_images)
    parser.add_argument("--backends", default="toy",
                        help="comma-separated captioner/vlm names to measure (e.g. "
                             "toy,toy_weak,oracle; default: toy)")
    parser.add_argument("--summarisers", default=",".join(ReportOptions.summarisers),
                        help="comma-separated llm names whose DnD candidates are counted")
    parser.add_argument("--no-candidates", action="store_true",
                        help="skip the DnD candidate count (the slowest part)")
    args = parser.parse_args(argv)
    cache = Cache(args.cache)
    models = registry_for("model")
    model = models.create(models.config("toynet", seed=args.seed))
    model.cache = cache
    model.progress = False
    options = ReportOptions(probe_seed=args.probe_seed, probe_size=args.probe_size,
                            backend_images=args.backend_images,
                            summarisers=tuple(s for s in args.summarisers.split(",") if s))
    names = [n.strip() for n in args.backends.split(",") if n.strip()]
    report = build_report(model, cache, options, default_backends(names),
                          candidates=not args.no_candidates,
                          log=lambda text: print(f"measuring {text} ...", file=sys.stderr,
                                                 flush=True))
    print(format_report(report))
    if args.json is not None:
        from dndbench.cache import atomic_path

        with atomic_path(args.json) as tmp:
            tmp.write_text(json.dumps(report, indent=2, default=str) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
