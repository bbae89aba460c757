"""Small networks shared by the tests: every pattern the compiler must handle, at toy size."""

from __future__ import annotations

import torch
import torch.nn as nn


def randomize_bn(module: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm statistics, so BN folding is really exercised."""
    gen = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(c, generator=gen) * 0.1)
    return module.eval()


class TinySeparable(nn.Module):
    """Stem conv (with bias) + BN, depthwise 3×3 + BN + ReLU6, pointwise + BN + h-swish, residual
    add, classifier: every pattern the BN fold and the schedules must handle, at toy size."""

    def __init__(self, c: int = 8, classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, 2, 1, bias=True), nn.BatchNorm2d(c), nn.ReLU())
        self.dw = nn.Sequential(
            nn.Conv2d(c, c, 3, 1, 1, groups=c, bias=False), nn.BatchNorm2d(c), nn.ReLU6()
        )
        self.pw = nn.Sequential(nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c), nn.Hardswish())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, classes))

    def forward(self, x):
        x = self.stem(x)
        x = x + self.pw(self.dw(x))
        return self.head(x)


def tiny_separable(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return randomize_bn(TinySeparable(), seed)
