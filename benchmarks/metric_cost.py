"""What the activation-based metrics cost: ``simulation`` and ``cosy`` on ToyNet's planted units.

Each planted layer is scored with the oracle descriptions (the planted concepts) on a toy-world
probe split into describe / score halves (the metrics score on the held-out ``score`` half).
Every measurement starts from a fresh cache that holds only trained weights (ToyNet, the toy
CLIP), so the *cold* figures include everything the metric computes for itself: the held-out
half's pooled activations, the vlm's image and text encodings, the generated images and their
pass through the target network.  The *warm* figure repeats the call with a new metric object
in the same cache (all model calls are cache hits; images are still loaded and hashed).
Per-unit counts are cache misses of the cold call; units of a layer share the held-out pass
and the vlm's image encodings, which is why those are given per layer.  A second table gives the
metrics' values for the oracle, a shuffled oracle (each unit gets another planted unit's concept)
and a constant label ("depiction"), i.e. the floor each metric shows on these units.

    python benchmarks/metric_cost.py [--probe-size 2000] [--out benchmarks/results/metric_cost.md]
"""
from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

#: (row label, metric name, options)
SETTINGS: list[tuple[str, str, dict[str, Any]]] = [
    ("simulation", "simulation", {}),
    ("cosy (held-out style, default)", "cosy", {}),
    ("cosy (run's renderer as configured)", "cosy", {"text2image_style": ""}),
]


def make_context(args: argparse.Namespace, cache_dir: Path, layer: str) -> tuple[Any, dict[int, str]]:
    """A toy-world context on ``layer``'s planted units, caching under ``cache_dir`` (ToyNet
    weights come from the user cache)."""
    from dndbench.cache import Cache, default_cache_dir
    from dndbench.config import backend_registries
    from dndbench.context import Context
    from dndbench.models.base import MODELS
    from dndbench.probes.base import PROBES

    model = MODELS.create("toynet")
    model.cache = Cache(default_cache_dir())
    probe = PROBES.create("toyworld", size=args.probe_size, split="describe")
    cache = Cache(cache_dir)
    probe.cache = cache
    planted = model.planted_concepts(layer)
    registries = backend_registries()
    backends = {"vlm": registries["vlm"].config(args.vlm),
                "text2image": registries["text2image"].config(args.text2image)}
    ctx = Context(model=model, probe=probe, layer=model.resolve_layer(layer), units=sorted(planted),
                  cache=cache, batch_size=args.batch_size, progress=False, backends=backends)
    return ctx, planted


def warm_weights(args: argparse.Namespace) -> None:
    """Train (or find) ToyNet and the toy vlm in the user cache and load the vlm."""
    from dndbench.cache import default_cache_dir

    ctx, _ = make_context(args, default_cache_dir(), "layer3")
    ctx.model.ensure_trained()
    vlm = ctx.backend("vlm")
    vlm.encode_texts(["warm-up"])  # loads the vlm once per process, outside the timings


def fresh_cache(root: Path, name: str) -> Path:
    """A new cache folder holding only the toy backends' trained weights (from the user cache)."""
    from dndbench.cache import default_cache_dir

    folder = root / name
    weights = default_cache_dir() / "toy_backends"
    if weights.is_dir():
        shutil.copytree(weights, folder / "toy_backends")
    return folder


def measure(args: argparse.Namespace, root: Path, layer: str, label: str, metric_name: str,
            options: dict[str, Any]) -> dict[str, Any]:
    """Cold and warm cost of one metric setting on one layer's planted units."""
    import pandas as pd

    from dndbench.metrics.base import METRICS

    ctx, planted = make_context(args, fresh_cache(root, f"{layer}-{label}"), layer)
    oracle = pd.DataFrame({"unit": sorted(planted), "label": [planted[u] for u in sorted(planted)]})
    n = len(planted)
    start, cpu = time.perf_counter(), time.process_time()
    scores = METRICS.create(metric_name, **options).score(oracle, ctx)
    cold, cold_cpu = time.perf_counter() - start, time.process_time() - cpu
    counters = dict(ctx.counters)
    held = ctx.heldout()
    probe_forward = held.activations.images_forwarded
    start = time.perf_counter()
    METRICS.create(metric_name, **options).score(oracle, ctx)
    warm = time.perf_counter() - start
    main = "simulation" if metric_name == "simulation" else "cosy_auc"
    value = scores[scores.metric == main]["value"].mean()
    return {
        "layer": layer, "metric": label, "units": n,
        "cold s/unit": cold / n, "cold CPU s/unit": cold_cpu / n, "warm s/unit": warm / n,
        "generated images/unit": counters.get("cosy/generated_images", 0) / n,
        "target-net passes of generated images/unit": counters.get("cosy/forward_images", 0) / n,
        "vlm images (layer)": counters.get("simulation/vlm_images", 0),
        "held-out probe images forwarded (layer)": probe_forward,
        "oracle mean": f"{main} {value:.3f}",
    }


