"""Graph-level Relax passes that run before lowering.

Order matters and is fixed by :func:`prepare_graph`:
fold BatchNorm into the preceding conv's weights → canonicalise → (sepconv operator rewriting,
added by ``compiler.separable``) → fold constants → lift the folded weights out as parameters.

Weights are bound as constants on import so that FoldConstant can compute the folded/re-laid-out
weights once, at compile time; they are lifted back out afterwards so the library holds code and
the artifact's weights file holds data (no multi-megabyte constants inside the ``.so``).
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.relax.dpl import TupleGetItemPattern, is_const, is_op, rewrite_call, wildcard
from tvm.relax.expr_functor import PyExprMutator, PyExprVisitor, mutator, visitor

from sepconv.compiler.patterns import static_shape

# Constants smaller than this stay inline (scalars of h-swish, clip bounds, ...).
LIFT_MIN_ELEMENTS = 2


def _fold_bn_into_conv(func: relax.Function) -> relax.Function:
    """conv2d(x, W) [+ b] → batch_norm(γ, β, μ, σ²)[0]  ⇒  conv2d(x, W·s) + (b·s + β − μ·s).

    TVM's own FoldBatchnormToConv2D misses the ``+ b`` form that every torch conv with
    ``bias=True`` produces; this one takes both. All operands must be constants (weights are bound
    at import), so FoldConstant turns the new expressions into plain weight tensors.
    """
    data, weight = wildcard(), is_const()
    conv = is_op("relax.nn.conv2d")(data, weight)
    bias = is_const()
    conv_bias = is_op("relax.add")(conv, bias)
    gamma, beta, mean, var = is_const(), is_const(), is_const(), is_const()
    bn = is_op("relax.nn.batch_norm")(conv | conv_bias, gamma, beta, mean, var)
    pattern = TupleGetItemPattern(bn, 0)

    def rewrite(expr, m):
        conv_call, bn_call = m[conv], m[bn]
        if conv_call.attrs["kernel_layout"] != "OIHW" or int(bn_call.attrs["axis"]) != 1:
            return expr
        eps = float(bn_call.attrs["epsilon"])
        w = m[weight].value.numpy()
        scale = m[gamma].value.numpy() / np.sqrt(m[var].value.numpy() + eps)
        shift = m[beta].value.numpy() - m[mean].value.numpy() * scale
        if bias in m:
            shift = shift + m[bias].value.numpy().reshape(-1) * scale
        new_w = relax.const((w * scale.reshape(-1, 1, 1, 1)).astype(w.dtype))
        new_b = relax.const(shift.reshape(1, -1, 1, 1).astype(w.dtype))
        return relax.op.add(relax.Call(conv_call.op, [m[data], new_w], conv_call.attrs), new_b)

    return rewrite_call(pattern, rewrite, func)


def fold_batch_norm(mod: tvm.IRModule) -> tvm.IRModule:
    """Fold inference BatchNorm into the preceding conv, decompose any that does not follow one."""
    # The importer reshapes conv biases at run time; fold that first so the pattern sees constants.
    mod = fold_constants(relax.transform.CanonicalizeBindings()(mod))
    out = tvm.IRModule(dict(mod.functions_items()), attrs=mod.attrs)
    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function):
            out[gv] = _fold_bn_into_conv(func)
    out = relax.transform.DecomposeOpsForInference()(out)
    out = fold_constants(relax.transform.CanonicalizeBindings()(out))
    return relax.transform.DeadCodeElimination()(out)


def _layout_ops_in_numpy(func: relax.Function) -> relax.Function:
    weight = is_const()
    permute = is_op("relax.permute_dims")(weight)
    reshape = is_op("relax.reshape")(weight, wildcard())

    def rewrite(expr, m):
        value = m[weight].value.numpy()
        if expr.op.name == "relax.permute_dims":
            axes = expr.attrs["axes"]
            axes = None if axes is None else [int(a) for a in axes]
            return relax.const(np.ascontiguousarray(value.transpose(axes)))
        shape = static_shape(expr)
        return expr if shape is None else relax.const(value.reshape(shape))

    return rewrite_call(permute | reshape, rewrite, func)


# Relax's prim values, strings and dtypes are Constants too
_CONSTANT_ARGS = (tvm.ir.expr.Constant, relax.ShapeExpr)


@visitor
class _FindFoldable(PyExprVisitor):
    """Whether a binding calls something on constants only (what FoldConstant would fold)."""

    def __init__(self):
        super().__init__()
        self.constant_vars: set = set()
        self.found = False

    def _constant(self, arg) -> bool:
        if isinstance(arg, relax.Tuple):
            return all(self._constant(f) for f in arg.fields)
        return isinstance(arg, _CONSTANT_ARGS) or arg in self.constant_vars

    def visit_var_binding_(self, binding):
        value = binding.value
        if self._constant(value):
            self.constant_vars.add(binding.var)
        elif isinstance(value, relax.Call) and all(self._constant(a) for a in value.args):
            self.found = True
        super().visit_var_binding_(binding)  # bindings nested in the value (an If's branches)


def _has_foldable(func: relax.Function) -> bool:
    finder = _FindFoldable()
    finder.visit_expr(func)
    return finder.found


def fold_constants(mod: tvm.IRModule) -> tvm.IRModule:
    """FoldConstant, only where there is something to fold, and with the transposes and
    reshapes of constant weights done in numpy first.

    FoldConstant builds and runs a kernel for each call it folds (≈0.18 s apiece; ConvertLayout
    adds a transpose per conv, the importer a reshape per bias), and legalizes every call it
    visits even when nothing is constant (0.3–0.4 s on a small MobileNetV2).
    """
    out = tvm.IRModule(dict(mod.functions_items()), attrs=mod.attrs)
    foldable = False
    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function):
            out[gv] = _layout_ops_in_numpy(func)
            foldable = foldable or _has_foldable(out[gv])
    return relax.transform.FoldConstant()(out) if foldable else out


def count_ops(mod: tvm.IRModule, op_name: str) -> int:
    """How many calls to the Relax operator ``op_name`` the module's Relax functions make."""
    op = tvm.ir.Op.get(op_name)
    found = 0

    def visit(expr):
        nonlocal found
        if isinstance(expr, relax.Call) and expr.op.same_as(op):
            found += 1

    for _, func in mod.functions_items():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return found


