"""Local chat LLMs served by vLLM (``llm=vllm``): the fast open-model path for GPU users.

vLLM is an optional extra (``pip install 'dndbench[vllm]'``, a CUDA GPU): it is imported inside
functions only, and a missing package is a one-line :class:`~dndbench.errors.BackendError`.  The
model is any chat model vLLM serves, by hub id (``model_id``) or local folder (``path``).  All
conversations of a batch (``batch_size``) go to the engine in one ``LLM.chat`` call, which
schedules them together (continuous batching).  Greedy decoding by default; with a
``temperature`` each conversation samples with its own seed drawn from (seed, conversation), so
an answer depends only on the conversation and the options, as with ``llm=hf``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dndbench.backends.base import LLM, LLMS, Messages, Precision
from dndbench.backends.hub import HubBackend, HubConfig, one_line, stable_seed
from dndbench.errors import BackendError

INSTALL_HINT = "pip install 'dndbench[vllm]' (vLLM needs a CUDA GPU)"
_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
#: engines of this process, by (source, dtype, engine options)
_ENGINES: dict[tuple[Any, ...], Any] = {}


@dataclass
class VLLMConfig(HubConfig):
    """Options of ``llm=vllm``: decoding (``max_new_tokens``, ``temperature``, ``top_p``,
    ``seed``) and the engine's (``gpu_memory_utilization``, ``max_model_len``,
    ``tensor_parallel_size``)."""

    model_id: str = "meta-llama/Llama-2-7b-chat-hf"  # DnD's open-LLM ablation, as ``llm=hf``
    precision: Precision = Precision.bf16
    batch_size: int = 512  # conversations handed to the engine at once
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0: greedy decoding
    top_p: float = 1.0
    seed: int = 0
    gpu_memory_utilization: float = 0.85
    max_model_len: int = 4096  # 0: the model's own
    tensor_parallel_size: int = 1


@LLMS.register("vllm")
class VLLMChatLLM(HubBackend[VLLMConfig], LLM[VLLMConfig]):
    """A local chat model served by vLLM (batched; greedy by default). Needs the vllm extra."""

    kind_label = "llm"
    Config = VLLMConfig

    def params(self) -> dict[str, Any]:
        """Options that change answers (engine memory options and batch size do not)."""
        c = self.config
        out: dict[str, Any] = {"dtype": self.vllm_dtype, "max_new_tokens": c.max_new_tokens,
                               "temperature": c.temperature}
        if c.temperature:
            out.update(top_p=c.top_p, seed=c.seed)
        return out

    @property
    def vllm_dtype(self) -> str:
        """The engine's ``dtype`` (vLLM runs on the GPU, so ``precision`` always applies)."""
        return _DTYPES[str(self.config.precision)]

    def _load_model(self, source: str, local_only: bool) -> Any:  # HubBackend's hook, unused
        return self.engine()

    def engine(self) -> Any:
        """The ``vllm.LLM`` engine, started once per process for the same model and options."""
        c = self.config
        options = {"dtype": self.vllm_dtype, "seed": c.seed,
                   "gpu_memory_utilization": c.gpu_memory_utilization,
                   "tensor_parallel_size": c.tensor_parallel_size}
        if c.max_model_len:
            options["max_model_len"] = c.max_model_len
        key = (self.source(), *sorted(options.items()))
        if key not in _ENGINES:
            vllm = import_vllm()
            try:
                _ENGINES[key] = vllm.LLM(model=self.source(), **options)
            except Exception as exc:
                raise BackendError(f"llm 'vllm' could not start a vLLM engine for "
                                   f"{self.source()!r}: {one_line(exc)}; set `path` to a local "
                                   f"model folder, or `model_id` to a model vLLM serves") from exc
        return _ENGINES[key]

    def sampling(self, messages: Messages) -> dict[str, Any]:
        """Keyword arguments of ``vllm.SamplingParams`` for one conversation."""
        c = self.config
        if not c.temperature:
            return {"temperature": 0.0, "max_tokens": c.max_new_tokens}
        return {"temperature": c.temperature, "top_p": c.top_p, "max_tokens": c.max_new_tokens,
                "seed": stable_seed(c.seed, messages) % (2**31)}

    def _chat_batch(self, conversations: list[Messages]) -> list[str]:
        vllm = import_vllm()
        engine = self.engine()
        params = [vllm.SamplingParams(**self.sampling(m)) for m in conversations]
        try:
            outputs = engine.chat(conversations, sampling_params=params, use_tqdm=False)
        except Exception as exc:
            raise BackendError(f"llm 'vllm' failed to answer: {one_line(exc)}") from exc
        return [out.outputs[0].text.strip() for out in outputs]


def import_vllm() -> Any:
    """The ``vllm`` module, or a one-line BackendError saying how to install it."""
    try:
        import vllm
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] == "vllm":
            raise BackendError(f"llm 'vllm' needs the vllm package: {INSTALL_HINT}") from None
        raise BackendError(f"llm 'vllm': vllm failed to import ({one_line(exc)})") from exc
    except ImportError as exc:
        raise BackendError(f"llm 'vllm': vllm failed to import ({one_line(exc)})") from exc
    return vllm


def unload_engines() -> None:
    """Forget the engines started by this process (tests)."""
    _ENGINES.clear()
