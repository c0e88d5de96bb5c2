"""ToyDual: the one small network behind the toy CLIP (``vlm=toy``) and the toy captioner.

* an **image tower**, a 4-layer CNN on 64x64 images, whose pooled features feed
  - a projection into the shared embedding space (the toy CLIP's image encoder), and
  - one classifier head per caption *slot* (main shape, colour, texture, scene; distractor
    present, its shape and colour): the toy captioner reads their argmax through the
    canonical caption template, so it is a slot model, not a free-text decoder;
* a **text tower**: the mean of the word embeddings of the text's tokens (bag of words: word
  order is ignored) followed by an MLP into the shared space.

Both towers are trained together (see :mod:`dndbench.toyworld.train_toy_backends`); sharing the
image tower halves the training time the two toy backends cost on first use.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from dndbench.toyworld.captions import vocabulary
from dndbench.toyworld.world import COLOURS, SCENES, SHAPES, TEXTURES

if TYPE_CHECKING:
    from PIL import Image

#: caption slots and their classes, in head order; "distractor" is absent/present
SLOTS: dict[str, tuple[str, ...]] = {
    "shape": SHAPES, "colour": tuple(COLOURS), "texture": TEXTURES, "scene": SCENES,
    "distractor": ("absent", "present"), "distractor_shape": SHAPES,
    "distractor_colour": tuple(COLOURS),
}
INPUT_SIZE = 64


def _conv(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, 1, 1, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class ImageTower(nn.Module):
    """64x64 RGB -> pooled features: a 4x4-stride stem (16x16 map), then 3x3 layers at 16x16,
    8x8 and 4x4 (2x2 max-pools between them), then mean and max over the final map."""

    def __init__(self, widths: tuple[int, int, int, int]) -> None:
        super().__init__()
        a, b, c, d = widths
        self.body = nn.Sequential(nn.Conv2d(3, a, 6, 4, 1, bias=False), nn.BatchNorm2d(a),
                                  nn.ReLU(inplace=True), _conv(a, b), nn.MaxPool2d(2),
                                  _conv(b, c), nn.MaxPool2d(2), _conv(c, d))
        self.out_features = 2 * d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.body(x)
        return torch.cat([maps.mean((2, 3)), maps.amax((2, 3))], 1)


class TextTower(nn.Module):
    """Token ids (padded with 0) -> mean word embedding -> MLP."""

    def __init__(self, vocab_size: int, width: int, dim: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, width, padding_idx=0)
        self.mlp = nn.Sequential(nn.Linear(width, 2 * width), nn.ReLU(inplace=True),
                                 nn.Linear(2 * width, dim))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        mask = (ids != 0).float().unsqueeze(-1)
        mean = (self.embed(ids) * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return self.mlp(mean)


class ToyDual(nn.Module):
    """Image tower with projection and slot heads, text tower, learnable logit scale."""

    def __init__(self, widths: tuple[int, int, int, int] = (32, 48, 96, 128), dim: int = 64,
                 text_width: int = 64) -> None:
        super().__init__()
        self.image = ImageTower(widths)
        features = self.image.out_features
        self.project = nn.Sequential(nn.Linear(features, features), nn.ReLU(inplace=True),
                                     nn.Linear(features, dim))
        self.heads = nn.ModuleDict({slot: nn.Linear(features, len(classes))
                                    for slot, classes in SLOTS.items()})
        self.text = TextTower(len(vocabulary()), text_width, dim)
        self.logit_scale = nn.Parameter(torch.tensor(2.3))  # exp -> about 10

    def encode_image(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """L2-normalised image embeddings and slot logits."""
        feats = self.image(x)
        emb = F.normalize(self.project(feats), dim=-1)
        return emb, {slot: head(feats) for slot, head in self.heads.items()}

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        """L2-normalised text embeddings."""
        return F.normalize(self.text(ids), dim=-1)

    def scale(self) -> torch.Tensor:
        return self.logit_scale.exp().clamp(max=100.0)


# -- input preparation -----------------------------------------------------------------------
def normalise(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float input centred on 0."""
    return (images.float() / 255.0 - 0.5) / 0.25


def image_batch(images: list["Image.Image"]) -> torch.Tensor:
    """PIL images (any size) -> normalised (B, 3, 64, 64) input (bilinear resize if needed)."""
    import numpy as np
    from PIL import Image

    arrays = []
    for im in images:
        im = im.convert("RGB")
        if im.size != (INPUT_SIZE, INPUT_SIZE):
            im = im.resize((INPUT_SIZE, INPUT_SIZE), Image.Resampling.BILINEAR)
        arrays.append(np.asarray(im).transpose(2, 0, 1))
    return normalise(torch.from_numpy(np.stack(arrays)))


def text_batch(token_lists: list[list[int]]) -> torch.Tensor:
    """Token-id lists -> a (B, longest) tensor padded with 0."""
    longest = max(len(t) for t in token_lists)
    out = torch.zeros(len(token_lists), longest, dtype=torch.long)
    for row, tokens in enumerate(token_lists):
        out[row, :len(tokens)] = torch.tensor(tokens, dtype=torch.long)
    return out


def slots_to_caption(slots: dict[str, str]) -> str:
    """The canonical caption of predicted slot values (via a spec holding them)."""
    from dndbench.toyworld.captions import canonical_caption
    from dndbench.toyworld.world import ObjectSpec, SceneSpec

    objects = [ObjectSpec(slots["shape"], slots["colour"], slots["texture"])]
    if slots["distractor"] == "present":
        objects.append(ObjectSpec(slots["distractor_shape"], slots["distractor_colour"], "plain"))
    return canonical_caption(SceneSpec(slots["scene"], tuple(objects)))
