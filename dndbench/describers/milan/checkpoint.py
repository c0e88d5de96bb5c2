"""Loading released MILAN checkpoints (e.g. ``milan-base.pth`` from milan.csail.mit.edu).

The public MILAN code saves a model as ``torch.save`` of a dictionary
``{"properties": ..., "children": ..., "state_dict": ...}``: ``properties`` are the decoder's
constructor arguments (``embedding_size``, ``hidden_size``, ``attention_hidden_size``,
``dropout``, ``length``, ``strategy``, ``temperature``, ``beam_size``) with its ``indexer``,
``encoder`` and ``lm`` serialised the same way, nested; the indexer's vocabulary is
``indexer.properties.vocab.properties.tokens`` and its special tokens follow the words
(start, stop, pad, unk).  ``state_dict`` holds the decoder's parameters (``init_h.0``,
``init_c.0``, ``embedding``, ``attend.{query_to_hidden,key_to_hidden,output.0}``,
``feature_gate.0``, ``lstm``, ``output.1``), the language model's under ``lm.`` and the
encoder's torchvision backbone under ``encoder.encoder.model.`` (a ``PyramidConvEncoder``:
mask-pooled features of conv1, layer1-4, concatenated).  Our modules use the same names, so the
mapping is a prefix split.  :func:`to_released` writes that layout (used by the tests).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch

from dndbench.errors import DataError
from dndbench.describers.milan.model import RESNET_LAYERS, EncoderSpec, Milan, Sizes
from dndbench.describers.milan.text import Vocab

BACKBONE_PREFIX = "encoder.encoder.model."
LM_PREFIX = "lm."
ENCODER_KIND = "PyramidConvEncoder"


def _props(node: Mapping[str, Any], *path: str) -> Any:
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            raise DataError(f"released MILAN checkpoint: missing {'.'.join(path)}")
        node = node[key]
    return node


def released_vocab(properties: Mapping[str, Any]) -> Vocab:
    """The decoder indexer's words (special tokens are appended in the same order)."""
    tokens = _props(properties, "indexer", "properties", "vocab", "properties", "tokens")
    return Vocab([str(t) for t in tokens])


def split_state(state: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """A released state dict -> {"encoder": backbone, "lm": ..., "decoder": ...}."""
    parts: dict[str, dict[str, torch.Tensor]] = {"encoder": {}, "lm": {}, "decoder": {}}
    for key, value in state.items():
        if key.startswith(BACKBONE_PREFIX):
            parts["encoder"][key[len(BACKBONE_PREFIX):]] = value
        elif key.startswith("encoder."):
            continue  # normalisation buffers (mean / std), rebuilt from the spec
        elif key.startswith(LM_PREFIX):
            parts["lm"][key[len(LM_PREFIX):]] = value
        else:
            parts["decoder"][key] = value
    return parts


def from_released(payload: Mapping[str, Any]) -> Milan:
    """A :class:`Milan` with the weights of a released checkpoint's payload."""
    props = _props(payload, "properties")
    enc = _props(props, "encoder")
    kind = payload.get("children", {}).get("encoder", ENCODER_KIND)
    if kind != ENCODER_KIND:
        raise DataError(f"released MILAN checkpoint: encoder {kind} is not supported "
                        f"(only {ENCODER_KIND})")
    lm = _props(props, "lm", "properties")
    sizes = Sizes(embedding_size=int(props.get("embedding_size", 128)),
                  hidden_size=int(props.get("hidden_size", 512)),
                  attention_hidden_size=props.get("attention_hidden_size"),
                  dropout=float(props.get("dropout", 0.5)),
                  lm_embedding_size=int(lm.get("embedding_size", 128)),
                  lm_hidden_size=int(lm.get("hidden_size", 512)),
                  lm_layers=int(lm.get("layers", 2)), lm_dropout=float(lm.get("dropout", 0.5)))
    arch = str(_props(enc, "properties").get("config", "resnet101"))
    spec = EncoderSpec(arch=arch, layers=RESNET_LAYERS)
    milan = Milan(released_vocab(props), spec, sizes)
    parts = split_state(_props(payload, "state_dict"))
    for name, module in (("encoder", milan.encoder.backbone), ("decoder", milan.decoder),
                         ("lm", milan.lm)):
        missing, _ = module.load_state_dict(parts[name], strict=False)
        if missing:
            raise DataError(f"released MILAN checkpoint: {name} lacks {missing[:5]}")
    milan.meta = {"source": "released", "decoding": {k: props.get(k) for k in
                  ("length", "strategy", "temperature", "beam_size")}}
    return milan.eval()


def to_released(milan: Milan) -> dict[str, Any]:
    """``milan`` in the released layout (what :func:`from_released` reads)."""
    s = milan.sizes
    indexer = {"properties": {"vocab": {"properties": {"tokens": tuple(milan.vocab.words)},
                                        "children": {}},
                              "tokenize": None, "start": True, "stop": True, "pad": True,
                              "unk": True, "length": None}, "children": {}}
    state = {f"{BACKBONE_PREFIX}{k}": v for k, v in milan.encoder.backbone.state_dict().items()}
    state["encoder.mean"] = milan.encoder.mean.clone()
    state["encoder.std"] = milan.encoder.std.clone()
    state.update({f"{LM_PREFIX}{k}": v for k, v in milan.lm.state_dict().items()})
    state.update(milan.decoder.state_dict())
    lm = {"properties": {"indexer": indexer, "embedding_size": s.lm_embedding_size,
                         "hidden_size": s.lm_hidden_size, "layers": s.lm_layers,
                         "dropout": s.lm_dropout}, "children": {}}
    encoder = {"properties": {"config": milan.spec.arch, "pretrained": True}, "children": {}}
    return {"properties": {"indexer": indexer, "encoder": encoder, "lm": lm,
                           "embedding_size": s.embedding_size, "hidden_size": s.hidden_size,
                           "attention_hidden_size": s.attention_hidden_size,
                           "dropout": s.dropout, "length": 15, "strategy": "rerank",
                           "temperature": 0.2, "beam_size": 50},
            "children": {"encoder": ENCODER_KIND}, "state_dict": state}


def load_any(path: Path, fmt: str = "auto") -> Milan:
    """A dndbench MILAN file or a released checkpoint (``fmt``: auto, dndbench, released).
    Released files are pickles: load only files from a source you trust."""
    from dndbench.describers.milan.model import FORMAT

    if not path.is_file():
        raise DataError(f"MILAN checkpoint {path} not found")
    if fmt == "dndbench":
        return Milan.load(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise DataError(f"cannot load MILAN checkpoint {path} ({exc})") from exc
    if fmt == "auto" and isinstance(payload, dict) and payload.get("format") == FORMAT:
        return Milan.load(path)
    return from_released(payload)
