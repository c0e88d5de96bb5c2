"""Tests of the checksummed download helper and of pinned Places365 URLs (``file://`` only)."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from dndbench.cache import Cache
from dndbench.downloads import check_sha256, download, sha256_of, split_pinned
from dndbench.errors import ConfigError, DataError

DATA = b"some bytes worth checking\n" * 1000
GOOD = hashlib.sha256(DATA).hexdigest()


@pytest.fixture
def source(tmp_path: Path) -> str:
    path = tmp_path / "src" / "file.bin"
    path.parent.mkdir()
    path.write_bytes(DATA)
    return path.as_uri()


@pytest.mark.parametrize("sha256", [None, GOOD, GOOD.upper()])
def test_download_writes_the_file(tmp_path: Path, source: str, sha256: str | None) -> None:
    target = tmp_path / "out" / "file.bin"
    assert download(source, target, sha256=sha256) == target
    assert target.read_bytes() == DATA and sha256_of(target) == GOOD
    assert os.listdir(target.parent) == ["file.bin"]  # no temporary file left


def test_download_replaces_an_existing_file(tmp_path: Path, source: str) -> None:
    target = tmp_path / "file.bin"
    target.write_bytes(b"old")
    download(source, target)
    assert target.read_bytes() == DATA


def test_checksum_mismatch_is_a_one_line_data_error(tmp_path: Path, source: str) -> None:
    wrong = "0" * 64
    target = tmp_path / "out" / "file.bin"
    with pytest.raises(DataError) as err:
        download(source, target, sha256=wrong, fix="set x.sha256")
    message = str(err.value)
    assert "\n" not in message and "corrupt or has changed" in message
    assert GOOD in message and wrong in message and message.endswith("; set x.sha256")
    assert not target.exists() and os.listdir(target.parent) == []


def test_transfer_failure_is_the_openers_oserror(tmp_path: Path) -> None:
    def fail(url: str) -> None:
        raise ConnectionResetError("connection reset (test)")

    with pytest.raises(OSError, match="connection reset"):
        download("http://example.invalid/file.bin", tmp_path / "file.bin", opener=fail)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("source, expected", [
    ("http://h/x.pt", ("http://h/x.pt", None)),
    (f"http://h/x.pt#sha256={GOOD.upper()}", ("http://h/x.pt", GOOD)),
    (f"file:///a/b.txt#sha256={GOOD}", ("file:///a/b.txt", GOOD)),
])
def test_split_pinned(source: str, expected: tuple[str, str | None]) -> None:
    assert split_pinned(source, "model.checkpoint") == expected


@pytest.mark.parametrize("value", ["abc", "z" * 64, GOOD + "0"])
def test_malformed_checksums_are_config_errors(value: str) -> None:
    with pytest.raises(ConfigError, match="model.checkpoint: a SHA-256 checksum is 64 hex digits"):
        split_pinned(f"http://h/x.pt#sha256={value}", "model.checkpoint")
    with pytest.raises(ConfigError, match="--sha256"):
        check_sha256(value, "--sha256")
    assert check_sha256("", "--sha256") is None and check_sha256(None, "--sha256") is None


def test_places365_checks_a_pinned_url(tmp_path: Path) -> None:
    pytest.importorskip("torchvision")
    from dndbench.models.places365 import Places365ResNet18
    from dndbench.testing import fixtures

    fixtures.write_places365_categories(tmp_path / "src" / "categories_places365.txt")
    url = (tmp_path / "src" / "categories_places365.txt").as_uri()
    good = sha256_of(tmp_path / "src" / "categories_places365.txt")

    def model(categories: str) -> Places365ResNet18:
        m = Places365ResNet18(Places365ResNet18.Config(name="resnet18_places365",
                                                       categories=categories))
        m.cache = Cache(tmp_path / "cache")
        return m

    with pytest.raises(DataError, match="model.categories=/path/to/categories_places365.txt"):
        model(f"{url}#sha256={'1' * 64}").class_names()
    kept = [p.name for p in (tmp_path / "cache" / "downloads").iterdir()]
    assert not [n for n in kept if not n.endswith(".lock")]  # only the lock file
    assert model(f"{url}#sha256={good}").class_names()[1] == "airplane cabin"
    with pytest.raises(ConfigError, match="model.categories"):
        model(f"{url}#sha256=nothex").class_names()
