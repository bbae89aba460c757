"""The patterns that recognise depthwise-separable structure, in one place for every backend.

Both graph rewrites match through this file: the CPU one (:mod:`sepconv.compiler.separable`:
NHWC after ConvertLayout, ``rewrite_call``) and the CUDA one (:mod:`sepconv.compiler.triton_ops`:
NCHW, :func:`find_chains` over the bindings). A pattern says what the structure *is*; the
backend's rewrite says what it can *run* (layouts, dtypes, channel multipliers, which activations
its kernels have) and declines the rest — so a new backend (int8 next) writes a rewrite, not a
matcher. All patterns are ``tvm.relax.dpl``::

    ConvPattern         conv2d(x, W) [+ b]                       W, b constants
    ActivationPattern   ReLU | ReLU6 / clamp | h-swish | SiLU | identity
    GatePattern         sigmoid | hard-sigmoid
    DepthwisePattern    dw conv [+ b] [→ act]
    SeparablePattern    dw conv [+ b] → act → pw conv [+ b] [→ act] [+ residual]
    SEPattern           x · gate(conv(act(conv(mean_hw(x)) + b1)) + b2)
    QuantizedConvPattern  quantize(act2(act(conv(dequantize(xq), dequantize(Wq)) + b)
                                   [+ dequantize(rq)]))   — PT2E's quantized unit (int8)
    normalize_clip      clip → maximum / minimum (the one clip-normalisation pass)

Every spelling the importers write is an alternative of the pattern, not a second matcher:
torch.export's ``clip`` (ReLU6 as one or two), the max/min form after :func:`normalize_clip` and
``ToMixedPrecision``, constants as ``astype(constant)`` in fp16 graphs, h-swish as
``b · relu6(b + 3) / 6`` and as the ONNX frontend's ``b · (relu6(b + 3) / 6)``, SiLU as
``b · sigmoid(b)`` either way round.

Patterns are layout-agnostic: a conv is any ``relax.nn.conv2d``, and its layouts are read from
the call into :class:`ConvParams` when a match is read into a record (``read(m)``), so the same
pattern serves the NHWC and the NCHW graph. A pattern matches structure only; whether a chain's
intermediate values have users outside it is a question about the graph, answered by
:meth:`Bindings.claim` (a chain taken with an outside user would be computed twice).
"""

from __future__ import annotations

import functools
import operator
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import tvm
from tvm import relax
from tvm.relax.dpl import CallPattern, DFPattern, is_const, is_op, rewrite_call, wildcard

INF = float("inf")
KINDS = ("none", "relu", "relu6", "clamp", "hswish", "silu")  # Act.kind
GATES = ("sigmoid", "hsigmoid")


# ---------------------------------------------------------------------------------------------
# Reading values


def scalar(expr: Any) -> float | None:
    """A scalar constant, PrimValue, ``astype(constant)`` or number as float; None otherwise."""
    v = expr
    if _is_op(v, "relax.astype"):
        v = v.args[0]
    for _ in range(3):
        if isinstance(v, (int, float)):
            return float(v)
        if hasattr(v, "numpy"):
            arr = v.numpy()
            return float(arr.reshape(-1)[0]) if arr.size == 1 else None
        if not hasattr(v, "value"):
            return None
        v = v.value
    return float(v) if isinstance(v, (int, float)) else None


def static_shape(expr: Any) -> tuple[int, ...] | None:
    """The static shape of a tensor-typed expression; None when unknown or symbolic."""
    ty = getattr(expr, "ty", None)
    if not isinstance(ty, relax.TensorType) or ty.shape is None:
        return None
    try:
        return tuple(int(s) for s in ty.shape)
    except (TypeError, AttributeError, ValueError):
        return None


def dtype_of(expr: Any) -> str:
    """A tensor-typed expression's dtype; "" while it is untyped (not yet normalised)."""
    return str(getattr(getattr(expr, "ty", None), "dtype", ""))


def _is_op(expr: Any, name: str) -> bool:
    return isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) and expr.op.name == name


def const_like() -> DFPattern:
    """A constant, also as ``astype(constant)`` (fp16 graphs before constant folding)."""
    return is_const() | is_op("relax.astype")(is_const())


