"""Offline-first loading of Hugging Face models shared by the foundation-model backends.

A :class:`HubBackend` names its weights by ``model_id`` (a hub id) unless its ``path`` option
points at a local folder.  Loading tries, in order: the ``path`` folder, a copy already in the
local Hugging Face cache (``local_files_only=True``), then the hub — and when none works raises a
one-line :class:`~dndbench.errors.BackendError` that names the model and the ``path`` option.
Loaded models are shared by every instance of a process with the same source, device and dtype.
"""
from __future__ import annotations

import hashlib
from abc import abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from dndbench.backends.base import Backend, BackendConfig
from dndbench.errors import BackendError, DndbenchError

#: loaded models of this process: (class, source, model id, device, dtype) -> model
_LOADED: dict[tuple[Any, ...], Any] = {}

#: ``precision`` option (:class:`~dndbench.backends.base.Precision`) -> torch dtype name
_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


@dataclass
class HubConfig(BackendConfig):
    """``model_id``: hub id of the weights; ``path``: a local model folder that replaces it."""

    model_id: str = ""
    path: str = ""


C = TypeVar("C", bound=HubConfig)


class HubBackend(Backend[C]):
    """A backend whose weights come from the Hugging Face hub or a local folder."""

    Config: type[BackendConfig] = HubConfig
    #: what the model is, for error messages ("captioner", "text-to-image pipeline", ...)
    kind_label = "model"

    @property
    def model_id(self) -> str:
        """The resolved ``path`` folder if set, else the hub id."""
        path = self.config.path
        return str(Path(path).expanduser().resolve()) if path else self.config.model_id

    def source(self) -> str:
        """Where the weights are loaded from (a folder or a hub id)."""
        return str(Path(self.config.path).expanduser()) if self.config.path else self.config.model_id

    @property
    def dtype_name(self) -> str:
        """Effective torch dtype name: half precision only on CUDA, float32 elsewhere."""
        return _DTYPES[self.config.precision] if self.device.startswith("cuda") else "float32"

    @property
    def torch_dtype(self) -> Any:
        import torch

        return getattr(torch, self.dtype_name)

    def params(self) -> dict[str, Any]:
        """Config minus identity/runtime fields, with the effective dtype instead of ``precision``."""
        out = super().params()
        for key in ("model_id", "path", "precision"):
            out.pop(key, None)
        out["dtype"] = self.dtype_name
        return out

    # -- loading ------------------------------------------------------------------------------
    @abstractmethod
    def _load_model(self, source: str, local_only: bool) -> Any:
        """Load the model from ``source``; with ``local_only`` nothing is downloaded."""

    def load_options(self) -> tuple[Any, ...]:
        """Options applied while loading (besides weights, device and dtype) that make a loaded
        model differ, e.g. a scheduler or fused LoRA weights; part of the key of shared models."""
        return ()

    def model(self) -> Any:
        """The loaded model, shared by instances with the same weights, device, dtype and
        :meth:`load_options`."""
        source = self.source()
        key = (type(self), source, self.model_id, self.device, self.dtype_name,
               *self.load_options())
        if key not in _LOADED:
            _LOADED[key] = load_offline_first(self._load_model, source, self._failure)
        return _LOADED[key]

    def _failure(self, source: str, reason: str) -> str:
        name = getattr(self, "registry_name", type(self).__name__)
        return (f"could not load {self.kind_label} {name!r} from {source!r} ({reason}); it needs "
                f"internet access to the Hugging Face hub or a local copy: set its `path` option "
                f"to a downloaded model folder")


def load_offline_first(load: Any, source: str, failure: Any) -> Any:
    """``load(source, local_only)`` from a folder, the local HF cache, then the hub.

    ``failure(source, reason)`` builds the one-line message of the :class:`BackendError`.
    """
    from dndbench.backends.embedder import hub_reachable

    is_local = Path(source).exists()
    if not is_local and (not source or source.startswith(("/", ".", "~"))):
        raise BackendError(failure(source, "no such folder"))
    if not is_local:
        try:
            return load(source, True)
        except DndbenchError:
            raise
        except Exception:  # not in the local Hugging Face cache: try the hub
            pass
        if not hub_reachable():
            raise BackendError(failure(source, "the Hugging Face hub is unreachable"))
    try:
        return load(source, is_local)
    except DndbenchError:
        raise
    except Exception as exc:
        raise BackendError(failure(source, one_line(exc))) from exc


def one_line(exc: BaseException, limit: int = 200) -> str:
    """``Type: first line of the message``, truncated to ``limit`` characters."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:limit]


def stable_seed(*parts: Any) -> int:
    """A 63-bit seed that depends only on ``parts`` (the same in every process and platform)."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)


def unload_models() -> None:
    """Forget every model loaded by a :class:`HubBackend` in this process."""
    _LOADED.clear()
