"""Tests of CLIP-Dissect: similarity functions vs a plain loop, constructed cases, concept sets,
and the describer end to end with a fake colour VLM on the tiny kit model."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from dndbench.backends.base import VLMS, BackendConfig, VisionLanguageModel
from dndbench.describers.base import DESCRIBERS
from dndbench.describers.clip_dissect import ClipDissect
from dndbench.describers.clip_dissect.concept_sets import (
    load_concept_set,
    read_concept_file,
    unique_concepts,
)
from dndbench.describers.clip_dissect.similarity import SIMILARITIES, soft_wpmi, wpmi
from dndbench.errors import ConfigError
from dndbench.testing.kit import TINY_COLOURS, TinyModel, TinyProbe, check_describer, tiny_context

PUBLISHED = Path(__file__).resolve().parents[2] / "shared" / "data" / "published"


# -- reference: SoftWPMI written as plain loops ------------------------------------------------
def loop_pmi(P: np.ndarray, acts: np.ndarray, a: float, top_k: int, lam: float,
             p_start: float | None = 0.998, p_end: float = 0.97) -> list[list[float]]:
    """SoftWPMI (or WPMI when ``p_start`` is None) unit by unit, image by image, concept by concept."""
    n_images, n_concepts = P.shape
    n_units = acts.shape[1]
    probs = []
    for i in range(n_images):
        exps = [math.exp(a * P[i][m]) for m in range(n_concepts)]
        probs.append([e / sum(exps) for e in exps])
    log_cond = []
    for k in range(n_units):
        ranked = sorted(range(n_images), key=lambda i: -acts[i][k])[:top_k]
        row = []
        for m in range(n_concepts):
            total = 0.0
            for j, i in enumerate(ranked):
                if p_start is None:
                    total += math.log(probs[i][m] + 1e-7)
                else:
                    p_j = p_start - (j / top_k) * (p_start - p_end)
                    total += math.log(1 + p_j * (probs[i][m] - 1) + 1e-7)
            row.append(total)
        log_cond.append(row)
    out = [[0.0] * n_concepts for _ in range(n_units)]
    for m in range(n_concepts):
        column = [log_cond[k][m] for k in range(n_units)]
        peak = max(column)
        log_prior = peak + math.log(sum(math.exp(v - peak) for v in column)) - math.log(n_units)
        for k in range(n_units):
            out[k][m] = log_cond[k][m] - lam * log_prior
    return out


@pytest.mark.parametrize("top_k", [20, 100])
def test_soft_wpmi_matches_loop(top_k: int) -> None:
    rng = np.random.default_rng(0)
    P = rng.uniform(-0.2, 0.4, size=(60, 7))
    acts = rng.normal(size=(60, 5))
    expected = np.array(loop_pmi(P, acts, a=10, top_k=top_k, lam=1.0))
    got = soft_wpmi(P, acts, range(5), top_k=top_k)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    # chunking over units (one unit per chunk) and a subset of units give the same rows
    chunked = soft_wpmi(P, acts, [3, 1], top_k=top_k, max_elements=1)
    np.testing.assert_allclose(chunked, expected[[3, 1]], rtol=0, atol=1e-9)


def test_wpmi_matches_loop() -> None:
    rng = np.random.default_rng(1)
    P = rng.uniform(-0.2, 0.4, size=(50, 6))
    acts = rng.normal(size=(50, 4))
    expected = np.array(loop_pmi(P, acts, a=2, top_k=28, lam=0.6, p_start=None))
    np.testing.assert_allclose(wpmi(P, acts, range(4)), expected, rtol=0, atol=1e-5)


def constructed_case(n_concepts: int = 4, per_concept: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Image i shows concept i % C (highest P); unit k fires on concept k's images, in the
    order of their P for concept k."""
    rng = np.random.default_rng(2)
    n = n_concepts * per_concept
    shown = np.arange(n) % n_concepts
    P = 0.2 + 0.05 * rng.random((n, n_concepts))
    P[np.arange(n), shown] += 0.1
    acts = np.where(shown[:, None] == np.arange(n_concepts)[None], P, 0.1 * P)
    return P, acts


@pytest.mark.parametrize("name", sorted(SIMILARITIES))
def test_similarity_argmax_on_constructed_case(name: str) -> None:
    P, acts = constructed_case()
    sim = SIMILARITIES[name](P, acts, [0, 1, 2, 3])
    assert sim.shape == (4, 4) and np.isfinite(sim).all()
    assert sim.argmax(1).tolist() == [0, 1, 2, 3]
    sub = SIMILARITIES[name](P, acts, [2])
    np.testing.assert_allclose(sub[0], sim[2], atol=1e-12)


# -- concept sets ---------------------------------------------------------------------------------
def test_concept_file_loading(tmp_path: Path) -> None:
    path = tmp_path / "concepts.txt"
    path.write_text("dog\n  cat \n\ndog\nred car\n", encoding="utf-8")
    assert read_concept_file(path) == ["dog", "cat", "red car"]
    assert load_concept_set(str(path)) == ["dog", "cat", "red car"]
    with pytest.raises(ConfigError, match="does not exist"):
        load_concept_set(str(tmp_path / "missing.txt"))
    assert unique_concepts([" a", "a", "", "b"]) == ["a", "b"]


def test_named_concept_sets() -> None:
    toy = load_concept_set("toy")
    assert "star" in toy and "red" in toy and "brick wall" in toy
    model = TinyModel(TinyModel.Config(name="tiny"))
    probe = TinyProbe(TinyProbe.Config(name="tiny"))
    assert load_concept_set("imagenet", model=model) == list(TINY_COLOURS)
    assert load_concept_set("probe", probe=probe) == list(TINY_COLOURS)