@dataclass(frozen=True)
class ConvParams:
    """A ``conv2d`` call read into plain values, in the call's own layouts."""

    data_layout: str
    kernel_layout: str
    out_layout: str
    stride: tuple[int, int]
    padding: tuple[int, int, int, int]  # top, left, bottom, right
    dilation: tuple[int, int]
    groups: int
    x_shape: tuple[int, ...] | None
    w_shape: tuple[int, ...] | None
    y_shape: tuple[int, ...] | None
    dtype: str
    x_dtype: str
    w_dtype: str

    @property
    def in_channels(self) -> int | None:
        return None if self.x_shape is None else self.x_shape[self.data_layout.index("C")]

    @property
    def out_channels(self) -> int | None:
        return None if self.w_shape is None else self.w_shape[self.kernel_layout.index("O")]

    @property
    def kernel(self) -> tuple[int, int] | None:
        if self.w_shape is None:
            return None
        lay = self.kernel_layout
        return self.w_shape[lay.index("H")], self.w_shape[lay.index("W")]

    @property
    def is_depthwise(self) -> bool:
        """One group per input channel (any channel multiplier)."""
        return self.in_channels is not None and self.groups == self.in_channels > 1

    @property
    def multiplier(self) -> int | None:
        """Output channels per input channel of a depthwise conv."""
        if self.in_channels is None or self.out_channels is None:
            return None
        return self.out_channels // self.in_channels

    @property
    def is_pointwise(self) -> bool:
        """A dense 1×1 conv, stride 1, no padding: a GEMM over the channel axis."""
        return (
            self.groups == 1
            and self.kernel == (1, 1)
            and self.stride == (1, 1)
            and not any(self.padding)
        )


def conv_params(call: relax.Call) -> ConvParams:
    a = call.attrs
    x, w = call.args
    return ConvParams(
        data_layout=str(a["data_layout"]),
        kernel_layout=str(a["kernel_layout"]),
        out_layout=str(a["out_layout"]),
        stride=tuple(int(s) for s in a["strides"]),
        padding=tuple(int(p) for p in a["padding"]),
        dilation=tuple(int(d) for d in a["dilation"]),
        groups=int(a["groups"]),
        x_shape=static_shape(x),
        w_shape=static_shape(w),
        y_shape=static_shape(call),
        dtype=dtype_of(call),
        x_dtype=dtype_of(x),
        w_dtype=dtype_of(w),
    )


def is_depthwise(call: relax.Call) -> bool:
    """A ``conv2d`` call with one group per input channel, in whatever layout it has."""
    return conv_params(call).is_depthwise


def count_depthwise(expr: relax.Expr) -> int:
    """How many depthwise ``conv2d`` calls ``expr`` (a function) contains."""
    found = []

    def visit(e):
        if _is_op(e, "relax.nn.conv2d") and is_depthwise(e):
            found.append(e)

    relax.analysis.post_order_visit(expr, visit)
    return len(found)


def per_channel(bias: Any, channels: int, layout: str) -> bool:
    """A bias that adds one value per channel: ``(C,)`` or broadcast along ``layout``'s C axis."""
    shape = static_shape(bias)
    if shape == (channels,):
        return True
    return shape == tuple(channels if d == "C" else 1 for d in layout)


# ---------------------------------------------------------------------------------------------
# Clip normalisation


def normalize_clip(mod: tvm.IRModule) -> tvm.IRModule:
    """clip(x, lo, hi) → minimum(maximum(x, lo), hi) with tensor constants of x's dtype (an
    infinite bound is dropped). Relax has no layout inference for clip (the CPU path's
    ConvertLayout would stop at every ReLU6), and ``ToMixedPrecision`` cannot type clip's scalar
    (PrimValue) bounds (the CUDA fp16 path)."""
    pat = is_op("relax.clip")(wildcard(), wildcard(), wildcard())

    def rewrite(expr, m):
        x, lo, hi = m[pat].args
        lo, hi = scalar(lo), scalar(hi)
        if lo is None or hi is None:
            return expr
        dtype = x.ty.dtype
        out = x
        if lo != -INF:
            out = relax.op.maximum(out, relax.const(lo, dtype))
        if hi != INF:
            out = relax.op.minimum(out, relax.const(hi, dtype))
        return out

    out = tvm.IRModule(dict(mod.functions_items()), attrs=mod.attrs)
    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function):
            out[gv] = rewrite_call(pat, rewrite, func)
    return out


