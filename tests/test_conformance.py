"""Conformance of every registered component: one test per describer, metric and backend.

The parameter lists are read from the registries, so a newly registered component is checked
without editing this file; test ids are the components' names.  Each test runs the check of
``python -m dndbench check-plugin`` (:func:`dndbench.testing.check_plugin.check_component`) on
the kit's tiny context; the tables below only give the options a built-in needs offline (a
file, a checkpoint, a tiny random-weight model folder from ``tests/conftest.py``, the fake
OpenAI server).  A new component needing none runs with its defaults.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest

from dndbench.catalog import BACKEND_KINDS
from dndbench.registry import registry_for
from dndbench.testing.check_plugin import SkipCheck, check_component
from dndbench.testing.kit import TINY_TOY_TRAINING

#: options of a component, built from ``fixture(name)`` (pytest's ``request.getfixturevalue``)
Options = Callable[[Callable[[str], Any]], dict[str, Any]]
SD = dict(steps=2, height=32, width=32)


def shipped(kind: str) -> list[str]:
    """The registered ``kind`` components of the package, installed packages and plugin files
    (not the fakes that other test modules register for their own tests)."""
    return [e.name for e in registry_for(kind).entries()
            if e.cls.__module__.startswith("dndbench.") or e.origin != "builtin"]


#: checks that take long on a CPU (run with the slow tests; ``tests/test_milan.py`` checks the
#: same describer on the tiny context in the fast subset)
SLOW = {("describer", "milan")}


def params(kind: str) -> list[Any]:
    """One parameter per shipped ``kind`` component, with the component's name as its id."""
    return [pytest.param(name, id=name, marks=[pytest.mark.slow] if (kind, name) in SLOW else [])
            for name in shipped(kind)]


def run_check(kind: str, name: str, workdir: Path, options: dict[str, Any]) -> str:
    try:
        return check_component(kind, name, workdir, **options)
    except SkipCheck as skip:
        pytest.skip(f"{kind} {name}: {skip}")


# -- describers --------------------------------------------------------------------------------
def published_file(folder: Path) -> Path:
    """Released-style descriptions (``dnd`` format) of the tiny model's units, plus a unit the
    tiny context does not ask for."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "published.csv"
    path.write_text("Neuron ID,Label 1,Label 2,Label 3\n0,red,red square,crimson\n"
                    "1,green,grass,\n2,blue,sky,water\n3,yellow,,\n7,not asked for,,\n")
    return path


@pytest.fixture(scope="module")
def milan_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from dndbench.testing.fixtures import write_tiny_milan_checkpoint

    return write_tiny_milan_checkpoint(tmp_path_factory.mktemp("milan") / "tiny-milan.pt")


DESCRIBER_OPTIONS: dict[str, Options] = {
    "published": lambda fixture: {"path": str(published_file(fixture("tmp_path")))},
    "milan": lambda fixture: {"checkpoint": str(fixture("milan_checkpoint")), "beam_size": 4,
                              "k": 5},
    "dnd": lambda fixture: {"k": 3, "n": 2, "q": 2},
}


@pytest.fixture(scope="module")
def shared_context_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache for the describers' tiny contexts: activations and the toy backends' weights
    are computed once for the module."""
    return tmp_path_factory.mktemp("conformance-contexts")


@pytest.mark.parametrize("name", params("describer"))
def test_describer_conforms(name: str, request: pytest.FixtureRequest,
                            shared_context_dir: Path) -> None:
    options = DESCRIBER_OPTIONS.get(name, lambda fixture: {})(request.getfixturevalue)
    summary = run_check("describer", name, shared_context_dir, options)
    assert summary.endswith("units described") and not summary.startswith("0 of")


# -- metrics -----------------------------------------------------------------------------------
METRIC_OPTIONS: dict[str, Options] = {
    "final_layer_similarity": lambda fixture: {"embedder": "kit_words"},
    "final_layer_bertscore": lambda fixture: {"path": str(fixture("bert_dir")), "num_layers": 1},
}


@pytest.mark.parametrize("name", params("metric"))
def test_metric_conforms(name: str, request: pytest.FixtureRequest,
                         shared_context_dir: Path) -> None:
    options = METRIC_OPTIONS.get(name, lambda fixture: {})(request.getfixturevalue)
    summary = run_check("metric", name, shared_context_dir, options)
    assert summary.endswith("scores") and not summary.startswith("0 ")


# -- backends ----------------------------------------------------------------------------------
@pytest.fixture
def openai_server(monkeypatch: pytest.MonkeyPatch) -> Any:
    """The local fake of the OpenAI endpoint, with a test key in the environment."""
    pytest.importorskip("openai")
    from fake_openai import FakeOpenAI

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-conformance")
    with FakeOpenAI() as server:
        yield server


def folder(fixture_name: str, **extra: Any) -> Options:
    return lambda fixture: {"path": str(fixture(fixture_name)), **extra}


def vllm_options(fixture: Callable[[str], Any]) -> dict[str, Any]:
    """vLLM serves the tiny chat model only with its package on a CUDA GPU."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        pytest.skip("llm vllm: the vllm package is not installed (pip install 'dndbench[vllm]')")
    import torch

    if not torch.cuda.is_available():
        pytest.skip("llm vllm: vLLM runs only on a CUDA GPU")
    return {"path": str(fixture("chat_llm_dir")), "max_new_tokens": 4, "device": "cuda"}


BACKEND_OPTIONS: dict[tuple[str, str], Options] = {
    ("captioner", "blip"): folder("blip_dir", max_new_tokens=6),
    ("captioner", "blip2"): folder("blip2_dir", max_new_tokens=6),
    ("captioner", "toy"): lambda fixture: dict(TINY_TOY_TRAINING),
    ("llm", "openai"): lambda fixture: {"base_url": fixture("openai_server").base_url},
    ("llm", "hf"): folder("chat_llm_dir", max_new_tokens=4),
    ("llm", "smollm2"): folder("chat_llm_dir", max_new_tokens=4, gguf_file=""),
    ("llm", "vllm"): vllm_options,
    ("text2image", "sd14"): folder("sd_dir", **SD),
    ("text2image", "sd15"): folder("sd_dir", **SD),
    ("text2image", "sd_turbo"): folder("sd_dir", **SD),
    ("text2image", "sd15_lcm"): folder("sd_dir", **SD),
    ("text2image", "toy"): lambda fixture: {"size": 32},
    ("vlm", "clip_vitb16"): folder("clip_dir"),
    ("vlm", "toy"): lambda fixture: dict(TINY_TOY_TRAINING),
    ("embedder", "minilm"): folder("sentence_dir"),
    ("embedder", "mpnet"): folder("sentence_dir"),
    ("embedder", "clip"): folder("clip_dir"),
}
BACKENDS = [pytest.param(kind, name, id=f"{kind}-{name}",
                         marks=[pytest.mark.slow] if (kind, name) in SLOW else [])
            for kind in BACKEND_KINDS for name in shipped(kind)]


@pytest.fixture(scope="module")
def backend_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache for the round trips (each backend's call-cache keys are its own, so its first
    call still computes; the toy captioner and CLIP share their trained weights)."""
    return tmp_path_factory.mktemp("conformance-backends")


@pytest.mark.parametrize("kind, name", BACKENDS)
def test_backend_round_trip(kind: str, name: str, request: pytest.FixtureRequest,
                            backend_cache_dir: Path) -> None:
    options = BACKEND_OPTIONS.get((kind, name), lambda fixture: {})(request.getfixturevalue)
    summary = run_check(kind, name, backend_cache_dir, options)
    assert summary.startswith("round trip")
