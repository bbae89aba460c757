"""The int8 pointwise rule: it tensorizes packed u8·s8 pointwise functions on the target's dot
instruction, declines everything else, and what it builds computes exactly the integer sum."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import te

from sepconv.compiler.int8 import ops
from sepconv.compiler.separable import te_placeholder
from sepconv.schedules.block_names import DW_ACT
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
AVX_VNNI = tvm.target.Target(
    {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "alderlake", "num-cores": 2}
)


EACH_DOT = pytest.mark.parametrize(
    "target, lanes, instruction",
    [
        (AVX2, 8, "vpmaddubsw"),
        (AVX512, 16, "vpmaddubsw"),
        (VNNI, 16, "vpdpbusd"),
        (AVX_VNNI, 8, "vpdpbusd"),  # VEX-encoded: no AVX-512 on the target
    ],
    ids=["avx2", "avx512", "vnni", "avx-vnni"],
)  # each x86 dot instruction: its target and panel lanes


def _pointwise(pixels: int, c: int, o: int, lanes: int, packed: bool = True):
    xq = te_placeholder((1, 1, pixels, c), "uint8", "xq")
    weights = [te_placeholder((c, o), "int8", "wq")]
    if packed:
        weights = [te_placeholder((-(-o // lanes), c // 4, lanes, 4), "int8", "wq")]
        if c % 4:
            weights.append(te_placeholder((c % 4, -(-o // lanes) * lanes), "int8", "wt"))
        acc = ops.pointwise_packed(xq, *weights[:1], o, *weights[1:])
    else:
        acc = ops.accumulate(xq, weights[0], (1, 1), (0, 0, 0, 0), (1, 1), 0, depthwise=False)
    out = te.compute(acc.shape, lambda *i: acc(*i) + 1, name="epilogue")
    return te.create_prim_func([xq, *weights, out])


def _asm(sch, target) -> str:
    f = sch.mod["main"].with_attr("global_symbol", "main")
    return tvm.compile(tvm.IRModule({"main": f}), target=target).mod.inspect_source("asm")


@EACH_DOT
def test_tensorizes_on_the_targets_dot_instruction(target, lanes, instruction):
    sch = Int8Pointwise().apply(_pointwise(14, 32, 2 * lanes, lanes), target, False)
    assert sch is not None
    asm = _asm(sch, target)
    assert instruction in asm
    assert "zmm" in asm if lanes == 16 else "ymm" in asm


def _stem(hw: int, c: int, o: int, lanes: int, stride: int = 2):
    """A 3×3, pad-1 dense conv on the dot (ops.conv_packed): flat input rows, packed panels."""
    xq = te_placeholder((1, hw, hw * c), "uint8", "xq")
    wq = te_placeholder((-(-o // lanes), 3 * ops.window_row(3, c) // 4, lanes, 4), "int8", "wq")
    acc = ops.conv_packed(xq, wq, (1, hw, hw, c), (3, 3), (stride, stride), (1, 1, 1, 1), 7, o)
    out = te.compute(acc.shape, lambda *i: acc(*i) + 1, name="epilogue")
    return te.create_prim_func([xq, wq, out])


@EACH_DOT
def test_dense_conv_tensorizes_over_its_window_rows(target, lanes, instruction):
    """The stem (3 channels, 3×3, stride 2; 24 outputs: padded panels) on the same dot, its
    padded rows copied in parallel, their padding split off by LoopPartition."""
    sch = Int8Pointwise().apply(_stem(16, 3, 24, lanes), target, False)
    assert sch is not None
    script = sch.mod.script()
    assert "T.parallel" in script and "pragma_loop_partition_hint" in script
    assert instruction in _asm(sch, target)


def _fused(hw: int, c: int, o: int, lanes: int, stride: int = 1):
    """A 3×3 depthwise unit requantized to u8 (``DW_ACT``) feeding a packed pointwise GEMM."""
    xq = te_placeholder((1, hw, hw, c), "uint8", "xq")
    wd = te_placeholder((3, 3, c), "int8", "wd")
    kinds = (("int32", "corr"), ("float32", "scale"), ("float32", "bias"))
    corr, scale, bias = (te_placeholder((c,), d, n) for d, n in kinds)
    acc = ops.accumulate(xq, wd, (stride, stride), (1, 1, 1, 1), (1, 1), 7, depthwise=True)
    mid = ops.QParams(0.05, 3, "uint8")
    y = ops.requantize(acc, corr, scale, bias, lambda v: v, mid, name=DW_ACT)
    wq = te_placeholder((-(-o // lanes), c // 4, lanes, 4), "int8", "wq")
    gemm = ops.pointwise_packed(y, wq, o)
    out = te.compute(gemm.shape, lambda *i: gemm(*i) + 1, name="epilogue")
    return te.create_prim_func([xq, wd, corr, scale, bias, wq, out])


@EACH_DOT
def test_fused_depthwise_pointwise_tensorizes_its_gemm(target, lanes, instruction):
    sch = Int8Pointwise().apply(_fused(14, 32, 2 * lanes, lanes), target, False)
    assert sch is not None
    asm = _asm(sch, target)
    assert instruction in asm and "TVMBackendAllocWorkspace" not in asm


@pytest.mark.parametrize(
    "hw, c, o, stride, per_task",
    [(14, 32, 32, 1, True), (15, 32, 48, 2, True), (7, 128, 512, 1, False)],
)
def test_where_the_fused_depthwise_half_runs(hw, c, o, stride, per_task):
    """Row-parallel: each task computes the depthwise pixels its GEMM reads, so the map between
    the halves is never whole in memory. Late layers (the weights outweigh a 7×7 map): the
    whole map first, in parallel, then each task runs its weight panel over all of it."""
    sch = Int8Pointwise().apply(_fused(hw, c, o, 16, stride), VNNI, False)
    assert sch is not None
    act_loops = sch.get_loops(sch.get_sblock(DW_ACT))
    gemm_loops = sch.get_loops(sch.get_sblock("sepconv_pw_update_o"))
    parallel = tvm.tirx.ForKind.PARALLEL
    assert sch.get(gemm_loops[0]).kind == parallel
    assert sch.get(act_loops[0]).same_as(sch.get(gemm_loops[0])) == per_task, sch.mod.script()
    assert sch.get(act_loops[0]).kind == parallel


def test_dense_conv_costs_count_the_real_macs():
    """Its reduction runs over 3 × 12 bytes per output, 27 of them real; 24 of 32 channels."""
    from sepconv.compiler.costs import primfunc_cost

    assert primfunc_cost(_stem(16, 3, 24, 16)).macs == 8 * 8 * 24 * 27


@pytest.mark.parametrize("target, lanes", [(AVX2, 8), (VNNI, 16)], ids=["avx2", "vnni"])
def test_the_dot_kernels_allocate_no_workspace(target, lanes):
    """The intrinsic's operands are one expression: named values in TVMScript are local
    buffers, which under the parallel loop were workspaces allocated and freed per task."""
    for func in (_pointwise(14, 32, 2 * lanes, lanes), _stem(16, 3, 32, lanes)):
        sch = Int8Pointwise().apply(func, target, False)
        assert "TVMBackendAllocWorkspace" not in _asm(sch, target)


@pytest.mark.parametrize(
    "pixels, c, o, panels_outer",
    [(49, 1024, 1024, True), (8, 128, 64, True), (784, 128, 128, False), (49, 58, 58, False)],
)
def test_late_layers_give_each_task_a_panel_of_output_channels(pixels, c, o, panels_outer):
    """Where the weights outweigh the map (7×7 with 1024 channels) the parallel loop runs
    over channel panels first, so a panel is read once for every pixel, not once per row;
    a 28×28 map of 128 channels keeps rows outermost, and padded panels (58) keep their peeled
    last tile."""
    sch = Int8Pointwise().apply(_pointwise(pixels, c, o, 16), VNNI, False)
    assert sch is not None
    parallel = [lp for lp in sch.get_loops(sch.get_sblock("sepconv_pw_update_o"))
                if sch.get(lp).kind == tvm.tirx.ForKind.PARALLEL]  # fmt: skip
    assert len(parallel) == 1
    assert sch.get(parallel[0]).loop_var.name.startswith("o_0") == panels_outer, sch.mod.script()


def test_declines_unpacked_weights_and_targets_without_a_dot():
    assert Int8Pointwise().apply(_pointwise(14, 32, 16, 8, packed=False), AVX2, False) is None
    sse = tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "x86-64"})
    assert dot_intrinsic(set()) is None
    assert Int8Pointwise().apply(_pointwise(14, 32, 16, 8), sse, False) is None
    # panels for 16 lanes on an AVX2 target: not its intrinsic
    assert Int8Pointwise().apply(_pointwise(14, 32, 32, 16), AVX2, False) is None


def test_padded_accumulator_keeps_the_placeholders_int64_dims():
    """FuseTIR rejects a function whose buffer dims are int32 beside Relax's int64 ones (an int8
    MobileNetV3-Small failed to compile so): the padded panels' PW and PW_CROP blocks too."""
    xq = te_placeholder((1, 2, 14, 58), "uint8", "xq")
    wp = te_placeholder((4, 14, 16, 4), "int8", "wq")
    wt = te_placeholder((2, 64), "int8", "wt")
    crop = ops.pointwise_packed(xq, wp, 58, wt)
    for t in (crop, crop.op.input_tensors[0]):
        assert {str(d.ty) for d in t.shape} == {"int64"}, t