# ---------------------------------------------------------------------------------------------
# Patterns and their records


@dataclass(frozen=True)
class Act:
    """An activation: ``kind`` in :data:`KINDS`; ``lo``/``hi`` the bounds of relu/relu6/clamp."""

    kind: str
    lo: float = -INF
    hi: float = INF


def _clamp_act(lo: float, hi: float) -> Act | None:
    if lo > hi:
        return None
    if (lo, hi) == (0.0, 6.0):
        return Act("relu6", 0.0, 6.0)
    if (lo, hi) == (0.0, INF):
        return Act("relu", 0.0, INF)
    return Act("clamp", lo, hi)


class _BoundStep:
    """v clipped once: clip(v, lo, hi) | maximum(v, lo) | minimum(v, hi)."""

    def __init__(self, v: DFPattern):
        self.lo, self.hi = wildcard(), wildcard()
        self.clip = is_op("relax.clip")(v, self.lo, self.hi)
        self.floor, self.ceil = const_like(), const_like()
        self.max = is_op("relax.maximum")(v, self.floor)
        self.min = is_op("relax.minimum")(v, self.ceil)
        self.pattern = self.clip | self.max | self.min

    def bounds(self, m) -> tuple[float, float] | None:
        if self.clip in m:
            lo, hi = scalar(m[self.lo]), scalar(m[self.hi])
        elif self.max in m:
            lo, hi = scalar(m[self.floor]), INF
        else:
            lo, hi = -INF, scalar(m[self.ceil])
        return None if lo is None or hi is None else (lo, hi)


class ClampPattern:
    """v clipped once or twice (ReLU6 is one ``clip`` or two, or a maximum and a minimum)."""

    def __init__(self, v: DFPattern):
        self.inner = _BoundStep(v)
        self.outer = _BoundStep(self.inner.pattern)
        self.pattern = self.outer.pattern | self.inner.pattern

    def bounds(self, m) -> tuple[float, float] | None:
        inner = self.inner.bounds(m)
        if inner is None or self.outer.pattern not in m:
            return inner
        outer = self.outer.bounds(m)
        if outer is None:
            return None
        return max(inner[0], outer[0]), min(inner[1], outer[1])


class _HardGate:
    """relu6(v + 3): the gate of h-swish and of hard-sigmoid, before its division by 6."""

    def __init__(self, v: DFPattern):
        self.three = const_like()
        self.clamp = ClampPattern(is_op("relax.add")(v, self.three))
        self.pattern = self.clamp.pattern

    def ok(self, m) -> bool:
        return scalar(m[self.three]) == 3.0 and self.clamp.bounds(m) == (0.0, 6.0)


class ActivationPattern:
    """act(b) for every activation the kernels have, with ``identity`` also b itself."""

    def __init__(self, b: DFPattern, identity: bool = True):
        self.b = b
        self.relu = is_op("relax.nn.relu")(b)
        self.clamp = ClampPattern(b)
        self.gate, self.six = _HardGate(b), const_like()
        div, mul = is_op("relax.divide"), is_op("relax.multiply")
        # h-swish as torch.export writes it, b · relu6(b + 3) / 6, and as the ONNX frontend
        # writes HardSwish, b · (relu6(b + 3) / 6)
        self.hswish = div(mul(b, self.gate.pattern), self.six) | mul(
            b, div(self.gate.pattern, self.six)
        )
        sig = is_op("relax.sigmoid")(b)
        self.silu = mul(b, sig) | mul(sig, b)
        alternatives = [self.hswish, self.silu, self.clamp.pattern, self.relu]
        self.pattern = functools.reduce(operator.or_, alternatives + ([b] if identity else []))

    def read(self, m) -> Act | None:
        """The matched activation; None when its constants make it another function."""
        if self.hswish in m:
            ok = self.gate.ok(m) and scalar(m[self.six]) == 6.0
            return Act("hswish") if ok else None
        if self.silu in m:
            return Act("silu")
        if self.clamp.pattern in m:
            bounds = self.clamp.bounds(m)
            return None if bounds is None else _clamp_act(*bounds)
        if self.relu in m:
            return Act("relu", 0.0, INF)
        return Act("none")


