"""Map <-> image registration (dndbench.geometry) and its users: DnD's crops, Network
Dissection's masks and MILAN's exemplars land on the region a unit fires at.

The synthetic unit: a 1x1 convolution computing "red minus green" of the normalised input,
average-pooled by 4 (a 56 x 56 map on a 224 px input, like ResNet-50's layer1), under
torchvision's ImageNet preprocessing (``weights.transforms()``: resize 256, centre crop 224).
Each 500 x 375 probe image is grey with one red square at a known place inside the centre crop.
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from dndbench.activations import Activations
from dndbench.cache import Cache, stable_hash
from dndbench.context import Context
from dndbench.geometry import (
    Preprocessing,
    cell_box,
    crop_region,
    frame_to_image,
    from_transform,
    full_region,
    image_to_frame,
    whole_image_transform,
)
from dndbench.models.base import ModelConfig, TargetModel, WholeImageView
from dndbench.probes.base import ProbeConfig, ProbeSet

W, H = 500, 375
#: (x0, y0, x1, y1) of the red square of each probe image, in original pixels
SQUARES = [(300, 120, 360, 180), (120, 60, 190, 130), (250, 250, 300, 320), (180, 180, 230, 230)]
TOL = 8  # pixels of the original image (a map cell covers 5.9 of them)


def imagenet_preset() -> Any:
    from torchvision.models import ResNet50_Weights

    return ResNet50_Weights.IMAGENET1K_V1.transforms()


class RedUnitModel(TargetModel[ModelConfig]):
    """Unit 0 of ``layer1``: red minus green (ReLU), pooled over 4 x 4 input pixels."""

    final_layer = "fc"

    def build(self, pretrained: bool) -> torch.nn.Module:
        from torch import nn

        conv = nn.Conv2d(3, 2, 1)
        with torch.no_grad():
            conv.weight.zero_()
            conv.bias.zero_()
            conv.weight[0, 0], conv.weight[0, 1] = 1.0, -1.0
            conv.weight[1, 1], conv.weight[1, 0] = 1.0, -1.0
        return nn.Sequential(OrderedDict({
            "conv": conv, "relu": nn.ReLU(), "layer1": nn.AvgPool2d(4),
            "pool": nn.AdaptiveAvgPool2d(1), "flatten": nn.Flatten(), "fc": nn.Linear(2, 2)}))

    def transform(self) -> Any:
        return imagenet_preset()


class SquareProbe(ProbeSet[ProbeConfig]):
    """500 x 375 grey images, each with one red square (:data:`SQUARES`)."""

    def __len__(self) -> int:
        return len(SQUARES)

    def image(self, index: int) -> Image.Image:
        pixels = np.full((H, W, 3), 128, np.uint8)
        x0, y0, x1, y1 = SQUARES[index]
        pixels[y0:y1, x0:x1] = (255, 0, 0)
        return Image.fromarray(pixels)

    def fingerprint(self) -> str:
        return stable_hash("square-probe", SQUARES, W, H)


@pytest.fixture
def model() -> RedUnitModel:
    return RedUnitModel(ModelConfig(name="red_unit"))


@pytest.fixture
def probe() -> SquareProbe:
    return SquareProbe(ProbeConfig(name="squares"))


def bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def assert_near(box: Any, want: Any, tol: float = TOL) -> None:
    assert np.abs(np.asarray(box, float) - np.asarray(want, float)).max() <= tol, (box, want)


# -- the geometry itself ---------------------------------------------------------------------------
@pytest.mark.parametrize("size", [(500, 375), (375, 500), (224, 224), (640, 480), (300, 100),
                                  (257, 1000)])
def test_seen_region_is_where_torchvision_puts_each_pixel(size: tuple[int, int]) -> None:
    """A bright dot's centroid in the transformed tensor is where the region predicts."""
    width, height = size
    prep = from_transform(imagenet_preset())
    assert prep is not None
    region = prep.seen_region(width, height)
    pixels = np.zeros((height, width, 3), np.uint8)
    x = int(region[0] + 0.3 * (region[2] - region[0]))
    y = int(region[1] + 0.7 * (region[3] - region[1]))
    pixels[y:y + 4, x:x + 4] = 255
    tensor = imagenet_preset()(Image.fromarray(pixels))
    assert tensor.shape[1:] == (224, 224) and prep.input_size(width, height) == (224, 224)
    ys, xs = np.nonzero(tensor[0].numpy() > 0)
    want = image_to_frame((x + 2, y + 2, x + 2, y + 2), region, (224, 224))[:2]
    assert abs(xs.mean() + 0.5 - want[0]) < 0.75 and abs(ys.mean() + 0.5 - want[1]) < 0.75


