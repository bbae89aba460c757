"""Triton depthwise conv2d (+ bias + activation), NCHW or channels-last, any K/stride/padding.

One program computes a tile of ``BLOCK_P`` output positions × ``BLOCK_C`` channels of one
image: for every tap (``KH·KW``, unrolled) it loads the shifted input tile (zero outside the
image, so padding costs no memory), multiplies by the tap's per-channel weight and accumulates
in fp32; bias and activation are applied in registers and the tile is stored once. NCHW tiles
run along the spatial axis (contiguous there), channels-last tiles along channels.

**Bytes moved** (fp32, batch N, C channels, H×W in, OH×OW out)::

    read  x   N·C·H·W·4        (each input element from DRAM once; the KH·KW-fold reuse
                                between neighbouring taps and tiles is served by L1/L2)
    read  w   C·(KH·KW + 1)·4  (weights + bias, negligible)
    write y   N·C·OH·OW·4

**Roofline**: 2·KH·KW FLOP per output element against 4·(H·W/(OH·OW) + 1) bytes, i.e. 2.25
FLOP/byte for 3×3 stride 1 and ~0.9 FLOP/byte for 3×3 stride 2 — 10–20× below the H100's fp32
ridge (67 TFLOP/s / 3.35 TB/s = 20 FLOP/byte). The kernel is memory-bound: its limit is the
bytes above divided by ~3.35 TB/s (e.g. C=144, 56×56, stride 1, batch 1: 3.6 MB → ≈1.1 µs of
DRAM time, so at batch 1 launch latency dominates and CUDA graphs matter more than the
kernel). Against torch/cuDNN the saving is the fused epilogue: bias + activation in eager
PyTorch read and write the output twice more (3·N·C·OH·OW·4 bytes saved with BN folded).
"""

from __future__ import annotations

import triton
import triton.language as tl

from .triton_common import act_code, activation, keep_layout, layout_configs

# LAYOUT_NHWC tags which memory layout a config is written for (pruned per call).
CONFIGS = [
    # NCHW: long spatial runs (contiguous), a few channels per program.
    triton.Config({"BLOCK_P": 128, "BLOCK_C": 4, "LAYOUT_NHWC": False}, num_warps=4),
    triton.Config({"BLOCK_P": 256, "BLOCK_C": 2, "LAYOUT_NHWC": False}, num_warps=4),
    triton.Config({"BLOCK_P": 256, "BLOCK_C": 4, "LAYOUT_NHWC": False}, num_warps=8),
    triton.Config({"BLOCK_P": 64, "BLOCK_C": 8, "LAYOUT_NHWC": False}, num_warps=4),
    triton.Config({"BLOCK_P": 512, "BLOCK_C": 1, "LAYOUT_NHWC": False}, num_warps=4),
    # Channels-last: channels contiguous; a short spatial run per program.
    triton.Config({"BLOCK_P": 16, "BLOCK_C": 64, "LAYOUT_NHWC": True}, num_warps=4),
    triton.Config({"BLOCK_P": 8, "BLOCK_C": 128, "LAYOUT_NHWC": True}, num_warps=4),
    triton.Config({"BLOCK_P": 32, "BLOCK_C": 32, "LAYOUT_NHWC": True}, num_warps=4),
    triton.Config({"BLOCK_P": 32, "BLOCK_C": 64, "LAYOUT_NHWC": True}, num_warps=8),
]


@triton.jit
def depthwise_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr,
    C, H, W, OH, OW,
    KH: tl.constexpr, KW: tl.constexpr, STRIDE: tl.constexpr,
    PAD_H: tl.constexpr, PAD_W: tl.constexpr, DIL: tl.constexpr,
    HAS_BIAS: tl.constexpr, ACT: tl.constexpr, CHANNELS_LAST: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """y[n, c, p] = act(Σ_taps x[n, c, p·s + tap] · w[c, tap] + b[c]); x, y contiguous in NCHW or
    NHWC (``CHANNELS_LAST``); w is (C, KH·KW); grid (⌈OH·OW/BLOCK_P⌉, ⌈C/BLOCK_C⌉, N)."""
    pid_p = tl.program_id(0)
    pid_c = tl.program_id(1)
    n = tl.program_id(2).to(tl.int64)
    p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    p_ok = p < OH * OW
    c_ok = c < C
    oh = p // OW
    ow = p % OW
    if CHANNELS_LAST:
        x_img = x_ptr + n * H * W * C + c[None, :]
    else:
        x_img = x_ptr + n * C * H * W + c[None, :] * (H * W)
    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    for kh in tl.static_range(KH):
        ih = oh * STRIDE - PAD_H + kh * DIL
        h_ok = p_ok & (ih >= 0) & (ih < H)
        for kw in tl.static_range(KW):
            iw = ow * STRIDE - PAD_W + kw * DIL
            ok = h_ok & (iw >= 0) & (iw < W)
            if CHANNELS_LAST:
                offs = (ih * W + iw) * C
            else:
                offs = ih * W + iw
            xv = tl.load(x_img + offs[:, None], mask=ok[:, None] & c_ok[None, :], other=0.0)
            wv = tl.load(w_ptr + c * (KH * KW) + (kh * KW + kw), mask=c_ok, other=0.0)
            acc += xv.to(tl.float32) * wv.to(tl.float32)[None, :]
    if HAS_BIAS:
        acc += tl.load(b_ptr + c, mask=c_ok, other=0.0).to(tl.float32)[None, :]
    acc = activation(acc, ACT)
    if CHANNELS_LAST:
        y_offs = n * OH * OW * C + p[:, None] * C + c[None, :]
    else:
        y_offs = n * C * OH * OW + c[None, :] * (OH * OW) + p[:, None]
    tl.store(y_ptr + y_offs, acc.to(y_ptr.dtype.element_ty), mask=p_ok[:, None] & c_ok[None, :])


