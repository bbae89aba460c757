"""Structural tests of our operators' rules: what they accept, what code they emit per target,
their design space, and that ARM code cross-compiles."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
import tvm
from tvm import s_tir

from sepconv.compiler.build import lower
from sepconv.compiler.importer import import_module
from sepconv.schedules import (
    FusedDepthwisePointwise,
    SepconvConv,
    SepconvDepthwise,
    SepconvPointwise,
    apply_schedules,
)
from sepconv.schedules.nhwc_tile import choose_gemm_tile, choose_tile, tile_candidates
from sepconv.schedules.target_params import cpu_params
from tests.compiler.separable_cases import DepthwiseLayer, separable_block
from tests.schedules.conftest import run_primfunc

AVX512 = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "skylake-avx512", "num-cores": 2}
AVX2 = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "haswell", "num-cores": 2}
NEON = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"], "num-cores": 4}

RULES = {
    "fused": FusedDepthwisePointwise(),
    "dw": SepconvDepthwise(),
    "pw": SepconvPointwise(),
    "conv": SepconvConv(),
}


def block_functions(target_attrs, layer=None, act="relu6"):
    """The PrimFuncs of stem conv → pointwise expand → separable block, for ``target_attrs``."""
    layer = layer or DepthwiseLayer(32, 1, 3, 1, 1, 1, 28, 28, 64)
    block = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1),
        torch.nn.Conv2d(16, layer.channels, 1),
        torch.nn.ReLU(),
        separable_block(layer, act),
    ).eval()
    x = torch.randn(1, 3, layer.height, layer.width)
    target = tvm.target.Target(target_attrs)
    mod, _, _ = lower(import_module(block, (x,)), target)
    return target, mod


def by_block(mod, name):
    """The PrimFunc whose blocks include ``name`` and none of our other operators' blocks."""
    ours = {"sepconv_dw", "sepconv_pw", "sepconv_conv"}
    for gv, f in mod.functions_items():
        if not isinstance(f, tvm.tirx.PrimFunc):
            continue
        text = f.script()
        present = {b for b in ours | {"sepconv_dw_act"} if f'T.sblock("{b}")' in text}
        if name == "fused" and {"sepconv_dw", "sepconv_pw"} <= present:
            return gv.name_hint, f
        if present & ours == {name} and name != "fused":
            return gv.name_hint, f
    raise AssertionError(f"no function with {name}")


OP_OF = {"fused": "fused", "dw": "sepconv_dw", "pw": "sepconv_pw", "conv": "sepconv_conv"}


@pytest.mark.parametrize("rule", list(RULES))
def test_each_rule_takes_exactly_its_operator(rule):
    layers = {
        "fused": DepthwiseLayer(32, 1, 3, 1, 1, 1, 28, 28, 64),
        "dw": DepthwiseLayer(32, 1, 3, 1, 1, 1, 28, 28, None),
        "pw": DepthwiseLayer(32, 1, 3, 1, 1, 1, 28, 28, None),
        "conv": DepthwiseLayer(32, 1, 3, 1, 1, 1, 28, 28, 64),
    }
    target, mod = block_functions(AVX512, layers[rule], act="hswish" if rule == "dw" else "relu6")
    _, func = by_block(mod, OP_OF[rule])
    assert RULES[rule].apply(func, target, False) is not None
    for other, r in RULES.items():
        if other != rule:
            assert r.apply(func, target, False) is None, f"{other} took {rule}'s function"


@pytest.mark.parametrize("target_attrs", [AVX512, AVX2, NEON], ids=["avx512", "avx2", "neon"])
def test_vector_lanes_follow_the_target(target_attrs):
    target, mod = block_functions(target_attrs)
    _, func = by_block(mod, "fused")
    sch = RULES["fused"].apply(func, target, False)
    lanes = cpu_params(target).lanes()
    text = sch.mod["main"].script()
    assert "T.parallel" in text and "T.vectorized" in text
    # every vectorised loop is exactly one register wide
    widths = {
        int(line.split("T.vectorized(")[1].split(")")[0].replace("T.int64(", ""))
        for line in text.splitlines()
        if "T.vectorized(" in line
    }
    assert widths == {lanes}, (widths, lanes)


