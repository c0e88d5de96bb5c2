"""The benchmark scripts under ``benchmarks/``: their helpers, and smoke runs at tiny sizes."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str) -> ModuleType:
    """Import ``benchmarks/<name>.py`` (the folder is not a package)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# -- dnd_calls -----------------------------------------------------------------------------------
def test_dnd_calls_wide_random_model_has_over_1000_units_without_training() -> None:
    dnd_calls = load_benchmark("dnd_calls")
    from dndbench.models.base import MODELS

    dnd_calls.register_wide_random()
    model = MODELS.create("wide_random")
    assert model.num_units("layer4") == dnd_calls.WIDE_UNITS >= 1000
    a, b = model.build(True), model.build(True)  # seeded random weights, no training
    assert all((p == q).all() for p, q in zip(a.parameters(), b.parameters()))


def test_dnd_calls_rows_are_per_unit_next_to_the_released_code() -> None:
    dnd_calls = load_benchmark("dnd_calls")
    counts = {"dnd/captioned_images": 90, "dnd/llm_calls": 140, "dnd/generated_images": 400,
              "dnd/clip_images": 200, "dnd/forward_images": 500, "dnd/map_images": 100,
              "candidates": 40}
    row = dnd_calls.row(10, "proposer", "batched", counts, 5.0, True)
    assert row["captions"] == 9 and row["LLM calls"] == 14 and row["generated"] == 40
    assert row["forward images"] == 60 and row["candidates"] == 4 and row["wall s"] == 0.5
    args = dnd_calls.argparse.Namespace(model="toynet", layer="layer4", probe_size=100,
                                        captioner="toy", text2image="toy", vlm="toy",
                                        machine="a test")
    table = dnd_calls.markdown([row], args)
    assert "| 10 | proposer | batched | 9.00 | 14.00 | 40.00 |" in table
    assert "| released code | GPT | per unit | 10 | 15-20 | 50 |" in table


@pytest.mark.slow
def test_dnd_calls_smoke_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both summarisers on two units of the wide random model (trains the toy backends)."""
    dnd_calls = load_benchmark("dnd_calls")
    out = tmp_path / "calls.md"
    assert dnd_calls.main(["--model", "wide_random", "--sizes", "2", "--modes", "batched",
                           "isolated", "--probe-size", "40", "--out", str(out)]) == 0
    text = out.read_text()
    assert "| 2 | keyword | batched |" in text and "| 2 | proposer | isolated |" in text
    assert "NO" not in text  # the isolated labels equal the batched ones


# -- netdissect_passes ---------------------------------------------------------------------------
def test_netdissect_passes_peak_memory_can_be_reset() -> None:
    passes = load_benchmark("netdissect_passes")
    start = passes.peak_rss_mb(reset=True)
    block = bytearray(64 << 20)  # 64 MB touched
    block[::4096] = b"x" * len(block[::4096])
    assert passes.peak_rss_mb() >= start + 50
    del block
    if Path("/proc/self/clear_refs").exists():
        assert passes.peak_rss_mb(reset=True) < start + 50


# -- gpu_dnd -------------------------------------------------------------------------------------
def gpu_args(**overrides: object) -> object:
    gpu_dnd = load_benchmark("gpu_dnd")
    args = gpu_dnd.parse(["--smoke", "--models-dir", "unused", "--out", "unused.md"])
    for key, value in overrides.items():
        setattr(args, key, value)
    return args


def test_gpu_dnd_stand_in_llm_names_distinct_concepts() -> None:
    gpu_dnd = load_benchmark("gpu_dnd")
    from dndbench.describers.dnd import candidates as cand

    llm = gpu_dnd.StandInLLM(gpu_dnd.StandInConfig(vocabulary=1000))
    summaries = [cand.summary_conversation([f"caption {i}", f"other {i}"]) for i in range(50)]
    answers = llm.chat(summaries)
    assert all(a.startswith("concept ") for a in answers) and len(set(answers)) >= 45
    assert llm.chat(summaries[:1]) == answers[:1]  # deterministic
    simple = llm.chat([cand.simplify_conversation("a red cat on a mat in the sun today")])
    assert simple == ["a red cat on a"]


def test_gpu_dnd_projection_uses_the_closest_measured_counts() -> None:
    gpu_dnd = load_benchmark("gpu_dnd")
    args = gpu_args()
    counts = {"captions/u": 10.0, "LLM calls/u": 15.0, "images/u": 50.0, "forward/u": 80.0,
              "CLIP/u": 60.0}
    measured = {gpu_dnd.Setting(10, "batched", "fp16", "few"): {**counts, "s/unit": 1.0},
                gpu_dnd.Setting(100, "batched", "fp16", "few"): {**counts, "images/u": 30.0}}
    found, source = gpu_dnd.closest_counts(gpu_dnd.Setting(1000, "batched", "fp16", "full"),
                                           measured)
    assert found["images/u"] == 30.0 and source == "counts of 100 units"
    assert gpu_dnd.closest_counts(gpu_dnd.Setting(10, "sequential", "fp16", "full"),
                                  measured) is None
    lat = {"caption": 0.01, "unet_eval": 0.002, "image_fixed": 0.03, "forward_image": 0.001,
           "vlm_input": 0.001}
    row = gpu_dnd.projected(args, gpu_dnd.Setting(1000, "batched", "fp16", "full"), found, lat,
                            source)
    guided = args.full_steps * 2  # guidance 7.5: two UNet evaluations per step
    assert row["generation"] == 30.0 * (0.03 + guided * 0.002)
    assert row["status"] == "projected (counts of 100 units)"
    assert row["s/unit"] == sum(row[s] for s in gpu_dnd.STAGES)
    header = {"device": "test", "torch": "t", "transformers": "t", "diffusers": "d",
              "build_s": 0.0, "probe_s": 0.0, "wall_s": 1.0, "limited": True}
    table = gpu_dnd.markdown(args, header, [], [(gpu_dnd.Setting(1000, "batched", "fp16",
                                                                 "full"), row)])
    assert "| 1000 | batched | fp16 | 2 (CFG) | projected (counts of 100 units) |" in table


@pytest.mark.slow
def test_gpu_dnd_smoke(tmp_path: Path) -> None:
    """The GPU benchmark's code path on the CPU at tiny sizes (its own process)."""
    import json
    import subprocess

    from dndbench.results.cost import DEFAULT_LATENCIES, load_latencies

    out = tmp_path / "gpu_dnd_smoke.md"
    subprocess.run([sys.executable, str(BENCHMARKS / "gpu_dnd.py"), "--smoke", "--models-dir",
                    str(tmp_path / "models"), "--out", str(out)], check=True, timeout=600)
    text = out.read_text()
    assert "Device: **CPU" in text and "## Per-call latency" in text
    for units in (2, 3):
        for mode in ("batched", "sequential"):
            for steps in ("2 (CFG)", "1 (LCM)"):
                assert f"| {units} | {mode} | fp32 | {steps} | measured |" in text
    latencies, note = load_latencies(out.with_name("gpu_dnd_smoke_latencies.json"))
    measured = json.loads(out.with_name("gpu_dnd_smoke_latencies.json").read_text())["latencies"]
    assert set(measured) == set(DEFAULT_LATENCIES) - {"llm_call", "embedded_text"}
    assert all(value >= 0 for value in measured.values()) and "CPU" in note
