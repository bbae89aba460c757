"""What our operators compute (TE), in NHWC with channels innermost.

Channels-last puts the channel axis in the SIMD lanes: a depthwise conv then does full-width vector
multiply-adds with no gathers, and a pointwise conv is a plain GEMM over the channel axis. Block
names are the operators' identity: the schedule rules in ``schedules/`` recognise our operators by
them (``sepconv_dw``, ``sepconv_pw``, ``sepconv_conv``, ``sepconv_dw_act``), even after FuseOps has
merged epilogues (bias, activation, residual add) into the same PrimFunc; the names are defined
with those rules, in :mod:`sepconv.schedules.block_names`.

Weights layouts (chosen for the vector lanes, folded at compile time):
  depthwise ``[KH, KW, C·M]``   pointwise ``[O/B, C, B]``   dense conv ``[KH, KW, C, O]`` (HWIO)

The pointwise weights are packed into panels of ``B`` output channels (the GEMM micro-kernel's
width, :func:`sepconv.schedules.nhwc_tile.panel_width`): the ``C × B`` weights one register tile
reads over its whole reduction are then contiguous, so they stream through the hardware
prefetcher and stay in L1, where ``[C, O]`` puts each step's ``B`` weights ``O`` floats apart — a
new page every step for the 1024-channel layers.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from tvm import te, tirx

# The operators' identity; the rules that recognise them own the names.
from sepconv.schedules.block_names import CONV, DW, DW_ACT, PAD, PW, PW_CROP, USEFUL_CHANNELS


def pad_nhwc(
    x: te.Tensor, pad: tuple[int, int, int, int], fill: float = 0.0, layout: str = "NHWC"
) -> te.Tensor:
    """Pad H and W with ``fill`` (int8 operators pad with the zero point); ``layout`` says
    where they are (``NCHW``: the graph's input, read by the stem as the caller passes it)."""
    top, left, bottom, right = pad
    if not any(pad):
        return x
    hi, wi = layout.index("H"), layout.index("W")
    h, w = x.shape[hi], x.shape[wi]
    shape = list(x.shape)
    shape[hi], shape[wi] = h + top + bottom, w + left + right
    zero = tirx.const(fill, x.dtype)

    def padded(*idx):
        y, z = idx[hi], idx[wi]
        src = list(idx)
        src[hi], src[wi] = y - top, z - left
        inside = tirx.all(y >= top, y < h + top, z >= left, z < w + left)
        return tirx.if_then_else(inside, x[tuple(src)], zero)

    return te.compute(shape, padded, name=PAD)


def out_size(size, k, stride, pad_lo, pad_hi, dilation):
    return (size + pad_lo + pad_hi - dilation * (k - 1) - 1) // stride + 1


def depthwise_nhwc(
    x: te.Tensor,
    w: te.Tensor,
    stride: tuple[int, int],
    pad: tuple[int, int, int, int],
    dilation: tuple[int, int],
    multiplier: int = 1,
    name: str = DW,
) -> te.Tensor:
    """y[n,h,w,k] = Σ_{kh,kw} x[n, h·s+kh·d, w·s+kw·d, k // M] · W[kh, kw, k]."""
    n, h, wd, _ = x.shape
    kh_, kw_, k_out = w.shape
    xp = pad_nhwc(x, pad)
    oh = out_size(h, kh_, stride[0], pad[0], pad[2], dilation[0])
    ow = out_size(wd, kw_, stride[1], pad[1], pad[3], dilation[1])
    rh = te.reduce_axis((0, kh_), "kh")
    rw = te.reduce_axis((0, kw_), "kw")

    def channel(k):
        return k if multiplier == 1 else k // multiplier

    return te.compute(
        (n, oh, ow, k_out),
        lambda i, y, z, k: te.sum(
            xp[i, y * stride[0] + rh * dilation[0], z * stride[1] + rw * dilation[1], channel(k)]
            * w[rh, rw, k],
            axis=[rh, rw],
        ),
        name=name,
    )


def pack_pointwise(w_co: np.ndarray, panel: int, padded: int | None = None) -> np.ndarray:
    """``[C, O]`` weights as ``[P/B, C, B]`` panels of ``B = panel`` output channels; ``P`` is
    ``padded`` (≥ O, default O): the columns past O are zeros."""
    c, o = w_co.shape
    padded = o if padded is None else padded
    if padded < o or padded % panel:
        raise ValueError(f"panel width {panel} does not divide {padded} output channels")
    if padded > o:
        w_co = np.concatenate([w_co, np.zeros((c, padded - o), w_co.dtype)], axis=1)
    return np.ascontiguousarray(w_co.reshape(c, padded // panel, panel).transpose(1, 0, 2))


def pointwise_nhwc(
    x: te.Tensor, w: te.Tensor, channels: int | None = None, name: str = PW
) -> te.Tensor:
    """y[n,h,w,o] = Σ_c x[n,h,w,c] · W[o/B, c, o%B] — a GEMM over the channel axis, its
    weights in panels of B output channels (:func:`pack_pointwise`).

    With ``channels`` below the packed width, the GEMM runs on all packed (zero-padded)
    channels and a ``PW_CROP`` block returns the first ``channels``."""
    n, h, wd, c = x.shape
    rc = te.reduce_axis((0, c), "rc")
    return _packed_gemm(
        (n, h, wd), w, channels, lambda i, y, z, o, wt: te.sum(x[i, y, z, rc] * wt(rc, o), rc), name
    )


def linear_packed(
    x: te.Tensor, w: te.Tensor, channels: int | None = None, name: str = PW
) -> te.Tensor:
    """y[m,o] = Σ_k x[m,k] · W[o/B, k, o%B]: a linear layer, the pointwise GEMM on ``[M, K]``
    rows (the classifier), its weights packed (and ``channels`` cropped) like a pointwise
    conv's."""
    m, k = x.shape
    rk = te.reduce_axis((0, k), "rk")
    return _packed_gemm((m,), w, channels, lambda i, o, wt: te.sum(x[i, rk] * wt(rk, o), rk), name)


def _packed_gemm(rows, w: te.Tensor, channels: int | None, body, name: str) -> te.Tensor:
    panels, _, width = w.shape
    padded = int(panels) * int(width)
    channels = padded if channels is None else channels

    def weight(r, o):
        return w[o // width, r, o % width]

    y = te.compute(
        (*rows, panels * width),  # int64 dims, as Relax's own PrimFuncs have
        lambda *idx: body(*idx, weight),
        name=name,
        attrs={USEFUL_CHANNELS: channels} if channels < padded else None,
    )
    if channels == padded:
        return y
    return te.compute((*rows, tirx.IntImm("int64", channels)), lambda *i: y[i], name=PW_CROP)


def conv_nhwc(
    x: te.Tensor,
    w: te.Tensor,
    stride: tuple[int, int],
    pad: tuple[int, int, int, int],
    dilation: tuple[int, int],
    input_layout: str = "NHWC",
) -> te.Tensor:
    """Dense (groups = 1) conv, HWIO weights, NHWC out: the stem and any full conv.

    ``input_layout="NCHW"``: ``x`` is ``[N, C, H, W]``, read where a transpose to NHWC would
    otherwise copy it first (the stem reads the graph's input so; its few input channels are
    broadcast one value at a time either way, so the layout costs the kernel nothing)."""
    if input_layout == "NCHW":
        n, _, h, wd = x.shape
    else:
        n, h, wd, _ = x.shape
    kh_, kw_, c, o = w.shape
    xp = pad_nhwc(x, pad, layout=input_layout)
    oh = out_size(h, kh_, stride[0], pad[0], pad[2], dilation[0])
    ow = out_size(wd, kw_, stride[1], pad[1], pad[3], dilation[1])
    rh = te.reduce_axis((0, kh_), "kh")
    rw = te.reduce_axis((0, kw_), "kw")
    rc = te.reduce_axis((0, c), "rc")

    def pixel(i, y, z, ch):
        return xp[i, ch, y, z] if input_layout == "NCHW" else xp[i, y, z, ch]

    return te.compute(
        (n, oh, ow, o),
        lambda i, y, z, k: te.sum(
            pixel(i, y * stride[0] + rh * dilation[0], z * stride[1] + rw * dilation[1], rc)
            * w[rh, rw, rc, k],
            axis=[rh, rw, rc],
        ),
        name=CONV,
    )


Activation = Callable[[object], object]  # PrimExpr → PrimExpr


def fused_dw_pw_nhwc(
    x: te.Tensor,
    w_dw: te.Tensor,
    b_dw: te.Tensor,
    w_pw: te.Tensor,
    stride: tuple[int, int],
    pad: tuple[int, int, int, int],
    dilation: tuple[int, int],
    activation: Activation,
    channels: int | None = None,
) -> te.Tensor:
    """depthwise → + bias → activation → pointwise (``channels`` as in
    :func:`pointwise_nhwc`), as one operator.

    Bytes saved: the depthwise output (N·OH·OW·C floats) is never written to memory in full and
    read back; the schedule produces it one output row at a time into a cache-resident buffer
    that the pointwise GEMM consumes immediately.
    """
    dw = depthwise_nhwc(x, w_dw, stride, pad, dilation)
    act = te.compute(dw.shape, lambda i, y, z, k: activation(dw[i, y, z, k] + b_dw[k]), name=DW_ACT)
    return pointwise_nhwc(act, w_pw, channels)
