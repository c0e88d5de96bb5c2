"""Describe-and-Dissect: cropping, candidates, scoring, layer batching and sweeps (offline).

The describer runs on the plugin kit's tiny model with small fake backends registered here, so
these tests do not depend on the toy-world or real backends.
"""
from __future__ import annotations

import hashlib

import numpy as np
import pytest

from dndbench.backends.base import (
    CAPTIONERS,
    LLM,
    LLMS,
    TEXT2IMAGE,
    VLMS,
    BackendConfig,
    Captioner,
    TextToImage,
    VisionLanguageModel,
    png_bytes,
)
from dndbench.describers.base import DESCRIBERS
from dndbench.describers.caption_word import most_frequent_word
from dndbench.describers.dnd import candidates as cand
from dndbench.describers.dnd import cropping, selection
from dndbench.errors import ConfigError
from dndbench.testing.kit import TINY_COLOURS, check_describer, tiny_context

FAKE = "fake_dnd_test"


# -- fake backends -------------------------------------------------------------------------------
def colour_word(image) -> str:
    """The tiny-world colour nearest to the image's most saturated pixels ("grey" if none)."""
    px = np.asarray(image.convert("RGB"), np.float64).reshape(-1, 3)
    vivid = px[px.max(1) - px.min(1) > 60]
    if len(vivid) < 0.05 * len(px):
        return "grey"
    mean = vivid.mean(0)
    return min(TINY_COLOURS, key=lambda n: float(((np.array(TINY_COLOURS[n]) - mean) ** 2).sum()))


@CAPTIONERS.register(FAKE)
class FakeCaptioner(Captioner):
    def _caption_batch(self, images):
        return [f"a {colour_word(im)} square on a grey background" for im in images]


@LLMS.register(FAKE)
class FakeLLM(LLM):
    """Simplify: drop articles; summarise: "Label: <most common text>" (two tied -> "x, y");
    merge: the first listed label."""

    def _chat_batch(self, conversations):
        return [self._answer(c[-1]["content"]) for c in conversations]

    @staticmethod
    def _answer(text: str) -> str:
        if "Descriptions: " in text:
            items = text.split("Descriptions: ", 1)[1].split(", ")
            counts = {t: items.count(t) for t in items}
            ranked = sorted(counts, key=lambda t: -counts[t])
            tied = len(ranked) > 1 and counts[ranked[0]] == counts[ranked[1]]
            return "Label: " + (f"{ranked[0]}, {ranked[1]}" if tied else ranked[0])
        if "Description: " in text:
            words = text.split("Description: ", 1)[1].split()
            return " ".join(w for w in words if w not in ("a", "an", "the")) + "."
        return text.rsplit(": ", 1)[-1].split(",")[0]


@TEXT2IMAGE.register(FAKE)
class FakeT2I(TextToImage):
    def _generate_items(self, items):
        from PIL import Image

        out = []
        for prompt, seed, i in items:
            digest = hashlib.sha256(f"{prompt}|{seed}|{i}".encode()).digest()
            rng = np.random.default_rng(list(digest[:8]))
            pixels = np.full((32, 32, 3), 128, np.uint8) + rng.integers(0, 9, (32, 32, 3), dtype=np.uint8)
            colour = next((c for c in TINY_COLOURS if c in prompt), None)
            if colour is not None:
                x, y = rng.integers(0, 16, 2)
                side = int(rng.integers(8, 16))
                pixels[y:y + side, x:x + side] = TINY_COLOURS[colour]
            out.append(png_bytes(Image.fromarray(pixels)))
        return out


@VLMS.register(FAKE)
class FakeVLM(VisionLanguageModel):
    def _encode_images(self, images):
        rows = np.stack([np.r_[np.asarray(im.convert("RGB"), np.float64).mean((0, 1)), 50.0]
                         for im in images])
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)

    def _encode_texts(self, texts):
        rows = np.stack([np.frombuffer(hashlib.sha256(t.encode()).digest()[:4], np.uint8) + 1.0
                         for t in texts])
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def fake_context(tmp_path, layer: str = "layer1", units=None, probe_size: int = 24):
    ctx = tiny_context(tmp_path, layer=layer, units=units, probe_size=probe_size)
    ctx.backends = {kind: BackendConfig(name=FAKE, device="cpu")
                    for kind in ("captioner", "llm", "text2image", "vlm")}
    return ctx


