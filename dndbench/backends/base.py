"""What every backend kind shares, and the interface of each kind.

Backend kinds — captioner, llm, text2image, vlm, embedder — each have a registry listed in
:data:`dndbench.config.BACKEND_REGISTRIES` and are Hydra config groups (``captioner=blip``).
A backend class takes ``(config, call_cache=, cache_dir=)``; :meth:`Backend.cached` routes every
batch of model calls through the persistent :class:`~dndbench.backends.call_cache.CallCache`, so
the same input with the same model and parameters is computed once across runs and processes.
"""
from __future__ import annotations

import hashlib
import io
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Generic, Sequence, TypeVar

from dndbench.backends.call_cache import CallCache, call_key
from dndbench.cache import default_cache_dir
from dndbench.registry import Choice, ComponentConfig, Registry

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image


class Precision(Choice):
    """Floating-point precision of a backend's weights."""

    fp32 = "fp32"
    fp16 = "fp16"
    bf16 = "bf16"


@dataclass
class BackendConfig(ComponentConfig):
    """Options every backend has: ``device`` (``auto`` = cuda when available) and ``precision``
    (``fp32``, ``fp16``, ``bf16``; half precision only takes effect on a GPU)."""

    device: str = "auto"
    precision: Precision = Precision.fp32
    batch_size: int = 16


C = TypeVar("C", bound=BackendConfig)


class Backend(ABC, Generic[C]):
    """Base class of the expensive foundation-model wrappers; ``Backend[MyConfig]`` (or a kind:
    ``Captioner[MyConfig]``) with ``Config = MyConfig`` types ``self.config``."""

    Config: type[BackendConfig] = BackendConfig
    #: bump when a change alters outputs: part of every call-cache key
    version: str = "1"

    def __init__(self, config: C, call_cache: CallCache | None = None,
                 cache_dir: Path | str | None = None) -> None:
        self.config: C = config
        self.call_cache = call_cache
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        #: inputs actually computed (call-cache misses), for run records and benchmarks
        self.computed = 0

    @property
    def device(self) -> str:
        from dndbench.activations import pick_device

        return pick_device(self.config.device)

    @property
    def model_id(self) -> str:
        """Identity of the weights in cache keys (a hub id or a path)."""
        return type(self).__name__

    def params(self) -> dict[str, Any]:
        """Parameters that change outputs (default: the whole config minus device/batch size)."""
        out = asdict(self.config)
        for key in ("device", "batch_size", "name"):
            out.pop(key, None)
        return out

    def key(self, op: str, data: Any) -> str:
        name = getattr(self, "registry_name", type(self).__name__)
        return call_key(f"{name}:{op}", self.model_id, [self.version, self.params()], data)

    def cached(self, op: str, inputs: Sequence[Any], keys: Sequence[Any],
               compute: Callable[[list[Any]], list[Any]]) -> list[Any]:
        """Results of ``compute`` for ``inputs``, each looked up by its key part first.

        ``keys[i]`` identifies ``inputs[i]`` (e.g. a text, an image hash); equal keys are computed
        once.  ``compute`` gets the missing inputs (in batches of ``config.batch_size``) and
        returns one JSON/bytes/array value per input.
        """
        full = [self.key(op, k) for k in keys]
        found = self.call_cache.get_many(set(full)) if self.call_cache is not None else {}
        todo: dict[str, Any] = {}
        for key, item in zip(full, inputs):
            if key not in found and key not in todo:
                todo[key] = item
        if todo:
            pending = list(todo.items())
            size = max(1, int(self.config.batch_size))
            for start in range(0, len(pending), size):
                chunk = pending[start:start + size]
                values = compute([item for _, item in chunk])
                new = dict(zip((k for k, _ in chunk), values))
                found.update(new)
                if self.call_cache is not None:
                    self.call_cache.put_many(new)
            self.computed += len(todo)
        return [found[k] for k in full]


def image_key(image: "Image.Image") -> str:
    """Content hash of an image (mode, size and pixels)."""
    digest = hashlib.sha256(f"{image.mode}{image.size}".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


def png_bytes(image: "Image.Image") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def png_image(data: bytes) -> "Image.Image":
    from PIL import Image

    return Image.open(io.BytesIO(data)).convert("RGB")


# -- the interface of each kind ----------------------------------------------------------------
class Captioner(Backend[C]):
    """Image -> caption."""

    def caption(self, images: Sequence["Image.Image"]) -> list[str]:
        """One caption per image (cached by image content)."""
        return self.cached("caption", list(images), [image_key(im) for im in images],
                           self._caption_batch)

    @abstractmethod
    def _caption_batch(self, images: list["Image.Image"]) -> list[str]: ...


#: a chat conversation: [{"role": "system"|"user"|"assistant", "content": "..."}]
Messages = list[dict[str, str]]


class LLM(Backend[C]):
    """Chat model: conversation -> answer text."""

    def chat(self, conversations: Sequence[Messages]) -> list[str]:
        """One answer per conversation (cached by conversation and parameters)."""
        return self.cached("chat", list(conversations), list(conversations), self._chat_batch)

    @abstractmethod
    def _chat_batch(self, conversations: list[Messages]) -> list[str]: ...


class TextToImage(Backend[C]):
    """Prompt -> images.  Image ``i`` of a prompt depends only on (prompt, seed, i), so asking
    for Q' <= Q images returns the first Q' of the Q images (sweeps over Q share work)."""

    def generate(self, prompts: Sequence[str], n: int, seed: int = 0) -> list[list["Image.Image"]]:
        """``n`` images for each prompt."""
        items = [(p, seed, i) for p in prompts for i in range(n)]
        data = self.cached("generate", items, items, self._generate_items)
        images = [png_image(d) for d in data]
        return [images[j * n:(j + 1) * n] for j in range(len(prompts))]

    @abstractmethod
    def _generate_items(self, items: list[tuple[str, int, int]]) -> list[bytes]:
        """PNG bytes of image ``i`` of ``prompt`` under ``seed`` for each (prompt, seed, i)."""


class VisionLanguageModel(Backend[C]):
    """A CLIP-like dual encoder: images and texts into one L2-normalised space."""

    def encode_images(self, images: Sequence["Image.Image"]) -> "np.ndarray":
        import numpy as np

        rows = self.cached("image", list(images), [image_key(im) for im in images],
                           lambda batch: list(self._encode_images(batch)))
        return np.stack(rows).astype(np.float32) if rows else np.zeros((0, 0), np.float32)

    def encode_texts(self, texts: Sequence[str]) -> "np.ndarray":
        import numpy as np

        rows = self.cached("text", list(texts), list(texts),
                           lambda batch: list(self._encode_texts(batch)))
        return np.stack(rows).astype(np.float32) if rows else np.zeros((0, 0), np.float32)

    @abstractmethod
    def _encode_images(self, images: list["Image.Image"]) -> "np.ndarray": ...

    @abstractmethod
    def _encode_texts(self, texts: list[str]) -> "np.ndarray": ...


CAPTIONERS: Registry[Captioner[Any]] = Registry("captioner")
LLMS: Registry[LLM[Any]] = Registry("llm")
TEXT2IMAGE: Registry[TextToImage[Any]] = Registry("text2image")
VLMS: Registry[VisionLanguageModel[Any]] = Registry("vlm")
