"""How the toy MILAN generalises to concepts it never saw: its descriptions of the test network's
planted units, scored against their ground truth (docs/describers/milan.md).

The toy MILAN learns from a network whose planted concepts are disjoint from the test network's
(:mod:`dndbench.toyworld.planted`: the ``milan`` and ``benchmark`` catalogues), so every planted
unit of the test network shows a concept absent from its annotations.  :func:`score` gives,
for a list of described units with their ground truth:

* ``names_concept``: share of descriptions that name the ground truth
  (:func:`dndbench.toyworld.synonyms.names_concept`: synonyms and plurals count, every part of a
  compositional or polysemantic concept is needed), overall, per kind and per layer;
* ``same_category`` (single concepts only): share that name *some* concept of the ground
  truth's category (a colour for a colour unit), the most a captioner can do for a concept
  whose word it never saw.

The same figures for the held-out units of MILAN's own annotation network (unseen units of
seen concepts) are the in-distribution reference.  :func:`encoder_separability` checks the
other half of the story: whether MILAN's frozen exemplar encoder (the annotation network) tells
the test network's concepts apart at all.  Only reported: nothing here feeds training.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from dndbench.toyworld.target_model import ToyNetConfig, ToyNetModel

if TYPE_CHECKING:
    from dndbench.cache import Cache
    from dndbench.describers.milan.annotations import AnnotatedUnit
    from dndbench.describers.milan.model import Milan


@dataclass
class UnseenConfig:
    """The network the generalisation report describes (by default the test network,
    ``model=toynet``) and the probe its exemplars come from (the default job's); its planted
    ``catalogue`` is the one no MILAN annotation may name."""

    seed: int = 0
    catalogue: str = "benchmark"
    train_images: int = ToyNetConfig.train_images
    epochs: int = ToyNetConfig.epochs
    probe_seed: int = 1000
    probe_size: int = 2000


def unseen_model(config: UnseenConfig, cache: "Cache", progress: bool = False) -> ToyNetModel:
    """The toy network whose planted units are described (trained into the cache on first use)."""
    model = ToyNetModel(ToyNetConfig(name="toynet", seed=config.seed,
                                     train_images=config.train_images, epochs=config.epochs,
                                     catalogue=config.catalogue))
    model.cache = cache
    model.progress = progress
    return model


def unseen_units(config: UnseenConfig, k: int, quantile: float, cache: "Cache",
                 progress: bool = False) -> list["AnnotatedUnit"]:
    """Exemplars of every recorded planted unit of the test network, with its ground truth as
    the one reference description (``extras["kind"]``: single, compositional, ...)."""
    from dndbench.context import Context
    from dndbench.describers.milan.annotations import AnnotatedUnit
    from dndbench.describers.milan.exemplars import compute_exemplars
    from dndbench.toyworld.probe_set import ToyWorldConfig, ToyWorldProbe
    from dndbench.toyworld.world_report import concept_kind

    model = unseen_model(config, cache, progress)
    probe = ToyWorldProbe(ToyWorldConfig(name="toyworld", seed=config.probe_seed,
                                         size=config.probe_size))
    probe.cache = cache
    out: list[AnnotatedUnit] = []
    for layer in sorted(model.meta().get("planted", {})):
        planted = model.planted_concepts(layer)
        if not planted:
            continue
        ctx = Context(model=model, probe=probe, layer=model.resolve_layer(layer),
                      units=sorted(planted), cache=cache, progress=progress)
        ex = compute_exemplars(ctx, k=k, quantile=quantile)
        for row, unit in enumerate(ex.units):
            concept = planted[unit]
            out.append(AnnotatedUnit(layer, unit, ex.images[row], ex.masks[row], [concept],
                                     concept, {"kind": concept_kind(concept)}))
    return out


def describe_units(milan: "Milan", units: Sequence["AnnotatedUnit"], strategy: str = "rerank",
                   beam_size: int = 50, max_length: int = 15,
                   temperature: float = 0.2) -> list[str]:
    """The toy MILAN's description of each unit (the describer's decoding defaults)."""
    import torch

    from dndbench.describers.milan.annotations import featurize
    from dndbench.describers.milan.decoding import decode

    if not units:
        return []
    milan.eval()
    with torch.no_grad():
        feats = featurize(milan, units)
        decoded = decode(milan.decoder, milan.lm, feats, milan.vocab, strategy, beam_size,
                         max_length, temperature)
    return [d.texts[0] if d.texts else "" for d in decoded]


def _same_category(text: str, concept: str) -> bool | None:
    """Whether ``text`` names a concept of ``concept``'s category (None: no single concept)."""
    from dndbench.toyworld.synonyms import mentions
    from dndbench.toyworld.world import CATEGORIES

    category = next((c for c, names in CATEGORIES.items() if concept in names), None)
    if category is None:
        return None
    return any(mentions(text, name) for name in CATEGORIES[category])