depthwise_autotuned = triton.autotune(
    configs=CONFIGS,
    key=["C", "OH", "OW", "KH", "STRIDE", "CHANNELS_LAST"],
    prune_configs_by={"early_config_prune": keep_layout},
)(depthwise_kernel)


def out_size(size: int, k: int, stride: int, pad_lo: int, pad_hi: int, dil: int) -> int:
    return (size + pad_lo + pad_hi - dil * (k - 1) - 1) // stride + 1


def grid(n: int, c: int, oh: int, ow: int, meta: dict) -> tuple[int, int, int]:
    return (triton.cdiv(oh * ow, meta["BLOCK_P"]), triton.cdiv(c, meta["BLOCK_C"]), n)


def pick_config(c: int, oh: int, ow: int, channels_last: bool) -> triton.Config:
    """A config for this shape without timing anything (embedding at build time, where there may
    be no GPU): the first config of the layout whose tile is not mostly masked."""
    configs = layout_configs(CONFIGS, channels_last)
    for cfg in configs:
        bp, bc = cfg.kwargs["BLOCK_P"], cfg.kwargs["BLOCK_C"]
        if bp <= max(16, 2 * oh * ow) and bc <= max(1, 2 * c):
            return cfg
    return min(configs, key=lambda cfg: cfg.kwargs["BLOCK_P"] * cfg.kwargs["BLOCK_C"])


def depthwise_conv2d(
    x,
    weight,
    bias=None,
    stride: int = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int = 1,
    act: str | int | None = None,
    config: triton.Config | None = None,
):
    """Depthwise conv2d of a torch tensor ``x`` (N, C, H, W) — contiguous or channels-last — with
    ``weight`` (C, 1, KH, KW); returns y in the same memory format.

    ``config=None`` autotunes (on a GPU); a ``triton.Config`` runs exactly that one (the tests
    pin configs under ``TRITON_INTERPRET=1``).
    """
    import torch

    n, c, h, w = x.shape
    kh, kw = int(weight.shape[2]), int(weight.shape[3])
    if weight.shape[0] != c or weight.shape[1] != 1:
        raise ValueError(f"weight {tuple(weight.shape)} is not depthwise for {c} channels")
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    oh = out_size(h, kh, stride, ph, ph, dilation)
    ow = out_size(w, kw, stride, pw, pw, dilation)
    channels_last = (
        x.dim() == 4
        and not x.is_contiguous()
        and x.is_contiguous(memory_format=torch.channels_last)
    )
    if not channels_last:
        x = x.contiguous()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    y = torch.empty((n, c, oh, ow), device=x.device, dtype=x.dtype, memory_format=fmt)
    w2 = weight.reshape(c, kh * kw).contiguous()
    b = bias.contiguous() if bias is not None else w2  # any pointer; unused without HAS_BIAS
    args = (x, w2, b, y, c, h, w, oh, ow)
    meta = dict(
        KH=kh, KW=kw, STRIDE=stride, PAD_H=ph, PAD_W=pw, DIL=dilation,
        HAS_BIAS=bias is not None, ACT=act_code(act), CHANNELS_LAST=channels_last,
    )  # fmt: skip
    if config is None:
        depthwise_autotuned[lambda m: grid(n, c, oh, ow, m)](*args, **meta)
    else:
        kwargs = {k: v for k, v in config.kwargs.items() if k != "LAYOUT_NHWC"}
        depthwise_kernel[grid(n, c, oh, ow, kwargs)](
            *args, **meta, **kwargs, num_warps=config.num_warps, num_stages=config.num_stages
        )
    return y


def bytes_moved(n, c, h, w, oh, ow, kh, kw, itemsize: int = 4, bias: bool = True) -> int:
    """DRAM bytes of one call, as in the module docstring (the benchmark divides by time)."""
    return itemsize * (n * c * h * w + n * c * oh * ow + c * (kh * kw + int(bias)))


def flops(n, c, oh, ow, kh, kw) -> int:
    return 2 * n * c * oh * ow * kh * kw


__all__ = [
    "CONFIGS",
    "bytes_moved",
    "depthwise_autotuned",
    "depthwise_conv2d",
    "depthwise_kernel",
    "flops",
    "grid",
    "out_size",
    "pick_config",
]
