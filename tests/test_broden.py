"""Tests of the Broden probe loader, its download command and the test fixture."""
from __future__ import annotations

import hashlib
import io
import os
import shutil
import urllib.error
import zipfile
from pathlib import Path

import numpy as np
import pytest

from dndbench.errors import ConfigError, DataError
from dndbench.probes import broden_download
from dndbench.probes.broden import BrodenProbe, decode_label_png, parse_category_field
from dndbench.testing import broden_fixture as fx


def make_probe(root: Path, **options) -> BrodenProbe:
    return BrodenProbe(BrodenProbe.Config(name="broden", root=str(root), **options))


@pytest.fixture(scope="module")
def broden_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fx.make_broden_fixture(tmp_path_factory.mktemp("broden") / "broden1_224", n_images=12)


def test_registered() -> None:
    assert BrodenProbe.registry_name == "broden"


def test_concepts_and_primary_category(broden_root: Path) -> None:
    probe = make_probe(broden_root)
    concepts = {c.name: c for c in probe.concepts()}
    assert len(probe) == 12
    assert set(concepts) == {name for _, name, _ in fx.LABELS}
    assert concepts["red-c"].id == fx.RED and concepts["red-c"].category == "color"
    assert concepts["handle"].category == "part"  # part(5) beats object(1)
    assert probe.categories == list(fx.CATEGORIES)
    assert probe.has_annotations


