"""What the Triton kernels share: activation codes, the in-kernel activation, torch references.

The kernels in ``triton_depthwise.py``, ``triton_fused_dw_pw.py`` and ``triton_se.py`` take the
activation as a ``tl.constexpr`` code, so one kernel source serves every epilogue and the
compiler removes the branches it does not take.

Roofline numbers used in the kernels' docstrings (NVIDIA H100 SXM): ~3.35 TB/s HBM3 bandwidth,
~67 TFLOP/s fp32 on the CUDA cores (no tensor cores), ~990 TFLOP/s fp16 dense on tensor cores.
The ridge point for fp32 is 67e12 / 3.35e12 = 20 FLOP/byte; depthwise convs (~2 FLOP/byte) are
far below it and judged by achieved GB/s.
"""

from __future__ import annotations

import triton
import triton.language as tl

# Activation codes (tl.constexpr arguments of every kernel).
NONE, RELU, RELU6, HSWISH, SILU, SIGMOID, HSIGMOID = 0, 1, 2, 3, 4, 5, 6
ACTIVATIONS = {
    "none": NONE,
    "relu": RELU,
    "relu6": RELU6,
    "hswish": HSWISH,
    "silu": SILU,
    "sigmoid": SIGMOID,
    "hsigmoid": HSIGMOID,
}

H100_HBM_BYTES_PER_S = 3.35e12
H100_FP32_FLOPS = 67e12


def act_code(act: str | int | None) -> int:
    """``"relu6"`` → 2; codes pass through; None → NONE."""
    if act is None:
        return NONE
    if isinstance(act, int):
        if act not in ACTIVATIONS.values():
            raise ValueError(f"unknown activation code {act}")
        return act
    try:
        return ACTIVATIONS[act]
    except KeyError:
        raise ValueError(f"unknown activation {act!r}; one of {sorted(ACTIVATIONS)}") from None


@triton.jit
def activation(x, ACT: tl.constexpr):
    """``x`` (fp32) through the activation with code ``ACT``."""
    if ACT == 1:
        x = tl.maximum(x, 0.0)
    elif ACT == 2:
        x = tl.minimum(tl.maximum(x, 0.0), 6.0)
    elif ACT == 3:
        x = x * tl.minimum(tl.maximum(x + 3.0, 0.0), 6.0) / 6.0
    elif ACT == 4:
        x = x * tl.sigmoid(x)
    elif ACT == 5:
        x = tl.sigmoid(x)
    elif ACT == 6:
        x = tl.minimum(tl.maximum(x + 3.0, 0.0), 6.0) / 6.0
    return x


def torch_activation(x, act: str | int | None):
    """The same activation on torch tensors (the tests' and benchmarks' reference)."""
    import torch.nn.functional as F

    code = act_code(act)
    return {
        NONE: lambda v: v,
        RELU: F.relu,
        RELU6: F.relu6,
        HSWISH: F.hardswish,
        SILU: F.silu,
        SIGMOID: lambda v: v.sigmoid(),
        HSIGMOID: F.hardsigmoid,
    }[code](x)


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def config_kwargs(config: triton.Config) -> tuple[dict, dict]:
    """(meta-parameters, compile options) of an autotune ``Config``."""
    options = {"num_warps": config.num_warps, "num_stages": config.num_stages}
    return dict(config.kwargs), options


def keep_layout(configs, named_args, **kwargs):
    """``early_config_prune``: keep the configs written for the call's memory layout."""
    channels_last = bool(kwargs.get("CHANNELS_LAST", named_args.get("CHANNELS_LAST", False)))
    kept = [c for c in configs if c.kwargs.get("LAYOUT_NHWC", channels_last) == channels_last]
    return [_strip_layout(c) for c in kept] or [_strip_layout(configs[0])]


def _strip_layout(config: triton.Config) -> triton.Config:
    kwargs = {k: v for k, v in config.kwargs.items() if k != "LAYOUT_NHWC"}
    return triton.Config(kwargs, num_warps=config.num_warps, num_stages=config.num_stages)


def layout_configs(configs, channels_last: bool) -> list[triton.Config]:
    """The configs of ``configs`` tagged for ``channels_last``, tag removed (embedding picks from
    these without a GPU to time them)."""
    return keep_layout(configs, {}, CHANNELS_LAST=channels_last)