class GatePattern:
    """gate(s): sigmoid(s) | hard-sigmoid relu6(s + 3) / 6."""

    def __init__(self, s: DFPattern):
        self.sigmoid = is_op("relax.sigmoid")(s)
        self.hard, self.six = _HardGate(s), const_like()
        self.hsigmoid = is_op("relax.divide")(self.hard.pattern, self.six)
        self.pattern = self.sigmoid | self.hsigmoid

    def read(self, m) -> str | None:
        if self.sigmoid in m:
            return "sigmoid"
        ok = self.hard.ok(m) and scalar(m[self.six]) == 6.0
        return "hsigmoid" if ok else None


@dataclass(frozen=True)
class ConvMatch:
    call: relax.Call
    params: ConvParams
    x: relax.Expr  # the call's input (a Var in a normalised graph)
    w: tvm.ir.expr.Constant
    bias: tvm.ir.expr.Constant | None


class ConvPattern:
    """conv2d(x, W) [+ b], W and b constants; a bias must add one value per output channel."""

    def __init__(self, x: DFPattern):
        self.x, self.w, self.b = x, is_const(), is_const()
        self.conv = is_op("relax.nn.conv2d")(x, self.w)
        self.biased = is_op("relax.add")(self.conv, self.b)
        self.pattern = self.biased | self.conv

    def read(self, m) -> ConvMatch | None:
        call = m[self.conv]
        params = conv_params(call)
        bias = m[self.b] if self.biased in m else None
        if bias is not None:
            layout = params.out_layout or params.data_layout
            if params.out_channels is None or not per_channel(bias, params.out_channels, layout):
                return None
        return ConvMatch(call, params, call.args[0], m[self.w], bias)


@dataclass(frozen=True)
class DepthwiseMatch:
    dw: ConvMatch
    act: Act


class DepthwisePattern:
    """dw conv [+ b] [→ act]."""

    def __init__(self, x: DFPattern | None = None):
        self.x = wildcard() if x is None else x
        self.dw = ConvPattern(self.x)
        self.act = ActivationPattern(self.dw.pattern)
        self.pattern = self.act.pattern
        self.leaves = [self.x]

    def read(self, m) -> DepthwiseMatch | None:
        dw, act = self.dw.read(m), self.act.read(m)
        if dw is None or act is None or not dw.params.is_depthwise:
            return None
        return DepthwiseMatch(dw, act)


@dataclass(frozen=True)
class SeparableMatch:
    x: relax.Expr  # what the pattern's ``x`` matched (the dw input)
    dw: ConvMatch
    act_dw: Act
    pw: ConvMatch
    act_pw: Act  # Act("none") also when the pattern's root was the pw conv
    residual: relax.Expr | None


class SeparablePattern:
    """dw conv [+ b] → act → pw conv [+ b] [→ act] [+ residual].

    Roots: ``pw_conv`` (the pointwise conv call: dw → act → pw), ``block`` (up to the pw
    activation) and ``forms`` (the block with its residual on either side, then without), which
    a rewrite tries in that order so the largest chain ending at a binding wins.
    """

    def __init__(self):
        self.head = DepthwisePattern()
        self.x, self.dw, self.act_dw = self.head.x, self.head.dw, self.head.act
        self.pw = ConvPattern(self.head.pattern)
        self.pw_conv = self.pw.conv
        self.act_pw = ActivationPattern(self.pw.pattern)
        self.block = self.act_pw.pattern
        self.residual = ~is_const()
        add = is_op("relax.add")
        self.forms = [add(self.residual, self.block), add(self.block, self.residual), self.block]
        self.leaves = [self.x, self.residual]

    def read(self, m) -> SeparableMatch | None:
        head, pw = self.head.read(m), self.pw.read(m)
        if head is None or pw is None or not pw.params.is_pointwise:
            return None
        act_pw = self.act_pw.read(m) if self.block in m else Act("none")
        if act_pw is None:
            return None
        residual = m[self.residual] if self.residual in m else None
        if residual is not None and (
            static_shape(residual) != pw.params.y_shape or dtype_of(residual) != pw.params.dtype
        ):
            return None
        return SeparableMatch(m[self.x], head.dw, head.act, pw, act_pw, residual)


