"""Refresh the toy-world weights shipped in the package (:mod:`dndbench.toyworld.weights`) from
the default trainings of a cache::

    python -m dndbench train-toynet && python -m dndbench train-toy-backends \
        && python -m dndbench train-milan
    python -m dndbench.toyworld.ship_weights --cache ~/.cache/dndbench

writes ``toynet.safetensors``, ``toy_backends.safetensors``, ``toy_milan.safetensors`` and
``manifest.json`` (fingerprint, sha256, size, the training machine, the training's
``meta.json``, headline accuracies and a small accuracy check on each network's own held-out
images) into ``dndbench/toyworld/weights/``.  ``--only toy_backends`` (repeatable) refreshes
the named kinds alone and keeps the other files and manifest entries as they are.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path
from typing import Any

from dndbench.cache import atomic_path
from dndbench.errors import DataError
from dndbench.toyworld.weights import FILES, HERE, MANIFEST, MILAN_PARTS, reload, sha256


def machine() -> dict[str, Any]:
    """What the trained numbers depend on besides the code: threads, CPU capability, torch."""
    import torch

    return {"torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "machine": platform.machine()}


def default_fingerprints(cache_root: Path | None = None) -> dict[str, str]:
    """The cache keys of the default configs (what the default job asks for).  The toy
    MILAN's key is computed by the ``milan`` describer's package; without importing it (the toy
    world is a lower layer) it is read from the finished training in ``cache_root`` whose
    config is the default describer's (None when there is none)."""
    from dndbench.toyworld.target_model import ToyNetConfig, ToyNetModel
    from dndbench.toyworld.toy_backends import ToyCaptioner, ToyModelConfig
    from dndbench.toyworld.train_toy_backends import training_key

    toynet = ToyNetModel(ToyNetConfig(name="toynet")).weights_fingerprint()
    captioner = ToyCaptioner(ToyModelConfig(name="toy"))
    out = {"toynet": toynet, "toy_backends": training_key(captioner.train_config())}
    if cache_root is not None:
        milan = default_milan_folder(Path(cache_root))
        if milan is not None:
            out["toy_milan"] = milan.name
    return out


def default_milan_config() -> dict[str, Any]:
    """The default ``milan`` describer's toy MILAN config, as a plain dict (via the registry)."""
    from dataclasses import asdict

    from dndbench.registry import registry_for

    describers = registry_for("describer")
    milan = describers.create(describers.config("milan"))
    return asdict(milan.toy_config())


def default_milan_folder(cache_root: Path) -> Path | None:
    """The cache folder of the finished default toy MILAN training, if ``cache_root`` has one."""
    wanted = json.loads(json.dumps(default_milan_config(), default=str))
    for meta_path in sorted((cache_root / "milan").glob("*/meta.json")):
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            continue
        if meta.get("config") == wanted and meta.get("key") == meta_path.parent.name:
            return meta_path.parent
    return None


def source_dirs(cache_root: Path, kinds: tuple[str, ...] = tuple(FILES)) -> dict[str, Path]:
    """Where a cache holds the default trainings of ``kinds``, by kind."""
    keys = default_fingerprints(cache_root)
    if "toy_milan" in kinds and "toy_milan" not in keys:
        raise DataError(f"{cache_root} holds no finished default toy MILAN training; train it "
                        f"first (python -m dndbench train-milan)")
    folders = {"toynet": "toynet", "toy_backends": "toy_backends", "toy_milan": "milan"}
    return {kind: cache_root / folders[kind] / keys[kind] for kind in kinds}


def _flat_milan(payload: dict[str, Any]) -> dict[str, Any]:
    return {f"{part}.{name}": tensor for part in MILAN_PARTS
            for name, tensor in payload["state"][part].items()}


def export(cache_root: Path, out: Path | None = None,
           trained_on: dict[str, Any] | None = None,
           kinds: tuple[str, ...] = tuple(FILES)) -> dict[str, Any]:
    """Write the safetensors files of ``kinds`` and ``manifest.json`` into ``out`` (default:
    this package folder) from the default trainings in ``cache_root``; the manifest keeps the
    entries of the other kinds that ``out`` already holds.  Return the manifest."""
    import torch
    from safetensors.torch import save_file

    unknown = sorted(set(kinds) - set(FILES))
    if unknown:
        raise DataError(f"unknown weight kind(s) {', '.join(unknown)}; choose from "
                        f"{', '.join(FILES)}")
    out = Path(out or HERE)
    folders = source_dirs(Path(cache_root), tuple(kinds))
    entries: dict[str, Any] = {}
    if set(kinds) != set(FILES):
        try:
            kept = json.loads((out / MANIFEST).read_text())
        except (OSError, ValueError) as err:
            raise DataError(f"{out / MANIFEST} cannot be read ({err}); refresh every kind "
                            f"(leave out --only)") from err
        missing = [k for k in FILES if k not in kinds and k not in kept]
        if missing:
            raise DataError(f"{out / MANIFEST} has no entry for {', '.join(missing)}; refresh "
                            f"it too (--only {' --only '.join(missing)})")
        entries = {k: kept[k] for k in FILES if k not in kinds}
    for kind, folder in folders.items():
        meta_path = folder / "meta.json"
        if not meta_path.is_file():
            raise DataError(f"{folder} holds no finished {kind} training; train it first "
                            f"(python -m dndbench train-toynet / train-toy-backends / train-milan)")
        meta = json.loads(meta_path.read_text())
        meta.pop("shipped", None)
        entry: dict[str, Any] = {"file": FILES[kind], "fingerprint": folder.name}
        if kind == "toy_milan":
            payload = torch.load(folder / "milan.pt", map_location="cpu", weights_only=False)
            tensors = _flat_milan(payload)
            entry["payload"] = {k: payload[k] for k in ("format", "words", "spec", "sizes")}
        else:
            tensors = torch.load(folder / "weights.pt", map_location="cpu", weights_only=True)
        # stored as float16 (half the size); loading casts back to float32, exactly, so every
        # machine runs the same numbers (the sample check below is of the rounded weights)
        tensors = {k: (v.half() if v.dtype == torch.float32 else v).contiguous()
                   for k, v in tensors.items()}
        with atomic_path(out / FILES[kind]) as tmp:
            save_file(tensors, str(tmp))
        tensors = {k: v.float() if v.dtype == torch.float16 else v for k, v in tensors.items()}
        entry["sha256"] = sha256(out / FILES[kind])
        entry["bytes"] = (out / FILES[kind]).stat().st_size
        entry["trained_on"] = dict(trained_on or {})
        entry["accuracy"] = accuracy_summary(kind, meta)
        if kind in SAMPLE_CHECKS:
            entry["sample_check"] = sample_check(kind, tensors, meta)
        entry["meta"] = meta
        entries[kind] = entry
    entries = {k: entries[k] for k in FILES}
    with atomic_path(out / MANIFEST) as tmp:
        tmp.write_text(json.dumps(entries, indent=1, default=str) + "\n")
    reload()
    return entries


