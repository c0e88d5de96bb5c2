"""Target models: the networks whose units get described."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Generic, TypeVar

from dndbench.cache import Cache
from dndbench.errors import ConfigError
from dndbench.hooks import record_outputs
from dndbench.registry import ComponentConfig, Registry

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from dndbench.geometry import Preprocessing


@dataclass
class ModelConfig(ComponentConfig):
    """Options every target model has."""


C = TypeVar("C", bound=ModelConfig)


class TargetModel(ABC, Generic[C]):
    """A vision network plus what is needed to feed it and name its units.

    ``network(pretrained=False)`` must work offline: it builds the architecture with random
    weights, which is all that is needed to count units (e.g. when scoring published
    descriptions).  ``network()`` loads the real weights (downloading them if that is how the
    model is distributed).  ``TargetModel[MyConfig]`` with ``Config = MyConfig`` types
    ``self.config``.
    """

    Config: type[ModelConfig] = ModelConfig
    #: name of the layer whose units are the network's output logits
    final_layer: str = "fc"
    #: input side length used for dry runs (unit counting)
    input_size: int = 224
    #: which defaults a run with this model gets for the probe and backends it does not choose:
    #: ``"real"`` (the papers' models and data: ImageNet ∪ Broden, BLIP, GPT, SD, CLIP) or
    #: ``"toy"`` (the offline toy world); see ``dndbench.config.TRACK_DEFAULTS``
    track: str = "real"
    #: whether work done on first use (training toy weights) shows progress bars; a run sets it
    #: from its ``progress=`` option
    progress: bool = True

    def __init__(self, config: C) -> None:
        self.config: C = config
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

    def preprocessing(self) -> "Preprocessing":
        """The geometry of :meth:`transform` (its resize and centre crop), which says what part
        of an image a unit's map covers (:mod:`dndbench.geometry`).  Read off the transform;
        a transform whose steps cannot be read counts as showing the whole image."""
        from dndbench.geometry import Preprocessing, from_transform

        return from_transform(self.transform()) or Preprocessing()

    def fed_whole(self, width: int, height: int) -> "TargetModel[Any]":
        """This model fed ``width`` x ``height`` images whole and at that size, without its
        resize and centre crop (how NetDissect-Lite feeds Broden): itself when its transform
        already does that, else a :class:`WholeImageView`.  Itself, too, when the transform's
        steps cannot be rewritten (see :func:`dndbench.geometry.whole_image_transform`)."""
        from dndbench.geometry import whole_image_transform

        if self.preprocessing().is_identity(width, height):
            return self
        if whole_image_transform(self.transform(), (width, height)) is None:
            return self
        return WholeImageView(self, (width, height))

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
        with record_outputs(net, [name], lambda out: out.shape[1], stop=True) as widths, \
                torch.no_grad():
            net(torch.zeros(1, 3, self.input_size, self.input_size))
        return int(widths[name])


class WholeImageView(TargetModel[Any]):
    """``base`` with every image fed whole at ``size = (w, h)``: its transform's resize and
    centre crop become a resize to exactly ``size`` (a no-op for images of that size).  Shares
    the base's network; its fingerprint differs, so cached activations are kept apart."""

    def __init__(self, base: TargetModel[Any], size: tuple[int, int]) -> None:
        super().__init__(base.config)
        self.base, self.size = base, (int(size[0]), int(size[1]))
        self.final_layer, self.input_size = base.final_layer, base.input_size
        self.cache = base.cache

    def build(self, pretrained: bool) -> "torch.nn.Module":
        return self.base.network(pretrained)

    def network(self, pretrained: bool = True) -> "torch.nn.Module":
        return self.base.network(pretrained)

    def transform(self) -> Callable[["Image.Image"], "torch.Tensor"]:
        from dndbench.geometry import whole_image_transform

        return whole_image_transform(self.base.transform(), self.size)

    def preprocessing(self) -> "Preprocessing":
        from dndbench.geometry import Preprocessing

        return Preprocessing(resize=(self.size[1], self.size[0]))

    def class_names(self) -> list[str] | None:
        return self.base.class_names()

    def weights_fingerprint(self) -> str:
        return f"{self.base.weights_fingerprint()}|whole {self.size[0]}x{self.size[1]}"

    def planted_concepts(self, layer: str) -> dict[int, str]:
        return self.base.planted_concepts(layer)

    def resolve_layer(self, layer: str) -> str:
        return self.base.resolve_layer(layer)


MODELS: Registry[TargetModel[Any]] = Registry("model")
