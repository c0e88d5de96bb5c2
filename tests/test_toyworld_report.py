"""``toyworld-report``: the gate, concept containment and kinds, caption reading, crop and patch
boxes, and a whole report on a tiny trained ToyNet."""
from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from dndbench.cache import Cache
from dndbench.toyworld import world_report as R
from dndbench.toyworld.captions import canonical_caption
from dndbench.toyworld.render import annotate, render
from dndbench.toyworld.world import ObjectSpec, SceneSpec, sample_scene


@pytest.mark.parametrize("auc, top10, passed", [
    (0.96, 9, True), (0.95, 10, True), (0.949, 10, False), (0.99, 8, False),
    (float("nan"), 10, False),
])
def test_the_gate_needs_both_auc_and_top10(auc: float, top10: int, passed: bool) -> None:
    assert R.passes_gate(auc, top10) is passed


def test_a_synthetic_detector_passes_and_a_random_unit_fails() -> None:
    rng = np.random.default_rng(0)
    present = rng.random(400) < 0.2
    detector = present * 1.0 + rng.random(400) * 0.1
    figures = R.unit_figures(detector, present)
    assert figures["auc"] == 1.0 and figures["top10"] == 10
    assert figures["positives"] == int(present.sum())
    assert R.passes_gate(figures["auc"], figures["top10"])
    noise = R.unit_figures(rng.random(400), present)
    assert abs(noise["auc"] - 0.5) < 0.1 and not R.passes_gate(noise["auc"], noise["top10"])


def _scene() -> tuple[SceneSpec, np.ndarray]:
    main = ObjectSpec("circle", "red", "striped", cx=0.3, cy=0.3, radius=0.25, rgb=(215, 35, 35))
    other = ObjectSpec("star", "blue", "plain", cx=0.78, cy=0.78, radius=0.12, rgb=(40, 75, 215))
    spec = SceneSpec("grass", (main, other), detail_seed=1)
    return spec, render(spec)[1]


@pytest.mark.parametrize("concept, expected", [
    ("red", True), ("star", True), ("grass", True), ("sand", False),
    ("red circle", True), ("blue circle", False), ("red star", False), ("striped circle", True),
    ("red grass", True), ("sand or blue", True), ("square or sand", False),
])
def test_containment_reads_the_annotations(concept: str, expected: bool) -> None:
    spec, mask = _scene()
    assert R.contains(concept, annotate(spec, mask), spec, mask) is expected


def test_open_vocabulary_parts_are_read_from_the_spec() -> None:
    spec, mask = _scene()
    annotation = annotate(spec, mask)
    assert R.contains("two objects", annotation) is None  # an annotation cannot tell
    assert R.contains("two objects", annotation, spec, mask) is True
    assert R.contains("large object", annotation, spec, mask) is False  # radius 0.25
    big = replace(spec, objects=(replace(spec.main, radius=0.4, cx=0.5, cy=0.5),))
    big_mask = render(big)[1]
    assert R.contains("large object", annotate(big, big_mask), big, big_mask) is True
    assert R.contains("two objects", annotate(big, big_mask), big, big_mask) is False
    outlined = replace(spec, objects=(replace(spec.main, outlined=True, texture="plain"),))
    o_mask = render(outlined)[1]
    assert R.contains("outlined", annotate(outlined, o_mask), outlined, o_mask) is True
    assert R.contains("outlined", annotation, spec, mask) is False
    # an outline covers far fewer pixels than the filled shape
    assert 0 < (o_mask == 1).sum() < 0.6 * (mask == 1).sum()
    zig = replace(spec, objects=(replace(spec.main, texture="zigzag"),))
    z_mask = render(zig)[1]
    assert R.contains("zigzag", annotate(zig, z_mask), zig, z_mask) is True
    assert R.contains("zigzag", annotation, spec, mask) is False
    assert (annotate(zig, z_mask).pixel["texture"][0][z_mask == 1] == 0).all()  # no label


@pytest.mark.parametrize("concept, kind", [
    ("yellow", "single"), ("brick wall", "single"), ("red circle", "compositional"),
    ("star or water", "polysemantic"), ("large objects", "open-vocabulary"),
])
def test_kinds_are_inferred_from_the_concept_string(concept: str, kind: str) -> None:
    assert R.concept_kind(concept) == kind


def test_planted_entries_read_strings_and_dicts() -> None:
    meta = {"planted": {"layer3": {"9": "blue", "2": {"concept": "red circle"}},
                        "layer1": {"4": {"name": "outlined", "kind": "open-vocabulary"}}}}
    assert R.planted_entries(meta) == [
        {"layer": "layer1", "unit": 4, "concept": "outlined", "kind": "open-vocabulary",
         "recorded": True},
        {"layer": "layer3", "unit": 2, "concept": "red circle", "kind": "compositional",
         "recorded": True},
        {"layer": "layer3", "unit": 9, "concept": "blue", "kind": "single", "recorded": True}]


