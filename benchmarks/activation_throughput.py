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

Even so, fresh-process timings on a loaded machine vary by more than the stage's overhead, so
the default measurement is *paired* (``--paired``, one process per size and package): every
loader batch is built once (timed as ``data``) and then pushed through both the bare forward and
the stage's own per-batch step (:meth:`~dndbench.activations.Activations.pooled_batch`, or a
replica of the earlier code's step for a package without it), in alternating order, so load
changes hit both alike; the stage's fixed costs (cache key, network and loader set-up, the
cache write) are timed once and added.  Ratio = (data + stage + fixed) / (data + bare), from
CPU time (exact with ``--threads 1``, the default for this mode) and from wall time.

    python benchmarks/activation_throughput.py [--model toynet --probe toyworld --layer layer4]
        [--sizes 1000 4000] [--before /path/to/old/package/root] [--processes --repeats 3]
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


def legacy_batch(acts: Any, net: Any, layer: str, batch: Any) -> Any:
    """The per-batch step of ``Activations.pooled`` before ``pooled_batch`` existed (three
    statistics moved to numpy one by one, stacked, then cast)."""
    import numpy as np

    out = acts._layer_output(net, layer, batch)
    if out.dim() == 4:
        flat = out.flatten(2)
        stats = [flat.mean(2), flat.amax(2), flat.amin(2)]
    else:
        stats = [out, out, out]
    return np.stack([s.cpu().numpy() for s in stats]).astype(np.float32)


def paired(model_name: str, probe_name: str, layer: str, size: int, batch_size: int,
           threads: int) -> dict[str, Any]:
    """Inside a fresh process: bare forward and the stage's per-batch step on the same batches."""
    import numpy as np
    import torch

    import dndbench
    from dndbench.activations import Activations
    from dndbench.cache import Cache
    from dndbench.models.base import MODELS
    from dndbench.probes.base import PROBES

    torch.set_num_threads(threads if threads > 0 else max(1, torch.get_num_threads()))
    model = MODELS.create(model_name)
    probe = PROBES.create(probe_name, size=size)
    clocks = {"cpu": time.process_time, "wall": time.perf_counter}
    spent = {(part, c): 0.0 for part in ("data", "bare", "stage", "fixed") for c in clocks}

    def timed(part: str, call: Any) -> Any:
        start = {c: f() for c, f in clocks.items()}
        out = call()
        for c, f in clocks.items():
            spent[(part, c)] += f() - start[c]
        return out

    with tempfile.TemporaryDirectory() as tmp:
        model.cache = probe.cache = Cache(Path.home() / ".cache" / "dndbench")  # trained weights
        model.network(pretrained=True)  # weights and torchvision's import (seconds in a fresh
        model.transform()  # process, paid by any use of the transform) outside the timings
        acts = Activations(model, probe, Cache(tmp), batch_size=batch_size, progress=False)
        key, net, loader = timed("fixed", lambda: (acts.key(layer), acts._network(),
                                                   acts._loader()))
        layer = model.resolve_layer(layer)
        new_step = hasattr(acts, "pooled_batch")
        chunks: list[Any] = []  # the earlier code's per-batch results, concatenated at the end
        result = np.zeros(0, np.float32)  # this package's: written in place, as pooled() does
        row = 0

        def stage(batch: Any) -> None:
            nonlocal result, row
            if not new_step:
                chunks.append(legacy_batch(acts, net, layer, batch))
                return
            stats = acts.pooled_batch(net, layer, batch)
            if row == 0:
                result = np.empty((3, size, stats.shape[2]), np.float32)
            result[:, row:row + len(batch)] = stats
            row += len(batch)

        def bare(batch: Any) -> None:
            with torch.no_grad():
                net(batch)

        batches = iter(loader)
        for i in range(len(loader)):
            _, batch = timed("data", lambda: next(batches))
            runs = [("bare", bare), ("stage", stage)]
            for part, call in (runs if i % 2 == 0 else runs[::-1]):
                timed(part, lambda call=call, batch=batch: call(batch))

        def finish() -> Any:  # the result array as pooled() builds it, then the cache write
            final = result if new_step else np.concatenate(chunks, axis=1)
            return acts.cache.array("activations", key, lambda: final)

        timed("fixed", finish)
    out: dict[str, Any] = {f"{part}_{c}": v for (part, c), v in spent.items()}
    out.update(package=str(Path(dndbench.__file__).parent), step="pooled_batch" if new_step
               else "legacy", threads=torch.get_num_threads())
    for c in clocks:
        floor = spent[("data", c)] + spent[("bare", c)]
        out[f"ratio_{c}"] = (spent[("data", c)] + spent[("stage", c)] + spent[("fixed", c)]) / floor
    return out


