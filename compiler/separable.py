"""Recognise depthwise-separable structure and rewrite it to our own operators.

    clip → max/min                     (so layout inference flows through ReLU6 / h-swish)
    ConvertLayout → NHWC, HWIO          (channels in the vector lanes; 2 transposes per model)
    channel-only reshape / permute /    (ShuffleNet's split → concat → channel shuffle:
    split / concat kept NHWC             :mod:`sepconv.compiler.channels_last`)
    dw → +b → act → pw 1×1   ⇒  sepconv_dw_pw   (fused: the dw output never goes to memory;
                                                 act: ReLU, ReLU6, h-swish, SiLU or none)
    pw 1×1(x · g[c])         ⇒  sepconv_pw(x, W · g)  (a per-channel gate — squeeze-and-
                                                 excitation's — folded into the weights
                                                 when they are smaller than the map)
    depthwise conv           ⇒  sepconv_dw
    pointwise 1×1 conv       ⇒  sepconv_pw
    linear (constant weight) ⇒  sepconv_pw on [M, K] rows (the classifier)
    other dense conv         ⇒  sepconv_conv     (on permute_dims(x): reading x in NCHW, the
                                                 graph's input not transposed first)
    grouped, not depthwise   ⇒  left to TVM in NCHW (correct, scheduled by the generic rules)

The biases and activations after each operator stay Relax ops; FuseOps later merges them into
the operator's PrimFunc as an epilogue. A depthwise → pointwise pair is only fused when nothing
sits between them that needs the whole depthwise output first (squeeze-and-excitation pools the
full map before the pointwise conv, so SE blocks keep separate operators — fusing would need the
depthwise output twice).

What counts as a depthwise conv, a dw → act → pw block, an activation and a clip is
:mod:`sepconv.compiler.patterns` (shared with the CUDA rewrite); this file is the CPU rewrite.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import tvm
import tvm_ffi
from tvm import relax, te, tirx
from tvm.relax.dpl import is_op, rewrite_call, wildcard

from sepconv.compiler import sepconv_ops as ops
from sepconv.compiler.channels_last import propagate_channels_last
from sepconv.compiler.passes import fast_sigmoid_expr, fold_constants
from sepconv.compiler.patterns import (
    Act,
    SeparableMatch,
    SeparablePattern,
    conv_params,
    count_depthwise,
    dtype_of,
    normalize_clip,
    static_shape,
)
from sepconv.compiler.sepconv_ops import Activation
from sepconv.schedules.nhwc_tile import padded_channels, panel_width
from sepconv.schedules.target_params import CpuParams, cpu_params

log = logging.getLogger(__name__)


@dataclass
class SeparableStats:
    fused_dw_pw: int = 0
    depthwise: int = 0
    pointwise: int = 0
    dense: int = 0
    linear: int = 0
    gates_in_weights: int = 0
    left_to_tvm: int = 0
    functions: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "functions"}


def _layout_cb(call):
    """NHWC for dense and depthwise convs; other grouped convs stay NCHW (TVM handles them)."""
    if not (isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.nn.conv2d"):
        return {"relax.nn.conv2d": ["NHWC", "HWIO"]}
    params = conv_params(call)
    if params.groups == 1 or params.is_depthwise:
        return {"relax.nn.conv2d": ["NHWC", "HWIO"]}
    return {"relax.nn.conv2d": ["NCHW", "OIHW"]}


def to_channels_last(mod: tvm.IRModule) -> tvm.IRModule:
    out = normalize_clip(mod)
    out = relax.transform.ConvertLayout({"relax.nn.conv2d": ["NHWC", "HWIO"]}, _layout_cb)(out)
    return fold_constants(propagate_channels_last(out))


def te_placeholder(shape, dtype: str, name: str) -> te.Tensor:
    """A placeholder with int64 dims, as Relax's own legalized PrimFuncs have (FuseTIR needs the
    buffers of producer and consumer to agree)."""
    return te.placeholder([tirx.IntImm("int64", int(s)) for s in shape], dtype, name=name)


def _te_placeholder(expr, name):
    return te_placeholder(expr.ty.shape, expr.ty.dtype, name)


def _const(array: np.ndarray) -> relax.Expr:
    return relax.const(np.ascontiguousarray(array))


class FuncEmitter:
    """Adds TE operators to a module as PrimFuncs and returns call_tir of them; identical
    workloads share one PrimFunc (and so one tuning task). Every rewrite to our operators (fp32
    here, int8 in :mod:`sepconv.compiler.int8.lowering`) emits through it."""

    def __init__(self, mod: tvm.IRModule):
        # The BlockBuilder types the new GlobalVars, which call_tir requires.
        self.bb = relax.BlockBuilder(mod)
        self.funcs: dict[str, tuple[relax.GlobalVar, tirx.PrimFunc]] = {}
        self.by_hash: dict[int, tuple[str, tirx.PrimFunc]] = {}

    def emit(self, name: str, placeholders, out: te.Tensor, args) -> relax.Expr:
        func = te.create_prim_func([*placeholders, out]).without_attr("global_symbol")
        # Identical workloads share one PrimFunc (and so one tuning task).
        key = tvm_ffi.structural_hash(func)
        if key not in self.by_hash or not tvm_ffi.structural_equal(self.by_hash[key][1], func):
            fname = f"{name}_{len(self.funcs)}"
            self.by_hash[key] = (fname, func)
            self.funcs[fname] = (self.bb.add_func(func, fname), func)
        gv = self.funcs[self.by_hash[key][0]][0]
        out_ty = relax.TensorType([int(s) for s in out.shape], out.dtype)
        return relax.call_tir(gv, args, out_ty)

    def module(self, main: relax.Function) -> tvm.IRModule:
        """The module with the new PrimFuncs and ``main`` replaced, dead code removed."""
        out = self.bb.get()
        out["main"] = main
        return relax.transform.DeadCodeElimination()(out)


class _Rewriter(FuncEmitter):
    """Turns matched calls into call_tir of our fp32 TE operators."""

    def __init__(self, mod: tvm.IRModule, params: CpuParams):
        super().__init__(mod)
        self.stats = SeparableStats()
        self.params = params

    def pointwise_weights(self, w_co: np.ndarray, name: str) -> tuple[te.Tensor, relax.Expr]:
        """The placeholder and the packed constant of a pointwise conv's ``[C, O]`` weights
        (output channels padded to whole vectors: :func:`padded_channels`)."""
        padded = padded_channels(w_co.shape[1], self.params)
        packed = ops.pack_pointwise(w_co, panel_width(padded, self.params), padded)
        return te_placeholder(packed.shape, packed.dtype, name), _const(packed)

    # -- single convs -------------------------------------------------------------------------
    def conv(self, call) -> relax.Expr | None:
        p = conv_params(call)
        if p.data_layout != "NHWC" or p.kernel_layout != "HWIO":
            self.stats.left_to_tvm += 1
            return None
        x, w = call.args
        if not isinstance(w, tvm.ir.expr.Constant) or not hasattr(w.value, "numpy"):
            self.stats.left_to_tvm += 1
            return None
        wv = w.value.numpy()
        xp = _te_placeholder(x, "x")
        if p.is_depthwise:
            kh, kw, _, k_out = wv.shape
            wp = te_placeholder((kh, kw, k_out), wv.dtype, "w")
            out = ops.depthwise_nhwc(xp, wp, p.stride, p.padding, p.dilation, p.multiplier)
            self.stats.depthwise += 1
            return self.emit("sepconv_dw", [xp, wp], out, [x, _const(wv.reshape(kh, kw, k_out))])
        if p.groups != 1:
            self.stats.left_to_tvm += 1
            return None
        if p.is_pointwise:
            wp, packed = self.pointwise_weights(wv[0, 0], "w")
            self.stats.pointwise += 1
            out = ops.pointwise_nhwc(xp, wp, wv.shape[-1])
            return self.emit("sepconv_pw", [xp, wp], out, [x, packed])
        wp = te_placeholder(wv.shape, wv.dtype, "w")
        self.stats.dense += 1
        out = ops.conv_nhwc(xp, wp, p.stride, p.padding, p.dilation)
        return self.emit("sepconv_conv", [xp, wp], out, [x, w])

    def gated_pointwise(self, call, gated) -> relax.Expr | None:
        """``pw(x · g)`` with ``g`` one value per input channel, computed at run time
        (squeeze-and-excitation's gate) ⇒ ``pw(x)`` on weights scaled by ``g``.

        ``W·(g ⊙ x) = (W·diag g)·x``: scaling the packed ``[P/B, C, B]`` weights by ``g[c]`` reads
        and writes C·P floats where multiplying the map reads and writes H·W·C. So the gate is
        folded when P < H·W — EfficientNet-B0's 112² to 14² blocks, not its 7² ones, whose
        weights outweigh the map — and the map is never passed over just to be gated. Batch 1
        only: a batch has one gate per image, and so would need one weight copy per image.
        """
        p = conv_params(call)
        if p.data_layout != "NHWC" or p.kernel_layout != "HWIO" or not p.is_pointwise:
            return None
        if p.groups != 1 or not isinstance(call.args[1], tvm.ir.expr.Constant):
            return None
        x_shape = static_shape(call.args[0])
        if x_shape is None or len(x_shape) != 4 or x_shape[0] != 1:
            return None
        n, h, w, c = x_shape
        gate_shape = (n, 1, 1, c)
        a, b = gated.args
        x, gate = (a, b) if static_shape(b) == gate_shape else (b, a)
        if static_shape(x) != x_shape or static_shape(gate) != gate_shape:
            return None
        if {dtype_of(x), dtype_of(gate)} != {"float32"}:
            return None
        wv = call.args[1].value.numpy()
        if padded_channels(wv.shape[-1], self.params) >= h * w:
            return None
        wp, packed = self.pointwise_weights(wv[0, 0], "w")
        scaled = relax.op.multiply(packed, relax.op.reshape(gate, (1, c, 1)))
        self.stats.pointwise += 1
        self.stats.gates_in_weights += 1
        xp = _te_placeholder(x, "x")
        out = ops.pointwise_nhwc(xp, wp, wv.shape[-1])
        return self.emit("sepconv_pw", [xp, wp], out, [x, scaled])

    def conv_of_transposed_input(self, call, permute) -> relax.Expr | None:
        """``conv(permute_dims(x, NCHW → NHWC))``, a dense conv: the stem, reading ``x`` in the
        layout the caller passed it, so the graph's input is not copied into NHWC first (a
        whole pass over the input: 30 µs of MobileNetV3-Small's 0.88 ms profiled, 2 threads)."""
        p = conv_params(call)
        axes = [int(a) for a in permute.attrs.axes] if permute.attrs.axes is not None else None
        if axes != [0, 2, 3, 1] or p.data_layout != "NHWC" or p.kernel_layout != "HWIO":
            return None
        if p.groups != 1 or p.is_pointwise or not isinstance(call.args[1], tvm.ir.expr.Constant):
            return None
        x = permute.args[0]
        if static_shape(x) is None or dtype_of(x) != "float32":
            return None
        wv = call.args[1].value.numpy()
        xp = _te_placeholder(x, "x")
        wp = te_placeholder(wv.shape, wv.dtype, "w")
        self.stats.dense += 1
        out = ops.conv_nhwc(xp, wp, p.stride, p.padding, p.dilation, input_layout="NCHW")
        return self.emit("sepconv_conv", [xp, wp], out, [x, call.args[1]])

    def linear(self, call) -> relax.Expr | None:
        """``matmul(x[M, K], W[K, N])`` with constant weights (the classifier): the pointwise
        GEMM, its weights packed, where TVM's matmul reads them a strided column at a time."""
        x, w = call.args
        if not isinstance(w, tvm.ir.expr.Constant) or x.ty.shape is None or len(x.ty.shape) != 2:
            return None
        wv = w.value.numpy()
        if wv.ndim != 2 or str(wv.dtype) != "float32" or x.ty.dtype != "float32":
            return None
        xp = _te_placeholder(x, "x")
        wp, packed = self.pointwise_weights(wv, "w")
        self.stats.linear += 1
        out = ops.linear_packed(xp, wp, wv.shape[1])
        return self.emit("sepconv_linear", [xp, wp], out, [x, packed])

    # -- fused depthwise → pointwise ----------------------------------------------------------
    def fused(self, block: SeparableMatch | None) -> relax.Expr | None:
        """dw → + b → act → pw in NHWC / HWIO, channel multiplier 1, as one operator."""
        if block is None:
            return None
        dw, pw = block.dw.params, block.pw.params
        if dw.data_layout != "NHWC" or pw.data_layout != "NHWC" or pw.kernel_layout != "HWIO":
            return None
        if dw.multiplier != 1 or block.dw.bias is None:  # multiplier > 1: not fused (rare)
            return None
        act = te_activation(block.act_dw)
        if act is None:
            return None
        wdw, wpw = block.dw.w.value.numpy(), block.pw.w.value.numpy()
        kh, kw, _, k_out = wdw.shape
        bias = block.dw.bias.value.numpy().reshape(-1)
        x = block.x
        xp = _te_placeholder(x, "x")
        wdp = te_placeholder((kh, kw, k_out), wdw.dtype, "w_dw")
        bdp = te_placeholder((k_out,), wdw.dtype, "b_dw")
        wpp, packed = self.pointwise_weights(wpw[0, 0], "w_pw")
        out = ops.fused_dw_pw_nhwc(
            xp, wdp, bdp, wpp, dw.stride, dw.padding, dw.dilation, act, wpw.shape[-1]
        )
        self.stats.fused_dw_pw += 1
        args = [x, _const(wdw.reshape(kh, kw, k_out)), _const(bias), packed]
        return self.emit("sepconv_dw_pw", [xp, wdp, bdp, wpp], out, args)


def te_activation(act: Act) -> Activation | None:
    """The matched activation as a TE expression builder (every kind the patterns name)."""
    f32 = "float32"
    if act.kind == "hswish":
        three, zero, six = (tirx.const(v, f32) for v in (3.0, 0.0, 6.0))
        return lambda v: v * te.min(te.max(v + three, zero), six) / six
    if act.kind == "silu":
        return lambda v: v * fast_sigmoid_expr(v)
    if act.kind == "relu":
        zero = tirx.const(0.0, f32)
        return lambda v: te.max(v, zero)
    if act.kind in ("relu6", "clamp"):
        lo, hi = tirx.const(act.lo, f32), tirx.const(act.hi, f32)
        if act.hi == float("inf"):
            return lambda v: te.max(v, lo)
        if act.lo == -float("inf"):
            return lambda v: te.min(v, hi)
        return lambda v: te.min(te.max(v, lo), hi)
    return lambda v: v


def _or(new, old):
    return old if new is None else new


def rewrite_separable(
    mod: tvm.IRModule, target: tvm.target.Target, fuse: bool = True
) -> tuple[tvm.IRModule, SeparableStats]:
    """Rewrite ``main``'s convs into our operators (after :func:`to_channels_last`); the
    pointwise weights are packed for ``target``'s GEMM micro-kernel."""
    rw = _Rewriter(mod, cpu_params(target))
    main = mod["main"]
    if fuse:
        pats = SeparablePattern()
        main = rewrite_call(pats.pw_conv, lambda e, m: _or(rw.fused(pats.read(m)), e), main)
    gated = is_op("relax.multiply")(wildcard(), wildcard())
    gated_pw = is_op("relax.nn.conv2d")(gated, wildcard())
    main = rewrite_call(
        gated_pw, lambda e, m: _or(rw.gated_pointwise(m[gated_pw], m[gated]), e), main
    )
    permute = is_op("relax.permute_dims")(wildcard())
    conv_of_permute = is_op("relax.nn.conv2d")(permute, wildcard())
    main = rewrite_call(
        conv_of_permute,
        lambda e, m: _or(rw.conv_of_transposed_input(m[conv_of_permute], m[permute]), e),
        main,
    )
    conv = is_op("relax.nn.conv2d")(wildcard(), wildcard())
    main = rewrite_call(conv, lambda e, m: _or(rw.conv(m[conv]), e), main)
    matmul = is_op("relax.matmul")(wildcard(), wildcard())
    main = rewrite_call(matmul, lambda e, m: _or(rw.linear(m[matmul]), e), main)
    out = rw.module(main)
    rw.stats.functions = {name: str(gv) for name, (gv, _) in rw.funcs.items()}
    log.info("separable rewrite: %s", rw.stats.to_json())
    return out, rw.stats


def has_depthwise_conv(mod: tvm.IRModule) -> bool:
    return any(
        count_depthwise(func) for func in mod.functions.values() if isinstance(func, relax.Function)
    )


def apply_separable_ops(
    mod: tvm.IRModule, target: tvm.target.Target, fuse: bool = True, always: bool = False
) -> tuple[tvm.IRModule, SeparableStats]:
    """The whole rewrite, on a module whose weights are still constants (BN already folded).

    A graph without a depthwise conv is returned unchanged (there is nothing separable in it)
    unless ``always``: an int8 graph's depthwise convs are already integer operators, and the
    float convs its quantizer left (ShuffleNetV2's last 1×1 conv) still want ours.

    clip → max/min, NHWC layout, our operators, then constant folding of the weight transposes.
    """
    if not always and not has_depthwise_conv(mod):
        return mod, SeparableStats()
    mod = to_channels_last(mod)
    mod, stats = rewrite_separable(mod, target, fuse=fuse)
    return fold_constants(mod), stats
