"""Parameter and multiply-add (MAC) counts, measured on modules and in closed form.

Conventions (FACTS.md):

- parameters: ``sum(p.numel())`` over the module's parameters, so BatchNorm γ/β count and its
  running statistics do not. ``batchnorm=False`` leaves BatchNorm out entirely, which is the
  convention of the MobileNet papers (conv and FC weights and biases only).
- MACs: multiply-adds of Conv2d (grouped and depthwise included) and Linear layers, biases,
  BatchNorm, activations, pooling and elementwise ops not counted. A Conv2d producing an
  output of N·C_out·H·W costs ``C_in/groups · k_h · k_w`` MACs per output element; a Linear
  costs ``in_features`` per output element. Papers that say "FLOPs" for these networks
  (EfficientNet, ShuffleNetV2) count exactly these multiply-adds.

``count_macs`` runs the module once on the meta device (``torch.func.functional_call`` with
meta copies of its parameters and buffers), so it costs no arithmetic and leaves the module
untouched: counting EfficientNet-B7 at 592×592 takes milliseconds.
"""

from __future__ import annotations

import torch
from torch import nn


def count_params(module: nn.Module, *, batchnorm: bool = True) -> int:
    """Number of parameters; ``batchnorm=False`` skips BatchNorm γ/β (the MobileNet papers)."""
    skip: set[int] = set()
    if not batchnorm:
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                skip.update(id(p) for p in m.parameters(recurse=False))
    return sum(p.numel() for p in module.parameters() if id(p) not in skip)


def _layer_macs(layer: nn.Module, output: torch.Tensor) -> int:
    if isinstance(layer, nn.Conv2d):
        kh, kw = layer.kernel_size
        return output.numel() * (layer.in_channels // layer.groups) * kh * kw
    if isinstance(layer, nn.Linear):
        return output.numel() * layer.in_features
    return 0


def count_macs(module: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-adds of all Conv2d and Linear layers for one forward of ``input_shape``.

    ``input_shape`` includes the batch dimension; use batch 1 for the per-image figure papers
    quote. The module's own weights are not touched.
    """
    total = 0

    def hook(layer: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        total += _layer_macs(layer, output)

    handles = [
        m.register_forward_hook(hook)
        for m in module.modules()
        if isinstance(m, nn.Conv2d | nn.Linear)
    ]
    try:
        tensors = dict([*module.named_parameters(), *module.named_buffers()])
        x = torch.empty(tuple(input_shape), device="meta")
        with torch.no_grad():
            try:
                if all(t.is_meta for t in tensors.values()):
                    module(x)  # built on the meta device already
                else:
                    meta = {k: torch.empty_like(t, device="meta") for k, t in tensors.items()}
                    torch.func.functional_call(module, meta, (x,))
            except (NotImplementedError, RuntimeError):
                # A forward that makes real tensors of its own cannot run on meta: run it for real.
                total = 0
                device = next(iter(tensors.values())).device if tensors else "cpu"
                module(torch.zeros(x.shape, device=device))
    finally:
        for h in handles:
            h.remove()
    return total


# Closed forms for the textbook comparison of a standard and a depthwise-separable convolution.
# C_in = M input channels, C_out = N output channels, K×K kernel, H×W output map, stride 1.


def standard_conv_params(c_in: int, c_out: int, k: int, bias: bool = True) -> int:
    """K·K·M·N weights (+ N biases)."""
    return k * k * c_in * c_out + (c_out if bias else 0)


def separable_block_params(c_in: int, c_out: int, k: int) -> int:
    """Depthwise K×K + BN + pointwise 1×1 + BN, no conv biases: K·K·M + 2M + M·N + 2N."""
    return k * k * c_in + 2 * c_in + c_in * c_out + 2 * c_out


def standard_conv_macs(h: int, w: int, c_in: int, c_out: int, k: int) -> int:
    """H·W·M·N·K·K."""
    return h * w * c_in * c_out * k * k


def separable_conv_macs(h: int, w: int, c_in: int, c_out: int, k: int) -> tuple[int, int]:
    """(depthwise, pointwise) MACs: H·W·M·K·K and H·W·M·N."""
    return h * w * c_in * k * k, h * w * c_in * c_out


def separable_cost_ratio(c_out: int, k: int) -> float:
    """Separable / standard MACs = (K² + N) / (N·K²) = 1/N + 1/K², independent of M, H, W."""
    return 1 / c_out + 1 / k**2
