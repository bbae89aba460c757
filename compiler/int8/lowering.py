"""PT2E's quantized graph → our integer operators (CPU).

    fold_qparams        astype / reshape of constants folded (the graph's scales, zero points and
                        biases as constants), without folding ``dequantize(Wq)`` away
    lower_quantized     every QuantizedConvPattern unit ⇒ one integer operator, NHWC inside:
                        permute in → operator → permute out, weights repacked at compile time
                        (depthwise [KH,KW,C], pointwise [C,O], dense HWIO), int32 zero-point
                        corrections and float32 rescales precomputed; a depthwise unit whose
                        only consumer is a pointwise unit on the dot instruction becomes one
                        operator with it (``sepconv_qdwpw``: its 8-bit map never leaves the
                        operator — :mod:`sepconv.schedules.int8_pointwise`)
    cancel_permutes     permute → permute pairs that compose to the identity are dropped, so
                        consecutive operators hand NHWC 8-bit maps to each other

Also integer, NHWC: squeeze-and-excitation's global average pool (the exact mean) and its gate
multiply (QuantizedMeanPattern, QuantizedGatePattern), max pools (QuantizedMaxPoolPattern: the
8-bit max), and the classifier's linear. A pointwise unit off the dot instruction (full-range
inputs on AVX2) sums in fp32 where that is exact (``ops.float_exact``), on the fp32
micro-kernel.

What no operator covers (ShuffleNet's concat, channel shuffle and split) stays as
``dequantize → float op → quantize``, legalized by TVM and fused by FuseOps into one kernel per
chain: 8-bit in memory, float only in registers — but NCHW, behind transposes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import tvm
from tvm import relax, te
from tvm.relax.dpl import is_const, is_op, rewrite_call, wildcard

from sepconv.compiler.channels_last import TO_NCHW, TO_NHWC, propagate_channels_last
from sepconv.compiler.int8 import ops
from sepconv.compiler.patterns import (
    Act,
    QuantizedConvMatch,
    QuantizedConvPattern,
    QuantizedGatePattern,
    QuantizedLinearMatch,
    QuantizedLinearPattern,
    QuantizedMapMatch,
    QuantizedMaxPoolPattern,
    QuantizedMeanPattern,
    static_shape,
)
from sepconv.compiler.separable import FuncEmitter, te_activation, te_placeholder
from sepconv.schedules.block_names import DW_ACT

log = logging.getLogger(__name__)

CLAMPS = ("relu", "relu6", "clamp")  # activations that only bound the value
NO_ACT = Act("none")

_FUNC_NAMES = {
    "depthwise": "sepconv_qdw", "pointwise": "sepconv_qpw", "dense": "sepconv_qconv",
    "linear": "sepconv_qlinear", "gate": "sepconv_qgate", "mean": "sepconv_qmean",
    "max_pool": "sepconv_qmaxpool", "fused": "sepconv_qdwpw",
}  # fmt: skip


@dataclass
class QuantizedStats:
    depthwise: int = 0
    pointwise: int = 0
    dense: int = 0
    linear: int = 0
    gate: int = 0  # squeeze-and-excitation gate multiplies
    mean: int = 0  # global average pools
    max_pool: int = 0
    packed: int = 0  # pointwise, linear and dense ones on the target's u8·s8 dot instruction
    fused: int = 0  # depthwise → pointwise pairs lowered as one operator (counted in both too)
    float_exact: int = 0  # units off it summed in fp32, exactly (ops.float_exact)
    left_to_tvm: int = 0  # quantized convs no operator takes (grouped, channel multiplier > 1)
    functions: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "functions"}


def is_integer_function(name: str) -> bool:
    """Whether a compiled function (by name, as the VM calls it: ``sepconv_qpw_3``,
    ``fused_sepconv_qmean_50_dequantize``) is one of our integer operators."""
    return any(prefix in name for prefix in _FUNC_NAMES.values())


def is_quantized(mod: tvm.IRModule) -> bool:
    """Whether ``main`` quantizes anything (a PT2E graph)."""
    found = []

    def visit(e):
        if isinstance(e, relax.Call) and getattr(e.op, "name", "") == "relax.quantize":
            found.append(e)

    relax.analysis.post_order_visit(mod["main"], visit)
    return bool(found)


def fold_qparams(mod: tvm.IRModule) -> tvm.IRModule:
    """``astype(c)`` and ``reshape(c, shape)`` of constants → constants."""
    cast = is_op("relax.astype")(is_const())
    reshape = is_op("relax.reshape")(is_const(), wildcard())

    def fold(expr, m):
        if cast in m:
            c = m[cast]
            return relax.const(c.args[0].value.numpy().astype(str(c.attrs["dtype"])))
        c = m[reshape]
        shape = [int(s) for s in c.ty.shape]
        return relax.const(c.args[0].value.numpy().reshape(shape))

    out = tvm.IRModule(dict(mod.functions_items()), attrs=mod.attrs)
    out["main"] = rewrite_call(cast | reshape, fold, mod["main"])
    return out


def _f32(v) -> np.ndarray:
    return np.asarray(v, dtype=np.float32)


def _upper_clamp(expr) -> int | None:
    """The upper clamp ``minimum(q, c)`` puts on an 8-bit map (PT2E reduce_range), or None."""
    if isinstance(expr, relax.Call) and getattr(expr.op, "name", "") == "relax.minimum":
        c = expr.args[1]
        if isinstance(c, tvm.ir.expr.Constant) and c.value.numpy().size == 1:
            return int(c.value.numpy().reshape(-1)[0])
    return None


def _clamped_max(func: relax.Function) -> dict:
    """Var → its upper clamp, for every Var bound to one."""
    found = {v: _upper_clamp(e) for v, e in relax.analysis.get_var2val(func).items()}
    return {v: hi for v, hi in found.items() if hi is not None}


def _clamped_quantizes(func: relax.Function) -> set:
    """The quantize calls a clamp consumes: the unit is matched at the clamp, not below it."""
    var2val = relax.analysis.get_var2val(func)
    out = set()
    for val in var2val.values():
        name = getattr(getattr(val, "op", None), "name", "")
        if name in ("relax.minimum", "relax.maximum") and val.args[0] in var2val:
            inner = var2val[val.args[0]]
            if getattr(getattr(inner, "op", None), "name", "") == "relax.quantize":
                out.add(inner)
    return out


def _rescale(x, w, wq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per output channel: the float32 rescale sx·sw[c] (float32 · float32, as the reference
    multiplies them) and the int32 zero-point correction zx·Σ wq[c] (``wq`` output-major)."""
    o = wq.shape[0]
    sw = _f32(w.scale).reshape(-1)
    if sw.size == 1:
        sw = np.full(o, sw[0], np.float32)
    wsum = wq.reshape(o, -1).astype(np.int64).sum(axis=1)
    return _f32(float(x.scale)) * sw, (int(x.zero_point) * wsum).astype(np.int32)


