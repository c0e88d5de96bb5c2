"""Target models: the networks whose units get described."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from dndbench.cache import Cache
from dndbench.errors import ConfigError
from dndbench.registry import ComponentConfig, Registry

if TYPE_CHECKING:
    import torch
    from PIL import Image


@dataclass
class ModelConfig(ComponentConfig):
    """Options every target model has."""


class TargetModel(ABC):
    """A vision network plus what is needed to feed it and name its units.

    ``network(pretrained=False)`` must work offline: it builds the architecture with random
    weights, which is all that is needed to count units (e.g. when scoring published
    descriptions).  ``network()`` loads the real weights (downloading them if that is how the
    model is distributed).
    """

    Config = ModelConfig
    #: name of the layer whose units are the network's output logits
    final_layer: str = "fc"
    #: input side length used for dry runs (unit counting)
    input_size: int = 224

    def __init__(self, config: ModelConfig) -> None:
        self.config = config
        self._networks: dict[bool, Any] = {}
        #: where built artefacts (trained toy weights, converted checkpoints) are kept; the run
        #: replaces it with the run's cache
        self.cache = Cache()

    @abstractmethod
    def build(self, pretrained: bool) -> "torch.nn.Module":
        """Construct the network; with ``pretrained`` the trained weights are loaded."""

    @abstractmethod
    def transform(self) -> Callable[["Image.Image"], "torch.Tensor"]:
        """The preprocessing that turns a PIL image into the network's input tensor."""

    def network(self, pretrained: bool = True) -> "torch.nn.Module":
        """The network in eval mode, built once per process."""
        if pretrained not in self._networks:
            net = self.build(pretrained)
            net.eval()
            self._networks[pretrained] = net
        return self._networks[pretrained]

    def class_names(self) -> list[str] | None:
        """Names of the final layer's classes (unit i = class i), or None if unknown."""
        return None

    def weights_fingerprint(self) -> str:
        """A string that changes whenever the trained weights change (part of cache keys)."""
        return repr(self.config)

    def planted_concepts(self, layer: str) -> dict[int, str]:
        """Ground-truth concepts of units in ``layer`` that are known by construction."""
        return {}

    def resolve_layer(self, layer: str) -> str:
        """Map aliases (``final``) to a module name and check the module exists."""
        name = self.final_layer if layer in ("final", "final_layer") else layer
        modules = dict(self.network(pretrained=False).named_modules())
        if name not in modules or name == "":
            candidates = [n for n, m in modules.items() if n and "." not in n]
            raise ConfigError(f"model {self.config.name!r} has no layer {layer!r}; "
                              f"top-level layers are {', '.join(candidates)}")
        return name

    def num_units(self, layer: str) -> int:
        """Number of units (channels / outputs) of ``layer``, from a dry run of the architecture."""
        import torch

        name = self.resolve_layer(layer)
        net = self.network(pretrained=False)
        module = dict(net.named_modules())[name]
        seen: list[int] = []
        handle = module.register_forward_hook(lambda m, i, o: seen.append(o.shape[1]))
        try:
            with torch.no_grad():
                net(torch.zeros(1, 3, self.input_size, self.input_size))
        finally:
            handle.remove()
        return seen[0]


MODELS: Registry[TargetModel] = Registry("model")
