"""DnD's model calls per unit: layer-batched versus one unit at a time, on the toy world.

For 1, 10 and 100 units of a ToyNet layer it counts, per unit, the images captioned, LLM calls,
images generated, images pushed through the target network (maps of top images, crops and
synthetic images; padding excluded) and CLIP image encodings — all cache misses, so every
configuration starts from a fresh cache — and the wall time.  Modes:

* ``batched`` — all units at once (``units_per_batch=0``, the default);
* ``sequential`` — one unit at a time in one cache: the call cache still answers repeated
  prompts / images, but every step runs once per unit;
* ``isolated`` — every unit alone in its own fresh cache: nothing is shared (what the reference
  code spends).

The probe set's pooled activations (computed once, shared by every describer of a run) and the
backends' weights (the toy captioner / CLIP train into the cache) come from a warm-up run and are
copied into each fresh cache; DnD's own cached work is not.  Labels of every mode are checked against the
batched run.

    python benchmarks/dnd_calls.py [--layer layer4] [--sizes 1 10 100]
        [--out benchmarks/results/dnd_calls.md]
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

COUNTERS = {"captions": "dnd/captioned_images", "LLM calls": "dnd/llm_calls",
            "generated": "dnd/generated_images", "CLIP images": "dnd/clip_images"}
REFERENCE = {"captions": "10", "LLM calls": "15-20", "generated": "50",
             "forward images": "10 + crops + 50", "CLIP images": "-"}


def make_context(args: argparse.Namespace, cache_dir: Path, units: list[int]) -> Any:
    """A toy-world context caching under ``cache_dir`` (ToyNet weights from the user cache)."""
    from dndbench.cache import Cache, default_cache_dir
    from dndbench.context import Context
    from dndbench.models.base import MODELS
    from dndbench.probes.base import PROBES
    from dndbench.registry import ComponentConfig
    from dndbench.config import backend_registries

    model = MODELS.create("toynet")
    probe = PROBES.create("toyworld", size=args.probe_size)
    model.cache = probe.cache = Cache(default_cache_dir())
    registries = backend_registries()
    backends: dict[str, ComponentConfig] = {
        kind: registries[kind].config(name) for kind, name in
        (("captioner", args.captioner), ("llm", args.llm), ("text2image", args.text2image),
         ("vlm", args.vlm))}
    return Context(model=model, probe=probe, layer=model.resolve_layer(args.layer), units=units,
                   cache=Cache(cache_dir), batch_size=args.batch_size, progress=False,
                   backends=backends)


#: cache namespaces that hold DnD's own work (never copied into a fresh cache)
DND_WORK = ("calls", "dnd_top", "descriptions")


def fresh_cache(args: argparse.Namespace, root: Path, name: str) -> Path:
    """A new cache folder holding the probe's pooled activations and the backends' weights
    (e.g. the trained toy captioner) from the warm-up run, but none of DnD's work."""
    folder = root / name
    for entry in (root / "base").iterdir():
        if entry.is_dir() and entry.name not in DND_WORK:
            shutil.copytree(entry, folder / entry.name)
    return folder


def describe(args: argparse.Namespace, cache_dir: Path, units: list[int],
             per_batch: int) -> tuple[dict[int, tuple[str, ...]], dict[str, int], float]:
    """Labels by unit, counters and seconds of one DnD run."""
    from dndbench.describers.base import DESCRIBERS

    ctx = make_context(args, cache_dir, units)
    ctx.activations.pooled(ctx.layer)  # loaded from the copied cache entry
    describer = DESCRIBERS.create("dnd", units_per_batch=per_batch)
    start = time.perf_counter()
    out = describer.describe(ctx)
    seconds = time.perf_counter() - start
    labels = {d.unit: (d.label, *d.alternatives) for d in out}
    return labels, dict(ctx.counters), seconds


def run_mode(args: argparse.Namespace, root: Path, mode: str, units: list[int]
             ) -> tuple[dict[int, tuple[str, ...]], dict[str, int], float]:
    """One configuration; ``isolated`` sums fresh single-unit runs."""
    if mode != "isolated":
        return describe(args, fresh_cache(args, root, f"{mode}-{len(units)}"), units,
                        0 if mode == "batched" else 1)
    labels: dict[int, tuple[str, ...]] = {}
    totals: dict[str, int] = {}
    seconds = 0.0
    for u in units:
        lab, counts, sec = describe(args, fresh_cache(args, root, f"iso-{len(units)}-{u}"), [u], 0)
        labels.update(lab)
        seconds += sec
        for k, v in counts.items():
            totals[k] = totals.get(k, 0) + v
        shutil.rmtree(root / f"iso-{len(units)}-{u}")
    return labels, totals, seconds


def row(n: int, mode: str, counts: dict[str, int], seconds: float, same: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"units": n, "mode": mode}
    for col, key in COUNTERS.items():
        if col == "CLIP images":
            out["forward images"] = (counts.get("dnd/forward_images", 0)
                                     + counts.get("dnd/map_images", 0)) / n
        out[col] = counts.get(key, 0) / n
    out["wall s"] = seconds / n
    out["labels = batched"] = "yes" if same else "NO"
    return out


def markdown(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    ref = {"units": "reference code", "mode": "per unit", **REFERENCE, "wall s": "-",
           "labels = batched": "-"}
    for r in rows + [ref]:
        cells = [f"{r[c]:.2f}" if isinstance(r[c], float) else str(r[c]) for c in cols]
        lines.append("| " + " | ".join(cells) + " |")
    head = (f"# DnD model calls per unit\n\nToyNet `{args.layer}`, toy-world probe of "
            f"{args.probe_size} images, backends captioner={args.captioner} llm={args.llm} "
            f"text2image={args.text2image} vlm={args.vlm}; DnD defaults (K=10, crops on, "
            f"simplify on, N=5, Q=10). Every count is per unit and a cache miss; forward images = "
            f"probe images re-run for their maps + crops + synthetic images (batch padding "
            f"excluded). Wall time on {args.machine}.\n\n")
    return head + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layer", default="layer4")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 10, 100])
    parser.add_argument("--modes", nargs="+", default=["batched", "sequential", "isolated"])
    parser.add_argument("--isolated-max", type=int, default=100,
                        help="skip the isolated mode above this many units (its per-unit counts "
                             "do not depend on the number of units)")
    parser.add_argument("--probe-size", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--captioner", default="toy")
    parser.add_argument("--llm", default="keyword")
    parser.add_argument("--text2image", default="toy")
    parser.add_argument("--vlm", default="toy")
    parser.add_argument("--machine", default="a shared 2-core CPU machine")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/dnd_calls.md"))
    args = parser.parse_args(argv)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        describe(args, root / "base", [0], 0)  # warm-up: probe activations, backend weights
        for n in args.sizes:
            units = list(range(n))
            reference = None
            for mode in args.modes:
                if mode == "isolated" and n > args.isolated_max:
                    continue
                labels, counts, seconds = run_mode(args, root, mode, units)
                reference = labels if reference is None else reference
                rows.append(row(n, mode, counts, seconds, labels == reference))
                print(rows[-1], flush=True)
    text = markdown(rows, args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
