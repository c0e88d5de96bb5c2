"""Activation extraction: throughput against a bare forward loop, and peak memory vs probe size.

For each probe-set size, fresh subprocesses run over the *same* DataLoader batches:

* ``bare``: ``for batch in loader: net(batch)`` — the floor any extraction must pay;
* ``stage``: :meth:`dndbench.activations.Activations.pooled` with an empty cache (hooks, pooling
  to mean/max/min, the result array, atomic cache write);
* ``before`` (with ``--before PATH``): the same stage from another copy of the package (a
  checkout of an earlier version), to compare versions within one run.

Each reports wall time, CPU time and peak resident memory (``ru_maxrss``).  On a shared machine a
single pair of runs is dominated by the other processes' load (the same pass was seen to take
from 28 to 92 s), so the modes are interleaved ``--repeats`` times in alternating order (bare,
stage, stage, bare, ...) and each ratio compares the *fastest* run of each mode (the run least
disturbed by others) — plus the ratio of summed CPU times, which the load inflates less.
``--threads 1`` (torch's intra-op threads) removes the thread-oversubscription noise further.

    python benchmarks/activation_throughput.py [--model toynet --probe toyworld --layer layer4]
        [--sizes 1000 4000] [--repeats 2] [--before /path/to/old/package/root]
        [--out benchmarks/results/activation_throughput.md]

Both modes pay for building the probe images (for the toy world they are rendered on the fly),
so the ratio isolates what the stage adds.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def measure(mode: str, model_name: str, probe_name: str, layer: str, size: int,
            batch_size: int, threads: int = 0) -> dict[str, Any]:
    """Run inside a fresh process: time one pass and report peak RSS."""
    import resource

    import torch

    import dndbench
    from dndbench.activations import Activations
    from dndbench.cache import Cache
    from dndbench.models.base import MODELS
    from dndbench.probes.base import PROBES

    torch.set_num_threads(threads if threads > 0 else max(1, torch.get_num_threads()))
    model = MODELS.create(model_name)
    probe = PROBES.create(probe_name, size=size)
    with tempfile.TemporaryDirectory() as tmp:
        model.cache = probe.cache = Cache(Path.home() / ".cache" / "dndbench")  # trained weights
        acts = Activations(model, probe, Cache(tmp), batch_size=batch_size, progress=False)
        net = acts._network()
        loader = acts._loader()
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        start, cpu = time.perf_counter(), time.process_time()
        if mode == "bare":
            with torch.no_grad():
                for _, batch in loader:
                    net(batch)
        else:
            acts.pooled(layer)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"seconds": seconds, "cpu_seconds": cpu_seconds, "peak_rss_mb": peak / 1024,
            "rss_before_mb": rss_before / 1024, "images_per_s": size / seconds,
            "package": str(Path(dndbench.__file__).parent)}


def run_child(args: argparse.Namespace, mode: str, size: int) -> dict[str, Any]:
    env = dict(os.environ)
    child = "stage" if mode == "before" else mode
    if mode == "before":
        env["PYTHONPATH"] = os.pathsep.join([str(args.before), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, __file__, "--child", child, "--model", args.model, "--probe",
           args.probe, "--layer", args.layer, "--batch-size", str(args.batch_size),
           "--sizes", str(size), "--threads", str(args.threads)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env,
                         cwd=tempfile.gettempdir() if mode == "before" else None)
    return json.loads(out.stdout.strip().splitlines()[-1])


def interleaved(args: argparse.Namespace, size: int,
                modes: list[str]) -> dict[str, list[dict[str, Any]]]:
    """``args.repeats`` runs of every mode, in alternating order."""
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
    for r in range(args.repeats):
        for mode in (modes if r % 2 == 0 else modes[::-1]):
            runs[mode].append(run_child(args, mode, size))
            print(size, mode, f"{runs[mode][-1]['seconds']:.2f} s", flush=True)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="toynet")
    parser.add_argument("--probe", default="toyworld")
    parser.add_argument("--layer", default="layer4")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 4000])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0,
                        help="torch intra-op threads in every child (0 = torch's default)")
    parser.add_argument("--before", type=Path, default=None,
                        help="root of another copy of the package whose stage is timed too")
    parser.add_argument("--machine", default="a shared 2-core CPU machine")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--child", choices=["bare", "stage"], default=None)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.model, args.probe, args.layer, args.sizes[0],
                                 args.batch_size, args.threads)))
        return
    modes = ["bare", "stage"] + (["before"] if args.before else [])
    # warm-up: make sure trained weights exist before timing anything
    run_child(args, "bare", 64)
    stages = [m for m in modes if m != "bare"]
    head = " | ".join(f"{m} s | {m}/bare wall | {m}/bare CPU" for m in stages)
    threads = f"{args.threads} torch thread(s)" if args.threads else "torch's default threads"
    lines = [f"# Activation extraction: {args.model}.{args.layer} on {args.probe}", "",
             f"batch size {args.batch_size}, {threads}; {args.repeats} fresh processes per mode, "
             f"interleaved in alternating order, on {args.machine}; seconds and wall ratios are "
             f"those of each mode's fastest run, CPU ratios those of the summed CPU times; "
             f"measured {time.strftime('%Y-%m-%d %H:%M')}"
             + (f"; `before` = the stage of the package at `{args.before}`" if args.before else ""),
             "", f"| images | bare s | {head} | bare peak RSS MB | stage peak RSS MB |",
             "|---:|---:|" + "---:|---:|---:|" * len(stages) + "---:|---:|"]
    for size in args.sizes:
        runs = interleaved(args, size, modes)
        total = {m: min(r["seconds"] for r in runs[m]) for m in modes}
        cpu = {m: sum(r["cpu_seconds"] for r in runs[m]) for m in modes}
        cells = " | ".join(f"{total[m]:.2f} | {total[m] / total['bare']:.3f} | "
                           f"{cpu[m] / cpu['bare']:.3f}" for m in stages)
        peak = {m: max(r["peak_rss_mb"] for r in runs[m]) for m in ("bare", "stage")}
        lines.append(f"| {size} | {total['bare']:.2f} | {cells} | {peak['bare']:.0f} | "
                     f"{peak['stage']:.0f} |")
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