def test_fused_rule_keeps_the_intermediate_one_row_big():
    """The depthwise output is allocated per row (OW × C), never the whole map."""
    target, mod = block_functions(AVX512)
    _, func = by_block(mod, "fused")
    sch = RULES["fused"].apply(func, target, False)
    t = tvm.s_tir.transform
    lowered = tvm.transform.Sequential(
        [
            t.LowerInitBlock(),
            t.PlanAndUpdateBufferAllocationLocation(),
            t.ConvertBlocksToOpaque(),
            t.CompactBufferAllocation(),
        ]
    )(sch.mod)
    text = lowered["main"].script()
    act_alloc = [line for line in text.splitlines() if "sepconv_dw_act" in line and "alloc" in line]
    assert act_alloc, text[:2000]
    assert "(T.int64(1), T.int64(1), T.int64(28), T.int64(32))" in act_alloc[0], act_alloc[0]


def test_tile_fits_the_registers_and_divides_the_output():
    for attrs in (AVX512, AVX2, NEON):
        params = cpu_params(tvm.target.Target(attrs))
        for out_w, channels in [(112, 96), (7, 960), (14, 58), (28, 24), (5, 3)]:
            tile = choose_tile(out_w, channels, params)
            assert out_w % tile.p == 0 and channels % tile.channels == 0
            assert tile.p * tile.k <= params.accumulator_regs
            assert tile in tile_candidates(out_w, channels, params)


@pytest.mark.parametrize("isa", [AVX512, AVX2], ids=["avx512", "avx2"])
@pytest.mark.parametrize("rule", ["fused", "dw", "pw"])
def test_tunable_space_samples_tiles_and_every_sample_is_correct(rule, isa):
    """Runs the samples, so each ISA runs where the host has it (run_primfunc skips otherwise)."""
    target, mod = block_functions(isa, act="hswish" if rule == "dw" else "relu6")
    if rule == "dw":
        target, mod = block_functions(
            isa, DepthwiseLayer(32, 1, 3, 1, 1, 1, 28, 28, None), act="hswish"
        )
    _, func = by_block(mod, OP_OF[rule])
    reference = run_primfunc(apply_schedules(tvm.IRModule({"main": func}), target)["main"], target)
    sch = RULES[rule].apply(func, target, True)
    assert any(inst.kind.name == "SampleCategorical" for inst in sch.trace.insts)
    tiles = set()
    for shift in range(3):

        def other_decision(inst, inputs, attrs, decision, shift=shift):
            if inst.kind.name != "SampleCategorical":
                return decision
            return (int(decision) + shift) % len(attrs[0])

        traced = s_tir.Schedule(func)
        sch.trace.apply_to_schedule(traced, remove_postproc=True, decision_provider=other_decision)
        tiles.add(str(traced.trace))
        out = run_primfunc(traced.mod["main"], target)
        np.testing.assert_allclose(out, reference, rtol=1e-4, atol=1e-5)
    assert len(tiles) == 3  # three different points of the space, all correct


@pytest.mark.skipif(
    shutil.which("aarch64-linux-gnu-gcc") is None,
    reason="needs Debian's gcc-aarch64-linux-gnu to cross-compile",
)
def test_neon_rules_cross_compile_and_export(tmp_path):
    """Until the emulated ARM device runs it, ARM code must at least compile and link."""
    import sepconv

    art = sepconv.compile("mobilenet_v2:0.35@32", target="aarch64-linux-gnu", out=tmp_path / "arm")
    ops = art.manifest.build["sepconv_ops"]
    assert ops["fused_dw_pw"] > 0
    with open(art.path / "model.so", "rb") as f:
        header = f.read(20)
    assert header[:4] == b"\x7fELF" and int.from_bytes(header[18:20], "little") == 183  # AArch64


def _parallel_extents(text: str) -> list[int]:
    return [
        int(line.split("T.parallel(")[1].split(")")[0].replace("T.int64(", ""))
        for line in text.splitlines()
        if "T.parallel(" in line
    ]


