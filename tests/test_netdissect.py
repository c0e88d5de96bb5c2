"""Tests of the Network Dissection describer: quantile, upsampling, IoU tally, end to end."""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
from torch import nn

from dndbench.cache import Cache
from dndbench.context import Context
from dndbench.describers.netdissect import NetDissect, clean_label
from dndbench.describers.netdissect.tally import IoUTally, float32_floor, tally_image, unit_masks
from dndbench.describers.netdissect.thresholds import streaming_quantile
from dndbench.errors import ConfigError
from dndbench.models.base import ModelConfig, TargetModel
from dndbench.probes.base import Annotation, Concept, ProbeConfig, ProbeSet
from dndbench.probes.broden import BrodenProbe
from dndbench.testing import broden_fixture as fx


# -- helpers ---------------------------------------------------------------------------------------
class RedNet(TargetModel):
    """conv (1x1): unit 0 = R - (G+B)/2 (a red detector), unit 1 = constant, unit 2 = random;
    pool: 4x4 average pooling (64 px image -> 16 x 16 maps); fc: 4 random outputs."""

    input_size = 64

    def build(self, pretrained: bool) -> nn.Module:
        torch.manual_seed(0)
        conv = nn.Conv2d(3, 3, 1)
        with torch.no_grad():
            conv.weight.zero_()
            conv.bias.zero_()
            conv.weight[0, :, 0, 0] = torch.tensor([1.0, -0.5, -0.5])
            conv.bias[1] = 0.3
            conv.weight[2, :, 0, 0] = torch.randn(3)
        return nn.Sequential(OrderedDict(conv=conv, pool=nn.AvgPool2d(4), flat=nn.Flatten(),
                                         fc=nn.Linear(3 * 16 * 16, 4)))

    def transform(self) -> Callable[[Any], torch.Tensor]:
        from torchvision.transforms.functional import to_tensor

        return to_tensor


@pytest.fixture(scope="module")
def broden_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fx.make_broden_fixture(tmp_path_factory.mktemp("broden") / "broden1_224", n_images=12)


def make_context(root: Path, tmp_path: Path, layer: str = "pool", units=(0, 1, 2)) -> Context:
    probe = BrodenProbe(BrodenProbe.Config(name="broden", root=str(root)))
    model = RedNet(ModelConfig(name="rednet"))
    return Context(model=model, probe=probe, layer=layer, units=list(units),
                   cache=Cache(tmp_path / "cache"), progress=False, batch_size=5)


def batches_of(values: np.ndarray, size: int) -> Callable[[], Any]:
    """values (U, n) -> a factory of (B, U, 1, 1) batches."""
    t = torch.as_tensor(values.T.copy())[:, :, None, None]
    return lambda: (t[i:i + size] for i in range(0, len(t), size))


# -- 1. quantile -------------------------------------------------------------------------------------
@pytest.mark.parametrize("bins,max_values", [(4096, 1 << 22), (8, 1 << 22), (64, 100)])
def test_streaming_quantile_matches_numpy(bins: int, max_values: int) -> None:
    rng = np.random.default_rng(0)
    values = np.stack([rng.normal(size=3001), rng.exponential(size=3001),
                       np.maximum(rng.normal(-2.8, 1, 3001), 0)]).astype(np.float32)  # ReLU-like
    lo, hi = values.min(1).astype(float), values.max(1).astype(float)
    for q in (0.995, 0.5, 0.9):
        got = streaming_quantile(batches_of(values, 64), lo, hi, q, bins=bins,
                                 max_values=max_values)
        exact = np.quantile(values.astype(np.float64), q, axis=1)
        np.testing.assert_allclose(got, exact, rtol=0, atol=float((hi - lo).max()) / bins ** 2)


def test_streaming_quantile_exact_with_ties_and_constants() -> None:
    values = np.zeros((3, 2000), np.float32)
    values[0, :5] = [1, 2, 3, 4, 5]  # 99.75 % zeros: top 0.5 % quantile is exactly 0
    values[1] = 0.25  # constant unit
    values[2] = np.repeat(np.arange(20, dtype=np.float32), 100)  # heavy ties
    lo, hi = values.min(1).astype(float), values.max(1).astype(float)
    got = streaming_quantile(batches_of(values, 300), lo, hi, 0.995)
    assert got.tolist() == np.quantile(values.astype(np.float64), 0.995, axis=1).tolist()


