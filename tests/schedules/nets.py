"""Stand-in networks for the schedule tests: every op kind the zoo produces, at toy size."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tests.nets import randomize_bn


class ConvBNAct(nn.Sequential):
    def __init__(self, i, o, k=3, s=1, g=1, act=nn.ReLU6):
        layers = [nn.Conv2d(i, o, k, s, (k - 1) // 2, groups=g, bias=False), nn.BatchNorm2d(o)]
        if act is not None:
            layers.append(act())
        super().__init__(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, i, o, s, t):
        super().__init__()
        h = i * t
        self.use_res = s == 1 and i == o
        layers = [ConvBNAct(i, h, 1)] if t != 1 else []
        layers += [ConvBNAct(h, h, 3, s, g=h), ConvBNAct(h, o, 1, act=None)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.use_res else self.conv(x)


class MiniMobileNetV2(nn.Module):
    """MobileNetV2's structure (stem, inverted residuals with stride 1/2, head) at toy width."""

    def __init__(self, classes: int = 10):
        super().__init__()
        cfg = [(1, 8, 1, 1), (4, 16, 2, 2), (4, 24, 2, 2), (4, 32, 1, 1)]
        c = 16
        feats = [ConvBNAct(3, c, 3, 2)]
        for t, o, n, s in cfg:
            for k in range(n):
                feats.append(InvertedResidual(c, o, s if k == 0 else 1, t))
                c = o
        feats.append(ConvBNAct(c, 64, 1))
        self.features = nn.Sequential(*feats)
        self.classifier = nn.Linear(64, classes)

    def forward(self, x):
        x = F.adaptive_avg_pool2d(self.features(x), 1).flatten(1)
        return self.classifier(x)


class SqueezeExcite(nn.Module):
    def __init__(self, c, act=nn.ReLU, gate=nn.Hardsigmoid, linear=False):
        super().__init__()
        h = max(8, c // 4)
        self.linear = linear
        if linear:
            self.fc1, self.fc2 = nn.Linear(c, h), nn.Linear(h, c)
        else:
            self.fc1, self.fc2 = nn.Conv2d(c, h, 1), nn.Conv2d(h, c, 1)
        self.act, self.gate = act(), gate()

    def forward(self, x):
        s = F.adaptive_avg_pool2d(x, 1)
        if self.linear:
            n, c = s.shape[:2]
            s = self.gate(self.fc2(self.act(self.fc1(s.flatten(1))))).view(n, c, 1, 1)
        else:
            s = self.gate(self.fc2(self.act(self.fc1(s))))
        return x * s


def channel_shuffle(x, groups: int):
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleUnit(nn.Module):
    def __init__(self, c):
        super().__init__()
        b = c // 2
        self.branch = nn.Sequential(
            ConvBNAct(b, b, 1, act=nn.ReLU), ConvBNAct(b, b, 3, g=b, act=None),
            ConvBNAct(b, b, 1, act=nn.ReLU),
        )  # fmt: skip

    def forward(self, x):
        a, b = x.chunk(2, dim=1)
        return channel_shuffle(torch.cat([a, self.branch(b)], 1), 2)


class OpZoo(nn.Module):
    """h-swish stem, 5×5 depthwise + SiLU, SE (conv and linear forms), stride-2 depthwise,
    channel shuffle (chunk/cat/transpose), a grouped 3×3 conv, a depthwise conv with channel
    multiplier 2, global pooling, classifier and softmax."""

    def __init__(self, c: int = 16, classes: int = 10):
        super().__init__()
        self.stem = ConvBNAct(3, c, 3, 2, act=nn.Hardswish)
        self.dw5 = ConvBNAct(c, c, 5, 1, g=c, act=nn.SiLU)
        self.se1 = SqueezeExcite(c)
        self.pw = ConvBNAct(c, 2 * c, 1, act=nn.Hardswish)
        self.dw3s2 = ConvBNAct(2 * c, 2 * c, 3, 2, g=2 * c)
        self.se2 = SqueezeExcite(2 * c, act=nn.SiLU, gate=nn.Sigmoid, linear=True)
        self.shuffle = ShuffleUnit(2 * c)
        self.gconv = ConvBNAct(2 * c, 2 * c, 3, 1, g=4, act=nn.ReLU)
        self.dw_mult = nn.Conv2d(2 * c, 4 * c, 3, 1, 1, groups=2 * c)
        self.fc = nn.Linear(4 * c, classes)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.se1(self.dw5(x))
        x = self.dw3s2(self.pw(x))
        x = self.se2(x)
        x = self.shuffle(x)
        x = self.gconv(x)
        x = F.hardswish(self.dw_mult(x))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return torch.softmax(self.fc(x) * 4.0, dim=-1)


def mini_mobilenet_v2(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return randomize_bn(MiniMobileNetV2(), seed)


def op_zoo(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return randomize_bn(OpZoo(), seed)
