"""The pattern layer accepts what it should and declines what it should not.

Each graph is a few Relax bindings built by hand (no import, no build), so a test names exactly
the structure it checks: the spellings the importers write, and the near misses (a grouped conv
that is not depthwise, an SE whose gate is not a sigmoid, a chain whose intermediate has a second
user) that a backend must not take.
"""

from __future__ import annotations

import numpy as np
import pytest
from tvm import relax

from sepconv.compiler import patterns

C, H, W = 8, 6, 6
RNG = np.random.default_rng(0)


def const(shape, value: float | None = None) -> relax.Constant:
    data = RNG.standard_normal(shape) if value is None else np.full(shape, value)
    return relax.const(data.astype("float32"))


def graph(body, shape=(1, C, H, W)) -> relax.Function:
    """``main(x)`` whose bindings ``body(bb, x)`` emits; its last binding is the root."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape, "float32"))
    with bb.function("main", [x]):
        bb.emit_func_output(body(bb, x))
    return bb.get()["main"]


def dw(bb, x, c=C, multiplier=1, groups=None, bias=True, layout="NCHW"):
    nn = relax.op.nn
    if layout == "NCHW":
        w = const((c * multiplier, c // (groups or c), 3, 3))
        y = bb.emit(nn.conv2d(x, w, padding=1, groups=groups or c))
        b = const((1, c * multiplier, 1, 1))
    else:
        w = const((3, 3, 1, c * multiplier))
        y = bb.emit(nn.conv2d(x, w, padding=1, groups=c, data_layout="NHWC", kernel_layout="HWIO"))
        b = const((1, 1, 1, c * multiplier))
    return bb.emit(relax.op.add(y, b)) if bias else y


def pw(bb, x, c=C, co=C, layout="NCHW"):
    nn = relax.op.nn
    if layout == "NCHW":
        y = bb.emit(nn.conv2d(x, const((co, c, 1, 1))))
        return bb.emit(relax.op.add(y, const((1, co, 1, 1))))
    y = bb.emit(nn.conv2d(x, const((1, 1, c, co)), data_layout="NHWC", kernel_layout="HWIO"))
    return bb.emit(relax.op.add(y, const((1, 1, 1, co))))


def relu6_clip(bb, v):
    return bb.emit(relax.op.clip(v, 0.0, 6.0))


def relu6_max_min(bb, v):
    v = bb.emit(relax.op.maximum(v, const((), 0.0)))
    return bb.emit(relax.op.minimum(v, const((), 6.0)))


def relu6_two_clips(bb, v):
    v = bb.emit(relax.op.clip(v, 0.0, float("inf")))
    return bb.emit(relax.op.clip(v, float("-inf"), 6.0))


def hard_gate(bb, v, three=3.0):
    return bb.emit(relax.op.clip(bb.emit(relax.op.add(v, const((), three))), 0.0, 6.0))


def hswish_torch(bb, v, three=3.0):
    prod = bb.emit(relax.op.multiply(v, hard_gate(bb, v, three)))
    return bb.emit(relax.op.divide(prod, const((), 6.0)))


def hswish_onnx(bb, v):
    g = bb.emit(relax.op.divide(hard_gate(bb, v), const((), 6.0)))
    return bb.emit(relax.op.multiply(v, g))


def silu(bb, v):
    return bb.emit(relax.op.multiply(v, bb.emit(relax.op.sigmoid(v))))


def silu_swapped(bb, v):
    return bb.emit(relax.op.multiply(bb.emit(relax.op.sigmoid(v)), v))


def relu(bb, v):
    return bb.emit(relax.op.nn.relu(v))


def match_root(pattern, func):
    """(bindings, root var, match) of ``pattern`` at the function's last binding."""
    b = patterns.Bindings(func)
    root = b.order[-1]
    return b, root, b.match(pattern, root)


# ---- depthwise conv -------------------------------------------------------------------------


def test_depthwise_conv_is_recognised_in_either_layout():
    for layout, shape in (("NCHW", (1, C, H, W)), ("NHWC", (1, H, W, C))):
        p = patterns.DepthwisePattern()
        _, _, m = match_root(
            p.pattern, graph(lambda bb, x, layout=layout: dw(bb, x, layout=layout), shape)
        )
        found = p.read(m)
        assert found is not None and found.act.kind == "none"
        assert found.dw.params.is_depthwise and found.dw.params.multiplier == 1
        assert found.dw.bias is not None and found.dw.params.data_layout == layout


