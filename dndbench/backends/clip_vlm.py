"""CLIP dual encoders (Hugging Face transformers): L2-normalised image and text embeddings.

``clip_vitb16`` is CLIP ViT-B/16, the image-image similarity model of DnD's step 3 (the released
code uses the OpenAI ``clip`` package; ``openai/clip-vit-base-patch16`` holds the same weights).
Inputs are encoded ``batch_size`` at a time, in fp16 on a GPU (``precision``); embeddings are
returned as float32.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dndbench.backends.base import VLMS, Precision, VisionLanguageModel
from dndbench.backends.hub import HubBackend, HubConfig

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image


@dataclass
class ClipVLMConfig(HubConfig):
    """The CLIP weights, their precision and the inputs encoded per call."""

    model_id: str = "openai/clip-vit-base-patch16"
    precision: Precision = Precision.fp16  # half precision on CUDA only
    batch_size: int = 64


@VLMS.register("clip_vitb16")
class ClipVLM(HubBackend[ClipVLMConfig], VisionLanguageModel[ClipVLMConfig]):
    """CLIP ViT-B/16 (openai/clip-vit-base-patch16) image and text embeddings."""

    Config = ClipVLMConfig
    kind_label = "vision-language model"

    def _load_model(self, source: str, local_only: bool) -> tuple[Any, Any]:
        from transformers import CLIPModel, CLIPProcessor

        processor = CLIPProcessor.from_pretrained(source, local_files_only=local_only)
        model: Any = CLIPModel.from_pretrained(source, local_files_only=local_only,
                                               dtype=self.torch_dtype)
        return model.to(self.device).eval(), processor

    def _encode_images(self, images: list["Image.Image"]) -> "np.ndarray":
        import torch

        model, processor = self.model()
        inputs = processor(images=[im.convert("RGB") for im in images], return_tensors="pt")
        with torch.inference_mode():
            out = model.get_image_features(
                pixel_values=inputs["pixel_values"].to(self.device, self.torch_dtype))
        return _unit_rows(out)

    def _encode_texts(self, texts: list[str]) -> "np.ndarray":
        import torch

        model, processor = self.model()
        length = model.config.text_config.max_position_embeddings
        inputs = processor(text=list(texts), padding=True, truncation=True, max_length=length,
                           return_tensors="pt")
        with torch.inference_mode():
            out = model.get_text_features(input_ids=inputs["input_ids"].to(self.device),
                                          attention_mask=inputs["attention_mask"].to(self.device))
        return _unit_rows(out)


def _unit_rows(features: Any) -> "np.ndarray":
    """float32 rows of a features tensor (or model output) scaled to unit L2 norm."""
    import torch

    from dndbench.backends.embedder import normalise

    tensor = features if isinstance(features, torch.Tensor) else features.pooler_output
    return normalise(tensor.float().cpu().numpy())