def dnd(**overrides):
    return DESCRIBERS.create("dnd", **overrides)


# -- step 1: cropping ----------------------------------------------------------------------------
def two_blob_map() -> np.ndarray:
    a = np.zeros((8, 8))
    a[1:3, 1:3] = 5.0
    a[5:7, 4:7] = 4.0
    return a


def test_otsu_finds_two_blobs():
    boxes = cropping.crop_boxes(two_blob_map(), size=80)
    assert len(boxes) == 2
    (x0, y0, x1, y1), (u0, v0, u1, v1) = sorted(boxes)
    assert x1 <= 40 and y1 <= 40 and u0 >= 30 and v0 >= 40  # one top-left, one bottom-right
    assert all(cropping.iou(b, (0, 0, 80, 80)) < 0.8 for b in boxes)


def test_flat_map_has_no_crops():
    assert cropping.crop_boxes(np.ones((7, 7)), size=50) == []


def test_overlap_limits_and_crop_count():
    full = (0, 0, 100, 100)
    boxes = [(0, 0, 95, 95),  # IoU with the image 0.90 >= 0.8: rejected
             (0, 0, 60, 60), (0, 0, 55, 60),  # IoU 0.92 with the first kept: rejected
             (0, 0, 30, 60)]  # IoU 0.5 with (0,0,60,60): kept (<= 0.5)
    assert cropping.select_boxes(boxes, 100) == [(0, 0, 60, 60), (0, 0, 30, 60)]
    many = [(10 * i, 0, 10 * i + 9 - i, 9) for i in range(6)]  # disjoint, shrinking
    kept = cropping.select_boxes(many, 100, max_crops=4)
    assert kept == many[:4] and cropping.iou(full, full) == 1.0


def test_heatmap_modes():
    a = np.array([[0.0, 0.5], [1.0, 2.0]])
    assert cropping.heatmap_uint8(a, "minmax").tolist() == [[0, 64], [128, 255]]
    assert cropping.heatmap_uint8(a, "raw").tolist() == [[0, 127], [255, 254]]  # 510 wraps to 254
    with pytest.raises(ValueError):
        cropping.heatmap_uint8(a, "other")


def test_crop_is_resized_back():
    from PIL import Image

    image = Image.new("RGB", (32, 32), (200, 10, 10))
    assert cropping.crop(image, (10, 20, 110, 220), size=375).size == (375, 375)


# -- step 2: candidates --------------------------------------------------------------------------
def test_normalise_candidates():
    raw = ["Red Squares.", "red squares", "Geometric  Design", "", "blue.", "Abstract graphics"]
    assert cand.normalise_candidates(raw) == [
        "red squares", "geometric design", "geometric design background", "blue",
        "abstract graphics", "abstract graphics background"]


def test_answer_post_processing():
    assert cand.after_colon('Label: "red squares"') == "red squares"
    assert cand.after_colon("no colon here ") == "no colon here"
    assert cand.needs_merge("red, blue") and not cand.needs_merge("red squares")
    merge = cand.merge_conversation("red , blue,")
    assert len(merge) == 1 and merge[0]["content"].endswith("Labels: red, blue")


def test_conversations_follow_the_shot_structure():
    simplify = cand.simplify_conversation("a cat on a mat")
    assert [m["role"] for m in simplify] == ["user", "assistant", "user"]
    assert simplify[-1]["content"].endswith("a cat on a mat")
    summary = cand.summary_conversation(["x", "y"])
    assert [m["role"] for m in summary] == ["user", "assistant"] * 2 + ["user"]
    assert summary[-1]["content"].endswith("Descriptions: x, y")


