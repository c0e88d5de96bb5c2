"""Probe sets read from a user's folder of images (ImageNet val, or any folder).

The folder may be flat (``val/ILSVRC2012_val_00000001.JPEG``) or hold one subfolder per class
(``val/n01440764/...``); every image file below ``root`` is used, in sorted order of its path
relative to ``root``.  The file list is read lazily, on first use.
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from dndbench.cache import stable_hash
from dndbench.errors import DataError
from dndbench.probes.base import PROBES, ProbeConfig, ProbeSet

if TYPE_CHECKING:
    from PIL import Image

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff",
                              ".ppm", ".pgm"})


def list_images(root: Path) -> list[str]:
    """Relative POSIX paths of all image files below ``root`` (hidden entries skipped), sorted."""
    found: list[str] = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        rel = Path(folder).relative_to(root)
        found.extend((rel / f).as_posix() for f in files
                     if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_EXTENSIONS)
    return sorted(found)


def open_rgb(path: Path) -> "Image.Image":
    """Open an image file fully decoded as RGB; DataError naming the file if it cannot be read."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot read image {path}: {exc}") from exc


@dataclass
class ImageFolderConfig(ProbeConfig):
    """Options of an image-folder probe set."""

    #: folder holding the images (searched recursively)
    root: str = ""
    #: use at most this many images (a fixed random subset, kept in sorted order); 0 = all
    max_images: int = 0
    #: seed of the subset drawn when ``max_images`` is set
    seed: int = 0


@PROBES.register("image_folder")
class ImageFolderProbe(ProbeSet[ImageFolderConfig]):
    """Images of a local folder (flat or one subfolder per class), in sorted path order."""

    Config = ImageFolderConfig
    #: example value shown when ``root`` is not set
    root_example = "/path/to/images"

    def __init__(self, config: ImageFolderConfig) -> None:
        super().__init__(config)
        self._files: list[str] | None = None
        self._fingerprint: str | None = None

    # -- file list -------------------------------------------------------------------------------
    @property
    def root(self) -> Path:
        """The image folder; DataError if it is not set or does not exist."""
        if not self.config.root:
            raise DataError(f"probe {self.config.name!r} needs its image folder: "
                            f"set probe.root={self.root_example}")
        root = Path(self.config.root).expanduser()
        if not root.is_dir():
            raise DataError(f"probe {self.config.name!r}: folder {root} does not exist "
                            f"(set probe.root={self.root_example})")
        return root

    @property
    def files(self) -> list[str]:
        """Relative paths of the images used, in index order."""
        if self._files is None:
            self._files = self._select(list_images(self.root))
        return self._files

    def _select(self, files: list[str]) -> list[str]:
        if not files:
            raise DataError(f"probe {self.config.name!r}: no image files "
                            f"({', '.join(sorted(IMAGE_EXTENSIONS))}) below {self.root}")
        if self.config.max_images < 0:
            raise DataError(f"probe.max_images must be >= 0, got {self.config.max_images}")
        if 0 < self.config.max_images < len(files):
            keep = random.Random(self.config.seed).sample(range(len(files)), self.config.max_images)
            files = [files[i] for i in sorted(keep)]
        return files

    def path(self, index: int) -> Path:
        """Absolute path of image ``index``."""
        return self.root / self.files[index]

    def label(self, index: int) -> str:
        """The class subfolder of image ``index`` ("" in a flat folder)."""
        parent = Path(self.files[index]).parent.as_posix()
        return "" if parent == "." else parent

    # -- ProbeSet API ----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.files)

    def image(self, index: int) -> "Image.Image":
        """Image ``index`` as RGB."""
        return open_rgb(self.path(index))

    def fingerprint(self) -> str:
        """Hash of the root and of every used file's relative path and size."""
        if self._fingerprint is None:
            root = self.root
            sizes = [(f, (root / f).stat().st_size) for f in self.files]
            self._fingerprint = stable_hash("image_folder/v1", str(root.resolve()), sizes)
        return self._fingerprint


@PROBES.register("imagenet_val")
class ImageNetValProbe(ImageFolderProbe):
    """ImageNet-1k validation images from a local folder (flat or one subfolder per class)."""

    root_example = "/path/to/imagenet/val"
