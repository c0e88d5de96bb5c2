"""Stable Diffusion text-to-image backends (diffusers).

``sd14`` follows the released Describe-and-Dissect code: ``CompVis/stable-diffusion-v1-4``,
DPM-Solver multistep scheduler, 50 steps, guidance 7.5, 512x512, safety checker off, fp16 on GPU.
Unlike that code (one generator shared by the whole run), image ``i`` of a prompt starts from noise
drawn by its own CPU ``torch.Generator`` seeded by a stable hash of (seed, i): it depends only on
(prompt, seed, i), so asking for Q' <= Q images reuses the first Q' of Q, whatever the batching.
Every prompt shares the noise of index ``i``, so candidates are compared under equal noise.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dndbench.backends.base import TEXT2IMAGE, TextToImage, png_bytes
from dndbench.backends.hub import HubBackend, HubConfig, stable_seed
from dndbench.errors import ConfigError

#: ``scheduler`` option -> diffusers scheduler class name ("default" keeps the pipeline's own)
SCHEDULERS = {
    "dpm_multistep": "DPMSolverMultistepScheduler",
    "ddim": "DDIMScheduler",
    "pndm": "PNDMScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_ancestral": "EulerAncestralDiscreteScheduler",
    "lms": "LMSDiscreteScheduler",
}


@TEXT2IMAGE.register("sd14")
class StableDiffusion(HubBackend, TextToImage):
    """Stable Diffusion v1-4 as in the released DnD code (DPM-Solver, 50 steps, guidance 7.5)."""

    kind_label = "text-to-image pipeline"

    @dataclass
    class Config(HubConfig):
        model_id: str = "CompVis/stable-diffusion-v1-4"
        precision: str = "fp16"  # half precision on CUDA only
        batch_size: int = 10
        scheduler: str = "dpm_multistep"
        steps: int = 50
        guidance: float = 7.5
        height: int = 512
        width: int = 512

    def __init__(self, config: "StableDiffusion.Config", call_cache: Any = None,
                 cache_dir: Any = None) -> None:
        super().__init__(config, call_cache=call_cache, cache_dir=cache_dir)
        check_scheduler(config.scheduler)

    def _load_model(self, source: str, local_only: bool) -> Any:
        from diffusers import StableDiffusionPipeline

        pipe = StableDiffusionPipeline.from_pretrained(
            source, local_files_only=local_only, dtype=self.torch_dtype,
            safety_checker=None, requires_safety_checker=False)
        pipe.scheduler = make_scheduler(self.config.scheduler, pipe.scheduler)
        pipe.set_progress_bar_config(disable=True)
        return pipe.to(self.device)

    def _generate_items(self, items: list[tuple[str, int, int]]) -> list[bytes]:
        import torch

        pipe = self.model()
        generators = [torch.Generator("cpu").manual_seed(stable_seed(seed, i))
                      for _, seed, i in items]
        with torch.no_grad():
            out = pipe(prompt=[prompt for prompt, _, _ in items], generator=generators,
                       num_inference_steps=self.config.steps, guidance_scale=self.config.guidance,
                       height=self.config.height, width=self.config.width, output_type="pil")
        return [png_bytes(image) for image in out.images]


@TEXT2IMAGE.register("sd15")
class StableDiffusion15(StableDiffusion):
    """Stable Diffusion v1-5 (named by the DnD README), same settings as ``sd14``."""

    @dataclass
    class Config(StableDiffusion.Config):
        model_id: str = "runwayml/stable-diffusion-v1-5"


@TEXT2IMAGE.register("sd_turbo")
class StableDiffusionTurbo(StableDiffusion):
    """SD-Turbo (stabilityai/sd-turbo): 1-4 steps without guidance, its own scheduler."""

    @dataclass
    class Config(StableDiffusion.Config):
        model_id: str = "stabilityai/sd-turbo"
        scheduler: str = "default"
        steps: int = 1
        guidance: float = 0.0


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
