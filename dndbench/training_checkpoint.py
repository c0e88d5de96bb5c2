"""Resumable training: the whole state of a training loop saved after every epoch, so a training
killed part-way (SIGKILL, a full machine, Ctrl-C) resumes where it stopped on its next run and
ends with the same weights as one that was never interrupted.

A checkpoint (``checkpoint.pt`` next to the weights a training writes) holds the state of the
modules, optimizers and schedulers it is given, the states of the named random generators
(``torch.Generator`` or ``numpy.random.Generator``), the global random states (torch, CUDA when
initialised, numpy, Python's ``random``), the epoch and step reached, and whatever else the
loop needs (``extra``: its loss history).  It is written through a temporary file and renamed
into place (:func:`dndbench.cache.atomic_path`), so a kill while saving leaves the previous
checkpoint whole.  It records a ``key`` (the hash of everything that determines the training):
a checkpoint with another key, or one that cannot be read, is ignored and the training starts
from scratch.  It is loaded with ``torch.load(weights_only=True)``: no pickled code runs.

Use (see ``docs/reliability.md``)::

    ckpt = TrainingCheckpoint(out_dir / CHECKPOINT_NAME, key, modules={"net": net},
                              optimizers={"opt": opt}, generators={"order": gen})
    state = ckpt.resume()                 # None: nothing to resume; else restored in place
    start = state.epoch if state else 0
    for epoch in range(start, epochs):
        ...                                # one epoch
        ckpt.save(epoch + 1, extra={"history": history})
    save_weights(out_dir)                  # the training's real output, written last
    ckpt.remove()                          # or remove_checkpoints(out_dir)
"""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from dndbench.cache import atomic_path

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)
#: file name of a training's checkpoint, in the folder its weights go to
CHECKPOINT_NAME = "checkpoint.pt"
#: format tag of the checkpoint payload (bump when its layout changes)
FORMAT = "dndbench-training-checkpoint/v1"


@dataclass
class Resumed:
    """What :meth:`TrainingCheckpoint.resume` restored: the epoch and step to continue from
    (the number of epochs / steps already done) and the loop's ``extra`` state."""

    epoch: int
    step: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def _numpy_state() -> dict[str, Any]:
    import numpy as np

    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"name": name, "keys": [int(k) for k in keys], "pos": int(pos),
            "has_gauss": int(has_gauss), "cached": float(cached)}


def _set_numpy_state(state: Mapping[str, Any]) -> None:
    import numpy as np

    np.random.set_state((state["name"], np.asarray(state["keys"], dtype=np.uint32),
                         state["pos"], state["has_gauss"], state["cached"]))


def global_rng_state() -> dict[str, Any]:
    """The process-wide random states: torch (and CUDA when initialised), numpy, ``random``."""
    import torch

    state: dict[str, Any] = {"torch": torch.get_rng_state(), "numpy": _numpy_state(),
                             "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_global_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`global_rng_state` returned."""
    import torch

    torch.set_rng_state(state["torch"])
    _set_numpy_state(state["numpy"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _generator_state(gen: Any) -> Any:
    """State of a ``torch.Generator`` (a byte tensor) or ``numpy.random.Generator`` (a dict)."""
    if hasattr(gen, "get_state"):
        return gen.get_state()
    return gen.bit_generator.state


def _set_generator_state(gen: Any, state: Any) -> None:
    if hasattr(gen, "set_state"):
        gen.set_state(state)
    else:
        gen.bit_generator.state = state


class TrainingCheckpoint:
    """Saves and restores one training loop's state at ``path`` (see the module docstring).

    ``key`` must change whenever anything that determines the trained weights changes (config,
    data, code version); ``every``: save after every ``every``-th epoch (1: each)."""

    def __init__(self, path: Path | str, key: str, *,
                 modules: Mapping[str, "torch.nn.Module"],
                 optimizers: Mapping[str, Any] | None = None,
                 schedulers: Mapping[str, Any] | None = None,
                 generators: Mapping[str, Any] | None = None,
                 every: int = 1) -> None:
        self.path = Path(path)
        self.key = str(key)
        self.modules = dict(modules)
        self.optimizers = dict(optimizers or {})
        self.schedulers = dict(schedulers or {})
        self.generators = dict(generators or {})
        self.every = max(1, int(every))

    def payload(self, epoch: int, step: int = 0,
                extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Everything :meth:`save` writes."""
        return {
            "format": FORMAT, "key": self.key, "epoch": int(epoch), "step": int(step),
            "modules": {n: m.state_dict() for n, m in self.modules.items()},
            "optimizers": {n: o.state_dict() for n, o in self.optimizers.items()},
            "schedulers": {n: s.state_dict() for n, s in self.schedulers.items()},
            "generators": {n: _generator_state(g) for n, g in self.generators.items()},
            "rng": global_rng_state(),
            "extra": dict(extra or {}),
        }

    def save(self, epoch: int, step: int = 0, extra: Mapping[str, Any] | None = None,
             force: bool = False) -> bool:
        """Write the state after ``epoch`` epochs (``step`` steps) atomically; skipped (False)
        unless ``epoch`` is a multiple of ``every`` or ``force``."""
        import torch

        if not force and epoch % self.every:
            return False
        payload = self.payload(epoch, step, extra)
        with atomic_path(self.path) as tmp:
            torch.save(payload, tmp)
        return True

    def load(self) -> dict[str, Any] | None:
        """The stored payload when it exists, can be read and has this key; else None (logged)."""
        import torch

        if not self.path.is_file():
            return None
        try:
            payload = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:  # unreadable: start over rather than fail the training
            log.warning("ignoring the training checkpoint %s (%s: %s); training from scratch",
                        self.path, type(exc).__name__, exc)
            return None
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            log.warning("ignoring %s: not a dndbench training checkpoint", self.path)
            return None
        if payload.get("key") != self.key:
            log.info("ignoring the training checkpoint %s: it belongs to another training "
                     "configuration", self.path)
            return None
        return payload

    def resume(self) -> Resumed | None:
        """Restore modules, optimizers, schedulers and random states in place from the stored
        checkpoint and return where to continue; None when there is nothing to resume."""
        payload = self.load()
        if payload is None:
            return None
        parts = (("modules", self.modules), ("optimizers", self.optimizers),
                 ("schedulers", self.schedulers), ("generators", self.generators))
        for part, objects in parts:
            if set(payload[part]) != set(objects):
                log.warning("ignoring the training checkpoint %s: its %s (%s) are not this "
                            "training's (%s)", self.path, part, sorted(payload[part]),
                            sorted(objects))
                return None
        for name, module in self.modules.items():
            module.load_state_dict(payload["modules"][name])
        for name, opt in self.optimizers.items():
            opt.load_state_dict(payload["optimizers"][name])
        for name, sched in self.schedulers.items():
            sched.load_state_dict(payload["schedulers"][name])
        for name, gen in self.generators.items():
            _set_generator_state(gen, payload["generators"][name])
        set_global_rng_state(payload["rng"])
        log.info("resuming training from %s after epoch %d", self.path, payload["epoch"])
        return Resumed(epoch=int(payload["epoch"]), step=int(payload["step"]),
                       extra=dict(payload["extra"]))

    def remove(self) -> None:
        """Delete the checkpoint (call it once the training's output is written)."""
        self.path.unlink(missing_ok=True)


def remove_checkpoints(folder: Path | str) -> None:
    """Delete every training checkpoint (``checkpoint*.pt``) in ``folder``."""
    for path in Path(folder).glob("checkpoint*.pt"):
        path.unlink(missing_ok=True)