def test_grouped_conv_that_is_not_depthwise_is_declined():
    p = patterns.DepthwisePattern()
    _, _, m = match_root(p.pattern, graph(lambda bb, x: dw(bb, x, groups=2)))
    assert m is not None  # the structure is a conv + bias ...
    assert p.read(m) is None  # ... but 2 groups of 4 channels is not a depthwise conv
    call = relax.op.nn.conv2d(relax.Var("x", relax.TensorType((1, C, H, W), "float32")),
                              const((C, C // 2, 3, 3)), groups=2)  # fmt: skip
    assert not patterns.is_depthwise(call)


def test_channel_multiplier_is_read_not_hidden():
    p = patterns.DepthwisePattern()
    _, _, m = match_root(p.pattern, graph(lambda bb, x: dw(bb, x, multiplier=2)))
    found = p.read(m)
    assert found is not None and found.dw.params.multiplier == 2  # the backend decides


def test_bias_must_add_one_value_per_channel():
    def body(bb, x):
        y = bb.emit(relax.op.nn.conv2d(x, const((C, 1, 3, 3)), padding=1, groups=C))
        return bb.emit(relax.op.add(y, const((1, C, H, W))))  # a full map, not a bias

    p = patterns.DepthwisePattern()
    _, _, m = match_root(p.pattern, graph(body))
    assert m is not None and p.read(m) is None


def test_count_depthwise():
    func = graph(lambda bb, x: pw(bb, relu(bb, dw(bb, x))))
    assert patterns.count_depthwise(func) == 1
    assert patterns.count_depthwise(graph(lambda bb, x: dw(bb, x, groups=2))) == 0


# ---- activations ----------------------------------------------------------------------------

SPELLINGS = [
    (relu, "relu"),
    (relu6_clip, "relu6"),
    (relu6_max_min, "relu6"),
    (relu6_two_clips, "relu6"),
    (lambda bb, v: bb.emit(relax.op.clip(v, 0.0, float("inf"))), "relu"),
    (hswish_torch, "hswish"),
    (hswish_onnx, "hswish"),
    (silu, "silu"),
    (silu_swapped, "silu"),
]


@pytest.mark.parametrize("spell, kind", SPELLINGS, ids=[f"{k}-{i}" for i, (_, k) in
                                                        enumerate(SPELLINGS)])  # fmt: skip
def test_every_spelling_of_each_activation(spell, kind):
    p = patterns.DepthwisePattern()
    _, _, m = match_root(p.pattern, graph(lambda bb, x: spell(bb, dw(bb, x))))
    found = p.read(m)
    assert found is not None and found.act.kind == kind


def test_other_bounds_are_a_clamp_and_wrong_constants_no_hswish():
    p = patterns.DepthwisePattern()
    _, _, m = match_root(
        p.pattern, graph(lambda bb, x: bb.emit(relax.op.clip(dw(bb, x), -1.0, 1.0)))
    )
    assert p.read(m).act == patterns.Act("clamp", -1.0, 1.0)
    _, _, m = match_root(p.pattern, graph(lambda bb, x: hswish_torch(bb, dw(bb, x), three=2.0)))
    assert m is not None and p.read(m) is None  # b · relu6(b + 2) / 6 is not h-swish


# ---- dw → act → pw (→ act) (→ residual) -----------------------------------------------------


def test_separable_block_in_both_layouts():
    for layout, shape in (("NCHW", (1, C, H, W)), ("NHWC", (1, H, W, C))):
        p = patterns.SeparablePattern()

        def body(bb, x, layout=layout):
            return pw(bb, relu6_clip(bb, dw(bb, x, layout=layout)), co=16, layout=layout)

        _, _, m = match_root(p.forms[-1], graph(body, shape))
        block = p.read(m)
        assert block is not None
        assert (block.act_dw.kind, block.act_pw.kind, block.residual) == ("relu6", "none", None)
        assert block.pw.params.is_pointwise and block.pw.params.out_channels == 16
        assert block.pw.bias is not None


def test_separable_block_takes_the_pw_activation_and_the_residual():
    p = patterns.SeparablePattern()

    def body(bb, x):
        return bb.emit(relax.op.add(x, relu(bb, pw(bb, silu(bb, dw(bb, x))))))

    func = graph(body)
    b, root, m = match_root(p.forms[0], func)
    block = p.read(m)
    assert (block.act_dw.kind, block.act_pw.kind) == ("silu", "relu")
    assert b.var_of(block.residual).same_as(func.params[0])
    claimed = b.claim(m, root, p.leaves)
    assert claimed is not None and root in claimed and len(claimed) == 8  # x is an input


def test_pw_conv_root_for_a_rewrite_that_keeps_the_bias():
    p = patterns.SeparablePattern()
    func = graph(lambda bb, x: bb.emit(relax.op.nn.conv2d(hswish_onnx(bb, dw(bb, x)),
                                                          const((C, C, 1, 1)))))  # fmt: skip
    _, _, m = match_root(p.pw_conv, func)
    block = p.read(m)
    assert block.act_dw.kind == "hswish" and block.pw.bias is None


def test_intermediate_with_a_second_user_is_not_claimed():
    """dw → pw where the dw output also feeds an add: the pattern matches the structure, the
    chain is not taken (it would compute the dw output twice)."""
    p = patterns.SeparablePattern()

    def body(bb, x):
        d = relu(bb, dw(bb, x))
        return bb.emit(relax.op.add(pw(bb, d), d))

    b, root, m = match_root(p.forms[-1], graph(body))
    assert m is None  # the root is the add of the block and its own intermediate ...
    m = b.match(p.forms[1], root)
    assert m is not None and p.read(m) is not None  # ... which looks like a residual
    assert b.claim(m, root, p.leaves) is None  # ... but the "residual" is an intermediate
    pw_out = b.order[-2]
    m = b.match(p.forms[-1], pw_out)
    assert b.claim(m, pw_out, p.leaves) is None  # and the relu has a second user


def test_pointwise_that_is_not_1x1_is_declined():
    p = patterns.SeparablePattern()

    def body(bb, x):
        return bb.emit(relax.op.nn.conv2d(relu(bb, dw(bb, x)), const((C, C, 3, 3)), padding=1))

    _, _, m = match_root(p.pw_conv, graph(body))
    assert m is not None and p.read(m) is None


# ---- squeeze-and-excitation -----------------------------------------------------------------


def se(bb, x, gate, axis=(2, 3), act=relu):
    s = bb.emit(relax.op.mean(x, axis=list(axis), keepdims=True))
    h = act(bb, pw(bb, s, C, 2))
    return bb.emit(relax.op.multiply(x, gate(bb, pw(bb, h, 2, C))))


def sigmoid(bb, v):
    return bb.emit(relax.op.sigmoid(v))


def hsigmoid(bb, v):
    return bb.emit(relax.op.divide(hard_gate(bb, v), const((), 6.0)))


@pytest.mark.parametrize("gate, name", [(sigmoid, "sigmoid"), (hsigmoid, "hsigmoid")])
def test_se_with_each_gate(gate, name):
    p = patterns.SEPattern()
    b, root, m = match_root(p.pattern, graph(lambda bb, x: se(bb, x, gate)))
    found = p.read(m)
    assert found is not None and (found.gate, found.act.kind, found.reduced) == (name, "relu", 2)
    assert b.claim(m, root, p.leaves) is not None


def test_se_whose_gate_is_not_a_sigmoid_is_declined():
    p = patterns.SEPattern()
    func = graph(lambda bb, x: se(bb, x, lambda bb, v: bb.emit(relax.op.tanh(v))))
    assert match_root(p.pattern, func)[2] is None
    func = graph(lambda bb, x: se(bb, x, lambda bb, v: bb.emit(relax.op.divide(
        hard_gate(bb, v), const((), 5.0)))))  # fmt: skip
    _, _, m = match_root(p.pattern, func)
    assert m is not None and p.read(m) is None  # relu6(s + 3) / 5 is no hard-sigmoid


def test_se_pools_the_spatial_axes_of_its_layout():
    p = patterns.SEPattern()
    _, _, m = match_root(p.pattern, graph(lambda bb, x: se(bb, x, sigmoid)))
    assert p.read(m, layout="NCHW") is not None
    assert p.read(m, layout="NHWC") is None  # a mean over H, W of NCHW is over C, H of NHWC


# ---- clip normalisation and the chain finder ------------------------------------------------


def test_normalize_clip_writes_max_min_and_drops_infinite_bounds():
    import tvm

    func = graph(lambda bb, x: relu6_two_clips(bb, relu6_clip(bb, x)))
    mod = patterns.normalize_clip(tvm.IRModule({"main": func}))
    ops = []
    relax.analysis.post_order_visit(
        mod["main"], lambda e: isinstance(e, relax.Call) and ops.append(e.op.name)
    )
    assert "relax.clip" not in ops
    assert ops.count("relax.maximum") == 2 and ops.count("relax.minimum") == 2


def test_find_chains_takes_the_largest_chain_once():
    p = patterns.DepthwisePattern()

    def matcher(b, var):
        m = b.match(p.pattern, var)
        if m is None or p.read(m) is None:
            return None
        claimed = b.claim(m, var, p.leaves)
        return None if claimed is None else patterns.Chain("dw", var, claimed, None)

    chains = patterns.find_chains(graph(lambda bb, x: relu6_clip(bb, dw(bb, x))), [matcher])
    assert [len(c.claimed) for c in chains] == [3]  # clip, add, conv: one chain, not three
