"""DnD's model calls per unit: layer-batched versus one unit at a time, on the toy world.

For 1, 10 and 100 units of a ToyNet layer (or up to 1000 units of a wider random network) it
counts, per unit, the images captioned, LLM calls, images generated, images pushed through the
target network (maps of top images, crops and synthetic images; padding excluded), CLIP image
encodings and distinct candidate concepts — all cache misses, so every configuration starts
from a fresh cache — and the wall time, for each summariser given (``--llms``):

* ``keyword`` — the deterministic baseline: N summarise calls of a unit usually give one
  candidate, which flatters the sharing figures (few distinct concepts to draw);
* ``proposer`` — the proposing summariser: N calls give up to N distinct candidates, as a real
  LLM's do.

Models (``--model``): ``toynet`` (trained; its widest layer, ``layer4``, has 128 units) or
``wide_random`` (ToyNet's architecture with 1024 units in ``layer4``, random weights, 64 px
input; defined here, for call counting only).  Modes:

* ``batched`` — all units at once (``units_per_batch=0``; the describer's default is chunks of 32);
* ``sequential`` — one unit at a time in one cache: the call cache still answers repeated
  prompts / images, but every step runs once per unit;
* ``isolated`` — every unit alone in its own fresh cache: nothing is shared (what the reference
  code spends).

The probe set's pooled activations (computed once, shared by every describer of a run) and the
backends' weights (the toy captioner / CLIP train into the cache, or come from the user cache)
come from a warm-up run and are copied into each fresh cache; DnD's own cached work is not.
Labels of every mode are checked against the first mode's run.

    python benchmarks/dnd_calls.py [--model toynet] [--layer layer4] [--sizes 1 10 100]
        [--llms keyword proposer] [--modes batched isolated] [--append]
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
             "forward images": "10 + crops + 50", "CLIP images": "-", "candidates": "5"}
#: units in ``layer4`` of the ``wide_random`` model
WIDE_UNITS = 1024


def register_wide_random() -> None:
    """Register ``wide_random``: ToyNet's architecture, ``layer4`` widened to 1024 units, seeded
    random weights (no training), the toy world's 64 px preprocessing."""
    from dndbench.models.base import MODELS
    from dndbench.toyworld.target_model import ToyNetModel

    if "wide_random" in MODELS.names():
        return

    @MODELS.register("wide_random")
    class WideRandomToyNet(ToyNetModel):
        """ToyNet with widths (16, 32, 64, 1024) and random weights (seed 0)."""

        def build(self, pretrained: bool) -> Any:
            import torch

            from dndbench.toyworld.network import ToyNet
            from dndbench.toyworld.world import SHAPES

            torch.manual_seed(0)
            return ToyNet(len(SHAPES), (16, 32, 64, WIDE_UNITS), 1)

        def weights_fingerprint(self) -> str:
            return f"wide_random/{WIDE_UNITS}/seed0"

        def planted_concepts(self, layer: str) -> dict[int, str]:
            return {}