@dataclass(frozen=True)
class SEMatch:
    x: relax.Expr  # the gated map (the multiply's first argument)
    fc1: ConvMatch  # C → Cr, with bias
    act: Act
    fc2: ConvMatch  # Cr → C, with bias
    gate: str  # "sigmoid" | "hsigmoid"

    @property
    def reduced(self) -> int:
        return int(self.fc1.params.out_channels)


class SEPattern:
    """Squeeze-and-excitation: x · gate(conv(act(conv(mean_hw(x)) + b1)) + b2), the mean taken
    over the spatial axes with keepdims (fp16 graphs cast around the mean)."""

    def __init__(self):
        self.x = wildcard()
        cast = is_op("relax.astype")
        self.mean = is_op("relax.mean")(cast(self.x) | self.x)
        self.fc1 = ConvPattern(cast(self.mean) | self.mean)
        self.act = ActivationPattern(self.fc1.pattern)
        self.fc2 = ConvPattern(self.act.pattern)
        self.gate = GatePattern(self.fc2.pattern)
        self.pattern = is_op("relax.multiply")(self.x, self.gate.pattern)
        self.leaves = [self.x]

    def read(self, m, layout: str = "NCHW") -> SEMatch | None:
        """``layout``: the gated map's, which says which axes the mean must pool."""
        mul, mean = m[self.pattern], m[self.mean]
        xs = static_shape(mul.args[0])
        if xs is None or len(xs) != len(layout) or not bool(mean.attrs["keepdims"]):
            return None
        axes = sorted(int(a) % len(xs) for a in mean.attrs["axis"])
        if axes != sorted((layout.index("H"), layout.index("W"))):
            return None
        fc1, fc2 = self.fc1.read(m), self.fc2.read(m)
        act, gate = self.act.read(m), self.gate.read(m)
        if fc1 is None or fc2 is None or act is None or gate is None:
            return None
        if fc1.bias is None or fc2.bias is None:
            return None
        c, p1, p2 = xs[layout.index("C")], fc1.params, fc2.params
        cr = p1.out_channels
        if (p1.in_channels, p2.in_channels, p2.out_channels) != (c, cr, c):
            return None
        if p1.kernel != (1, 1) or p2.kernel != (1, 1) or p1.groups != 1 or p2.groups != 1:
            return None
        return SEMatch(mul.args[0], fc1, act, fc2, gate)


@dataclass(frozen=True)
class QuantParam:
    """A quantize/dequantize call's parameters: scale and zero point (per tensor or per
    channel along ``axis``), and the quantized dtype."""

    scale: Any  # numpy array (0-d per tensor)
    zero_point: Any
    axis: int
    dtype: str

    @property
    def per_tensor(self) -> bool:
        return self.scale.size == 1 and self.zero_point.size == 1


def quant_param(call: relax.Call) -> QuantParam | None:
    """A ``relax.quantize`` / ``relax.dequantize`` call's parameters, when they are constants."""
    scale, zp = call.args[1], call.args[2]
    if not all(isinstance(v, tvm.ir.expr.Constant) for v in (scale, zp)):
        return None
    quantized = call if call.op.name == "relax.quantize" else call.args[0]
    return QuantParam(
        scale.value.numpy(), zp.value.numpy(), int(call.attrs["axis"]), dtype_of(quantized)
    )


@dataclass(frozen=True)
class QuantizedConvMatch:
    xq: relax.Expr  # the 8-bit input
    x: QuantParam
    conv: relax.Call
    params: ConvParams  # of the float conv (its layouts, stride, padding, groups)
    wq: tvm.ir.expr.Constant  # int8 weights, the conv's kernel layout
    w: QuantParam  # per output channel
    bias: tvm.ir.expr.Constant | None
    act: Act
    residual: tuple[relax.Expr, QuantParam] | None  # an 8-bit map added after act
    act2: Act  # after the residual add (Act("none") without one)
    out: QuantParam
    out_bounds: tuple[float, float]  # the integer clamp after quantize (±inf: the dtype's)
    root: relax.Expr | None = None  # the matched value: the unit's quantize, or its clamp


