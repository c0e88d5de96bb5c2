"""Activation extraction: throughput against a bare forward loop, and peak memory vs probe size.

For each probe-set size, two fresh subprocesses run over the *same* DataLoader batches:

* ``bare``: ``for batch in loader: net(batch)`` — the floor any extraction must pay;
* ``stage``: :meth:`dndbench.activations.Activations.pooled` with an empty cache (hooks, pooling
  to mean/max/min, stacking, atomic cache write).

Each reports wall time and peak resident memory (``ru_maxrss``).  The ratio stage/bare is the
overhead of the activation stage; the memory columns show whether memory grows with the probe
set (it should not, beyond the (images x units x 3) float32 result).

    python benchmarks/activation_throughput.py [--model toynet --probe toyworld --layer layer4]
        [--sizes 1000 4000] [--out benchmarks/results/activation_throughput.md]

Both modes pay for building the probe images (for the toy world they are rendered on the fly),
so the ratio isolates what the stage adds.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def measure(mode: str, model_name: str, probe_name: str, layer: str, size: int,
            batch_size: int) -> dict[str, float]:
    """Run inside a fresh process: time one pass and report peak RSS."""
    import resource

    import torch

    from dndbench.activations import Activations
    from dndbench.cache import Cache
    from dndbench.models.base import MODELS
    from dndbench.probes.base import PROBES

    torch.set_num_threads(max(1, torch.get_num_threads()))
    model = MODELS.create(model_name)
    probe = PROBES.create(probe_name, size=size)
    with tempfile.TemporaryDirectory() as tmp:
        model.cache = probe.cache = Cache(Path.home() / ".cache" / "dndbench")  # trained weights
        acts = Activations(model, probe, Cache(tmp), batch_size=batch_size, progress=False)
        net = acts._network()
        loader = acts._loader()
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        start = time.perf_counter()
        if mode == "bare":
            with torch.no_grad():
                for _, batch in loader:
                    net(batch)
        else:
            acts.pooled(layer)
        seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"seconds": seconds, "peak_rss_mb": peak / 1024, "rss_before_mb": rss_before / 1024,
            "images_per_s": size / seconds}


def run_child(args: argparse.Namespace, mode: str, size: int) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--child", mode, "--model", args.model, "--probe",
           args.probe, "--layer", args.layer, "--batch-size", str(args.batch_size),
           "--sizes", str(size)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="toynet")
    parser.add_argument("--probe", default="toyworld")
    parser.add_argument("--layer", default="layer4")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 4000])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--child", choices=["bare", "stage"], default=None)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.model, args.probe, args.layer, args.sizes[0],
                                 args.batch_size)))
        return
    # warm-up: make sure trained weights exist before timing anything
    run_child(args, "bare", 64)
    lines = [f"# Activation extraction: {args.model}.{args.layer} on {args.probe}", "",
             f"batch size {args.batch_size}; each cell a fresh process; "
             f"measured {time.strftime('%Y-%m-%d %H:%M')}", "",
             "| images | bare forward s | stage s | stage/bare | bare peak RSS MB | "
             "stage peak RSS MB |", "|---:|---:|---:|---:|---:|---:|"]
    for size in args.sizes:
        bare = run_child(args, "bare", size)
        stage = run_child(args, "stage", size)
        lines.append(f"| {size} | {bare['seconds']:.2f} | {stage['seconds']:.2f} | "
                     f"{stage['seconds'] / bare['seconds']:.3f} | {bare['peak_rss_mb']:.0f} | "
                     f"{stage['peak_rss_mb']:.0f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