def make_context(args: argparse.Namespace, cache_dir: Path, units: list[int], llm: str) -> Any:
    """A toy-world context caching under ``cache_dir`` (ToyNet weights from the user cache)."""
    from dndbench.cache import Cache, default_cache_dir
    from dndbench.config import backend_registries
    from dndbench.context import Context
    from dndbench.models.base import MODELS
    from dndbench.probes.base import PROBES
    from dndbench.registry import ComponentConfig

    register_wide_random()
    model = MODELS.create(args.model)
    probe = PROBES.create("toyworld", size=args.probe_size)
    model.cache = probe.cache = Cache(default_cache_dir())
    registries = backend_registries()
    backends: dict[str, ComponentConfig] = {
        kind: registries[kind].config(name) for kind, name in
        (("captioner", args.captioner), ("llm", llm), ("text2image", args.text2image),
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


Run = tuple[dict[int, tuple[str, ...]], dict[str, int], float]


def seed_backend_weights(folder: Path) -> None:
    """Copy toy backend weights trained earlier into the user cache (keyed by their training
    config, so only matching ones are used) into ``folder``, sparing the warm-up's training."""
    from dndbench.cache import default_cache_dir

    trained = default_cache_dir() / "toy_backends"
    if trained.is_dir():
        shutil.copytree(trained, folder / "toy_backends", dirs_exist_ok=True)


def describe(args: argparse.Namespace, cache_dir: Path, units: list[int], per_batch: int,
             llm: str) -> Run:
    """Labels by unit, counters (plus ``candidates``: distinct candidates summed over units) and
    seconds of one DnD run."""
    from dndbench.describers.base import DESCRIBERS

    ctx = make_context(args, cache_dir, units, llm)
    ctx.activations.pooled(ctx.layer)  # loaded from the copied cache entry
    describer = DESCRIBERS.create("dnd", units_per_batch=per_batch)
    start = time.perf_counter()
    out = describer.describe(ctx)
    seconds = time.perf_counter() - start
    labels = {d.unit: (d.label, *d.alternatives) for d in out}
    counts = dict(ctx.counters)
    counts["candidates"] = sum(len(str(d.extras["candidates"]).split(" | ")) for d in out)
    return labels, counts, seconds


def run_mode(args: argparse.Namespace, root: Path, mode: str, units: list[int], llm: str) -> Run:
    """One configuration; ``isolated`` sums fresh single-unit runs."""
    if mode != "isolated":
        folder = fresh_cache(args, root, f"{llm}-{mode}-{len(units)}")
        try:
            return describe(args, folder, units, 0 if mode == "batched" else 1, llm)
        finally:
            shutil.rmtree(folder)
    labels: dict[int, tuple[str, ...]] = {}
    totals: dict[str, int] = {}
    seconds = 0.0
    for u in units:
        folder = fresh_cache(args, root, f"{llm}-iso-{len(units)}-{u}")
        lab, counts, sec = describe(args, folder, [u], 0, llm)
        labels.update(lab)
        seconds += sec
        for k, v in counts.items():
            totals[k] = totals.get(k, 0) + v
        shutil.rmtree(folder)
    return labels, totals, seconds


def row(n: int, llm: str, mode: str, counts: dict[str, int], seconds: float,
        same: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"units": n, "llm": llm, "mode": mode}
    for col, key in COUNTERS.items():
        if col == "CLIP images":
            out["forward images"] = (counts.get("dnd/forward_images", 0)
                                     + counts.get("dnd/map_images", 0)) / n
        out[col] = counts.get(key, 0) / n
    out["candidates"] = counts.get("candidates", 0) / n
    out["wall s"] = seconds / n
    out["labels = batched"] = "yes" if same else "NO"
    return out


MODEL_TEXT = {"toynet": "ToyNet (trained)",
              "wide_random": f"wide random ToyNet ({WIDE_UNITS} units in layer4, random weights, "
                             f"64 px)"}


def markdown(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    """One section: the table of ``rows`` with the released code's figures as its last row."""
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    ref = {"units": "released code", "llm": "GPT", "mode": "per unit", **REFERENCE,
           "wall s": "-", "labels = batched": "-"}
    for r in rows + [ref]:
        cells = [f"{r[c]:.2f}" if isinstance(r[c], float) else str(r[c]) for c in cols]
        lines.append("| " + " | ".join(cells) + " |")
    head = (f"## {MODEL_TEXT.get(args.model, args.model)} `{args.layer}`\n\nToy-world probe of "
            f"{args.probe_size} images, backends captioner={args.captioner} "
            f"text2image={args.text2image} vlm={args.vlm}, summariser as listed; DnD defaults "
            f"(K=10, crops on, simplify on, N=5, Q=10). Every count is per unit and a cache miss; "
            f"forward images = probe images re-run for their maps + crops + synthetic images "
            f"(batch padding excluded); candidates = distinct candidate concepts. Wall time on "
            f"{args.machine}, measured {time.strftime('%Y-%m-%d %H:%M')}.\n\n")
    return head + "\n".join(lines) + "\n"


TITLE = "# DnD model calls per unit\n\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="toynet", choices=["toynet", "wide_random"])
    parser.add_argument("--layer", default="layer4")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 10, 100])
    parser.add_argument("--modes", nargs="+", default=["batched", "sequential", "isolated"])
    parser.add_argument("--isolated-max", type=int, default=100,
                        help="skip the isolated mode above this many units (its per-unit counts "
                             "do not depend on the number of units)")
    parser.add_argument("--probe-size", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--captioner", default="toy")
    parser.add_argument("--llms", nargs="+", default=["keyword", "proposer"])
    parser.add_argument("--text2image", default="toy")
    parser.add_argument("--vlm", default="toy")
    parser.add_argument("--machine", default="a shared 2-core CPU machine")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/dnd_calls.md"))
    parser.add_argument("--append", action="store_true",
                        help="add this run's section to --out instead of replacing the file")
    args = parser.parse_args(argv)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        seed_backend_weights(root / "base")
        describe(args, root / "base", [0], 0, args.llms[0])  # warm-up: activations, weights
        for n in args.sizes:
            units = list(range(n))
            for llm in args.llms:
                reference = None
                for mode in args.modes:
                    if mode == "isolated" and n > args.isolated_max:
                        continue
                    labels, counts, seconds = run_mode(args, root, mode, units, llm)
                    reference = labels if reference is None else reference
                    rows.append(row(n, llm, mode, counts, seconds, labels == reference))
                    print(rows[-1], flush=True)
    text = markdown(rows, args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.append and args.out.exists():
        text = args.out.read_text().rstrip("\n") + "\n\n" + text
    else:
        text = TITLE + text
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
