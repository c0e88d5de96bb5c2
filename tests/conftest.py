"""Shared fixtures: every test caches under a tmp folder, never the user's home cache; tiny
random-weight model folders for the real backends (built once per session, on first request)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
PUBLISHED = SHARED / "data" / "published"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path_factory.getbasetemp() / "dndbench-cache"
    monkeypatch.setenv("DNDBENCH_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    return cache


@pytest.fixture
def published() -> Path:
    """The seed paper's released descriptions (../shared); skipped in a clone without it."""
    if not PUBLISHED.is_dir():
        pytest.skip(f"published results not found at {PUBLISHED} (only present next to the "
                    f"project's development checkout)")
    return PUBLISHED


def _tiny_model(factory: pytest.TempPathFactory, name: str, *needs: str) -> Path:
    from dndbench.testing import tiny_hub_models

    for module in needs:
        pytest.importorskip(module)
    return getattr(tiny_hub_models, f"write_tiny_{name}")(factory.mktemp(f"tiny-{name}"))


@pytest.fixture(scope="session")
def blip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BLIP captioner folder (``captioner=blip path=...``)."""
    return _tiny_model(tmp_path_factory, "blip", "transformers")


@pytest.fixture(scope="session")
def blip2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BLIP-2 captioner folder (``captioner=blip2 path=...``)."""
    return _tiny_model(tmp_path_factory, "blip2", "transformers")


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny CLIP folder (``vlm=clip_vitb16``, ``embedder=clip``)."""
    return _tiny_model(tmp_path_factory, "clip", "transformers")


@pytest.fixture(scope="session")
def sd_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Stable Diffusion pipeline folder (``text2image=sd14`` and siblings)."""
    return _tiny_model(tmp_path_factory, "sd", "transformers", "diffusers")


@pytest.fixture(scope="session")
def chat_llm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny causal LM with a chat template (``llm=hf``)."""
    return _tiny_model(tmp_path_factory, "chat_llm", "transformers")


@pytest.fixture(scope="session")
def bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BERT encoder folder (``metric=final_layer_bertscore path=...``)."""
    return _tiny_model(tmp_path_factory, "bert", "transformers")


@pytest.fixture(scope="session")
def sentence_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny sentence-transformers model folder (``embedder=minilm`` / ``mpnet``)."""
    return _tiny_model(tmp_path_factory, "sentence_transformer", "sentence_transformers")


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("DNDBENCH_CACHE", str(Path(config.rootpath) / ".cache" / "pytest"))
