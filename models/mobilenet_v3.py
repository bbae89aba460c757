"""MobileNetV3-Large and -Small (Howard et al. 2019, arXiv 1905.02244), as torchvision builds them.

Inverted residual blocks with optional squeeze-and-excitation (ReLU inside, hard-sigmoid gate,
squeeze width ``make_divisible(expanded / 4, 8)``), ReLU or hard-swish activations, a 1×1 conv
to 6× the last block's channels and a two-layer classifier (Linear → hard-swish → dropout →
Linear). The width multiplier scales every channel count, the classifier's hidden layer included,
with ``make_divisible(·, 8)``. Key names match torchvision's state_dicts; BatchNorm eps is 1e-3.

Parameters are torchvision's exactly (Large 5,483,032, Small 2,542,856). Conv + linear MACs at
224 are 216.6M and 56.5M against the paper's 219M and 56M; TF-slim's README lists 217M for the
same Large network, so the 1.1% gap is in the paper's counting, not in the architecture.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from .layers import ConvBNAct, SqueezeExcitation, make_divisible

BN_EPS = 1e-3


class Bneck(NamedTuple):
    """One row of the paper's Tables 1/2 (channel counts at width 1)."""

    in_channels: int
    kernel: int
    expanded: int
    out_channels: int
    use_se: bool
    hard_swish: bool
    stride: int


LARGE: tuple[Bneck, ...] = (
    Bneck(16, 3, 16, 16, False, False, 1),
    Bneck(16, 3, 64, 24, False, False, 2),
    Bneck(24, 3, 72, 24, False, False, 1),
    Bneck(24, 5, 72, 40, True, False, 2),
    Bneck(40, 5, 120, 40, True, False, 1),
    Bneck(40, 5, 120, 40, True, False, 1),
    Bneck(40, 3, 240, 80, False, True, 2),
    Bneck(80, 3, 200, 80, False, True, 1),
    Bneck(80, 3, 184, 80, False, True, 1),
    Bneck(80, 3, 184, 80, False, True, 1),
    Bneck(80, 3, 480, 112, True, True, 1),
    Bneck(112, 3, 672, 112, True, True, 1),
    Bneck(112, 5, 672, 160, True, True, 2),
    Bneck(160, 5, 960, 160, True, True, 1),
    Bneck(160, 5, 960, 160, True, True, 1),
)

SMALL: tuple[Bneck, ...] = (
    Bneck(16, 3, 16, 16, True, False, 2),
    Bneck(16, 3, 72, 24, False, False, 2),
    Bneck(24, 3, 88, 24, False, False, 1),
    Bneck(24, 5, 96, 40, True, True, 2),
    Bneck(40, 5, 240, 40, True, True, 1),
    Bneck(40, 5, 240, 40, True, True, 1),
    Bneck(40, 5, 120, 48, True, True, 1),
    Bneck(48, 5, 144, 48, True, True, 1),
    Bneck(48, 5, 288, 96, True, True, 2),
    Bneck(96, 5, 576, 96, True, True, 1),
    Bneck(96, 5, 576, 96, True, True, 1),
)

# variant → (block table, classifier hidden width at width 1)
VARIANTS: dict[str, tuple[tuple[Bneck, ...], int]] = {
    "large": (LARGE, 1280),
    "small": (SMALL, 1024),
}


class InvertedResidual(nn.Module):
    def __init__(self, cfg: Bneck, width: float) -> None:
        super().__init__()
        cin = make_divisible(cfg.in_channels * width)
        exp = make_divisible(cfg.expanded * width)
        out = make_divisible(cfg.out_channels * width)
        act = nn.Hardswish if cfg.hard_swish else nn.ReLU
        self.use_residual = cfg.stride == 1 and cin == out
        layers: list[nn.Module] = []
        if exp != cin:
            layers.append(ConvBNAct(cin, exp, 1, activation=act, bn_eps=BN_EPS))
        layers.append(
            ConvBNAct(
                exp, exp, cfg.kernel, stride=cfg.stride, groups=exp, activation=act, bn_eps=BN_EPS
            )
        )
        if cfg.use_se:
            layers.append(SqueezeExcitation(exp, make_divisible(exp // 4), gate=nn.Hardsigmoid))
        layers.append(ConvBNAct(exp, out, 1, activation=None, bn_eps=BN_EPS))
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_residual:
            return x + self.block(x)
        return self.block(x)


class MobileNetV3(nn.Module):
    def __init__(
        self,
        variant: str = "large",
        width: float = 1.0,
        num_classes: int = 1000,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        blocks, hidden = VARIANTS[variant]
        stem = make_divisible(blocks[0].in_channels * width)
        layers: list[nn.Module] = [
            ConvBNAct(3, stem, 3, stride=2, activation=nn.Hardswish, bn_eps=BN_EPS)
        ]
        layers += [InvertedResidual(cfg, width) for cfg in blocks]
        last_in = make_divisible(blocks[-1].out_channels * width)
        last_out = 6 * last_in
        layers.append(ConvBNAct(last_in, last_out, 1, activation=nn.Hardswish, bn_eps=BN_EPS))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        hidden = make_divisible(hidden * width)
        self.classifier = nn.Sequential(
            nn.Linear(last_out, hidden),
            nn.Hardswish(),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))
