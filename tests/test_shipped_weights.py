"""The toy-world weights shipped in the package: intact files, the default configs'
fingerprints, the recorded numbers on loading, no training when the fingerprint matches, and
(slow) retraining that reaches the recorded accuracy."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from dndbench.cache import Cache
from dndbench.errors import DataError
from dndbench.toyworld import ship_weights, weights


@pytest.fixture
def no_training(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every toy-world training entry point fails the test if called."""
    def fail(*args, **kwargs):
        raise AssertionError("trained although shipped weights match")

    import dndbench.describers.milan.training as milan_training
    import dndbench.toyworld.train_toy_backends as backends_training
    import dndbench.toyworld.train_toynet as toynet_training

    monkeypatch.setattr(toynet_training, "train", fail)
    monkeypatch.setattr(backends_training, "train", fail)
    monkeypatch.setattr(milan_training, "train_toy", fail)


def test_every_shipped_file_matches_its_manifest_entry() -> None:
    entries = weights.manifest()
    assert set(entries) == set(weights.FILES)
    total = 0
    for kind, entry in entries.items():
        path = weights.HERE / entry["file"]
        assert path.is_file() and entry["file"] == weights.FILES[kind]
        assert weights.sha256(path) == entry["sha256"], kind
        assert path.stat().st_size == entry["bytes"]
        assert {"config", "report"} <= set(entry["meta"]) and entry["accuracy"]
        assert {"threads", "cpu_capability", "torch"} <= set(entry["trained_on"])
        total += entry["bytes"]
    # float16 files: ToyNet 1.8 MB, toy backends 5.4 MB, toy MILAN 3.3 MB (its frozen encoder is a
    # whole ToyNet)
    assert total < 12e6, "the shipped weights stay a few MB"


def test_the_shipped_fingerprints_are_the_default_configs() -> None:
    from dndbench.describers.base import DESCRIBERS
    from dndbench.describers.milan.training import toy_key

    keys = ship_weights.default_fingerprints()
    entries = weights.manifest()
    assert entries["toynet"]["fingerprint"] == keys["toynet"]
    assert entries["toy_backends"]["fingerprint"] == keys["toy_backends"]
    milan = DESCRIBERS.create(DESCRIBERS.config("milan"))
    assert entries["toy_milan"]["fingerprint"] == toy_key(milan.toy_config())


def test_loading_gives_the_recorded_numbers_without_training(tmp_path: Path,
                                                             no_training: None) -> None:
    import torch

    from dndbench.models.base import MODELS
    from dndbench.toyworld.toy_backends import ToyCaptioner, ToyModelConfig

    cache = Cache(tmp_path)
    model = MODELS.create("toynet")
    model.cache = cache
    net = model.network(pretrained=True)
    meta = model.meta()
    assert meta["shipped"]["sha256"] == weights.manifest()["toynet"]["sha256"]
    assert meta["report"]["test_accuracy"] == weights.manifest()["toynet"]["accuracy"]["test_accuracy"]
    state = {k: v for k, v in net.state_dict().items()}
    check = ship_weights.sample_check("toynet", state, meta)
    recorded = weights.manifest()["toynet"]["sample_check"]
    assert check["accuracy"] == recorded["accuracy"]
    # other CPUs may round differently in the last digits
    assert check["logit_sum"] == pytest.approx(recorded["logit_sum"], rel=1e-5)

    captioner = ToyCaptioner(ToyModelConfig(name="toy", device="cpu"), cache_dir=tmp_path)
    backend_meta = json.loads((captioner.ensure_trained() / "meta.json").read_text())
    state = {k: v.cpu() for k, v in captioner.model().state_dict().items()}
    assert (ship_weights.sample_check("toy_backends", state, backend_meta)
            == weights.manifest()["toy_backends"]["sample_check"])
    assert torch.equal(next(iter(state.values())),
                       weights.load_tensors("toy_backends")[next(iter(state))])


def test_the_toy_milan_loads_without_training(tmp_path: Path, no_training: None) -> None:
    from dndbench.describers.base import DESCRIBERS
    from dndbench.describers.milan.model import Milan
    from dndbench.describers.milan.training import ensure_toy_milan

    milan = DESCRIBERS.create(DESCRIBERS.config("milan"))
    loaded = Milan.load(ensure_toy_milan(milan.toy_config(), Cache(tmp_path)))
    entry = weights.manifest()["toy_milan"]
    assert loaded.vocab.words == entry["payload"]["words"]
    assert loaded.meta["shipped"]["fingerprint"] == entry["fingerprint"]
    tensors = weights.load_tensors("toy_milan")
    state = loaded.decoder.state_dict()
    assert all(np.array_equal(state[k].numpy(), tensors[f"decoder.{k}"].numpy()) for k in state)


