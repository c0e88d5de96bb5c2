"""Resumable training (dndbench.training_checkpoint): a training killed after epoch k resumes
from its checkpoint, redoes no epoch, and ends with exactly the weights of an uninterrupted
training; the toy MILAN's fits use it."""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from dndbench.training_checkpoint import (
    CHECKPOINT_NAME,
    TrainingCheckpoint,
    remove_checkpoints,
)

EPOCHS = 6


class Killed(BaseException):
    """Stands for SIGKILL after a checkpoint was written: nothing after it runs."""


def _scramble_process_state() -> None:
    """A new process's random states differ from the killed one's: resume must restore them."""
    torch.manual_seed(12345)
    np.random.seed(54321)
    random.seed(999)


def _train(path: Path, key: str = "k", kill_after: int | None = None,
           epochs: int = EPOCHS) -> tuple[dict[str, Any], list[float], list[int]]:
    """A small loop with every kind of state: dropout (global torch RNG), shuffling (a torch
    generator), input noise (numpy generator and global numpy / Python RNG), AdamW, StepLR."""
    torch.manual_seed(0)
    np.random.seed(3)
    random.seed(4)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.3), torch.nn.Linear(8, 1))
    opt = torch.optim.AdamW(net.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    order_gen = torch.Generator().manual_seed(1)
    noise = np.random.default_rng(2)
    x, y = torch.randn(32, 4), torch.randn(32, 1)
    ckpt = TrainingCheckpoint(path, key, modules={"net": net}, optimizers={"opt": opt},
                              schedulers={"sched": sched},
                              generators={"order": order_gen, "noise": noise})
    resumed = ckpt.resume()
    first = resumed.epoch if resumed else 0
    history: list[float] = list(resumed.extra["history"]) if resumed else []
    ran: list[int] = []
    net.train()
    for epoch in range(first, epochs):
        ran.append(epoch)
        total = 0.0
        for idx in torch.randperm(32, generator=order_gen).split(8):
            jitter = torch.from_numpy(noise.normal(0, 0.01, (len(idx), 4)).astype(np.float32))
            scale = float(np.random.uniform(0.9, 1.1)) * random.uniform(0.9, 1.1)
            loss = ((net(x[idx] + jitter) * scale - y[idx]) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item()
        sched.step()
        history.append(total)
        ckpt.save(epoch + 1, extra={"history": history})
        if kill_after is not None and epoch + 1 == kill_after:
            raise Killed()
    state = {f"net.{k}": v for k, v in net.state_dict().items()}
    state["opt"] = opt.state_dict()
    state["sched"] = sched.state_dict()
    return state, history, ran


def _same(a: Any, b: Any) -> bool:
    """Exact equality of nested state (tensors compared bit for bit)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, z) for x, z in zip(a, b))
    return bool(a == b)


@pytest.mark.parametrize("kill_after", [1, 3, EPOCHS - 1])
def test_killed_loop_resumes_to_the_same_weights(tmp_path: Path, kill_after: int) -> None:
    whole, whole_history, _ = _train(tmp_path / "a" / CHECKPOINT_NAME)
    path = tmp_path / "b" / CHECKPOINT_NAME
    with pytest.raises(Killed):
        _train(path, kill_after=kill_after)
    assert path.is_file()
    assert [p.name for p in path.parent.iterdir()] == [CHECKPOINT_NAME]  # no temporary left
    _scramble_process_state()
    state, history, ran = _train(path)
    assert ran == list(range(kill_after, EPOCHS))  # no epoch is trained twice
    assert history == whole_history
    assert _same(state, whole)
    remove_checkpoints(path.parent)
    assert not path.exists()


def test_checkpoint_of_another_configuration_or_unreadable_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / CHECKPOINT_NAME
    whole, _, _ = _train(tmp_path / "a.pt")
    with pytest.raises(Killed):
        _train(path, key="other", kill_after=2)
    _, _, ran = _train(path, key="k")  # another key: starts from scratch
    assert ran == list(range(EPOCHS))
    path.write_bytes(b"truncated")
    state, _, ran = _train(path)
    assert ran == list(range(EPOCHS)) and _same(state, whole)


def test_save_every_and_remove(tmp_path: Path) -> None:
    net = torch.nn.Linear(2, 2)
    ckpt = TrainingCheckpoint(tmp_path / CHECKPOINT_NAME, "k", modules={"net": net}, every=2)
    assert not ckpt.save(1) and not ckpt.path.exists()
    assert ckpt.save(2) and ckpt.path.exists()
    assert ckpt.save(3, force=True)
    resumed = ckpt.resume()
    assert resumed is not None and resumed.epoch == 3
    ckpt.remove()
    assert ckpt.resume() is None


# -- the toy MILAN's training ---------------------------------------------------------------------
def _milan(tmp_path: Path, out: Path, refit: bool) -> Any:
    from dndbench.describers.milan.annotations import load_milannotations
    from dndbench.describers.milan.model import EncoderSpec, Sizes, build_backbone
    from dndbench.describers.milan.training import FitConfig, train_on_units
    from dndbench.testing.milan_fixture import make_milannotations

    units = load_milannotations(make_milannotations(tmp_path / "ann"))
    spec = EncoderSpec(arch="toynet", input_size=16, mean=(0.5,) * 3, std=(0.25,) * 3,
                       options={"widths": [4, 4, 8, 8], "blocks": 1})
    sizes = Sizes(embedding_size=16, hidden_size=32, lm_embedding_size=16, lm_hidden_size=32,
                  lm_layers=2, dropout=0.1, lm_dropout=0.1)
    torch.manual_seed(0)
    backbone = build_backbone(spec)
    config = FitConfig(epochs=EPOCHS, lm_epochs=EPOCHS, batch_size=4, lr=1e-2, hold_out=0.2,
                       refit=refit)
    return train_on_units(units, spec, backbone, sizes, config, progress=False,
                          checkpoint_dir=out, checkpoint_key="test")


@pytest.mark.parametrize(("refit", "kill_file", "kill_after"),
                         [(False, "checkpoint.pt", 2), (True, "checkpoint-refit.pt", 3)])
def test_killed_milan_training_resumes_to_the_same_weights(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, refit: bool, kill_file: str,
        kill_after: int) -> None:
    whole = _milan(tmp_path, tmp_path / "a", refit)
    assert (tmp_path / "a" / CHECKPOINT_NAME).is_file()  # kept until the caller saves weights

    saved: list[tuple[str, int]] = []
    original = TrainingCheckpoint.save

    def save_then_die(self: TrainingCheckpoint, epoch: int, *args: Any, **kwargs: Any) -> bool:
        done = original(self, epoch, *args, **kwargs)
        saved.append((self.path.name, epoch))
        if self.path.name == kill_file and epoch == kill_after and killing:
            raise Killed()
        return done

    monkeypatch.setattr(TrainingCheckpoint, "save", save_then_die)
    killing = True
    with pytest.raises(Killed):
        _milan(tmp_path, tmp_path / "b", refit)
    killing = False
    saved.clear()
    _scramble_process_state()
    again = _milan(tmp_path, tmp_path / "b", refit)
    # only the epochs after the kill are trained again (a finished first fit is not redone)
    assert saved == [(kill_file, e) for e in range(kill_after + 1, EPOCHS + 1)]
    for (ka, va), (kb, vb) in zip(whole.state_dict().items(), again.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka
    report, again_report = whole.meta["report"], again.meta["report"]
    assert report["history"] == again_report["history"]
    assert report.get("refit_history") == again_report.get("refit_history")
    remove_checkpoints(tmp_path / "b")
    assert not list((tmp_path / "b").glob("checkpoint*.pt"))
