"""DnD's peak memory against the number of units described, with the toy backends.

DnD describes the units of a layer in chunks (``units_per_batch``, default 32) and streams the
images of each step (at most two target-network batches in memory; generated images stay in the
call cache on disk).  This benchmark runs DnD on 100 and 1000 units of one layer and reports the
process's peak resident set size (``ru_maxrss``) next to its size just before DnD starts (model,
probe activations and backends loaded), for the default chunking and for ``units_per_batch=0``
(every unit in one chunk).

Model: ``wide_1x1`` (defined here) — a small random-weight CNN on the toy world's 64 px images
whose ``layer4`` is a 1x1 convolution to 1024 channels (16x16 maps), because ToyNet's widest layer
has only 128 units; its forward pass is cheap, so the run time is DnD's own.  (``--model
wide_random``, ToyNet's architecture widened to 1024 units in ``benchmarks/dnd_calls.py``, gives
the same picture about ten times slower.)
Probe: the toy world (``--probe-size`` images); backends: the toy captioner, the keyword
summariser, the toy renderer and the toy CLIP, on the CPU.  Each configuration runs in its own
process on a fresh copy of a warmed-up cache (probe activations and backend weights, none of
DnD's work), so every figure is a cold DnD run and peaks do not carry over.

    python benchmarks/dnd_memory.py [--sizes 100 1000] [--per-batch 32 0]
        [--out benchmarks/results/dnd_memory.md]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import dnd_calls  # noqa: E402  (benchmarks/ is not a package)

#: units of ``layer4`` of ``wide_1x1``
WIDE_UNITS = 1024


def register_wide_1x1() -> None:
    """Register ``wide_1x1``: conv 3->16 (stride 2), conv 16->64 (stride 2), ``layer4`` = 1x1
    conv 64->1024, global pooling, fc to the toy shapes; seeded random weights, 64 px input."""
    from dndbench.models.base import MODELS
    from dndbench.toyworld.target_model import ToyNetModel

    if "wide_1x1" in MODELS.names():
        return

    @MODELS.register("wide_1x1")
    class Wide1x1(ToyNetModel):
        """A random-weight CNN with a 1024-unit ``layer4`` (1x1 convolution) on 64 px images."""

        def build(self, pretrained: bool) -> Any:
            from collections import OrderedDict

            import torch
            from torch import nn

            from dndbench.toyworld.world import SHAPES

            torch.manual_seed(0)
            return nn.Sequential(OrderedDict({
                "conv1": nn.Conv2d(3, 16, 3, stride=2, padding=1), "relu1": nn.ReLU(),
                "conv2": nn.Conv2d(16, 64, 3, stride=2, padding=1), "relu2": nn.ReLU(),
                "layer4": nn.Conv2d(64, WIDE_UNITS, 1), "relu4": nn.ReLU(),
                "pool": nn.AdaptiveAvgPool2d(1), "flatten": nn.Flatten(),
                "fc": nn.Linear(WIDE_UNITS, len(SHAPES))}))

        def weights_fingerprint(self) -> str:
            return f"wide_1x1/{WIDE_UNITS}/seed0"

        def planted_concepts(self, layer: str) -> dict[int, str]:
            return {}


def rss_mb() -> float:
    """Current resident set size of this process (MB), from /proc."""
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def peak_mb() -> float:
    """Peak resident set size of this process (MB): ``VmHWM`` of /proc/self/status, which
    :func:`reset_peak` can restart; ``ru_maxrss`` (the peak since the process started) where
    /proc has no such line."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak() -> bool:
    """Restart the peak-RSS count at the current size (Linux >= 4.0: ``5`` > clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def child(args: argparse.Namespace) -> dict[str, Any]:
    """One cold DnD run in this process; its memory figures."""
    from dndbench.describers.base import DESCRIBERS

    register_wide_1x1()
    folder = dnd_calls.fresh_cache(args, Path(args.root), f"n{args.units}-b{args.per_batch_one}")
    ctx = dnd_calls.make_context(args, folder, list(range(args.units)), "keyword")
    ctx.activations.pooled(ctx.layer)  # from the copied cache
    for kind in ("captioner", "llm", "text2image", "vlm"):
        ctx.backend(kind)
    describer = DESCRIBERS.create("dnd", units_per_batch=args.per_batch_one)
    last = ctx.model.num_units(ctx.layer) - 1  # outside first:N: loads the backends' weights
    describer.describe(dnd_calls.make_context(args, folder, [last], "keyword"))
    before, peak_before = rss_mb(), peak_mb()
    reset = reset_peak()
    start = time.perf_counter()
    out = describer.describe(ctx)
    seconds = time.perf_counter() - start
    return {"units": args.units, "units_per_batch": args.per_batch_one,
            "rss_before_mb": round(before, 1), "peak_before_mb": round(peak_before, 1),
            "peak_mb": round(peak_mb(), 1), "peak_reset": reset, "seconds": round(seconds, 1),
            "described": len(out),
            "generated": ctx.counters.get("dnd/generated_images", 0),
            "forward": ctx.counters.get("dnd/forward_images", 0)}


def markdown(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    model = {"wide_1x1": f"`wide_1x1` (a random-weight CNN whose `layer4` is a 1x1 convolution "
                         f"to {WIDE_UNITS} channels, 16x16 maps, 64 px input; ToyNet's own widest "
                         f"layer has 128 units)",
             "wide_random": f"`wide_random` (ToyNet's architecture with {dnd_calls.WIDE_UNITS} "
                            f"units in `layer4`, random weights, 64 px input)"}.get(args.model,
                                                                                   args.model)
    lines = ["# DnD peak memory against the number of units", "",
             f"Model {model}, layer `{args.layer}`, units `first:N`; toy-world probe of {args.probe_size} "
             f"images; backends captioner=toy llm=keyword text2image=toy vlm=toy on the CPU; DnD "
             f"defaults otherwise (K=10, crops on, N=5, Q=10). Each row is a cold run in its own "
             f"process. *before DnD*: resident size once the model, the probe's activations and "
             f"the backends are loaded (the layer's last unit described first, so the backends' "
             f"weights are in memory); *peak*: the peak resident size while DnD runs (`VmHWM`, reset just "
             f"before DnD starts); *DnD's growth* = peak - before. Measured "
             f"{time.strftime('%Y-%m-%d')} on {args.machine}.", "",
             "| units | units_per_batch | before DnD (MB) | peak (MB) | DnD's growth (MB) | "
             "generated images | wall s |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        growth = r["peak_mb"] - max(r["rss_before_mb"], 0.0)
        chunk = "0 (all at once)" if r["units_per_batch"] == 0 else str(r["units_per_batch"])
        lines.append(f"| {r['units']} | {chunk} | {r['rss_before_mb']:.0f} | {r['peak_mb']:.0f} | "
                     f"{growth:.0f} | {r['generated']} | {r['seconds']:.0f} |")
    lines += ["", *reading(rows)]
    return "\n".join(lines) + "\n"


def reading(rows: list[dict[str, Any]]) -> list[str]:
    """One line per ``units_per_batch``: DnD's growth at the most units against the fewest."""
    out = []
    for per_batch in dict.fromkeys(r["units_per_batch"] for r in rows):
        runs = sorted((r for r in rows if r["units_per_batch"] == per_batch),
                      key=lambda r: r["units"])
        if len(runs) < 2:
            continue
        lo, hi = runs[0], runs[-1]
        grow = [r["peak_mb"] - r["rss_before_mb"] for r in (lo, hi)]
        out.append(f"- units_per_batch={per_batch}: {hi['units'] / lo['units']:.0f}x the units, "
                   f"DnD's growth {grow[0]:.0f} MB -> {grow[1]:.0f} MB "
                   f"({grow[1] - grow[0]:+.0f} MB).")
    return out


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--per-batch", type=int, nargs="+", default=[32, 0],
                        help="units_per_batch values to compare (0 = all units in one chunk)")
    parser.add_argument("--model", default="wide_1x1",
                        choices=["wide_1x1", "wide_random", "toynet"])
    parser.add_argument("--layer", default="layer4")
    parser.add_argument("--probe-size", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--captioner", default="toy")
    parser.add_argument("--text2image", default="toy")
    parser.add_argument("--vlm", default="toy")
    parser.add_argument("--machine", default="a shared 2-core CPU machine")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "dnd_memory.md")
    # internal: one configuration in a child process
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--root", default="", help=argparse.SUPPRESS)
    parser.add_argument("--units", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--per-batch-one", type=int, default=32, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.child:
        print(json.dumps(child(args)), flush=True)
        return 0
    passthrough = ["--model", args.model, "--layer", args.layer, "--probe-size",
                   str(args.probe_size), "--batch-size", str(args.batch_size), "--captioner",
                   args.captioner, "--text2image", args.text2image, "--vlm", args.vlm]
    rows = []
    register_wide_1x1()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        dnd_calls.seed_backend_weights(root / "base")
        dnd_calls.describe(args, root / "base", [0], 0, "keyword")  # warm-up: activations, weights
        for n in args.sizes:
            for per_batch in args.per_batch:
                out = subprocess.run(
                    [sys.executable, __file__, "--child", "--root", str(root), "--units", str(n),
                     "--per-batch-one", str(per_batch), *passthrough],
                    capture_output=True, text=True, check=True)
                rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
                print(rows[-1], flush=True)
    text = markdown(rows, args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