def _rate(flags: Sequence[bool]) -> float | None:
    return float(np.mean(flags)) if len(flags) else None


def score(examples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Figures of described units, each ``{layer, unit, concept, prediction[, kind]}`` (see the
    module docstring); the examples come back with ``names`` and ``same_category`` added."""
    from dndbench.toyworld.synonyms import names_concept
    from dndbench.toyworld.world_report import concept_kind

    rows = []
    for ex in examples:
        concept, text = str(ex["concept"]), str(ex["prediction"])
        rows.append({**ex, "kind": ex.get("kind") or concept_kind(concept),
                     "names": bool(names_concept(text, concept)),
                     "same_category": _same_category(text, concept)})
    by_kind: dict[str, list[bool]] = defaultdict(list)
    by_layer: dict[str, list[bool]] = defaultdict(list)
    for r in rows:
        by_kind[r["kind"]].append(r["names"])
        by_layer[r["layer"]].append(r["names"])
    single = [bool(r["same_category"]) for r in rows if r["same_category"] is not None]
    return {
        "units": len(rows),
        "names_concept": _rate([r["names"] for r in rows]),
        "by_kind": {k: {"units": len(v), "names_concept": _rate(v)} for k, v in sorted(by_kind.items())},
        "by_layer": {k: {"units": len(v), "names_concept": _rate(v)} for k, v in sorted(by_layer.items())},
        "single_units": len(single),
        "same_category": _rate(single),
        "top_predictions": Counter(r["prediction"] for r in rows).most_common(10),
        "examples": rows,
    }


def _ridge_accuracy(x: np.ndarray, labels: np.ndarray, ridge: float = 1.0) -> float:
    """Held-out accuracy of a ridge-regression classifier (one-hot targets) fit on the even
    rows of standardised features ``x`` and tested on the odd rows."""
    classes, y = np.unique(labels, return_inverse=True)
    train, test = np.arange(0, len(y), 2), np.arange(1, len(y), 2)
    mean, std = x[train].mean(0), x[train].std(0) + 1e-6
    z = (x - mean) / std
    a = np.c_[z, np.ones(len(z))]
    targets = np.eye(len(classes))[y]
    w = np.linalg.solve(a[train].T @ a[train] + ridge * np.eye(a.shape[1]), a[train].T @ targets[train])
    return float(((a[test] @ w).argmax(1) == y[test]).mean())


def encoder_separability(milan: "Milan", catalogues: dict[str, str], probe_seed: int = 1000,
                         images: int = 600) -> dict[str, Any]:
    """Whether the frozen exemplar encoder tells concepts apart: per category (shape, colour and
    texture of the main object, features masked to it; the scene, masked to the background),
    the held-out accuracy of a linear probe on the encoder's features among the single
    concepts of each catalogue (``{"test": "benchmark", "training": "milan"}``), with chance."""
    import torch

    from dndbench.describers.milan.annotations import catalogue_parts
    from dndbench.toyworld.render import generate
    from dndbench.toyworld.world import CATEGORIES

    renders = [generate(probe_seed, i, milan.encoder.spec.input_size) for i in range(images)]
    pictures = torch.from_numpy(np.stack([r[0].transpose(2, 0, 1) for r in renders])).float() / 255
    main = torch.from_numpy(np.stack([r[2] == 1 for r in renders])[:, None]).float()
    feats: dict[str, np.ndarray] = {}
    with torch.no_grad():
        for name, mask in (("object", main), ("background", 1 - main)):
            feats[name] = torch.cat([milan.encoder(pictures[s:s + 100], mask[s:s + 100])
                                     for s in range(0, images, 100)]).numpy()
    values = {"shape": [r[1].main.shape for r in renders],
              "colour": [r[1].main.colour for r in renders],
              "texture": [r[1].main.texture for r in renders],
              "scene": [r[1].scene for r in renders]}
    out: dict[str, Any] = {"images": images, "probe_seed": probe_seed}
    for role, catalogue in catalogues.items():
        parts = set(catalogue_parts(catalogue))
        figures = {}
        for category, labels in values.items():
            keep = np.array([v in parts and v in CATEGORIES[category] for v in labels])
            names = sorted({v for v, k in zip(labels, keep) if k})
            if len(names) < 2 or keep.sum() < 20:
                continue
            x = feats["background" if category == "scene" else "object"][keep]
            figures[category] = {"concepts": names, "images": int(keep.sum()),
                                 "accuracy": _ridge_accuracy(x, np.asarray(labels)[keep]),
                                 "chance": 1 / len(names)}
        out[role] = figures
    return out


def generalisation_report(milan: "Milan", held_out: dict[str, Any], config: UnseenConfig,
                          k: int, quantile: float, cache: "Cache", progress: bool = False,
                          annotation_catalogue: str = "milan") -> dict[str, Any]:
    """The toy MILAN on the test network's planted units (``unseen_concepts``) against the
    held-out units of its own annotation network (``seen_concepts``: ``held_out`` is
    :func:`dndbench.describers.milan.training.evaluate`'s report on them)."""
    from dataclasses import asdict

    from dndbench.describers.milan.annotations import catalogue_parts, named_parts

    units = unseen_units(config, k, quantile, cache, progress)
    predictions = describe_units(milan, units)
    unseen = score([{"layer": u.layer, "unit": u.unit, "concept": u.concept, "prediction": p,
                     "kind": u.extras.get("kind", "")} for u, p in zip(units, predictions)])
    seen = score([ex for ex in held_out.get("examples", []) if ex.get("concept")])
    parts = catalogue_parts(config.catalogue)
    return {
        "test_network": {**asdict(config),
                         "fingerprint": unseen_model(config, cache).weights_fingerprint()},
        "vocabulary_names_a_test_concept": sorted(
            {p for word in milan.vocab.words for p in named_parts(word, parts)}),
        "seen_concepts": seen,
        "unseen_concepts": unseen,
        "encoder": encoder_separability(milan, {"test": config.catalogue,
                                                "training": annotation_catalogue},
                                        config.probe_seed),
    }


def format_generalisation(report: dict[str, Any]) -> str:
    """A readable summary of :func:`generalisation_report`."""
    def line(name: str, figures: dict[str, Any]) -> str:
        def pct(x: Any) -> str:
            return "n/a" if x is None else f"{100 * x:.1f} %"

        kinds = ", ".join(f"{k} {pct(v['names_concept'])} of {v['units']}"
                          for k, v in figures.get("by_kind", {}).items())
        return (f"{name}: names the concept in {pct(figures.get('names_concept'))} of "
                f"{figures.get('units', 0)} units ({kinds}); single concepts named in their "
                f"category: {pct(figures.get('same_category'))}")

    lines = [line("held-out units of the annotation network (seen concepts)",
                  report["seen_concepts"]),
             line("test network's planted units (unseen concepts)", report["unseen_concepts"])]
    for role, figures in report.get("encoder", {}).items():
        if isinstance(figures, dict) and figures:
            lines.append(f"encoder linear probe, {role} concepts: " + ", ".join(
                f"{c} {f['accuracy']:.2f} (chance {f['chance']:.2f})" for c, f in figures.items()))
    top = report["unseen_concepts"].get("top_predictions", [])
    if top:
        lines.append("  most frequent descriptions of unseen concepts: "
                     + ", ".join(f"{text!r} x{n}" for text, n in top[:5]))
    return "\n".join(lines)
