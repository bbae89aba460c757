"""ShuffleNetV2 (Ma et al. 2018, arXiv 1807.11164), the paper's network.

Each unit splits its channels in two (stride 1) or feeds both branches the whole input
(stride 2, which doubles the channels); one branch runs 1×1 → 3×3 depthwise → 1×1, the two
halves are concatenated and shuffled so information crosses between them. The shuffle is a
reshape to (batch, 2, C/2, H, W), a transpose of the two channel axes and a reshape back: plain
view/transpose ops that ``torch.export`` records as such. Widths are the paper's 0.5×, 1×, 1.5×,
2× (per-width channel tables, not a multiplier).

Module names follow torchvision, but the layout follows the paper and its reference code: in the
first unit of stage 2 the shortcut branch keeps its 24 input channels and the main branch makes
the rest (out − 24). torchvision gives both branches out/2 there, which costs 0.9M–7.5M fewer
MACs than the paper's Table 5 (1×: 144.9M vs 146M). ``torchvision_layout=True`` builds
torchvision's variant (its parameter counts and state_dicts); the default reproduces the paper:
40.5M / 145.8M / 299.0M / 590.8M MACs for 0.5× / 1× / 1.5× / 2× against the printed
41 / 146 / 299 / 591 (the paper rounds up).
"""

from __future__ import annotations

import torch
from torch import nn

# width → output channels of conv1, stage2, stage3, stage4, conv5 (paper Table 5)
STAGE_CHANNELS: dict[float, tuple[int, int, int, int, int]] = {
    0.5: (24, 48, 96, 192, 1024),
    1.0: (24, 116, 232, 464, 1024),
    1.5: (24, 176, 352, 704, 1024),
    2.0: (24, 244, 488, 976, 2048),
}
STAGE_REPEATS = (4, 8, 4)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    batch, channels, height, width = x.shape
    x = x.view(batch, groups, channels // groups, height, width)
    return x.transpose(1, 2).reshape(batch, channels, height, width)


def _dw_bn(channels: int, stride: int) -> list[nn.Module]:
    return [
        nn.Conv2d(channels, channels, 3, stride, 1, groups=channels, bias=False),
        nn.BatchNorm2d(channels),
    ]


def _pw_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


class ShuffleUnit(nn.Module):
    def __init__(
        self, in_channels: int, out_channels: int, stride: int, shortcut_channels: int | None = None
    ) -> None:
        super().__init__()
        self.stride = stride
        half = out_channels // 2
        if stride > 1:
            short = half if shortcut_channels is None else shortcut_channels
            self.branch1 = nn.Sequential(
                *_dw_bn(in_channels, stride), *_pw_bn_relu(in_channels, short)
            )
        else:
            short = half
            self.branch1 = nn.Sequential()
        self.branch2 = nn.Sequential(
            *_pw_bn_relu(in_channels if stride > 1 else half, half),
            *_dw_bn(half, stride),
            *_pw_bn_relu(half, out_channels - short),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    def __init__(
        self, width: float = 1.0, num_classes: int = 1000, torchvision_layout: bool = False
    ) -> None:
        super().__init__()
        channels = STAGE_CHANNELS[width]
        self.conv1 = nn.Sequential(
            nn.Conv2d(3, channels[0], 3, 2, 1, bias=False),
            nn.BatchNorm2d(channels[0]),
            nn.ReLU(),
        )
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        cin = channels[0]
        for i, (repeats, cout) in enumerate(zip(STAGE_REPEATS, channels[1:4], strict=True)):
            # The paper's first unit keeps the shortcut branch at its input width.
            short = None if torchvision_layout else cin
            units = [ShuffleUnit(cin, cout, 2, short)] + [
                ShuffleUnit(cout, cout, 1) for _ in range(repeats - 1)
            ]
            setattr(self, f"stage{i + 2}", nn.Sequential(*units))
            cin = cout
        self.conv5 = nn.Sequential(*_pw_bn_relu(cin, channels[4]))
        self.fc = nn.Linear(channels[4], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.conv1(x))
        x = self.stage4(self.stage3(self.stage2(x)))
        x = self.conv5(x).mean([2, 3])
        return self.fc(x)