class QuantizedConvPattern:
    """PT2E's quantized conv unit::

        [clamp](quantize(act2(act(conv2d(dequantize(xq), dequantize(Wq)) [+ b])
                                   [+ dequantize(rq)])))

    Wq and b constants (the graph's ``astype``/``reshape`` of constants folded first). The
    residual add may take either side; its activation is any of ActivationPattern's, or none.
    """

    def __init__(self):
        dq = is_op("relax.dequantize")
        self.xq = wildcard()
        self.dq_x = dq(self.xq, is_const(), is_const())
        self.wq = is_const()
        self.dq_w = dq(self.wq, is_const(), is_const())
        self.conv = is_op("relax.nn.conv2d")(self.dq_x, self.dq_w)
        self.b = is_const()
        self.biased = is_op("relax.add")(self.conv, self.b)
        self.act = ActivationPattern(self.biased | self.conv)
        self.rq = wildcard()
        self.dq_r = dq(self.rq, is_const(), is_const())
        add = is_op("relax.add")
        self.res = add(self.act.pattern, self.dq_r) | add(self.dq_r, self.act.pattern)
        self.act2 = ActivationPattern(self.res)
        self.quantize = is_op("relax.quantize")(
            self.act2.pattern | self.act.pattern, is_const(), is_const()
        )
        self.clamp = ClampPattern(self.quantize)  # a range narrower than the dtype's
        self.pattern = self.clamp.pattern | self.quantize

    def read(self, m) -> QuantizedConvMatch | None:
        conv = m[self.conv]
        params = conv_params(conv)
        x, w = quant_param(m[self.dq_x]), quant_param(m[self.dq_w])
        out = quant_param(m[self.quantize])
        if x is None or w is None or out is None or not (x.per_tensor and out.per_tensor):
            return None
        if w.axis != params.kernel_layout.index("O") or w.dtype != "int8":
            return None
        bias = m[self.b] if self.biased in m else None
        if bias is not None:
            layout = params.out_layout or params.data_layout
            if params.out_channels is None or not per_channel(bias, params.out_channels, layout):
                return None
        act = self.act.read(m)
        residual, act2 = None, Act("none")
        if self.res in m:
            r = quant_param(m[self.dq_r])
            if r is None or not r.per_tensor or static_shape(m[self.rq]) != params.y_shape:
                return None
            residual, act2 = (m[self.rq], r), self.act2.read(m)
        if act is None or act2 is None:
            return None
        clamped = self.clamp.pattern in m
        bounds = self.clamp.bounds(m) if clamped else (-INF, INF)
        if bounds is None:
            return None
        root = m[self.clamp.pattern] if clamped else m[self.quantize]
        return QuantizedConvMatch(
            m[self.xq], x, conv, params, m[self.wq], w, bias, act, residual, act2, out, bounds,
            root,
        )  # fmt: skip


@dataclass(frozen=True)
class QuantizedLinearMatch:
    xq: relax.Expr  # the 8-bit input [N, C]
    x: QuantParam
    wq: tvm.ir.expr.Constant  # int8 [O, C]
    w: QuantParam  # per output channel
    bias: tvm.ir.expr.Constant


class QuantizedLinearPattern:
    """PT2E's quantized linear with a float output (the classifier):
    ``b + matmul(dequantize(xq), permute_dims(dequantize(Wq)))``."""

    def __init__(self):
        dq = is_op("relax.dequantize")
        self.xq = wildcard()
        self.dq_x = dq(self.xq, is_const(), is_const())
        self.wq = is_const()
        self.dq_w = dq(self.wq, is_const(), is_const())
        self.matmul = is_op("relax.matmul")(self.dq_x, is_op("relax.permute_dims")(self.dq_w))
        self.b = is_const()
        add = is_op("relax.add")
        self.pattern = add(self.b, self.matmul) | add(self.matmul, self.b)

    def read(self, m) -> QuantizedLinearMatch | None:
        x, w = quant_param(m[self.dq_x]), quant_param(m[self.dq_w])
        wq, xs = m[self.wq], static_shape(m[self.xq])
        if x is None or w is None or not x.per_tensor or w.axis != 0 or w.dtype != "int8":
            return None
        ws = static_shape(wq)
        if xs is None or ws is None or len(xs) != 2 or len(ws) != 2 or xs[1] != ws[1]:
            return None
        if static_shape(m[self.b]) not in ((ws[0],), (1, ws[0])):
            return None
        return QuantizedLinearMatch(m[self.xq], x, wq, w, m[self.b])


