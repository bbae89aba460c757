"""Every depthwise / separable layer shape of the zoo, collected by running the zoo models.

A layer is recorded as it runs (forward hooks), so the shapes are the real ones — input size
after every stride, channel counts after width rounding — not a table that could drift.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import torch
from torch import nn

ZOO = ("mobilenet_v1", "mobilenet_v2", "mobilenet_v3_large", "efficientnet_b0", "shufflenet_v2")


@dataclass(frozen=True)
class DepthwiseLayer:
    channels: int
    multiplier: int
    kernel: int
    stride: int
    padding: int
    dilation: int
    height: int
    width: int
    pointwise_out: int | None  # the 1×1 conv right after, None when something else follows

    @property
    def id(self) -> str:
        pw = f"-pw{self.pointwise_out}" if self.pointwise_out else ""
        m = f"x{self.multiplier}" if self.multiplier > 1 else ""
        return f"c{self.channels}{m}-k{self.kernel}s{self.stride}-{self.height}x{self.width}{pw}"


def _is_depthwise(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels


def _collect(model: nn.Module, x: torch.Tensor) -> list[DepthwiseLayer]:
    calls: list[tuple[nn.Conv2d, tuple[int, ...]]] = []
    hooks = [
        m.register_forward_hook(lambda mod, inp, out: calls.append((mod, tuple(inp[0].shape))))
        for m in model.modules()
        if isinstance(m, nn.Conv2d)
    ]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    layers = []
    for i, (conv, shape) in enumerate(calls):
        if not _is_depthwise(conv):
            continue
        nxt = calls[i + 1][0] if i + 1 < len(calls) else None
        pw = None
        if (
            nxt is not None
            and nxt.kernel_size == (1, 1)
            and nxt.groups == 1
            and nxt.in_channels == conv.out_channels
            and calls[i + 1][1][2:] != (1, 1)  # an SE block's FC runs on a 1×1 map
        ):
            pw = nxt.out_channels
        layers.append(
            DepthwiseLayer(
                channels=conv.in_channels,
                multiplier=conv.out_channels // conv.in_channels,
                kernel=conv.kernel_size[0],
                stride=conv.stride[0],
                padding=conv.padding[0],
                dilation=conv.dilation[0],
                height=shape[2],
                width=shape[3],
                pointwise_out=pw,
            )
        )
    return layers


@cache
def zoo_depthwise_layers() -> tuple[DepthwiseLayer, ...]:
    """Distinct depthwise layers of the zoo models at 224, in first-seen order."""
    from sepconv.models import get_model

    seen: dict[DepthwiseLayer, None] = {}
    for name in ZOO:
        spec = get_model(name)
        for layer in _collect(spec.module.eval(), spec.example_input(0)):
            seen.setdefault(layer, None)
    return tuple(seen)


def separable_block(layer: DepthwiseLayer, act: str = "relu6", seed: int = 0) -> nn.Module:
    """dw → BN → act → (pw 1×1 → BN), the block shape our fused operator takes."""
    torch.manual_seed(seed)
    c, k = layer.channels, layer.kernel
    mid = c * layer.multiplier
    acts = {"relu6": nn.ReLU6(), "relu": nn.ReLU(), "hswish": nn.Hardswish(), "silu": nn.SiLU()}
    mods: list[nn.Module] = [
        nn.Conv2d(
            c,
            mid,
            k,
            layer.stride,
            layer.padding,
            dilation=layer.dilation,
            groups=c,
            bias=False,
        ),
        nn.BatchNorm2d(mid),
        acts[act],
    ]
    if layer.pointwise_out:
        mods += [
            nn.Conv2d(mid, layer.pointwise_out, 1, bias=False),
            nn.BatchNorm2d(layer.pointwise_out),
        ]
    block = nn.Sequential(*mods).eval()
    from tests.nets import randomize_bn

    return randomize_bn(block, seed)
