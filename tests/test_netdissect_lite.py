"""Network Dissection as NetDissect-Lite, on the generated Broden-layout fixture:

* the IoU denominator ΣM_cat adds an image's mask area to a category only where the mask covers a
  label of that category (or the image has an image-level label of it), with IoUs computed by
  hand below;
* a label's category is its primary one, by coverage (``c_<category>.csv``);
* images are fed whole at the probe's resolution, whatever the model's own resize / centre crop;
* one Broden label cleaner, matching the authors' cleaned list.

Fixture (``dndbench.testing.broden_fixture``): 12 images of 64 px, labels at 32 x 32; every image
has a 8 x 8 blue ball (object ``ball``) on a grey wall; even images also a ``table`` on the
ball's left half (8 x 4) and a part ``handle`` on its top 2 rows (2 x 8), scene ``kitchen``
(odd: ``wine cellar``); images 0, 3, 6, 9 a 4 x 4 red square and texture ``striped``.
"""
from __future__ import annotations

import csv
import shutil
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from dndbench.cache import Cache
from dndbench.context import Context
from dndbench.describers.netdissect import NetDissect
from dndbench.describers.netdissect.tally import IoUTally
from dndbench.describers.published import clean_broden_label
from dndbench.models.base import ModelConfig, TargetModel
from dndbench.probes.broden import BrodenProbe
from dndbench.testing import broden_fixture as fx

N = 12
S = 32  # label resolution


@pytest.fixture(scope="module")
def broden_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fx.make_broden_fixture(tmp_path_factory.mktemp("broden") / "broden1_224", n_images=N)


def probe_at(root: Path, **options: Any) -> BrodenProbe:
    return BrodenProbe(BrodenProbe.Config(name="broden", root=str(root), **options))


def ball_corner(probe: BrodenProbe, index: int) -> tuple[int, int]:
    rows, cols = np.nonzero(probe.annotation(index).pixel["object"][0] == fx.BALL)
    return int(rows.min()), int(cols.min())


def wall_block(probe: BrodenProbe, index: int) -> np.ndarray:
    """A 4 x 4 mask on plain wall (grey, no other label) of image ``index``."""
    ann = probe.annotation(index)
    plain = (ann.pixel["object"][0] == fx.WALL) & (ann.pixel["color"][0] == fx.GREY)
    plain &= (ann.pixel["object"] != fx.TABLE).all(0) & (ann.pixel["part"] == 0).all(0)
    for r in range(0, S, 4):
        for c in range(0, S, 4):
            if plain[r:r + 4, c:c + 4].all():
                mask = np.zeros((S, S), bool)
                mask[r:r + 4, c:c + 4] = True
                return mask
    raise AssertionError("no plain wall block")


def tally_two_masks(probe: BrodenProbe) -> tuple[IoUTally, dict[str, float]]:
    """One unit whose mask is the handle (2 x 8) in image 0 and a 4 x 4 wall block in image 2,
    empty elsewhere; returns the tally and IoU by concept name."""
    tally = IoUTally(probe.concepts(), 1)
    for i in range(N):
        mask = np.zeros((S, S), bool)
        if i == 0:
            r, c = ball_corner(probe, 0)
            mask[r:r + 2, c:c + 8] = True
        elif i == 2:
            mask = wall_block(probe, 2)
        tally.add(torch.as_tensor(mask)[None], probe.annotation(i))
    return tally, dict(zip([c.name for c in tally.concepts], tally.iou()[0].tolist()))


