"""EfficientNet-B0…B7 (Tan & Le 2019, arXiv 1905.11946) by compound scaling.

B0 is the paper's Table 1 baseline as torchvision builds it: MBConv blocks (1×1 expansion,
k×k depthwise, squeeze-and-excitation with SiLU and a sigmoid gate whose squeeze width is a
quarter of the *block input* channels, 1×1 linear projection, residual when shapes allow), SiLU
everywhere, a 1×1 conv to 1280 channels and one Linear. Key names match torchvision.
Stochastic depth is a training-time regulariser and an identity in eval, so it is left out;
the classifier's Dropout is kept (a no-op in eval).

Compound scaling (paper §3.3): with φ the compound coefficient,
depth d = α^φ, width w = β^φ, resolution r = γ^φ, where α = 1.2, β = 1.1, γ = 1.15 were found by
grid search under α·β²·γ² ≈ 2 (so FLOPs grow by ≈ 2^φ). This module derives every Bφ from φ:

- width: every channel count c → ``make_divisible(c · β^φ, 8)`` (torchvision's rounding);
- depth: every stage's repeat count n → ``ceil(n · α^φ)``;
- resolution: ``224 · γ^φ`` rounded to the nearest multiple of 8.

The published B1…B7 are *not* these values: the released models used hand-adjusted
coefficients. Derived (this module) vs published (width / depth / resolution):

====  =====================  =====================
 φ     derived                published
====  =====================  =====================
 0     1.000 / 1.000 / 224    1.0 / 1.0 / 224
 1     1.100 / 1.200 / 256    1.0 / 1.1 / 240
 2     1.210 / 1.440 / 296    1.1 / 1.2 / 260
 3     1.331 / 1.728 / 344    1.2 / 1.4 / 300
 4     1.464 / 2.074 / 392    1.4 / 1.8 / 380
 5     1.611 / 2.488 / 448    1.6 / 2.2 / 456
 6     1.772 / 2.986 / 520    1.8 / 2.6 / 528
 7     1.949 / 3.583 / 592    2.0 / 3.1 / 600
====  =====================  =====================

Read back through α, β, γ, the published B1…B7 sit at φ_width = log w / log β ≈ 0, 1, 1.9,
3.5, 4.9, 6.2, 7.3, φ_depth ≈ 0.5, 1, 1.9, 3.2, 4.3, 5.2, 6.2 and φ_res ≈ 0.5, 1.1, 2.1, 3.8,
5.1, 6.1, 7.0: the released series follows the rule only loosely (small models shallower and
narrower than φ says, B7 wider than deep). Consequences, measured with this module
(parameters / MACs at each model's own resolution):

====  =========================  =========================
 φ     derived (this module)      published coefficients
====  =========================  =========================
 0     5,288,548 / 0.386 G        5,288,548 / 0.386 G
 1     9,109,994 / 0.860 G        7,794,184 / 0.687 G
 2    12,233,232 / 1.810 G        9,109,994 / 0.994 G
 3    16,338,888 / 3.253 G       12,233,232 / 1.827 G
 4    25,940,032 / 6.321 G       19,341,616 / 4.394 G
 5    33,702,516 / 10.44 G       30,389,784 / 10.27 G
 6    45,477,208 / 20.10 G       43,040,704 / 19.07 G
 7    68,741,810 / 38.76 G       66,347,960 / 37.75 G
====  =========================  =========================

The published-coefficient column reproduces torchvision's parameter counts for B0…B7 exactly,
which checks the block definitions and rounding independently of φ. Derived B1 (1.1, 1.2) has
exactly published B2's coefficients, and derived B2 (1.21, 1.44) rounds to the same channel and
repeat counts as published B3 (1.2, 1.4); they differ from those only in resolution. From φ = 5
on, derived and published agree within 4–11% in parameters and 2–6% in MACs. MACs grow with φ
as (α·β²·γ²)^φ = 1.92^φ promises, up to the upward rounding of depth (ceil) and width
(+4…27%; B7/B0 = 100.5 vs 1.92^7 = 96.2).
``PUBLISHED`` keeps the released coefficients for comparison;
``EfficientNet(width=..., depth=...)`` builds either.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from .layers import ConvBNAct, SqueezeExcitation, make_divisible

ALPHA, BETA, GAMMA = 1.2, 1.1, 1.15  # depth, width, resolution (paper eq. 3)
BASE_RESOLUTION = 224
RESOLUTION_STEP = 8

# (width, depth, resolution) of the released B0…B7, for comparison only.
PUBLISHED: tuple[tuple[float, float, int], ...] = (
    (1.0, 1.0, 224),
    (1.0, 1.1, 240),
    (1.1, 1.2, 260),
    (1.2, 1.4, 300),
    (1.4, 1.8, 380),
    (1.6, 2.2, 456),
    (1.8, 2.6, 528),
    (2.0, 3.1, 600),
)


class Stage(NamedTuple):
    """One row of the paper's Table 1 (B0)."""

    expand: int
    kernel: int
    stride: int
    in_channels: int
    out_channels: int
    repeats: int