@dataclass(frozen=True)
class QuantizedMapMatch:
    """A per-channel op on an 8-bit map [N, C, H, W]: squeeze-and-excitation's gate multiply
    (``gate``: float [N, C, 1, 1]) or its global average pool (``gate`` None)."""

    xq: relax.Expr
    x: QuantParam
    gate: relax.Expr | None
    out: QuantParam
    out_bounds: tuple[float, float]
    window: PoolWindow | None = None  # a max pool's (gate None)


@dataclass(frozen=True)
class PoolWindow:
    """A 2-D pooling window on an NCHW map: sizes, strides, padding (top, left, bottom, right)."""

    size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int, int, int]


class _QuantizedMapOp:
    """``[clamp](quantize(op(dequantize(xq))))`` with per-tensor parameters on a 4-D map."""

    def __init__(self, op_of):  # op_of(dequantize pattern) → the op's pattern
        self.xq = wildcard()
        self.dq_x = is_op("relax.dequantize")(self.xq, is_const(), is_const())
        self.op = op_of(self.dq_x)
        self.quantize = is_op("relax.quantize")(self.op, is_const(), is_const())
        self.clamp = ClampPattern(self.quantize)
        self.pattern = self.clamp.pattern | self.quantize

    def _read(self, m, gate, window: PoolWindow | None = None) -> QuantizedMapMatch | None:
        x, out = quant_param(m[self.dq_x]), quant_param(m[self.quantize])
        shape = static_shape(m[self.xq])
        if x is None or out is None or not (x.per_tensor and out.per_tensor):
            return None
        if shape is None or len(shape) != 4:
            return None
        bounds = self.clamp.bounds(m) if self.clamp.pattern in m else (-INF, INF)
        if bounds is None:
            return None
        return QuantizedMapMatch(m[self.xq], x, gate, out, bounds, window)


class QuantizedGatePattern(_QuantizedMapOp):
    """SE's gate on a quantized map: ``[clamp](quantize(dequantize(xq) · g))``, g a float
    [N, C, 1, 1] (either operand)."""

    def __init__(self):
        self.gate = wildcard()
        mul = is_op("relax.multiply")
        super().__init__(lambda dq: mul(dq, self.gate) | mul(self.gate, dq))

    def read(self, m) -> QuantizedMapMatch | None:
        shape, g = static_shape(m[self.xq]), static_shape(m[self.gate])
        if shape is None or g is None or len(shape) != 4 or dtype_of(m[self.gate]) != "float32":
            return None
        if tuple(g) != (shape[0], shape[1], 1, 1):
            return None
        return self._read(m, m[self.gate])


class QuantizedMeanPattern(_QuantizedMapOp):
    """A global average pool of a quantized map: ``[clamp](quantize(mean(dequantize(xq),
    axis=[H, W], keepdims)))``."""

    def __init__(self):
        super().__init__(lambda dq: is_op("relax.mean")(dq))

    def read(self, m) -> QuantizedMapMatch | None:
        mean = m[self.op]
        axes = sorted(int(a) % 4 for a in (mean.attrs["axis"] or []))
        if axes != [2, 3] or not bool(mean.attrs["keepdims"]):
            return None
        return self._read(m, None)


class QuantizedMaxPoolPattern(_QuantizedMapOp):
    """A max pool of a quantized map: ``[clamp](quantize(max_pool2d(dequantize(xq))))``, NCHW,
    no dilation, floor mode (ShuffleNetV2's after the stem)."""

    def __init__(self):
        super().__init__(lambda dq: is_op("relax.nn.max_pool2d")(dq))

    def read(self, m) -> QuantizedMapMatch | None:
        a = m[self.op].attrs
        if a.layout != "NCHW" or a.out_layout != "NCHW" or bool(a.ceil_mode):
            return None
        if any(int(d) != 1 for d in a.dilation) or len(a.padding) != 4:
            return None
        window = PoolWindow(
            tuple(int(v) for v in a.pool_size),
            tuple(int(v) for v in a.strides),
            tuple(int(v) for v in a.padding),
        )
        return self._read(m, None, window)