@pytest.mark.parametrize(
    "hw, channels, out, outer",
    [(7, 64, 128, True), (56, 32, 64, False)],
    ids=["7x7-weights-outweigh-pixels", "56x56-pixels-outweigh-weights"],
)
def test_pointwise_is_a_gemm_over_flattened_pixels_in_the_order_its_shape_wants(
    hw, channels, out, outer
):
    """Weight panels outermost when the weights outweigh the input (late layers), pixel tiles
    outermost otherwise; on AVX2 the tile is 6 pixels × 2 vectors whether or not 6 divides the
    row (7×7: the tiles span rows, the last one predicated)."""
    target = tvm.target.Target(AVX2)
    tile = choose_gemm_tile(hw * hw, channels, out, cpu_params(target))
    assert (tile.p, tile.k, tile.vec, tile.channels_outer) == (6, 2, 8, outer)
    block = torch.nn.Sequential(
        torch.nn.Conv2d(channels, channels, 3, padding=1, groups=channels),
        torch.nn.Conv2d(channels, out, 1),
        torch.nn.ReLU6(),
    ).eval()
    x = torch.randn(1, channels, hw, hw)
    mod, _, _ = lower(import_module(block, (x,)), target, fuse_dw_pw=False)
    _, func = by_block(mod, "sepconv_pw")
    text = RULES["pw"].apply(func, target, False).mod["main"].script()
    pixels = hw * hw
    expected = out // 16 if outer else -(-pixels // 6)
    assert _parallel_extents(text) == [expected], text[:3000]
    assert ("T.where" in text) == (pixels % 6 != 0)