def test_float32_floor_keeps_comparisons_exact() -> None:
    t64 = torch.tensor([0.1, 1 / 3, 2.0, -0.7], dtype=torch.float64)
    floor = float32_floor(t64)
    assert floor.dtype == torch.float32 and (floor.double() <= t64).all()
    nxt = torch.nextafter(floor, torch.full_like(floor, float("inf")))
    assert (nxt.double() > t64).all()


# -- 2. upsampling -----------------------------------------------------------------------------------
def test_upsampling_is_bilinear_like_imresize_mode_F() -> None:
    from PIL import Image

    rng = np.random.default_rng(1)
    small = rng.normal(size=(2, 7, 5)).astype(np.float32)
    thresholds = torch.tensor([0.1, -0.2], dtype=torch.float64)
    masks = unit_masks(torch.as_tensor(small), thresholds, (28, 20)).numpy()
    for u in range(2):
        ref = np.asarray(Image.fromarray(small[u], mode="F").resize((20, 28), Image.BILINEAR))
        decided = np.abs(ref - thresholds[u].item()) > 1e-4
        assert (masks[u][decided] == (ref > thresholds[u].item())[decided]).all()


def test_one_by_one_maps_are_constant_over_the_image() -> None:
    maps = torch.tensor([[[0.7]], [[0.1]]])
    masks = unit_masks(maps, torch.tensor([0.5, 0.5], dtype=torch.float64), (6, 4))
    assert masks[0].all() and not masks[1].any()


# -- 3. IoU tally vs brute force -------------------------------------------------------------------
def brute_force_iou(masks: list[np.ndarray], anns: list[Annotation], concepts: list[Concept]):
    """Plain loops over images, units and concepts.  A mask counts for a category where it
    covers a pixel labelled with one of the category's concepts, or the image has an
    image-level label of it (NetDissect-Lite)."""
    cats = {c.category for c in concepts}
    n_units = masks[0].shape[0]
    inter = np.zeros((n_units, len(concepts)), np.int64)
    msum = np.zeros((n_units, len(concepts)), np.int64)
    lsum = np.zeros(len(concepts), np.int64)
    for m, ann in zip(masks, anns):
        hit: list[set[str]] = [set() for _ in range(n_units)]
        for j, concept in enumerate(concepts):
            label = np.zeros(m.shape[1:], bool)
            for category, layers in ann.pixel.items():
                if category in cats:
                    label |= (layers == concept.id).any(0)
            for category, ids in ann.image_level.items():
                if category in cats and concept.id in ids:
                    label[:] = True
            lsum[j] += label.sum()
            for u in range(n_units):
                inter[u, j] += (m[u] & label).sum()
                if (m[u] & label).any():
                    hit[u].add(concept.category)
        for j, concept in enumerate(concepts):
            for u in range(n_units):
                if concept.category in hit[u]:
                    msum[u, j] += m[u].sum()
    union = msum + lsum[None] - inter
    iou = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    return inter, lsum, msum, iou


@pytest.mark.parametrize("categories", [None, ["color", "part", "scene"]])
def test_tally_equals_brute_force(broden_root: Path, categories: list[str] | None) -> None:
    probe = BrodenProbe(BrodenProbe.Config(name="broden", root=str(broden_root)))
    concepts = [c for c in probe.concepts() if categories is None or c.category in categories]
    rng = np.random.default_rng(3)
    maps = torch.as_tensor(rng.normal(size=(len(probe), 4, 5, 5)))
    thresholds = torch.tensor([0.5, 2.0, -0.5, 9.0], dtype=torch.float64)
    tally = IoUTally(concepts, 4)
    masks, anns = [], []
    for i in range(len(probe)):
        ann = probe.annotation(i)
        tally_image(tally, maps[i], thresholds, ann, ann.shape)  # only active units upsampled
        masks.append(unit_masks(maps[i], thresholds, ann.shape).numpy())
        anns.append(ann)
    inter, lsum, msum, iou = brute_force_iou(masks, anns, concepts)
    assert (tally.intersection.numpy() == inter).all()
    assert (tally.label_count.numpy() == lsum).all()
    mcat = tally.mask_by_category[:, tally.concept_category].numpy()
    assert (mcat == msum).all()
    np.testing.assert_array_equal(tally.iou(), iou)
    assert (iou[3] == 0).all()  # threshold above every value: empty masks


