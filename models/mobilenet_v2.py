"""MobileNetV2 (Sandler et al. 2018, arXiv 1801.04381), as torchvision builds it.

Inverted residual blocks: 1×1 expansion (ReLU6), 3×3 depthwise (ReLU6), 1×1 linear projection,
with a residual connection when stride is 1 and the channel count is unchanged. Channels are
scaled by the width multiplier and rounded with ``make_divisible(·, 8)``; the last 1×1 conv keeps
1280 channels for widths below 1 (torchvision and the paper). Key names match torchvision's
``mobilenet_v2`` state_dict.

1.0 at 224: 3,504,872 parameters (torchvision's), 300,774,272 MACs. The paper's "3.4M / 300M"
and TF-slim's table truncate rather than round (3.47M without BatchNorm → 3.4M; 300.8M → 300M;
TF-slim's other widths and resolutions are likewise our counts truncated).
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import ConvBNAct, make_divisible

# expansion t, output channels c, repeats n, first stride s (paper Table 2).
SETTINGS: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class InvertedResidual(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = int(round(in_channels * expand))
        self.use_residual = stride == 1 and in_channels == out_channels
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(ConvBNAct(in_channels, hidden, 1, activation=nn.ReLU6))
        layers += [
            ConvBNAct(hidden, hidden, 3, stride=stride, groups=hidden, activation=nn.ReLU6),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_residual:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, width: float = 1.0, num_classes: int = 1000, dropout: float = 0.2) -> None:
        super().__init__()
        channels = make_divisible(32 * width)
        last_channels = make_divisible(1280 * max(1.0, width))
        layers: list[nn.Module] = [ConvBNAct(3, channels, 3, stride=2, activation=nn.ReLU6)]
        for t, c, n, s in SETTINGS:
            out = make_divisible(c * width)
            for i in range(n):
                layers.append(InvertedResidual(channels, out, s if i == 0 else 1, t))
                channels = out
        layers.append(ConvBNAct(channels, last_channels, 1, activation=nn.ReLU6))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(last_channels, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))