def test_500x375_region_under_imagenet_transforms() -> None:
    region = Preprocessing(resize=256, crop=(224, 224)).seen_region(500, 375)
    # resized to 341 x 256; the crop starts at column round(58.5) = 58, row 16
    assert region == pytest.approx((58 * 500 / 341, 16 * 375 / 256, 282 * 500 / 341, 240 * 375 / 256))


@pytest.mark.parametrize("transform, want", [
    ("preset", Preprocessing(resize=256, crop=(224, 224))),
    ("classic", Preprocessing(resize=256, crop=(224, 224))),
    ("squash", Preprocessing(resize=(64, 64))),
    ("tensor", Preprocessing()),
    ("random", None),
])
def test_from_transform_reads_torchvision_transforms(transform: str, want: Any) -> None:
    from torchvision import transforms as T

    from dndbench.models.torchvision_models import imagenet_transform

    built = {"preset": imagenet_preset, "classic": imagenet_transform,
             "squash": lambda: T.Compose([T.Resize((64, 64)), T.ToTensor(),
                                         T.Normalize([0.5] * 3, [0.2] * 3)]),
             "tensor": lambda: T.Compose([T.ToTensor()]),
             "random": lambda: T.Compose([T.RandomResizedCrop(224), T.ToTensor()])}[transform]()
    assert from_transform(built) == want


def test_models_expose_their_geometry(model: RedUnitModel) -> None:
    from dndbench.testing.kit import TinyModel
    from dndbench.toyworld.target_model import ToyNetModel

    assert model.preprocessing() == Preprocessing(resize=256, crop=(224, 224))
    toy = ToyNetModel(ToyNetModel.Config(name="toynet"))
    assert toy.preprocessing() == Preprocessing(resize=(64, 64))
    assert toy.preprocessing().is_identity(64, 64) and toy.fed_whole(64, 64) is toy
    assert TinyModel(TinyModel.Config(name="tiny")).preprocessing().sees_whole_image(40, 20)


def test_cells_and_frames_map_back_and_forth() -> None:
    region = (85.0, 23.4, 413.0, 351.6)
    assert cell_box(region, (7, 7), 0, 0) == pytest.approx((85.0, 23.4, 85.0 + 328 / 7, 23.4 + 328.2 / 7))
    assert cell_box(region, (7, 7), 6, 6)[2:] == pytest.approx(region[2:])
    box = (10.0, 20.0, 100.0, 200.0)
    assert image_to_frame(frame_to_image(box, region, (375, 375)), region, (375, 375)) == pytest.approx(box)


def test_crop_region_of_the_whole_image_is_a_plain_resize() -> None:
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (37, 53, 3), dtype=np.uint8))
    assert crop_region(image, full_region(53, 37), (375, 375)).tobytes() == \
        image.resize((375, 375)).tobytes()
    assert crop_region(image, full_region(53, 37), (53, 37)).tobytes() == image.tobytes()


def test_crop_region_matches_torchvisions_centre_crop_and_pads_like_it() -> None:
    from torchvision import transforms as T

    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8))
    prep = Preprocessing(resize=256, crop=(224, 224))
    ours = np.asarray(crop_region(image, prep.seen_region(W, H), (224, 224),
                                  Image.Resampling.BILINEAR), float)
    theirs = np.asarray(T.CenterCrop(224)(T.Resize(256)(image)), float)
    assert np.abs(ours - theirs).mean() < 1.0
    small = Image.fromarray(np.full((20, 30, 3), 200, np.uint8))
    padded = Preprocessing(crop=(40, 40))
    assert padded.seen_region(30, 20) == (-5.0, -10.0, 35.0, 30.0)
    ours = np.asarray(crop_region(small, padded.seen_region(30, 20), (40, 40)))
    theirs = np.asarray(T.CenterCrop(40)(small))
    assert np.array_equal(ours, theirs)


def test_whole_image_transform_drops_the_crop(model: RedUnitModel, probe: SquareProbe) -> None:
    image = probe.image(0)
    whole = whole_image_transform(imagenet_preset(), (W, H))(image)
    assert whole.shape == (3, H, W)
    from torchvision import transforms as T

    plain = T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])(T.ToTensor()(image))
    assert torch.allclose(whole, plain, atol=1e-6)
    view = model.fed_whole(W, H)
    assert isinstance(view, WholeImageView) and view.network() is model.network()
    assert view.weights_fingerprint() != model.weights_fingerprint()
    assert view.preprocessing().is_identity(W, H)


# -- the users -------------------------------------------------------------------------------------
def unit_map(model: TargetModel[Any], probe: SquareProbe, tmp_path: Path, index: int) -> np.ndarray:
    acts = Activations(model, probe, Cache(tmp_path / "cache"), progress=False)
    return acts.maps("layer1", [0], [index])[0, 0]


