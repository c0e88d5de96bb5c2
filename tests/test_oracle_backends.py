"""Oracle and weakened toy backends, the spec lookup behind them, setting labels that show
non-default backends, and the backend-strength ladder's bookkeeping."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dndbench.backends.base import CAPTIONERS, TEXT2IMAGE, VLMS, png_image
from dndbench.backends.call_cache import services
from dndbench.cache import Cache
from dndbench.errors import ConfigError
from dndbench.toyworld import image_specs
from dndbench.toyworld.captions import canonical_caption
from dndbench.toyworld.probe_set import ToyWorldConfig, ToyWorldProbe


@pytest.fixture(scope="module")
def probe() -> ToyWorldProbe:
    return ToyWorldProbe(ToyWorldConfig(name="toyworld", seed=4321, size=48))


#: a tiny toy-backend training (the tests check plumbing, not accuracy)
TINY = dict(train_images=96, epochs=1, test_images=16)


def _backend(registry, name: str, tmp_path: Path, **options):
    return registry.create(registry.config(name, device="cpu", **options),
                           services=services(Cache(tmp_path)))


# -- the spec lookup -----------------------------------------------------------------------------
def test_probe_images_crops_and_renders_carry_their_spec(probe: ToyWorldProbe) -> None:
    from dndbench.describers.dnd import cropping

    image = probe.image(5)
    assert image_specs.lookup(image) == probe.spec(5)
    crop = cropping.crop(image, (20, 40, 200, 300), 375)  # DnD's attention crop
    assert image_specs.lookup(crop.resize((32, 32))) == probe.spec(5)
    image_specs.clear_index()
    renderer = TEXT2IMAGE.create(TEXT2IMAGE.config("toy"))
    data = renderer._generate_items([("a red star on sand", 0, 3)])[0]
    decoded = png_image(data)  # as the call cache hands it back
    spec = image_specs.lookup(decoded)
    assert spec is not None and spec.main.shape == "star" and spec.scene == "sand"


def test_the_content_index_finds_an_image_that_lost_its_tag(probe: ToyWorldProbe) -> None:
    from PIL import Image

    image = probe.image(7)
    bare = Image.fromarray(np.asarray(image))
    assert image_specs.INFO_KEY not in bare.info
    assert image_specs.lookup(bare) == probe.spec(7)
    image_specs.clear_index()
    assert image_specs.lookup(bare) is None


# -- oracle backends -----------------------------------------------------------------------------
def test_the_oracle_captioner_returns_the_true_caption(tmp_path: Path,
                                                       probe: ToyWorldProbe) -> None:
    captioner = _backend(CAPTIONERS, "oracle", tmp_path)
    images = [probe.image(i) for i in range(len(probe))]
    assert captioner.caption(images) == [canonical_caption(probe.spec(i)) for i in range(len(probe))]
    assert captioner.role == "reference"


def test_the_oracle_captioner_answers_unknown_images_with_nothing(tmp_path: Path) -> None:
    from PIL import Image

    captioner = _backend(CAPTIONERS, "oracle", tmp_path)
    assert captioner.caption([Image.new("RGB", (16, 16), (1, 2, 3))]) == [""]


def test_the_oracle_vlm_matches_images_with_their_concepts(tmp_path: Path,
                                                           probe: ToyWorldProbe) -> None:
    from dndbench.toyworld.world import SHAPES

    vlm = _backend(VLMS, "oracle", tmp_path)
    images = [probe.image(i) for i in range(len(probe))]
    emb = vlm.encode_images(images)
    words = vlm.encode_texts(list(SHAPES))
    best = (emb @ words.T).argmax(1)
    assert [SHAPES[b] for b in best] == [probe.spec(i).main.shape for i in range(len(probe))]
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-6)
    unknown = vlm.encode_texts(["a dog playing chess", "circles"])
    assert np.abs(emb @ unknown[0]).max() == 0.0  # names no concept: matches no image
    assert (emb @ unknown[1] > 0).sum() >= 1  # plurals and synonyms count


def test_the_oracle_vlm_knows_the_open_vocabulary_concepts(tmp_path: Path,
                                                          probe: ToyWorldProbe) -> None:
    from dndbench.toyworld.render import shows

    vlm = _backend(VLMS, "oracle", tmp_path)
    images = [probe.image(i) for i in range(len(probe))]
    emb = vlm.encode_images(images)
    for concept, text in (("large object", "a huge shape"), ("outlined", "hollow"),
                          ("zigzag", "zig-zag"), ("two objects", "a pair of objects")):
        truth = np.array([shows(*probe._render(i)[1:], concept) for i in range(len(probe))])
        assert 0 < truth.sum() < len(truth), concept
        scores = emb @ vlm.encode_texts([text])[0]
        assert ((scores > 0) == truth).all(), concept


def test_the_oracle_caption_names_the_open_vocabulary_concepts(tmp_path: Path,
                                                              probe: ToyWorldProbe) -> None:
    from dndbench.toyworld.render import shows
    from dndbench.toyworld.synonyms import names_concept
    from dndbench.toyworld.world import LARGE_RADIUS

    captions = _backend(CAPTIONERS, "oracle", tmp_path).caption(
        [probe.image(i) for i in range(len(probe))])
    for i, text in enumerate(captions):
        spec, mask = probe._render(i)[1:]
        main = spec.main  # the caption names the main object's style, not the distractor's
        assert names_concept(text, "large object") == (main.radius >= LARGE_RADIUS), text
        assert names_concept(text, "outlined") == main.outlined, text
        assert names_concept(text, "zigzag") == (main.texture == "zigzag"), text
        assert names_concept(text, "two objects") == shows(spec, mask, "two objects"), text
    assert any(names_concept(c, "two objects") for c in captions)


# -- weakened backends ---------------------------------------------------------------------------
@pytest.mark.parametrize("fraction", [0.0, 0.3, 1.0])
def test_slot_corruption_hits_the_seeded_fraction(probe: ToyWorldProbe, fraction: float) -> None:
    from dndbench.toyworld.backend_network import SLOTS
    from dndbench.toyworld.weak_backends import CORRUPTED_SLOTS, corrupt_slots

    images = [probe.image(i) for i in range(len(probe))]
    preds = {slot: np.zeros(len(images), np.int64) for slot in SLOTS}
    out, hit = corrupt_slots(preds, images, fraction, seed=3)
    share = np.mean([hit[s].mean() for s in CORRUPTED_SLOTS])
    assert abs(share - fraction) <= 0.1
    for slot in SLOTS:  # a corrupted slot always holds another value
        assert ((out[slot] != 0) == hit[slot]).all()
    assert not hit["object"].any()  # the view keeps its object: a caption stays a caption
    again, _ = corrupt_slots(preds, images, fraction, seed=3)
    assert all((again[s] == out[s]).all() for s in SLOTS)
    other, _ = corrupt_slots(preds, images, fraction, seed=4)
    assert fraction in (0.0, 1.0) or any((other[s] != out[s]).any() for s in SLOTS)


def test_the_weak_captioner_is_the_toy_captioner_at_fraction_zero(tmp_path: Path,
                                                                 probe: ToyWorldProbe) -> None:
    images = [probe.image(i) for i in range(16)]
    toy = _backend(CAPTIONERS, "toy", tmp_path, **TINY).caption(images)
    assert _backend(CAPTIONERS, "toy_weak", tmp_path, fraction=0.0, **TINY).caption(images) == toy
    weak = _backend(CAPTIONERS, "toy_weak", tmp_path, fraction=0.5, **TINY).caption(images)
    assert weak != toy and len(weak) == len(toy)
    with pytest.raises(ConfigError, match="fraction"):
        _backend(CAPTIONERS, "toy_weak", tmp_path, fraction=1.5)


def test_the_weak_vlm_swaps_the_seeded_share_of_images(tmp_path: Path,
                                                       probe: ToyWorldProbe) -> None:
    images = [probe.image(i) for i in range(24)]
    toy = _backend(VLMS, "toy", tmp_path, **TINY).encode_images(images)
    weak_vlm = _backend(VLMS, "toy_weak", tmp_path, fraction=0.5, **TINY)
    weak = weak_vlm.encode_images(images)
    swapped = [text is not None for text in weak_vlm.corrupted(images)]
    assert 0 < sum(swapped) < len(images)
    same = np.isclose(weak, toy, atol=1e-6).all(axis=1)
    assert (same == ~np.array(swapped)).all()
    np.testing.assert_allclose(np.linalg.norm(weak, axis=1), 1.0, atol=1e-5)


# -- setting labels ------------------------------------------------------------------------------
def _spec(overrides: list[str]):
    from hydra import compose, initialize_config_module

    from dndbench.cli import setup
    from dndbench.config import to_run_spec

    setup([])
    with initialize_config_module("dndbench.conf", version_base="1.3"):
        return to_run_spec(compose("config", overrides=overrides), overrides)


@pytest.mark.parametrize("overrides, describer, label", [
    ([], "dnd", "dnd"),
    (["captioner=oracle", "vlm=oracle"], "dnd", "dnd[captioner=oracle, vlm=oracle]"),
    (["captioner=toy_weak", "captioner.fraction=0.2"], "caption_word",
     "caption_word[captioner=toy_weak(fraction=0.2)]"),
    (["captioner=oracle"], "netdissect", "netdissect"),
    (["llm=keyword"], "dnd", "dnd[llm=keyword]"),
    (["captioner=toy", "captioner.device=cpu"], "dnd", "dnd"),
])
def test_setting_labels_show_the_backends_that_differ_from_the_track(
        overrides: list[str], describer: str, label: str) -> None:
    from dndbench.describers.base import DESCRIBERS
    from dndbench.pipeline import run_setting_label

    spec = _spec(overrides)
    assert run_setting_label(spec, DESCRIBERS.config(describer)) == label
    assert run_setting_label(spec, DESCRIBERS.config(describer, label_as="mine")) == "mine"


# -- the ladder's bookkeeping --------------------------------------------------------------------
def test_strengths_parse_and_base_labels_strip_the_backends() -> None:
    from dndbench.ladder import STRENGTHS, base_setting, parse_strengths

    assert parse_strengths(None) == STRENGTHS
    assert parse_strengths(["a=captioner=oracle vlm=oracle", "b="]) == {
        "a": ["captioner=oracle", "vlm=oracle"], "b": []}
    with pytest.raises(ConfigError):
        parse_strengths(["only=captioner=oracle"])
    with pytest.raises(ConfigError):
        parse_strengths(["bad name=x", "b="])
    assert base_setting("dnd[captioner=oracle, vlm=oracle]") == "dnd"
    assert base_setting("published[dnd](path=x)") == "published[dnd](path=x)"


def test_kendall_tau_compares_the_strengths_rankings() -> None:
    from dndbench.ladder import agreement

    rows = []
    means = {"oracle": [0.9, 0.5, 0.1], "trained": [0.8, 0.4, 0.2], "weak": [0.1, 0.5, 0.9]}
    for strength, values in means.items():
        for base, value in zip(["dnd", "milan", "constant"], values):
            rows.append({"model": "toynet", "layer": "fc", "neuron_set": "x", "probe": "toyworld",
                         "metric": "m", "strength": strength, "base": base, "mean": value})
    taus = agreement(pd.DataFrame(rows)).set_index(["strength_a", "strength_b"])["tau"]
    assert taus[("oracle", "trained")] == pytest.approx(1.0)
    assert taus[("oracle", "weak")] == pytest.approx(-1.0)


def test_the_ladder_tables_give_tied_means_one_rank() -> None:
    from dndbench.ladder import agreement, markdown

    rows = [{"model": "toynet", "layer": "fc", "neuron_set": "x", "probe": "toyworld",
             "metric": "m", "strength": "oracle", "base": base, "mean": value, "role": role}
            for base, value, role in [("dnd", 1.0, "method"), ("oracle", 1.0, "reference"),
                                      ("constant", 0.0, "control")]]
    means = pd.DataFrame(rows)
    md = markdown(means, agreement(means), {"oracle": []})
    assert "| dnd | method | 1.000 (1) |" in md and "| oracle | reference | 1.000 (1) |" in md
    assert "| constant | control | 0.000 (3) |" in md


def test_the_ladder_runs_each_strength_into_its_folder(tmp_path: Path) -> None:
    from dndbench.ladder import run_strengths

    calls: list[list[str]] = []
    folders = run_strengths({"a": ["captioner=oracle"], "b": []}, ["neurons=planted"], tmp_path,
                            runner=lambda argv: calls.append(argv) or 0)
    assert folders == {"a": tmp_path / "a", "b": tmp_path / "b"}
    assert calls == [["captioner=oracle", "neurons=planted", f"hydra.run.dir={tmp_path / 'a'}"],
                     ["neurons=planted", f"hydra.run.dir={tmp_path / 'b'}"]]
    with pytest.raises(ConfigError, match="strength 'a'"):
        run_strengths({"a": []}, [], tmp_path, runner=lambda argv: 2)
