"""CUDA graph rewrite: the separable hot paths become embedded Triton kernels.

Runs on ``main`` after BatchNorm folding (weights still constants), for CUDA targets only::

    dw conv → +b → act → 1×1 conv → +b [→ act] [+ residual]   ⇒  triton_fused_dw_pw
    mean(x) → 1×1 conv → +b → act → 1×1 conv → +b → gate → x·g ⇒  triton_se (2 launches)
    dw conv [→ +b] [→ act]                                    ⇒  triton_dw

(act: ReLU, ReLU6, h-swish, SiLU or none; gate: sigmoid or hard-sigmoid.) The chains are
:mod:`sepconv.compiler.patterns`'s, shared with the CPU rewrite, with every spelling the importers
write; this file reads their matches into the kernels' parameters and declines what the kernels
do not take. Each match becomes a
``call_tir`` of a host TIR function that launches the kernel from
``sepconv.schedules.triton_*``; :mod:`sepconv.schedules.triton_embed` compiles the kernel for
the target's ``sm_XX`` (no GPU needed) and the CUDA modules travel in the IRModule's
``external_mods``, so ``tvm.compile`` links them into the one library.

Matching (:func:`sepconv.compiler.patterns.find_chains`) walks the dataflow bindings from the
last to the first, so the largest pattern ending at a binding wins, and takes a chain only when
its intermediate values have no user outside it (otherwise the rewrite would compute them
twice). Convs with a channel multiplier, grouped convs
that are not depthwise, and layouts other than NCHW/OIHW stay with TVM (dlight rules).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import partial

import tvm
import tvm_ffi
from tvm import relax, tirx
from tvm.relax.expr_functor import PyExprMutator, mutator

from sepconv.compiler import patterns
from sepconv.compiler.patterns import Chain
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
    mod = relax.transform.ToMixedPrecision(out_dtype="float16")(patterns.normalize_clip(mod))
    return relax.transform.FoldConstant()(mod)


# ---------------------------------------------------------------------------------------------
# Matching: the patterns of compiler.patterns, read into what the Triton kernels take

_KERNEL_ACTS = ("none", "relu", "relu6", "hswish", "silu")  # schedules.triton_common.act_code
_DTYPES = ("float32", "float16")


def _dtype(expr) -> str:
    return str(expr.ty.dtype)


def _conv_info(conv: patterns.ConvMatch) -> dict | None:
    """A conv the kernels take (NCHW / OIHW, static 4-d shapes, square stride and dilation,
    fp32 or fp16 throughout) as the emitter's parameters; None for any other."""
    p = conv.params
    if p.data_layout != "NCHW" or p.kernel_layout != "OIHW" or p.out_layout not in ("NCHW", ""):
        return None
    if p.x_shape is None or p.w_shape is None or len(p.x_shape) != 4:
        return None
    if p.stride[0] != p.stride[1] or p.dilation[0] != p.dilation[1]:
        return None
    if p.dtype not in _DTYPES or p.x_dtype != p.dtype or p.w_dtype != p.dtype:
        return None
    return {
        "x": conv.x, "w": conv.w, "xs": p.x_shape, "ws": p.w_shape, "ys": p.y_shape,
        "stride": p.stride[0], "dil": p.dilation[0], "pad": list(p.padding), "groups": p.groups,
        "dtype": p.dtype,
    }  # fmt: skip


def _depthwise_info(dw: patterns.ConvMatch, act: patterns.Act) -> dict | None:
    """The depthwise kernel's parameters: channel multiplier 1, an activation it has."""
    info = _conv_info(dw)
    if info is None or not dw.params.is_depthwise or dw.params.multiplier != 1:
        return None
    if act.kind not in _KERNEL_ACTS:
        return None
    return {"dw": info, "b_dw": dw.bias, "act_dw": act.kind}


def _match_fused(pats: patterns.SeparablePattern, b: patterns.Bindings, var) -> Chain | None:
    """[residual +] act(conv_pw(act(conv_dw(x) [+ b])) [+ b])."""
    for form in pats.forms:
        m = b.match(form, var)
        block = pats.read(m) if m is not None else None
        if block is None:
            continue
        params = _depthwise_info(block.dw, block.act_dw)
        info_pw = _conv_info(block.pw)
        if params is None or info_pw is None or block.act_pw.kind not in _KERNEL_ACTS:
            continue
        if info_pw["dtype"] != params["dw"]["dtype"]:
            continue
        claimed = b.claim(m, var, pats.leaves)
        if claimed is None:
            continue
        residual = b.var_of(block.residual) if block.residual is not None else None
        params.update(pw=info_pw, b_pw=block.pw.bias, act_pw=block.act_pw.kind, residual=residual)
        return Chain("fused_dw_pw", var, claimed, params)
    return None


def _match_se(pats: patterns.SEPattern, b: patterns.Bindings, var) -> Chain | None:
    m = b.match(pats.pattern, var)
    se = pats.read(m, layout="NCHW") if m is not None else None
    if se is None or _dtype(se.x) not in _DTYPES or se.act.kind not in _KERNEL_ACTS:
        return None
    claimed = b.claim(m, var, pats.leaves)
    if claimed is None:
        return None
    params = {"x": se.x, "xs": patterns.static_shape(se.x), "w1": se.fc1.w,
              "b1": se.fc1.bias, "w2": se.fc2.w, "b2": se.fc2.bias, "cr": se.reduced,
              "act": se.act.kind, "gate": se.gate, "dtype": _dtype(se.x)}  # fmt: skip
    return Chain("se", var, claimed, params)


def _match_depthwise(pats: patterns.DepthwisePattern, b: patterns.Bindings, var) -> Chain | None:
    m = b.match(pats.pattern, var)
    found = pats.read(m) if m is not None else None
    params = _depthwise_info(found.dw, found.act) if found is not None else None
    claimed = b.claim(m, var, pats.leaves) if params is not None else None
    return Chain("depthwise", var, claimed, params) if claimed is not None else None


def find_matches(func: relax.Function, fuse: bool = True) -> list[Chain]:
    """Non-overlapping matches, downstream bindings first, larger patterns first."""
    matchers = [
        partial(_match_se, patterns.SEPattern()),
        partial(_match_depthwise, patterns.DepthwisePattern()),
    ]
    if fuse:
        matchers.insert(0, partial(_match_fused, patterns.SeparablePattern()))
    return patterns.find_chains(func, matchers)


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
        B = _buffer("b", patterns.static_shape(bias), dw["dtype"]) if bias is not None else None
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
        BD = _buffer("b_dw", patterns.static_shape(b_dw), dtype) if b_dw is not None else None
        WP = _buffer("w_pw", pw["ws"], dtype)
        BP = _buffer("b_pw", patterns.static_shape(b_pw), dtype) if b_pw is not None else None
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
        W1 = _buffer("w1", patterns.static_shape(p["w1"]), dtype)
        B1 = _buffer("b1", patterns.static_shape(p["b1"]), dtype)
        W2 = _buffer("w2", patterns.static_shape(p["w2"]), dtype)
        B2 = _buffer("b2", patterns.static_shape(p["b2"]), dtype)
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
        stats.left_to_tvm = patterns.count_depthwise(mod["main"])
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
    stats.left_to_tvm = patterns.count_depthwise(out["main"])
    log.info("triton rewrite: %s", stats.to_json())
    return out, stats


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
