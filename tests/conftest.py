"""Shared fixtures: every test caches under a tmp folder, never the user's home cache."""
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


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("DNDBENCH_CACHE", str(Path(config.rootpath) / ".cache" / "pytest"))
