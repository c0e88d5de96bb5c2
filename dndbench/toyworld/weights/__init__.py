"""The trained toy-world weights shipped inside the package (safetensors), so every machine
starts from the same numbers.

Training on a CPU is deterministic for one machine, but its floating-point results depend on
the thread count and the CPU's instruction set, so two machines that train the toy world get
(slightly) different weights and different leaderboards.  The package therefore ships the
weights of the *default* training configs:

* ``toynet.safetensors``: ToyNet, seed 0 (``model=toynet``);
* ``toy_backends.safetensors``: the toy captioner + toy CLIP network (``captioner=toy``,
  ``vlm=toy``);
* ``toy_milan.safetensors``: the toy MILAN (``describer=milan``; its frozen exemplar encoder,
  ToyNet seed 1, is inside the file, so ToyNet seed 1 need not be shipped).

``manifest.json`` lists, per file: the training-config fingerprint (the cache key the loader
computes for the requested config), the file's sha256, the machine it was trained on and the
training's ``meta.json`` (config and accuracy report).

On first use a model asks :func:`install` for its fingerprint: when the shipped fingerprint
matches, the tensors are written into the cache folder in the loader's own format
(``weights.pt`` / ``milan.pt`` + ``meta.json``) and nothing is trained; any other config (a
different seed, a tiny test config, changed code that bumped a version string) trains as
before.  ``DNDBENCH_SHIPPED_WEIGHTS=0`` turns the shipped weights off (to retrain from scratch).

After retraining the world, refresh the shipped files from a cache that holds the new default
trainings (``python -m dndbench train-toynet``, ``train-toy-backends``, ``train-milan``) with
:mod:`dndbench.toyworld.ship_weights`::

    python -m dndbench.toyworld.ship_weights --cache ~/.cache/dndbench
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from dndbench.cache import atomic_path
from dndbench.errors import DataError

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
MANIFEST = "manifest.json"
#: environment variable that turns the shipped weights off (``0``, ``false``, ``no``, ``off``)
ENV = "DNDBENCH_SHIPPED_WEIGHTS"
#: the shipped kinds and their files
FILES = {"toynet": "toynet.safetensors", "toy_backends": "toy_backends.safetensors",
         "toy_milan": "toy_milan.safetensors"}
#: the parts of a MILAN file's state, flattened into one safetensors file as ``part.name``
MILAN_PARTS = ("encoder", "decoder", "lm")


def enabled() -> bool:
    """Whether shipped weights may be used (``DNDBENCH_SHIPPED_WEIGHTS`` is not off)."""
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "no", "off")


@lru_cache(maxsize=4)
def _read_manifest(folder: str) -> dict[str, Any]:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return {}
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read the shipped weights' manifest {path} ({exc})") from exc


def reload() -> None:
    """Forget the manifests read so far (after :mod:`dndbench.toyworld.ship_weights` wrote one)."""
    _read_manifest.cache_clear()


def manifest(folder: Path | None = None) -> dict[str, Any]:
    """``{kind: entry}`` of the shipped files (empty when none are shipped)."""
    return _read_manifest(str(folder or HERE))


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def shipped(kind: str, fingerprint: str, folder: Path | None = None) -> dict[str, Any] | None:
    """The manifest entry of ``kind`` when its fingerprint is ``fingerprint`` (and shipped
    weights are enabled and the file is there), else None."""
    if not enabled():
        return None
    entry = manifest(folder).get(kind)
    if not entry or entry.get("fingerprint") != fingerprint:
        return None
    if not ((folder or HERE) / entry["file"]).is_file():
        return None
    return dict(entry)


def load_tensors(kind: str, folder: Path | None = None) -> dict[str, Any]:
    """The shipped tensors of ``kind`` (sha256 checked against the manifest), as float32."""
    from safetensors.torch import load_file

    folder = folder or HERE
    entry = manifest(folder)[kind]
    path = folder / entry["file"]
    found = sha256(path)
    if found != entry["sha256"]:
        raise DataError(f"shipped weights {path} are damaged (sha256 {found[:12]}..., the "
                        f"manifest says {entry['sha256'][:12]}...); reinstall the package or set "
                        f"{ENV}=0 to train instead")
    # stored as float16 (see ship_weights.export); float32 holds every float16 value exactly
    return {k: v.float() if str(v.dtype) == "torch.float16" else v
            for k, v in load_file(str(path)).items()}


def install(kind: str, fingerprint: str, out_dir: Path, folder: Path | None = None) -> bool:
    """Write the shipped weights of ``kind`` into the cache folder ``out_dir`` in the loader's
    format when their fingerprint is ``fingerprint``; False (nothing written) otherwise.
    ``meta.json`` is written last and records ``"shipped"``: file, sha256, fingerprint."""
    import torch

    entry = shipped(kind, fingerprint, folder)
    if entry is None:
        return False
    tensors = load_tensors(kind, folder)
    meta = dict(entry["meta"])
    meta["shipped"] = {"file": entry["file"], "sha256": entry["sha256"],
                       "fingerprint": fingerprint, "trained_on": entry.get("trained_on", {})}
    out_dir = Path(out_dir)
    if kind == "toy_milan":
        payload = dict(entry["payload"])
        payload["meta"] = meta
        payload["state"] = {part: {k.split(".", 1)[1]: v for k, v in tensors.items()
                                   if k.split(".", 1)[0] == part} for part in MILAN_PARTS}
        with atomic_path(out_dir / "milan.pt") as tmp:
            torch.save(payload, tmp)
    else:
        with atomic_path(out_dir / "weights.pt") as tmp:
            torch.save(tensors, tmp)
    with atomic_path(out_dir / "meta.json") as tmp:
        tmp.write_text(json.dumps(meta, indent=2, default=str))
    log.info("installed the shipped %s weights (%s) into %s", kind, entry["file"], out_dir)
    return True