def test_annotation_pixel_and_image_level(broden_root: Path) -> None:
    probe = make_probe(broden_root)
    even, odd = probe.annotation(0), probe.annotation(1)
    assert even.shape == (32, 32)
    assert even.pixel["color"].shape == (1, 32, 32)
    assert even.pixel["object"].shape == (2, 32, 32)  # two label PNGs in the cell
    assert set(np.unique(even.pixel["object"])) == {0, fx.WALL, fx.BALL, fx.TABLE}
    assert even.image_level == {"scene": [fx.KITCHEN], "texture": [fx.STRIPED]}
    # planted red square of image 0, at half resolution
    r, c, side = fx.RED_BOX_0
    red = even.pixel["color"][0] == fx.RED
    assert red.sum() == (side // 2) ** 2 and red[r // 2:(r + side) // 2, c // 2:(c + side) // 2].all()
    # categories not annotated for some images are absent
    assert "part" not in odd.categories and "texture" not in odd.categories
    assert "material" not in even.categories and "material" not in odd.categories
    assert odd.categories == {"color", "object", "scene"}


def test_image_matches_labels(broden_root: Path) -> None:
    probe = make_probe(broden_root)
    img = np.asarray(probe.image(0), dtype=float)
    assert img.shape == (64, 64, 3)
    r, c, side = fx.RED_BOX_0
    square = img[r:r + side, c:c + side]
    assert square[..., 0].mean() > 100 and square[..., 1:].mean() < 60


def test_category_split_and_max_images_options(broden_root: Path) -> None:
    probe = make_probe(broden_root, categories=["color", "scene"], max_images=5)
    assert len(probe) == 5
    assert {c.category for c in probe.concepts()} == {"color", "scene"}
    assert probe.annotation(0).categories == {"color", "scene"}
    assert len(make_probe(broden_root, index_split="val")) == 3
    with pytest.raises(ConfigError, match="unknown categor"):
        make_probe(broden_root, categories=["colour"]).concepts()
    with pytest.raises(ConfigError):
        make_probe(broden_root, max_images=0)


def test_fingerprint_cheap_and_sensitive(tmp_path: Path) -> None:
    root = fx.make_broden_fixture(tmp_path / "b", n_images=4)
    first = make_probe(root).fingerprint()
    assert first == make_probe(root).fingerprint()
    assert first != make_probe(root, max_images=2).fingerprint()
    index = root / "index.csv"
    index.write_text(index.read_text().replace("train", "trainx"))
    assert make_probe(root).fingerprint() != first


def test_missing_folder_says_how_to_download(tmp_path: Path) -> None:
    probe = make_probe(tmp_path / "nowhere" / "broden1_224")
    with pytest.raises(DataError, match="broden_download") as err:
        len(probe)
    assert "\n" not in str(err.value)


def test_missing_label_csv(tmp_path: Path) -> None:
    root = fx.make_broden_fixture(tmp_path / "b", n_images=2)
    (root / "label.csv").unlink()
    with pytest.raises(DataError, match="label.csv"):
        make_probe(root).concepts()


def test_corrupt_image_names_file(tmp_path: Path) -> None:
    root = fx.make_broden_fixture(tmp_path / "b", n_images=3)
    bad = root / "images" / "fix" / "img_0001.jpg"
    bad.write_bytes(b"not a jpeg at all")
    probe = make_probe(root)
    probe.image(0)
    with pytest.raises(DataError, match="img_0001.jpg"):
        probe.image(1)
    (root / "images" / "fix" / "img_0002_color.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match="img_0002_color.png"):
        probe.annotation(2)


def test_label_png_encoding_roundtrip() -> None:
    labels = np.array([[0, 1, 255], [256, 300, 1234]])
    assert (decode_label_png(fx.encode_labels(labels)) == labels).all()
    assert parse_category_field("object(3);part(40)") == "part"
    assert parse_category_field("color(7)") == "color"
    assert parse_category_field("") is None


def test_module_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = ("import sys, dndbench.probes.broden, dndbench.probes.broden_download; "
            "assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


# -- download command ------------------------------------------------------------------------------
class FakeResponse(io.BytesIO):
    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.headers = {"Content-Length": str(len(data))}


def zipped_fixture(tmp_path: Path, top: str = "broden1_224") -> bytes:
    root = fx.make_broden_fixture(tmp_path / "src" / top, n_images=3)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for path in sorted(root.rglob("*")):
            zf.write(path, path.relative_to(root.parent).as_posix())
    return buf.getvalue()


def test_download_unzips_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = zipped_fixture(tmp_path)
    urls: list[str] = []
    monkeypatch.setattr(broden_download, "open_url",
                        lambda url: urls.append(url) or FakeResponse(data))
    dest = tmp_path / "data"
    target = broden_download.download(dest, 224, progress=False)
    assert target == dest / "broden1_224"
    assert urls == ["http://netdissect.csail.mit.edu/data/broden1_224.zip"]
    assert len(make_probe(target)) == 3
    assert sorted(os.listdir(dest)) == ["broden1_224"]  # no temp files left
    # an existing copy is kept unless forced
    broden_download.download(dest, 224, progress=False)
    assert len(urls) == 1
    broden_download.download(dest, 224, progress=False, force=True)
    assert len(urls) == 2 and sorted(os.listdir(dest)) == ["broden1_224"]


def test_download_failure_is_clear_and_clean(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    def fail(url: str) -> None:
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(broden_download, "open_url", fail)
    dest = tmp_path / "data"
    with pytest.raises(DataError, match="could not download .*broden1_227.zip"):
        broden_download.download(dest, 227, progress=False)
    assert os.listdir(dest) == []
    assert broden_download.main(["--dest", str(dest), "--quiet"]) == 2
    assert "error: could not download" in capsys.readouterr().err


def test_download_rejects_bad_zip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(broden_download, "open_url", lambda url: FakeResponse(b"<html>oops</html>"))
    dest = tmp_path / "data"
    with pytest.raises(DataError, match="not a valid zip"):
        broden_download.download(dest, progress=False)
    assert os.listdir(dest) == []


def test_download_main_success(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = zipped_fixture(tmp_path, top="some_other_name")
    monkeypatch.setattr(broden_download, "open_url", lambda url: FakeResponse(data))
    dest = tmp_path / "data"
    assert broden_download.main(["--dest", str(dest), "--quiet"]) == 0
    assert (dest / "broden1_224" / "index.csv").is_file()
    shutil.rmtree(dest)


def test_download_checks_the_sha256(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    data = zipped_fixture(tmp_path)
    good = hashlib.sha256(data).hexdigest()
    corrupted = data[:-100] + bytes(100)  # the same length, damaged at the end
    served = [corrupted]
    monkeypatch.setattr(broden_download, "open_url", lambda url: FakeResponse(served[0]))
    dest = tmp_path / "data"
    with pytest.raises(DataError, match="corrupt or has changed") as err:
        broden_download.download(dest, 224, progress=False, sha256=good)
    message = str(err.value)
    assert "\n" not in message and good in message
    assert hashlib.sha256(corrupted).hexdigest() in message
    assert os.listdir(dest) == []  # nothing of the bad download is kept
    assert broden_download.main(["--dest", str(dest), "--quiet", "--sha256", good]) == 2
    assert "error: download of" in capsys.readouterr().err and os.listdir(dest) == []
    served[0] = data
    assert broden_download.main(["--dest", str(dest), "--quiet", "--sha256", good.upper()]) == 0
    assert len(make_probe(dest / "broden1_224")) == 3
    assert sorted(os.listdir(dest)) == ["broden1_224"]


@pytest.mark.parametrize("value", ["abc", "g" * 64, "0" * 63])
def test_download_rejects_a_malformed_sha256(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             value: str) -> None:
    fetched: list[str] = []
    monkeypatch.setattr(broden_download, "open_url", lambda url: fetched.append(url))
    with pytest.raises(ConfigError, match="64 hex digits"):
        broden_download.download(tmp_path / "data", 224, progress=False, sha256=value)
    assert fetched == []
