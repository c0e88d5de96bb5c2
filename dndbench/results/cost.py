"""Cost model: seconds per unit and API spend, projected from a run's counters.

``python -m dndbench cost RUN_DIR [--latencies FILE.json] [--price-per-1k-tokens P]``

A run directory records what its describers asked of the models, per unit: images captioned, LLM
calls (and tokens, where the LLM reports them), images generated, images pushed through the
target network, VLM inputs and embedded texts (``costs.csv``; else the ``<describer>/...``
counters of ``run.json``).  Multiplying those counts by per-call latencies gives seconds per unit
on the machine the latencies describe, and the LLM tokens by a price give the API spend.  The
same is done for the released Describe-and-Dissect code's settings (:data:`PAPER`: 10 captions,
15-20 LLM calls and 50 Stable Diffusion images of 50 guided steps per unit), so a run can be
compared with what the paper's pipeline would spend on the same machine.

Latencies are seconds per call on one GPU, sequential, batched as the backends batch them:

* ``caption`` per captioned image; ``llm_call`` per LLM request (divided by the concurrency);
* ``unet_eval`` per image per UNet evaluation (a guided step is two) and ``image_fixed`` per
  generated image outside the denoising loop (text encoder, VAE decoder, PNG encoding);
* ``forward_image`` per image through the target network; ``vlm_input`` per VLM encoding;
  ``embedded_text`` per text embedded.

:data:`DEFAULT_LATENCIES` are **estimates**, not measurements (their derivation is in
:data:`LATENCY_SOURCES` and ``docs/performance.md``); ``--latencies`` replaces any of them with a
JSON file such as the one ``benchmarks/gpu_dnd.py`` writes from measured timings.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from dndbench.errors import DataError

#: estimated seconds per call on one H100-class GPU, fp16 (see LATENCY_SOURCES)
DEFAULT_LATENCIES: dict[str, float] = {
    "caption": 0.012,
    "llm_call": 1.0,
    "unet_eval": 0.002,
    "image_fixed": 0.03,
    "forward_image": 0.003,
    "vlm_input": 0.003,
    "embedded_text": 0.0005,
}
#: how each default was estimated
LATENCY_SOURCES: dict[str, str] = {
    "caption": "BLIP base, 32 greedy decoding steps at ~10 ms per step for a batch of 32, plus "
               "~2 ms of CPU preprocessing per image",
    "llm_call": "typical round trip of a GPT-4-class chat API for ~250 prompt tokens and a "
                "short answer",
    "unet_eval": "0.68 TFLOP per SD v1.5 UNet evaluation of a 512x512 image / (989 TFLOP/s "
                 "H100 dense bf16 peak x 35% assumed utilisation)",
    "image_fixed": "VAE decoder ~2.4 TFLOP at 512x512 (~7 ms at the same utilisation) plus "
                   "~20 ms to encode and decode the PNG on one CPU core",
    "forward_image": "ResNet-50 (8 GFLOP) is negligible on the GPU; ~3 ms of CPU preprocessing "
                     "(resize, crop, normalise) per image",
    "vlm_input": "CLIP ViT-B/16 (35 GFLOP) is negligible on the GPU; ~3 ms of CPU "
                 "preprocessing per image",
    "embedded_text": "a small sentence encoder, batched",
}
#: tokens per LLM call when the run did not record them (DnD's prompts: ~120-400 tokens)
DEFAULT_TOKENS_PER_CALL = 250
#: USD per 1000 tokens: gpt-4-0125-preview's input price (10 USD per million input tokens);
#: DnD's answers are a few words, so input tokens dominate
DEFAULT_PRICE_PER_1K = 0.01

#: counters of run.json (suffix after ``<describer>/``) -> workload field
COUNTER_FIELDS = {"captioned_images": "captions", "llm_calls": "llm_calls",
                  "generated_images": "generated_images", "forward_images": "forward_images",
                  "map_images": "forward_images", "clip_images": "vlm_inputs",
                  "embedded_texts": "embedded_texts"}
#: stage -> (workload field, latency key)
STAGES = {"captioning": ("captions", "caption"), "LLM": ("llm_calls", "llm_call"),
          "generation": ("generated_images", ""), "forward": ("forward_images", "forward_image"),
          "CLIP": ("vlm_inputs", "vlm_input"), "embedding": ("embedded_texts", "embedded_text")}


@dataclass(frozen=True)
class Workload:
    """Model calls per unit, with the text-to-image settings they were made at."""

    label: str
    captions: float = 0.0
    llm_calls: float = 0.0
    generated_images: float = 0.0
    forward_images: float = 0.0
    vlm_inputs: float = 0.0
    embedded_texts: float = 0.0
    llm_tokens: float | None = None  # None: unknown (estimated from the calls)
    steps: int = 50
    guidance: float = 7.5
    llm_concurrency: int = 1

    @property
    def unet_evals(self) -> int:
        """UNet evaluations per generated image (two per step with classifier-free guidance)."""
        return self.steps * (2 if self.guidance > 1 else 1)


#: the released DnD code per unit: 10 captions, 15-20 LLM calls (17.5), 50 SD images at 50 steps
#: with guidance 7.5; forward: 10 top images + ~20 crops + 50 synthetic; CLIP: 50 + 10; calls
#: one at a time
PAPER = Workload("released DnD code", captions=10, llm_calls=17.5, generated_images=50,
                 forward_images=80, vlm_inputs=60, steps=50, guidance=7.5, llm_concurrency=1)


@dataclass(frozen=True)
class Projection:
    """Seconds per unit by stage, their total, and the LLM tokens and spend per unit."""

    workload: Workload
    seconds: dict[str, float]
    tokens: float
    tokens_estimated: bool
    spend: float

    @property
    def total(self) -> float:
        return sum(self.seconds.values())


def project(work: Workload, latencies: dict[str, float], price_per_1k: float = DEFAULT_PRICE_PER_1K,
            tokens_per_call: float = DEFAULT_TOKENS_PER_CALL) -> Projection:
    """Seconds per unit of ``work`` under ``latencies`` (see the module docstring)."""
    lat = {**DEFAULT_LATENCIES, **latencies}
    per_image = lat["image_fixed"] + work.unet_evals * lat["unet_eval"]
    seconds = {}
    for stage, (field, key) in STAGES.items():
        count = float(getattr(work, field))
        cost = per_image if stage == "generation" else lat[key]
        if stage == "LLM":
            cost /= max(1, work.llm_concurrency)
        seconds[stage] = count * cost
    estimated = work.llm_tokens is None or math.isnan(work.llm_tokens)
    tokens = work.llm_calls * tokens_per_call if estimated else float(work.llm_tokens or 0.0)
    return Projection(work, seconds, tokens, estimated, tokens / 1000.0 * price_per_1k)


# -- reading a run directory ---------------------------------------------------------------------
def load_run(run_dir: Path) -> dict[str, Any]:
    """``run.json`` of a run directory (DataError when there is none)."""
    path = Path(run_dir) / "run.json"
    if not path.is_file():
        raise DataError(f"{run_dir} is not a run directory: it has no run.json")
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{path} is not valid JSON ({exc.msg}, line {exc.lineno})") from None
    return data


def generation_settings(run: dict[str, Any], steps: int | None, guidance: float | None
                        ) -> tuple[int, float, str]:
    """(steps, guidance, where they came from): the flags, else the run's ``text2image``
    config, else the paper's 50 steps and guidance 7.5."""
    t2i = (run.get("config") or {}).get("text2image") or {}
    run_steps, run_guidance = t2i.get("steps"), t2i.get("guidance")
    if steps is None and guidance is None and run_steps is not None:
        return int(run_steps), float(run_guidance if run_guidance is not None else 7.5), \
            f"text2image={t2i.get('name', '?')}"
    return (int(steps if steps is not None else 50),
            float(guidance if guidance is not None else 7.5),
            "options" if steps is not None or guidance is not None else "paper's (50, 7.5)")


