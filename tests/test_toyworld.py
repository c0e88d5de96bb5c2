"""Tests of the toy world: image generator, probe plugin, ToyNet and its training."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from dndbench.cache import Cache
from dndbench.probes.base import PROBES, Annotation
from dndbench.toyworld.render import annotate, concept_mask, generate, render, toy_image
from dndbench.toyworld.world import (
    CATEGORIES,
    COLOURS,
    EXTRA_TEXTURES,
    SCENES,
    SHAPES,
    TEXTURES,
    SceneSpec,
    all_concepts,
    concept_id,
    concepts_from_text,
    sample_scene,
    spec_from_text,
    with_main,
)


# -- concepts and images ---------------------------------------------------------------------
def test_vocabulary_has_enough_named_concepts():
    concepts = all_concepts()
    assert len(concepts) >= 30
    assert {c.category for c in concepts} == {"shape", "colour", "texture", "scene"}
    assert [c.id for c in concepts] == list(range(1, len(concepts) + 1))
    assert len({c.name for c in concepts}) == len(concepts)
    assert all(c.name.replace(" ", "").isalpha() and c.name == c.name.lower() for c in concepts)
    assert len(SHAPES) >= 10 and len(COLOURS) >= 8 and len(TEXTURES) >= 6 and len(SCENES) >= 6


def test_images_are_deterministic_by_seed_and_index():
    a, spec_a, mask_a = generate(3, 17)
    b, spec_b, mask_b = generate(3, 17)
    assert a.dtype == np.uint8 and a.shape == (64, 64, 3)
    assert np.array_equal(a, b) and spec_a == spec_b and np.array_equal(mask_a, mask_b)
    assert not np.array_equal(a, generate(3, 18)[0])
    assert not np.array_equal(a, generate(4, 17)[0])


def test_render_size_and_toy_image():
    image, spec, ann = toy_image(0, 5, size=96)
    assert image.size == (96, 96) and image.mode == "RGB"
    assert isinstance(spec, SceneSpec) and isinstance(ann, Annotation)
    assert ann.pixel["shape"].shape == (1, 96, 96)


def test_masks_match_specs():
    for index in range(30):
        rgb, spec, mask = generate(7, index)
        ann = annotate(spec, mask)
        assert ann.categories == set(CATEGORIES)
        assert ann.image_level["scene"] == [concept_id(spec.scene)]
        main = mask == 1
        # an outlined main object is only its contour
        assert main.mean() > (0.01 if spec.main.outlined else 0.03), "the main object is hidden"
        def label(obj, category):  # extra textures (zigzag) are no concept: label 0
            name = getattr(obj, category)
            return 0 if name in EXTRA_TEXTURES else concept_id(name)

        for category in ("shape", "colour", "texture"):
            labels = ann.pixel[category][0]
            assert labels.dtype.kind == "i"
            assert np.all(labels[main] == label(spec.main, category))
            assert np.all(labels[mask == 0] == 0)
            for k, obj in enumerate(spec.objects[1:], start=2):
                assert np.all(labels[mask == k] == label(obj, category))
        assert concept_mask(spec, mask, spec.scene).all()
        assert np.array_equal(concept_mask(spec, mask, spec.main.shape), np.isin(
            mask, [k + 1 for k, o in enumerate(spec.objects) if o.shape == spec.main.shape]))


def test_object_colour_shows_in_its_pixels():
    rng = np.random.default_rng(0)
    spec = sample_scene(rng, shape="square", colour="red", texture="plain", scene="snow",
                        distractor=False)
    rgb, mask = render(spec)
    inside = rgb[mask == 1].astype(float).mean(0)
    assert inside[0] > 150 and inside[1] < 90 and inside[2] < 90


def test_partial_specs_and_text():
    rng = np.random.default_rng(1)
    spec = sample_scene(rng, shape="star", colour="red")
    assert spec.main.shape == "star" and spec.main.colour == "red"
    assert concepts_from_text("A red striped star on a brick wall") == {
        "colour": "red", "texture": "striped", "shape": "star", "scene": "brick wall"}
    spec = spec_from_text("blue heart in the snow", rng, distractor=False)
    assert (spec.main.colour, spec.main.shape, spec.scene, len(spec.objects)) == (
        "blue", "heart", "snow", 1)
    assert with_main(spec, colour="green").main.colour == "green"
    with pytest.raises(ValueError):
        sample_scene(rng, shape="dodecahedron")


def test_every_shape_renders_a_sizeable_mask():
    rng = np.random.default_rng(2)
    for shape in SHAPES:
        spec = sample_scene(rng, shape=shape, distractor=False, outlined=False)
        spec = SceneSpec(spec.scene, (with_main(spec, cx=0.5, cy=0.5, radius=0.3).main,),
                         spec.detail_seed, spec.noise)
        area = (render(spec)[1] == 1).mean()
        assert 0.04 < area < 0.35, (shape, area)


# -- probe plugin ----------------------------------------------------------------------------
def test_probe_plugin(tmp_path):
    probe = PROBES.create("toyworld", size=12, seed=5)
    probe.cache = Cache(tmp_path)
    assert len(probe) == 12
    image = probe.image(3)
    assert image.size == (64, 64) and image.mode == "RGB"
    assert np.array_equal(np.asarray(image), generate(5, 3)[0])
    concepts = probe.concepts()
    assert len(concepts) >= 30 and probe.has_annotations
    ann = probe.annotation(3)
    assert set(ann.pixel) == {"shape", "colour", "texture"} and set(ann.image_level) == {"scene"}
    assert ann.pixel["colour"].shape == (1, 64, 64)
    ids = {c.id for c in concepts}
    assert set(np.unique(ann.pixel["shape"])) - {0} <= ids
    assert probe.fingerprint() == PROBES.create("toyworld", size=12, seed=5).fingerprint()
    assert probe.fingerprint() != PROBES.create("toyworld", size=12, seed=6).fingerprint()
    with pytest.raises(IndexError):
        probe.image(12)


def test_probe_module_does_not_import_torch():
    code = ("import sys, dndbench.toyworld.probe_set, dndbench.toyworld.target_model; "
            "sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# -- ToyNet ----------------------------------------------------------------------------------
def test_toynet_architecture_and_layer_names(tmp_path):
    import torch

    from dndbench.models.base import MODELS

    model = MODELS.create("toynet")
    model.cache = Cache(tmp_path)
    assert model.final_layer == "fc" and model.input_size == 64
    net = model.network(pretrained=False)
    top = [name for name, _ in net.named_children()]
    assert top[:3] == ["conv1", "bn1", "relu"]
    assert top[-6:] == ["layer1", "layer2", "layer3", "layer4", "avgpool", "fc"]
    shapes = {}
    hooks = [dict(net.named_modules())[n].register_forward_hook(
        lambda m, i, o, n=n: shapes.__setitem__(n, tuple(o.shape)))
        for n in ("layer2", "layer3", "layer4", "fc")]
    with torch.no_grad():
        net(torch.zeros(2, 3, 64, 64))
    for h in hooks:
        h.remove()
    assert shapes["layer2"][2:] == (16, 16)
    assert shapes["layer3"][2:] == (8, 8) and shapes["layer4"][2:] == (4, 4)
    assert shapes["fc"] == (2, len(SHAPES))
    assert model.class_names() == list(SHAPES)
    assert model.num_units("final") == len(SHAPES)
    x = model.transform()(toy_image(0, 0)[0])
    assert x.shape == (3, 64, 64) and x.dtype == torch.float32
    assert not (tmp_path / "toynet").exists(), "pretrained=False must not train"


@pytest.mark.slow
def test_training_is_deterministic_and_cached(tmp_path):
    import torch

    from dndbench.models.base import MODELS
    from dndbench.toyworld.train_toynet import TrainConfig, planted_map, train

    config = TrainConfig(train_images=96, test_images=32, epochs=1, batch_size=32)
    meta_a = train(config, tmp_path / "a", progress=False, workers=1)
    meta_b = train(config, tmp_path / "b", progress=False, workers=1)
    wa = torch.load(tmp_path / "a" / "weights.pt", weights_only=True)
    wb = torch.load(tmp_path / "b" / "weights.pt", weights_only=True)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    meta = json.loads((tmp_path / "a" / "meta.json").read_text())
    assert meta["class_names"] == list(SHAPES)
    assert meta_a["key"] == meta_b["key"]
    units = meta["report"]["planted_units"]
    assert len(units) == sum(len(v) for v in planted_map(config).values())
    assert all({"auc", "top10", "gate", "pixel_auc"} <= set(u) for u in units)
    # only the units that passed the gate are recorded as ground truth
    recorded = {(layer, int(k)) for layer, v in meta["planted"].items() for k in v}
    assert recorded == {(u["layer"], u["unit"]) for u in units if u["gate"]}
    assert 0.0 <= meta["report"]["test_accuracy"] <= 1.0

    model = MODELS.create("toynet", train_images=96, epochs=1)
    model.cache = Cache(tmp_path / "cache")
    net = model.network(pretrained=True)
    folder = model.weights_dir()
    assert (folder / "weights.pt").exists() and (folder / "meta.json").exists()
    assert folder.name == model.weights_fingerprint()
    recorded_layer3 = model.meta()["planted"].get("layer3", {})
    assert model.planted_concepts("layer3") == {int(k): c for k, c in recorded_layer3.items()}
    assert model.planted_concepts("layer9") == {}
    mtime = (folder / "weights.pt").stat().st_mtime
    again = MODELS.create("toynet", train_images=96, epochs=1)
    again.cache = Cache(tmp_path / "cache")
    again.network(pretrained=True)
    assert (folder / "weights.pt").stat().st_mtime == mtime, "second use must not retrain"
    assert isinstance(net, torch.nn.Module)


def test_second_objects_are_small_plain_and_of_the_six_distractor_shapes():
    from dndbench.toyworld.world import DISTRACTOR_RADIUS_RANGE, DISTRACTOR_SHAPES, sample_scene

    rng = np.random.default_rng(0)
    seconds = [s.objects[1] for s in (sample_scene(rng, distractor=True) for _ in range(200))]
    assert {o.shape for o in seconds} == set(DISTRACTOR_SHAPES)
    assert all(o.texture == "plain" for o in seconds)
    low, high = DISTRACTOR_RADIUS_RANGE
    assert all(low <= o.radius <= high for o in seconds)
