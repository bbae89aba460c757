"""Triton fused depthwise → pointwise block: dw conv + bias + act → 1×1 conv + bias + act
(+ residual), with the depthwise output kept on chip.

One program owns ``BLOCK_P`` output positions × ``BLOCK_CO`` output channels of one image. It
walks the input channels in chunks of ``BLOCK_CI``: computes the depthwise result for that chunk
(a ``BLOCK_P × BLOCK_CI`` tile, fp32, in registers — it never goes to memory), applies the
depthwise bias and activation, and multiplies it into the accumulator with ``tl.dot`` against
the ``BLOCK_CI × BLOCK_CO`` slice of the pointwise weights. The epilogue adds the pointwise bias,
the activation and the residual (MobileNetV2's skip connection) and stores the tile once.
fp32 dots use ``input_precision="ieee"`` (no TF32: the accuracy contract is fp32's); fp16
inputs use the tensor cores with fp32 accumulation.

**Bytes moved** (fp32, batch N, C in, CO out, H×W in, OH×OW out)::

    fused:     read x N·C·H·W·4 (+ re-reads from L2 when CO > BLOCK_CO), weights, residual
               N·CO·OH·OW·4 if any; write y N·CO·OH·OW·4
    separate:  the same, plus the depthwise output written and read back: 2·N·C·OH·OW·4
               (and, in eager PyTorch, two more round trips each for bias and activation)

For an expanded MobileNetV2 block (C = 6·CO) the intermediate is the largest tensor of the
block, so fusion removes about half of its DRAM traffic — the published 1.7–2.0× over separate
kernels comes from exactly this.

**Roofline**: 2·KH·KW·C + 2·C·CO FLOP per output position. With C=144, CO=24, 56×56, 3×3,
that is ~9.5k FLOP per position against ~(144·4 + 24·4) bytes ≈ 14 FLOP/byte — still below the
fp32 ridge (20 FLOP/byte on an H100), so the kernel is bandwidth-bound at ~3.35 TB/s; its ideal
time is the fused bytes above / 3.35 TB/s. The depthwise recomputation for each CO block
(⌈CO/BLOCK_CO⌉×) costs FLOPs and L2 reads, not DRAM bytes.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .triton_common import act_code, activation, keep_layout, layout_configs

CONFIGS = [
    triton.Config({"BLOCK_P": 64, "BLOCK_CO": 32, "BLOCK_CI": 16, "LAYOUT_NHWC": False},
                  num_warps=4),
    triton.Config({"BLOCK_P": 128, "BLOCK_CO": 32, "BLOCK_CI": 16, "LAYOUT_NHWC": False},
                  num_warps=4),
    triton.Config({"BLOCK_P": 64, "BLOCK_CO": 64, "BLOCK_CI": 32, "LAYOUT_NHWC": False},
                  num_warps=4),
    triton.Config({"BLOCK_P": 128, "BLOCK_CO": 64, "BLOCK_CI": 16, "LAYOUT_NHWC": False},
                  num_warps=8),
    triton.Config({"BLOCK_P": 32, "BLOCK_CO": 128, "BLOCK_CI": 32, "LAYOUT_NHWC": False},
                  num_warps=4),
    triton.Config({"BLOCK_P": 32, "BLOCK_CO": 32, "BLOCK_CI": 32, "LAYOUT_NHWC": True},
                  num_warps=4),
    triton.Config({"BLOCK_P": 64, "BLOCK_CO": 64, "BLOCK_CI": 32, "LAYOUT_NHWC": True},
                  num_warps=4),
    triton.Config({"BLOCK_P": 32, "BLOCK_CO": 128, "BLOCK_CI": 64, "LAYOUT_NHWC": True},
                  num_warps=8),
]  # fmt: skip


@triton.jit
def fused_dw_pw_kernel(
    x_ptr, wdw_ptr, bdw_ptr, wpw_ptr, bpw_ptr, r_ptr, y_ptr,
    C, H, W, OH, OW, CO,
    KH: tl.constexpr, KW: tl.constexpr, STRIDE: tl.constexpr,
    PAD_H: tl.constexpr, PAD_W: tl.constexpr, DIL: tl.constexpr,
    HAS_BDW: tl.constexpr, ACT_DW: tl.constexpr, HAS_BPW: tl.constexpr, ACT_PW: tl.constexpr,
    HAS_RES: tl.constexpr, CHANNELS_LAST: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_CO: tl.constexpr, BLOCK_CI: tl.constexpr,
):  # fmt: skip
    """y[n, o, p] = act_pw(Σ_c wpw[o, c] · act_dw(dw(x)[n, c, p] + bdw[c]) + bpw[o]) + r[n, o, p];
    wdw is (C, KH·KW), wpw (CO, C); grid (⌈OH·OW/BLOCK_P⌉, ⌈CO/BLOCK_CO⌉, N)."""
    pid_p = tl.program_id(0)
    pid_o = tl.program_id(1)
    n = tl.program_id(2).to(tl.int64)
    p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    o = pid_o * BLOCK_CO + tl.arange(0, BLOCK_CO)
    p_ok = p < OH * OW
    o_ok = o < CO
    oh = p // OW
    ow = p % OW
    x_img = x_ptr + n * C * H * W
    acc = tl.zeros((BLOCK_P, BLOCK_CO), dtype=tl.float32)
    for c0 in range(0, C, BLOCK_CI):
        c = c0 + tl.arange(0, BLOCK_CI)
        c_ok = c < C
        d = tl.zeros((BLOCK_P, BLOCK_CI), dtype=tl.float32)
        for kh in tl.static_range(KH):
            ih = oh * STRIDE - PAD_H + kh * DIL
            h_ok = p_ok & (ih >= 0) & (ih < H)
            for kw in tl.static_range(KW):
                iw = ow * STRIDE - PAD_W + kw * DIL
                ok = h_ok & (iw >= 0) & (iw < W)
                if CHANNELS_LAST:
                    offs = ((ih * W + iw) * C)[:, None] + c[None, :]
                else:
                    offs = (ih * W + iw)[:, None] + (c * (H * W))[None, :]
                xv = tl.load(x_img + offs, mask=ok[:, None] & c_ok[None, :], other=0.0)
                wv = tl.load(wdw_ptr + c * (KH * KW) + (kh * KW + kw), mask=c_ok, other=0.0)
                d += xv.to(tl.float32) * wv.to(tl.float32)[None, :]
        if HAS_BDW:
            d += tl.load(bdw_ptr + c, mask=c_ok, other=0.0).to(tl.float32)[None, :]
        d = activation(d, ACT_DW)
        d = tl.where(c_ok[None, :], d, 0.0)
        wt = tl.load(
            wpw_ptr + o[None, :] * C + c[:, None], mask=c_ok[:, None] & o_ok[None, :], other=0.0
        )
        if wpw_ptr.dtype.element_ty == tl.float32:
            acc += tl.dot(d, wt.to(tl.float32), input_precision="ieee")
        else:
            acc += tl.dot(d.to(wpw_ptr.dtype.element_ty), wt)
    if HAS_BPW:
        acc += tl.load(bpw_ptr + o, mask=o_ok, other=0.0).to(tl.float32)[None, :]
    acc = activation(acc, ACT_PW)
    if CHANNELS_LAST:
        y_offs = n * OH * OW * CO + p[:, None] * CO + o[None, :]
    else:
        y_offs = n * CO * OH * OW + o[None, :] * (OH * OW) + p[:, None]
    y_ok = p_ok[:, None] & o_ok[None, :]
    if HAS_RES:
        acc += tl.load(r_ptr + y_offs, mask=y_ok, other=0.0).to(tl.float32)
    tl.store(y_ptr + y_offs, acc.to(y_ptr.dtype.element_ty), mask=y_ok)


fused_dw_pw_autotuned = triton.autotune(
    configs=CONFIGS,
    key=["C", "CO", "OH", "OW", "KH", "STRIDE", "CHANNELS_LAST"],
    prune_configs_by={"early_config_prune": keep_layout},
)(fused_dw_pw_kernel)


def grid(n: int, co: int, oh: int, ow: int, meta: dict) -> tuple[int, int, int]:
    return (triton.cdiv(oh * ow, meta["BLOCK_P"]), triton.cdiv(co, meta["BLOCK_CO"]), n)


def pick_config(c: int, co: int, oh: int, ow: int, channels_last: bool) -> triton.Config:
    """A config for this shape without timing (see ``triton_depthwise.pick_config``): the first
    of the layout whose output tile is not mostly masked."""
    configs = layout_configs(CONFIGS, channels_last)
    for cfg in configs:
        bp, bo = cfg.kwargs["BLOCK_P"], cfg.kwargs["BLOCK_CO"]
        if bp <= max(32, 2 * oh * ow) and bo <= max(32, 2 * co):
            return cfg
    return configs[0]


def fused_dw_pw(
    x,
    w_dw,
    b_dw,
    w_pw,
    b_pw=None,
    stride: int = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int = 1,
    act_dw: str | int | None = None,
    act_pw: str | int | None = None,
    residual=None,
    config: triton.Config | None = None,
):
    """The fused block on torch tensors: ``x`` (N, C, H, W) contiguous or channels-last,
    ``w_dw`` (C, 1, KH, KW), ``w_pw`` (CO, C, 1, 1); returns (N, CO, OH, OW) in x's format.
    ``config=None`` autotunes (GPU); a ``triton.Config`` runs that one."""
    import torch

    from .triton_depthwise import out_size

    n, c, h, w = x.shape
    kh, kw = int(w_dw.shape[2]), int(w_dw.shape[3])
    co = int(w_pw.shape[0])
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    oh = out_size(h, kh, stride, ph, ph, dilation)
    ow = out_size(w, kw, stride, pw, pw, dilation)
    channels_last = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    if not channels_last:
        x = x.contiguous()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    y = torch.empty((n, co, oh, ow), device=x.device, dtype=x.dtype, memory_format=fmt)
    wd = w_dw.reshape(c, kh * kw).contiguous()
    wp = w_pw.reshape(co, c).contiguous()
    if residual is not None:
        residual = residual.contiguous(memory_format=fmt)
        if residual.shape != y.shape:
            raise ValueError(f"residual {tuple(residual.shape)} != output {tuple(y.shape)}")
    args = (
        x, wd, b_dw if b_dw is not None else wd, wp, b_pw if b_pw is not None else wp,
        residual if residual is not None else y, y, c, h, w, oh, ow, co,
    )  # fmt: skip
    meta = dict(
        KH=kh, KW=kw, STRIDE=stride, PAD_H=ph, PAD_W=pw, DIL=dilation,
        HAS_BDW=b_dw is not None, ACT_DW=act_code(act_dw), HAS_BPW=b_pw is not None,
        ACT_PW=act_code(act_pw), HAS_RES=residual is not None, CHANNELS_LAST=channels_last,
    )  # fmt: skip
    if config is None:
        fused_dw_pw_autotuned[lambda m: grid(n, co, oh, ow, m)](*args, **meta)
    else:
        kwargs = {k: v for k, v in config.kwargs.items() if k != "LAYOUT_NHWC"}
        fused_dw_pw_kernel[grid(n, co, oh, ow, kwargs)](
            *args, **meta, **kwargs, num_warps=config.num_warps, num_stages=config.num_stages
        )
    return y


def bytes_moved(n, c, co, h, w, oh, ow, kh, kw, itemsize=4, residual=False) -> int:
    """DRAM bytes of the fused call (module docstring)."""
    acts = n * c * h * w + n * co * oh * ow * (2 if residual else 1)
    weights = c * (kh * kw + 1) + co * (c + 1)
    return itemsize * (acts + weights)


def bytes_moved_separate(n, c, co, h, w, oh, ow, kh, kw, itemsize=4, residual=False) -> int:
    """DRAM bytes of the same block as two kernels: the dw output written and read back."""
    return bytes_moved(n, c, co, h, w, oh, ow, kh, kw, itemsize, residual) + (
        2 * itemsize * n * c * oh * ow
    )


def flops(n, c, co, oh, ow, kh, kw) -> int:
    return 2 * n * oh * ow * (c * kh * kw + c * co)


__all__ = [
    "CONFIGS",
    "bytes_moved",
    "bytes_moved_separate",
    "flops",
    "fused_dw_pw",
    "fused_dw_pw_autotuned",
    "fused_dw_pw_kernel",
    "grid",
    "pick_config",
]