@pytest.mark.parametrize("how", ["other config", "turned off"])
def test_other_configs_and_the_switch_are_not_served(tmp_path: Path, how: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    fingerprint = weights.manifest()["toynet"]["fingerprint"]
    if how == "other config":
        fingerprint = "0" * 16
    else:
        monkeypatch.setenv(weights.ENV, "0")
    assert weights.install("toynet", fingerprint, tmp_path / "out") is False
    assert not (tmp_path / "out").exists()


def test_a_damaged_file_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "shipped"
    folder.mkdir()
    shutil.copy(weights.HERE / weights.MANIFEST, folder / weights.MANIFEST)
    data = bytearray((weights.HERE / weights.FILES["toynet"]).read_bytes())
    data[-1] ^= 0xFF
    (folder / weights.FILES["toynet"]).write_bytes(bytes(data))
    fingerprint = weights.manifest()["toynet"]["fingerprint"]
    with pytest.raises(DataError, match="damaged"):
        weights.install("toynet", fingerprint, tmp_path / "out", folder)
    assert not (tmp_path / "out" / "meta.json").exists()


# -- retraining reproduces the shipped figures (within a tolerance: other machines differ) -----
@pytest.mark.slow
@pytest.mark.retrain
def test_retraining_the_toy_backends_reaches_the_recorded_accuracy(tmp_path: Path) -> None:
    from dndbench.toyworld.train_toy_backends import BackendTrainConfig, train

    recorded = weights.manifest()["toy_backends"]["accuracy"]["slot_accuracy"]
    meta = train(BackendTrainConfig(), tmp_path, progress=False)
    for slot in ("shape", "colour", "texture", "scene"):
        assert abs(meta["report"]["slot_accuracy"][slot] - recorded[slot]) <= 0.06, slot


@pytest.mark.slow
@pytest.mark.retrain
def test_retraining_toynet_reaches_the_recorded_accuracy(tmp_path: Path) -> None:
    from dndbench.toyworld.train_toynet import TrainConfig, train

    recorded = weights.manifest()["toynet"]["accuracy"]
    meta = train(TrainConfig(), tmp_path, progress=False)
    assert abs(meta["report"]["test_accuracy"] - recorded["test_accuracy"]) <= 0.03
    aucs = [u["auc"] for u in meta["report"]["planted_units"]]
    assert abs(float(np.mean(aucs)) - recorded["planted_auc_mean"]) <= 0.02
    shipped = weights.manifest()["toynet"]["meta"]["planted"]
    passed = sum(u["gate"] for u in meta["report"]["planted_units"])
    assert passed >= sum(len(v) for v in shipped.values()) - 3


def test_exporting_the_installed_weights_gives_the_shipped_files(tmp_path: Path) -> None:
    from dndbench.describers.base import DESCRIBERS
    from dndbench.describers.milan.training import ensure_toy_milan
    from dndbench.models.base import MODELS
    from dndbench.toyworld.toy_backends import ToyCaptioner, ToyModelConfig

    cache = Cache(tmp_path / "cache")
    model = MODELS.create("toynet")
    model.cache = cache
    model.ensure_trained()
    ToyCaptioner(ToyModelConfig(name="toy"), cache_dir=cache.root).ensure_trained()
    ensure_toy_milan(DESCRIBERS.create(DESCRIBERS.config("milan")).toy_config(), cache)
    entries = ship_weights.export(cache.root, tmp_path / "out", {"threads": 2})
    shipped = weights.manifest()
    for kind, entry in entries.items():
        assert entry["sha256"] == shipped[kind]["sha256"], kind
        assert entry["fingerprint"] == shipped[kind]["fingerprint"]
        check, recorded = entry.get("sample_check"), shipped[kind].get("sample_check")
        if kind == "toynet":  # other CPUs may round the logits' sum differently
            assert check == pytest.approx(recorded, rel=1e-5)
        elif kind == "toy_backends":
            assert check["slot_accuracy"] == pytest.approx(recorded["slot_accuracy"])
    written = json.loads((tmp_path / "out" / weights.MANIFEST).read_text())
    assert {k: v["sha256"] for k, v in written.items()} == {k: v["sha256"] for k, v in entries.items()}


def test_refreshing_one_kind_keeps_the_other_manifest_entries(tmp_path: Path) -> None:
    from dndbench.toyworld.toy_backends import ToyCaptioner, ToyModelConfig

    cache = Cache(tmp_path / "cache")
    ToyCaptioner(ToyModelConfig(name="toy"), cache_dir=cache.root).ensure_trained()
    out = tmp_path / "out"
    out.mkdir()
    argv = ["--cache", str(cache.root), "--out", str(out), "--only", "toy_backends"]
    assert ship_weights.main(argv) == 2  # no manifest to keep the other entries of
    assert not any(out.iterdir())
    shipped = weights.manifest()
    (out / weights.MANIFEST).write_text(json.dumps(shipped))
    assert ship_weights.main(argv) == 0
    written = json.loads((out / weights.MANIFEST).read_text())
    assert list(written) == list(weights.FILES)
    assert written["toynet"] == shipped["toynet"] and written["toy_milan"] == shipped["toy_milan"]
    assert written["toy_backends"]["sha256"] == shipped["toy_backends"]["sha256"]
    assert sorted(p.name for p in out.iterdir()) == [weights.MANIFEST, "toy_backends.safetensors"]
