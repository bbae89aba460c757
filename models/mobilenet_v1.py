"""MobileNetV1 (Howard et al. 2017, arXiv 1704.04861), Table 1.

A 3×3 stride-2 conv stem, 13 depthwise-separable blocks (3×3 depthwise + BN + ReLU, then 1×1
pointwise + BN + ReLU), global average pool and one fully connected layer. The width multiplier
α scales every channel count (rounded to a multiple of 8, which is exact for the paper's
α = 1, 0.75, 0.5, 0.25); the resolution multiplier ρ is simply the input size.

Table 1 prints the second-to-last depthwise layer as stride 2, but its output stays 7×7; every
implementation (and the paper's own MAC and parameter totals, which this model reproduces) uses
stride 1 there.

Counts (``counting.py`` conventions) against the paper: MACs include the FC layer and match
Tables 6/7 to the unit (α = 1: 568.7M → 569M; 192/160/128: 418/291/186M; α = 0.75/0.5/0.25:
325/149/41M). Parameters with BatchNorm γ/β: 4.23M, 2.59M, 1.33M, 0.47M; the paper prints
4.2/2.6/1.3/0.5. FACTS.md's "1.32M" for α = 0.5 is the count without BatchNorm (1,320,648),
while its "0.47M" for α = 0.25 is the count with it (470,072; 0.46M without): no single
convention gives both; ``tests/models/test_zoo_counting.py`` pins each.
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import ConvBNAct, make_divisible

# (out_channels, stride) of the 13 depthwise-separable blocks at α = 1.
BLOCKS: tuple[tuple[int, int], ...] = (
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (1024, 2),
    (1024, 1),
)


class DepthwiseSeparable(nn.Sequential):
    """3×3 depthwise conv + BN + ReLU, then 1×1 pointwise conv + BN + ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.dw = ConvBNAct(in_channels, in_channels, 3, stride=stride, groups=in_channels)
        self.pw = ConvBNAct(in_channels, out_channels, 1)


class MobileNetV1(nn.Module):
    def __init__(self, width: float = 1.0, num_classes: int = 1000) -> None:
        super().__init__()
        channels = make_divisible(32 * width)
        layers: list[nn.Module] = [ConvBNAct(3, channels, 3, stride=2)]
        for out, stride in BLOCKS:
            out = make_divisible(out * width)
            layers.append(DepthwiseSeparable(channels, out, stride))
            channels = out
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))
