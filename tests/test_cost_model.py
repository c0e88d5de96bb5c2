"""The cost model (``python -m dndbench cost RUN_DIR``) on synthetic run directories."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

from dndbench.errors import DataError
from dndbench.results import cost
from dndbench.results.cost import DEFAULT_LATENCIES, PAPER, Workload, project

COLUMNS = ["setting", "describer", "layer", "units", "seconds", "seconds_per_unit",
           "captions_per_unit", "llm_calls_per_unit", "llm_tokens_per_unit",
           "generated_images_per_unit", "forward_images_per_unit", "vlm_inputs_per_unit",
           "embedded_texts_per_unit"]


def write_run(folder: Path, costs: list[dict[str, Any]] | None = None,
              text2image: dict[str, Any] | None = None) -> Path:
    """A run directory with run.json (and costs.csv when ``costs`` is given)."""
    folder.mkdir(parents=True, exist_ok=True)
    run = {"config": {"text2image": text2image or {"name": "toy"}},
           "counts": {"units": 10, "dnd/captioned_images": 80, "dnd/llm_calls": 120,
                      "dnd/generated_images": 400, "dnd/forward_images": 450,
                      "dnd/map_images": 60, "dnd/clip_images": 300, "cache_hits": {}},
           "describers": {"dnd": {"name": "dnd", "counters": {
               "dnd/captioned_images": 80, "dnd/llm_calls": 120, "dnd/generated_images": 400,
               "dnd/forward_images": 450, "dnd/map_images": 60, "dnd/clip_images": 300}}}}
    (folder / "run.json").write_text(json.dumps(run))
    if costs is not None:
        with open(folder / "costs.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=COLUMNS)
            writer.writeheader()
            for row in costs:
                writer.writerow({c: row.get(c, 0) for c in COLUMNS})
    return folder


DND_ROW = {"setting": "dnd", "describer": "dnd", "layer": "layer4", "units": 10,
           "captions_per_unit": 8, "llm_calls_per_unit": 12, "llm_tokens_per_unit": "nan",
           "generated_images_per_unit": 40, "forward_images_per_unit": 51,
           "vlm_inputs_per_unit": 30}


def test_paper_projection_by_hand() -> None:
    lat = DEFAULT_LATENCIES
    p = project(PAPER, lat, price_per_1k=0.01, tokens_per_call=250)
    per_image = lat["image_fixed"] + 50 * 2 * lat["unet_eval"]  # 50 guided steps: 100 UNet evals
    assert p.seconds["generation"] == pytest.approx(50 * per_image)
    assert p.seconds["LLM"] == pytest.approx(17.5 * lat["llm_call"])  # one call at a time
    assert p.seconds["captioning"] == pytest.approx(10 * lat["caption"])
    assert p.total == pytest.approx(sum(p.seconds.values()))
    assert p.tokens == pytest.approx(17.5 * 250) and p.tokens_estimated
    assert p.spend == pytest.approx(17.5 * 250 / 1000 * 0.01)


@pytest.mark.parametrize("steps,guidance,evals", [(50, 7.5, 100), (4, 1.0, 4), (1, 0.0, 1)])
def test_guidance_doubles_unet_evaluations(steps: int, guidance: float, evals: int) -> None:
    work = Workload("w", generated_images=10, steps=steps, guidance=guidance)
    lat = {"unet_eval": 0.01, "image_fixed": 0.0}
    assert work.unet_evals == evals
    assert project(work, lat).seconds["generation"] == pytest.approx(10 * evals * 0.01)


def test_concurrency_divides_llm_time_and_recorded_tokens_win() -> None:
    work = Workload("w", llm_calls=16, llm_tokens=1000.0, llm_concurrency=8)
    p = project(work, {"llm_call": 2.0}, price_per_1k=0.5)
    assert p.seconds["LLM"] == pytest.approx(16 * 2.0 / 8)
    assert (p.tokens, p.tokens_estimated, p.spend) == (1000.0, False, pytest.approx(0.5))


def test_workloads_from_costs_csv(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", [DND_ROW, {**DND_ROW, "setting": "dnd(q=5)",
                                                 "generated_images_per_unit": 20}],
                    text2image={"name": "sd_turbo", "steps": 1, "guidance": 0.0})
    works, note = cost.run_workloads(run, concurrency=4)
    assert [w.label for w in works] == ["ours: dnd @ layer4", "ours: dnd(q=5) @ layer4"]
    first = works[0]
    assert (first.captions, first.llm_calls, first.generated_images) == (8, 12, 40)
    assert (first.steps, first.guidance, first.llm_concurrency) == (1, 0.0, 4)
    assert first.llm_tokens is None  # nan in the table: unknown
    assert "costs.csv" in note and "text2image=sd_turbo" in note


def test_workloads_from_run_counters(tmp_path: Path) -> None:
    works, note = cost.run_workloads(write_run(tmp_path / "run"), steps=4, guidance=0.0)
    (work,) = works
    assert (work.captions, work.llm_calls, work.generated_images) == (8, 12, 40)
    assert work.forward_images == 51 and work.vlm_inputs == 30  # forward + map images
    assert (work.steps, work.guidance) == (4, 0.0) and "run.json counters" in note


def test_toy_run_is_projected_at_the_papers_steps(tmp_path: Path) -> None:
    works, note = cost.run_workloads(write_run(tmp_path / "run", [DND_ROW]))
    assert (works[0].steps, works[0].guidance) == (50, 7.5) and "paper's" in note


def test_cost_command_prints_the_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from dndbench.cli import main

    run = write_run(tmp_path / "run", [DND_ROW])
    latencies = tmp_path / "lat.json"
    latencies.write_text(json.dumps({"device": "NVIDIA H200", "latencies": {
        "unet_eval": 0.001, "llm_call": 0.5}}))
    assert main(["cost", str(run), "--latencies", str(latencies), "--also-steps", "4",
                 "--price-per-1k-tokens", "0.02"]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("| ")]
    assert [line.split(" | ")[0] for line in lines[1:]] == [
        "| released DnD code", "| ours: dnd @ layer4", "| ours: dnd @ layer4, 4 steps"]
    lat = {**DEFAULT_LATENCIES, "unet_eval": 0.001, "llm_call": 0.5}
    paper = project(PAPER, lat, price_per_1k=0.02)
    assert f"**{paper.total:.2f}**" in lines[1] and f"{paper.spend:.4f}" in lines[1]
    assert "NVIDIA H200" in out and "defaults for caption" in out


@pytest.mark.parametrize("content,message", [
    ({"latencies": {"unet_evals": 1.0}}, "unknown keys"),
    ({"caption": -1}, "must be a number >= 0"),
    ("not json", "not valid JSON"),
])
def test_bad_latencies_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                        content: Any, message: str) -> None:
    from dndbench.cli import main

    path = tmp_path / "lat.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    assert main(["cost", str(write_run(tmp_path / "run", [DND_ROW])), "--latencies",
                 str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and "\n" not in err


def test_not_a_run_directory(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no run.json"):
        cost.run_workloads(tmp_path)
