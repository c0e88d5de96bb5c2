"""Tiny random-weight model folders for the real foundation-model backends, built offline.

Each writer saves a small model (and its processor or tokenizer) with ``save_pretrained``, so a
backend loads it through its ``path`` option and runs its real loading, preprocessing, generation
and caching code in seconds on a CPU.  Tokenizers are character-level and built from a literal
vocabulary (no download).  transformers / diffusers are imported inside the writers.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

LETTERS = "abcdefghijklmnopqrstuvwxyz"


def clip_tokenizer() -> Any:
    """A character-level CLIP BPE tokenizer built without any download."""
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "!": 2}
    for ch in LETTERS:
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def _byte_level_tokenizer() -> Any:
    """A character-level GPT-2 (byte-level BPE) tokenizer: letters, with and without the
    word-start marker, plus ``<pad>``, ``</s>`` and ``<unk>``."""
    from transformers import GPT2Tokenizer

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for ch in LETTERS:
        vocab[ch] = len(vocab)
        vocab["\u0120" + ch] = len(vocab)  # byte-level BPE's word-start marker
    return GPT2Tokenizer(vocab=vocab, merges=[], bos_token="</s>", eos_token="</s>",
                         pad_token="<pad>", unk_token="<unk>")


def tiny_encoder(**extra: Any) -> dict[str, Any]:
    """Sizes of a 2-layer, 32-wide transformer encoder (plus ``extra`` config fields)."""
    return dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                **extra)


def write_tiny_blip(folder: Path) -> Path:
    """BLIP captioner (``captioner=blip``) on 32 px images with a letter-level BERT tokenizer."""
    import torch
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", *LETTERS, "red", "cat", "sky"]
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(words)}, bos_token="[DEC]")
    text = tiny_encoder(vocab_size=len(words), max_position_embeddings=64, bos_token_id=5,
                        pad_token_id=0, sep_token_id=3, eos_token_id=3)
    config = BlipConfig(text_config=text, vision_config=tiny_encoder(image_size=32, patch_size=8),
                        projection_dim=32)
    torch.manual_seed(0)
    BlipForConditionalGeneration(config).save_pretrained(folder)
    BlipProcessor(BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer).save_pretrained(folder)
    return folder


def write_tiny_blip2(folder: Path) -> Path:
    """BLIP-2 captioner (``captioner=blip2``): tiny vision encoder, Q-Former and OPT decoder."""
    import torch
    from transformers import (
        Blip2Config,
        Blip2ForConditionalGeneration,
        Blip2Processor,
        BlipImageProcessor,
    )

    tokenizer = _byte_level_tokenizer()
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
    Blip2ForConditionalGeneration(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def write_tiny_clip(folder: Path) -> Path:
    """CLIP dual encoder (``vlm=clip_vitb16``, ``embedder=clip``): 32 px images, 16-d space."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    text = tiny_encoder(vocab_size=3 + 2 * len(LETTERS), max_position_embeddings=77,
                        bos_token_id=0, eos_token_id=1, pad_token_id=1)
    config = CLIPConfig(text_config=text, vision_config=tiny_encoder(image_size=32, patch_size=8),
                        projection_dim=16)
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(folder)
    processor = CLIPProcessor(CLIPImageProcessor(size={"shortest_edge": 32},
                                                 crop_size={"height": 32, "width": 32}),
                              clip_tokenizer())
    processor.save_pretrained(folder)
    return folder


def write_tiny_sd(folder: Path) -> Path:
    """A Stable Diffusion pipeline (``text2image=sd14`` and its siblings) on 16 px latents."""
    import torch
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
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
    pipe.save_pretrained(folder)  # type: ignore[attr-defined]
    return folder


#: a plain chat template: each message's content on a line, then ``answer:``
CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}answer:{% endif %}")


def write_tiny_chat_llm(folder: Path) -> Path:
    """A causal LM with a chat template (``llm=hf``, ``llm=smollm2`` with ``path``): a 2-layer
    Llama with the letter-level byte-level tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = _byte_level_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, bos_token_id=1, eos_token_id=1,
                         pad_token_id=0)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write_tiny_bert(folder: Path) -> Path:
    """A 2-layer BERT masked-LM encoder with a letter-level vocabulary (``metric=final_layer_bertscore
    path=...``, and the encoder of :func:`write_tiny_sentence_transformer`)."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *LETTERS]
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(words), max_position_embeddings=64,
                         **tiny_encoder())).save_pretrained(folder)
    BertTokenizer(vocab={w: i for i, w in enumerate(words)}).save_pretrained(folder)
    return folder


def write_tiny_sentence_transformer(folder: Path) -> Path:
    """A sentence-transformers model (``embedder=minilm`` / ``mpnet`` with ``path``): the tiny
    BERT with mean pooling, saved in ``folder/model`` (returned)."""
    from sentence_transformers import SentenceTransformer

    bert = write_tiny_bert(folder / "bert")
    # a plain transformers folder loads with mean pooling added; saving writes modules.json
    SentenceTransformer(str(bert), device="cpu").save(str(folder / "model"))
    return folder / "model"
