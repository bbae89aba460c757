"""Single-op PrimFuncs built through Relax + LegalizeOps (+ fusion), as the compiler makes them."""

from __future__ import annotations

import tvm
from tvm import relax


def legalized(build, *shapes, fuse: bool = True, dtype: str = "float32"):
    """The one PrimFunc of ``build(*vars)`` after LegalizeOps (and FuseOps/FuseTIR).

    ``build`` receives Relax variables of the given shapes and returns the output expression.
    """
    bb = relax.BlockBuilder()
    params = [relax.Var(f"x{i}", relax.TensorType(s, dtype)) for i, s in enumerate(shapes)]
    with bb.function("main", params):
        with bb.dataflow():
            out = bb.emit_output(build(*params))
        bb.emit_func_output(out)
    mod = bb.get()
    passes = [relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern()]
    if fuse:
        passes += [relax.transform.FuseOps(), relax.transform.FuseTIR()]
    passes.append(relax.transform.DeadCodeElimination())
    mod = tvm.transform.Sequential(passes)(mod)
    funcs = [f for _, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]
    assert len(funcs) == 1, [gv.name_hint for gv, _ in mod.functions_items()]
    return funcs[0]


def conv(n, c, h, w, o, k, stride=1, groups=1, pad=None, bias=True, act="relu6"):
    """conv2d (+ bias add + activation) as one fused PrimFunc."""
    pad = (k - 1) // 2 if pad is None else pad

    def build(x, wt, b):
        y = relax.op.nn.conv2d(x, wt, strides=stride, padding=pad, groups=groups)
        if bias:
            y = relax.op.add(y, b)
        if act == "relu6":
            y = relax.op.clip(y, 0.0, 6.0)
        elif act == "hswish":
            three, six = relax.const(3.0, "float32"), relax.const(6.0, "float32")
            gate = relax.op.clip(relax.op.add(y, three), 0.0, 6.0)
            y = relax.op.multiply(y, relax.op.divide(gate, six))
        return y

    return legalized(build, (n, c, h, w), (o, c // groups, k, k), (1, o, 1, 1))


def dense(m, k, n, transposed_weight=False):
    """Linear layer: x[m, k] @ w[k, n] + b, or (TE) y[m, n] = Σ_k x[m, k] · w[n, k] + b."""
    if transposed_weight:
        from tvm import te

        x = te.placeholder((m, k), name="x")
        w = te.placeholder((n, k), name="w")
        b = te.placeholder((n,), name="b")
        r = te.reduce_axis((0, k), name="k")
        y = te.compute((m, n), lambda i, j: te.sum(x[i, r] * w[j, r], axis=r), name="dense")
        out = te.compute((m, n), lambda i, j: y[i, j] + b[j], name="bias_add")
        return te.create_prim_func([x, w, b, out])

    def build(x, wt, b):
        return relax.op.add(relax.op.matmul(x, wt), b)

    return legalized(build, (m, k), (k, n), (n,))


def elementwise(shape):
    return legalized(
        lambda x, y: relax.op.multiply(relax.op.add(x, y), relax.op.sigmoid(x)), shape, shape
    )


def mean_hw(n, c, h, w):
    return legalized(lambda x: relax.op.mean(x, axis=[2, 3], keepdims=True), (n, c, h, w))


def softmax(m, n):
    return legalized(lambda x: relax.op.nn.softmax(x, axis=-1), (m, n))


def transpose(shape, axes):
    return legalized(lambda x: relax.op.permute_dims(x, axes), shape)


def mean_nhwc(n, h, w, c):
    """Global average pooling of a channels-last map (squeeze-and-excitation's pool)."""
    return legalized(lambda x: relax.op.mean(x, axis=[1, 2], keepdims=True), (n, h, w, c))


def max_pool_nhwc(n, h, w, c):
    """ShuffleNet's 3×3 stride-2 max pool on a channels-last map."""
    return legalized(
        lambda x: relax.op.nn.max_pool2d(x, (3, 3), (2, 2), padding=(1, 1), layout="NHWC"),
        (n, h, w, c),
    )


def channel_shuffle_nhwc(n, h, w, half):
    """concat of two channels-last maps → ShuffleNet's 2-group channel shuffle, as the
    channels-last pass leaves it (``2·half`` channels: 58 are not whole vectors)."""

    def build(a, b):
        cat = relax.op.concat([a, b], axis=3)
        grouped = relax.op.reshape(cat, (n, h, w, 2, half))
        return relax.op.reshape(
            relax.op.permute_dims(grouped, [0, 1, 2, 4, 3]), (n, h, w, 2 * half)
        )

    return legalized(build, (n, h, w, half), (n, h, w, half))
