"""Building blocks shared by the zoo: channel rounding, conv+BN+activation, squeeze-and-excitation.

Module and attribute names follow torchvision (``Conv2dNormActivation`` is a Sequential of
``0`` conv, ``1`` norm, ``2`` activation; ``SqueezeExcitation`` has ``fc1``/``fc2``), so a
torchvision ``state_dict`` saved to a file loads into our MobileNetV2/V3, EfficientNet and
ShuffleNetV2 unchanged. Activations are never in-place: ``torch.export`` and the compiler's
passes see a plain dataflow graph.
"""

from __future__ import annotations

import torch
from torch import nn


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round a scaled channel count to the nearest multiple of ``divisor`` (torchvision's rule).

    Never rounds down by more than 10%: if the nearest multiple is below ``0.9 * value`` it goes
    one multiple up. ``min_value`` (default ``divisor``) is the floor.
    """
    if min_value is None:
        min_value = divisor
    new_value = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new_value < 0.9 * value:
        new_value += divisor
    return new_value


class ConvBNAct(nn.Sequential):
    """Conv2d (no bias, "same" padding) → BatchNorm2d → optional activation."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        activation: type[nn.Module] | None = nn.ReLU,
        bn_eps: float = 1e-5,
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size,
                stride=stride,
                padding=(kernel_size - 1) // 2,
                groups=groups,
                bias=False,
            ),
            nn.BatchNorm2d(out_channels, eps=bn_eps),
        ]
        if activation is not None:
            layers.append(activation())
        super().__init__(*layers)
        self.out_channels = out_channels


class SqueezeExcitation(nn.Module):
    """Global average pool → 1×1 conv → activation → 1×1 conv → gate, multiplied onto the input."""

    def __init__(
        self,
        channels: int,
        squeeze_channels: int,
        activation: type[nn.Module] = nn.ReLU,
        gate: type[nn.Module] = nn.Sigmoid,
    ) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze_channels, 1)
        self.fc2 = nn.Conv2d(squeeze_channels, channels, 1)
        self.activation = activation()
        self.scale_activation = gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))
        return x * scale