def test_denominator_counts_a_mask_only_for_the_categories_it_covers(broden_root: Path) -> None:
    probe = probe_at(broden_root)
    tally, iou = tally_two_masks(probe)
    per_category = dict(zip(tally.categories, tally.mask_by_category[0].tolist()))
    # color, object: blue / ball under the mask in image 0, grey / wall in image 2
    # part: only image 0's mask covers a part label (image 2 has part labels, elsewhere)
    # scene: image-level in both; texture: image 0 only (image 2 has no texture)
    assert per_category == {"color": 32, "object": 32, "part": 16, "scene": 32, "texture": 16}
    expected = {
        "handle": 16 / (16 + 6 * 16 - 16),       # the old denominator gave 16 / (32 + 96 - 16)
        "blue-c": 16 / (32 + N * 64 - 16),
        "grey-c": 16 / (32 + (N * 960 - 4 * 16) - 16),
        "red-c": 0.0,
        "ball": 16 / (32 + N * 64 - 16),
        "table": 8 / (32 + 6 * 32 - 8),
        "wall": 16 / (32 + N * 960 - 16),
        "kitchen-s": 32 / (32 + 6 * S * S - 32),
        "wine_cellar-s": 0.0,
        "striped": 16 / (16 + 4 * S * S - 16),
        "dotted": 0.0,
    }
    assert iou == pytest.approx(expected, abs=1e-12)


def test_describer_label_and_categories_from_the_hand_computed_ious(broden_root: Path) -> None:
    probe = probe_at(broden_root)
    tally, _ = tally_two_masks(probe)
    d = NetDissect(NetDissect.Config(name="netdissect")).summarise(0, tally.iou()[0], tally, 0.0)
    assert (d.label, d.extras["category"], d.score) == ("handle", "part", pytest.approx(1 / 6))
    assert d.extras["label_object"] == "table" and d.extras["iou_object"] == pytest.approx(8 / 216)
    assert d.extras["label_scene"] == "kitchen" and d.extras["label_color"] == "blue-c"
    assert d.extras["detector"] is True


def _with_object_coverage(src: Path, dst: Path, coverage: float) -> Path:
    """The fixture, with ``handle`` also listed in ``c_object.csv`` at ``coverage`` (its
    ``c_part.csv`` coverage is 0.1; ``label.csv`` says ``part(5);object(1)``)."""
    shutil.copytree(src, dst)
    path = dst / "c_object.csv"
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    rows.append({"code": str(len(rows) + 1), "number": str(fx.HANDLE), "name": "handle",
                 "frequency": "1", "coverage": str(coverage)})
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return dst


@pytest.mark.parametrize("coverage, category", [(0.5, "object"), (0.1, "part"), (0.05, "part")])
def test_primary_category_is_the_one_of_highest_coverage(broden_root: Path, tmp_path: Path,
                                                          coverage: float, category: str) -> None:
    """Ties go to the later category (NetDissect-Lite's ``max((coverage, index))``; ``part``
    comes after ``object``)."""
    probe = probe_at(_with_object_coverage(broden_root, tmp_path / "b", coverage))
    handle = next(c for c in probe.concepts() if c.name == "handle")
    assert handle.category == category


def test_primary_category_decides_the_denominator_and_the_group(broden_root: Path,
                                                                tmp_path: Path) -> None:
    probe = probe_at(_with_object_coverage(broden_root, tmp_path / "b", 0.5))
    tally, iou = tally_two_masks(probe)
    assert "part" not in tally.categories  # handle was its only concept
    assert iou["handle"] == pytest.approx(16 / (32 + 96 - 16))  # object's ΣM = 32
    d = NetDissect(NetDissect.Config(name="netdissect")).summarise(0, tally.iou()[0], tally, 0.0)
    assert (d.label, d.extras["category"], d.extras["label_object"]) == ("handle", "object", "handle")


def test_without_c_files_the_label_csv_category_is_used(broden_root: Path, tmp_path: Path) -> None:
    root = shutil.copytree(broden_root, tmp_path / "b")
    for path in root.glob("c_*.csv"):
        path.unlink()
    assert {c.name: c.category for c in probe_at(root).concepts()}["handle"] == "part"