def _number(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(out) else out


def workloads_from_costs(path: Path, base: Workload) -> list[Workload]:
    """One workload per row of ``costs.csv`` (columns ``<kind>_per_unit``)."""
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    out = []
    for row in rows:
        if not any(k.endswith("_per_unit") for k in row):
            raise DataError(f"{path} has no <kind>_per_unit columns")
        values = {f: _number(row.get(f"{f}_per_unit")) or 0.0 for f in
                  ("captions", "llm_calls", "generated_images", "forward_images", "vlm_inputs",
                   "embedded_texts")}
        label = row.get("setting") or row.get("describer") or "?"
        if row.get("layer"):
            label = f"{label} @ {row['layer']}"
        out.append(with_counts(base, f"ours: {label}", values,
                               _number(row.get("llm_tokens_per_unit"))))
    return out


def with_counts(base: Workload, label: str, counts: dict[str, float],
                llm_tokens: float | None = None) -> Workload:
    """``base`` with another label and per-unit ``counts`` (absent fields: 0)."""
    def get(field: str) -> float:
        return float(counts.get(field, 0.0))

    return replace(base, label=label, captions=get("captions"), llm_calls=get("llm_calls"),
                   generated_images=get("generated_images"),
                   forward_images=get("forward_images"), vlm_inputs=get("vlm_inputs"),
                   embedded_texts=get("embedded_texts"), llm_tokens=llm_tokens)


def workloads_from_counters(run: dict[str, Any], base: Workload) -> list[Workload]:
    """One workload per describer setting from the counters of ``run.json`` (when the run has
    no ``costs.csv``): ``<prefix>/<counter>`` totals divided by the run's units."""
    counts = run.get("counts") or {}
    units = max(1, int(counts.get("units") or 1))
    describers = run.get("describers") or {}
    sources = {name: entry.get("counters") or {} for name, entry in describers.items()}
    if not any(sources.values()):  # older runs: the run's own totals
        sources = {"run": {k: v for k, v in counts.items() if isinstance(v, (int, float))}}
    out = []
    for name, counters in sources.items():
        totals: dict[str, float] = {}
        for key, value in counters.items():
            field = COUNTER_FIELDS.get(str(key).rsplit("/", 1)[-1])
            if field and isinstance(value, (int, float)):
                totals[field] = totals.get(field, 0.0) + float(value)
        if totals:
            out.append(with_counts(base, f"ours: {name}",
                                   {k: v / units for k, v in totals.items()}))
    return out


def run_workloads(run_dir: Path, steps: int | None = None, guidance: float | None = None,
                  concurrency: int = 8) -> tuple[list[Workload], str]:
    """The workloads of a run directory and a note on where their settings came from."""
    run = load_run(run_dir)
    steps_, guidance_, where = generation_settings(run, steps, guidance)
    base = Workload("ours", steps=steps_, guidance=guidance_, llm_concurrency=concurrency)
    costs = Path(run_dir) / "costs.csv"
    if costs.is_file():
        found, source = workloads_from_costs(costs, base), "costs.csv"
    else:
        found, source = workloads_from_counters(run, base), "run.json counters"
    if not found:
        raise DataError(f"{run_dir}: no model-call counts found in costs.csv or run.json")
    return found, (f"counts from {source}; generation at {steps_} steps, guidance {guidance_:g} "
                   f"({where})")


def load_latencies(path: Path | None) -> tuple[dict[str, float], str]:
    """Latencies (defaults overridden by the file's) and a line naming their source.

    The file is ``{"latencies": {key: seconds}, "device": ..., "source": ...}`` or a flat
    ``{key: seconds}``."""
    if path is None:
        return dict(DEFAULT_LATENCIES), "default latency table (estimates, not measurements)"
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise DataError(f"latencies file {path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"latencies file {path} is not valid JSON ({exc.msg})") from None
    table = data.get("latencies", data) if isinstance(data, dict) else None
    if not isinstance(table, dict):
        raise DataError(f"latencies file {path} must hold an object of seconds per call")
    unknown = sorted(set(table) - set(DEFAULT_LATENCIES))
    if unknown:
        raise DataError(f"latencies file {path}: unknown keys {unknown}; known keys are "
                        f"{sorted(DEFAULT_LATENCIES)}")
    values = {}
    for key, value in table.items():
        number = _number(value)
        if number is None or number < 0:
            raise DataError(f"latencies file {path}: {key} must be a number >= 0, got {value!r}")
        values[key] = number
    kept = sorted(set(DEFAULT_LATENCIES) - set(values))
    where = f"{path}" + (f" ({data['device']})" if isinstance(data.get("device"), str) else "")
    note = f"latencies from {where}" + (f"; defaults for {', '.join(kept)}" if kept else "")
    return {**DEFAULT_LATENCIES, **values}, note


# -- output ------------------------------------------------------------------------------------
def markdown(projections: list[Projection], notes: list[str]) -> str:
    """A Markdown table: one row per projection, seconds per unit by stage, tokens and spend."""
    stages = [s for s in STAGES if s != "embedding" or any(p.seconds[s] for p in projections)]
    head = ["workload", "steps", "LLM conc.", *(f"{s} s" for s in stages), "total s/unit",
            "tokens/unit", "USD/unit"]
    from dndbench.results.leaderboard import md_cell

    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for p in projections:
        w = p.workload
        cells = [md_cell(w.label), f"{w.steps}{' (CFG)' if w.guidance > 1 else ''}", str(w.llm_concurrency),
                 *(f"{p.seconds[s]:.3f}" for s in stages), f"**{p.total:.2f}**",
                 f"{p.tokens:.0f}{'*' if p.tokens_estimated else ''}", f"{p.spend:.4f}"]
        lines.append("| " + " | ".join(cells) + " |")
    foot = ["", *(f"- {n}" for n in notes),
            "- tokens marked * are estimated from the LLM calls (the run did not record them)"]
    return "\n".join(lines + foot) + "\n"


def main(argv: list[str] | None = None) -> int:
    """``dndbench cost RUN_DIR``: print the projected seconds per unit and API spend."""
    parser = argparse.ArgumentParser(
        prog="dndbench cost", description="Project seconds per unit and API spend of a run, "
        "and of the released DnD code's settings, from per-call latencies.")
    parser.add_argument("run_dir", type=Path, help="a run directory (has run.json)")
    parser.add_argument("--latencies", type=Path, default=None,
                        help="JSON file of seconds per call (e.g. written by "
                             "benchmarks/gpu_dnd.py); default: the built-in estimates")
    parser.add_argument("--price-per-1k-tokens", type=float, default=DEFAULT_PRICE_PER_1K,
                        help=f"USD per 1000 LLM tokens (default {DEFAULT_PRICE_PER_1K})")
    parser.add_argument("--tokens-per-call", type=float, default=DEFAULT_TOKENS_PER_CALL,
                        help="tokens of an LLM call when the run did not record them")
    parser.add_argument("--llm-concurrency", type=int, default=8,
                        help="LLM requests in flight for our runs (llm.max_concurrency; the "
                             "released code sends one at a time)")
    parser.add_argument("--steps", type=int, default=None,
                        help="denoising steps of our images (default: the run's text2image "
                             "config, else 50)")
    parser.add_argument("--guidance", type=float, default=None,
                        help="guidance of our images (default: the run's, else 7.5)")
    parser.add_argument("--also-steps", type=int, nargs="*", default=[],
                        help="extra rows for our counts at these step counts, without guidance "
                             "(few-step models such as sd_turbo)")
    args = parser.parse_args(argv)
    latencies, lat_note = load_latencies(args.latencies)
    ours, run_note = run_workloads(args.run_dir, args.steps, args.guidance, args.llm_concurrency)
    works = [PAPER, *ours]
    works += [replace(w, label=f"{w.label}, {n} steps", steps=n, guidance=0.0)
              for n in args.also_steps for w in ours]
    rows = [project(w, latencies, args.price_per_1k_tokens, args.tokens_per_call) for w in works]
    notes = [lat_note, run_note, f"API price {args.price_per_1k_tokens:g} USD per 1000 tokens",
             "released DnD code: 10 captions, 15-20 LLM calls (17.5 used), 50 images at 50 "
             "guided steps, ~80 forward and 60 CLIP images per unit, calls one at a time"]
    print(f"# Projected cost per unit: {args.run_dir}\n")
    print(markdown(rows, notes))
    return 0
