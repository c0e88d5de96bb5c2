"""ResNet-18 trained on Places365 (the CSAIL release used by DnD, CLIP-Dissect and NetDissect).

The CSAIL checkpoint is a ``{"state_dict": ...}`` dict saved from ``torch.nn.DataParallel``
(every key starts with ``module.``); it is converted on load into
``torchvision.models.resnet18(num_classes=365)``.  Checkpoint and class list are given as URLs
(downloaded once into the cache) or local paths; a URL written ``URL#sha256=<hex>`` is checked
against that SHA-256 (:func:`dndbench.downloads.download`; CSAIL publishes no checksum, so the
default URLs are not pinned).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable
from urllib.parse import urlparse

from dndbench.cache import Cache, stable_hash
from dndbench.downloads import download, split_pinned
from dndbench.errors import BackendError, DataError
from dndbench.models.base import MODELS, ModelConfig, TargetModel
from dndbench.models.torchvision_models import (
    file_stamp,
    imagenet_transform,
    load_into,
    load_state_dict_file,
)

if TYPE_CHECKING:
    import torch
    from PIL import Image

PLACES365_CHECKPOINT_URL = "http://places2.csail.mit.edu/models_places365/resnet18_places365.pth.tar"
PLACES365_CATEGORIES_URL = ("https://raw.githubusercontent.com/csailvision/places365/master/"
                            "categories_places365.txt")
NUM_PLACES365_CLASSES = 365
_URL_SCHEMES = ("http", "https", "ftp", "file")


def is_url(source: str) -> bool:
    """True for ``http(s)://``, ``ftp://`` and ``file://`` sources."""
    return urlparse(source).scheme in _URL_SCHEMES


def fetch(source: str, cache: Cache, option: str) -> Path:
    """A local path for ``source``: the path itself, or the URL downloaded once into the cache.

    ``option`` names the config option (``model.checkpoint``) in error messages.
    """
    if not is_url(source):
        path = Path(source).expanduser()
        if not path.is_file():
            raise DataError(f"{option}: file {path} does not exist; give an existing file or a URL")
        return path
    name = Path(urlparse(source).path).name or "download"
    path = cache.root / "downloads" / f"{stable_hash(source, length=10)}-{name}"
    if path.exists():
        return path
    with cache.lock(path):
        if not path.exists():
            _download(source, path, option, f"{option}=/path/to/{name}")
    return path


def _download(source: str, path: Path, option: str, fix: str) -> None:
    """Copy ``source`` (``URL#sha256=<hex>`` pins its checksum) to ``path`` atomically; a
    one-line BackendError (ending in ``fix``) when it fails, a DataError when the checksum differs."""
    url, sha256 = split_pinned(source, option)
    try:
        download(url, path, sha256=sha256, fix=f"download the file yourself and set {fix}")
    except OSError as exc:  # URLError, HTTPError, timeouts
        reason = getattr(exc, "reason", None) or exc
        raise BackendError(f"could not download {url} ({reason}); connect to the internet, or "
                           f"download the file yourself and set {fix}") from exc


def clean_category(raw: str) -> str:
    """``/a/arena/hockey`` -> ``arena hockey``; ``/b/bus_interior`` -> ``bus interior``."""
    parts = [p for p in raw.strip().split("/") if p]
    if len(parts) > 1 and len(parts[0]) == 1:  # drop the leading initial-letter folder
        parts = parts[1:]
    return " ".join(parts).replace("_", " ").strip()


def parse_categories(text: str, source: str) -> list[str]:
    """Class names, in index order, from ``categories_places365.txt`` (``/a/airfield 0`` lines)."""
    by_index: dict[int, str] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split()
        try:
            index = int(fields[-1]) if len(fields) > 1 else len(by_index)
        except ValueError:
            raise DataError(f"{source} line {lineno}: expected '<category> <index>', "
                            f"got {line.strip()!r}") from None
        by_index[index] = clean_category(fields[0])
    if sorted(by_index) != list(range(len(by_index))):
        raise DataError(f"{source}: class indices are not 0..{len(by_index) - 1}")
    return [by_index[i] for i in range(len(by_index))]


@dataclass
class Places365Config(ModelConfig):
    """Where the checkpoint and the class list come from."""

    #: URL (``URL#sha256=<hex>`` checks it) or local path of ``resnet18_places365.pth.tar``
    checkpoint: str = PLACES365_CHECKPOINT_URL
    #: URL (``URL#sha256=<hex>`` checks it) or local path of ``categories_places365.txt``
    categories: str = PLACES365_CATEGORIES_URL
    #: load the checkpoint with full pickle (``weights_only=False``); only for trusted files
    trust_checkpoint: bool = False


@MODELS.register("resnet18_places365")
class Places365ResNet18(TargetModel[Places365Config]):
    """ResNet-18 trained on Places365 (CSAIL checkpoint); 365 scene classes."""

    Config = Places365Config
    final_layer = "fc"

    def __init__(self, config: Places365Config) -> None:
        super().__init__(config)
        self._class_names: list[str] | None = None

    def build(self, pretrained: bool) -> "torch.nn.Module":
        """``resnet18(num_classes=365)``; with ``pretrained`` the converted CSAIL weights."""
        from torchvision.models import resnet18

        net = resnet18(num_classes=NUM_PLACES365_CLASSES)
        if pretrained:
            path = fetch(self.config.checkpoint, self.cache, "model.checkpoint")
            load_into(net, load_state_dict_file(path, self.config.trust_checkpoint), str(path))
        return net

    def transform(self) -> Callable[["Image.Image"], "torch.Tensor"]:
        """Resize(256) / CenterCrop(224) / ImageNet mean-std, as in the CSAIL and DnD code."""
        return imagenet_transform()

    def class_names(self) -> list[str]:
        """The 365 readable scene names (``arena hockey``), from the categories file."""
        if self._class_names is None:
            path = fetch(self.config.categories, self.cache, "model.categories")
            names = parse_categories(path.read_text(encoding="utf-8"), str(path))
            if len(names) != NUM_PLACES365_CLASSES:
                raise DataError(f"{path} lists {len(names)} classes; Places365 has "
                                f"{NUM_PLACES365_CLASSES}")
            self._class_names = names
        return list(self._class_names)

    def weights_fingerprint(self) -> str:
        """Config plus size/mtime of a local checkpoint file."""
        return f"{self.config!r}|{file_stamp(self.config.checkpoint)}"