def accuracy_summary(kind: str, meta: dict[str, Any]) -> dict[str, Any]:
    """The headline accuracy figures of a training report (what the retraining test checks)."""
    report = meta.get("report", {})
    if kind == "toynet":
        return {"test_accuracy": report.get("test_accuracy"),
                "planted_auc_mean": _mean([u.get("auc") for u in report.get("planted_units", [])])}
    if kind == "toy_backends":
        return {"slot_accuracy": report.get("slot_accuracy", {}),
                "caption_exact_match": report.get("caption_exact_match")}
    held = report.get("held_out", {})
    return {"held_out_concept_accuracy": held.get("concept_accuracy"),
            "held_out_bleu1": held.get("bleu1")}


#: images of each network's own held-out stream that :func:`sample_check` scores
SAMPLE_IMAGES = 64
SAMPLE_CHECKS = ("toynet", "toy_backends")


def sample_check(kind: str, state: dict[str, Any], meta: dict[str, Any],
                 images: int = SAMPLE_IMAGES) -> dict[str, Any]:
    """Accuracy of the weights ``state`` on the first ``images`` images of the network's own
    held-out stream (ToyNet: test accuracy and the logits' sum; toy backends: slot accuracy):
    recorded in the manifest, so a test can check that loading gives these numbers."""
    import numpy as np
    import torch

    config = meta["config"]
    if kind == "toynet":
        from dndbench.toyworld.network import normalise
        from dndbench.toyworld.train_toynet import (
            TRAIN_STREAM_BASE,
            build_network,
            config_from_dict,
            make_data,
        )

        data = make_data(TRAIN_STREAM_BASE + 2 * int(config["seed"]) + 1, images, [], workers=1)
        net = build_network(config_from_dict(config))
        net.load_state_dict(state)
        with torch.no_grad():
            logits = net.eval()(normalise(torch.from_numpy(data.images))).numpy()
        return {"images": images, "accuracy": float((logits.argmax(1) == data.labels).mean()),
                "logit_sum": float(np.float64(logits).sum())}
    from dndbench.toyworld.backend_network import ToyDual
    from dndbench.toyworld.train_toy_backends import BACKEND_STREAM_BASE, _data, evaluate

    pixels, specs = _data(BACKEND_STREAM_BASE + 2 * int(config["seed"]) + 1, images, 1)
    model = ToyDual(tuple(config["widths"]), int(config["dim"]))
    model.load_state_dict(state)
    return {"images": images, "slot_accuracy": evaluate(model.eval(), pixels, specs)["slot_accuracy"]}


def _mean(values: list[Any]) -> float | None:
    numbers = [float(v) for v in values if v is not None]
    return sum(numbers) / len(numbers) if numbers else None


def main(argv: list[str] | None = None) -> int:
    """``python -m dndbench.toyworld.ship_weights --cache DIR``: refresh the shipped weights."""
    from dndbench.cache import default_cache_dir

    parser = argparse.ArgumentParser(
        prog="python -m dndbench.toyworld.ship_weights",
        description="Write the shipped toy-world weights (safetensors + manifest.json) from the "
                    "default trainings of a cache.")
    parser.add_argument("--cache", type=Path, default=None,
                        help="cache holding the trainings (default: $DNDBENCH_CACHE)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: the "
                        "package's dndbench/toyworld/weights/)")
    parser.add_argument("--threads", type=int, default=None,
                        help="thread count the trainings ran with (recorded; default: this "
                             "process's torch.get_num_threads())")
    parser.add_argument("--only", action="append", choices=tuple(FILES), default=None,
                        help="refresh only this kind (repeatable); the others stay as shipped")
    args = parser.parse_args(argv)
    trained_on = machine()
    if args.threads is not None:
        trained_on["threads"] = args.threads
    kinds = tuple(args.only or FILES)
    try:
        entries = export(args.cache or default_cache_dir(), args.out, trained_on, kinds)
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for kind in kinds:
        entry = entries[kind]
        print(f"{kind:13} {entry['file']:26} {entry['bytes'] / 1e6:5.2f} MB  "
              f"{entry['fingerprint']}  {json.dumps(entry['accuracy'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
