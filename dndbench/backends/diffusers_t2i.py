"""Stable Diffusion text-to-image backends (diffusers).

``sd14`` follows the released Describe-and-Dissect code: ``CompVis/stable-diffusion-v1-4``,
DPM-Solver multistep scheduler, 50 steps, guidance 7.5, 512x512, safety checker off, fp16 on GPU.
Unlike that code (one generator shared by the whole run), image ``i`` of a prompt starts from noise
drawn by its own CPU ``torch.Generator`` seeded by a stable hash of (seed, i): it depends only on
(prompt, seed, i), so asking for Q' <= Q images reuses the first Q' of Q, whatever the batching.
Every prompt shares the noise of index ``i``, so candidates are compared under equal noise.

The efficient path (see ``docs/performance.md``):

* ``batch_size`` images (of any prompts) go through the pipeline together;
* ``precision`` ``fp16`` / ``bf16`` on a GPU, with PyTorch's scaled-dot-product attention forced
  on every attention layer of the UNet and the VAE (:func:`use_sdpa`);
* ``compile=true`` compiles the UNet with ``torch.compile`` (channels-last memory format); it does
  not change what is computed, so it is not part of the call-cache key;
* few steps: ``sd_turbo`` (1-4 steps, no guidance) and ``sd15_lcm`` (``scheduler=lcm``, 4 steps,
  no guidance) whose LCM-LoRA weights are a local download named by ``lora_path``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dndbench.backends.base import TEXT2IMAGE, Precision, TextToImage, png_bytes
from dndbench.backends.hub import HubBackend, HubConfig, one_line, stable_seed
from dndbench.errors import BackendError, ConfigError
from dndbench.registry import Choice

log = logging.getLogger(__name__)

#: ``scheduler`` option -> diffusers scheduler class name ("default" keeps the pipeline's own)
SCHEDULERS = {
    "dpm_multistep": "DPMSolverMultistepScheduler",
    "ddim": "DDIMScheduler",
    "pndm": "PNDMScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_ancestral": "EulerAncestralDiscreteScheduler",
    "lms": "LMSDiscreteScheduler",
    "lcm": "LCMScheduler",
}


class Scheduler(Choice):
    """The ``scheduler`` option: ``default`` (the pipeline's own) or a key of :data:`SCHEDULERS`."""

    default = "default"
    dpm_multistep = "dpm_multistep"
    ddim = "ddim"
    pndm = "pndm"
    euler = "euler"
    euler_ancestral = "euler_ancestral"
    lms = "lms"
    lcm = "lcm"


#: options that change how fast images are made, not which images (left out of cache keys)
RUNTIME_OPTIONS = ("compile",)


@dataclass
class StableDiffusionConfig(HubConfig):
    """Options of the Stable Diffusion backends (``text2image=sd14`` and siblings)."""

    model_id: str = "CompVis/stable-diffusion-v1-4"
    precision: Precision = Precision.fp16  # half precision on CUDA only
    batch_size: int = 10  # images (of any prompts) per pipeline call
    scheduler: Scheduler = Scheduler.dpm_multistep
    steps: int = 50
    guidance: float = 7.5  # <= 1: no classifier-free guidance (one UNet pass per step)
    height: int = 512
    width: int = 512
    compile: bool = False  # torch.compile the UNet (a GPU speed option)
    lora_path: str = ""  # local LoRA weights (file or folder) fused into the UNet, e.g. LCM-LoRA
    lora_scale: float = 1.0


#: the SD v1-5 weights on the Hugging Face hub (the repository moved here from
#: ``runwayml/stable-diffusion-v1-5``, the id the DnD README names)
SD15_REPO = "stable-diffusion-v1-5/stable-diffusion-v1-5"


@dataclass
class StableDiffusion15Config(StableDiffusionConfig):
    """``sd15``: the v1-5 weights, ``sd14``'s settings."""

    model_id: str = SD15_REPO


@dataclass
class StableDiffusionTurboConfig(StableDiffusionConfig):
    """``sd_turbo``: one step, no guidance, the pipeline's own scheduler."""

    model_id: str = "stabilityai/sd-turbo"
    scheduler: Scheduler = Scheduler.default
    steps: int = 1
    guidance: float = 0.0


@dataclass
class StableDiffusionLCMConfig(StableDiffusionConfig):
    """``sd15_lcm``: v1-5 with the LCM scheduler, 4 steps, no guidance."""

    model_id: str = SD15_REPO
    scheduler: Scheduler = Scheduler.lcm
    steps: int = 4
    guidance: float = 1.0  # LCM-LoRA runs without classifier-free guidance


@TEXT2IMAGE.register("sd14")
class StableDiffusion(HubBackend[StableDiffusionConfig], TextToImage[StableDiffusionConfig]):
    """Stable Diffusion v1-4 as in the released DnD code (DPM-Solver, 50 steps, guidance 7.5)."""

    kind_label = "text-to-image pipeline"
    Config = StableDiffusionConfig

    def __init__(self, config: StableDiffusionConfig, call_cache: Any = None,
                 cache_dir: Any = None) -> None:
        super().__init__(config, call_cache=call_cache, cache_dir=cache_dir)
        check_config(config, getattr(self, "registry_name", type(self).__name__))

    def params(self) -> dict[str, Any]:
        """As the base's, without runtime-only options and without the LoRA fields when no
        LoRA is set (so keys made before those options existed stay valid)."""
        out = super().params()
        for key in RUNTIME_OPTIONS:
            out.pop(key, None)
        if out.get("lora_path"):
            out["lora_path"] = str(Path(out["lora_path"]).expanduser().resolve())
        else:
            out.pop("lora_path", None)
            out.pop("lora_scale", None)
        return out

    def load_options(self) -> tuple[Any, ...]:
        """The scheduler, LoRA and compilation are applied at load time."""
        c = self.config
        return (c.scheduler, c.lora_path, c.lora_scale if c.lora_path else None, c.compile)

    def _load_model(self, source: str, local_only: bool) -> Any:
        from diffusers import StableDiffusionPipeline

        pipe = StableDiffusionPipeline.from_pretrained(
            source, local_files_only=local_only, dtype=self.torch_dtype,
            safety_checker=None, requires_safety_checker=False)
        pipe.scheduler = make_scheduler(self.config.scheduler, pipe.scheduler)
        if self.config.lora_path:
            fuse_lora(pipe, self.config.lora_path, self.config.lora_scale)
        elif self.config.scheduler == "lcm":
            log.warning("text2image scheduler=lcm without lora_path: the LCM scheduler expects "
                        "LCM-distilled weights (an LCM model as `path`, or LCM-LoRA as `lora_path`)")
        pipe.set_progress_bar_config(disable=True)
        pipe = pipe.to(self.device)
        use_sdpa(pipe)
        if self.config.compile:
            compile_unet(pipe)
        return pipe

    def _generate_items(self, items: list[tuple[str, int, int]]) -> list[bytes]:
        import torch

        pipe = self.model()
        generators = [torch.Generator("cpu").manual_seed(stable_seed(seed, i))
                      for _, seed, i in items]
        with torch.inference_mode():
            out = pipe(prompt=[prompt for prompt, _, _ in items], generator=generators,
                       num_inference_steps=self.config.steps, guidance_scale=self.config.guidance,
                       height=self.config.height, width=self.config.width, output_type="pil")
        return [png_bytes(image) for image in out.images]


@TEXT2IMAGE.register("sd15")
class StableDiffusion15(StableDiffusion):
    """Stable Diffusion v1-5 (named by the DnD README), same settings as ``sd14``."""

    Config = StableDiffusion15Config


@TEXT2IMAGE.register("sd_turbo")
class StableDiffusionTurbo(StableDiffusion):
    """SD-Turbo (stabilityai/sd-turbo): 1-4 steps without guidance, its own scheduler."""

    Config = StableDiffusionTurboConfig


@TEXT2IMAGE.register("sd15_lcm")
class StableDiffusionLCM(StableDiffusion):
    """SD v1-5 with the LCM scheduler, 4 steps, no guidance; set ``lora_path`` to a local copy
    of the LCM-LoRA weights (latent-consistency/lcm-lora-sdv1-5)."""

    Config = StableDiffusionLCMConfig


#: registered name -> (fewest, most) steps the distilled model is meant for
FEW_STEP_RANGES = {"sd_turbo": (1, 4), "sd15_lcm": (1, 8)}


def check_config(c: StableDiffusionConfig, name: str) -> None:
    """Raise a :class:`ConfigError` for options out of range (the scheduler is a
    :class:`Scheduler`, checked by the config itself)."""
    problems = []
    if c.steps < 1:
        problems.append(f"steps must be >= 1 (got {c.steps})")
    if c.height < 8 or c.width < 8 or c.height % 8 or c.width % 8:
        problems.append(f"height and width must be multiples of 8 (got {c.height}x{c.width})")
    if name in FEW_STEP_RANGES:
        low, high = FEW_STEP_RANGES[name]
        if not low <= c.steps <= high:
            problems.append(f"steps must be {low}-{high} for this few-step model (got {c.steps})")
    if name == "sd_turbo" and c.guidance != 0:
        problems.append(f"guidance must be 0: SD-Turbo is distilled to run without "
                        f"classifier-free guidance (got {c.guidance})")
    if c.lora_path and not Path(c.lora_path).expanduser().exists():
        problems.append(f"lora_path {c.lora_path!r} does not exist (download the LoRA weights "
                        f"and give their file or folder)")
    if problems:
        raise ConfigError(f"text2image {name!r}: " + "; ".join(problems))


def make_scheduler(name: str, current: Any) -> Any:
    """The scheduler called ``name``, configured like ``current`` (``default`` keeps it)."""
    check_scheduler(name)
    if name == "default":
        return current
    import diffusers

    return getattr(diffusers, SCHEDULERS[name]).from_config(current.config)


def check_scheduler(name: str) -> None:
    """Raise a :class:`ConfigError` unless ``name`` is a known ``scheduler`` option."""
    if name != "default" and name not in SCHEDULERS:
        raise ConfigError(f"unknown scheduler {name!r}; choose one of "
                          f"{', '.join(['default', *SCHEDULERS])}")


def use_sdpa(pipe: Any) -> None:
    """Make every attention layer of the UNet and the VAE use PyTorch's scaled-dot-product
    attention (diffusers' ``AttnProcessor2_0``), whatever processors the weights came with."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    for module in (pipe.unet, pipe.vae):
        processors = module.attn_processors
        if processors and not all(isinstance(p, AttnProcessor2_0) for p in processors.values()):
            module.set_attn_processor(AttnProcessor2_0())


def attention_processors(pipe: Any) -> set[str]:
    """Class names of the attention processors of the UNet and the VAE (checks and tests)."""
    return {type(p).__name__ for module in (pipe.unet, pipe.vae)
            for p in module.attn_processors.values()}


def compile_unet(pipe: Any) -> None:
    """``torch.compile`` the UNet in channels-last layout (CUDA graphs on a GPU)."""
    import torch

    pipe.unet.to(memory_format=torch.channels_last)
    mode = "reduce-overhead" if pipe.device.type == "cuda" else None
    pipe.unet = torch.compile(pipe.unet, mode=mode, fullgraph=False, dynamic=False)


def fuse_lora(pipe: Any, path: str, scale: float) -> None:
    """Load LoRA weights from a local file or folder and fuse them into the pipeline's UNet
    (and text encoder, where the file has weights for it)."""
    source = Path(path).expanduser()
    try:
        if source.is_file():
            pipe.load_lora_weights(str(source.parent), weight_name=source.name)
        else:
            pipe.load_lora_weights(str(source))
        pipe.fuse_lora(lora_scale=scale)
        pipe.unload_lora_weights()  # the fused weights stay; the LoRA layers go
    except Exception as exc:
        hint = " (LoRA loading needs the peft package: pip install peft)" \
            if "peft" in str(exc).lower() else ""
        raise BackendError(f"could not load the LoRA weights {str(source)!r}: "
                           f"{one_line(exc)}{hint}") from exc
