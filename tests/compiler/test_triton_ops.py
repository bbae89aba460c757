"""The CUDA graph rewrite recognises what it should and leaves the rest to TVM.

Matching only (no Triton compile) except the last test, which rewrites one small graph.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from tvm import relax

from sepconv.compiler.importer import import_module
from sepconv.compiler.passes import fold_batch_norm
from sepconv.compiler.triton_ops import find_matches
from tests.nets import randomize_bn

ACTS = {"relu": nn.ReLU, "relu6": nn.ReLU6, "hswish": nn.Hardswish, "silu": nn.SiLU}


def dw_bn(c, k=3, s=1, act="relu6"):
    layers = [nn.Conv2d(c, c, k, s, k // 2, groups=c, bias=False), nn.BatchNorm2d(c)]
    return nn.Sequential(*layers, *([ACTS[act]()] if act else []))


def pw_bn(c, co, act=None):
    layers = [nn.Conv2d(c, co, 1, bias=False), nn.BatchNorm2d(co)]
    return nn.Sequential(*layers, *([ACTS[act]()] if act else []))


class Block(nn.Module):
    def __init__(self, c=16, co=16, k=3, s=1, act="relu6", act_pw=None, residual=False):
        super().__init__()
        self.dw, self.pw, self.residual = dw_bn(c, k, s, act), pw_bn(c, co, act_pw), residual

    def forward(self, x):
        y = self.pw(self.dw(x))
        return x + y if self.residual else y


class SE(nn.Module):
    def __init__(self, c=16, cr=4, act="relu", gate="hsigmoid"):
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(c, cr, 1), nn.Conv2d(cr, c, 1)
        self.act = ACTS[act]()
        self.gate = nn.Hardsigmoid() if gate == "hsigmoid" else nn.Sigmoid()

    def forward(self, x):
        s = x.mean((2, 3), keepdim=True)
        return x * self.gate(self.fc2(self.act(self.fc1(s))))


class SEBlock(nn.Module):
    """dw → act → SE → pw (EfficientNet / MobileNetV3): SE takes the dw output twice, so the
    dw conv cannot fuse into the pw conv."""

    def __init__(self, c=16, co=8, act="silu", gate="sigmoid"):
        super().__init__()
        self.dw, self.se = dw_bn(c, 3, 1, act), SE(c, 4, act, gate)
        self.pw = pw_bn(c, co)

    def forward(self, x):
        return self.pw(self.se(self.dw(x)))


class DwTwice(nn.Module):
    """The dw output feeds the pw conv and something else: not fusable."""

    def __init__(self, c=16):
        super().__init__()
        self.dw, self.pw = dw_bn(c), pw_bn(c, c)

    def forward(self, x):
        d = self.dw(x)
        return self.pw(d) + d


class Multiplier2(nn.Module):
    def __init__(self, c=8):
        super().__init__()
        self.conv = nn.Conv2d(c, 2 * c, 3, 1, 1, groups=c)

    def forward(self, x):
        return self.conv(x)


def matches_of(model: nn.Module, shape=(1, 16, 8, 8)):
    model = randomize_bn(model.eval())
    graph = import_module(model, (torch.randn(*shape),))
    mod = relax.transform.FoldConstant()(fold_batch_norm(graph.mod))
    return find_matches(mod["main"])


@pytest.mark.parametrize("act", ["relu", "relu6", "hswish", "silu", None])
def test_fused_block_with_each_dw_activation(act):
    (m,) = matches_of(Block(act=act))
    assert m.kind == "fused_dw_pw"
    assert m.params["act_dw"] == (act or "none") and m.params["act_pw"] == "none"
    assert m.params["residual"] is None


@pytest.mark.parametrize("k, s", [(3, 1), (3, 2), (5, 1), (5, 2)])
def test_fused_block_kernel_sizes_and_strides(k, s):
    (m,) = matches_of(Block(co=24, k=k, s=s))
    dw = m.params["dw"]
    assert dw["ws"][2:] == (k, k) and dw["stride"] == s and dw["pad"] == [k // 2] * 4


def test_fused_block_takes_the_residual_and_the_pw_activation():
    (m,) = matches_of(Block(act="relu", act_pw="relu", residual=True))
    assert m.kind == "fused_dw_pw" and m.params["act_pw"] == "relu"
    assert m.params["residual"] is not None


@pytest.mark.parametrize("act, gate", [("relu", "hsigmoid"), ("silu", "sigmoid")])
def test_se_block(act, gate):
    found = matches_of(SEBlock(act=act, gate=gate))
    kinds = sorted(m.kind for m in found)
    assert kinds == ["depthwise", "se"]
    se = next(m for m in found if m.kind == "se")
    assert (se.params["act"], se.params["gate"], se.params["cr"]) == (act, gate, 4)
    dw = next(m for m in found if m.kind == "depthwise")
    assert dw.params["act_dw"] == act


def test_dw_output_used_twice_is_not_fused():
    (m,) = matches_of(DwTwice())
    assert m.kind == "depthwise" and m.params["act_dw"] == "relu6"


def test_channel_multiplier_is_left_to_tvm():
    assert matches_of(Multiplier2(), shape=(1, 8, 8, 8)) == []


def test_fusion_can_be_switched_off():
    model = randomize_bn(Block().eval())
    graph = import_module(model, (torch.randn(1, 16, 8, 8),))
    mod = relax.transform.FoldConstant()(fold_batch_norm(graph.mod))
    (m,) = find_matches(mod["main"], fuse=False)
    assert m.kind == "depthwise"


def test_rewrite_embeds_kernels_in_the_module():
    pytest.importorskip("triton")
    import triton
    import tvm

    if triton.knobs.runtime.interpret:
        pytest.skip("TRITON_INTERPRET=1 is set: kernels are interpreted, not compiled")
    from sepconv.compiler.passes import count_ops
    from sepconv.compiler.triton_ops import rewrite_triton

    model = randomize_bn(SEBlock().eval())
    graph = import_module(model, (torch.randn(1, 16, 8, 8),))
    mod = relax.transform.FoldConstant()(fold_batch_norm(graph.mod))
    target = tvm.target.Target({"kind": "cuda", "arch": "sm_90"})
    out, stats = rewrite_triton(mod, target)
    assert (stats.depthwise, stats.se, stats.fused_dw_pw) == (1, 1, 0)
    assert count_ops(out, "relax.call_tir") == 2
    assert count_ops(out, "relax.nn.conv2d") == 1  # the pw projection stays with TVM
    assert count_ops(out, "relax.mean") == 0
    assert len(out.attrs["external_mods"]) == len(stats.kernels) == 3  # dw, SE pool, SE scale


def test_rewrite_when_the_chain_is_the_graph_output():
    """The replaced binding leaves the dataflow block: the new one must too (well-formed IR)."""
    pytest.importorskip("triton")
    import triton
    import tvm

    if triton.knobs.runtime.interpret:
        pytest.skip("TRITON_INTERPRET=1 is set: kernels are interpreted, not compiled")
    from sepconv.compiler.triton_ops import rewrite_triton

    model = randomize_bn(dw_bn(16).eval())
    graph = import_module(model, (torch.randn(1, 16, 8, 8),))
    mod = relax.transform.FoldConstant()(fold_batch_norm(graph.mod))
    out, stats = rewrite_triton(mod, tvm.target.Target({"kind": "cuda", "arch": "sm_90"}))
    assert stats.depthwise == 1
    relax.analysis.well_formed(out)  # raises on the first violation