# ---------------------------------------------------------------------------------------------
# Matching over a function's bindings


class Bindings:
    """The bindings of a function: each Var's value, the Var each value is bound to, and who
    uses each Var — what a rewrite needs beyond the pattern to take a chain out of the graph."""

    def __init__(self, func: relax.Function):
        self.var2val = relax.analysis.get_var2val(func)
        self.order: list[relax.Var] = []
        self._var_of: dict = {}
        self.users: dict = defaultdict(set)
        for block in func.body.blocks:
            for binding in block.bindings:
                if not isinstance(binding, relax.VarBinding):
                    continue
                self.order.append(binding.var)
                self._var_of[binding.value] = binding.var
                for used in _vars_in(binding.value):
                    self.users[used].add(binding.var)
        for used in _vars_in(func.body.body):
            self.users[used].add(None)  # the function's result

    def var_of(self, expr: relax.Expr) -> relax.Expr:
        """The Var a matched value is bound to (the matcher looks through Vars); else expr."""
        return self._var_of.get(expr, expr)

    def match(self, pattern: DFPattern, var: relax.Var):
        """The pattern's match of ``var``'s value (pattern → expression), or None."""
        return pattern.extract_matched_expr(var, self.var2val)

    def claim(self, m, root: relax.Var, leaves: Sequence[DFPattern]) -> list[relax.Var] | None:
        """The Vars a match computes (its calls, not its inputs ``leaves`` or constants), or
        None when one of them other than ``root`` has a user outside the match, or an input is
        itself one of them (a "residual" that is the block's own intermediate)."""
        claimed: list[relax.Var] = []
        for pat, expr in m.items():
            var = self._var_of.get(expr)
            if not isinstance(pat, CallPattern) or var is None or var in claimed:
                continue
            if _is_op(expr, "relax.astype") and isinstance(expr.args[0], tvm.ir.expr.Constant):
                continue  # a constant's cast (const_like), not part of the chain
            claimed.append(var)
        if root not in claimed:
            return None
        inputs = [self.var_of(m[p]) for p in leaves if p in m]
        if any(v in claimed for v in inputs if isinstance(v, relax.Var)):
            return None
        inside = set(claimed)
        if not all(self.users.get(v, set()) <= inside for v in claimed if not v.same_as(root)):
            return None
        return claimed


def _vars_in(expr: relax.Expr) -> list[relax.Var]:
    found = []

    def visit(e):
        if isinstance(e, relax.Var):
            found.append(e)

    relax.analysis.post_order_visit(expr, visit)
    return found


@dataclass
class Chain:
    """A matched chain a rewrite replaces: ``root``'s binding becomes the new call; the
    ``claimed`` Vars go with it. ``params`` is the backend's reading of the match."""

    kind: str
    root: relax.Var
    claimed: list
    params: Any


Matcher = Callable[[Bindings, relax.Var], "Chain | None"]


def find_chains(func: relax.Function, matchers: Sequence[Matcher]) -> list[Chain]:
    """Non-overlapping chains: bindings from the last to the first, so the largest chain ending
    at a binding wins, and at each binding the first matcher that takes it."""
    bindings = Bindings(func)
    taken: set = set()
    chains = []
    for var in reversed(bindings.order):
        if var in taken:
            continue
        for matcher in matchers:
            chain = matcher(bindings, var)
            if chain is not None and not any(v in taken for v in chain.claimed):
                chains.append(chain)
                taken.update(chain.claimed)
                break
    return chains


__all__ = [
    "Act",
    "ActivationPattern",
    "Bindings",
    "Chain",
    "ClampPattern",
    "ConvMatch",
    "ConvParams",
    "ConvPattern",
    "DepthwiseMatch",
    "DepthwisePattern",
    "GatePattern",
    "SEMatch",
    "SEPattern",
    "SeparableMatch",
    "SeparablePattern",
    "conv_params",
    "count_depthwise",
    "dtype_of",
    "find_chains",
    "is_depthwise",
    "normalize_clip",
    "per_channel",
    "scalar",
    "static_shape",
]