@pytest.mark.parametrize("index", range(len(SQUARES)))
def test_dnd_crop_box_lands_on_the_square(model: RedUnitModel, probe: SquareProbe, tmp_path: Path,
                                          index: int) -> None:
    from dndbench.describers.dnd import cropping

    heat = unit_map(model, probe, tmp_path, index)
    assert heat.shape == (56, 56)
    boxes = cropping.crop_boxes(heat, 375)
    assert len(boxes) == 1
    image = probe.image(index)
    prep = model.preprocessing()
    assert_near(cropping.box_in_image(image, boxes[0], 375, prep), SQUARES[index])
    crop = np.asarray(cropping.crop(image, boxes[0], 375, prep), int)
    redness = (crop[..., 0] - crop[..., 1]) > 100
    assert redness.mean() > 0.8  # the crop shows the square
    # the released code's frame (the whole image squashed) puts the same box elsewhere
    squashed = cropping.box_in_image(image, boxes[0], 375, None)
    assert np.abs(np.asarray(squashed) - np.asarray(SQUARES[index])).max() > 2 * TOL


@pytest.mark.parametrize("index", range(len(SQUARES)))
def test_netdissect_mask_lands_on_the_square(model: RedUnitModel, probe: SquareProbe,
                                             tmp_path: Path, index: int) -> None:
    """Fed whole (NetDissect-Lite), the map covers the whole label grid: its mask, upsampled to
    the label resolution, is the square; the centre-crop map spread over the grid is not."""
    from dndbench.describers.netdissect.tally import unit_masks

    def mask_box(m: TargetModel[Any]) -> tuple[int, int, int, int]:
        heat = torch.from_numpy(unit_map(m, probe, tmp_path, index))[None]
        mask = unit_masks(heat, torch.tensor([0.5], dtype=torch.float64), (H, W))[0].numpy()
        return bbox(mask)

    view = model.fed_whole(W, H)
    assert unit_map(view, probe, tmp_path, index).shape == (H // 4, W // 4)
    assert_near(mask_box(view), SQUARES[index])
    assert np.abs(np.asarray(mask_box(model)) - np.asarray(SQUARES[index])).max() > 2 * TOL


def test_milan_exemplars_are_the_seen_crops_and_masks_land_on_the_square(
        model: RedUnitModel, probe: SquareProbe, tmp_path: Path) -> None:
    from dndbench.describers.milan.exemplars import compute_exemplars

    ctx = Context(model, probe, "layer1", [0], Cache(tmp_path / "cache"), progress=False)
    ex = compute_exemplars(ctx, k=len(SQUARES), quantile=0.9)
    assert ex.images.shape == (1, len(SQUARES), 3, 224, 224) and ex.masks.shape[-2:] == (224, 224)
    region = model.preprocessing().seen_region(W, H)
    for j, index in enumerate(ex.indices[0]):
        mask = ex.masks[0, j, 0] > 0
        # T is the background level here, so the mask is the square plus the bilinear fringe of
        # its edge cells (up to 1.5 cells, 9 px): its centre is tight, its box a cell wider
        x0, y0, x1, y1 = SQUARES[index]
        ys, xs = np.nonzero(mask)
        centre = frame_to_image((xs.mean() + 0.5, ys.mean() + 0.5) * 2, region, (224, 224))[:2]
        assert_near(centre, ((x0 + x1) / 2, (y0 + y1) / 2), 3)
        assert_near(frame_to_image(bbox(mask), region, (224, 224)), SQUARES[index], 10)
        picture = ex.images[0, j].transpose(1, 2, 0).astype(int)
        red = (picture[..., 0] - picture[..., 1]) > 100
        assert_near(frame_to_image(bbox(red), region, (224, 224)), SQUARES[index], 3)
        # the mask stretched over the whole image (before) misses the square's centre
        stretched = frame_to_image((xs.mean() + 0.5, ys.mean() + 0.5) * 2, full_region(W, H),
                                   (224, 224))[:2]
        assert np.abs(np.subtract(stretched, ((x0 + x1) / 2, (y0 + y1) / 2))).max() > TOL


def test_toy_world_keeps_identical_crops(tmp_path: Path) -> None:
    """For a model that resizes the whole image, the crop is exactly the released code's."""
    from dndbench.describers.dnd import cropping

    rng = np.random.default_rng(2)
    image = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    box = (40, 60, 200, 300)
    old = image.convert("RGB").resize((375, 375)).crop(box).resize((375, 375))
    for prep in (None, Preprocessing(resize=(64, 64))):
        assert cropping.crop(image, box, 375, prep).tobytes() == old.tobytes()