def _out_params(out, bounds: tuple[float, float]) -> ops.QParams:
    """A unit's output quantization with the integer clamp after it (±inf: none)."""
    lo, hi = bounds
    return ops.QParams(
        float(out.scale), int(out.zero_point), out.dtype,
        None if lo == -float("inf") else int(lo), None if hi == float("inf") else int(hi),
    )  # fmt: skip


def _weight_args(arrays: list[np.ndarray]) -> tuple[list, list]:
    """A unit's weights as its PrimFunc's placeholders and the constants passed for them (the
    packed panels, then the rows that do not fill one)."""
    names = ("wq", "wq_tail")
    wps = [te_placeholder(a.shape, str(a.dtype), nm) for a, nm in zip(arrays, names)]
    return wps, [relax.const(a) for a in arrays]


def _use_counts(func: relax.Function) -> dict:
    """Var → how many bindings (and the function's result) use it."""
    counts: dict = {}
    values = [b.value for block in func.body.blocks for b in block.bindings]
    for value in [*values, func.body.body]:
        for v in relax.analysis.free_vars(value):
            counts[v] = counts.get(v, 0) + 1
    return counts


@dataclass(frozen=True)
class _DepthwiseOutput:
    """A lowered depthwise unit's TE (its placeholders, its 8-bit output, the arguments its call
    passes): what a fused operator starts from."""

    placeholders: list
    y: te.Tensor
    args: list