def test_mask_counted_only_where_category_annotated(broden_root: Path) -> None:
    probe = BrodenProbe(BrodenProbe.Config(name="broden", root=str(broden_root)))
    concepts = probe.concepts()
    tally = IoUTally(concepts, 1)
    for i in range(len(probe)):
        tally.add(torch.ones(1, 32, 32, dtype=torch.bool), probe.annotation(i))
    per_cat = dict(zip(tally.categories, tally.mask_by_category[0].tolist()))
    assert per_cat["color"] == 12 * 1024
    assert per_cat["part"] == 6 * 1024  # only even images have a part annotation
    assert per_cat["texture"] == 4 * 1024  # every third image
    assert "material" not in per_cat  # no concepts of that category
    iou = dict(zip([c.name for c in concepts], tally.iou()[0]))
    # handle: 6 images x 2x8 px, union = all part-annotated pixels
    assert iou["handle"] == pytest.approx(6 * 16 / (6 * 1024))
    assert iou["striped"] == 1.0  # image-level: whole image labelled wherever texture annotated


# -- 4./5. the describer -----------------------------------------------------------------------------
def test_clean_labels() -> None:
    """As the authors' cleaned Broden list spells them (tests/test_netdissect_lite.py checks
    the released list)."""
    assert clean_label("blue-c") == "blue-c"
    assert clean_label("kitchen-s") == "kitchen"
    assert clean_label("wine_cellar-s") == "wine cellar"
    assert clean_label("ball") == "ball"


def test_netdissect_finds_the_red_unit(broden_root: Path, tmp_path: Path) -> None:
    ctx = make_context(broden_root, tmp_path)
    describer = NetDissect(NetDissect.Config(name="netdissect"))
    assert NetDissect.registry_name == "netdissect"
    assert describer.needs_weights and describer.needs_probe
    red, const, rand = describer.describe(ctx)
    assert [d.unit for d in (red, const, rand)] == [0, 1, 2]
    assert red.label == "red-c" and red.score > 0.04
    assert red.extras["detector"] is True and red.extras["category"] == "color"
    assert red.extras["label_color"] == "red-c" and red.extras["iou_color"] == red.score
    assert {"label_object", "iou_part", "label_scene", "iou_texture"} <= set(red.extras)
    assert len(red.alternatives) == 2 and "red-c" not in red.alternatives
    assert const.extras["detector"] is False and const.score == 0.0
    for d in (red, const, rand):
        assert all(isinstance(v, (str, bool, float)) for v in d.extras.values())


def test_netdissect_raw_names_and_category_choice(broden_root: Path, tmp_path: Path) -> None:
    ctx = make_context(broden_root, tmp_path, units=[0])
    config = NetDissect.Config(name="netdissect", clean_labels=False, categories=["object", "scene"])
    (d,) = NetDissect(config).describe(ctx)
    assert d.extras["category"] in ("object", "scene")
    assert "label_color" not in d.extras
    with pytest.raises(ConfigError, match="colour"):
        NetDissect(NetDissect.Config(name="netdissect", categories=["colour"])).describe(ctx)


def test_netdissect_on_fc_layer(broden_root: Path, tmp_path: Path) -> None:
    ctx = make_context(broden_root, tmp_path, layer="fc", units=[0, 3])
    out = NetDissect(NetDissect.Config(name="netdissect")).describe(ctx)
    assert [d.unit for d in out] == [0, 3]
    assert all(0.0 <= d.score <= 1.0 for d in out)


class _Unannotated(ProbeSet):
    @dataclass
    class Config(ProbeConfig):
        pass

    def __len__(self) -> int:
        return 1

    def image(self, index: int):  # pragma: no cover - never reached
        raise AssertionError

    def fingerprint(self) -> str:
        return "x"


