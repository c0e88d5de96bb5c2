"""MILAN's networks: a pyramid image encoder over masked exemplars, the attention-LSTM captioner
p(d | E) and the LSTM language model p(d), plus :class:`Milan`, the bundle saved to disk.

Module names follow the released MILAN checkpoints (``init_h``, ``attend.query_to_hidden``,
``feature_gate``, ``lstm``, ``output``, ``lm.lstm`` ...), so :mod:`dndbench.describers.milan.checkpoint`
maps their state dicts key for key.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dndbench.describers.milan.text import Vocab
from dndbench.hooks import record_outputs

FORMAT = "dndbench-milan/1"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESNET_LAYERS = ("conv1", "layer1", "layer2", "layer3", "layer4")


@dataclass
class Sizes:
    """Network sizes; the defaults are the paper's."""

    embedding_size: int = 128
    hidden_size: int = 512
    attention_hidden_size: int | None = None
    dropout: float = 0.5
    lm_embedding_size: int = 128
    lm_hidden_size: int = 512
    lm_layers: int = 2
    lm_dropout: float = 0.5


@dataclass
class EncoderSpec:
    """Which backbone encodes exemplars: ``arch`` is ``toynet`` or a torchvision ResNet name;
    features of ``layers`` are mask-pooled and concatenated (MILAN's pyramid encoder)."""

    arch: str = "resnet101"
    layers: tuple[str, ...] = RESNET_LAYERS
    input_size: int = 224
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    options: dict[str, Any] = field(default_factory=dict)


def build_backbone(spec: EncoderSpec, weights: str | None = None) -> nn.Module:
    """The backbone network (random weights unless torchvision ``weights`` are named)."""
    if spec.arch == "toynet":
        from dndbench.toyworld.network import ToyNet

        o = spec.options
        planted = {layer: [int(u) for u in units] for layer, units in o.get("planted", {}).items()}
        return ToyNet(int(o.get("num_classes", 12)), tuple(o.get("widths", (16, 32, 64, 128))),
                      int(o.get("blocks", 1)), planted)
    import torchvision

    return getattr(torchvision.models, spec.arch)(weights=weights or None)


class PyramidEncoder(nn.Module):
    """Per exemplar: backbone features of each layer, averaged with the (downsampled, normalised)
    mask as weights, concatenated into one vector."""

    mean: torch.Tensor  # buffers (registered in __init__)
    std: torch.Tensor

    def __init__(self, spec: EncoderSpec, backbone: nn.Module) -> None:
        super().__init__()
        self.spec = spec
        self.backbone = backbone.eval()
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1), persistent=False)
        with torch.no_grad():
            probe = self.forward(torch.zeros(1, 3, spec.input_size, spec.input_size))
        self.feature_size = int(probe.shape[-1])

    def _features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Backbone outputs of the pyramid layers, in the order they run; the forward pass stops
        once the last of them has run."""
        with record_outputs(self.backbone, self.spec.layers, stop=True) as out:
            self.backbone(x)
        return list(out.values())

    def forward(self, images: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
        """``images`` (N, 3, H, W) in [0, 1], ``masks`` (N, 1, H, W) -> features (N, F)."""
        size = self.spec.input_size
        if images.shape[-1] != size or images.shape[-2] != size:
            images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
        if masks is None:
            masks = images.new_ones(len(images), 1, size, size)
        pooled = []
        for feats in self._features((images - self.mean) / self.std):
            m = F.interpolate(masks.float(), size=feats.shape[-2:], mode="bilinear",
                              align_corners=False)
            total = m.sum((2, 3), keepdim=True)
            m = torch.where(total > 1e-8, m / total.clamp(min=1e-8),
                            torch.full_like(m, 1.0 / (m.shape[-1] * m.shape[-2])))
            pooled.append((feats * m).sum((2, 3)))
        return torch.cat(pooled, 1)


class Attention(nn.Module):
    """Additive attention of a query over keys (Show, Attend and Tell)."""

    def __init__(self, query_size: int, key_size: int, hidden_size: int | None = None) -> None:
        super().__init__()
        hidden = hidden_size or min(query_size, key_size)
        self.query_to_hidden = nn.Linear(query_size, hidden)
        self.key_to_hidden = nn.Linear(key_size, hidden)
        self.output = nn.Sequential(nn.Linear(hidden, 1))

    def forward(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """query (B, Q), keys (B, K, D) -> weights (B, K) summing to 1."""
        hidden = torch.tanh(self.query_to_hidden(query)[:, None] + self.key_to_hidden(keys))
        return self.output(hidden)[..., 0].softmax(1)


State = tuple[torch.Tensor, torch.Tensor]


class Decoder(nn.Module):
    """p(d | E): an LSTM cell fed the previous word and a gated attention read of the exemplars'
    features; its state starts from the mean feature."""

    def __init__(self, vocab_size: int, feature_size: int, sizes: Sizes) -> None:
        super().__init__()
        h, e = sizes.hidden_size, sizes.embedding_size
        self.init_h = nn.Sequential(nn.Linear(feature_size, h), nn.Tanh())
        self.init_c = nn.Sequential(nn.Linear(feature_size, h), nn.Tanh())
        self.embedding = nn.Embedding(vocab_size, e)
        self.attend = Attention(h, feature_size, sizes.attention_hidden_size)
        self.feature_gate = nn.Sequential(nn.Linear(h, feature_size), nn.Sigmoid())
        self.lstm = nn.LSTMCell(e + feature_size, h)
        self.output = nn.Sequential(nn.Dropout(sizes.dropout), nn.Linear(h, vocab_size))

    def init_state(self, features: torch.Tensor) -> State:
        pooled = features.mean(1)
        return self.init_h(pooled), self.init_c(pooled)

    def step(self, features: torch.Tensor, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """One word: features (B, K, F), previous tokens (B,) -> log p(next) (B, V), new state."""
        h, c = state
        read = (self.attend(h, features)[..., None] * features).sum(1) * self.feature_gate(h)
        h, c = self.lstm(torch.cat([self.embedding(tokens), read], 1), (h, c))
        return self.output(h).log_softmax(-1), (h, c)

    def forward(self, features: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: inputs (B, T) -> log-probs (B, T, V) of the next tokens."""
        state = self.init_state(features)
        out = []
        for t in range(inputs.shape[1]):
            logp, state = self.step(features, inputs[:, t], state)
            out.append(logp)
        return torch.stack(out, 1)


