"""CUDA graph rewrite: the separable hot paths become embedded Triton kernels.

Runs on ``main`` after BatchNorm folding (weights still constants), for CUDA targets only::

    dw conv → +b → act → 1×1 conv → +b [→ act] [+ residual]   ⇒  triton_fused_dw_pw
    mean(x) → 1×1 conv → +b → act → 1×1 conv → +b → gate → x·g ⇒  triton_se (2 launches)
    dw conv [→ +b] [→ act]                                    ⇒  triton_dw

(act: ReLU, ReLU6, h-swish, SiLU or none; gate: sigmoid or hard-sigmoid; every form as
``torch.export`` writes it, e.g. ReLU6 as one or two ``clip``.) Each match becomes a
``call_tir`` of a host TIR function that launches the kernel from
``sepconv.schedules.triton_*``; :mod:`sepconv.schedules.triton_embed` compiles the kernel for
the target's ``sm_XX`` (no GPU needed) and the CUDA modules travel in the IRModule's
``external_mods``, so ``tvm.compile`` links them into the one library.

Matching walks the dataflow bindings from the last to the first, so the largest pattern ending
at a binding wins, and takes a chain only when its intermediate values have no user outside it
(otherwise the rewrite would compute them twice). Convs with a channel multiplier, grouped convs
that are not depthwise, and layouts other than NCHW/OIHW stay with TVM (dlight rules).
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from dataclasses import dataclass, field

import tvm
import tvm_ffi
from tvm import relax, tirx
from tvm.relax.expr_functor import PyExprMutator, mutator

from sepconv.errors import CompileError

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16")


@dataclass
class TritonStats:
    fused_dw_pw: int = 0
    depthwise: int = 0
    se: int = 0
    left_to_tvm: int = 0  # depthwise convs no Triton kernel took
    kernels: list[str] = field(default_factory=list)  # distinct Triton specialisations

    def to_json(self) -> dict:
        return {
            "fused_dw_pw": self.fused_dw_pw,
            "depthwise": self.depthwise,
            "se": self.se,
            "left_to_tvm": self.left_to_tvm,
            "kernels": len(self.kernels),
        }


def mixed_precision(mod: tvm.IRModule, precision: str) -> tvm.IRModule:
    """``fp16``: convs, matmuls and the ops between them in float16 (accumulating in float16 in
    TVM's kernels, float32 in ours); inputs and outputs stay float32."""
    if precision not in PRECISIONS:
        raise CompileError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp32":
        return mod
    mod = relax.transform.ToMixedPrecision(out_dtype="float16")(clip_to_min_max(mod))
    return relax.transform.FoldConstant()(mod)


# ---------------------------------------------------------------------------------------------
# Reading the graph


def _num(expr) -> float | None:
    """A scalar constant / PrimValue as float, else None."""
    v = expr
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


def _shape(expr) -> tuple[int, ...] | None:
    ty = getattr(expr, "ty", None)
    if not isinstance(ty, relax.TensorType) or ty.shape is None:
        return None
    try:
        return tuple(int(s) for s in ty.shape)
    except (TypeError, AttributeError, ValueError):
        return None


def _dtype(expr) -> str:
    return str(expr.ty.dtype)


class _Graph:
    """The bindings of ``main``: what each Var is bound to and who uses it."""

    def __init__(self, func: relax.Function):
        self.value: dict = {}
        self.users: dict = defaultdict(set)
        self.order: list = []
        for block in func.body.blocks:
            for binding in block.bindings:
                if not isinstance(binding, relax.VarBinding):
                    continue
                self.value[binding.var] = binding.value
                self.order.append(binding.var)
                for used in _vars_in(binding.value):
                    self.users[used].add(binding.var)
        for used in _vars_in(func.body.body):
            self.users[used].add(None)  # the function's result

    def call(self, var, *ops):
        value = self.value.get(var) if isinstance(var, relax.Var) else None
        if (
            isinstance(value, relax.Call)
            and isinstance(value.op, tvm.ir.Op)
            and value.op.name in ops
        ):
            return value
        return None

    def num(self, expr) -> float | None:
        """A scalar constant, also when bound to a Var as ``astype(constant)`` (fp16 graphs)."""
        if isinstance(expr, relax.Var):
            cast = self.call(expr, "relax.astype")
            return _num(cast.args[0]) if cast is not None else None
        return _num(expr)

    def only_used_by(self, var, allowed) -> bool:
        return self.users.get(var, set()) <= set(allowed)


def _vars_in(expr) -> list:
    found = []

    def visit(e):
        if isinstance(e, relax.Var):
            found.append(e)

    relax.analysis.post_order_visit(expr, visit)
    return found


def _bound_step(g: _Graph, var):
    """var = clip(v, lo, hi) | maximum(v, lo) | minimum(v, hi) with constant bounds →
    (v, lo, hi); None for anything else."""
    c = g.call(var, "relax.clip", "relax.maximum", "relax.minimum")
    if c is None:
        return None
    inf = float("inf")
    if c.op.name == "relax.clip":
        lo, hi = g.num(c.args[1]), g.num(c.args[2])
        return (c.args[0], lo, hi) if lo is not None and hi is not None else None
    bound = g.num(c.args[1])
    if bound is None:
        return None
    return (c.args[0], bound, inf) if c.op.name == "relax.maximum" else (c.args[0], -inf, bound)


def _clip_chain(g: _Graph, var):
    """One or two clips (or their maximum/minimum form, which fp16 builds use) → (v, lo, hi,
    claimed vars)."""
    step = _bound_step(g, var)
    if step is None:
        return None
    inner, lo, hi = step
    claimed = [var]
    step = _bound_step(g, inner)
    if step is not None and g.only_used_by(inner, claimed):
        claimed.append(inner)
        inner, lo2, hi2 = step
        lo, hi = max(lo, lo2), min(hi, hi2)
    return inner, lo, hi, claimed


def clip_to_min_max(mod: tvm.IRModule) -> tvm.IRModule:
    """clip(x, lo, hi) → minimum(maximum(x, lo), hi) with tensor constants of x's dtype:
    ``ToMixedPrecision`` cannot type clip's scalar (PrimValue) bounds."""

    @mutator
    class _Clip(PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            if isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.clip":
                x = call.args[0]
                lo, hi = _num(call.args[1]), _num(call.args[2])
                dtype = _dtype(x)
                if not math.isinf(lo):
                    x = self.builder_.emit(relax.op.maximum(x, relax.const(lo, dtype)))
                if not math.isinf(hi):
                    x = relax.op.minimum(x, relax.const(hi, dtype))
                return x
            return call

    rewriter = _Clip(mod)
    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function):
            rewriter.builder_.update_func(gv, rewriter.visit_expr(func))
    return rewriter.builder_.get()


def _hard_gate(g: _Graph, var):
    """clip(v + 3, 0, 6) → (v, claimed)."""
    chain = _clip_chain(g, var)
    if chain is None or (chain[1], chain[2]) != (0.0, 6.0):
        return None
    inner, _, _, claimed = chain
    add = g.call(inner, "relax.add")
    if add is None or g.num(add.args[1]) != 3.0 or not g.only_used_by(inner, claimed):
        return None
    return add.args[0], claimed + [inner]


def _activation(g: _Graph, var):
    """var = act(b) → (act name, b, claimed vars) for relu/relu6/hswish/silu; None otherwise."""
    c = g.call(var, "relax.nn.relu")
    if c is not None:
        return "relu", c.args[0], [var]
    chain = _clip_chain(g, var)
    if chain is not None:
        inner, lo, hi, claimed = chain
        if lo == 0.0 and hi == 6.0:
            return "relu6", inner, claimed
        if lo == 0.0 and math.isinf(hi):
            return "relu", inner, claimed
        return None
    div = g.call(var, "relax.divide")
    if div is not None and g.num(div.args[1]) == 6.0:  # h-swish: b · clip(b + 3, 0, 6) / 6
        mul = g.call(div.args[0], "relax.multiply")
        if mul is not None and g.only_used_by(div.args[0], [var]):
            gate = _hard_gate(g, mul.args[1])
            if gate is not None and gate[0].same_as(mul.args[0]):
                claimed = [var, div.args[0], mul.args[1], *gate[1]]
                if g.only_used_by(mul.args[1], claimed):
                    return "hswish", mul.args[0], claimed
        return None
    mul = g.call(var, "relax.multiply")
    if mul is not None:  # SiLU: b · sigmoid(b)
        sig = g.call(mul.args[1], "relax.sigmoid")
        if sig is not None and sig.args[0].same_as(mul.args[0]):
            if g.only_used_by(mul.args[1], [var]):
                return "silu", mul.args[0], [var, mul.args[1]]
    return None


def _gate(g: _Graph, var):
    """var = gate(s) → ("sigmoid" | "hsigmoid", s, claimed)."""
    c = g.call(var, "relax.sigmoid")
    if c is not None:
        return "sigmoid", c.args[0], [var]
    div = g.call(var, "relax.divide")
    if div is not None and g.num(div.args[1]) == 6.0:
        gate = _hard_gate(g, div.args[0])
        if gate is not None and g.only_used_by(div.args[0], [var]):
            return "hsigmoid", gate[0], [var, div.args[0], *gate[1]]
    return None


def _act_or_none(g: _Graph, var):
    found = _activation(g, var)
    return found if found is not None else ("none", var, [])


def _biased_conv(g: _Graph, var):
    """var = conv2d(x, W) + b or conv2d(x, W) → (conv call, bias const | None, claimed)."""
    add = g.call(var, "relax.add")
    if add is not None:
        conv = g.call(add.args[0], "relax.nn.conv2d")
        if conv is not None and isinstance(add.args[1], tvm.ir.expr.Constant):
            if g.only_used_by(add.args[0], [var]):
                return conv, add.args[1], [var, add.args[0]]
        return None
    conv = g.call(var, "relax.nn.conv2d")
    if conv is not None:
        return conv, None, [var]
    return None


def _conv_info(conv) -> dict | None:
    a = conv.attrs
    if a["data_layout"] != "NCHW" or a["kernel_layout"] != "OIHW":
        return None
    if str(a["out_layout"]) not in ("NCHW", ""):
        return None
    x, w = conv.args
    xs, ws = _shape(x), _shape(w)
    if xs is None or ws is None or len(xs) != 4 or not isinstance(w, tvm.ir.expr.Constant):
        return None
    strides = [int(s) for s in a["strides"]]
    dil = [int(d) for d in a["dilation"]]
    pad = [int(p) for p in a["padding"]]
    if strides[0] != strides[1] or dil[0] != dil[1]:
        return None
    dtype = _dtype(conv)
    if dtype not in ("float32", "float16") or _dtype(x) != dtype or _dtype(w) != dtype:
        return None
    return {
        "x": x, "w": w, "xs": xs, "ws": ws, "ys": _shape(conv), "stride": strides[0],
        "dil": dil[0], "pad": pad, "groups": int(a["groups"]), "dtype": dtype,
    }  # fmt: skip


def _is_depthwise(info: dict) -> bool:
    c = info["xs"][1]
    return info["groups"] == c > 1 and info["ws"][0] == c and info["ws"][1] == 1


def _is_pointwise(info: dict) -> bool:
    return (
        info["groups"] == 1
        and info["ws"][2:] == (1, 1)
        and info["stride"] == 1
        and not any(info["pad"])
    )


def _bias_ok(bias, channels: int) -> bool:
    return bias is None or _shape(bias) in ((1, channels, 1, 1), (channels,))


# ---------------------------------------------------------------------------------------------
# Matches


@dataclass
class _Match:
    kind: str  # "fused_dw_pw" | "se" | "depthwise"
    root: object  # the Var whose binding is replaced
    claimed: list
    params: dict


def _match_depthwise_chain(g: _Graph, var):
    """var = act(conv_dw(x) + b) (either part optional) → (params, claimed)."""
    act, inner, claimed = _act_or_none(g, var)
    biased = _biased_conv(g, inner)
    if biased is None:
        return None
    conv, bias, more = biased
    info = _conv_info(conv)
    if info is None or not _is_depthwise(info) or not _bias_ok(bias, info["xs"][1]):
        return None
    claimed = claimed + [v for v in more if v not in claimed]
    if not all(g.only_used_by(v, claimed) for v in claimed if not v.same_as(var)):
        return None
    return {"dw": info, "b_dw": bias, "act_dw": act}, claimed


def match_fused(g: _Graph, var) -> _Match | None:
    """[residual +] act2(conv_pw(act1(conv_dw(x) + b1)) + b2)."""
    candidates = []
    add = g.call(var, "relax.add")
    if add is not None:
        for main, res in ((add.args[1], add.args[0]), (add.args[0], add.args[1])):
            if isinstance(main, relax.Var) and isinstance(res, relax.Var):
                candidates.append((main, res, [var]))
    candidates.append((var, None, []))
    for top, residual, claimed0 in candidates:
        act_pw, inner, claimed = _act_or_none(g, top)
        if claimed0 and act_pw == "none" and not top.same_as(inner):
            continue
        pw = _biased_conv(g, inner)
        if pw is None:
            continue
        conv_pw, b_pw, more = pw
        info_pw = _conv_info(conv_pw)
        if info_pw is None or not _is_pointwise(info_pw):
            continue
        if not _bias_ok(b_pw, info_pw["ws"][0]):
            continue
        dw = _match_depthwise_chain(g, info_pw["x"])
        if dw is None:
            continue
        params, claimed_dw = dw
        if info_pw["dtype"] != params["dw"]["dtype"]:
            continue
        if residual is not None and (
            _shape(residual) != info_pw["ys"] or _dtype(residual) != info_pw["dtype"]
        ):
            continue
        all_claimed = list(dict.fromkeys(claimed0 + [top] + claimed + more + claimed_dw))
        if residual is not None and any(residual.same_as(v) for v in all_claimed):
            continue  # the "residual" is the block's own intermediate: not a skip connection
        inner_vars = [v for v in all_claimed if not v.same_as(var)]
        if not all(g.only_used_by(v, all_claimed) for v in inner_vars):
            continue
        params.update(pw=info_pw, b_pw=b_pw, act_pw=act_pw, residual=residual)
        return _Match("fused_dw_pw", var, all_claimed, params)
    return None


def match_se(g: _Graph, var) -> _Match | None:
    """x · gate(conv(act(conv(mean_hw(x)) + b1)) + b2)."""
    mul = g.call(var, "relax.multiply")
    if mul is None:
        return None
    x, gvar = mul.args
    xs = _shape(x)
    if xs is None or len(xs) != 4 or _dtype(x) not in ("float32", "float16"):
        return None
    gate = _gate(g, gvar)
    if gate is None:
        return None
    gate_name, s2, claimed = gate
    fc2 = _biased_conv(g, s2)
    if fc2 is None:
        return None
    conv2, b2, more2 = fc2
    act, h, claimed_act = _act_or_none(g, conv2.args[0])
    fc1 = _biased_conv(g, h)
    if fc1 is None or act not in ("relu", "silu", "relu6", "hswish", "none"):
        return None
    conv1, b1, more1 = fc1
    pooled = conv1.args[0]
    chain = [pooled]
    cast = g.call(pooled, "relax.astype")
    if cast is not None:
        pooled = cast.args[0]
        chain.append(pooled)
    mean = g.call(pooled, "relax.mean")
    if mean is None or not bool(mean.attrs["keepdims"]):
        return None
    axes = sorted(int(a) % 4 for a in mean.attrs["axis"])
    src = mean.args[0]
    cast_in = g.call(src, "relax.astype")
    if cast_in is not None:
        chain.append(src)
        src = cast_in.args[0]
    if axes != [2, 3] or not src.same_as(x):
        return None
    c = xs[1]
    w1, w2 = conv1.args[1], conv2.args[1]
    if not (isinstance(w1, tvm.ir.expr.Constant) and isinstance(w2, tvm.ir.expr.Constant)):
        return None
    cr = _shape(w1)[0]
    if _shape(w1) != (cr, c, 1, 1) or _shape(w2) != (c, cr, 1, 1) or b1 is None or b2 is None:
        return None
    if not (_bias_ok(b1, cr) and _bias_ok(b2, c)):
        return None
    all_claimed = list(dict.fromkeys([var, *claimed, *more2, *claimed_act, *more1, *chain]))
    if not all(g.only_used_by(v, all_claimed) for v in all_claimed if not v.same_as(var)):
        return None
    params = {"x": x, "xs": xs, "w1": w1, "b1": b1, "w2": w2, "b2": b2, "cr": cr, "act": act,
              "gate": gate_name, "dtype": _dtype(x)}  # fmt: skip
    return _Match("se", var, all_claimed, params)


def match_depthwise(g: _Graph, var) -> _Match | None:
    found = _match_depthwise_chain(g, var)
    if found is None:
        return None
    return _Match("depthwise", var, found[1], found[0])


def find_matches(func: relax.Function, fuse: bool = True) -> list[_Match]:
    """Non-overlapping matches, downstream bindings first, larger patterns first."""
    g = _Graph(func)
    taken: set = set()
    matches = []
    matchers = ([match_fused] if fuse else []) + [match_se, match_depthwise]
    for var in reversed(g.order):
        if var in taken:
            continue
        for matcher in matchers:
            m = matcher(g, var)
            if m is not None and not any(v in taken for v in m.claimed):
                matches.append(m)
                taken.update(m.claimed)
                break
    return matches


# ---------------------------------------------------------------------------------------------
# Emitting kernels


def _buffer(name: str, shape, dtype: str) -> tirx.Buffer:
    return tirx.decl_buffer([int(s) for s in shape], dtype, name=name)


def _or(buf, other):
    return buf if buf is not None else other


def _i32(v: int):
    return tirx.const(int(v), "int32")


class _Emitter:
    def __init__(self, target):
        from sepconv.schedules import triton_embed

        self.target = target
        self.embed = triton_embed
        self.funcs: dict[int, list] = {}  # structural hash → [(PrimFunc, name)]
        self.modules: list = []
        self.kernels: list[str] = []

    def launcher(self, prefix: str, buffers, launches) -> tuple[tirx.PrimFunc, str]:
        func, modules = self.embed.launch_primfunc(buffers, launches, self.target)
        for m in modules:
            if not any(m.same_as(e) for e in self.modules):
                self.modules.append(m)
        for kernel in self.embed.embedded_kernels().values():
            if kernel.name not in self.kernels and any(kernel.module.same_as(m) for m in modules):
                self.kernels.append(kernel.name)
        key = tvm_ffi.structural_hash(func)
        for known, name in self.funcs.get(key, []):
            if tvm_ffi.structural_equal(known, func):
                return known, name
        name = f"triton_{prefix}_{sum(len(v) for v in self.funcs.values())}"
        self.funcs.setdefault(key, []).append((func, name))
        return func, name

    # each returns (PrimFunc, name, call_tir args, out struct info list, output index)
    def depthwise(self, p):
        from sepconv.schedules import triton_depthwise as K
        from sepconv.schedules.triton_common import act_code

        dw, bias = p["dw"], p["b_dw"]
        n, c, h, w = dw["xs"]
        _, _, oh, ow = dw["ys"]
        kh, kw = dw["ws"][2:]
        cfg = K.pick_config(c, oh, ow, channels_last=False)
        meta = {k: v for k, v in cfg.kwargs.items() if k != "LAYOUT_NHWC"}
        X = _buffer("x", dw["xs"], dw["dtype"])
        W = _buffer("w", dw["ws"], dw["dtype"])
        B = _buffer("b", _shape(bias), dw["dtype"]) if bias is not None else None
        Y = _buffer("y", dw["ys"], dw["dtype"])
        args = [X.data, W.data, _or(B, W).data, Y.data, *map(_i32, (c, h, w, oh, ow)),
                kh, kw, dw["stride"], dw["pad"][0], dw["pad"][1], dw["dil"], bias is not None,
                act_code(p["act_dw"]), False, meta["BLOCK_P"], meta["BLOCK_C"]]  # fmt: skip
        launch = self.embed.Launch(
            K.depthwise_kernel, args, K.grid(n, c, oh, ow, meta),
            {"num_warps": cfg.num_warps, "num_stages": cfg.num_stages}, prefix="dw",
        )  # fmt: skip
        buffers = [X, W] + ([B] if B is not None else []) + [Y]
        func, name = self.launcher("dw", buffers, [launch])
        call_args = [dw["x"], dw["w"]] + ([bias] if bias is not None else [])
        return func, name, call_args, [relax.TensorType(dw["ys"], dw["dtype"])], None

    def fused(self, p):
        from sepconv.schedules import triton_fused_dw_pw as K
        from sepconv.schedules.triton_common import act_code

        dw, pw = p["dw"], p["pw"]
        b_dw, b_pw, res = p["b_dw"], p["b_pw"], p["residual"]
        n, c, h, w = dw["xs"]
        _, co, oh, ow = pw["ys"]
        kh, kw = dw["ws"][2:]
        dtype = dw["dtype"]
        cfg = K.pick_config(c, co, oh, ow, channels_last=False)
        meta = {k: v for k, v in cfg.kwargs.items() if k != "LAYOUT_NHWC"}
        X = _buffer("x", dw["xs"], dtype)
        WD = _buffer("w_dw", dw["ws"], dtype)
        BD = _buffer("b_dw", _shape(b_dw), dtype) if b_dw is not None else None
        WP = _buffer("w_pw", pw["ws"], dtype)
        BP = _buffer("b_pw", _shape(b_pw), dtype) if b_pw is not None else None
        R = _buffer("residual", pw["ys"], dtype) if res is not None else None
        Y = _buffer("y", pw["ys"], dtype)
        args = [X.data, WD.data, _or(BD, WD).data, WP.data, _or(BP, WP).data, _or(R, Y).data,
                Y.data, *map(_i32, (c, h, w, oh, ow, co)), kh, kw, dw["stride"], dw["pad"][0],
                dw["pad"][1], dw["dil"], b_dw is not None, act_code(p["act_dw"]),
                b_pw is not None, act_code(p["act_pw"]), res is not None, False,
                meta["BLOCK_P"], meta["BLOCK_CO"], meta["BLOCK_CI"]]  # fmt: skip
        launch = self.embed.Launch(
            K.fused_dw_pw_kernel, args, K.grid(n, co, oh, ow, meta),
            {"num_warps": cfg.num_warps, "num_stages": cfg.num_stages}, prefix="dw_pw",
        )  # fmt: skip
        buffers = [b for b in (X, WD, BD, WP, BP, R) if b is not None] + [Y]
        func, name = self.launcher("dw_pw", buffers, [launch])
        call_args = [dw["x"], dw["w"]] + ([b_dw] if b_dw is not None else []) + [pw["w"]]
        call_args += ([b_pw] if b_pw is not None else []) + ([res] if res is not None else [])
        return func, name, call_args, [relax.TensorType(pw["ys"], dtype)], None

    def se(self, p):
        from sepconv.schedules import triton_se as K
        from sepconv.schedules.triton_common import act_code, next_pow2

        n, c, h, w = p["xs"]
        hw, cr, dtype = h * w, p["cr"], p["dtype"]
        pool_cfg, scale_cfg = K.pick_configs(c, hw, channels_last=False)
        pm = {k: v for k, v in pool_cfg.kwargs.items() if k != "LAYOUT_NHWC"}
        sm = {k: v for k, v in scale_cfg.kwargs.items() if k != "LAYOUT_NHWC"}
        X = _buffer("x", p["xs"], dtype)
        W1 = _buffer("w1", _shape(p["w1"]), dtype)
        B1 = _buffer("b1", _shape(p["b1"]), dtype)
        W2 = _buffer("w2", _shape(p["w2"]), dtype)
        B2 = _buffer("b2", _shape(p["b2"]), dtype)
        P = _buffer("pooled", (n, c), "float32")
        Y = _buffer("y", p["xs"], dtype)
        pool = self.embed.Launch(
            K.se_pool_kernel,
            [X.data, P.data, _i32(c), _i32(hw), False, pm["BLOCK_C"], pm["BLOCK_HW"]],
            K.pool_grid(n, c, pm),
            {"num_warps": pool_cfg.num_warps, "num_stages": pool_cfg.num_stages},
            prefix="se_pool",
        )
        scale = self.embed.Launch(
            K.se_excite_scale_kernel,
            [X.data, P.data, W1.data, B1.data, W2.data, B2.data, Y.data, _i32(c), _i32(cr),
             _i32(hw), act_code(p["act"]), act_code(p["gate"]), False, next_pow2(cr),
             sm["BLOCK_C"], sm["BLOCK_HW"], sm["BLOCK_K"]],
            K.scale_grid(n, c, hw, sm),
            {"num_warps": scale_cfg.num_warps, "num_stages": scale_cfg.num_stages},
            prefix="se_scale",
        )  # fmt: skip
        func, name = self.launcher("se", [X, W1, B1, W2, B2, P, Y], [pool, scale])
        call_args = [p["x"], p["w1"], p["b1"], p["w2"], p["b2"]]
        outs = [relax.TensorType((n, c), "float32"), relax.TensorType(p["xs"], dtype)]
        return func, name, call_args, outs, 1


@mutator
class _Replace(PyExprMutator):
    def __init__(self, mod, replacements: dict):
        super().__init__(mod)
        self.replacements = replacements  # root Var → (GlobalVar, args, out sinfo, index)

    def visit_var_binding_(self, binding):
        if binding.var not in self.replacements:
            return super().visit_var_binding_(binding)
        gv, args, outs, index = self.replacements[binding.var]
        args = [self.visit_expr(a) for a in args]
        call = relax.call_tir(gv, args, outs if len(outs) > 1 else outs[0])
        if index is not None:
            call = relax.TupleGetItem(self.builder_.emit(call, "triton_outs"), index)
        leaves_block = not isinstance(binding.var, relax.DataflowVar)
        if leaves_block and self.builder_.current_block_is_dataflow():
            new_var = self.builder_.emit_output(call, binding.var.name)
        else:
            new_var = self.builder_.emit(call, binding.var.name)
        self.set_var_remap(binding.var, new_var)


def rewrite_triton(
    mod: tvm.IRModule, target, fuse: bool = True
) -> tuple[tvm.IRModule, TritonStats]:
    """Replace the matches in ``main`` by ``call_tir`` of Triton launch functions."""
    stats = TritonStats()
    main = mod["main"]
    matches = find_matches(main, fuse=fuse)
    emitter = _Emitter(target)
    emit = {"fused_dw_pw": emitter.fused, "se": emitter.se, "depthwise": emitter.depthwise}
    replacements = {}
    new_funcs: dict[str, tirx.PrimFunc] = {}
    for m in matches:
        func, name, args, outs, index = emit[m.kind](m.params)
        new_funcs[name] = func
        replacements[m.root] = (name, args, outs, index)
        setattr(stats, m.kind, getattr(stats, m.kind) + 1)
    if not matches:
        stats.left_to_tvm = _count_depthwise(mod)
        return mod, stats
    bb = relax.BlockBuilder(mod)
    gvs = {name: bb.add_func(func, name) for name, func in new_funcs.items()}
    out = bb.get()
    replacer = _Replace(out, {k: (gvs[v[0]], *v[1:]) for k, v in replacements.items()})
    out["main"] = replacer.visit_expr(out["main"])
    out = relax.transform.DeadCodeElimination(["main"])(out)
    from sepconv.schedules.triton_embed import attach_modules

    out = attach_modules(out, emitter.modules)
    stats.kernels = list(emitter.kernels)
    stats.left_to_tvm = _count_depthwise(out)
    log.info("triton rewrite: %s", stats.to_json())
    return out, stats


def _count_depthwise(mod: tvm.IRModule) -> int:
    found = 0

    def visit(e):
        nonlocal found
        if isinstance(e, relax.Call) and isinstance(e.op, tvm.ir.Op):
            if e.op.name == "relax.nn.conv2d":
                groups = int(e.attrs["groups"])
                xs = _shape(e.args[0])
                if xs is not None and groups > 1 and groups == xs[1]:
                    found += 1

    relax.analysis.post_order_visit(mod["main"], visit)
    return found


def apply_triton_ops(mod: tvm.IRModule, target, fuse: bool = True):
    """The CUDA rewrite (module docstring); a graph without a match is returned unchanged."""
    if target.kind.name != "cuda":
        raise CompileError("Triton kernels are for CUDA targets")
    try:
        import triton
    except ImportError as exc:
        raise CompileError(
            "the CUDA target's depthwise kernels are Triton kernels: pip install triton==3.9.0 "
            "(the sepconv[gpu] extra), or compile with --no-sepconv-ops for TVM's kernels only"
        ) from exc
    if triton.knobs.runtime.interpret:
        raise CompileError(
            "TRITON_INTERPRET=1 is set: Triton kernels are interpreted, not compiled; unset it "
            "to compile for CUDA"
        )
    return rewrite_triton(mod, target, fuse=fuse)


__all__ = [
    "PRECISIONS",
    "TritonStats",
    "apply_triton_ops",
    "find_matches",
    "mixed_precision",
    "rewrite_triton",
]