# -- fed whole at the probe's resolution ---------------------------------------------------------
def red_network() -> nn.Module:
    """Unit 0: red minus the mean of green and blue; 4 x 4 average pooling."""
    conv = nn.Conv2d(3, 2, 1)
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.zero_()
        conv.weight[0, :, 0, 0] = torch.tensor([1.0, -0.5, -0.5])
        conv.weight[1, :, 0, 0] = torch.tensor([-0.5, 1.0, -0.5])
    return nn.Sequential(OrderedDict(conv=conv, pool=nn.AvgPool2d(4)))


class CroppingRedNet(TargetModel[ModelConfig]):
    """The red network under torchvision's ImageNet preset (resize 256, centre crop 224)."""

    input_size = 64

    def build(self, pretrained: bool) -> nn.Module:
        return red_network()

    def transform(self) -> Any:
        from torchvision.models import ResNet18_Weights

        return ResNet18_Weights.IMAGENET1K_V1.transforms()


class WholeRedNet(CroppingRedNet):
    """The same network fed the image as it is (same normalisation, no resize, no crop)."""

    def transform(self) -> Any:
        from torchvision import transforms as T

        return T.Compose([T.ToTensor(), T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])


class OldCroppingRedNet(CroppingRedNet):
    """What Network Dissection did before: the model's own transform, centre crop included."""

    def fed_whole(self, width: int, height: int) -> TargetModel[Any]:
        return self


def dissect(model_cls: type, root: Path, tmp_path: Path) -> list[Any]:
    model = model_cls(ModelConfig(name=model_cls.__name__.lower()))
    ctx = Context(model=model, probe=probe_at(root), layer="pool", units=[0, 1],
                  cache=Cache(tmp_path / "cache"), progress=False, batch_size=5)
    out = NetDissect(NetDissect.Config(name="netdissect")).describe(ctx)
    return [(d.unit, d.label, d.score, d.extras) for d in out]


def test_images_are_fed_whole_at_the_probe_resolution(broden_root: Path, tmp_path: Path) -> None:
    cropped = dissect(CroppingRedNet, broden_root, tmp_path)
    assert cropped == dissect(WholeRedNet, broden_root, tmp_path)
    red = cropped[0]
    assert red[1] == "red-c" and red[2] > 0.3
    old = dissect(OldCroppingRedNet, broden_root, tmp_path)[0]
    assert old[2] < red[2] - 0.1  # the centre-crop map spread over the whole label grid


# -- one label cleaner ---------------------------------------------------------------------------
@pytest.mark.parametrize("raw, clean", [
    ("wine_cellar-bottle_storage-s", "wine cellar-bottle storage"), ("red-c", "red-c"),
    ("brewery-outdoor-s", "brewery-outdoor"), ("t-shirt", "t-shirt"), ("mountain_snowy-s", "mountain snowy"),
    ("pool table", "pool table"), (" ball ", "ball")])
def test_cleaner_examples(raw: str, clean: str) -> None:
    assert clean_broden_label(raw) == clean


def test_cleaner_reproduces_the_authors_cleaned_broden_list(published: Path) -> None:
    """Every raw Broden name in the released NetDissect tallies, cleaned, is a name of the
    cleaned Broden concept list released with CLIP-Dissect / DnD."""
    clean = set((published / "broden_labels_clean.txt").read_text(encoding="utf-8").splitlines())
    raw: set[str] = set()
    for path in sorted((published / "NetDissect_results").glob("*.csv")):
        with open(path, newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                raw |= {v for k, v in row.items() if (k == "label" or k.endswith("-label")) and v}
    assert len(raw) > 600
    assert sorted(n for n in raw if clean_broden_label(n) not in clean) == []


def test_every_broden_user_shares_the_cleaner(broden_root: Path) -> None:
    from dndbench.describers import netdissect, published
    from dndbench.describers.clip_dissect.concept_sets import probe_concepts

    assert netdissect.clean_label is published.clean_broden_label
    names = probe_concepts(probe_at(broden_root))
    assert {"red-c", "wine cellar", "kitchen", "handle"} <= set(names)
