"""The ``toynet`` target model: a small ResNet trained on the toy world, with planted units.

Weights live in ``<cache>/toynet/<key>/`` (``weights.pt`` + ``meta.json``) where ``key`` hashes
the training config and code versions.  On first use they come from the weights shipped in the
package when ``key`` is theirs (:mod:`dndbench.toyworld.weights`: the default config), else they
are trained (about 4 minutes on two CPU cores), under a file lock so parallel jobs train once.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from dndbench.errors import DataError
from dndbench.models.base import MODELS, ModelConfig, TargetModel
from dndbench.toyworld.train_toynet import TrainConfig

if TYPE_CHECKING:
    import torch
    from PIL import Image

log = logging.getLogger(__name__)


@dataclass
class ToyNetConfig(ModelConfig):
    """``seed``, ``train_images``, ``epochs`` and ``catalogue`` (the planted concepts:
    ``benchmark``, or ``milan`` for the network the toy MILAN learns from) select (and, on
    first use, train) the weights."""

    seed: int = 0
    # the training defaults, so the default model is the shipped one
    train_images: int = TrainConfig.train_images
    epochs: int = TrainConfig.epochs
    catalogue: str = "benchmark"


@MODELS.register("toynet")
class ToyNetModel(TargetModel[ToyNetConfig]):
    """ToyNet: shape classifier of toy-world images whose planted hidden units have known concepts."""

    Config = ToyNetConfig
    final_layer = "fc"
    input_size = 64
    track = "toy"  # the toy world's probe and backends by default

    def train_config(self) -> TrainConfig:
        """The full training config these options select."""
        c = self.config
        return TrainConfig(seed=c.seed, train_images=c.train_images, epochs=c.epochs,
                           catalogue=c.catalogue)

    def weights_fingerprint(self) -> str:
        from dndbench.toyworld.train_toynet import training_key

        return training_key(self.train_config())

    def weights_dir(self) -> Path:
        """The cache folder holding this config's ``weights.pt`` and ``meta.json``."""
        return self.cache.root / "toynet" / self.weights_fingerprint()

    def ensure_trained(self) -> Path:
        """The weights folder, training into it first if it is not complete."""
        folder = self.weights_dir()
        if (folder / "meta.json").exists():
            return folder
        with self.cache.lock(folder):
            if not (folder / "meta.json").exists():
                from dndbench.toyworld import weights
                from dndbench.toyworld.train_toynet import train

                if weights.install("toynet", folder.name, folder):  # the shipped weights
                    return folder
                log.warning("training toynet (first use, about 4 minutes on CPU) into %s", folder)
                train(self.train_config(), folder, progress=self.progress)
        return folder

    def meta(self) -> dict[str, Any]:
        """The trained model's ``meta.json`` (class names, planted units, training report)."""
        path = self.ensure_trained() / "meta.json"
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read {path} ({exc}); delete its folder to retrain") from exc

    def build(self, pretrained: bool) -> "torch.nn.Module":
        import torch

        from dndbench.toyworld.train_toynet import build_network

        net = build_network(self.train_config())
        if pretrained:
            path = self.ensure_trained() / "weights.pt"
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
                net.load_state_dict(state)
            except Exception as exc:  # a truncated or foreign file
                raise DataError(f"cannot load {path} ({exc}); delete its folder to retrain") from exc
        return net

    def transform(self) -> Callable[["Image.Image"], "torch.Tensor"]:
        from torchvision import transforms

        from dndbench.toyworld.network import MEAN, STD

        return transforms.Compose([
            transforms.Resize((self.input_size, self.input_size)),
            transforms.ToTensor(),
            transforms.Normalize(MEAN, STD),
        ])

    def class_names(self) -> list[str]:
        from dndbench.toyworld.world import SHAPES

        return list(SHAPES)

    def flagged_fc_units(self) -> list[int]:
        """The class units whose top held-out images disagree with their class (they fail the
        planted units' gate for "the main object is this class"; see docs/toyworld.md)."""
        return [int(u) for u in self.meta().get("flagged_fc_units", [])]

    def planted_concepts(self, layer: str) -> dict[int, str]:
        planted = self.meta()["planted"]
        return {int(unit): name for unit, name in planted.get(layer, {}).items()}
