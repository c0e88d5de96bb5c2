"""ToyNet: a small ResNet for 64x64 toy-world images, with torchvision-like module names.

``conv1 (stride 2) -> bn1 -> relu -> maxpool -> layer1 (16x16) -> layer2 (16x16) -> layer3 (8x8)
-> layer4 (4x4) -> avgpool -> fc``; each ``layerN`` is a ``Sequential`` of basic residual blocks whose output
is post-ReLU, like torchvision's ResNets, so ``layer3`` unit maps are what describers see.
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


class ToyNet(nn.Module):
    """A ResNet-style classifier of toy-world shapes."""

    def __init__(self, num_classes: int = 12, widths: tuple[int, ...] = (16, 32, 64, 128),
                 blocks: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 5, 2, 2, bias=False)  # 64 -> 32
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)  # 32 -> 16
        in_channels = widths[0]
        for i, width in enumerate(widths):
            stride = 1 if i < 2 else 2
            layers = [BasicBlock(in_channels, width, stride)]
            layers += [BasicBlock(width, width) for _ in range(blocks - 1)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*layers))
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
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # type: ignore[operator]
        return self.fc(torch.flatten(self.avgpool(x), 1))


def normalise(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) or float 0-1 images -> normalised float input."""
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images
    mean = torch.tensor(MEAN, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(STD, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std
