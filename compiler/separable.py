"""Recognise depthwise-separable structure and rewrite it to our own operators.

    clip → max/min                     (so layout inference flows through ReLU6 / h-swish)
    ConvertLayout → NHWC, HWIO          (channels in the vector lanes; 2 transposes per model)
    dw → +b → act → pw 1×1   ⇒  sepconv_dw_pw   (fused: the dw output never goes to memory;
                                                 act: ReLU, ReLU6, h-swish, SiLU or none)
    depthwise conv           ⇒  sepconv_dw
    pointwise 1×1 conv       ⇒  sepconv_pw
    other dense conv         ⇒  sepconv_conv
    grouped, not depthwise   ⇒  left to TVM in NCHW (correct, scheduled by the generic rules)

The biases and activations after each operator stay Relax ops; FuseOps later merges them into
the operator's PrimFunc as an epilogue. A depthwise → pointwise pair is only fused when nothing
sits between them that needs the whole depthwise output first (squeeze-and-excitation pools the
full map before the pointwise conv, so SE blocks keep separate operators — fusing would need the
depthwise output twice).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import tvm
import tvm_ffi
from tvm import relax, te, tirx
from tvm.relax.dpl import is_const, is_op, rewrite_call, wildcard

from sepconv.compiler import sepconv_ops as ops
from sepconv.compiler.sepconv_ops import Activation

log = logging.getLogger(__name__)


@dataclass
class SeparableStats:
    fused_dw_pw: int = 0
    depthwise: int = 0
    pointwise: int = 0
    dense: int = 0
    left_to_tvm: int = 0
    functions: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "functions"}


def _scalar(v) -> float:
    v = getattr(v, "value", v)
    v = getattr(v, "value", v)
    if hasattr(v, "numpy"):
        v = v.numpy()
    return float(v)


def canonicalize_clip(func: relax.Function) -> relax.Function:
    """clip(x, lo, hi) → minimum(maximum(x, lo), hi): Relax has no layout inference for clip."""
    pat = is_op("relax.clip")(wildcard(), wildcard(), wildcard())

    def rewrite(expr, m):
        call = m[pat]
        x, lo, hi = call.args
        dtype = x.ty.dtype
        out = x
        if _scalar(lo) != float("-inf"):
            out = relax.op.maximum(out, relax.const(_scalar(lo), dtype))
        if _scalar(hi) != float("inf"):
            out = relax.op.minimum(out, relax.const(_scalar(hi), dtype))
        return out

    return rewrite_call(pat, rewrite, func)


def _is_depthwise(call) -> bool:
    groups = int(call.attrs["groups"])
    data_shape = call.args[0].ty.shape
    c_in = int(data_shape[1] if call.attrs["data_layout"] == "NCHW" else data_shape[3])
    return groups > 1 and groups == c_in


def _layout_cb(call):
    """NHWC for dense and depthwise convs; other grouped convs stay NCHW (TVM handles them)."""
    if not (isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.nn.conv2d"):
        return {"relax.nn.conv2d": ["NHWC", "HWIO"]}
    groups = int(call.attrs["groups"])
    if groups == 1 or _is_depthwise(call):
        return {"relax.nn.conv2d": ["NHWC", "HWIO"]}
    return {"relax.nn.conv2d": ["NCHW", "OIHW"]}


def to_channels_last(mod: tvm.IRModule) -> tvm.IRModule:
    out = tvm.IRModule(dict(mod.functions_items()), attrs=mod.attrs)
    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function):
            out[gv] = canonicalize_clip(func)
    out = relax.transform.ConvertLayout({"relax.nn.conv2d": ["NHWC", "HWIO"]}, _layout_cb)(out)
    return relax.transform.FoldConstant()(out)


def _conv_params(call):
    a = call.attrs
    pad = tuple(int(p) for p in a["padding"])  # top, left, bottom, right
    return (
        tuple(int(s) for s in a["strides"]),
        pad,
        tuple(int(d) for d in a["dilation"]),
    )


def _ph(shape, dtype: str, name: str) -> te.Tensor:
    """A placeholder with int64 dims, as Relax's own legalized PrimFuncs have (FuseTIR needs the
    buffers of producer and consumer to agree)."""
    return te.placeholder([tirx.IntImm("int64", int(s)) for s in shape], dtype, name=name)


def _te_placeholder(expr, name):
    return _ph(expr.ty.shape, expr.ty.dtype, name)


def _const(array: np.ndarray) -> relax.Expr:
    return relax.const(np.ascontiguousarray(array))


class _Rewriter:
    """Turns matched calls into call_tir of our TE operators, collecting the new PrimFuncs."""

    def __init__(self, mod: tvm.IRModule):
        # The BlockBuilder types the new GlobalVars, which call_tir requires.
        self.bb = relax.BlockBuilder(mod)
        self.funcs: dict[str, tuple[relax.GlobalVar, tirx.PrimFunc]] = {}
        self.by_hash: dict[int, tuple[str, tirx.PrimFunc]] = {}
        self.stats = SeparableStats()

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

    # -- single convs -------------------------------------------------------------------------
    def conv(self, call) -> relax.Expr | None:
        if call.attrs["data_layout"] != "NHWC" or call.attrs["kernel_layout"] != "HWIO":
            self.stats.left_to_tvm += 1
            return None
        x, w = call.args
        if not isinstance(w, tvm.ir.expr.Constant) or not hasattr(w.value, "numpy"):
            self.stats.left_to_tvm += 1
            return None
        wv = w.value.numpy()
        stride, pad, dil = _conv_params(call)
        xp = _te_placeholder(x, "x")
        if _is_depthwise(call):
            kh, kw, _, k_out = wv.shape
            multiplier = k_out // int(x.ty.shape[3])
            wp = _ph((kh, kw, k_out), wv.dtype, "w")
            out = ops.depthwise_nhwc(xp, wp, stride, pad, dil, multiplier)
            self.stats.depthwise += 1
            return self.emit("sepconv_dw", [xp, wp], out, [x, _const(wv.reshape(kh, kw, k_out))])
        if int(call.attrs["groups"]) != 1:
            self.stats.left_to_tvm += 1
            return None
        kh, kw, c, o = wv.shape
        if (kh, kw) == (1, 1) and stride == (1, 1) and not any(pad):
            wp = _ph((c, o), wv.dtype, "w")
            self.stats.pointwise += 1
            return self.emit(
                "sepconv_pw", [xp, wp], ops.pointwise_nhwc(xp, wp), [x, _const(wv[0, 0])]
            )
        wp = _ph(wv.shape, wv.dtype, "w")
        self.stats.dense += 1
        return self.emit("sepconv_conv", [xp, wp], ops.conv_nhwc(xp, wp, stride, pad, dil), [x, w])

    # -- fused depthwise → pointwise ----------------------------------------------------------
    def fused(self, m, pats) -> relax.Expr | None:
        dw_call, pw_call = m[pats.dw], m[pats.pw]
        if not (_is_depthwise(dw_call) and dw_call.attrs["data_layout"] == "NHWC"):
            return None
        if pw_call.attrs["data_layout"] != "NHWC" or pw_call.attrs["kernel_layout"] != "HWIO":
            return None
        pw_stride, pw_pad, _ = _conv_params(pw_call)
        wpw = m[pats.w_pw].value.numpy()
        if wpw.shape[:2] != (1, 1) or pw_stride != (1, 1) or any(pw_pad):
            return None
        if int(pw_call.attrs["groups"]) != 1:
            return None
        wdw = m[pats.w_dw].value.numpy()
        kh, kw, _, k_out = wdw.shape
        x = m[pats.x]
        if k_out != int(x.ty.shape[3]):  # channel multiplier > 1: not fused (rare)
            return None
        bias = m[pats.b_dw].value.numpy().reshape(-1)
        if bias.size != k_out:
            return None
        act = pats.activation(m)
        if act is None:
            return None
        stride, pad, dil = _conv_params(dw_call)
        xp = _te_placeholder(x, "x")
        wdp = _ph((kh, kw, k_out), wdw.dtype, "w_dw")
        bdp = _ph((k_out,), wdw.dtype, "b_dw")
        wpp = _ph(wpw.shape[2:], wpw.dtype, "w_pw")
        out = ops.fused_dw_pw_nhwc(xp, wdp, bdp, wpp, stride, pad, dil, act)
        self.stats.fused_dw_pw += 1
        args = [x, _const(wdw.reshape(kh, kw, k_out)), _const(bias), _const(wpw[0, 0])]
        return self.emit("sepconv_dw_pw", [xp, wdp, bdp, wpp], out, args)


class _FusedPatterns:
    """dw conv → + bias → (relu | relu6 | h-swish | SiLU | identity) → pw conv."""

    def __init__(self):
        self.x, self.w_dw, self.b_dw, self.w_pw = wildcard(), is_const(), is_const(), is_const()
        self.dw = is_op("relax.nn.conv2d")(self.x, self.w_dw)
        self.biased = is_op("relax.add")(self.dw, self.b_dw)
        b = self.biased
        self.relu = is_op("relax.nn.relu")(b)
        self.lo, self.hi = is_const(), is_const()
        self.relu6 = is_op("relax.minimum")(is_op("relax.maximum")(b, self.lo), self.hi)
        # h-swish as torch.export writes it (after clip → max/min): b · relu6(b + 3) / 6
        self.c3, self.c0, self.c6, self.d6 = is_const(), is_const(), is_const(), is_const()
        gate = is_op("relax.minimum")(
            is_op("relax.maximum")(is_op("relax.add")(b, self.c3), self.c0), self.c6
        )
        self.hswish = is_op("relax.divide")(is_op("relax.multiply")(b, gate), self.d6)
        self.silu = is_op("relax.multiply")(b, is_op("relax.sigmoid")(b))
        self.act = self.hswish | self.silu | self.relu6 | self.relu | b
        self.pw = is_op("relax.nn.conv2d")(self.act, self.w_pw)

    def activation(self, m) -> Activation | None:
        """The matched activation as a TE expression builder; None if its constants are odd."""
        f32 = "float32"
        if self.hswish in m:
            consts = [_scalar(m[c]) for c in (self.c3, self.c0, self.c6, self.d6)]
            if consts != [3.0, 0.0, 6.0, 6.0]:
                return None
            three, zero, six = (tirx.const(v, f32) for v in (3.0, 0.0, 6.0))
            return lambda v: v * te.min(te.max(v + three, zero), six) / six
        if self.silu in m:
            return lambda v: v * te.sigmoid(v)
        if self.relu6 in m:
            lo = tirx.const(_scalar(m[self.lo]), f32)
            hi = tirx.const(_scalar(m[self.hi]), f32)
            return lambda v: te.min(te.max(v, lo), hi)
        if self.relu in m:
            zero = tirx.const(0.0, f32)
            return lambda v: te.max(v, zero)
        return lambda v: v


def _or(new, old):
    return old if new is None else new


def rewrite_separable(mod: tvm.IRModule, fuse: bool = True) -> tuple[tvm.IRModule, SeparableStats]:
    """Rewrite ``main``'s convs into our operators (after :func:`to_channels_last`)."""
    rw = _Rewriter(mod)
    main = mod["main"]
    if fuse:
        pats = _FusedPatterns()
        main = rewrite_call(pats.pw, lambda e, m: _or(rw.fused(m, pats), e), main)
    conv = is_op("relax.nn.conv2d")(wildcard(), wildcard())
    main = rewrite_call(conv, lambda e, m: _or(rw.conv(m[conv]), e), main)
    out = rw.bb.get()
    out["main"] = main
    out = relax.transform.DeadCodeElimination()(out)
    rw.stats.functions = {name: str(gv) for name, (gv, _) in rw.funcs.items()}
    log.info("separable rewrite: %s", rw.stats.to_json())
    return out, rw.stats


def has_depthwise_conv(mod: tvm.IRModule) -> bool:
    found = []

    def visit(expr):
        if (
            isinstance(expr, relax.Call)
            and isinstance(expr.op, tvm.ir.Op)
            and expr.op.name == "relax.nn.conv2d"
            and _is_depthwise(expr)
        ):
            found.append(expr)

    for func in mod.functions.values():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func.body, visit)
    return bool(found)


def apply_separable_ops(
    mod: tvm.IRModule, fuse: bool = True
) -> tuple[tvm.IRModule, SeparableStats]:
    """The whole rewrite, on a module whose weights are still constants (BN already folded).

    A graph without a depthwise conv is returned unchanged: there is nothing separable in it.

    clip → max/min, NHWC layout, our operators, then constant folding of the weight transposes.
    """
    if not has_depthwise_conv(mod):
        return mod, SeparableStats()
    mod = to_channels_last(mod)
    mod, stats = rewrite_separable(mod, fuse=fuse)
    return relax.transform.FoldConstant()(mod), stats