def test_captions_are_read_back_into_their_slots() -> None:
    rng = np.random.default_rng(5)
    for _ in range(40):
        spec = sample_scene(rng)
        assert R.caption_slots(canonical_caption(spec)) == R.true_slots(spec)


def test_crop_and_background_boxes() -> None:
    spec, mask = _scene()
    x0, y0, x1, y1 = R.main_object_box(mask)
    ys, xs = np.nonzero(mask == 1)
    assert x0 <= xs.min() and xs.max() < x1 and y0 <= ys.min() and ys.max() < y1
    bx0, by0, bx1, by1 = R.background_box(mask)
    assert (mask[by0:by1, bx0:bx1] == 0).all() and bx1 - bx0 >= 16
    assert R.background_box(np.ones((64, 64), np.int32)) is None


def _tiny_report(folder: Path, candidates: bool, shipped: bool = True) -> dict:
    """A report on few images: of the shipped ToyNet (installed, not trained), or of a tiny
    ToyNet trained here."""
    from dndbench.models.base import MODELS
    from dndbench.registry import registry_for

    cache = Cache(folder)
    model = MODELS.create("toynet") if shipped else MODELS.create("toynet", train_images=96,
                                                                  epochs=1)
    model.cache = cache
    model.progress = False
    options = R.ReportOptions(probe_size=40, backend_images=6,
                              dnd_options={"k": 3, "n": 3, "q": 1})
    backends = {kind: {"oracle": registry_for(kind).config("oracle", device="cpu")}
                for kind in ("captioner", "vlm")}
    return R.build_report(model, cache, options, backends, candidates=candidates)


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return _tiny_report(tmp_path_factory.mktemp("report-cache"), candidates=False)


def test_a_report_has_every_field(tiny_report: dict) -> None:
    report = tiny_report
    assert report["model"]["shipped"] and 0 <= report["model"]["test_accuracy"] <= 1
    assert 0 <= report["model"]["probe_accuracy"] <= 1
    from dndbench.toyworld import weights
    from dndbench.toyworld.train_toynet import TrainConfig, planted_list

    # every candidate of the catalogue, recorded or not; the recorded ones are the shipped ground truth
    assert len(report["planted_units"]) == len(planted_list(TrainConfig()))
    shipped = weights.manifest()["toynet"]["meta"]["planted"]
    assert report["planted_summary"]["recorded"] == sum(len(v) for v in shipped.values())
    for unit in report["planted_units"]:
        assert {"layer", "unit", "concept", "kind", "auc", "top10", "gate"} <= set(unit)
        assert unit["gate"] == R.passes_gate(unit["auc"], unit["top10"])
    assert len(report["fc_units"]) == 12
    flagged = {u["unit"] for u in report["flagged_fc_units"]}
    assert flagged == {u["unit"] for u in report["fc_units"] if not u["gate"]}
    oracle = report["backends"]["captioner"]["oracle"]
    assert set(oracle) == {"full", "crop", "background"}
    assert all(v == 1.0 for v in oracle["full"]["slots"].values())
    assert report["backends"]["vlm"]["oracle"]["crop"]["slots"]["shape"] == 1.0
    assert "summariser_candidates" not in report
    json.dumps(report)  # JSON-ready
    text = R.format_report(report)
    assert "planted units" in text and "flagged" in text
    # the shipped network's own metadata flags none (measured on its held-out stream)
    assert report["model"]["flagged_fc_units"] == []
    assert "flagged in the network's metadata (held-out stream, at training): 0" in text


@pytest.mark.slow
def test_the_report_counts_each_summarisers_dnd_candidates(tmp_path: Path) -> None:
    report = _tiny_report(tmp_path, candidates=True, shipped=False)
    assert not report["model"]["shipped"] and 0 <= report["model"]["test_accuracy"] <= 1
    assert set(report["model"]["flagged_fc_units"]) <= set(range(12))  # a fresh training's
    candidates = report["summariser_candidates"]
    assert candidates["layer"] == "fc"
    for name in ("keyword", "proposer"):
        assert candidates[name]["units"] == 12 and candidates[name]["n"] == 3
        assert 1 <= candidates[name]["min"] <= candidates[name]["max"] <= 3
    assert "llm=proposer" in R.format_report(report)


def test_the_command_writes_the_json(tmp_path: Path, tiny_report: dict,
                                     monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    from dndbench.cli import main

    monkeypatch.setattr(R, "build_report", lambda *args, **kwargs: tiny_report)
    assert main(["toyworld-report", "--json", str(tmp_path / "r.json"), "--no-candidates"]) == 0
    written = json.loads((tmp_path / "r.json").read_text())
    assert written["planted_summary"]["units"] == len(tiny_report["planted_units"])
    assert math.isclose(written["model"]["test_accuracy"], tiny_report["model"]["test_accuracy"])
    assert "planted units" in capsys.readouterr().out