def test_probe_without_annotations_is_a_config_error(tmp_path: Path) -> None:
    ctx = Context(model=RedNet(ModelConfig(name="rednet")),
                  probe=_Unannotated(_Unannotated.Config(name="plain")), layer="pool", units=[0],
                  cache=Cache(tmp_path), progress=False)
    with pytest.raises(ConfigError, match="needs a probe with concept annotations"):
        NetDissect(NetDissect.Config(name="netdissect")).describe(ctx)


# -- toy world ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_netdissect_on_toyworld(tmp_path: Path) -> None:
    """ToyNet's planted colour unit (layer3 unit 2: red) is found; trains ToyNet (minutes)."""
    toyworld = pytest.importorskip("dndbench.toyworld.probe_set")
    toynet = pytest.importorskip("dndbench.toyworld.target_model")

    cache = Cache(tmp_path)
    model = toynet.ToyNetModel(toynet.ToyNetModel.Config(name="toynet"))
    probe = toyworld.ToyWorldProbe(toyworld.ToyWorldProbe.Config(name="toyworld", size=300))
    model.cache = probe.cache = cache
    planted = model.planted_concepts("layer3")
    units = sorted(planted)
    ctx = Context(model=model, probe=probe, layer="layer3", units=units, cache=cache,
                  progress=False)
    out = NetDissect(NetDissect.Config(name="netdissect")).describe(ctx)
    assert [d.unit for d in out] == units
    assert all(np.isfinite(d.score) and 0 <= d.score <= 1 for d in out)
    found = {d.unit for d in out if d.label == planted[d.unit]}
    red = [u for u, name in planted.items() if name == "red"]
    assert red and red[0] in found, (planted, [(d.unit, d.label, d.score) for d in out])


# -- passes over the probe: memory-mapped store vs re-running the network -------------------------
def _run_mode(root: Path, tmp_path: Path, layer: str, units, **options) -> tuple[list, float]:
    """Descriptions (every field) and the network passes over the probe after the pooled one."""
    ctx = make_context(root, tmp_path, layer=layer, units=units)
    ctx.activations.pooled(ctx.layer)
    before = ctx.activations.images_forwarded
    out = NetDissect(NetDissect.Config(name="netdissect", **options)).describe(ctx)
    passes = (ctx.activations.images_forwarded - before) / len(ctx.probe)
    assert not list((tmp_path / "cache").rglob("maps-*")), "the map file is deleted"
    return [(d.unit, d.label, d.alternatives, d.score, d.extras) for d in out], passes


@pytest.mark.parametrize("layer, units", [("pool", (0, 1, 2)), ("fc", (0, 3))])
def test_memmap_runs_the_network_once_with_the_streamed_results(broden_root: Path, tmp_path: Path,
                                                                layer: str, units) -> None:
    stored, one = _run_mode(broden_root, tmp_path / "memmap", layer, units, batch_size=5)
    streamed, three = _run_mode(broden_root, tmp_path / "stream", layer, units, maps="stream",
                                batch_size=3)
    assert (one, three) == (1, 3)
    assert stored == streamed


def test_memmap_falls_back_to_streaming_without_disk_room(broden_root: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import dndbench.describers.netdissect as nd

    stored, _ = _run_mode(broden_root, tmp_path / "memmap", "pool", (0, 2))
    monkeypatch.setattr(nd, "free_bytes", lambda folder: 0)
    fallback, passes = _run_mode(broden_root, tmp_path / "full", "pool", (0, 2))
    assert passes == 3 and fallback == stored


def test_map_store_round_trip(tmp_path: Path) -> None:
    from dndbench.describers.netdissect.map_store import MapStore

    maps = torch.randn(11, 3, 4, 5)
    with MapStore(tmp_path) as store:
        for start in range(0, 11, 4):
            store.append(maps[start:start + 4])
        for size in (3, 11, 20):
            batches = list(store.batches(size))
            assert np.concatenate([i for i, _ in batches]).tolist() == list(range(11))
            assert torch.equal(torch.cat([m for _, m in batches]), maps)
        path = store.path
        assert path.stat().st_size == maps.numel() * 4
    assert not path.exists()
