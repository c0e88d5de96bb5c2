"""ToyDual: the one small network behind the toy CLIP (``vlm=toy``) and the toy captioner.

Image side (:meth:`ToyDual.encode_image_dense`):

* a **global tower** (:class:`ImageTower`, ToyNet's layout) on the 64x64 view, whose 16x16 map
  also predicts per cell which object it shows (background, main object, second object) and
  the texture there (the *dense* heads);
* **object boxes** read from those predicted masks (:func:`object_boxes`), an **object tower**
  that reads each object resampled to 32x32 (the main object and the second one through the
  same tower, at one scale), and a **texture tower** on an unscaled patch at the main object's
  centre (:class:`SlotPooling`);
* one linear classifier head per caption *slot* (:data:`SLOTS`: whether the view shows an
  object; the main object's shape, colour, texture, outline and size; the scene; a second
  object, its shape and colour): the toy captioner writes their argmax out as the canonical
  caption (:func:`dndbench.toyworld.captions.slots_caption`), so it is a slot model, not a
  free-text decoder; and a projection of all pooled vectors into the shared embedding space
  (the toy CLIP's image encoder).

Text side: the mean of the word embeddings of the text's tokens (bag of words: word order is
ignored) followed by an MLP into the shared space.

Both sides are trained together (see :mod:`dndbench.toyworld.train_toy_backends`).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from dndbench.toyworld.captions import DISTRACTOR_SLOTS, SLOT_VALUES, vocabulary
from dndbench.toyworld.network import BasicBlock

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

#: caption slots and their classes, in head order
SLOTS: dict[str, tuple[str, ...]] = dict(SLOT_VALUES)
INPUT_SIZE = 64


class ImageTower(nn.Module):
    """64x64 RGB -> feature maps, ToyNet's layout (:mod:`dndbench.toyworld.network`): a 5x5
    stride-2 stem and a 3x3 max-pool (16x16), then one basic residual block per stage at 16x16,
    16x16 (``f16``), 8x8 (``f8``) and 4x4 (``f4``)."""

    def __init__(self, widths: tuple[int, int, int, int]) -> None:
        super().__init__()
        a, b, c, d = widths
        self.stem = nn.Sequential(nn.Conv2d(3, a, 5, 2, 2, bias=False), nn.BatchNorm2d(a),
                                  nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1), BasicBlock(a, a))
        self.stage16 = BasicBlock(a, b)
        self.stage8 = BasicBlock(b, c, 2)
        self.stage4 = BasicBlock(c, d, 2)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f16 = self.stage16(self.stem(x))
        f8 = self.stage8(f16)
        return {"f16": f16, "f8": f8, "f4": self.stage4(f8)}


#: the dense (per-cell) heads as (input map, classes, map side): which object a 16x16 cell
#: shows (background, main, distractor) and the texture of the object there
DENSE_HEADS: dict[str, tuple[str, int, int]] = {
    "part16": ("f16", 3, 16), "texture16": ("f16", len(SLOT_VALUES["texture"]), 16),
}
#: hidden channels of the ``part16`` head
PART_HIDDEN = 32
#: side of the normalised object patches the object tower reads (main object and distractor)
OBJECT_PATCH = 32
#: side (pixels of the view) of the unscaled patch at the main object's centre that the texture
#: tower reads: textures keep their size, however large the object
TEXTURE_PATCH = 24
#: an object's box is centred on its mask's centre of mass, with a half side this many times
#: the mask's larger standard deviation (1.1 radii for a disc)
BOX_SPREAD = 2.2
#: cells (of the 16x16 map) around its most likely cell that a distractor's box is read from
DISTRACTOR_REACH = 4


def object_boxes(weights: torch.Tensor, min_mass: float = 0.5
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Square boxes ``(cx, cy, half)`` (fractions of the side) around the mass of ``weights``
    (B, H, W) in [0, 1], and whether each was found: the mass is at least ``min_mass`` cells of
    a 16x16 map (else the box is the whole view)."""
    b, h, w = weights.shape
    ys = (torch.arange(h, dtype=weights.dtype, device=weights.device) + 0.5) / h
    xs = (torch.arange(w, dtype=weights.dtype, device=weights.device) + 0.5) / w
    mass = weights.sum((1, 2))
    safe = mass.clamp(min=1e-6)
    cx = (weights.sum(1) * xs).sum(1) / safe
    cy = (weights.sum(2) * ys).sum(1) / safe
    vx = (weights.sum(1) * (xs[None] - cx[:, None]) ** 2).sum(1) / safe
    vy = (weights.sum(2) * (ys[None] - cy[:, None]) ** 2).sum(1) / safe
    half = (BOX_SPREAD * torch.maximum(vx, vy).sqrt()).clamp(min=1.5 / w)
    found = mass >= min_mass * (h * w) / 256
    full = torch.tensor([0.5, 0.5, 0.5], dtype=weights.dtype, device=weights.device)
    return torch.where(found[:, None], torch.stack([cx, cy, half], 1), full), found