def test_shuffles_are_seeded_by_seed_unit_and_draw():
    caps = [f"c{i}" for i in range(10)]
    assert cand.shuffled(caps, 0, 3, 1) == cand.shuffled(caps, 0, 3, 1)
    assert sorted(cand.shuffled(caps, 0, 3, 1)) == caps
    assert len({tuple(cand.shuffled(caps, 0, 3, d)) for d in range(5)}) > 1
    assert cand.shuffled(caps, 0, 3, 1) != cand.shuffled(caps, 0, 4, 1)


# -- step 3: scoring -----------------------------------------------------------------------------
def test_positions_break_ties_by_candidate_then_image():
    acts = np.array([[1.0, 3.0], [3.0, 0.0]])
    assert selection.positions(acts).tolist() == [[2, 0], [1, 3]]


def test_rank_scores():
    pos = np.array([[0, 4, 5], [1, 2, 3]])
    assert selection.score_mean(pos).tolist() == [3.0, 2.0]
    assert selection.score_topk_squared(pos, beta=2).tolist() == [8.0, 2.5]
    assert selection.score_topk_squared(pos, beta=10).tolist() == [41 / 3, 14 / 3]  # all images


def test_image_products_and_empty_window():
    pos = np.array([[0, 5], [1, 2], [3, 4]])
    windows = selection.window_images(pos, window=3)
    assert [w.tolist() for w in windows] == [[0], [0, 1], []]
    sims = [np.array([0.5]), np.array([0.2, 0.4]), np.zeros(0)]
    assert selection.score_image_products(sims).tolist() == pytest.approx([0.5, 0.3, -1.0])


def test_topk_compare_and_tie_break():
    sq = np.array([4.0, 1.0, 4.0])  # places: c1 first (rho 3), c0 (2), c2 (3rd, tie -> index, rho 1)
    ip = np.array([0.5, 0.3, 0.9])
    assert selection.score_topk_compare(sq, ip).tolist() == pytest.approx([1.0, 0.9, 0.9])
    pos = np.array([[0, 1], [2, 3], [4, 5]])
    order, values = selection.select("topk_compare", pos, [np.array([0.4]), np.array([0.6]),
                                                           np.zeros(0)], beta=1)
    # rho = 3, 2, 1; scores 1.2, 1.2, -1: tie between c0 and c1 goes to the lower index
    assert order == [0, 1, 2] and values.tolist() == pytest.approx([1.2, 1.2, -1.0])
    order, _ = selection.select("mean", np.array([[1, 2], [0, 3], [4, 5]]), [], beta=5)
    assert order == [0, 1, 2]  # c0 and c1 tie on mean 1.5
    with pytest.raises(ValueError):
        selection.select("median", pos, [], 5)


# -- the describer -------------------------------------------------------------------------------
def test_config_is_checked():
    with pytest.raises(ConfigError, match="scoring"):
        dnd(scoring="median")
    with pytest.raises(ConfigError, match="prompt_template"):
        dnd(prompt_template="a photo")


@pytest.mark.slow
def test_describer_contract_on_hidden_and_final_layers(tmp_path):
    ctx = fake_context(tmp_path / "h", units=[0, 3, 5])
    frame = check_describer(dnd(), ctx)
    assert set(frame["unit"]) == {0, 3, 5}
    assert (frame["n_crops"] >= 0).all() and frame["label"].str.len().gt(0).all()
    assert ctx.counters["dnd/map_images"] > 0 and ctx.counters["dnd/forward_images"] > 0
    final = fake_context(tmp_path / "f", layer="fc")
    frame = check_describer(dnd(), final)
    assert len(frame) == 4 and (frame["n_crops"] == 0).all() and "dnd/map_images" not in final.counters
    assert frame["label"].str.contains("square|grey").all()


