"""The table of component kinds: where each kind's registry lives and which built-in modules
register into it.

This module is data only and imports nothing from the package, so every layer may read it
without creating an import cycle.  A kind is also a Hydra config group (``describer=dnd``) and,
pluralised, an entry-point group (``dndbench.describers``).  The toy world's components are listed
here, under the kinds they provide, so the registries' own modules need not know the toy world.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Kind:
    """One component kind: ``registry`` is ``"module:ATTRIBUTE"``; ``builtins`` are the modules
    imported on first use of the registry; ``backend`` marks the foundation-model roles."""

    registry: str
    builtins: tuple[str, ...]
    backend: bool = False


KINDS: dict[str, Kind] = {
    "model": Kind("dndbench.models.base:MODELS", (
        "dndbench.toyworld.target_model",
        "dndbench.models.torchvision_models",
        "dndbench.models.places365",
    )),
    "probe": Kind("dndbench.probes.base:PROBES", (
        "dndbench.toyworld.probe_set",
        "dndbench.probes.imagefolder",
        "dndbench.probes.broden",
        "dndbench.probes.union",
    )),
    "describer": Kind("dndbench.describers.base:DESCRIBERS", (
        "dndbench.describers.netdissect",
        "dndbench.describers.clip_dissect",
        "dndbench.describers.published",
        "dndbench.describers.milan",
        "dndbench.describers.dnd",
        "dndbench.describers.caption_word",
        "dndbench.describers.controls",
    )),
    "metric": Kind("dndbench.metrics.base:METRICS", (
        "dndbench.metrics.final_layer_similarity",
        "dndbench.metrics.planted_concept",
        "dndbench.metrics.milannotations",
        "dndbench.metrics.final_layer_bertscore",
        "dndbench.metrics.simulation",
        "dndbench.metrics.cosy",
    )),
    "captioner": Kind("dndbench.backends.base:CAPTIONERS", (
        "dndbench.backends.blip",
        "dndbench.toyworld.toy_backends",
        "dndbench.toyworld.oracle_backends",
        "dndbench.toyworld.weak_backends",
    ), backend=True),
    "llm": Kind("dndbench.backends.base:LLMS", (
        "dndbench.backends.openai_llm",
        "dndbench.backends.hf_llm",
        "dndbench.backends.vllm_llm",
        "dndbench.toyworld.keyword_summariser",
        "dndbench.toyworld.proposing_summariser",
    ), backend=True),
    "text2image": Kind("dndbench.backends.base:TEXT2IMAGE", (
        "dndbench.backends.diffusers_t2i",
        "dndbench.toyworld.toy_backends",
    ), backend=True),
    "vlm": Kind("dndbench.backends.base:VLMS", (
        "dndbench.backends.clip_vlm",
        "dndbench.toyworld.toy_backends",
        "dndbench.toyworld.oracle_backends",
        "dndbench.toyworld.weak_backends",
    ), backend=True),
    "embedder": Kind("dndbench.backends.embedder:EMBEDDERS", (
        "dndbench.backends.embedder",
    ), backend=True),
}

#: the kinds that are foundation-model backends, in config order
BACKEND_KINDS: tuple[str, ...] = tuple(k for k, v in KINDS.items() if v.backend)
