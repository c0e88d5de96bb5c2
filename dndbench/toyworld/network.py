"""ToyNet: a small ResNet for 64x64 toy-world images, with torchvision-like module names.

``conv1 (stride 2) -> bn1 -> relu -> maxpool -> layer1 (16x16) -> layer2 (16x16) -> layer3 (8x8)
-> layer4 (4x4) -> avgpool -> fc``; each ``layerN`` is a ``Sequential`` of basic residual blocks whose output
is post-ReLU, like torchvision's ResNets, so ``layer3`` unit maps are what describers see.

With ``planted`` units (the benchmark's ground truth, see docs/toyworld.md), a second pathway
runs beside the classifier: ``detector`` (a stem at full resolution and one residual stage per
layer) computes, for each layer, the maps of that layer's planted units, which take their
channels in the layer's output (:class:`PlantedLayer`).  The next layer reads every channel,
planted ones included, but gradients never cross between the pathways: the classification loss
trains the trunk and the planted-unit loss trains the detector, so neither competes with the
other for capacity.
"""
from __future__ import annotations

import torch
from torch import nn

#: input normalisation (per-channel mean and std of 0-1 RGB)
MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (torchvision's naming)."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride, bias=False), nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


#: channel widths of the detector pathway's stem and of its stage at each layer
DETECTOR_WIDTHS = (32, 48, 64, 96, 128)


class PlantedLayer(nn.Module):
    """One layer of a ToyNet with planted units: the trunk's residual blocks make the ordinary
    channels, a 1x1 convolution (``head``) of the detector pathway's features and of the trunk's
    channels, plus a linear map of their spatial mean (``context``), then a ReLU, makes the
    planted ones, and the two are interleaved so planted unit
    ``u`` is output channel ``u``.  The head reads the trunk's channels without training them."""

    order: torch.Tensor
    planted: torch.Tensor

    def __init__(self, trunk: nn.Module, detector_channels: int, units: list[int],
                 width: int) -> None:
        super().__init__()
        self.trunk = trunk
        reads = detector_channels + width - len(units)
        self.head = nn.Conv2d(reads, len(units), 1)
        #: the same features averaged over the map: image-level context added to every cell
        self.context = nn.Linear(reads, len(units))
        ordinary = [c for c in range(width) if c not in set(units)]
        position = {c: i for i, c in enumerate(ordinary + sorted(units))}
        self.register_buffer("order", torch.tensor([position[c] for c in range(width)]),
                             persistent=False)
        planted = torch.zeros(1, width, 1, 1, dtype=torch.bool)
        planted[0, sorted(units)] = True
        self.register_buffer("planted", planted, persistent=False)

    def forward(self, x: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        trunk = self.trunk(x)
        reads = torch.cat([features, trunk.detach()], 1)
        planted = torch.relu(self.head(reads) + self.context(reads.mean((2, 3)))[:, :, None, None])
        return torch.cat([trunk, planted], 1)[:, self.order]


class ToyNet(nn.Module):
    """A ResNet-style classifier of toy-world shapes; ``planted`` (layer name -> unit indices)
    adds the detector pathway that computes those units (see the module docstring)."""

    def __init__(self, num_classes: int = 12, widths: tuple[int, ...] = (16, 32, 64, 128),
                 blocks: int = 1, planted: dict[str, list[int]] | None = None) -> None:
        super().__init__()
        planted = {k: sorted(v) for k, v in (planted or {}).items() if v}
        self.conv1 = nn.Conv2d(3, widths[0], 5, 2, 2, bias=False)  # 64 -> 32
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)  # 32 -> 16
        self.detector: nn.ModuleDict | None = None
        if planted:
            stem, *stages = DETECTOR_WIDTHS
            self.detector = nn.ModuleDict({"stem": nn.Sequential(
                nn.Conv2d(3, stem, 3, 1, 1, bias=False), nn.BatchNorm2d(stem), nn.ReLU(inplace=True),
                nn.Conv2d(stem, stem, 3, 2, 1, bias=False), nn.BatchNorm2d(stem), nn.ReLU(inplace=True),
                nn.Conv2d(stem, stem, 3, 2, 1, bias=False), nn.BatchNorm2d(stem),
                nn.ReLU(inplace=True))})  # 64 -> 16
            previous = stem
            for i, width in enumerate(stages):
                self.detector[f"layer{i + 1}"] = BasicBlock(previous, width, 1 if i < 2 else 2)
                previous = width
        in_channels = widths[0]
        for i, width in enumerate(widths):
            stride = 1 if i < 2 else 2
            units = planted.get(f"layer{i + 1}", [])
            trunk_width = width - len(units)
            layers = [BasicBlock(in_channels, trunk_width, stride)]
            layers += [BasicBlock(trunk_width, trunk_width) for _ in range(blocks - 1)]
            layer: nn.Module = nn.Sequential(*layers)
            if units:
                layer = PlantedLayer(layer, DETECTOR_WIDTHS[i + 1], units, width)
            self.add_module(f"layer{i + 1}", layer)
            in_channels = width
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        image = x
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        if self.detector is None:
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # type: ignore[operator]
            return self.fc(torch.flatten(self.avgpool(x), 1))
        features = self.detector["stem"](image)
        for i in range(1, 5):
            features = self.detector[f"layer{i}"](features)
            layer = getattr(self, f"layer{i}")
            if isinstance(layer, PlantedLayer):
                x = layer(x, features)
                # the next layer reads the planted channels, but the classification loss does
                # not train the detector pathway through them
                x = torch.where(layer.planted, x.detach(), x)
            else:
                x = layer(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


def normalise(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) or float 0-1 images -> normalised float input."""
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images
    mean = torch.tensor(MEAN, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(STD, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std
