"""BLIP and BLIP-2 image captioners (Hugging Face transformers).

``blip`` is the captioner of the released Describe-and-Dissect code: the HF
``Salesforce/blip-image-captioning-base`` model, unconditional captioning (no text prompt),
``max_new_tokens=32``, ``min_length=5``, otherwise default (greedy) decoding.

Images are captioned ``batch_size`` at a time (one ``generate`` call per batch), in fp16 on a GPU
(``precision``).  Every caption starts from the same token, so a batch needs no padding and
batching can change a caption only through floating-point rounding.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dndbench.backends.base import CAPTIONERS, Captioner, Precision
from dndbench.backends.hub import HubBackend, HubConfig

if TYPE_CHECKING:
    from PIL import Image


@dataclass
class BlipConfig(HubConfig):
    """Decoding options of the BLIP captioners (greedy, as in the released DnD code)."""

    model_id: str = "Salesforce/blip-image-captioning-base"
    precision: Precision = Precision.fp16  # half precision on CUDA only
    batch_size: int = 32
    max_new_tokens: int = 32
    min_length: int = 5
    num_beams: int = 1


@dataclass
class Blip2Config(BlipConfig):
    """BLIP-2's weights; decoding as BLIP's."""

    model_id: str = "Salesforce/blip2-opt-2.7b"


@CAPTIONERS.register("blip")
class BlipCaptioner(HubBackend[BlipConfig], Captioner[BlipConfig]):
    """BLIP base captioner (Salesforce/blip-image-captioning-base), as in the released DnD code."""

    Config = BlipConfig
    kind_label = "captioner"

    def _load_model(self, source: str, local_only: bool) -> tuple[Any, Any]:
        from transformers import BlipForConditionalGeneration, BlipProcessor

        return self._load_with(BlipForConditionalGeneration, BlipProcessor, source, local_only)

    def _load_with(self, model_cls: Any, processor_cls: Any, source: str,
                   local_only: bool) -> tuple[Any, Any]:
        processor = processor_cls.from_pretrained(source, local_files_only=local_only)
        model = model_cls.from_pretrained(source, local_files_only=local_only,
                                          dtype=self.torch_dtype)
        return model.to(self.device).eval(), processor

    def _caption_batch(self, images: list["Image.Image"]) -> list[str]:
        import torch

        model, processor = self.model()
        inputs = processor(images=[im.convert("RGB") for im in images], return_tensors="pt")
        pixels = inputs["pixel_values"].to(self.device, self.torch_dtype)
        with torch.inference_mode():
            tokens = model.generate(pixel_values=pixels, **self.generation_kwargs())
        return [text.strip() for text in processor.batch_decode(tokens, skip_special_tokens=True)]

    def generation_kwargs(self) -> dict[str, Any]:
        """Decoding options passed to ``generate``."""
        return {"max_new_tokens": self.config.max_new_tokens, "min_length": self.config.min_length,
                "num_beams": self.config.num_beams, "do_sample": False}


@CAPTIONERS.register("blip2")
class Blip2Captioner(BlipCaptioner):
    """BLIP-2 captioner (Salesforce/blip2-opt-2.7b), unconditional captioning."""

    Config = Blip2Config

    def _load_model(self, source: str, local_only: bool) -> tuple[Any, Any]:
        from transformers import Blip2ForConditionalGeneration, Blip2Processor

        return self._load_with(Blip2ForConditionalGeneration, Blip2Processor, source, local_only)

    def generation_kwargs(self) -> dict[str, Any]:
        """As BLIP's, with ``min_length`` counted like BLIP's (one prompt token), not over the
        image query tokens that prefix BLIP-2's language-model input."""
        out = super().generation_kwargs()
        out["min_new_tokens"] = max(0, out.pop("min_length") - 1)
        return out
