"""report.html: written for every run (with probe pictures, or labels only) and for merges; the
leaderboards, the cards with every setting's labels, scores and ✓ / ✗, DnD's and Network
Dissection's details, no cap on cards, and every model-written string escaped."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from dndbench.describers.dnd.config import DnDConfig
from dndbench.registry import registry_for
from dndbench.results.leaderboard import leaderboard, metric_agreement, pairs_table
from dndbench.results.report import Standings, write_merged_report, write_run_report
from dndbench.testing.kit import TinyModel, tiny_context

PLANTED = {0: "red", 1: "green", 2: "blue", 3: "yellow"}
EVIL = "<script>alert('x')</script>"
CANDIDATES = ["red", "red square", "grey"]
FRONT = dict(model="tiny", layer="layer1", probe="tiny", neuron_set="set1", num_units=4)


class PlantedTiny(TinyModel):
    """The kit's tiny model with known concepts for layer1's first units."""

    def planted_concepts(self, layer: str) -> dict[int, str]:
        return dict(PLANTED) if layer == "layer1" else {}


def planted_context(tmp: Path):
    ctx = tiny_context(tmp, layer="layer1", units=list(PLANTED),
                       backends={"text2image": registry_for("text2image").config(
                           "toy", device="cpu", size=32)})
    ctx.model = PlantedTiny(PlantedTiny.Config(name="tiny"))
    ctx.model.cache = ctx.cache
    return ctx


def description_rows(units: list[int]) -> pd.DataFrame:
    """Descriptions of four settings, with DnD's and Network Dissection's extras."""
    rows = []
    for u in units:
        right = PLANTED.get(u, "red")
        top = {"size": 32, "images": [[0, None], [1, [4, 4, 20, 20]], [2, [0, 0, 16, 16]]]}
        rows.append({"setting": "dnd", "describer": "dnd", "unit": u, "label": right,
                     "label_2": "red square", "label_3": "grey", "score": 2.5,
                     "captions": "a red square | a grey field",
                     "candidate_scores": json.dumps([[c, 3.0 - i] for i, c in
                                                     enumerate([right, *CANDIDATES[1:]])]),
                     "caption_list": json.dumps(["a red square", "a grey field"]),
                     "top_images": json.dumps(top), "role": "method"})
        rows.append({"setting": "netdissect", "describer": "netdissect", "unit": u,
                     "label": "green" if u % 2 else right, "label_2": "blue", "label_3": "",
                     "score": 0.12, "threshold": 0.05, "category": "colour", "role": "method"})
        rows.append({"setting": "constant", "describer": "constant", "unit": u,
                     "label": EVIL if u == 0 else "depiction", "label_2": "", "label_3": "",
                     "score": float("nan"), "role": "control"})
    return pd.DataFrame(rows).assign(**FRONT)


def score_rows(descriptions: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for r in descriptions.itertuples():
        hit = float(r.label == PLANTED.get(r.unit))
        rows += [{"setting": r.setting, "describer": r.describer, "unit": r.unit,
                  "metric": "planted_hit", "value": hit, "role": r.role},
                 {"setting": r.setting, "describer": r.describer, "unit": r.unit,
                  "metric": "planted_rank", "value": 0.5 + hit / 2, "role": r.role}]
    return pd.DataFrame(rows).assign(**FRONT)


def standings(scores: pd.DataFrame, costs: pd.DataFrame | None = None) -> Standings:
    table = leaderboard(scores, costs=costs)
    return Standings(table, pairs_table(table), metric_agreement(table))


def build_report_run(run_dir: Path, cache: Path) -> Path:
    """A run directory with tables, pictures and report.html (DnD's images in the call cache)."""
    ctx = planted_context(cache)
    config = DnDConfig(name="dnd", q=3, prompt_template="a {concept}")
    ctx.backend("text2image").generate([f"a {c}" for c in [*PLANTED.values(), *CANDIDATES]],
                                       3, seed=config.seed)  # what DnD drew in its step 3
    descriptions = description_rows(ctx.units)
    scores = score_rows(descriptions)
    run_dir.mkdir(parents=True, exist_ok=True)
    descriptions.to_csv(run_dir / "descriptions.csv", index=False)
    scores.to_csv(run_dir / "scores.csv", index=False)
    costs = pd.DataFrame({"setting": ["dnd", "netdissect", "constant"], "layer": "layer1",
                          "units": 4, "seconds_per_unit": [2.5, 0.75, 0.001],
                          "llm_calls_per_unit": [12.0, 0.0, 0.0]})
    write_run_report(run_dir, descriptions, scores, standings(scores, costs), [ctx],
                     {"dnd": config})
    return run_dir / "report.html"


@pytest.fixture
def report(tmp_path: Path) -> Path:
    return build_report_run(tmp_path / "run", tmp_path / "cache")


def cards(page: str) -> list[str]:
    return re.findall(r'<article class="card".*?</article>', page, flags=re.S)


def test_run_report_has_leaderboards_cards_and_pictures(report: Path) -> None:
    page = report.read_text()
    assert 'class="board sortable"' in page and "planted_hit" in page and "95 % CI" in page
    assert 'id="f-layer"' in page and 'id="f-sort"' in page and "<script>" in page
    assert "Do the metrics agree?" in page and "pairwise comparisons" in page
    assert page.count("data:image/png;base64,") == 4  # the four figures, inlined
    assert "LLM calls" in page and ">12<" in page.replace(" ", "")  # DnD's cost per unit
    assert len(cards(page)) == len(PLANTED)
    first = cards(page)[0]
    assert "ground truth: <b>red</b>" in first and "✓" in first and "✗" in first
    media = json.loads((report.parent / "report_files" / "media.json").read_text())
    assert [m["unit"] for m in media] == list(PLANTED)
    for item in media:
        for key in ("top", "heat", "crops"):
            assert (report.parent / item[key]).is_file(), key
        assert item["crops_from"] == "dnd"  # DnD's own crops, from its top_images extras
        assert (report.parent / item["masks"]["netdissect"]).is_file()
        assert set(item["generated"]["dnd"]) >= {"red square", "grey"}
        assert item["truth"] == PLANTED[item["unit"]]
    assert first.count("<img") >= 3 + 1 + 3  # strips, mask, one strip per candidate
    assert "a grey field" in first and "3" in first  # a caption and a step-3 score


def test_every_model_written_string_is_escaped(report: Path) -> None:
    page = report.read_text()
    assert EVIL not in page
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in page


def test_report_pictures_stay_small(report: Path) -> None:
    files = list((report.parent / "report_files").rglob("*.jpg"))
    total = report.stat().st_size + sum(f.stat().st_size for f in files)
    assert total < 400_000, total  # four units: the page, its figures and every strip


def test_run_without_probe_gets_labels_only(tmp_path: Path) -> None:
    ctx = planted_context(tmp_path / "cache")
    descriptions = description_rows(ctx.units)
    scores = score_rows(descriptions)
    path = write_run_report(tmp_path / "run", descriptions, scores, standings(scores), [ctx],
                            images=False)
    page = path.read_text()
    assert len(cards(page)) == len(PLANTED) and "<img" not in "".join(cards(page))
    assert "No probe images" in page and "ground truth: <b>green</b>" in page
    assert not list((tmp_path / "run" / "report_files").rglob("*.jpg"))


def test_cards_are_never_capped(tmp_path: Path) -> None:
    units = list(range(260))
    descriptions = description_rows(units)
    scores = score_rows(descriptions)
    page = write_run_report(tmp_path, descriptions, scores, standings(scores)).read_text()
    assert len(cards(page)) == 260 and 'data-unit="259"' in page


def test_merge_writes_one_report_with_the_runs_pictures(tmp_path: Path) -> None:
    from dndbench.results.leaderboard import main

    build_report_run(tmp_path / "a", tmp_path / "cache")
    other = description_rows([0, 1]).assign(setting="constant(word=x)")
    other = other[other.describer == "constant"]
    (tmp_path / "b").mkdir()
    other.to_csv(tmp_path / "b" / "descriptions.csv", index=False)
    score_rows(other).to_csv(tmp_path / "b" / "scores.csv", index=False)
    assert main([str(tmp_path / "a"), str(tmp_path / "b"), "--out",
                 str(tmp_path / "merged" / "board"), "--html"]) == 0
    page = (tmp_path / "merged" / "board.html").read_text()
    assert "constant(word=x)" in page and len(cards(page)) == len(PLANTED)
    images = re.findall(r'<img src="(board_files/[^"]+)"', page)
    assert images and all((tmp_path / "merged" / src).is_file() for src in images)


def test_merge_of_runs_without_pictures(tmp_path: Path) -> None:
    descriptions = description_rows([0, 1, 2])
    scores = score_rows(descriptions)
    descriptions.to_csv(tmp_path / "descriptions.csv", index=False)
    scores.to_csv(tmp_path / "scores.csv", index=False)
    out = write_merged_report([tmp_path], scores, standings(scores), tmp_path / "m.html")
    page = out.read_text()
    assert len(cards(page)) == 3 and "none of the runs has pictures" in page


def test_dnd_stores_what_the_report_shows() -> None:
    import numpy as np

    from dndbench.describers.dnd.batching import UnitWork, report_extras

    work = UnitWork(3, [(5, None), (7, (1, 2, 30, 40))], captions=["a", "b | c"],
                    candidates=["x", "y", "z"])
    extras = report_extras(DnDConfig(name="dnd"), work, [2, 0, 1], np.array([0.1, -1.0, 0.7]))
    assert json.loads(extras["candidate_scores"]) == [["z", 0.7], ["x", 0.1], ["y", -1.0]]
    assert json.loads(extras["caption_list"]) == ["a", "b | c"]
    assert json.loads(extras["top_images"]) == {"size": 375,
                                                "images": [[5, None], [7, [1, 2, 30, 40]]]}


SMALL = ["model.train_images=64", "model.epochs=1", "probe.size=16", "neurons.units=[0,1,2]",
         "metric=final_layer_similarity", "metric.embedder=kit_words", "progress=false"]


@pytest.mark.slow
def test_every_cli_run_writes_a_report_cached_and_published_too(tmp_path: Path) -> None:
    """A run that computes, the same run again from the cache, and a ``published`` run."""
    from dndbench.cli import main

    for name in ("first", "cached"):
        code = main(["describer=caption_word", "captioner.train_images=64", "captioner.epochs=1",
                     *SMALL, f"hydra.run.dir={tmp_path / name}"])
        assert code == 0
        page = (tmp_path / name / "report.html").read_text()
        assert len(cards(page)) == 3 and "report_files/fc/u0_top.jpg" in page
    record = json.loads((tmp_path / "cached" / "run.json").read_text())
    assert all(d["from_cache"] for d in record["describers"].values())
    released = tmp_path / "released.csv"
    released.write_text("Neuron ID,Label 1,Label 2,Label 3\n0,circle,ring,disc\n1,square,,\n"
                        f"2,\"{EVIL}\",,\n")
    code = main(["describer=published", f"describer.path={released}", "describer.format=dnd",
                 *SMALL, f"hydra.run.dir={tmp_path / 'published'}"])
    assert code == 0
    page = (tmp_path / "published" / "report.html").read_text()
    assert len(cards(page)) == 3 and "No probe images" in page and EVIL not in page
    assert "ring" in page and "<img" not in "".join(cards(page))