#: the descriptions of the values table, from the planted concepts in unit order
TABLES = {
    "oracle": lambda names: names,
    "shuffled oracle": lambda names: names[1:] + names[:1],
    'constant "depiction"': lambda names: ["depiction"] * len(names),
}
FIGURES = {"simulation": ["simulation"], "cosy": ["cosy_auc", "cosy_mad"]}


def value_rows(args: argparse.Namespace, root: Path, layer: str) -> list[dict[str, Any]]:
    """Mean of each figure for the oracle, the shuffled oracle and a constant label."""
    import pandas as pd

    from dndbench.metrics.base import METRICS

    ctx, planted = make_context(args, fresh_cache(root, f"values-{layer}"), layer)
    units = sorted(planted)
    names = [planted[u] for u in units]
    rows = []
    for metric, figures in FIGURES.items():
        scorer = METRICS.create(metric)
        means: dict[str, list[float]] = {f: [] for f in figures}
        for make in TABLES.values():
            scores = scorer.score(pd.DataFrame({"unit": units, "label": make(names)}), ctx)
            for f in figures:
                means[f].append(float(scores[scores.metric == f]["value"].mean()))
        for f in figures:
            rows.append({"layer": layer, "figure": f, "units": len(units),
                         **{name: value for name, value in zip(TABLES, means[f])}})
    return rows


def table(rows: list[dict[str, Any]]) -> list[str]:
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]) for c in cols]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def markdown(rows: list[dict[str, Any]], values: list[dict[str, Any]],
             args: argparse.Namespace) -> str:
    head = (f"# Cost of the activation-based metrics\n\n"
            f"ToyNet's planted units, oracle descriptions (the planted concepts), toy-world probe "
            f"of {args.probe_size} images with `probe.split=describe` (the metrics score on the "
            f"{args.probe_size // 2} held-out images), vlm={args.vlm}, text2image={args.text2image}; "
            f"metric defaults (simulation: all held-out images, template \"a photo of {{label}}\"; "
            f"cosy: 50 images per description, seed 0). Cold = fresh cache with only trained "
            f"weights, per unit, in wall and CPU seconds (CPU time of all threads; wall time varies "
            f"from run to run on a shared machine); counts are cache misses of the cold call; the "
            f"held-out probe pass and the vlm's image encodings are shared by all units of a layer "
            f"(the pass also by both metrics of a run). Measured on {args.machine}, generated with "
            f"`python benchmarks/metric_cost.py`.\n\n")
    floor = ("\n\n## Values: oracle against the floor\n\nMeans over the layer's planted units "
             "(same probe split and defaults). The shuffled oracle gives each unit the next "
             "planted unit's concept.\n\n")
    return head + "\n".join(table(rows)) + floor + "\n".join(table(values)) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", nargs="+", default=["layer2", "layer3"])
    parser.add_argument("--probe-size", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--text2image", default="toy")
    parser.add_argument("--vlm", default="toy")
    parser.add_argument("--machine", default="a shared 2-core CPU machine")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/metric_cost.md"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)

    rows, values = [], []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        warm_weights(args)
        for layer in args.layers:
            for label, name, options in SETTINGS:
                rows.append(measure(args, root, layer, label, name, options))
                print(rows[-1], flush=True)
        for layer in args.layers:
            values += value_rows(args, root, layer)
            print(values[-3:], flush=True)
    text = markdown(rows, values, args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