@mutator
class _ConstantLifter(PyExprMutator):
    def __init__(self, mod: tvm.IRModule, prefix: str):
        super().__init__(mod)
        self.prefix = prefix
        self.lifted: list[tuple[str, relax.Var, np.ndarray]] = []

    def visit_generic_const_(self, const):
        if not hasattr(const.value, "numpy"):  # scalar immediates
            return const
        data = const.value.numpy()
        if data.size < LIFT_MIN_ELEMENTS:
            return const
        name = f"{self.prefix}{len(self.lifted)}"
        var = relax.Var(name, const.ty)
        self.lifted.append((name, var, data))
        return var


def lift_constants(
    mod: tvm.IRModule, func_name: str = "main", prefix: str = "w"
) -> tuple[tvm.IRModule, dict[str, np.ndarray]]:
    """Turn every non-scalar constant of ``func_name`` into a trailing parameter.

    Returns the new module and the weights, in parameter order, keyed by parameter name. The
    function's ``num_input`` attribute records how many leading parameters are real inputs.
    """
    func = mod[func_name]
    lifter = _ConstantLifter(mod, prefix)
    body = lifter.visit_expr(func.body)
    new_params = [v for _, v, _ in lifter.lifted]
    new_func = relax.Function(
        list(func.params) + new_params, body, func.ret_ty, func.is_pure, func.attrs
    ).with_attr("num_input", len(func.params))
    out = tvm.IRModule(dict(mod.functions_items()), attrs=mod.attrs)
    out[func_name] = new_func
    weights = {name: data for name, _, data in lifter.lifted}
    return out, weights


def fast_exp_expr(x):
    """exp(x) in float32 as a vectorisable expression, for activations written inside a TE
    compute (our operators' epilogues), where ``topi.fast_exp`` — a whole tensor — cannot go:
    exp(x) = 2ⁿ · exp(f), n = round(x / ln 2), |f| ≤ ln 2 / 2, exp(f) by its Taylor series to f⁷
    (relative error below 2·10⁻⁹ before rounding), 2ⁿ built in the exponent bits. Its sigmoid
    measured 1.2·10⁻⁷ max abs error against torch's on [−100, 100], and no ``expf`` call."""
    from tvm import tirx

    def c(v):
        return tirx.const(v, "float32")

    x = tirx.max(tirx.min(x, c(88.0)), c(-87.0))
    n = tirx.floor(x * c(1.4426950408889634) + c(0.5))
    f = x - n * c(0.6931471805599453)
    y = c(1.0 / 5040)
    for k in (720, 120, 24, 6, 2, 1, 1):
        y = y * f + c(1.0 / k)
    i32 = "int32"
    two_n = tirx.reinterpret(
        "float32", (n.astype(i32) + tirx.const(127, i32)) << tirx.const(23, i32)
    )
    return y * two_n


def fast_sigmoid_expr(v):
    """1 / (1 + exp(−v)) with :func:`fast_exp_expr`: the sigmoid inside our operators (SiLU
    epilogues of the int8 ones, where TVM's sigmoid was one scalar ``expf`` call per element
    and made int8 EfficientNet-B0 slower than fp32)."""
    from tvm import tirx

    one = tirx.const(1.0, "float32")
    return one / (one + fast_exp_expr(-v))


def _fast_sigmoid_te(x):
    # topi's fast_exp, not fast_sigmoid_expr: the shipped fp32 tuning records hash these kernels
    from tvm import te, tirx, topi

    one = tirx.const(1.0, x.dtype)
    neg = te.compute(x.shape, lambda *i: -x(*i), name="neg")
    e = topi.fast_exp(neg)
    return te.compute(x.shape, lambda *i: one / (one + e(*i)), name="sigmoid")


@mutator
class _FastSigmoid(PyExprMutator):
    def visit_call_(self, call):
        call = super().visit_call_(call)
        if isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.sigmoid":
            if call.args[0].ty.dtype == "float32":
                return self.builder_.call_te(_fast_sigmoid_te, call.args[0])
        return call


def fast_sigmoid(mod: tvm.IRModule) -> tvm.IRModule:
    """sigmoid → 1 / (1 + fast_exp(−x)) for CPU targets (SiLU, SE gates of EfficientNet/MnasNet).

    Why: LLVM has no vector ``exp``; TVM's sigmoid becomes one scalar ``expf`` call per lane, and
    EfficientNet-B0 spent more time in its SiLU epilogues than in its convolutions. TVM's
    ``fast_exp`` is a vectorisable polynomial: measured max abs error 8e-8 on [−100, 100].
    """
    rewriter = _FastSigmoid(mod)
    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function):
            rewriter.builder_.update_func(gv, rewriter.visit_expr(func))
    return rewriter.builder_.get()