def test_padded_panels_peel_the_last_channel_tile():
    """ShuffleNet's 58 channels: 4 panels of 16, the last with 6 real channels and 2 input
    channels outside the blocks of 4. The epilogue's channel-tile loop carries TVM's
    loop-partition hint (only the peeled last tile is predicated); unpadded shapes carry none."""
    for o, hinted in ((58, True), (64, False)):
        sch = Int8Pointwise().apply(_pointwise(56, 58 if hinted else 64, o, 16), VNNI, False)
        assert sch is not None
        script = sch.mod.script()
        assert ("pragma_loop_partition_hint" in script) == hinted, script
        assert "vpdpbusd" in _asm(sch, VNNI)


# 48 is 3 panels of 16, 6 of 8; the last three pad the panels (58, 20 output channels) and
# leave input channels outside the blocks of 4 (58, 30, 7)
@pytest.mark.parametrize(
    "pixels, c, o",
    [(14, 32, 16), (49, 64, 48), (8, 128, 64), (28, 58, 58), (7, 30, 20), (9, 7, 3)],
)
def test_exact_integer_sum_at_the_edges_of_the_exact_range(pixels, c, o):
    """u8 0…127 × s8 −128…127: vpmaddubsw's s16 pair sum (2·127·128 = 32512) must not saturate."""
    target = host_target()
    require_runs_here(target)
    from sepconv.schedules.target_params import target_features

    dot = dot_intrinsic(target_features(target))
    if dot is None:
        pytest.skip("this host has no u8·s8 dot instruction the rule uses")
    fills = ((127, -128), (127, 127), (0, -128), (None, None))
    _assert_exact_sums(target, dot.lanes, pixels, c, o, fills, 127, 128)


