"""Released MILAN checkpoints load without spaCy or thinc, through a restricted unpickler.

The fixture has the pickled structure of ``milan-base.pth`` as the MILAN code writes it: the
decoder's serialised properties, whose indexers hold a ``Vocab`` (``tokens``) and a spaCy
``Tokenizer`` whose pipeline is stored as ``(config, bytes)`` with ``config`` a
``thinc.config.Config`` (``confection.Config`` in newer thinc), and a ``state_dict`` (an
``OrderedDict`` with ``_metadata``).  The Config class is a stand-in registered under thinc's
module name only while pickling, so the file names thinc's class exactly as a release does.
"""
from __future__ import annotations

import importlib.util
import os
import pickle
import sys
import types
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch

from dndbench.context import Context
from dndbench.describers.milan.checkpoint import (
    ConfigStandIn,
    ReleaseUnpickler,
    load_any,
    load_release,
    to_released,
)
from dndbench.describers.milan.decoding import decode
from dndbench.describers.milan.model import EncoderSpec, Milan, Sizes
from dndbench.describers.milan.text import Vocab
from dndbench.errors import DataError

SPACY_BYTES = b"\x85\xa5vocab\xc4\x10spacy-pipeline-bytes\x00\xff"
SECTIONS = {"nlp": {"lang": "en", "pipeline": ["tok2vec", "lemmatizer"], "batch_size": 1000},
            "components": {"lemmatizer": {"factory": "lemmatizer", "mode": "rule"}}}


@contextmanager
def fake_config_class(module: str) -> Iterator[type]:
    """A ``Config(dict)`` class importable as ``<module>.Config`` while the block runs (thinc's
    constructor signature and attributes), removed from ``sys.modules`` afterwards."""
    names = [module] if "." not in module else [module.split(".")[0], module]
    mods = {name: types.ModuleType(name) for name in names}

    class Config(dict):  # type: ignore[type-arg]
        def __init__(self, data: Any = None, *, is_interpolated: bool | None = None,
                     section_order: list[str] | None = None) -> None:
            super().__init__(data or {})
            self.is_interpolated = True if is_interpolated is None else is_interpolated
            self.section_order = list(section_order or [])

    Config.__module__, Config.__qualname__ = module, "Config"
    mods[module].Config = Config  # type: ignore[attr-defined]
    if len(names) == 2:
        setattr(mods[names[0]], names[1].split(".")[1], mods[module])
    saved = {name: sys.modules[name] for name in names if name in sys.modules}
    sys.modules.update(mods)
    try:
        yield Config
    finally:
        for name in names:
            sys.modules.pop(name, None)
        sys.modules.update(saved)


def tokenizer_properties(config_class: type) -> dict[str, Any]:
    """A serialised MILAN ``Tokenizer``: spaCy's pipeline as (Config, bytes), plus its flags."""
    config = config_class(SECTIONS, section_order=["nlp", "components"])
    return {"properties": {"nlp": (config, SPACY_BYTES), "lemmatize": True, "lowercase": True,
                           "ignore_stop": True, "ignore_punct": True},
            "children": {}}


def release_payload(milan: Milan, config_class: type) -> dict[str, Any]:
    """``milan`` serialised the way the MILAN code saves ``milan-base.pth``."""
    payload = to_released(milan)
    props = payload["properties"]
    for indexer in (props["indexer"], props["lm"]["properties"]["indexer"]):
        indexer["properties"]["tokenize"] = tokenizer_properties(config_class)
    state = OrderedDict(payload["state_dict"])
    state._metadata = OrderedDict({"": {"version": 1}})  # type: ignore[attr-defined]
    payload["state_dict"] = state
    return payload


def small_milan() -> Milan:
    torch.manual_seed(0)
    sizes = Sizes(embedding_size=8, hidden_size=16, lm_embedding_size=8, lm_hidden_size=16)
    vocab = Vocab(["red", "green", "blue", "things", "regions", "the", "colour"])
    return Milan(vocab, EncoderSpec(arch="resnet18"), sizes).eval()


@pytest.fixture(scope="module")
def milan() -> Milan:
    return small_milan()


def write_release(path: Path, milan: Milan, module: str = "thinc.config",
                  zipfile: bool = True) -> Path:
    with fake_config_class(module) as config_class:
        torch.save(release_payload(milan, config_class), path,
                   _use_new_zipfile_serialization=zipfile)
    return path


@pytest.mark.parametrize("module, zipfile", [("thinc.config", True), ("thinc.config", False),
                                             ("confection", True)])
