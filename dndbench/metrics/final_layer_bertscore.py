"""Metric ``final_layer_bertscore``: BERTScore F1 of final-layer descriptions against class names.

As in DnD's final-layer table (following Zhang et al., ICLR 2020, "BERTScore"): contextual token
embeddings from one layer of a masked language model (default ``roberta-large``, layer 17, the
``bert-score`` package's default for it), greedy matching of tokens by cosine, no idf weighting
(every token weighs 1 except the start and end tokens, which weigh 0 but can still be matched)
and no baseline rescaling.  The class strings are exactly those ``final_layer_similarity`` uses.

Under ``metric=all`` the metric applies only at the final layer and only when its model loads
without network (a local ``path`` or a copy in the Hugging Face cache).  Per-pair scores are kept
in the run's call cache.  See ``docs/metrics/final_layer_bertscore.md``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dndbench.backends.call_cache import CallCache, call_key
from dndbench.errors import BackendError, ConfigError
from dndbench.metrics.base import METRICS, Metric, MetricConfig
from dndbench.metrics.final_layer_similarity import FinalLayerSimilarity

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from dndbench.context import Context

log = logging.getLogger(__name__)

BERTSCORE = "final_layer_bertscore"

#: the bert-score package's default layer for common models (its ``model2layers`` table)
USUAL_LAYERS: dict[str, int] = {
    "roberta-large": 17, "roberta-base": 10, "roberta-large-mnli": 19,
    "bert-base-uncased": 9, "bert-large-uncased": 18, "distilbert-base-uncased": 5,
    "microsoft/deberta-xlarge-mnli": 40,
}
#: the hub's current ids of models that older tools (bert-score) name without an organisation
HUB_ALIASES: dict[str, str] = {
    "roberta-large": "FacebookAI/roberta-large", "roberta-base": "FacebookAI/roberta-base",
    "roberta-large-mnli": "FacebookAI/roberta-large-mnli",
    "bert-base-uncased": "google-bert/bert-base-uncased",
    "bert-large-uncased": "google-bert/bert-large-uncased",
    "distilbert-base-uncased": "distilbert/distilbert-base-uncased",
}
#: model types whose byte-level BPE tokenizers encode with a leading space, as bert-score does
BYTE_LEVEL_TYPES = {"roberta", "gpt2", "bart", "longformer"}
#: loaded (tokenizer, model, config) by (source, device), shared by instances in a process
_LOADED: dict[tuple[str, str], tuple[Any, Any, Any]] = {}


def usual_layer(model_id: str) -> int | None:
    """bert-score's default layer for ``model_id`` (a hub id or a folder named like one), or None."""
    name = model_id.rstrip("/")
    if name in USUAL_LAYERS:
        return USUAL_LAYERS[name]
    return USUAL_LAYERS.get(name.rsplit("/", 1)[-1])


def greedy_f1(cand: "np.ndarray", cand_weights: "np.ndarray", ref: "np.ndarray",
              ref_weights: "np.ndarray") -> float:
    """BERTScore F1 of one pair from unit-norm token embeddings (rows) and token weights
    (0 for start/end tokens): precision matches each candidate token to its most similar
    reference token, recall the other way round."""
    sims = cand @ ref.T
    if cand_weights.sum() <= 0 or ref_weights.sum() <= 0:
        return 0.0
    precision = float((sims.max(axis=1) * cand_weights).sum() / cand_weights.sum())
    recall = float((sims.max(axis=0) * ref_weights).sum() / ref_weights.sum())
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


@dataclass
class FinalLayerBertScoreConfig(MetricConfig):
    """Options of ``final_layer_bertscore``."""

    #: hub id of the scoring model
    model: str = "roberta-large"
    #: local model folder (replaces ``model`` as the source)
    path: str = ""
    #: which layer's token embeddings (0: bert-score's usual layer for the model, else its last)
    num_layers: int = 0
    #: file with one class string per line (default: the model's class names)
    class_names: str = ""
    batch_size: int = 32


