"""Tests of the toy-world backends: caption language, renderer, keyword LLM, toy CLIP/captioner."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from dndbench.backends.base import CAPTIONERS, LLMS, TEXT2IMAGE, VLMS
from dndbench.backends.call_cache import CallCache
from dndbench.cache import Cache
from dndbench.errors import ConfigError
from dndbench.toyworld.captions import (
    SLOT_VALUES,
    TEMPLATES,
    UNK,
    canonical_caption,
    caption,
    mentioned,
    patch_slots,
    random_caption,
    slot_queries,
    slots_caption,
    spec_slots,
    tokenize,
    vocabulary,
)
from dndbench.toyworld.render import render, render_image
from dndbench.toyworld.synonyms import names_concept
from dndbench.toyworld.world import EXTRA_TEXTURES, concepts_from_text, sample_scene

TINY = dict(train_images=96, epochs=1, test_images=16)


def _backend(kind_registry, name: str, tmp_path, **options):
    cls = kind_registry.get(name)
    config = cls.Config(name=name, **options)
    return cls(config, call_cache=CallCache.for_cache(Cache(tmp_path)), cache_dir=tmp_path)


# -- caption language ------------------------------------------------------------------------
def test_captions_name_the_spec_concepts():
    rng = np.random.default_rng(0)
    for _ in range(200):
        spec = sample_scene(rng)
        slots = spec_slots(spec)
        for template in range(len(TEMPLATES)):
            text = caption(spec, template)
            hidden = {"texture"} if spec.main.outlined or spec.main.texture in EXTRA_TEXTURES else set()
            truth = {k: v for k, v in spec.concept_names().items()
                     if k in mentioned(template) and k not in hidden}
            assert concepts_from_text(text) == truth, text
            assert UNK not in [vocabulary()[i] for i in tokenize(text)]
            # the open-vocabulary concepts are named exactly when the image shows them
            assert names_concept(text, "large object") == (slots["size"] == "large"), text
            assert names_concept(text, "outlined") == spec.main.outlined, text
            assert names_concept(text, "zigzag") == (spec.main.texture == "zigzag"), text
            assert names_concept(text, "two objects") == (len(spec.objects) > 1), text
        assert (" and a small " in canonical_caption(spec)) == (len(spec.objects) > 1)


def test_caption_examples_and_unknown_words():
    spec = sample_scene(np.random.default_rng(3), shape="star", colour="orange",
                        texture="striped", scene="brick wall", distractor=False, large=False)
    assert canonical_caption(spec) == "an orange striped star on brick wall"
    slots = {**spec_slots(spec), "size": "large", "outlined": "yes", "distractor": "present",
             "distractor_shape": "circle", "distractor_colour": "blue"}
    assert slots_caption(slots) == ("a large orange outlined star on brick wall and a small "
                                    "blue circle as a second object")
    assert slots_caption(patch_slots("grass")) == "a patch of grass"
    unk = vocabulary().index(UNK)
    assert tokenize("a dog on grass")[1] == unk and tokenize("") == [unk]
    assert set(tokenize("RED Star")) == {vocabulary().index("red"), vocabulary().index("star")}
    for word in ("zigzag", "outlined", "hollow", "large", "huge", "two", "pair", "stripes",
                 "crimson", "disc", "filled", "medium", "single"):
        assert unk not in tokenize(word), word


def test_random_captions_vary_use_synonyms_and_stay_in_the_vocabulary():
    rng = np.random.default_rng(1)
    specs = [sample_scene(rng) for _ in range(300)]
    texts = [random_caption(spec, rng) for spec in specs]
    assert len(set(texts)) > 280
    vocab = vocabulary()
    assert all(UNK not in [vocab[i] for i in tokenize(t)] for t in texts)
    used = {w for t in texts for w in t.split()}
    assert {"crimson", "hollow", "huge", "zigzag"} & used and len(used) > 120
    patches = {random_caption(patch_slots("snow"), rng) for _ in range(40)}
    assert len(patches) > 3
    assert all(names_concept(p, "snow") and "shape" not in concepts_from_text(p) for p in patches)
    again = np.random.default_rng(9)
    assert random_caption(specs[0], again) == random_caption(specs[0], np.random.default_rng(9))


def test_slot_queries_follow_the_slot_values():
    for slot, texts in slot_queries().items():
        assert len(texts) == len(SLOT_VALUES[slot]), slot
        assert all(UNK not in [vocabulary()[i] for i in tokenize(t)] for t in texts)
    assert "zigzag" in slot_queries()["texture"]


def test_the_slots_of_a_hidden_distractor_say_absent():
    rng = np.random.default_rng(2)
    spec = sample_scene(rng, distractor=True)
    _, mask = render(spec)
    assert spec_slots(spec, mask)["distractor"] == "present"
    hidden = np.where(mask == 2, 0, mask)
    assert spec_slots(spec, hidden)["distractor"] == "absent"
    assert spec_slots(spec, hidden)["distractor_shape"] is None


# -- renderer --------------------------------------------------------------------------------
def test_renderer_shows_prompted_concepts_and_is_deterministic(tmp_path):
    from dndbench.toyworld.toy_backends import prompt_spec

    t2i = _backend(TEXT2IMAGE, "toy", tmp_path)
    prompt = "One realistic image of a red striped star on brick wall"
    images = t2i.generate([prompt], 4, seed=0)[0]
    assert len(images) == 4 and images[0].size == (64, 64)
    for i, image in enumerate(images):
        spec = prompt_spec(prompt, 0, i)
        assert spec.concept_names() == {"colour": "red", "texture": "striped", "shape": "star",
                                        "scene": "brick wall"}
        assert np.array_equal(np.asarray(image), np.asarray(render_image(spec)))
    assert len({np.asarray(im).tobytes() for im in images}) == 4
    fresh = _backend(TEXT2IMAGE, "toy", tmp_path / "other")
    again = fresh.generate([prompt], 2, seed=0)[0]  # Q' <= Q: the first Q' images
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(again, images))
    other_seed = fresh.generate([prompt], 1, seed=1)[0][0]
    assert not np.array_equal(np.asarray(other_seed), np.asarray(images[0]))


def test_renderer_ignores_unknown_words(tmp_path):
    from dndbench.toyworld.toy_backends import prompt_spec

    assert prompt_spec("a fluffy dog near blue water", 0, 0).concept_names()["colour"] == "blue"
    assert prompt_spec("a fluffy dog near blue water", 0, 0).scene == "water"
    randoms = {prompt_spec("One realistic image of a dog", 0, i).main.shape for i in range(30)}
    assert len(randoms) > 3  # nothing known: random scenes
    t2i = _backend(TEXT2IMAGE, "toy", tmp_path)
    assert len(t2i.generate(["a dog"], 2)[0]) == 2


def test_renderer_reads_synonyms_and_the_open_vocabulary_concepts():
    from dndbench.toyworld.render import shows
    from dndbench.toyworld.toy_backends import prompt_concepts, prompt_spec

    assert prompt_concepts("One realistic image of a big hollow disc") == {
        "shape": "circle", "outlined": True, "large": True}
    assert prompt_concepts("crimson zigzag hearts on the beach") == {
        "colour": "red", "texture": "zigzag", "shape": "heart", "scene": "sand"}
    assert prompt_concepts("two objects")["distractor"] is True
    assert "texture" not in prompt_concepts("an outlined striped square")  # outlines are plain
    for prompt, concept in (("a large object", "large object"), ("outlined", "outlined"),
                            ("zigzag", "zigzag"), ("a pair of objects", "two objects")):
        for i in range(5):
            spec = prompt_spec(prompt, 0, i)
            assert shows(spec, render(spec)[1], concept), (prompt, i)
    assert not any(prompt_spec("a striped star", 0, i).main.outlined for i in range(20))


def test_renderer_call_cache_computes_once(tmp_path):
    t2i = _backend(TEXT2IMAGE, "toy", tmp_path)
    t2i.generate(["red", "star"], 3)
    assert t2i.computed == 6
    t2i.generate(["red", "star"], 3)
    assert t2i.computed == 6
    second = _backend(TEXT2IMAGE, "toy", tmp_path)
    second.generate(["red"], 2)
    assert second.computed == 0


# -- keyword LLM -----------------------------------------------------------------------------
def _summarise(captions: list[str]) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Give one label summarising these descriptions: a windmill, beige linen"},
        {"role": "assistant", "content": "multicolored textiles"},
        {"role": "user", "content": "Give one concise label (1-5 words) that summarises most of "
                                    "the descriptions; answer only the label, no period or quotes. "
                                    "Descriptions: " + ", ".join(captions)},
    ]


def test_keyword_llm_summarises_the_shared_concept(tmp_path):
    llm = _backend(LLMS, "keyword", tmp_path)
    rng = np.random.default_rng(0)
    reds = [canonical_caption(sample_scene(rng, colour="red")) for _ in range(8)]
    others = [canonical_caption(sample_scene(rng, colour="blue")) for _ in range(2)]
    answer = llm.chat([_summarise(reds + others)])[0]
    assert "red" in answer.split() and "blue" not in answer
    walls = ["a red plain circle on brick wall", "a blue dotted ring on brick wall",
             "brick wall with a white wavy heart", "a green star on brick wall"]
    assert llm.chat([_summarise(walls)])[0] == "brick wall"
    stars = ["a red striped star on grass", "a blue striped star on sand", "a striped star on snow"]
    assert llm.chat([_summarise(stars)])[0] == "striped star"


def test_keyword_llm_simplifies_one_caption_and_is_robust(tmp_path):
    llm = _backend(LLMS, "keyword", tmp_path)
    simplify = [{"role": "user", "content": "Give only one concise concept label that "
                                            "simplifies the description:\n"
                                            "a red striped star on grass and a small blue circle"}]
    assert llm.chat([simplify])[0] == "red striped star grass blue circle"
    trailing = [{"role": "user", "content": "Summarise:\nred star, red circle, red ring\nAnswer:"}]
    assert llm.chat([trailing])[0] == "red"
    assert llm.chat([[{"role": "user", "content": "a dog, a dog on a sofa, a brown dog"}]])[0] == "dog"
    assert llm.chat([[{"role": "user", "content": ""}]])[0] == ""
    llm.chat([trailing])
    assert llm.computed == 4  # the repeated conversation came from the call cache


def test_backends_are_registered_with_light_imports():
    assert "toy" in CAPTIONERS.names() and "toy" in VLMS.names() and "toy" in TEXT2IMAGE.names()
    assert "keyword" in LLMS.names()
    code = ("import sys, dndbench.toyworld.toy_backends, dndbench.toyworld.keyword_summariser; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# -- trained toy CLIP and captioner ----------------------------------------------------------
def test_training_views_and_their_slots():
    from dndbench.toyworld.backend_data import (
        dense_targets,
        report_views,
        slot_targets,
        training_data,
        training_views,
        true_boxes,
    )

    images, specs, masks = training_data(123, 24, 0.3, 0.5, workers=1)
    views = training_views(images, specs, masks, 123, patch_fraction=1.0)
    assert views.images.shape[1:] == (3, 64, 64) and views.images.dtype == np.uint8
    assert views.kinds.count("full") == 24 and views.kinds.count("crop") == 24
    assert views.kinds.count("patch") >= 20
    targets = slot_targets(views.slots)
    patches = np.array([k == "patch" for k in views.kinds])
    assert (targets["object"][patches] == 0).all() and (targets["shape"][patches] == -1).all()
    assert (targets["scene"] >= 0).all() and (targets["object"][~patches] == 1).all()
    held = report_views(images[:6], specs[:6])
    assert held.kinds.count("full") == 6 and held.kinds.count("crop") == 6
    again = training_views(images, specs, masks, 123, patch_fraction=1.0)
    assert np.array_equal(again.images, views.images)
    # the true boxes hold each object: main objects always, distractors when the view shows one
    import torch

    boxes, found = true_boxes(dense_targets(torch.from_numpy(views.masks),
                                            torch.from_numpy(views.objects))["part16"])
    is_patch = torch.from_numpy(patches)
    assert found[1][~is_patch].all() and not found[1][is_patch].any()
    full = [i for i, k in enumerate(views.kinds) if k == "full"]
    assert found[2][full].tolist() == [len(s.objects) > 1 for s in specs]
    for i in full:
        ys, xs = np.nonzero(views.masks[i] == 1)
        cx, cy, half = boxes[1][i].tolist()
        assert abs(xs.mean() / 64 - cx) < 0.03 and abs(ys.mean() / 64 - cy) < 0.03
        assert half * 64 >= 0.4 * (xs.max() - xs.min())


def test_captioner_output_reads_back_into_its_slots():
    import torch

    from dndbench.toyworld.backend_network import SLOTS, predicted_slots
    from dndbench.toyworld.train_toy_backends import predicted_captions
    from dndbench.toyworld.world_report import caption_slots

    rng = np.random.default_rng(4)
    logits = {slot: torch.from_numpy(rng.normal(size=(40, len(v))).astype(np.float32))
              for slot, v in SLOTS.items()}
    for slots, text in zip(predicted_slots(logits), predicted_captions(
            {k: v.numpy() for k, v in logits.items()})):
        read = caption_slots(text)
        for slot, value in slots.items():
            if slot == "texture" and slots["outlined"] == "yes":
                value = "plain"  # an outline stands for the (plain) texture
            if value is not None and (slot == "object" or slots["object"] == "present"):
                assert read[slot] == value, (slot, text)


@pytest.mark.slow
def test_training_beats_chance_and_is_deterministic(tmp_path):
    import torch

    from dndbench.toyworld.train_toy_backends import BackendTrainConfig, train

    config = BackendTrainConfig(train_images=600, test_images=100, epochs=3, batch_size=32,
                                widths=(16, 16, 32, 48))
    meta = train(config, tmp_path / "a", progress=False, workers=1)
    views = meta["report"]["views"]
    assert set(views) == {"full", "crop", "patch"}
    assert views["full"]["captioner"]["colour"] > 2 / 8 and views["patch"]["vlm"]["scene"] > 2 / 7
    assert views["full"]["captioner"]["scene"] > 2 / 7
    tiny = BackendTrainConfig(train_images=48, test_images=8, epochs=1,
                              widths=(16, 16, 16, 16))
    weights = []
    for folder in ("b", "c"):
        train(tiny, tmp_path / folder, progress=False, workers=1)
        weights.append(torch.load(tmp_path / folder / "weights.pt"))
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    with pytest.raises(ConfigError, match="16"):
        train(BackendTrainConfig(widths=(8, 8, 8, 8)), tmp_path / "d", progress=False)


@pytest.mark.slow
def test_toy_clip_and_captioner_backends(tmp_path):
    from dndbench.toyworld.render import toy_image
    from dndbench.toyworld.world_report import caption_slots

    vlm = _backend(VLMS, "toy", tmp_path, **TINY)
    captioner = _backend(CAPTIONERS, "toy", tmp_path, **TINY)
    images = [toy_image(7, i)[0] for i in range(6)]
    emb = vlm.encode_images(images)
    assert emb.shape == (6, 64) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    texts = vlm.encode_texts(["red", "dog", "zebra", "red star"])
    assert np.allclose(texts[1], texts[2])  # unknown words all map to <unk>
    assert not np.allclose(texts[0], texts[1])
    captions = captioner.caption(images)
    for text in captions:
        slots = caption_slots(text)
        assert slots["scene"] is not None
        assert slots["object"] == "absent" or None not in (slots["shape"], slots["colour"])
    assert (tmp_path / "toy_backends" / vlm.weights_dir().name / "meta.json").exists()
    before = (vlm.computed, captioner.computed)
    vlm.encode_images(images)
    captioner.caption(images)
    assert (vlm.computed, captioner.computed) == before == (6 + 4, 6)
    # a bigger crop of a toy image is resized to 64x64
    assert len(captioner.caption([images[0].resize((150, 150))])) == 1