def test_release_loads_without_spacy_or_thinc(tmp_path: Path, milan: Milan, module: str,
                                              zipfile: bool) -> None:
    path = write_release(tmp_path / "milan-base.pth", milan, module, zipfile)
    root = module.split(".")[0]
    assert module.encode() + b"\nConfig" in path.read_bytes()  # the pickle names the real class
    if importlib.util.find_spec(root) is None:
        with pytest.raises(ModuleNotFoundError, match=root):  # a plain load needs the package
            torch.load(path, map_location="cpu", weights_only=False)
    before = set(sys.modules)
    loaded = load_any(path, "released")
    imported = {m for m in set(sys.modules) - before if m.split(".")[0] in
                ("spacy", "thinc", "confection", "srsly")}
    assert imported == set()
    assert loaded.vocab.tokens == milan.vocab.tokens and loaded.sizes == milan.sizes
    for (key, want), (_, got) in zip(milan.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(want, got), key
    images, masks = torch.rand(1, 3, 3, 32, 32), torch.ones(1, 3, 1, 32, 32)
    a = decode(milan.decoder, milan.lm, milan.encode(images, masks), milan.vocab, beam_size=3)
    b = decode(loaded.decoder, loaded.lm, loaded.encode(images, masks), loaded.vocab, beam_size=3)
    assert a[0].texts == b[0].texts and a[0].scores == pytest.approx(b[0].scores)


def test_the_spacy_config_becomes_a_stand_in(tmp_path: Path, milan: Milan) -> None:
    payload = load_release(write_release(tmp_path / "milan-base.pth", milan))
    nlp = payload["properties"]["indexer"]["properties"]["tokenize"]["properties"]["nlp"]
    config, blob = nlp
    assert type(config) is ConfigStandIn and dict(config) == SECTIONS
    assert config.section_order == ["nlp", "components"] and config.is_interpolated is True
    assert blob == SPACY_BYTES
    assert isinstance(payload["state_dict"], OrderedDict)
    assert payload["state_dict"]._metadata == {"": {"version": 1}}


class _Exploit:
    """Unpickles to a call of ``os.makedirs`` (what an untrusted pickle could do)."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.makedirs, (self.target,))


def test_other_globals_are_refused_and_never_called(tmp_path: Path, milan: Milan) -> None:
    target = tmp_path / "created-by-the-file"
    payload = to_released(milan)
    payload["properties"]["extra"] = _Exploit(str(target))
    torch.save(payload, tmp_path / "evil.pth")
    with pytest.raises(DataError, match="os.makedirs"):
        load_any(tmp_path / "evil.pth", "released")
    assert not target.exists()


def test_unpickler_allows_only_listed_globals() -> None:
    import io

    with pytest.raises(pickle.UnpicklingError, match="builtins.eval"):
        ReleaseUnpickler(io.BytesIO(b"cbuiltins\neval\n.")).load()
    assert ReleaseUnpickler(io.BytesIO(pickle.dumps(OrderedDict(a=1), 2))).load() == {"a": 1}


def test_dndbench_milan_files_still_load(tmp_path: Path, milan: Milan) -> None:
    milan.save(tmp_path / "own.pt")
    loaded = load_any(tmp_path / "own.pt", "auto")
    assert loaded.vocab.tokens == milan.vocab.tokens


# -- device --------------------------------------------------------------------------------------
def _ctx(tmp_path: Path, device: str) -> Context:
    from dndbench.cache import Cache
    from dndbench.testing.kit import TinyModel, TinyProbe

    return Context(TinyModel(TinyModel.Config(name="tiny")), TinyProbe(TinyProbe.Config(name="tiny")),
                   "layer1", [0], Cache(tmp_path), device=device)


@pytest.mark.parametrize("requested, cuda, expected", [("auto", True, "cuda"), ("auto", False, "cpu"),
                                                       ("cpu", True, "cpu"), ("cuda:1", False, "cuda:1")])
def test_milan_runs_on_the_runs_device(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       requested: str, cuda: bool, expected: str) -> None:
    from dndbench.describers.milan import MilanDescriber

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    assert MilanDescriber.device(_ctx(tmp_path, requested)) == expected


@pytest.mark.parametrize("strategy", ["greedy", "beam", "rerank"])
def test_decoding_makes_its_tensors_on_the_features_device(milan: Milan, strategy: str) -> None:
    """With the default device set to ``meta``, any tensor decoding made without naming the
    features' device would land there and the CPU run would fail."""
    feats = milan.encode(torch.rand(2, 3, 3, 32, 32), torch.ones(2, 3, 1, 32, 32))
    want = decode(milan.decoder, milan.lm, feats, milan.vocab, strategy, beam_size=3)
    with torch.device("meta"):
        got = decode(milan.decoder, milan.lm, feats, milan.vocab, strategy, beam_size=3)
    assert [d.texts for d in got] == [d.texts for d in want] and all(d.texts for d in got)