B0_STAGES: tuple[Stage, ...] = (
    Stage(1, 3, 1, 32, 16, 1),
    Stage(6, 3, 2, 16, 24, 2),
    Stage(6, 5, 2, 24, 40, 2),
    Stage(6, 3, 2, 40, 80, 3),
    Stage(6, 5, 1, 80, 112, 3),
    Stage(6, 5, 2, 112, 192, 4),
    Stage(6, 3, 1, 192, 320, 1),
)


class Scaling(NamedTuple):
    phi: int
    width: float
    depth: float
    resolution: int


def compound_scaling(phi: int) -> Scaling:
    """Width, depth and resolution multipliers of EfficientNet-Bφ derived from α, β, γ."""
    if phi < 0:
        raise ValueError(f"compound coefficient φ must be >= 0, got {phi}")
    res = BASE_RESOLUTION * GAMMA**phi
    return Scaling(phi, BETA**phi, ALPHA**phi, RESOLUTION_STEP * round(res / RESOLUTION_STEP))


class MBConv(nn.Module):
    def __init__(self, cin: int, cout: int, expand: int, kernel: int, stride: int, eps: float):
        super().__init__()
        self.use_residual = stride == 1 and cin == cout
        hidden = make_divisible(cin * expand)
        layers: list[nn.Module] = []
        if hidden != cin:
            layers.append(ConvBNAct(cin, hidden, 1, activation=nn.SiLU, bn_eps=eps))
        layers += [
            ConvBNAct(
                hidden, hidden, kernel, stride, groups=hidden, activation=nn.SiLU, bn_eps=eps
            ),
            SqueezeExcitation(hidden, max(1, cin // 4), activation=nn.SiLU),
            ConvBNAct(hidden, cout, 1, activation=None, bn_eps=eps),
        ]
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_residual:
            return x + self.block(x)
        return self.block(x)


class EfficientNet(nn.Module):
    """EfficientNet with explicit multipliers; ``efficientnet_b(phi)`` derives them from φ."""

    def __init__(
        self,
        width: float = 1.0,
        depth: float = 1.0,
        num_classes: int = 1000,
        dropout: float = 0.2,
        bn_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        stem = make_divisible(B0_STAGES[0].in_channels * width)
        layers: list[nn.Module] = [
            ConvBNAct(3, stem, 3, stride=2, activation=nn.SiLU, bn_eps=bn_eps)
        ]
        for st in B0_STAGES:
            cin = make_divisible(st.in_channels * width)
            cout = make_divisible(st.out_channels * width)
            blocks = []
            for i in range(math.ceil(st.repeats * depth)):
                first = i == 0
                blocks.append(
                    MBConv(cin if first else cout, cout, st.expand, st.kernel,
                           st.stride if first else 1, bn_eps)
                )  # fmt: skip
            layers.append(nn.Sequential(*blocks))
        last_in = make_divisible(B0_STAGES[-1].out_channels * width)
        layers.append(ConvBNAct(last_in, 4 * last_in, 1, activation=nn.SiLU, bn_eps=bn_eps))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(4 * last_in, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def efficientnet_b(phi: int, num_classes: int = 1000) -> EfficientNet:
    """EfficientNet-Bφ with derived multipliers (see the module docstring).

    Dropout follows the published 0.2, 0.2, 0.3, 0.3, … (+0.1 every two steps of φ; training
    only). BatchNorm eps is torchvision's: 1e-5 up to B4, 1e-3 from B5 (ported TF weights).
    """
    s = compound_scaling(phi)
    return EfficientNet(
        s.width,
        s.depth,
        num_classes=num_classes,
        dropout=0.2 + 0.1 * (phi // 2),
        bn_eps=1e-5 if phi < 5 else 1e-3,
    )