def part_weights(part_probs: torch.Tensor, k: int) -> torch.Tensor:
    """Object ``k``'s (1 main, 2 distractor) box weights from part probabilities (B, 3, H, W),
    or from the shares of its pixels per cell: 0 below a quarter of the peak, rising to 1 at
    three quarters.  The main object's peak counts as at least 0.3 (a thin outline covers a
    third to a half of its cells, and its probabilities are as low); the distractor's as 1, and
    only the cells within :data:`DISTRACTOR_REACH` of its most likely cell count (a small
    object: stray probability elsewhere would blur its box)."""
    p = part_probs[:, k]
    peak = p.amax((1, 2), keepdim=True)
    weights = ((p / peak.clamp(min=0.3 if k == 1 else 1.0) - 0.25) * 2).clamp(0.0, 1.0)
    if k == 1:
        return weights
    side = p.shape[-1]
    best = p.flatten(1).argmax(1)
    rows, cols = torch.div(best, side, rounding_mode="floor"), best % side
    grid = torch.arange(side, device=p.device)
    near_rows = (grid[None] - rows[:, None]).abs() <= DISTRACTOR_REACH
    near_cols = (grid[None] - cols[:, None]).abs() <= DISTRACTOR_REACH
    return weights * (near_rows[:, :, None] & near_cols[:, None, :])


def object_patches(x: torch.Tensor, boxes: torch.Tensor, size: int,
                   supersample: int = 2) -> torch.Tensor:
    """The square ``boxes`` (B, 3: cx, cy, half) of the input views ``x``, resampled to
    ``size`` x ``size`` (sampled ``supersample`` times finer and averaged, against aliasing;
    zeros outside the view)."""
    cx, cy, half = boxes.unbind(1)
    zero = torch.zeros_like(cx)
    theta = torch.stack([torch.stack([2 * half, zero, 2 * cx - 1], 1),
                         torch.stack([zero, 2 * half, 2 * cy - 1], 1)], 1)
    fine = size * supersample
    grid = F.affine_grid(theta, [len(x), x.shape[1], fine, fine], align_corners=False)
    patches = F.grid_sample(x, grid, align_corners=False)
    return F.avg_pool2d(patches, supersample) if supersample > 1 else patches


class PatchTower(nn.Module):
    """A patch -> features: a 3x3 stem, then stride-2 basic residual blocks, mean and max over
    the final map."""

    def __init__(self, widths: tuple[int, ...]) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, widths[0], 3, 1, 1, bias=False),
                                   nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True)]
        layers += [BasicBlock(c_in, c_out, 2) for c_in, c_out in zip(widths, widths[1:])]
        self.body = nn.Sequential(*layers)
        self.out_features = 2 * widths[-1]

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        maps = self.body(patches)
        return torch.cat([maps.mean((2, 3)), maps.amax((2, 3))], 1)