class _Lowering(FuncEmitter):
    def __init__(self, mod, dot=None, fuse: bool = True):
        super().__init__(mod)
        self.stats = QuantizedStats()
        self.dot = dot  # schedules.int8_intrinsics.DotIntrinsic, or None
        self.x_max = _clamped_max(mod["main"])
        main = mod["main"]
        self.var_of = {val: var for var, val in relax.analysis.get_var2val(main).items()}
        self.uses = _use_counts(main)
        self.fuse = fuse
        self.depthwise_outputs: dict[relax.Var, _DepthwiseOutput] = {}

    def linear(self, q: QuantizedLinearMatch | None) -> relax.Expr | None:
        """A float-output linear as a 1×1 pointwise over [N, 1, 1, C]: the same kernels."""
        if q is None:
            return None
        wq = q.wq.value.numpy()  # O, C
        o, c = wq.shape
        n = int(q.xq.ty.shape[0])
        weights = np.ascontiguousarray(wq.T)
        xp = te_placeholder((n, 1, 1, c), q.x.dtype, "xq")
        if self._packs(q, c):
            acc, wps, wargs = self._packed(xp, weights, o)
        else:
            wps, wargs = _weight_args([weights])
            acc = ops.accumulate(xp, wps[0], (1, 1), (0, 0, 0, 0), (1, 1), 0, depthwise=False)
        scale, correction = _rescale(q.x, q.w, wq)
        bias = _f32(q.bias.value.numpy()).reshape(-1)
        parts = [te_placeholder((o,), d, nm) for d, nm in
                 (("int32", "corr"), ("float32", "scale"), ("float32", "bias"))]  # fmt: skip
        y = ops.requantize(acc, *parts, lambda v: v, None)
        self.stats.linear += 1
        args = [relax.op.reshape(q.xq, (n, 1, 1, c)), *wargs,
                relax.const(correction), relax.const(scale), relax.const(bias)]  # fmt: skip
        call = self.emit(_FUNC_NAMES["linear"], [xp, *wps, *parts], y, args)
        return relax.op.reshape(call, (n, o))

    def map_op(self, q: QuantizedMapMatch | None) -> relax.Expr | None:
        """SE's gate multiply, a global average pool or a max pool, NHWC on the 8-bit map."""
        if q is None or q.x.dtype != q.out.dtype:
            return None
        n, c, h, w = static_shape(q.xq)
        x = ops.QParams(float(q.x.scale), int(q.x.zero_point), q.x.dtype)
        xp = te_placeholder((n, h, w, c), q.x.dtype, "xq")
        args = [relax.op.permute_dims(q.xq, TO_NHWC)]
        out = _out_params(q.out, q.out_bounds)
        if q.gate is not None:
            gp = te_placeholder((n, c), "float32", "gate")
            y, kind = ops.gate(xp, gp, x, out), "gate"
            placeholders = [xp, gp]
            args.append(relax.op.reshape(q.gate, (n, c)))
        elif q.window is not None:
            win = q.window
            y, kind = ops.max_pool(xp, x, out, win.size, win.stride, win.padding), "max_pool"
            placeholders = [xp]
        else:
            y, kind, placeholders = ops.mean_pool(xp, x, out), "mean", [xp]
        setattr(self.stats, kind, getattr(self.stats, kind) + 1)
        call = self.emit(_FUNC_NAMES[kind], placeholders, y, args)
        return relax.op.permute_dims(call, TO_NCHW)

    def _x_max(self, q) -> int:
        """The largest |value| the unit's 8-bit input can hold (a clamp narrows it)."""
        lo, hi = ops.QRANGE[q.x.dtype]
        clamp = _upper_clamp(q.xq)
        if clamp is None:
            clamp = self.x_max.get(q.xq, hi)
        return max(abs(lo), min(hi, clamp))

    def _float_exact(self, q, wq: np.ndarray) -> bool:
        """A unit off the dot instruction whose sums fp32 holds exactly (``wq`` O, I, KH, KW:
        each output sums I·KH·KW products)."""
        w_max = int(np.abs(wq.astype(np.int32)).max()) if wq.size else 0
        terms = int(np.prod(wq.shape[1:]))
        return ops.float_exact(terms, self._x_max(q), int(q.x.zero_point), w_max)

    def _packed(self, xp: te.Tensor, w_co: np.ndarray, o: int):
        """The accumulation over weights packed into the dot instruction's panels, and the
        weights' placeholders and constants (the panels, and the rows that do not fill one)."""
        wps, wargs = _weight_args(
            [a for a in ops.pack_pointwise(w_co, self.dot.lanes) if a is not None]
        )
        self.stats.packed += 1
        acc = ops.pointwise_packed(xp, wps[0], o, wps[1] if len(wps) > 1 else None)
        return acc, wps, wargs

    def _packs(self, q, c: int) -> bool:
        """Whether the pointwise weights go into the dot intrinsic's panels: the target has
        one, the input is unsigned and stays within the instruction's exact range (channels the
        4 × L panel does not divide are padded: :func:`ops.pointwise_packed`)."""
        return c >= 4 and self._on_dot(q)

    def _on_dot(self, q) -> bool:
        """The target has a dot instruction and the unit stays within its exact range: unsigned
        input, and on the pairs (``vpmaddubsw``: two u8·s8 products summed in s16) no pair
        beyond s16 — 7-bit weights (2·255·64), or an input clamped to 0…127 (2·127·128)."""
        if self.dot is None or q.x.dtype != "uint8":
            return False
        if self.dot.full_range:
            return True
        w_max = int(np.abs(q.wq.value.numpy().astype(np.int32)).max(initial=0))
        return 2 * self._x_max(q) * w_max <= np.iinfo(np.int16).max

    def _packs_conv(self, q, p) -> bool:
        """Whether a dense conv runs on the dot as a GEMM over its window rows
        (:func:`ops.conv_packed`): any channel count, no dilation."""
        return p.dilation == (1, 1) and self._on_dot(q)

    def unit(self, q: QuantizedConvMatch | None) -> relax.Expr | None:
        if q is None:
            return None
        p = q.params
        if (p.data_layout, p.kernel_layout) != ("NCHW", "OIHW") or p.x_shape is None:
            self.stats.left_to_tvm += 1
            return None
        packed = p.groups == 1 and p.is_pointwise and self._packs(q, p.x_shape[1])
        packed_conv = p.groups == 1 and not p.is_pointwise and self._packs_conv(q, p)
        wq = q.wq.value.numpy()  # O, I/groups, KH, KW
        o = wq.shape[0]
        if p.is_depthwise and p.multiplier == 1:
            weights, kind = np.ascontiguousarray(wq[:, 0].transpose(1, 2, 0)), "depthwise"
        elif p.groups == 1 and p.is_pointwise:
            weights, kind = np.ascontiguousarray(wq[:, :, 0, 0].T), "pointwise"
        elif p.groups == 1:
            weights, kind = np.ascontiguousarray(wq.transpose(2, 3, 1, 0)), "dense"
        else:
            self.stats.left_to_tvm += 1
            return None
        # Pointwise only: depthwise and the stem summed in fp32 measured no faster (EfficientNet-B0
        # 1.00×, MobileNetV1 0.92×, AVX2): their time is not in the multiplies.
        if kind == "pointwise" and not packed and self._float_exact(q, wq):
            weights = weights.astype(np.float32)
            self.stats.float_exact += 1
        scale, correction = _rescale(q.x, q.w, wq)
        zx = int(q.x.zero_point)
        bias = np.zeros(o, np.float32) if q.bias is None else _f32(q.bias.value.numpy()).reshape(-1)
        x = relax.op.permute_dims(q.xq, TO_NHWC)
        n, c, h, w = p.x_shape
        xp = te_placeholder((n, h, w, c), q.x.dtype, "xq")
        producer = self._fused_producer(q, c) if packed else None
        if producer is not None:  # the depthwise unit's output is this one's input, in-operator
            xp, kind = producer.y, "fused"
        if packed:
            acc, wps, wargs = self._packed(xp, weights, o)
        elif packed_conv:
            x = relax.op.memory.view(x, (n, h, w * c))  # no copy: NHWC is flat rows already
            xp = te_placeholder((n, h, w * c), q.x.dtype, "xq")
            wps, wargs = _weight_args([ops.pack_conv(weights, self.dot.lanes)])
            acc = ops.conv_packed(xp, wps[0], (n, h, w, c), p.kernel, p.stride, p.padding, zx, o)
            self.stats.packed += 1
        else:
            wps, wargs = _weight_args([weights])
            acc = ops.accumulate(
                xp, wps[0], p.stride, p.padding, p.dilation, zx, depthwise=kind == "depthwise"
            )
        if weights.dtype == np.float32:
            correction = correction.astype(np.float32)  # exact: ops.float_exact
        cp = te_placeholder((o,), str(correction.dtype), "corr")
        sp = te_placeholder((o,), "float32", "scale")
        bp = te_placeholder((o,), "float32", "bias")
        out_q = _out_params(q.out, q.out_bounds)
        inputs, in_args = (producer.placeholders, producer.args) if producer else ([xp], [x])
        placeholders = [*inputs, *wps, cp, sp, bp]
        args = [*in_args, *wargs, relax.const(correction), relax.const(scale), relax.const(bias)]
        residual = None
        if q.residual is not None:
            rq, rparam = q.residual
            rp = te_placeholder(acc.shape, rparam.dtype, "rq")
            placeholders.append(rp)
            args.append(relax.op.permute_dims(rq, TO_NHWC))
            residual = (rp, ops.QParams(float(rparam.scale), int(rparam.zero_point), rparam.dtype))
        act, act2 = q.act, q.act2 if q.residual is not None else None
        last = act if act2 is None else act2
        folded = ops.fold_clamp(out_q, last.lo, last.hi) if last.kind in CLAMPS else None
        if folded is not None:  # the clamp is the output's integer bounds (exactly)
            out_q = folded
            act, act2 = (NO_ACT, None) if act2 is None else (act, NO_ACT)
        y = ops.requantize(
            acc, cp, sp, bp, te_activation(act), out_q, residual,
            None if act2 is None else te_activation(act2),
            name=DW_ACT if kind == "depthwise" else "sepconv_requantize",
        )  # fmt: skip
        # a fused operator's depthwise unit was counted when it was lowered
        for name in ("pointwise", "fused") if kind == "fused" else (kind,):
            setattr(self.stats, name, getattr(self.stats, name) + 1)
        if kind == "depthwise" and residual is None and q.root in self.var_of:
            self.depthwise_outputs[self.var_of[q.root]] = _DepthwiseOutput(placeholders, y, args)
        call = self.emit(_FUNC_NAMES[kind], placeholders, y, args)
        return relax.op.permute_dims(call, TO_NCHW)

    def _fused_producer(self, q, channels: int) -> _DepthwiseOutput | None:
        """The lowered depthwise unit whose 8-bit output is this pointwise unit's input and
        nothing else's — the two become one operator — or None.

        Not where 4 does not divide the channels (ShuffleNetV2's 58): the ≤ 3 channels past
        the dot's blocks are read again by the epilogue (``ops.pointwise_packed``'s tail), which
        then has the depthwise map as a producer outside the GEMM's channel-tile loop, and TVM
        cannot move it under that loop (``reverse_compute_at``)."""
        if not self.fuse or channels % 4 or q.residual is not None and q.residual[0].same_as(q.xq):
            return None
        producer = self.depthwise_outputs.get(q.xq)
        return producer if producer is not None and self.uses.get(q.xq) == 1 else None


