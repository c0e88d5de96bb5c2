"""Network Dissection's passes over the probe: maps stored once in a memory-mapped file against
the network re-run for every pass.

For each probe-set size, fresh subprocesses describe every unit of one layer with
``describer=netdissect`` in the two modes:

* ``stream`` (what the describer did before): the network runs over the probe three times after
  the pooled pass (two quantile passes and the tally pass), nothing is written to disk;
* ``memmap`` (the default now): one network pass stores the maps in a temporary file in the
  cache folder and fills the quantile's coarse histograms; the quantile's second pass and the
  tally read the file back in batches.

Each child computes the pooled activations first (shared by every describer of a run, not
timed), then times ``describe`` and reports the network passes over the probe (images forwarded
/ probe size), the seconds and the peak resident memory of the describe step (``VmHWM`` after
resetting it through ``/proc/self/clear_refs``; the whole process's ``ru_maxrss`` where that is
unavailable), plus a hash of every description field, so the modes are checked to agree.

    python benchmarks/netdissect_passes.py [--layer layer3] [--sizes 500 2000]
        [--out benchmarks/results/netdissect_passes.md]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

MODES = ("stream", "memmap")


def peak_rss_mb(reset: bool = False) -> float:
    """Peak resident memory of this process in MB; with ``reset``, start a new peak first."""
    import resource

    status = Path("/proc/self/status")
    if reset:
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(mode: str, layer: str, size: int, batch_size: int) -> dict[str, Any]:
    """Inside a fresh process: one netdissect run over every unit of ``layer``."""
    from dndbench.cache import Cache, default_cache_dir
    from dndbench.context import Context
    from dndbench.describers.base import DESCRIBERS
    from dndbench.models.base import MODELS
    from dndbench.probes.base import PROBES

    model = MODELS.create("toynet")
    probe = PROBES.create("toyworld", size=size)
    model.cache = probe.cache = Cache(default_cache_dir())  # trained ToyNet weights
    with tempfile.TemporaryDirectory() as tmp:
        layer = model.resolve_layer(layer)
        units = list(range(model.num_units(layer)))
        ctx = Context(model=model, probe=probe, layer=layer, units=units, cache=Cache(tmp),
                      batch_size=batch_size, progress=False)
        ctx.activations.pooled(layer)
        before = ctx.activations.images_forwarded
        rss_before = peak_rss_mb(reset=True)
        describer = DESCRIBERS.create("netdissect", maps=mode, batch_size=batch_size)
        start = time.perf_counter()
        out = describer.describe(ctx)
        seconds = time.perf_counter() - start
        peak = peak_rss_mb()
        passes = (ctx.activations.images_forwarded - before) / size
    rows = [[d.unit, d.label, d.alternatives, repr(d.score), sorted((k, repr(v)) for k, v in
                                                                     d.extras.items())]
            for d in out]
    digest = hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]
    return {"seconds": seconds, "passes": passes, "peak_rss_mb": peak,
            "rss_before_mb": rss_before, "units": len(units), "digest": digest}


def run_child(args: argparse.Namespace, mode: str, size: int) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", mode, "--layer", args.layer,
           "--batch-size", str(args.batch_size), "--sizes", str(size)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layer", default="layer3")
    parser.add_argument("--sizes", type=int, nargs="+", default=[500, 2000])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--machine", default="a shared 2-core CPU machine")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--child", choices=MODES, default=None)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.layer, args.sizes[0], args.batch_size)))
        return
    run_child(args, "memmap", 16)  # warm-up: trained ToyNet weights exist before timing
    lines = [f"# Network Dissection passes: toynet.{args.layer} on toyworld", "",
             f"Every unit of the layer; batch size {args.batch_size}; each cell a fresh process "
             f"on {args.machine}; measured {time.strftime('%Y-%m-%d %H:%M')}. Passes = network "
             f"passes over the probe after the (cached) pooled one; peak RSS = the describe "
             f"step's peak resident memory.", "",
             "| images | mode | passes | seconds | peak RSS MB | results |",
             "|---:|---|---:|---:|---:|---|"]
    for size in args.sizes:
        cells = {mode: run_child(args, mode, size) for mode in MODES}
        for mode in MODES:
            c = cells[mode]
            same = "identical" if c["digest"] == cells[MODES[0]]["digest"] else "DIFFER"
            lines.append(f"| {size} | {mode} | {c['passes']:.0f} | {c['seconds']:.1f} | "
                         f"{c['peak_rss_mb']:.0f} | {same} |")
        ratio = cells["memmap"]["seconds"] / cells["stream"]["seconds"]
        lines.append(f"| {size} | memmap / stream | | {ratio:.2f} | | |")
        print("\n".join(lines[-3:]), flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
