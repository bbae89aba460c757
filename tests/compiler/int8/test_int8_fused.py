"""The fused int8 depthwise → pointwise operator (``sepconv_qdwpw``) against fake-quant, and
against the same two units compiled as two operators: the integer arithmetic is the same, so
the bytes must be too."""

from __future__ import annotations

import functools
from dataclasses import replace

import numpy as np
import pytest
import tvm
from tvm import relax

from sepconv.compiler.int8 import lowering
from sepconv.schedules.int8_intrinsics import dot_intrinsic
from sepconv.schedules.target_params import target_features

from .test_int8_ops import (
    Unit,
    _data,
    _float_output,
    _out_qparams,
    _reference,
    assert_close,
    build_and_run,
    emit_unit,
)

_LOWER = lowering.lower_quantized

# (depthwise unit, pointwise unit): the zoo's blocks, small
CHAINS = [
    # MobileNetV2: ReLU6, projection with the block's residual
    (Unit("depthwise", 32, 32, 14, 3, 1, "relu6"), Unit("pointwise", 32, 16, 14, residual=True)),
    (Unit("depthwise", 32, 32, 15, 3, 2, "relu6"), Unit("pointwise", 32, 24, 8)),  # padded panels
    (Unit("depthwise", 16, 16, 12, 3, 1, "relu"), Unit("pointwise", 16, 32, 12, act="relu")),  # V1
    (Unit("depthwise", 24, 24, 16, 5, 2, "hswish"), Unit("pointwise", 24, 40, 8)),  # V3
    (Unit("depthwise", 20, 20, 9, 5, 1, "silu"), Unit("pointwise", 20, 32, 9)),  # B0; C mod 16
    # a late layer: the weights outweigh the 7×7 map, so each task owns a panel of channels
    (Unit("depthwise", 64, 64, 7, 3, 1, "relu"), Unit("pointwise", 64, 256, 7, act="relu")),
]


def _id(chain) -> str:
    dw, pw = chain
    return f"{dw.id}->{pw.id}"


def _chain_module(dw, pw, d1, d2, s1, s2, narrow, keep_mid: bool = False) -> tvm.IRModule:
    """The two units in Relax; ``keep_mid``: the depthwise output is returned too."""
    bb = relax.BlockBuilder()
    xv = relax.Var("xq", relax.TensorType(d1.xq.shape, dw.dtype))
    rv = relax.Var("rq", relax.TensorType(d2.rq.shape, pw.dtype)) if pw.residual else None
    with bb.function("main", [xv] + ([rv] if rv is not None else [])):
        with bb.dataflow():
            q1 = emit_unit(bb, dw, d1, xv, None, *s1)
            if narrow:  # PT2E's reduce_range clamp, on the depthwise unit's output
                q1 = bb.emit(relax.op.minimum(q1, relax.const(np.uint8(127))))
            q2 = emit_unit(bb, pw, d2, q1, rv, *s2)
            out = bb.emit_output(relax.Tuple([q1, q2]) if keep_mid else q2)
        bb.emit_func_output(out)
    return bb.get()


def run_chain(dw: Unit, pw: Unit, target, narrow: bool, fuse: bool, monkeypatch):
    """(compiled output, fake-quant reference, int8 build stats, primfunc names)."""
    d1 = _data(dw, seed=1)
    y1 = _float_output(dw, d1)
    s1 = _out_qparams(dw, y1)
    q1 = _reference(dw, y1, *s1)
    if narrow:
        q1 = np.minimum(q1, 127)
    d2 = replace(_data(pw, seed=2), xq=q1, zx=s1[1], sx=s1[0])
    y2 = _float_output(pw, d2)
    s2 = _out_qparams(pw, y2)
    ref = _reference(pw, y2, *s2)
    inputs = [d1.xq] + ([d2.rq] if pw.residual else [])
    monkeypatch.setattr(lowering, "lower_quantized", functools.partial(_LOWER, fuse=fuse))
    mod = _chain_module(dw, pw, d1, d2, s1, s2, narrow)
    got, stats = build_and_run(mod, inputs, ref, target)
    return got, ref, stats.sepconv_ops["int8"], stats.primfuncs


@pytest.fixture(scope="module")
def on_dot(host):
    """Whether the host's dot takes the full u8 range (else the chain is clamped to 0…127)."""
    dot = dot_intrinsic(target_features(host))
    if dot is None:
        pytest.skip("the host has no u8·s8 dot instruction: nothing is fused")
    return dot.full_range


@pytest.mark.parametrize("chain", CHAINS, ids=[_id(c) for c in CHAINS])
def test_fused_chain_matches_fake_quant_and_the_unfused_operators(
    chain, host, on_dot, monkeypatch, caplog
):
    dw, pw = chain
    narrow = not on_dot
    got, ref, ops, funcs = run_chain(dw, pw, host, narrow, True, monkeypatch)
    assert not [r for r in caplog.records if "raised" in r.getMessage()]  # the int8 rule took it
    assert ops["fused"] == 1 and ops["depthwise"] == 1 and ops["pointwise"] == 1, ops
    assert [f for f in funcs if "sepconv_q" in f] == [f for f in funcs if "sepconv_qdwpw" in f]
    assert_close(got, ref)
    apart, _, ops2, funcs2 = run_chain(dw, pw, host, narrow, False, monkeypatch)
    assert ops2["fused"] == 0 and any("sepconv_qdw_" in f for f in funcs2), funcs2
    np.testing.assert_array_equal(got, apart)


def test_a_depthwise_output_used_twice_is_not_fused(host, on_dot):
    """A map the pointwise unit does not consume alone stays in memory: fusing would compute
    the depthwise twice."""
    dw, pw = CHAINS[2]
    d1 = _data(dw, seed=1)
    s1 = _out_qparams(dw, _float_output(dw, d1))
    d2 = replace(_data(pw, seed=2), zx=s1[1], sx=s1[0])
    mod = _chain_module(dw, pw, d1, d2, s1, (0.05, 128), not on_dot, keep_mid=True)
    _, stats = lowering.lower_quantized(mod, host)
    assert stats.fused == 0 and stats.depthwise == 1 and stats.pointwise == 1


def test_channels_the_dot_blocks_do_not_divide_stay_two_operators(
    host, on_dot, monkeypatch, caplog
):
    """ShuffleNetV2's 58-channel branch: the epilogue reads the depthwise map again for the 2
    channels past the dot's blocks of 4, which the fused schedule cannot place (every such
    rule raised, and the fallback schedules took ShuffleNetV2 int8 at 224 to 10.8 ms, 4.6× its
    fp32 time, in ``benchmarks/int8_zoo.py``),
    so the pair is lowered as two operators, each on its rule."""
    dw, pw = Unit("depthwise", 58, 58, 14, 3, 2, "relu"), Unit("pointwise", 58, 58, 7, act="relu")
    got, ref, ops, funcs = run_chain(dw, pw, host, not on_dot, True, monkeypatch)
    assert not [r for r in caplog.records if "raised" in r.getMessage()]
    assert ops["fused"] == 0 and ops["depthwise"] == 1 and ops["pointwise"] == 1, ops
    assert not [f for f in funcs if "sepconv_qdwpw" in f], funcs
    assert_close(got, ref)