def legalize_quantize(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    """``relax.quantize`` as torch and PT2E compute it: ``round(x · (1/s)) + z``. TVM's own
    legalization divides, ``round(x / s)``: on values that sit on a rounding tie — a pooled
    mean of 8-bit values re-quantized with the same scale is often one — the two round apart,
    and every squeeze-and-excitation gate after them differs (measured on MobileNetV3: 18.6 dB
    against the simulated quantization with TVM's division, bit-exact features with this)."""
    from tvm import te
    from tvm.relax.transform.legalize_ops.qdq import _quantize as tvm_quantize

    from sepconv.compiler.patterns import quant_param

    param = quant_param(call)
    if param is None or not param.per_tensor or param.dtype not in ops.QRANGE:
        return tvm_quantize(bb, call)
    q = ops.QParams(float(param.scale), int(param.zero_point), param.dtype)

    def compute(x):
        return te.compute(x.shape, lambda *i: ops.quantize_expr(x(*i), q), name="quantize")

    return bb.call_te(compute, call.args[0], primfunc_name_hint="quantize")


LEGALIZE = {"relax.quantize": legalize_quantize}


def cancel_permutes(mod: tvm.IRModule) -> tvm.IRModule:
    inner = is_op("relax.permute_dims")(wildcard())
    outer = is_op("relax.permute_dims")(inner)

    def cancel(expr, m):
        a = [int(v) for v in m[inner].attrs["axes"]]
        b = [int(v) for v in m[outer].attrs["axes"]]
        if [a[i] for i in b] == list(range(len(a))):
            return m[inner].args[0]
        return expr

    out = tvm.IRModule(dict(mod.functions_items()), attrs=mod.attrs)
    out["main"] = rewrite_call(outer, cancel, mod["main"])
    return out


def lower_quantized(
    mod: tvm.IRModule, target=None, fuse: bool = True
) -> tuple[tvm.IRModule, QuantizedStats]:
    """The whole int8 rewrite of a PT2E-quantized module (before constant folding);
    ``target`` (a tvm Target) chooses the pointwise dot instruction from its features;
    ``fuse=False`` keeps every depthwise unit its own operator."""
    from sepconv.schedules.int8_intrinsics import dot_intrinsic
    from sepconv.schedules.target_params import target_features

    mod = fold_qparams(mod)
    dot = dot_intrinsic(target_features(target)) if target is not None else None
    rw = _Lowering(mod, dot, fuse)
    pat = QuantizedConvPattern()

    clamped = _clamped_quantizes(mod["main"])

    def rewriter(p, lower):
        def rewrite(expr, m):
            if p.clamp.pattern not in m and m[p.quantize] in clamped:
                return expr  # its clamp is the unit's root
            new = lower(p.read(m))
            return expr if new is None else new

        return rewrite

    main = rewrite_call(pat.pattern, rewriter(pat, rw.unit), mod["main"])
    for map_pattern in (QuantizedGatePattern(), QuantizedMeanPattern(), QuantizedMaxPoolPattern()):
        main = rewrite_call(map_pattern.pattern, rewriter(map_pattern, rw.map_op), main)
    lin = QuantizedLinearPattern()

    def rewrite_linear(expr, m):
        new = rw.linear(lin.read(m))
        return expr if new is None else new

    main = rewrite_call(lin.pattern, rewrite_linear, main)
    out = propagate_channels_last(cancel_permutes(rw.module(main)))
    kept = {gv.name_hint for gv in out.get_global_vars()}  # a fused depthwise unit's is dead
    rw.stats.functions = {name: str(gv) for name, (gv, _) in rw.funcs.items() if name in kept}
    log.info("int8 rewrite: %s", rw.stats.to_json())
    return out, rw.stats