@pytest.mark.parametrize("name, count", [("20k.txt", 20000), ("broden_labels_clean.txt", 1100),
                                         ("imagenet_labels.txt", 990)])
def test_published_concept_sets(name: str, count: int) -> None:
    path = PUBLISHED / name
    if not path.is_file():
        pytest.skip(f"{path} not found (only next to the project's development checkout)")
    concepts = read_concept_file(path)
    assert len(concepts) >= count * 0.99 and all(c == c.strip() and c for c in concepts)


# -- the describer end to end with a fake colour VLM ------------------------------------------
@VLMS.register("fake_colour")
class FakeColourVLM(VisionLanguageModel):
    """Image -> fraction of pixels of each tiny colour (plus grey); colour word -> its axis."""

    @dataclass
    class Config(BackendConfig):
        pass

    AXES = [*TINY_COLOURS, "grey"]

    def _encode_images(self, images: list) -> np.ndarray:
        palette = np.array([*TINY_COLOURS.values(), (128, 128, 128)], np.float64)
        rows = []
        for image in images:
            pixels = np.asarray(image.convert("RGB"), np.float64).reshape(-1, 3)
            nearest = ((pixels[:, None] - palette[None]) ** 2).sum(-1).argmin(1)
            rows.append(np.bincount(nearest, minlength=len(palette)) + 1e-3)
        return self._normalise(np.array(rows))

    def _encode_texts(self, texts: list[str]) -> np.ndarray:
        rows = np.full((len(texts), len(self.AXES)), 0.05)
        for row, text in zip(rows, texts):
            if text in self.AXES:
                row[self.AXES.index(text)] = 1.0
        return self._normalise(rows)

    @staticmethod
    def _normalise(x: np.ndarray) -> np.ndarray:
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def colour_context(tmp_path: Path, layer: str = "fc", units: list[int] | None = None):
    ctx = tiny_context(tmp_path / "cache", layer=layer, units=units, probe_size=48)
    ctx.backends = {"vlm": VLMS.config("fake_colour")}
    return ctx


def colour_file(tmp_path: Path) -> str:
    path = tmp_path / "colours.txt"
    path.write_text("\n".join([*TINY_COLOURS, "grey", "dog", "house"]), encoding="utf-8")
    return str(path)


def test_describer_is_registered() -> None:
    assert DESCRIBERS.get("clip_dissect") is ClipDissect
    assert ClipDissect.uses_backends == ("vlm",)
    with pytest.raises(ConfigError, match="similarity"):
        DESCRIBERS.create("clip_dissect", similarity="bogus")


@pytest.mark.parametrize("similarity", sorted(SIMILARITIES))
def test_end_to_end_with_fake_vlm(tmp_path: Path, similarity: str) -> None:
    ctx = colour_context(tmp_path)
    describer = DESCRIBERS.create("clip_dissect", concept_set=colour_file(tmp_path),
                                  similarity=similarity, top_k=5, batch_size=10)
    frame = check_describer(describer, ctx)
    assert frame["unit"].tolist() == ctx.units
    assert set(frame["label"]) <= {*TINY_COLOURS, "grey", "dog", "house"}
    assert (frame["similarity_fn"] == similarity).all()
    assert (frame["label"] != frame["label_2"]).all() and np.isfinite(frame["score"]).all()
    # the probe and the concepts were encoded once: the second describe() hit the call cache
    assert 0 < ctx.counters["vlm_inputs_encoded"] <= 48 + 7


def test_colour_units_get_their_colour(tmp_path: Path) -> None:
    """Where a unit's top images all show one colour, SoftWPMI names that colour."""
    ctx = colour_context(tmp_path, layer="conv1")
    describer = DESCRIBERS.create("clip_dissect", concept_set=colour_file(tmp_path), top_k=5)
    frame = check_describer(describer, ctx)
    acts = ctx.activations.pooled(ctx.layer).mean
    colours = [TinyProbe._layout(ctx.probe, i)[0] for i in range(len(ctx.probe))]
    checked = 0
    for unit, label in zip(frame["unit"], frame["label"]):
        top = np.argsort(-acts[:, unit], kind="stable")[:5]
        shown = {colours[i] for i in top}
        if len(shown) == 1:
            checked += 1
            assert label == list(TINY_COLOURS)[shown.pop()]
    assert checked > 0


def test_prior_uses_all_units_of_the_layer(tmp_path: Path) -> None:
    """Describing a subset of units gives the rows of the whole-layer result."""
    concepts = colour_file(tmp_path)
    full = DESCRIBERS.create("clip_dissect", concept_set=concepts).describe(
        colour_context(tmp_path, layer="conv1"))
    part = DESCRIBERS.create("clip_dissect", concept_set=concepts).describe(
        colour_context(tmp_path, layer="conv1", units=[5, 2]))
    by_unit = {d.unit: d for d in full}
    for d in part:
        assert d.label == by_unit[d.unit].label
        assert d.score == pytest.approx(by_unit[d.unit].score, abs=1e-9)


def test_cache_key_follows_concept_file_content(tmp_path: Path) -> None:
    ctx = colour_context(tmp_path)
    path = Path(colour_file(tmp_path))
    describer = DESCRIBERS.create("clip_dissect", concept_set=str(path))
    before = describer.cache_key_parts(ctx)
    path.write_text("red\nblue\n", encoding="utf-8")
    assert describer.cache_key_parts(ctx) != before


def test_missing_vlm_is_a_config_error(tmp_path: Path) -> None:
    ctx = tiny_context(tmp_path)
    with pytest.raises(ConfigError, match="vlm"):
        DESCRIBERS.create("clip_dissect", concept_set=colour_file(tmp_path)).describe(ctx)
