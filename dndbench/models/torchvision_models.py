"""Torchvision ImageNet classifiers (ResNets, ViT-B/16) as target models.

One generic class, :class:`TorchvisionClassifier`, with a small subclass per registered name
(``resnet18``, ``resnet50``, ...) that fixes the torchvision architecture id and its output layer.
Trained weights are torchvision's ``IMAGENET1K_V1`` (what the DnD code loads), fetched with
torchvision's own downloader, or a local state-dict file given as ``model.weights_path``.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, cast

from dndbench.errors import BackendError, ConfigError, DataError
from dndbench.models.base import MODELS, ModelConfig, TargetModel

if TYPE_CHECKING:
    import torch
    from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_RANDOM = ("", "none", "random")


def imagenet_transform(resize: int = 256, crop: int = 224) -> Callable[["Image.Image"], "torch.Tensor"]:
    """Resize / CenterCrop / ImageNet mean-std normalisation (the classic ImageNet preprocessing)."""
    from torchvision import transforms

    return transforms.Compose([
        transforms.Resize(resize),
        transforms.CenterCrop(crop),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def unwrap_state_dict(obj: Any, source: str) -> dict[str, Any]:
    """The state dict inside a loaded checkpoint: unwraps ``{"state_dict": ...}`` and strips the
    ``module.`` prefix that ``torch.nn.DataParallel`` adds to every key."""
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj:
        raise DataError(f"checkpoint {source} holds no state dict (got {type(obj).__name__}); "
                        f"expected a dict of tensors or {{'state_dict': ...}}")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in obj.items()}


def load_state_dict_file(path: str | Path, trusted: bool = False) -> dict[str, Any]:
    """Read a local checkpoint and return its (unwrapped) state dict.

    Loads with ``weights_only=True`` (no arbitrary code) unless ``trusted``."""
    import pickle

    import torch

    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"checkpoint file {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not trusted)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        hint = "" if trusted else " (if it is a pickle you trust, set model.trust_checkpoint=true)"
        raise DataError(f"cannot read checkpoint {path}: {first}{hint}") from exc
    return unwrap_state_dict(obj, str(path))


def load_into(net: "torch.nn.Module", state: dict[str, Any], source: str) -> None:
    """``load_state_dict(strict=True)`` with a one-line DataError on mismatching keys or shapes."""
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:300]
        raise DataError(f"checkpoint {source} does not fit {type(net).__name__}: {detail}") from exc


def read_class_strings(path: str | Path, expected: int, option: str) -> list[str]:
    """One class string per line of ``path`` (trailing blank lines dropped); DataError unless
    there are ``expected`` of them."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise DataError(f"{option}: file {file} does not exist; give a file with one class "
                        f"string per line (line i = unit i)")
    lines = [line.strip() for line in file.read_text(encoding="utf-8").splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    if len(lines) != expected:
        raise DataError(f"{option}: {file} lists {len(lines)} class strings; the model has "
                        f"{expected} classes")
    return lines


def file_stamp(path: str) -> str:
    """Size and mtime of a local file (empty when ``path`` is empty or not a file)."""
    if not path or not os.path.isfile(os.path.expanduser(path)):
        return ""
    st = os.stat(os.path.expanduser(path))
    return f"{st.st_size}:{int(st.st_mtime)}"


@dataclass
class TorchvisionConfig(ModelConfig):
    """Which weights a torchvision classifier loads."""

    #: torchvision weights enum member (``IMAGENET1K_V1``); "" or "none" -> random weights
    weights: str = "IMAGENET1K_V1"
    #: local state-dict file to load instead of downloading ``weights``
    weights_path: str = ""
    #: load ``weights_path`` with full pickle (``weights_only=False``); only for trusted files
    trust_checkpoint: bool = False
    #: file with one class string per line (line i = unit i), such as CLIP-Dissect's
    #: ``imagenet_labels.txt`` ("tench, Tinca tinca"), the strings the papers compare final-layer
    #: descriptions with; empty: torchvision's short category names.  A run fills it from
    #: ``data.published`` (``$DNDBENCH_PUBLISHED``) when that is set (``dndbench.config``).
    class_strings: str = ""


class TorchvisionClassifier(TargetModel[TorchvisionConfig]):
    """A torchvision ImageNet classifier; subclasses set ``arch`` (a ``torchvision.models`` id)."""

    Config = TorchvisionConfig
    #: torchvision model id passed to ``torchvision.models.get_model``
    arch: str = ""
    #: the file of the released data folder (``data.published``) with this model's class strings
    class_strings_file = "imagenet_labels.txt"

    # -- weights enum ----------------------------------------------------------------------------
    def _weights_enum(self) -> Any:
        """The torchvision weights enum member named by the config, or None for random weights."""
        from torchvision.models import get_model_weights

        name = self.config.weights.strip()
        if name.lower() in _RANDOM:
            return None
        enum = get_model_weights(self.arch)
        try:
            return enum[name]
        except KeyError:
            options = ", ".join(m.name for m in enum)
            raise ConfigError(f"model {self.config.name!r}: unknown weights {name!r}; "
                              f"choose one of {options} or 'none'") from None

    def _meta_weights(self) -> Any:
        """Weights whose metadata (classes, preprocessing) describe this model: the configured
        ones, else the architecture's default (the outputs are ImageNet classes either way)."""
        from torchvision.models import get_model_weights

        return self._weights_enum() or get_model_weights(self.arch).DEFAULT

    # -- TargetModel API -------------------------------------------------------------------------
    def build(self, pretrained: bool) -> "torch.nn.Module":
        """The architecture; with ``pretrained``, the configured weights (file or download)."""
        from torchvision.models import get_model

        if not pretrained:
            return get_model(self.arch, weights=None)
        if self.config.weights_path:
            net = get_model(self.arch, weights=None)
            state = load_state_dict_file(self.config.weights_path, self.config.trust_checkpoint)
            load_into(net, state, self.config.weights_path)
            return net
        weights = self._weights_enum()
        if weights is None:
            return get_model(self.arch, weights=None)
        return self._download(weights)

    def _download(self, weights: Any) -> "torch.nn.Module":
        from torchvision.models import get_model

        try:
            return get_model(self.arch, weights=weights)
        except (OSError, RuntimeError) as exc:  # URLError is an OSError; bad hashes a RuntimeError
            reason = " ".join(str(exc).split())[:200] or type(exc).__name__
            raise BackendError(
                f"could not download {self.arch} weights {weights.name} from {weights.url} "
                f"({reason}); connect to the internet once (torch caches the file), or download it "
                f"yourself and set model.weights_path=/path/to/file.pth") from exc

    def transform(self) -> Callable[["Image.Image"], "torch.Tensor"]:
        """The weights' own preprocessing (``weights.transforms()``); the classic ImageNet one for
        random weights."""
        weights = self._weights_enum()
        return weights.transforms() if weights is not None else imagenet_transform()

    def class_names(self) -> list[str]:
        """The ``class_strings`` file's lines when it is set, else ImageNet class names from
        torchvision's weight metadata (available offline)."""
        if self.config.class_strings:
            return read_class_strings(self.config.class_strings, 1000, "model.class_strings")
        return list(self._meta_weights().meta["categories"])

    def weights_fingerprint(self) -> str:
        """Config (less ``class_strings``, which names units and does not change activations)
        plus size/mtime of a local weights file."""
        config = dataclasses.replace(self.config, class_strings="")
        return f"{config!r}|{file_stamp(self.config.weights_path)}"


#: registered name -> (torchvision arch id, output layer)
ARCHITECTURES: dict[str, tuple[str, str]] = {
    "resnet18": ("resnet18", "fc"),
    "resnet34": ("resnet34", "fc"),
    "resnet50": ("resnet50", "fc"),
    "resnet101": ("resnet101", "fc"),
    "resnet152": ("resnet152", "fc"),
    "vit_b_16": ("vit_b_16", "heads.head"),
}

#: registered name -> its class
CLASSES: dict[str, type[TorchvisionClassifier]] = {}


def _define(name: str, arch: str, final_layer: str) -> type[TorchvisionClassifier]:
    cls = type(f"TorchvisionClassifier_{name}", (TorchvisionClassifier,), {
        "__doc__": f"torchvision {arch}, ImageNet-1k (IMAGENET1K_V1 weights by default).",
        "__module__": __name__,
        "arch": arch,
        "final_layer": final_layer,
    })
    return cast("type[TorchvisionClassifier]", MODELS.register(name)(cls))


for _name, (_arch, _final) in ARCHITECTURES.items():
    CLASSES[_name] = _define(_name, _arch, _final)