@pytest.mark.slow
def test_batched_equals_one_unit_at_a_time(tmp_path):
    """Separate fresh caches: nothing is shared between the two runs."""
    units = list(range(0, 16, 2))
    batched_ctx = fake_context(tmp_path / "batched", units=units)
    single_ctx = fake_context(tmp_path / "single", units=units)
    batched = check_describer(dnd(), batched_ctx)
    from dndbench.pipeline import descriptions_frame

    single = descriptions_frame(dnd(units_per_batch=1).describe(single_ctx))
    assert batched.equals(single)
    b, s = batched_ctx.counters, single_ctx.counters
    for name in ("dnd/captioned_images", "dnd/llm_calls", "dnd/generated_images"):
        assert b[name] <= s[name]
    assert b["dnd/forward_padding"] < s["dnd/forward_padding"]


def test_final_layer_batched_equals_single(tmp_path):
    batched = dnd().describe(fake_context(tmp_path / "a", layer="fc"))
    single = dnd(units_per_batch=1).describe(fake_context(tmp_path / "b", layer="fc"))
    assert batched == single


def test_beta_sweep_and_q_reuse(tmp_path):
    def run(**overrides):
        ctx = fake_context(tmp_path, units=[1, 2, 4])  # same cache, fresh backends and counters
        return dnd(**overrides).describe(ctx), ctx.counters

    _, first = run()
    assert first["dnd/generated_images"] > 0
    for beta in (1, 3, 10):
        _, again = run(beta=beta)
        upstream = ("dnd/captioned_images", "dnd/llm_calls", "dnd/generated_images",
                    "dnd/forward_images", "dnd/clip_images", "dnd/map_images")
        assert all(again.get(name, 0) == 0 for name in upstream), again
    _, q5 = run(q=5)
    assert q5.get("dnd/generated_images", 0) == 0 and q5.get("dnd/forward_images", 0) == 0


def test_scoring_without_images_skips_clip(tmp_path):
    ctx = fake_context(tmp_path, units=[0, 1])
    for scoring in ("mean", "topk_squared", "image_products"):
        ctx.counters.clear()
        out = dnd(scoring=scoring, crops=False, simplify=False, downscale=True).describe(ctx)
        assert len(out) == 2
        assert ("dnd/clip_images" in ctx.counters) == (scoring == "image_products")


# -- caption_word baseline -----------------------------------------------------------------------
def test_most_frequent_word():
    assert most_frequent_word(["a red car on the road", "the red bus", "a blue car"]) == ("red", 2)
    assert most_frequent_word(["a the of"]) == ("", 0)


def test_caption_word_describer(tmp_path):
    frame = check_describer(DESCRIBERS.create("caption_word"), fake_context(tmp_path, layer="fc"))
    assert len(frame) == 4 and set(frame["label"]) <= set(TINY_COLOURS) | {"grey", "square"}


# -- the real track, wired with tiny random-weight models and the fake OpenAI server -------------
@pytest.mark.slow
def test_real_track_wiring(tmp_path, monkeypatch, blip_dir, clip_dir, sd_dir):
    pytest.importorskip("transformers")
    pytest.importorskip("diffusers")
    pytest.importorskip("openai")
    from fake_openai import FakeOpenAI

    from dndbench.backends.openai_llm import reset_call_count

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-dnd")
    reset_call_count()
    blip, clip, sd = blip_dir, clip_dir, sd_dir  # tiny model folders (tests/conftest.py)
    ctx = fake_context(tmp_path / "cache", units=[0, 1])
    with FakeOpenAI() as server:
        ctx.backends = {
            "captioner": CAPTIONERS.config("blip", device="cpu", path=str(blip), max_new_tokens=6),
            "llm": LLMS.config("openai", base_url=server.base_url),
            "text2image": TEXT2IMAGE.config("sd14", device="cpu", path=str(sd), steps=2,
                                            height=32, width=32),
            "vlm": VLMS.config("clip_vitb16", device="cpu", path=str(clip)),
        }
        out = dnd(k=3, n=2, q=2, top_window=3).describe(ctx)
        assert server.requests and server.requests[0]["body"]["model"] == "gpt-4-0125-preview"
    assert [d.unit for d in out] == [0, 1] and all(d.label for d in out)
    c = ctx.counters
    assert c["dnd/captioned_images"] >= 3 and c["dnd/generated_images"] >= 2 and c["dnd/clip_images"] > 0
