"""What the integer operators compute (TE), NHWC, channels innermost — the int8 twins of
:mod:`sepconv.compiler.sepconv_ops`, with the same block names, so the same schedule rules
recognise them.

One quantized unit is one operator (PT2E's ``dequantize → conv → [act] [+ residual] → quantize``):

    acc[c]  = Σ xq_pad · wq  −  zx · Σ wq[c]          int32, exact; the pad value is zx (the
                                                      quantized 0), so the correction is exact
                                                      at the borders too
    y       = act(acc · (sx·sw[c]) + b[c])            float32, in registers
    y       = act2(y + sr · (rq − zr))                residual, when the unit has one
    out     = clip(round(y · (1/sy)) + zy)            round half to even, as torch's quantize

The feature maps in memory are 8-bit; float exists only inside the epilogue.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from tvm import te, tirx

from sepconv.compiler.sepconv_ops import out_size, pad_nhwc
from sepconv.schedules.block_names import CONV, DW, PAD, PW, PW_CROP, USEFUL_MACS

I32, F32 = "int32", "float32"
QRANGE = {"uint8": (0, 255), "int8": (-128, 127)}

Activation = Callable[[object], object]  # PrimExpr → PrimExpr


@dataclass(frozen=True)
class QParams:
    """A per-tensor affine quantization: real = scale · (q − zero_point)."""

    scale: float
    zero_point: int
    dtype: str  # "uint8" | "int8"
    lo: int | None = None  # a clamp narrower than the dtype's range (PT2E reduce_range)
    hi: int | None = None

    @property
    def bounds(self) -> tuple[int, int]:
        lo, hi = QRANGE[self.dtype]
        return (
            lo if self.lo is None else max(lo, self.lo),
            hi if self.hi is None else min(hi, self.hi),
        )


def _i32(v):
    return v.astype(I32)


# float32 holds every integer below 2**24 exactly, and IEEE addition of exact integers whose sum
# is below it is exact, in any order
FLOAT_EXACT_BOUND = 2**24


def float_exact(terms: int, x_max_abs: int, zx: int, w_max_abs: int) -> bool:
    """Whether a sum of ``terms`` 8-bit products (a conv's reduction: C, or KH·KW, or
    KH·KW·C), its zero-point correction and their difference are all integers below 2**24:
    then an fp32 FMA accumulation gives the int32 result bit for bit, on the fp32 kernels'
    vector FMAs instead of int32 vector multiplies (where no dot instruction applies)."""
    worst = terms * w_max_abs * max(x_max_abs, abs(zx), x_max_abs + abs(zx))
    return worst < FLOAT_EXACT_BOUND


def accumulate(
    xq: te.Tensor,
    wq: te.Tensor,
    stride: tuple[int, int],
    pad: tuple[int, int, int, int],
    dilation: tuple[int, int],
    x_zero_point: int,
    depthwise: bool,
) -> te.Tensor:
    """Σ xq_pad · wq in int32 (no zero-point correction). Weights: depthwise ``[KH, KW, C]``,
    pointwise ``[C, O]``, dense ``[KH, KW, C, O]``. Weights in float32 make it an fp32 sum
    (exact within :func:`float_exact`'s bound)."""
    n, h, wd, c = xq.shape
    acc = F32 if str(wq.dtype) == F32 else I32

    def mul(x, w):
        return x.astype(acc) * w.astype(acc)

    if len(wq.shape) == 2:  # pointwise
        rc = te.reduce_axis((0, c), "rc")
        return te.compute(
            (n, h, wd, wq.shape[1]),
            lambda i, y, z, o: te.sum(mul(xq[i, y, z, rc], wq[rc, o]), axis=rc),
            name=PW,
        )
    kh_, kw_ = wq.shape[0], wq.shape[1]
    xp = pad_nhwc(xq, pad, x_zero_point)
    oh = out_size(h, kh_, stride[0], pad[0], pad[2], dilation[0])
    ow = out_size(wd, kw_, stride[1], pad[1], pad[3], dilation[1])
    rh = te.reduce_axis((0, kh_), "kh")
    rw = te.reduce_axis((0, kw_), "kw")

    def at(i, y, z, k):
        return xp[i, y * stride[0] + rh * dilation[0], z * stride[1] + rw * dilation[1], k]

    if depthwise:
        return te.compute(
            (n, oh, ow, wq.shape[2]),
            lambda i, y, z, k: te.sum(mul(at(i, y, z, k), wq[rh, rw, k]), axis=[rh, rw]),
            name=DW,
        )
    rc = te.reduce_axis((0, wq.shape[2]), "rc")
    return te.compute(
        (n, oh, ow, wq.shape[3]),
        lambda i, y, z, k: te.sum(mul(at(i, y, z, rc), wq[rh, rw, rc, k]), axis=[rh, rw, rc]),
        name=CONV,
    )


def pointwise_packed(
    xq: te.Tensor, wp: te.Tensor, channels: int | None = None, tail: te.Tensor | None = None
) -> te.Tensor:
    """Σ_c xq[p, c] · W[c, o] with W packed as ``[O/L, C/4, L, 4]``: the dot intrinsic's panel
    (4 input channels × L output channels contiguous, :mod:`sepconv.schedules.int8_intrinsics`).

    Shapes the panel does not divide (ShuffleNet's 58, 116, 232 channels; a 1000-class
    classifier) keep the dot for the whole panels (:func:`pack_pointwise`): the ``PW`` block
    sums the first 4·⌊C/4⌋ input channels over all packed (zero-padded) output channels, and a
    ``PW_CROP`` block — inlined into the epilogue by the rule — adds the ≤ 3 remaining input
    channels (``tail``: ``[C mod 4, ⌈O/L⌉·L]``) and keeps the first ``channels`` outputs."""
    n, h, wd, _ = xq.shape  # int64 dims, as the placeholders': FuseTIR needs them to agree
    c = int(xq.shape[3])
    lanes = int(wp.shape[2])
    padded = int(wp.shape[0]) * lanes
    channels = padded if channels is None else channels
    whole = int(wp.shape[1]) * 4
    rc = te.reduce_axis((0, tirx.IntImm("int64", whole)), "rc")
    acc = te.compute(
        (n, h, wd, wp.shape[0] * wp.shape[2]),
        lambda i, y, z, o: te.sum(
            _i32(xq[i, y, z, rc]) * _i32(wp[o // lanes, rc // 4, o % lanes, rc % 4]), axis=rc
        ),
        name=PW,
    )
    if tail is None and channels == padded:
        return acc

    def crop(i, y, z, o):
        v = acc[i, y, z, o]
        for t in range(c - whole):
            v = v + _i32(xq[i, y, z, whole + t]) * _i32(tail[t, o])
        return v

    return te.compute((n, h, wd, tirx.IntImm("int64", channels)), crop, name=PW_CROP)


def pack_pointwise(w_co: np.ndarray, lanes: int) -> tuple[np.ndarray, np.ndarray | None]:
    """``[C, O]`` int8 weights → the panels ``[⌈O/L⌉, ⌊C/4⌋, L, 4]`` (output channels
    zero-padded to whole panels) and the ``[C mod 4, ⌈O/L⌉·L]`` rows that do not fill a block of 4
    (None when 4 divides C): :func:`pointwise_packed`."""
    c, o = w_co.shape
    whole, o_pad = c - c % 4, -(-o // lanes) * lanes
    w = np.zeros((whole, o_pad), np.int8)
    w[:, :o] = w_co[:whole]
    panels = w.reshape(whole // 4, 4, o_pad // lanes, lanes).transpose(2, 0, 3, 1)
    tail = np.zeros((c % 4, o_pad), np.int8)
    tail[:, :o] = w_co[whole:]
    return np.ascontiguousarray(panels), tail if c % 4 else None


def window_row(kernel_w: int, channels: int) -> int:
    """Bytes of one kernel row of a dense conv's window in the dot's reduction: the KW·C
    contiguous NHWC bytes, rounded up to whole blocks of 4 (:func:`conv_packed`)."""
    return -(-kernel_w * channels // 4) * 4


def conv_packed(
    xflat: te.Tensor,
    wp: te.Tensor,
    in_shape: tuple[int, int, int, int],
    kernel: tuple[int, int],
    stride: tuple[int, int],
    pad: tuple[int, int, int, int],
    x_zero_point: int,
    channels: int,
) -> te.Tensor:
    """A dense conv (the stem: 3 input channels) as a GEMM on the dot instruction.

    In NHWC one kernel row of the window, KW pixels × C channels, is KW·C contiguous bytes of
    the padded input row. The reduction runs over KH rows × :func:`window_row` bytes — 3 × 12
    for a 3×3 stem, whose 27 products would otherwise give the dot's blocks of 4 no channel
    axis to run along —, the bytes past KW·C meeting zero weights (:func:`pack_conv`).

    ``xflat`` is the NHWC input viewed flat, ``[N, H, W·C]``. The padded rows (``PAD``, with
    the zero point, and on the right as many more pixels as the last window's extra bytes
    reach) are a real buffer, since the dot broadcasts 4 bytes of it; flat, the padding is a
    condition on the byte index alone and each row's interior a contiguous copy."""
    n, h, w, c = in_shape
    kh, kw = kernel
    top, left, bottom, right = pad
    row = window_row(kw, c)
    oh = out_size(h, kh, stride[0], top, bottom, 1)
    ow = out_size(w, kw, stride[1], left, right, 1)
    width = max(w + left + right, (ow - 1) * stride[1] + -(-row // c))
    i64 = lambda v: tirx.IntImm("int64", v)  # noqa: E731 — Relax's dims (FuseTIR)
    zero = tirx.const(x_zero_point, xflat.dtype)

    def padded(i, y, f):
        inside = tirx.all(y >= top, y < h + top, f >= left * c, f < (w + left) * c)
        return tirx.if_then_else(inside, xflat[i, y - top, f - left * c], zero)

    rows = te.compute((i64(n), i64(h + top + bottom), i64(width * c)), padded, name=PAD)
    rh = te.reduce_axis((0, i64(kh)), "kh")
    rj = te.reduce_axis((0, i64(row)), "rj")
    lanes = int(wp.shape[2])
    acc = te.compute(
        (i64(n), i64(oh), i64(ow), wp.shape[0] * wp.shape[2]),
        lambda i, y, z, o: te.sum(
            _i32(rows[i, y * stride[0] + rh, z * (stride[1] * c) + rj])
            * _i32(wp[o // lanes, rh * (row // 4) + rj // 4, o % lanes, rj % 4]),
            axis=[rh, rj],
        ),
        name=CONV,
        attrs={USEFUL_MACS: n * oh * ow * channels * kh * kw * c},
    )
    if channels == int(wp.shape[0]) * lanes:
        return acc
    return te.compute((i64(n), i64(oh), i64(ow), i64(channels)), lambda *i: acc[i], name=PW_CROP)


def pack_conv(w_hwio: np.ndarray, lanes: int) -> np.ndarray:
    """``[KH, KW, C, O]`` int8 weights → the panels of :func:`conv_packed`: each kernel row's
    KW·C weights zero-padded to :func:`window_row`, then packed as a pointwise conv's
    ``[KH·row, O]`` (:func:`pack_pointwise`)."""
    kh, kw, c, o = w_hwio.shape
    row = window_row(kw, c)
    w = np.zeros((kh, row, o), np.int8)
    w[:, : kw * c] = w_hwio.reshape(kh, kw * c, o)
    panels, tail = pack_pointwise(w.reshape(kh * row, o), lanes)
    assert tail is None  # whole blocks of 4 by construction
    return panels


def quantize_expr(y, out: QParams):
    """clip(round(y · (1/s)) + z): torch's quantize_per_tensor (multiply by the inverse).

    Clamped first, to the bounds less z (integers, so clamping and rounding commute), then
    rounded and converted in one instruction (``llvm.lrint``: ``vcvtps2dq`` on x86, in the
    default round-to-nearest-even mode, torch's half to even), then z added as an integer."""
    lo, hi = out.bounds
    z = out.zero_point
    t = y * tirx.const(float(1.0 / out.scale), F32)
    t = tirx.max(tirx.min(t, tirx.const(float(hi - z), F32)), tirx.const(float(lo - z), F32))
    q = tirx.call_llvm_pure_intrin(I32, "llvm.lrint", t)
    if z:
        q = q + tirx.const(z, I32)
    return q.astype(out.dtype)


def fold_clamp(out: QParams, lo: float, hi: float) -> QParams | None:
    """``out`` with an activation's clamp to [lo, hi] (ReLU, ReLU6) moved into its integer
    bounds, or None where that would not give the same bytes.

    Quantizing, g(t) = round(t · (1/s)) + z, never decreases as t grows (a float32 product
    by a positive constant and rounding both keep order), so g(clamp(t, lo, hi)) =
    clamp(g(t), g(lo), g(hi)) exactly: the epilogue's two float compares become the
    clamp it does anyway."""
    inv = np.float32(1.0 / out.scale)  # as quantize_expr's constant

    def g(t: float) -> int:
        return int(np.round(np.float32(t) * inv)) + out.zero_point  # half to even, as the kernel

    q_lo, q_hi = out.bounds
    new_lo = q_lo if lo == -float("inf") else max(q_lo, g(lo))
    new_hi = q_hi if hi == float("inf") else min(q_hi, g(hi))
    if not inv > 0 or new_lo > new_hi:
        return None
    return QParams(out.scale, out.zero_point, out.dtype, new_lo, new_hi)


def dequantize_expr(q, p: QParams):
    """(q − z) · s in float32, as torch's dequantize_per_tensor."""
    return (q.astype(F32) - tirx.const(float(p.zero_point), F32)) * tirx.const(float(p.scale), F32)


def gate(xq: te.Tensor, g: te.Tensor, x: QParams, out: QParams) -> te.Tensor:
    """Squeeze-and-excitation's gate on an 8-bit map: q(dequantize(xq) · g[n, c]), ``g`` float32
    [N, C] — one pass over the map, 8-bit in and out."""
    return te.compute(
        xq.shape,
        lambda i, y, z, k: quantize_expr(dequantize_expr(xq[i, y, z, k], x) * g[i, k], out),
        name="sepconv_qgate",
    )


def mean_pool(xq: te.Tensor, x: QParams, out: QParams) -> te.Tensor:
    """Global average pool of an 8-bit map → [N, 1, 1, C] 8-bit, exactly: S = Σ (xq − zx) in
    int32; with the input's scale on the output (PT2E shares it), out = round(S / (H·W)) + zy,
    the exact mean rounded half to even (S / (H·W) in float32 is exact on a tie and never
    lands on one otherwise). The reference sums dequantized floats in torch's own order, so
    on a tie its float noise decides and the two may be one step apart there — only there."""
    n, h, w, c = xq.shape
    rh, rw = te.reduce_axis((0, h), "rh"), te.reduce_axis((0, w), "rw")
    one = tirx.IntImm("int64", 1)  # int64 dims, as Relax's own PrimFuncs have (FuseTIR)
    total = te.compute(
        (n, one, one, c),
        lambda i, _y, _z, k: te.sum(
            _i32(xq[i, rh, rw, k]) - tirx.const(x.zero_point, I32), axis=[rh, rw]
        ),
        name="sepconv_qsum",
    )
    area = tirx.const(float(int(h) * int(w)), F32)
    if np.float32(x.scale) == np.float32(out.scale):  # the mean itself, quantized at scale 1

        def mean(v):
            return v / area

        out = QParams(1.0, out.zero_point, out.dtype, out.lo, out.hi)
    else:
        scale = tirx.const(float(x.scale), F32)

        def mean(v):
            return v * scale / area

    return te.compute(
        total.shape,
        lambda *i: quantize_expr(mean(total(*i).astype(F32)), out),
        name="sepconv_qmean",
    )


def max_pool(xq: te.Tensor, x: QParams, out: QParams, size, stride, padding) -> te.Tensor:
    """A max pool on an 8-bit NHWC map, exactly: dequantizing is increasing, so the max of the
    dequantized window is the dequantized max of the 8-bit one; the padding holds the dtype's
    lowest value, which no window's real maximum is below. With the input's parameters on the
    output (PT2E shares them) the 8-bit max is the result; else it is requantized."""
    n, h, w, c = xq.shape
    lo = QRANGE[x.dtype][0]
    xp = pad_nhwc(xq, padding, lo)
    oh = out_size(h, size[0], stride[0], padding[0], padding[2], 1)
    ow = out_size(w, size[1], stride[1], padding[1], padding[3], 1)
    rh, rw = te.reduce_axis((0, size[0]), "rh"), te.reduce_axis((0, size[1]), "rw")
    peak = te.compute(
        (n, oh, ow, c),
        lambda i, y, z, k: te.max(xp[i, y * stride[0] + rh, z * stride[1] + rw, k], axis=[rh, rw]),
        name="sepconv_qmax",
    )
    same = np.float32(x.scale) == np.float32(out.scale) and x.zero_point == out.zero_point
    if same and x.dtype == out.dtype:
        lo_out, hi_out = out.bounds

        def body(*i):
            v = peak(*i)
            return tirx.max(tirx.min(v, tirx.const(hi_out, x.dtype)), tirx.const(lo_out, x.dtype))

    else:

        def body(*i):
            return quantize_expr(dequantize_expr(peak(*i), x), out)

    return te.compute(peak.shape, body, name="sepconv_qmaxpool")


def requantize(
    acc: te.Tensor,
    correction: te.Tensor,
    scale: te.Tensor,
    bias: te.Tensor,
    act: Activation,
    out: QParams | None,
    residual: tuple[te.Tensor, QParams] | None = None,
    act2: Activation | None = None,
    name: str = "sepconv_requantize",
) -> te.Tensor:
    """The epilogue: int32 accumulator → float in registers → 8-bit output (see module doc);
    ``out=None`` leaves the result in float32 (a classifier's logits). A depthwise unit's is
    named ``DW_ACT``: in a fused depthwise → pointwise operator it is the map between the two."""

    def body(i, y, z, k):
        v = acc[i, y, z, k] - correction[k]  # int32, or float32 within float_exact's bound
        v = act(v.astype(F32) * scale[k] + bias[k])
        if residual is not None:
            rq, rp = residual
            r = dequantize_expr(rq[i, y, z, k], rp)
            v = (act2 or (lambda e: e))(v + r)
        return v if out is None else quantize_expr(v, out)

    return te.compute(acc.shape, body, name=name)