class LanguageModel(nn.Module):
    """p(d): a multi-layer LSTM over words."""

    def __init__(self, vocab_size: int, sizes: Sizes, pad_index: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, sizes.lm_embedding_size, padding_idx=pad_index)
        self.lstm = nn.LSTM(sizes.lm_embedding_size, sizes.lm_hidden_size, sizes.lm_layers,
                            dropout=sizes.lm_dropout if sizes.lm_layers > 1 else 0.0,
                            batch_first=True)
        self.output = nn.Sequential(nn.Linear(sizes.lm_hidden_size, vocab_size))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """inputs (B, T) -> log-probs (B, T, V) of the next tokens."""
        hidden, _ = self.lstm(self.embedding(inputs))
        return self.output(hidden).log_softmax(-1)


def sequence_logp(logp: torch.Tensor, targets: torch.Tensor, pad: int) -> torch.Tensor:
    """Sum over time of log p(target) (B,), ignoring ``pad`` targets."""
    picked = logp.gather(2, targets.clamp(min=0)[..., None])[..., 0]
    return (picked * (targets != pad)).sum(1)


class Milan(nn.Module):
    """Vocabulary + encoder + captioner + language model, saved and loaded as one file."""

    def __init__(self, vocab: Vocab, spec: EncoderSpec, sizes: Sizes,
                 backbone: nn.Module | None = None) -> None:
        super().__init__()
        self.vocab, self.spec, self.sizes = vocab, spec, sizes
        self.encoder = PyramidEncoder(spec, backbone if backbone is not None else build_backbone(spec))
        self.decoder = Decoder(len(vocab), self.encoder.feature_size, sizes)
        self.lm = LanguageModel(len(vocab), sizes, vocab.pad)
        self.meta: dict[str, Any] = {}

    def train(self, mode: bool = True) -> "Milan":
        super().train(mode)
        self.encoder.eval()  # the encoder is a frozen, pretrained classifier
        return self

    def encode(self, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """images (U, k, 3, H, W) in [0, 1], masks (U, k, 1, H, W) -> features (U, k, F)."""
        n, k = images.shape[:2]
        with torch.no_grad():
            feats = self.encoder(images.flatten(0, 1), masks.flatten(0, 1))
        return feats.view(n, k, -1)

    def save(self, path: Path | str) -> None:
        torch.save({"format": FORMAT, "words": self.vocab.words, "spec": asdict(self.spec),
                    "sizes": asdict(self.sizes), "meta": self.meta,
                    "state": {"encoder": self.encoder.backbone.state_dict(),
                              "decoder": self.decoder.state_dict(), "lm": self.lm.state_dict()}},
                   path)

    @classmethod
    def load(cls, path: Path | str) -> "Milan":
        from dndbench.errors import DataError

        try:
            payload = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:
            raise DataError(f"cannot load MILAN weights {path} ({exc})") from exc
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise DataError(f"{path} is not a dndbench MILAN file (for released MILAN "
                            f"checkpoints use checkpoint_format=released)")
        spec = payload["spec"]
        spec["layers"], spec["mean"], spec["std"] = (tuple(spec[k]) for k in ("layers", "mean", "std"))
        model = cls(Vocab(payload["words"]), EncoderSpec(**spec), Sizes(**payload["sizes"]))
        state = payload["state"]
        model.encoder.backbone.load_state_dict(state["encoder"])
        model.decoder.load_state_dict(state["decoder"])
        model.lm.load_state_dict(state["lm"])
        model.meta = payload.get("meta", {})
        return model.eval()
