"""Writers of small on-disk fixtures for tests: image folders, corrupt images, checkpoints laid
out like real releases (the CSAIL Places365 ResNet-18) and their class lists.

Everything is generated from a seed, so fixtures are deterministic; torch is imported inside the
functions that need it.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

#: a few real lines of ``categories_places365.txt`` (index order), for readable fixture names
PLACES365_SAMPLE = ("/a/airfield", "/a/airplane_cabin", "/a/airport_terminal", "/a/alcove",
                    "/a/alley", "/a/amphitheater", "/a/amusement_arcade", "/a/amusement_park",
                    "/a/apartment_building/outdoor", "/a/aquarium", "/a/aqueduct", "/a/arcade",
                    "/a/arch", "/a/archaelogical_excavation", "/a/archive", "/a/arena/hockey")


def write_image(path: Path, color: tuple[int, int, int], size: tuple[int, int] = (40, 32)) -> Path:
    """A small solid-colour image with a lighter square in it (format from the suffix)."""
    from PIL import Image, ImageDraw

    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", size, color)
    light = tuple(min(255, c + 80) for c in color)
    ImageDraw.Draw(img).rectangle([size[0] // 4, size[1] // 4, size[0] // 2, size[1] // 2], fill=light)
    img.save(path)
    return path


def write_image_folder(root: Path, *, classes: int = 0, per_class: int = 3, count: int = 6,
                       suffix: str = ".png", seed: int = 0) -> list[Path]:
    """Write a flat folder of ``count`` images (``classes == 0``) or ``classes`` subfolders of
    ``per_class`` images each (the ImageNet val layout); returns the paths in sorted order."""
    import random

    rng = random.Random(seed)

    def color() -> tuple[int, int, int]:
        return (rng.randrange(256), rng.randrange(256), rng.randrange(256))

    if classes:
        paths = [write_image(root / f"n{c:08d}" / f"img_{i:03d}{suffix}", color())
                 for c in range(classes) for i in range(per_class)]
    else:
        paths = [write_image(root / f"ILSVRC2012_val_{i + 1:08d}{suffix}", color())
                 for i in range(count)]
    return sorted(paths, key=lambda p: p.relative_to(root).as_posix())


def write_corrupt_image(path: Path) -> Path:
    """A file with an image suffix whose content is not an image."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    return path


def write_places365_checkpoint(path: Path, *, seed: int = 0,
                               legacy: bool = False) -> dict[str, "torch.Tensor"]:
    """A random ``resnet18(num_classes=365)`` saved like the CSAIL release: ``{"epoch", "arch",
    "state_dict" (keys prefixed ``module.``), "best_prec1"}``; ``legacy`` uses the pre-1.6 torch
    file format of the 2017 file.  Returns the saved state dict without the prefix."""
    import torch
    from torchvision.models import resnet18

    torch.manual_seed(seed)
    state = {k: v.clone() for k, v in resnet18(num_classes=365).state_dict().items()}
    checkpoint: dict[str, Any] = {
        "epoch": 90, "arch": "resnet18", "best_prec1": 54.74,
        "state_dict": {f"module.{k}": v for k, v in state.items()},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path, _use_new_zipfile_serialization=not legacy)
    return state


def write_places365_categories(path: Path, count: int = 365) -> list[str]:
    """A ``categories_places365.txt``-style file (``/a/airfield 0``) of ``count`` classes; returns
    the raw category paths in index order (real names first, then ``/z/scene_<i>``)."""
    raws = [PLACES365_SAMPLE[i] if i < len(PLACES365_SAMPLE) else f"/z/scene_{i}"
            for i in range(count)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{raw} {i}\n" for i, raw in enumerate(raws)), encoding="utf-8")
    return raws


def write_state_dict(net: "torch.nn.Module", path: Path) -> dict[str, "torch.Tensor"]:
    """Save ``net``'s state dict (a plain dict of tensors) and return a copy of it."""
    import torch

    state = {k: v.clone() for k, v in net.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return state


def write_tiny_milan_checkpoint(path: Path, *, epochs: int = 10, seed: int = 0) -> Path:
    """A MILAN checkpoint (``describer=milan checkpoint=...``) with a tiny captioner and language
    model trained for ``epochs`` on the generated annotation folder of
    :mod:`dndbench.testing.milan_fixture` (seconds on a CPU); returns ``path``."""
    import torch

    from dndbench.describers.milan.annotations import load_milannotations
    from dndbench.describers.milan.model import EncoderSpec, Sizes, build_backbone
    from dndbench.describers.milan.training import FitConfig, train_on_units
    from dndbench.testing.milan_fixture import make_milannotations

    sizes = Sizes(embedding_size=16, hidden_size=32, lm_embedding_size=16, lm_hidden_size=32,
                  lm_layers=2, dropout=0.1, lm_dropout=0.1)
    spec = EncoderSpec(arch="toynet", input_size=16, mean=(0.5,) * 3, std=(0.25,) * 3,
                       options={"widths": [4, 4, 8, 8], "blocks": 1})
    units = load_milannotations(make_milannotations(path.parent / f"{path.stem}-annotations"))
    torch.manual_seed(0)
    milan = train_on_units(units, spec, build_backbone(spec), sizes,
                           FitConfig(epochs=epochs, lm_epochs=epochs, batch_size=4, lr=1e-2,
                                     hold_out=0.2, seed=seed, refit=False), progress=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    milan.save(path)
    return path