def test_pointwise_weights_are_packed_in_panels_of_the_micro_kernel_width():
    from sepconv.compiler.sepconv_ops import pack_pointwise

    w = np.arange(6 * 32, dtype="float32").reshape(6, 32)  # [C, O]
    packed = pack_pointwise(w, 16)
    assert packed.shape == (2, 6, 16)
    assert packed[1, 4, 3] == w[4, 16 + 3]
    with pytest.raises(ValueError, match="does not divide"):
        pack_pointwise(w, 24)
    for attrs, width in ((AVX2, 16), (AVX512, 32), (NEON, 8)):
        target, mod = block_functions(attrs, DepthwiseLayer(32, 1, 3, 1, 1, 1, 14, 14, 64))
        _, func = by_block(mod, "fused")
        shapes = [tuple(int(d) for d in p.shape) for p in func.params]
        assert (64 // width, 32, width) in shapes, (attrs, shapes)


def test_padded_weights_are_zero_past_the_real_channels():
    from sepconv.compiler.sepconv_ops import pack_pointwise

    w = np.arange(6 * 29, dtype="float32").reshape(6, 29) + 1
    packed = pack_pointwise(w, 16, 32)
    assert packed.shape == (2, 6, 16)
    assert packed[1, 4, 12] == w[4, 28] and not packed[1, :, 13:].any()
    with pytest.raises(ValueError, match="does not divide"):
        pack_pointwise(w, 16, 40)


@pytest.mark.parametrize(
    ("attrs", "expected"),
    [(AVX2, {58: 64, 116: 128, 92: 96, 24: 24, 1000: 1000}),
     (AVX512, {58: 64, 116: 128, 92: 96, 24: 24, 232: 232}),
     (NEON, {58: 64, 116: 116, 29: 32})],
)  # fmt: skip
def test_channels_that_are_not_whole_vectors_are_padded_to_two_registers(attrs, expected):
    from sepconv.schedules.nhwc_tile import padded_channels

    params = cpu_params(tvm.target.Target(attrs))
    assert {c: padded_channels(c, params) for c in expected} == expected


def test_a_58_channel_pointwise_runs_full_vectors_and_stores_only_the_real_channels():
    """ShuffleNet's 58 output channels: the GEMM runs on 64 (8-lane vectors, 6 × 16 tile on
    AVX2), only 58 are stored (the last panel's epilogue predicated), and the profile counts
    the 58 channels' MACs."""
    from sepconv.compiler.costs import primfunc_cost

    target = tvm.target.Target(AVX2)
    block = torch.nn.Sequential(
        torch.nn.Conv2d(29, 29, 3, padding=1, groups=29),
        torch.nn.Conv2d(29, 58, 1),
        torch.nn.ReLU(),
    ).eval()
    x = torch.randn(1, 29, 14, 14)
    mod, _, _ = lower(import_module(block, (x,)), target, fuse_dw_pw=False)
    _, func = by_block(mod, "sepconv_pw")
    assert primfunc_cost(func).macs == 29 * 58 * 14 * 14
    assert (4, 29, 16) in [tuple(int(d) for d in p.shape) for p in func.params]
    sch = RULES["pw"].apply(func, target, False)
    text = sch.mod["main"].script()
    assert "T.vectorized(T.int64(8))" in text and "< T.int64(58)" in text, text
    np.testing.assert_allclose(
        run_primfunc(sch.mod["main"], target), run_primfunc(func, target), rtol=1e-5, atol=1e-5
    )


def test_fused_rule_makes_a_late_blocks_depthwise_output_whole_and_runs_panels_outermost():
    """7×7 with more output channels than pixels: the row-at-a-time structure would stream
    every weight once per row; the depthwise map is made whole and each panel read once."""
    layer = DepthwiseLayer(64, 1, 3, 1, 1, 1, 7, 7, 128)
    target, mod = block_functions(AVX2, layer)
    _, func = by_block(mod, "fused")
    sch = RULES["fused"].apply(func, target, False)
    text = sch.mod["main"].script()
    # two parallel regions: the depthwise map, then the 128 / 16 weight panels
    assert _parallel_extents(text)[-1] == 8, text[:3000]
    assert len(_parallel_extents(text)) == 2
    reference = run_primfunc(func, target)
    out = run_primfunc(sch.mod["main"], target)
    np.testing.assert_allclose(out, reference, rtol=1e-4, atol=1e-5)


class _GatedMap(torch.nn.Module):
    """A depthwise conv and squeeze-and-excitation as MobileNetV3 ends a block with it: pool →
    FC → ReLU → FC → hard sigmoid → gate × map (nothing after it to fold the gate into)."""

    def __init__(self, channels: int, squeeze: int):
        super().__init__()
        self.dw = torch.nn.Conv2d(channels, channels, 3, padding=1, groups=channels)
        self.fc1 = torch.nn.Conv2d(channels, squeeze, 1)
        self.fc2 = torch.nn.Conv2d(squeeze, channels, 1)

    def forward(self, x):
        x = self.dw(x)
        g = self.fc2(torch.relu(self.fc1(x.mean((2, 3), keepdim=True))))
        return x * torch.nn.functional.hardsigmoid(g)


@pytest.mark.parametrize(
    ("channels", "squeeze", "fc_parallel"),
    [(960, 240, True), (64, 16, False)],  # V3-Large's last SE (230 k MACs); a small one (1 k)
)
def test_a_large_se_fc_before_its_gate_product_is_split_over_the_cores(
    channels, squeeze, fc_parallel
):
    """The broadcast epilogue: the expansion FC runs once and the gate × map on its own. A
    large FC is split over the cores as well; a small one stays serial, cheaper than a second
    parallel launch."""
    from sepconv.schedules.nhwc_tile import PARALLEL_REDUCTION_MACS

    assert (channels * squeeze >= PARALLEL_REDUCTION_MACS) == fc_parallel
    target = tvm.target.Target(AVX2)
    x = torch.randn(1, channels, 7, 7)
    mod, _, _ = lower(import_module(_GatedMap(channels, squeeze).eval(), (x,)), target)
    gated = [
        f
        for _, f in mod.functions_items()
        if isinstance(f, tvm.tirx.PrimFunc)
        and 'T.sblock("sepconv_pw")' in f.script()
        and "multiply" in f.script()
        and any(tuple(int(d) for d in p.shape) == (1, 7, 7, channels) for p in f.params)
    ]
    assert len(gated) == 1
    func = gated[0]
    sch = RULES["pw"].apply(func, target, False)
    text = sch.mod["main"].script()
    fc = text.index('T.sblock("sepconv_pw_update")')
    product = text.index('T.sblock("T_multiply")')
    assert fc < product  # the FC first, once, then the product
    assert ("T.parallel(" in text[:fc]) == fc_parallel, text[:fc]
    np.testing.assert_allclose(
        run_primfunc(sch.mod["main"], target), run_primfunc(func, target), rtol=1e-5, atol=1e-5
    )