@pytest.mark.parametrize("target, lanes", [(AVX2, 8), (AVX512, 16)], ids=["avx2", "avx512"])
def test_the_pairs_are_exact_on_full_range_input_and_7_bit_weights(target, lanes):
    """The scheme without VNNI: u8 0…255 × s8 −64…63, whose pair sums (2·255·64 = 32640) stay
    inside s16 on ``vpmaddubsw`` — run on each pairs instruction this CPU has."""
    require_runs_here(target)
    fills = ((255, -64), (255, 63), (None, None))
    _assert_exact_sums(target, lanes, 28, 64, 2 * lanes, fills, 255, 64)


def _assert_exact_sums(target, lanes, pixels, c, o, fills, x_max: int, w_max: int) -> None:
    """The packed pointwise built for ``target`` against numpy's integer GEMM (+ 1), on inputs
    filled with each (x, w) of ``fills`` (None: random in 0…x_max and −w_max…w_max − 1)."""
    sch = Int8Pointwise().apply(_pointwise(pixels, c, o, lanes), target, False)
    assert sch is not None
    lib = tvm.compile(
        tvm.IRModule({"main": sch.mod["main"].with_attr("global_symbol", "main")}), target=target
    )
    rng = np.random.default_rng(0)
    for x_fill, w_fill in fills:
        shape = (1, 1, pixels, c)
        x = rng.integers(0, x_max + 1, shape) if x_fill is None else np.full(shape, x_fill)
        w = rng.integers(-w_max, w_max, (c, o)) if w_fill is None else np.full((c, o), w_fill)
        x, w = x.astype(np.uint8), w.astype(np.int8)
        weights = [tvm.runtime.tensor(a) for a in ops.pack_pointwise(w, lanes) if a is not None]
        out = tvm.runtime.tensor(np.zeros((1, 1, pixels, o), np.int32))
        lib["main"](tvm.runtime.tensor(x), *weights, out)
        expect = x.reshape(pixels, c).astype(np.int64) @ w.astype(np.int64) + 1
        np.testing.assert_array_equal(out.numpy().reshape(pixels, o), expect)


