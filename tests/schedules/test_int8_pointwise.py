"""The int8 pointwise rule: it tensorizes packed u8·s8 pointwise functions on the target's dot
instruction, declines everything else, and what it builds computes exactly the integer sum."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import te

from sepconv.compiler.int8 import ops
from sepconv.compiler.separable import te_placeholder
from sepconv.schedules.int8_intrinsics import dot_intrinsic
from sepconv.schedules.int8_pointwise import Int8Pointwise

from .conftest import host_target, require_runs_here

AVX2 = tvm.target.Target(
    {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "haswell", "num-cores": 2}
)
AVX512 = tvm.target.Target(
    {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "skylake-avx512", "num-cores": 2}
)
VNNI = tvm.target.Target(
    {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "cascadelake", "num-cores": 2}
)


def _pointwise(pixels: int, c: int, o: int, lanes: int, packed: bool = True):
    xq = te_placeholder((1, 1, pixels, c), "uint8", "xq")
    shape = (o // lanes, c // 4, lanes, 4) if packed else (c, o)
    wq = te_placeholder(shape, "int8", "wq")
    acc = ops.pointwise_packed(xq, wq) if packed else ops.accumulate(
        xq, wq, (1, 1), (0, 0, 0, 0), (1, 1), 0, depthwise=False
    )  # fmt: skip
    out = te.compute(acc.shape, lambda *i: acc(*i) + 1, name="epilogue")
    return te.create_prim_func([xq, wq, out])


def _asm(sch, target) -> str:
    f = sch.mod["main"].with_attr("global_symbol", "main")
    return tvm.compile(tvm.IRModule({"main": f}), target=target).mod.inspect_source("asm")


@pytest.mark.parametrize(
    "target, lanes, instruction",
    [(AVX2, 8, "vpmaddubsw"), (AVX512, 16, "vpmaddubsw"), (VNNI, 16, "vpdpbusd")],
    ids=["avx2", "avx512", "vnni"],
)
def test_tensorizes_on_the_targets_dot_instruction(target, lanes, instruction):
    sch = Int8Pointwise().apply(_pointwise(14, 32, 2 * lanes, lanes), target, False)
    assert sch is not None
    asm = _asm(sch, target)
    assert instruction in asm
    assert "zmm" in asm if lanes == 16 else "ymm" in asm


def test_declines_unpacked_weights_and_targets_without_a_dot():
    assert Int8Pointwise().apply(_pointwise(14, 32, 16, 8, packed=False), AVX2, False) is None
    sse = tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "x86-64"})
    assert dot_intrinsic(set()) is None
    assert Int8Pointwise().apply(_pointwise(14, 32, 16, 8), sse, False) is None
    # panels for 16 lanes on an AVX2 target: not its intrinsic
    assert Int8Pointwise().apply(_pointwise(14, 32, 32, 16), AVX2, False) is None


# o a multiple of 16: the panel width on AVX-512 hosts (8 on AVX2); 48 is 3 panels of 16, 6 of 8
@pytest.mark.parametrize("pixels, c, o", [(14, 32, 16), (49, 64, 48), (8, 128, 64)])
def test_exact_integer_sum_at_the_edges_of_the_exact_range(pixels, c, o):
    """u8 0…127 × s8 −128…127: vpmaddubsw's s16 pair sum (2·127·128 = 32512) must not saturate."""
    target = host_target()
    require_runs_here(target)
    from sepconv.schedules.target_params import target_features

    dot = dot_intrinsic(target_features(target))
    if dot is None:
        pytest.skip("this host has no u8·s8 dot instruction the rule uses")
    lanes = dot.lanes
    sch = Int8Pointwise().apply(_pointwise(pixels, c, o, lanes), target, False)
    assert sch is not None
    lib = tvm.compile(
        tvm.IRModule({"main": sch.mod["main"].with_attr("global_symbol", "main")}), target=target
    )
    rng = np.random.default_rng(0)
    for x_fill, w_fill in ((127, -128), (127, 127), (0, -128), (None, None)):
        shape = (1, 1, pixels, c)
        x = rng.integers(0, 128, shape) if x_fill is None else np.full(shape, x_fill)
        w = rng.integers(-128, 128, (c, o)) if w_fill is None else np.full((c, o), w_fill)
        x, w = x.astype(np.uint8), w.astype(np.int8)
        packed = ops.pack_pointwise(w, lanes)
        out = tvm.runtime.tensor(np.zeros((1, 1, pixels, o), np.int32))
        lib["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(packed), out)
        expect = x.reshape(pixels, c).astype(np.int64) @ w.astype(np.int64) + 1
        np.testing.assert_array_equal(out.numpy().reshape(pixels, o), expect)