@METRICS.register("final_layer_bertscore")
class FinalLayerBertScore(Metric[FinalLayerBertScoreConfig]):
    """BERTScore F1 of final-layer descriptions vs class names (roberta-large, layer 17, no idf)."""

    Config = FinalLayerBertScoreConfig
    version = "1"

    def __init__(self, config: FinalLayerBertScoreConfig) -> None:
        super().__init__(config)
        if config.num_layers < 0:
            raise ConfigError(f"metric 'final_layer_bertscore': num_layers must be >= 0, got "
                              f"{config.num_layers}")
        # the class strings and unit checks are final_layer_similarity's own
        self._classes = FinalLayerSimilarity(FinalLayerSimilarity.Config(
            name="final_layer_similarity", class_names=config.class_names))
        self._skip_logged = False

    # -- where the model comes from ----------------------------------------------------------
    @property
    def source(self) -> str:
        return str(Path(self.config.path).expanduser()) if self.config.path else self.config.model

    @property
    def model_id(self) -> str:
        """Identity of the weights in cache keys: the resolved ``path`` if set, else the hub id."""
        return str(Path(self.config.path).expanduser().resolve()) if self.config.path else self.config.model

    def cached_hub_id(self) -> str | None:
        """The hub id (``model`` or its current alias) whose config and weights are already in
        the Hugging Face cache, or None."""
        from huggingface_hub import try_to_load_from_cache

        for repo in dict.fromkeys([self.config.model, HUB_ALIASES.get(self.config.model, "")]):
            def cached(filename: str, repo: str = repo) -> bool:
                return isinstance(try_to_load_from_cache(repo, filename), str)

            if repo and cached("config.json") and (cached("model.safetensors")
                                                   or cached("pytorch_model.bin")):
                return repo
        return None

    def available_offline(self) -> bool:
        """Whether the model loads without network: a local folder, or config and weights in the
        Hugging Face cache."""
        if self.config.path:
            return (Path(self.config.path).expanduser() / "config.json").is_file()
        return self.cached_hub_id() is not None

    def applies_to(self, ctx: "Context") -> bool:
        if not self._classes.applies_to(ctx):
            return False
        if self.available_offline():
            return True
        if not self._skip_logged:
            log.info("metric final_layer_bertscore skipped: model %r is not available offline (set "
                     "metric.path to a local copy, or download it into the Hugging Face cache)",
                     self.source)
            self._skip_logged = True
        return False

    def _load(self, device: str) -> tuple[Any, Any, Any]:
        key = (self.source, device)
        if key not in _LOADED:
            from transformers import AutoConfig, AutoModel, AutoTokenizer

            if self.config.path and not Path(self.source).is_dir():
                raise ConfigError(f"metric 'final_layer_bertscore': path {self.source!r} is not a folder")
            cached = None if self.config.path else self.cached_hub_id()
            source = cached or self.source
            local_only = bool(self.config.path) or cached is not None
            try:
                config = AutoConfig.from_pretrained(source, local_files_only=local_only)
                extra = {"add_prefix_space": True} if config.model_type in BYTE_LEVEL_TYPES else {}
                tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_only, **extra)
                model = AutoModel.from_pretrained(source, local_files_only=local_only)
            except Exception as exc:
                reason = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"[:200]
                raise BackendError(f"metric 'final_layer_bertscore' could not load {self.source!r} "
                                   f"({reason}); set metric.path to a local model folder") from exc
            if hasattr(model, "get_encoder") and getattr(config, "is_encoder_decoder", False):
                model = model.get_encoder()
            _LOADED[key] = (tokenizer, model.to(device).eval(), config)
        return _LOADED[key]

    def layer(self, config: Any) -> int:
        """The hidden layer whose outputs are the token embeddings (checked against the model)."""
        depth = int(getattr(config, "num_hidden_layers", 0) or 0)
        n = self.config.num_layers or usual_layer(self.config.path or self.config.model) or depth
        if depth and not 0 <= n <= depth:
            raise ConfigError(f"metric 'final_layer_bertscore': num_layers={n} but {self.source!r} has "
                              f"{depth} layers")
        return n

    # -- scoring ------------------------------------------------------------------------------
    def token_embeddings(self, texts: list[str], device: str) -> dict[str, tuple["np.ndarray", "np.ndarray"]]:
        """Per text: unit-norm token embeddings (rows) and token weights (0 for start/end tokens)."""
        import numpy as np
        import torch

        tokenizer, model, config = self._load(device)
        n_layer = self.layer(config)
        special = {tokenizer.cls_token_id, tokenizer.sep_token_id} - {None}
        max_length = min(int(tokenizer.model_max_length), 512)
        out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        size = max(1, int(self.config.batch_size))
        for start in range(0, len(texts), size):
            batch = texts[start:start + size]
            enc = tokenizer([t.strip() for t in batch], padding=True, truncation=True,
                            max_length=max_length, return_tensors="pt")
            with torch.no_grad():
                hidden = model(input_ids=enc["input_ids"].to(device),
                               attention_mask=enc["attention_mask"].to(device),
                               output_hidden_states=True).hidden_states[n_layer]
            hidden = hidden.float().cpu().numpy()
            for row, text in enumerate(batch):
                keep = enc["attention_mask"][row].numpy().astype(bool)
                ids = enc["input_ids"][row].numpy()[keep]
                vectors = hidden[row][keep].astype(np.float64)
                vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
                weights = np.array([0.0 if int(i) in special else 1.0 for i in ids])
                out[text] = (vectors, weights)
        return out

    def f1(self, pairs: list[tuple[str, str]], ctx: "Context") -> list[float]:
        """BERTScore F1 of each (candidate, reference) pair, from the call cache when known."""
        calls = CallCache.for_cache(ctx.cache)
        params = {"layer": self.config.num_layers, "version": self.version}
        keys = [call_key("metric:final_layer_bertscore", self.model_id, params, list(p)) for p in pairs]
        found = calls.get_many(keys)
        todo = [p for p, k in zip(pairs, keys) if k not in found]
        if todo:
            texts = list(dict.fromkeys(t for p in todo for t in p))
            emb = self.token_embeddings(texts, ctx.device)
            new = {}
            for pair, key in zip(pairs, keys):
                if key not in found and key not in new:
                    new[key] = greedy_f1(*emb[pair[0]], *emb[pair[1]])
            calls.put_many(new)
            found = {**found, **new}
            ctx.count("bertscore_pairs", len(new))
        return [float(found[k]) for k in keys]

    def score(self, descriptions: "pd.DataFrame", ctx: "Context") -> "pd.DataFrame":
        """Per-unit rows ``unit, metric, value`` (units without a label are skipped)."""
        import numpy as np
        import pandas as pd

        names = self._classes.class_names(ctx)
        rows = descriptions[descriptions["label"].notna()]
        rows = rows[rows["label"].astype(str).str.strip() != ""]
        if rows.empty:
            return pd.DataFrame(columns=["unit", "metric", "value"])
        units = rows["unit"].astype(int).to_numpy()
        self._classes._check_units(units, len(names))
        labels = rows["label"].astype(str).str.strip().tolist()
        values = self.f1([(label, names[u]) for label, u in zip(labels, units)], ctx)
        return pd.DataFrame({"unit": units, "metric": BERTSCORE, "value": values}).astype(
            {"unit": np.int64, "value": np.float64})