@pytest.mark.parametrize("hw, c, o, stride", [(16, 3, 32, 2), (15, 3, 24, 2), (9, 8, 16, 1)])
def test_dense_conv_exact_integer_sum(hw, c, o, stride):
    """The window-row GEMM against numpy's integer conv (zero point 7 in the padding), at the
    ends of the exact range: bytes past KW·C and the extra right pixel meet zero weights."""
    target = host_target()
    require_runs_here(target)
    from sepconv.schedules.target_params import target_features

    dot = dot_intrinsic(target_features(target))
    if dot is None:
        pytest.skip("this host has no u8·s8 dot instruction the rule uses")
    sch = Int8Pointwise().apply(_stem(hw, c, o, dot.lanes, stride), target, False)
    lib = tvm.compile(
        tvm.IRModule({"main": sch.mod["main"].with_attr("global_symbol", "main")}), target=target
    )
    rng = np.random.default_rng(0)
    oh = (hw + 2 - 3) // stride + 1
    for x_fill, w_fill in ((127, -128), (127, 127), (None, None)):
        xs, ws = (hw, hw, c), (3, 3, c, o)
        x = rng.integers(0, 128, xs) if x_fill is None else np.full(xs, x_fill)
        w = rng.integers(-128, 128, ws) if w_fill is None else np.full(ws, w_fill)
        x, w = x.astype(np.uint8), w.astype(np.int8)
        out = tvm.runtime.tensor(np.zeros((1, oh, oh, o), np.int32))
        panels = tvm.runtime.tensor(ops.pack_conv(w, dot.lanes))
        lib["main"](tvm.runtime.tensor(x.reshape(1, hw, hw * c)), panels, out)
        xp = np.pad(x.astype(np.int64), ((1, 1), (1, 1), (0, 0)), constant_values=7)
        win = np.lib.stride_tricks.sliding_window_view(xp, (3, 3), axis=(0, 1))[::stride, ::stride]
        expect = np.einsum("yxcij,ijco->yxo", win, w.astype(np.int64)) + 1
        np.testing.assert_array_equal(out.numpy()[0], expect)
