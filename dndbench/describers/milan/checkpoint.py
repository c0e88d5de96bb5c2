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

The indexer's tokenizer is a spaCy pipeline, which the MILAN code stores as
``indexer.properties.tokenize.properties.nlp = (config, bytes)``: the pipeline's bytes and its
config, a ``thinc.config.Config`` (a ``dict`` subclass with the attributes ``is_interpolated``
and ``section_order``; ``confection.Config`` in newer thinc).  Unpickling that object would
import thinc and spaCy, which dndbench neither needs (decoding uses only the vocabulary) nor
declares.  :func:`load_release` therefore reads releases with :class:`ReleaseUnpickler`, an
unpickler restricted to what a release holds (tensors, ordered dicts, plain values) that maps
the Config class to :class:`ConfigStandIn` and refuses every other global, so loading runs no
code from the file either.
"""
from __future__ import annotations

import pickle
import types
from pathlib import Path
from typing import Any, Mapping

import torch

from dndbench.describers.milan.model import RESNET_LAYERS, EncoderSpec, Milan, Sizes
from dndbench.describers.milan.text import Vocab
from dndbench.errors import DataError

BACKBONE_PREFIX = "encoder.encoder.model."
LM_PREFIX = "lm."
ENCODER_KIND = "PyramidConvEncoder"


class ConfigStandIn(dict):
    """What a release's spaCy config (``thinc.config.Config``) unpickles to: its sections as a
    ``dict``, its attributes (``is_interpolated``, ``section_order``) as attributes."""


#: (module, name) of the classes a release pickles that dndbench replaces, and their stand-ins
STAND_INS: dict[tuple[str, str], type] = {
    ("thinc.config", "Config"): ConfigStandIn,
    ("confection", "Config"): ConfigStandIn,
}
#: the globals a release may name besides the stand-ins: tensor rebuilding, ordered dicts, and
#: the helpers pickle protocol 2 uses for bytes and sets
ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset({
    ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"),
    ("torch._tensor", "_rebuild_from_type_v2"),
    ("torch", "Tensor"),
    ("torch", "Size"),
    ("torch.nn.parameter", "Parameter"),
    ("_codecs", "encode"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
})


class ReleaseUnpickler(pickle.Unpickler):
    """An unpickler that resolves only :data:`ALLOWED_GLOBALS` and the :data:`STAND_INS`;
    any other global (which could run code, or need spaCy) is an ``UnpicklingError``."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in STAND_INS:
            return STAND_INS[module, name]
        if (module, name) in ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"the file names {module}.{name}, which a released MILAN checkpoint does not hold "
            f"(only tensors, ordered dicts, plain values and thinc's Config are read)")


def _release_pickle_module() -> types.ModuleType:
    """A module-like object for ``torch.load(pickle_module=...)`` built on :class:`ReleaseUnpickler`."""
    module = types.ModuleType("dndbench_release_pickle")
    module.Unpickler = ReleaseUnpickler  # type: ignore[attr-defined]
    module.UnpicklingError = pickle.UnpicklingError  # type: ignore[attr-defined]
    module.load = lambda file, **kw: ReleaseUnpickler(file, **kw).load()  # type: ignore[attr-defined]
    return module


def load_release(path: Path, map_location: Any = "cpu") -> Any:
    """The payload of a released MILAN checkpoint, read with :class:`ReleaseUnpickler` (neither
    spaCy nor thinc is imported; nothing in the file is run)."""
    return torch.load(path, map_location=map_location, pickle_module=_release_pickle_module(),
                      weights_only=False)


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
    Both are read with :class:`ReleaseUnpickler` first (a dndbench file holds only what it
    allows, too), so an unknown file runs no code."""
    from dndbench.describers.milan.model import FORMAT

    if not path.is_file():
        raise DataError(f"MILAN checkpoint {path} not found")
    if fmt == "dndbench":
        return Milan.load(path)
    try:
        payload = load_release(path)
    except Exception as exc:
        raise DataError(f"cannot load MILAN checkpoint {path} ({exc})") from exc
    if fmt == "auto" and isinstance(payload, dict) and payload.get("format") == FORMAT:
        return Milan.load(path)
    return from_released(payload)