class SlotPooling(nn.Module):
    """Feature maps -> the vectors the slot heads read.

    * ``scene``: mean and max of the 4x4 map; the 16x16 and 8x8 maps averaged under the
      predicted main and distractor masks (the ``part16`` head), and the masks' mean and peak
      (the objects' size and presence);
    * ``main`` and ``distractor``: the object tower's features of each object's normalised
      32x32 patch (one tower for both, so both shapes are learnt from the same examples at one
      scale) and the patch's box; zeros for a distractor whose mask is not found;
    * ``texture``: the texture tower's features of an unscaled patch at the main object.

    Boxes come from the predicted masks unless given (training gives the true ones, but in
    ``predicted_rows``)."""

    def __init__(self, widths: tuple[int, int, int, int]) -> None:
        super().__init__()
        a, b, c, d = widths
        channels = {"f16": b, "g8": c + d}
        self.dense = nn.ModuleDict({name: nn.Conv2d(channels[source], classes, 1)
                                    for name, (source, classes, _) in DENSE_HEADS.items()
                                    if name != "part16"})
        # which object a cell shows: its 3x3 neighbourhood, and the objects' sizes (the 8x8
        # maps' context)
        self.part_local = nn.Conv2d(b, PART_HIDDEN, 3, 1, 1)
        self.part_context = nn.Conv2d(c + d, PART_HIDDEN, 1)
        self.part_out = nn.Conv2d(PART_HIDDEN, DENSE_HEADS["part16"][1], 1)
        self.objects = PatchTower(widths)
        self.textures = PatchTower((a, b, c))
        self.sizes = {"scene": 2 * d + 2 * (b + c + d) + 4,
                      "main": self.objects.out_features + 3,
                      "distractor": self.objects.out_features + 3,
                      "texture": self.textures.out_features}

    def forward(self, x: torch.Tensor, maps: dict[str, torch.Tensor],
                boxes: dict[int, torch.Tensor] | None = None,
                found: dict[int, torch.Tensor] | None = None,
                predicted_rows: torch.Tensor | None = None
                ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        f16, f8, f4 = maps["f16"], maps["f8"], maps["f4"]
        g8 = torch.cat([f8, F.interpolate(f4, scale_factor=2.0, mode="nearest")], 1)
        sources = {"f16": f16, "g8": g8}
        dense = {name: head(sources[DENSE_HEADS[name][0]]) for name, head in self.dense.items()}
        hidden = self.part_local(f16) + F.interpolate(self.part_context(g8), scale_factor=2.0,
                                                      mode="nearest")
        dense["part16"] = self.part_out(F.relu(hidden))
        parts = dense["part16"].softmax(1)
        pooled = [f4.mean((2, 3)), f4.amax((2, 3))]
        for k in (1, 2):  # main, distractor
            w16 = parts[:, k:k + 1]
            w8 = F.avg_pool2d(w16, 2)
            pooled.append((f16 * w16).sum((2, 3)) / w16.sum((2, 3)).clamp(min=1e-3))
            pooled.append((g8 * w8).sum((2, 3)) / w8.sum((2, 3)).clamp(min=1e-3))
            pooled.append(torch.cat([w16.mean((2, 3)), w16.amax((2, 3))], 1))
        with torch.no_grad():
            predicted = {k: object_boxes(part_weights(parts, k)) for k in (1, 2)}
        if boxes is None or found is None:
            boxes = {k: predicted[k][0] for k in (1, 2)}
            found = {k: predicted[k][1] for k in (1, 2)}
        elif predicted_rows is not None:  # these rows read the predicted boxes
            rows = predicted_rows[:, None]
            boxes = {k: torch.where(rows, predicted[k][0], boxes[k]) for k in (1, 2)}
            found = {k: torch.where(predicted_rows, predicted[k][1], found[k]) for k in (1, 2)}
        others = found[2].nonzero()[:, 0]
        patches = object_patches(torch.cat([x, x[others]]),
                                 torch.cat([boxes[1], boxes[2][others]]), OBJECT_PATCH)
        features = self.objects(patches)
        main = features[:len(x)]
        other = torch.zeros_like(main).index_copy(0, others, features[len(x):])
        centre = torch.cat([boxes[1][:, :2], torch.full_like(boxes[1][:, 2:],
                                                             TEXTURE_PATCH / 2 / x.shape[-1])], 1)
        texture = self.textures(object_patches(x, centre, TEXTURE_PATCH, supersample=1))
        return {"scene": torch.cat(pooled, 1), "main": torch.cat([main, boxes[1]], 1),
                "distractor": torch.cat([other, boxes[2] * found[2][:, None]], 1),
                "texture": texture}, dense


#: which pooled vectors each slot head reads (:class:`SlotPooling`)
HEAD_INPUTS: dict[str, tuple[str, ...]] = {
    "object": ("scene",), "scene": ("scene",), "distractor": ("scene",),
    "shape": ("scene", "main"), "colour": ("scene", "main"),
    "texture": ("scene", "main", "texture"), "outlined": ("scene", "main", "texture"),
    "size": ("scene", "main"),
    "distractor_shape": ("scene", "distractor"), "distractor_colour": ("scene", "distractor"),
}


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

    def __init__(self, widths: tuple[int, int, int, int] = (16, 32, 64, 128), dim: int = 64,
                 text_width: int = 64) -> None:
        super().__init__()
        self.image = ImageTower(widths)
        self.pool = SlotPooling(widths)
        sizes = self.pool.sizes
        features = sum(sizes.values())
        self.project = nn.Sequential(nn.Linear(features, features), nn.ReLU(inplace=True),
                                     nn.Linear(features, dim))
        self.heads = nn.ModuleDict({
            slot: nn.Linear(sum(sizes[part] for part in HEAD_INPUTS[slot]), len(classes))
            for slot, classes in SLOTS.items()})
        self.text = TextTower(len(vocabulary()), text_width, dim)
        self.logit_scale = nn.Parameter(torch.tensor(2.3))  # exp -> about 10

    def encode_image(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """L2-normalised image embeddings and slot logits."""
        emb, logits, _ = self.encode_image_dense(x)
        return emb, logits

    def encode_image_dense(self, x: torch.Tensor, boxes: dict[int, torch.Tensor] | None = None,
                           found: dict[int, torch.Tensor] | None = None,
                           predicted_rows: torch.Tensor | None = None
                           ) -> tuple[torch.Tensor, dict[str, torch.Tensor],
                                      dict[str, torch.Tensor]]:
        """L2-normalised image embeddings, slot logits and the dense heads' logit maps.
        ``boxes`` and ``found`` (object 1 and 2 -> (B, 3) boxes and (B,) flags, see
        :func:`object_boxes`) replace the boxes read from the predicted masks, but in
        ``predicted_rows`` (training gives the true ones)."""
        parts, dense = self.pool(x, self.image(x), boxes, found, predicted_rows)
        emb = F.normalize(self.project(torch.cat([parts[p] for p in self.pool.sizes], 1)), dim=-1)
        logits = {slot: head(torch.cat([parts[p] for p in HEAD_INPUTS[slot]], 1))
                  for slot, head in self.heads.items()}
        return emb, logits, dense

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        """L2-normalised text embeddings."""
        return F.normalize(self.text(ids), dim=-1)

    def scale(self) -> torch.Tensor:
        return self.logit_scale.exp().clamp(max=100.0)


# -- input preparation -----------------------------------------------------------------------
def normalise(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float input centred on 0."""
    return (images.float() / 255.0 - 0.5) / 0.25


def to_input_array(image: "Image.Image") -> "np.ndarray":
    """A PIL image (any size) as the (3, 64, 64) uint8 array the network reads (bilinear
    resize if needed)."""
    import numpy as np
    from PIL import Image

    image = image.convert("RGB")
    if image.size != (INPUT_SIZE, INPUT_SIZE):
        image = image.resize((INPUT_SIZE, INPUT_SIZE), Image.Resampling.BILINEAR)
    return np.asarray(image).transpose(2, 0, 1)


def image_batch(images: list["Image.Image"]) -> torch.Tensor:
    """PIL images (any size) -> normalised (B, 3, 64, 64) input (bilinear resize if needed)."""
    import numpy as np

    return normalise(torch.from_numpy(np.stack([to_input_array(im) for im in images])))


def text_batch(token_lists: list[list[int]]) -> torch.Tensor:
    """Token-id lists -> a (B, longest) tensor padded with 0."""
    longest = max(len(t) for t in token_lists)
    out = torch.zeros(len(token_lists), longest, dtype=torch.long)
    for row, tokens in enumerate(token_lists):
        out[row, :len(tokens)] = torch.tensor(tokens, dtype=torch.long)
    return out


def predicted_slots(logits: dict[str, torch.Tensor]) -> list[dict[str, str | None]]:
    """Per image: the argmax value of every slot head; object slots are None when no object is
    predicted, distractor slots when no distractor is."""
    best = {slot: logits[slot].argmax(1).tolist() for slot in SLOTS}
    out = []
    for i in range(len(best["object"])):
        row: dict[str, str | None] = {s: SLOTS[s][int(best[s][i])] for s in SLOTS}
        if row["object"] == "absent":
            row.update({s: None for s in SLOTS if s not in ("object", "scene")})
        elif row["distractor"] == "absent":
            row.update({s: None for s in DISTRACTOR_SLOTS})
        out.append(row)
    return out


def slots_to_caption(slots: dict[str, str | None]) -> str:
    """The canonical caption of predicted slot values."""
    from dndbench.toyworld.captions import slots_caption

    return slots_caption(slots)
