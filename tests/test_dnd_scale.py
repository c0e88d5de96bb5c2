"""DnD at layer scale: chunked and streamed processing gives the descriptions of one big batch,
memory holders stay bounded, and a call budget stops a run cleanly and the rerun resumes
(offline: the plugin kit's tiny model, the fake backends of ``test_dnd``, the fake OpenAI
server)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_dnd import FAKE, dnd, fake_context

from dndbench.describers.dnd import batching
from dndbench.models.base import MODELS
from dndbench.pipeline import descriptions_frame
from dndbench.probes.base import PROBES
from dndbench.testing.kit import TinyModel, TinyProbe

SCALE_MODEL, SCALE_PROBE = "scale_tiny", "scale_tiny_probe"


@MODELS.register(SCALE_MODEL)
class ScaleTinyModel(TinyModel):
    """The kit's tiny model, registered for command-line runs."""


@PROBES.register(SCALE_PROBE)
class ScaleTinyProbe(TinyProbe):
    """The kit's tiny probe, registered for command-line runs."""


def describe(tmp_path: Path, layer: str = "layer1", **overrides):
    ctx = fake_context(tmp_path, layer=layer, units=list(range(0, 16, 3)) if layer != "fc" else None)
    return descriptions_frame(dnd(**overrides).describe(ctx)), ctx


@pytest.mark.parametrize("layer", ["layer1", "fc"])
def test_chunked_and_streamed_equals_one_batch(tmp_path: Path, layer: str,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    whole, _ = describe(tmp_path / "whole", layer, units_per_batch=0)
    # chunks of two units, passes of three images, a memo of four images (fresh cache)
    monkeypatch.setattr(batching, "images_per_pass", lambda ctx: 3)
    monkeypatch.setattr(batching, "BANK_CAPACITY", 4)
    sizes: list[int] = []
    original = batching.ImageBank.get

    def get(self, source):
        out = original(self, source)
        sizes.append(len(self))
        return out

    monkeypatch.setattr(batching.ImageBank, "get", get)
    chunked, ctx = describe(tmp_path / "chunked", layer, units_per_batch=2)
    assert chunked.equals(whole)
    assert sizes and max(sizes) <= 4  # the image memo never outgrows its capacity
    assert ctx.counters["dnd/generated_images"] > 0


def test_streamed_passes_hold_a_bounded_number_of_images(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Every batch handed to the captioner, the text-to-image backend, the network and CLIP is
    at most one pass, whatever the number of units."""
    from dndbench import image_activations

    monkeypatch.setattr(batching, "images_per_pass", lambda ctx: 4)
    seen: dict[str, int] = {}
    real_forward = image_activations.forward_pooled

    def forward(ctx, images, pooling, counter="dnd"):
        seen["forward"] = max(seen.get("forward", 0), len(images))
        return real_forward(ctx, images, pooling, counter)

    real_counted = batching.counted

    def counted(ctx, kind, counter, call):
        out = real_counted(ctx, kind, counter, call)
        size = len(out) if kind != "text2image" else sum(len(v) for v in out)
        seen[kind] = max(seen.get(kind, 0), size)
        return out

    monkeypatch.setattr(batching, "forward_pooled", forward)
    monkeypatch.setattr(batching, "counted", counted)
    out, _ = describe(tmp_path, "layer1", units_per_batch=0, q=2)
    assert len(out) == 6
    assert seen["forward"] <= 4 and seen["captioner"] <= 4 and seen["vlm"] <= 4
    assert seen["text2image"] <= 4  # two concepts of q=2 images per pass


# -- call budget: stop cleanly, rerun resumes ----------------------------------------------------
def cli_args(run_dir: Path, base_url: str, max_calls: int) -> list[str]:
    return [f"model={SCALE_MODEL}", f"probe={SCALE_PROBE}", "neurons.layer=fc",
            "neurons.units=all", "describer=dnd", "describer.n=2", "describer.q=2",
            "describer.units_per_batch=2", f"captioner={FAKE}", f"text2image={FAKE}",
            f"vlm={FAKE}", "llm=openai", f"llm.base_url={base_url}",
            f"llm.max_calls={max_calls}", "llm.max_concurrency=1", "batch_size=8",
            "metric=final_layer_similarity", "metric.embedder=kit_words", "device=cpu",
            "progress=false",
            f"hydra.run.dir={run_dir}"]


def test_a_call_budget_stops_cleanly_and_the_rerun_resumes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("openai")
    from fake_openai import FakeOpenAI

    import dndbench.testing.kit  # noqa: F401  (kit_words)
    from dndbench.backends.openai_llm import reset_call_count
    from dndbench.cli import main

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-scale")
    monkeypatch.setenv("DNDBENCH_CACHE", str(tmp_path / "cache"))
    with FakeOpenAI() as server:
        reset_call_count()
        assert main(cli_args(tmp_path / "first", server.base_url, max_calls=6)) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ")
        assert "llm.max_calls" in err[0] and "resumes" in err[0] and "cached" in err[0]
        first = [json.dumps(r["body"]["messages"]) for r in server.requests]
        assert len(first) == 6
        assert not (tmp_path / "first" / "descriptions.csv").exists()

        reset_call_count()  # a new process, as a rerun would be
        assert main(cli_args(tmp_path / "second", server.base_url, max_calls=1000)) == 0
        every = [json.dumps(r["body"]["messages"]) for r in server.requests]
    second = every[len(first):]
    assert second and not set(second) & set(first)  # the first part came from the call cache
    assert len(set(every)) == len(every)  # no conversation was paid for twice
    import pandas as pd

    frame = pd.read_csv(tmp_path / "second" / "descriptions.csv")
    assert sorted(frame.unit) == [0, 1, 2, 3] and frame.label.str.len().gt(0).all()


def test_only_toy_world_components_count_as_toy() -> None:
    """The budget test's fake backends are not the toy world's (no toy warning for them)."""
    from dndbench.config import is_toy_component

    assert not is_toy_component("captioner", FAKE) and is_toy_component("captioner", "toy")
    assert is_toy_component("llm", "keyword") and not is_toy_component("llm", "openai")