def run_child(args: argparse.Namespace, mode: str, size: int) -> dict[str, Any]:
    env = dict(os.environ)
    child = {"before": "stage", "paired-before": "paired"}.get(mode, mode)
    if mode.endswith("before"):
        env["PYTHONPATH"] = os.pathsep.join([str(args.before), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, __file__, "--child", child, "--model", args.model, "--probe",
           args.probe, "--layer", args.layer, "--batch-size", str(args.batch_size),
           "--sizes", str(size)] + ([] if args.threads is None else ["--threads", str(args.threads)])
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env,
                         cwd=tempfile.gettempdir() if mode.endswith("before") else None)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    if mode.endswith("before") and not Path(result["package"]).is_relative_to(
            args.before.resolve()):
        raise SystemExit(f"--before {args.before}: the child imported {result['package']}")
    return result


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
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads in every child (0 = torch's default; "
                             "default: 1 for the paired measurement, 0 for --processes)")
    parser.add_argument("--processes", action="store_true",
                        help="also time whole passes in fresh processes (bare / stage / before)")
    parser.add_argument("--before", type=Path, default=None,
                        help="root of another copy of the package whose stage is timed too")
    parser.add_argument("--machine", default="a shared 2-core CPU machine")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--child", choices=["bare", "stage", "paired"], default=None)
    args = parser.parse_args()
    if args.child == "paired":
        print(json.dumps(paired(args.model, args.probe, args.layer, args.sizes[0],
                                args.batch_size, 1 if args.threads is None else args.threads)))
        return
    if args.child:
        print(json.dumps(measure(args.child, args.model, args.probe, args.layer, args.sizes[0],
                                 args.batch_size, args.threads or 0)))
        return
    # warm-up: make sure trained weights exist before timing anything
    run_child(args, "bare", 64)
    lines = paired_table(args)
    if args.processes:
        lines += [""] + process_table(args)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


def paired_table(args: argparse.Namespace) -> list[str]:
    """The paired measurement of every size (and of ``--before``), as Markdown lines."""
    threads = 1 if args.threads is None else args.threads
    versions = ["paired"] + (["paired-before"] if args.before else [])
    label = {"paired": "this package", "paired-before": f"`{args.before}`"}
    lines = [f"# Activation extraction: {args.model}.{args.layer} on {args.probe}", "",
             "## Paired per-batch measurement", "",
             f"Batch size {args.batch_size}, {threads or 'default'} torch thread(s), one fresh "
             f"process per size and package on {args.machine}; measured "
             f"{time.strftime('%Y-%m-%d %H:%M')}. Each batch is built once (data) and run through "
             f"the bare forward and the stage's per-batch step in alternating order; fixed = "
             f"cache key, network and loader set-up, result array and cache write. Ratio = "
             f"(data + stage + fixed) / (data + bare).", "",
             "| images | package | step | data CPU s | bare CPU s | stage CPU s | fixed CPU s | "
             "stage/bare CPU | stage/bare wall |", "|---:|---|---|---:|---:|---:|---:|---:|---:|"]
    for size in args.sizes:
        for version in versions:
            r = run_child(args, version, size)
            lines.append(f"| {size} | {label[version]} | {r['step']} | {r['data_cpu']:.2f} | "
                         f"{r['bare_cpu']:.2f} | {r['stage_cpu']:.2f} | {r['fixed_cpu']:.3f} | "
                         f"{r['ratio_cpu']:.3f} | {r['ratio_wall']:.3f} |")
            print(lines[-1], flush=True)
    return lines


def process_table(args: argparse.Namespace) -> list[str]:
    """Whole passes in fresh processes, interleaved, as Markdown lines."""
    modes = ["bare", "stage"] + (["before"] if args.before else [])
    stages = [m for m in modes if m != "bare"]
    head = " | ".join(f"{m} s | {m}/bare wall | {m}/bare CPU" for m in stages)
    threads = f"{args.threads} torch thread(s)" if args.threads else "torch's default threads"
    lines = ["## Whole passes in fresh processes", "",
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
    return lines


if __name__ == "__main__":
    main()
