"""The integer operators against torch's fake-quant ops, one quantized unit at a time.

Each case writes one PT2E unit by hand in Relax — ``dequantize(xq) → conv2d(·, dequantize(Wq))
+ b → act [+ dequantize(rq) → act2] → quantize`` — builds it through the whole compiler
(lowering to our integer operator → its schedule rule → codegen) and compares with the same
unit run by torch's ``quantized_decomposed`` ops (what PT2E's converted graph runs eagerly).
The reference sums in float and we sum exactly in int32, so a value on a rounding boundary may
land one step away: ≤ 1 step everywhere and ≥ 99.9 % exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import tvm
from tvm import relax, te

from sepconv.compiler.artifact import TensorInfo
from sepconv.compiler.build import build
from sepconv.compiler.importer import ImportedGraph

pytest.importorskip("torchao", reason="the fake-quant reference ops come with torchao's PT2E")
import torchao.quantization.pt2e  # noqa: E402, F401 - registers torch.ops.quantized_decomposed

QD = torch.ops.quantized_decomposed
QRANGE = {"uint8": (0, 255), "int8": (-128, 127)}
TORCH_DTYPE = {"uint8": torch.uint8, "int8": torch.int8}
ACTS = ("none", "relu", "relu6", "hswish", "silu")
SX, SR = 0.02, 0.03


@dataclass(frozen=True)
class Unit:
    kind: str  # depthwise | pointwise | dense
    c: int
    o: int
    hw: int
    k: int = 1
    stride: int = 1
    act: str = "none"
    residual: bool = False
    act2: str = "none"  # after the residual add
    dtype: str = "uint8"  # activations: uint8 (x86), int8 (AArch64)
    narrow: bool = False  # reduce_range: the input map clamped to 0…127, as PT2E writes it
    weight_bits: int = 8  # 7: −64…63, the scheme on x86 without VNNI

    @property
    def groups(self) -> int:
        return self.c if self.kind == "depthwise" else 1

    @property
    def id(self) -> str:
        res = f"+res-{self.act2}" if self.residual else ""
        extra = ("-s8" if self.dtype == "int8" else "") + ("-narrow" if self.narrow else "")
        extra += "" if self.weight_bits == 8 else f"-w{self.weight_bits}"
        return (
            f"{self.kind}-c{self.c}o{self.o}-k{self.k}s{self.stride}-{self.hw}x{self.hw}-"
            f"{self.act}{res}{extra}"
        )


CASES = [
    # depthwise: K3 / K5, stride 1 / 2, every activation
    Unit("depthwise", 16, 16, 14, 3, 1, "relu6"),
    Unit("depthwise", 16, 16, 15, 3, 2, "hswish"),
    Unit("depthwise", 32, 32, 7, 5, 1, "relu"),
    Unit("depthwise", 24, 24, 16, 5, 2, "silu"),
    Unit("depthwise", 8, 8, 9, 3, 1, "none"),
    Unit("depthwise", 16, 16, 8, 3, 1, "relu6", dtype="int8"),
    # pointwise: projection (no activation) with and without the residual, expansions
    Unit("pointwise", 16, 24, 14, act="none"),
    Unit("pointwise", 24, 24, 8, act="none", residual=True),
    Unit("pointwise", 16, 16, 8, act="none", residual=True, act2="relu"),
    Unit("pointwise", 16, 32, 8, act="relu6"),
    Unit("pointwise", 32, 16, 7, act="hswish"),
    Unit("pointwise", 16, 32, 6, act="silu"),
    Unit("pointwise", 12, 16, 8, act="relu"),
    Unit("pointwise", 32, 32, 7, act="relu6", narrow=True),
    Unit("pointwise", 24, 24, 8, act="none", residual=True, narrow=True),
    # dense: the stem (3 input channels, stride 2)
    Unit("dense", 3, 16, 16, 3, 2, "relu6"),
    Unit("dense", 3, 16, 16, 3, 2, "hswish"),
    Unit("dense", 3, 16, 15, 3, 2, "silu"),
    Unit("dense", 3, 8, 16, 3, 2, "relu"),
    Unit("dense", 3, 8, 12, 3, 2, "none"),
]


def test_every_activation_and_kind_is_covered():
    for kind in ("depthwise", "pointwise", "dense"):
        assert {u.act for u in CASES if u.kind == kind} == set(ACTS), kind
    kernels = {(u.k, u.stride) for u in CASES if u.kind == "depthwise"}
    assert kernels >= {(3, 1), (3, 2), (5, 1), (5, 2)}


# -- the unit, in torch (reference) and in Relax (what the importer writes) ------------------


def _torch_act(name: str, v: torch.Tensor) -> torch.Tensor:
    return {
        "none": lambda t: t,
        "relu": F.relu,
        "relu6": lambda t: t.clamp(0, 6),
        "hswish": F.hardswish,
        "silu": lambda t: t * torch.sigmoid(t),
    }[name](v)


def _relax_act(bb: relax.BlockBuilder, name: str, v: relax.Expr) -> relax.Expr:
    """As torch.export → TVM's frontend writes them (silu: x · sigmoid(x))."""
    f32 = lambda s: relax.const(np.float32(s))  # noqa: E731
    if name == "relu":
        return bb.emit(relax.op.nn.relu(v))
    if name == "relu6":
        return bb.emit(relax.op.clip(v, 0.0, 6.0))
    if name == "hswish":
        gate = bb.emit(relax.op.clip(relax.op.add(v, f32(3)), 0.0, 6.0))
        return bb.emit(relax.op.divide(relax.op.multiply(v, gate), f32(6)))
    if name == "silu":
        return bb.emit(relax.op.multiply(v, relax.op.sigmoid(v)))
    return v


@dataclass
class Data:
    xq: np.ndarray
    wq: np.ndarray
    sw: np.ndarray
    b: np.ndarray
    zx: int
    rq: np.ndarray | None
    zr: int
    sx: float = SX


def _data(u: Unit, seed: int = 0, x_fill=None, w_fill=None) -> Data:
    rng = np.random.default_rng(seed)
    lo, hi = QRANGE[u.dtype]
    if u.narrow:
        hi = 127
    shape = (1, u.c, u.hw, u.hw)
    xq = np.full(shape, x_fill) if x_fill is not None else rng.integers(lo, hi + 1, shape)
    wshape = (u.o, u.c // u.groups, u.k, u.k)
    w_lo = -(2 ** (u.weight_bits - 1))
    wq = np.full(wshape, w_fill) if w_fill is not None else rng.integers(w_lo, -w_lo, wshape)
    sw = (rng.random(u.o) * 0.02 + 0.001).astype(np.float32)
    b = rng.normal(size=u.o).astype(np.float32)
    oh = (u.hw + 2 * (u.k // 2) - u.k) // u.stride + 1
    rq = rng.integers(*QRANGE[u.dtype], (1, u.o, oh, oh)).astype(u.dtype) if u.residual else None
    zx = 0 if u.dtype == "int8" else (60 if u.narrow else 120)
    zr = 0 if u.dtype == "int8" else 100
    return Data(xq.astype(u.dtype), wq.astype(np.int8), sw, b, zx, rq, zr)


def _float_output(u: Unit, d: Data) -> torch.Tensor:
    """Everything of the unit before its final quantize, in torch's fake-quant ops."""
    lo, hi = QRANGE[u.dtype]
    x = QD.dequantize_per_tensor(torch.from_numpy(d.xq), d.sx, d.zx, lo, hi, TORCH_DTYPE[u.dtype])
    w = QD.dequantize_per_channel(
        torch.from_numpy(d.wq), torch.from_numpy(d.sw), torch.zeros(u.o, dtype=torch.int64),
        0, -128, 127, torch.int8,
    )  # fmt: skip
    y = F.conv2d(x, w, torch.from_numpy(d.b), u.stride, u.k // 2, 1, u.groups)
    y = _torch_act(u.act, y)
    if u.residual:
        r = QD.dequantize_per_tensor(torch.from_numpy(d.rq), SR, d.zr, lo, hi, TORCH_DTYPE[u.dtype])
        y = _torch_act(u.act2, y + r)
    return y


def _out_qparams(u: Unit, y: torch.Tensor, saturate: bool = False) -> tuple[float, int]:
    """An observer's choice (the range, 0 included), or a tiny scale that saturates both ends."""
    qlo, qhi = QRANGE[u.dtype]
    if saturate:
        return float(y.abs().max()) / 1000 or 1e-3, (qlo + qhi + 1) // 2
    lo, hi = min(float(y.min()), 0.0), max(float(y.max()), 0.0)
    scale = (hi - lo) / (qhi - qlo) or 1.0
    return scale, int(np.clip(qlo - round(lo / scale), qlo, qhi))


def _reference(u: Unit, y: torch.Tensor, sy: float, zy: int) -> np.ndarray:
    lo, hi = QRANGE[u.dtype]
    return QD.quantize_per_tensor(y, sy, zy, lo, hi, TORCH_DTYPE[u.dtype]).numpy()


def _const(a) -> relax.Expr:
    return relax.const(np.asarray(a))


def emit_unit(bb, u: Unit, d: Data, xv, rv, sy: float, zy: int) -> relax.Var:
    """The unit's bindings on input ``xv`` (and residual ``rv``); its quantized output."""
    c = _const
    xin = bb.emit(relax.op.minimum(xv, c(np.uint8(127)))) if u.narrow else xv
    x = bb.emit(relax.op.dequantize(xin, c(np.float32(d.sx)), c(np.int32(d.zx)), axis=-1))
    w = bb.emit(relax.op.dequantize(c(d.wq), c(d.sw), c(np.zeros(u.o, np.int32)), axis=0))
    v = bb.emit(relax.op.nn.conv2d(x, w, strides=u.stride, padding=u.k // 2, groups=u.groups))
    v = bb.emit(relax.op.add(v, c(d.b.reshape(1, u.o, 1, 1))))
    v = _relax_act(bb, u.act, v)
    if u.residual:
        r = bb.emit(relax.op.dequantize(rv, c(np.float32(SR)), c(np.int32(d.zr)), axis=-1))
        v = _relax_act(bb, u.act2, bb.emit(relax.op.add(v, r)))
    return bb.emit(
        relax.op.quantize(v, c(np.float32(sy)), c(np.int32(zy)), axis=-1, out_dtype=u.dtype)
    )


def _relax_unit(u: Unit, d: Data, sy: float, zy: int) -> tvm.IRModule:
    bb = relax.BlockBuilder()
    xv = relax.Var("xq", relax.TensorType(d.xq.shape, u.dtype))
    rv = relax.Var("rq", relax.TensorType(d.rq.shape, u.dtype)) if u.residual else None
    with bb.function("main", [xv] + ([rv] if u.residual else [])):
        with bb.dataflow():
            q = bb.emit_output(emit_unit(bb, u, d, xv, rv, sy, zy))
        bb.emit_func_output(q)
    return bb.get()


def run_unit(u: Unit, d: Data, target, saturate: bool = False):
    """(compiled output, reference output, build stats) of one unit."""
    y = _float_output(u, d)
    sy, zy = _out_qparams(u, y, saturate)
    ref = _reference(u, y, sy, zy)
    inputs = [d.xq] + ([d.rq] if u.residual else [])
    got, stats = build_and_run(_relax_unit(u, d, sy, zy), inputs, ref, target)
    return got, ref, stats


def build_and_run(mod: tvm.IRModule, inputs: list[np.ndarray], ref: np.ndarray, target):
    """``mod`` (inputs ``xq`` [, ``rq``], one output shaped as ``ref``) built through the whole
    compiler and run on ``inputs``: (output, build stats)."""
    graph = ImportedGraph(
        mod,
        [TensorInfo(n, a.shape, str(a.dtype)) for n, a in zip(("xq", "rq"), inputs)],
        [TensorInfo("out", ref.shape, str(ref.dtype))],
    )
    result = build(graph, target)
    vm = relax.VirtualMachine(result.executable, tvm.cpu())
    args = [tvm.runtime.tensor(a) for a in inputs] + [
        tvm.runtime.tensor(w) for w in result.weights.values()
    ]
    return vm["main"](*args).numpy(), result.stats


def assert_lowered(u: Unit, stats) -> None:
    assert stats.precision == "int8"
    ops = stats.sepconv_ops["int8"]
    expected = {k: int(k == u.kind) for k in ("depthwise", "pointwise", "dense")}
    assert {k: ops[k] for k in expected} == expected, ops
    assert ops["left_to_tvm"] == 0, ops
    name = {"depthwise": "sepconv_qdw", "pointwise": "sepconv_qpw", "dense": "sepconv_qconv"}
    assert any(name[u.kind] in f for f in stats.primfuncs), stats.primfuncs
    if u.kind == "pointwise" and u.c * (255 + 128) * 128 < 2**24:
        # on the dot instruction, or summed in fp32 (exact at these widths): never int32 lanes
        assert ops["packed"] + ops["float_exact"] == 1, ops


def assert_close(got: np.ndarray, ref: np.ndarray) -> None:
    assert got.dtype == ref.dtype and got.shape == ref.shape
    steps = np.abs(got.astype(np.int32) - ref.astype(np.int32))
    assert steps.max() <= 1, f"max {steps.max()} steps; {np.mean(steps == 0):.4%} exact"
    assert np.mean(steps == 0) >= 0.999, f"{np.mean(steps == 0):.4%} exact"


@pytest.mark.parametrize("unit", CASES, ids=[u.id for u in CASES])
def test_unit_matches_fake_quant(unit: Unit, host):
    got, ref, stats = run_unit(unit, _data(unit), host)
    assert_lowered(unit, stats)
    assert_close(got, ref)


def test_pointwise_takes_the_dot_panels_where_no_pair_sum_leaves_s16(host):
    """AVX2 and AVX-512BW pairs add two u8·s8 products in s16: a unit is packed for them when
    its 7-bit weights (2·255·64) or an input clamped to 0…127 (2·127·128) keep every pair in
    range, not with full-range input and 8-bit weights; VNNI packs all three."""
    from sepconv.schedules.int8_intrinsics import dot_intrinsic
    from sepconv.schedules.target_params import target_features

    dot = dot_intrinsic(target_features(host))
    if dot is None:
        pytest.skip("the host has no u8·s8 dot instruction")
    narrow = Unit("pointwise", 32, 32, 7, act="relu6", narrow=True)
    seven_bit = Unit("pointwise", 32, 32, 7, act="relu6", weight_bits=7)
    full = Unit("pointwise", 32, 32, 7, act="relu6")
    for u in (narrow, seven_bit, full):
        got, ref, stats = run_unit(u, _data(u), host)
        assert_close(got, ref)
        packed = stats.sepconv_ops["int8"].get("packed")
        in_range = u.narrow or u.weight_bits == 7
        assert packed == int(in_range or dot.full_range), (u.id, stats.sepconv_ops)


# ShuffleNetV2's branch widths: output channels padded to whole panels, input channels left
# over from the blocks of 4 (58), and a residual read through the padded panels
PADDED_UNITS = [
    Unit("pointwise", 58, 58, 8, act="relu", narrow=True),
    Unit("pointwise", 116, 116, 4, act="relu", narrow=True),
    Unit("pointwise", 30, 20, 6, act="none", residual=True, narrow=True),
]


@pytest.mark.parametrize("unit", PADDED_UNITS, ids=[u.id for u in PADDED_UNITS])
def test_channels_the_panels_do_not_divide_stay_on_the_dot(unit: Unit, host):
    from sepconv.schedules.int8_intrinsics import dot_intrinsic
    from sepconv.schedules.target_params import target_features

    if dot_intrinsic(target_features(host)) is None:
        pytest.skip("the host has no u8·s8 dot instruction")
    got, ref, stats = run_unit(unit, _data(unit), host)
    assert stats.sepconv_ops["int8"].get("packed") == 1, stats.sepconv_ops
    assert_close(got, ref)


# Dense convs on the dot, their window rows as the reduction (ops.conv_packed): rows of KW·C
# bytes that 4 does not divide (9 → 12, 15 → 16), an output width whose last window reaches
# past the padding, ShuffleNetV2's 24-channel stem (padded panels, cropped), stride 1 and a
# residual. Narrow inputs, so that AVX2's pairs take them too.
DOT_CONV_UNITS = [
    Unit("dense", 3, 24, 16, 3, 2, "relu", narrow=True),
    Unit("dense", 3, 16, 15, 3, 2, "hswish", narrow=True),
    Unit("dense", 3, 16, 9, 5, 2, "silu", narrow=True),
    Unit("dense", 8, 16, 8, 3, 1, "relu6", narrow=True),
    Unit("dense", 16, 32, 6, 3, 1, "none", residual=True, narrow=True),
]


@pytest.mark.parametrize("unit", DOT_CONV_UNITS, ids=[u.id for u in DOT_CONV_UNITS])
def test_dense_convs_run_on_the_dot_over_their_window_rows(unit: Unit, host):
    from sepconv.schedules.int8_intrinsics import dot_intrinsic
    from sepconv.schedules.target_params import target_features

    if dot_intrinsic(target_features(host)) is None:
        pytest.skip("the host has no u8·s8 dot instruction")
    got, ref, stats = run_unit(unit, _data(unit), host)
    assert_lowered(unit, stats)
    assert stats.sepconv_ops["int8"].get("packed") == 1, stats.sepconv_ops
    assert_close(got, ref)


def test_conv_packing_pads_each_window_row_to_whole_blocks():
    """pack_conv's panels hold every weight once, each kernel row's KW·C weights followed by
    zeros up to the block of 4."""
    from sepconv.compiler.int8.ops import pack_conv, window_row

    rng = np.random.default_rng(0)
    w = rng.integers(-128, 128, (3, 3, 3, 24)).astype(np.int8)  # HWIO, the 3×3 stem
    panels = pack_conv(w, 16)
    assert window_row(3, 3) == 12 and panels.shape == (2, 9, 16, 4)
    flat = panels.transpose(1, 3, 0, 2).reshape(3, 12, 32)  # [kh, byte of the row, o]
    np.testing.assert_array_equal(flat[:, :9, :24], w.reshape(3, 9, 24))
    assert not flat[:, 9:].any() and not flat[:, :, 24:].any()


@pytest.mark.parametrize(
    "hw, stride, channels, width",
    [(15, 2, 3, 18), (224, 2, 3, 226), (16, 1, 3, 19), (15, 1, 8, 17)],
)
def test_padded_rows_reach_as_far_as_the_last_window_reads(hw, stride, channels, width):
    """The last window of a 3×3, pad-1 conv reads window_row bytes from its first pixel: past
    the conv's own padding when 4 does not divide 3·C and the window starts late enough
    (15 wide, stride 2: pixel 14 + 4 pixels of 3 channels > 17), not when it ends on it (224),
    or when 3·C is whole blocks (8 channels: 24 bytes)."""
    from sepconv.compiler.int8.ops import conv_packed, window_row

    x = te.placeholder((1, hw, hw * channels), "uint8", "xq")
    w = te.placeholder((1, 3 * window_row(3, channels) // 4, 16, 4), "int8", "wq")
    acc = conv_packed(x, w, (1, hw, hw, channels), (3, 3), (stride, stride), (1, 1, 1, 1), 0, 16)
    rows = acc.op.input_tensors[0]
    assert [int(d) for d in rows.shape] == [1, hw + 2, width * channels]


@pytest.mark.parametrize(
    "scale, zero_point, lo, hi",
    [
        (6 / 255, 0, 0.0, 6.0),
        (0.05, 17, 0.0, float("inf")),
        (0.013, 128, -1.0, 1.0),
        (0.1, 3, 0.0, 6.0),
    ],
)
def test_an_activations_clamp_folds_into_the_output_bounds(scale, zero_point, lo, hi):
    """quantize(clamp(t)) and the output clamp narrowed to quantize(lo), quantize(hi) give the
    same bytes: on random values and on values at or next to every rounding tie in range
    (t = (k + ½)·s, in float32)."""
    from sepconv.compiler.int8.ops import QParams, fold_clamp

    out = QParams(scale, zero_point, "uint8")
    folded = fold_clamp(out, lo, hi)
    assert folded is not None
    inv = np.float32(1.0 / scale)
    ties = (np.arange(-400, 400) + 0.5) * scale
    t = np.concatenate([np.random.default_rng(0).normal(0, 5, 100_000), ties, [lo, hi, 0.0]])
    t = t[np.isfinite(t)].astype(np.float32)

    def quantize(v, bounds):
        return np.clip(np.round(v * inv) + zero_point, *bounds)

    expect = quantize(np.clip(t, np.float32(lo), np.float32(hi)), out.bounds)
    np.testing.assert_array_equal(quantize(t, folded.bounds), expect)


def test_a_clamp_outside_the_output_range_is_not_folded():
    from sepconv.compiler.int8.ops import QParams, fold_clamp

    assert fold_clamp(QParams(0.01, 0, "uint8"), 10.0, 20.0) is None  # all of it above 255


def test_float_exact_bound():
    from sepconv.compiler.int8.ops import float_exact

    assert float_exact(514, 255, 0, 128)  # 514·255·128 = 16 776 960 < 2**24
    assert not float_exact(515, 255, 0, 128)
    assert float_exact(1024, 127, 0, 128)  # reduce_range inputs: twice the channels
    assert not float_exact(1024, 127, 120, 128)  # |x − zx| can reach 247
    assert not float_exact(600, 255, 0, 128)


def test_a_pointwise_too_wide_for_fp32_sums_stays_in_int32(host):
    """600 full-range channels of 255 · −128 sum to −19.6M: past 2**24, so no fp32 path."""
    u = Unit("pointwise", 600, 8, 4, act="none")
    d = _data(u, x_fill=255, w_fill=-128)
    got, ref, stats = run_unit(u, d, host)
    ops = stats.sepconv_ops["int8"]
    assert ops["float_exact"] == 0 and ops["pointwise"] == 1, ops
    assert_close(got, ref)


# -- edge values: the ends of the 8-bit ranges, exact and saturating -------------------------

EDGE_UNITS = [
    Unit("depthwise", 16, 16, 8, 3, 1, "none"),
    Unit("pointwise", 32, 16, 6, act="none"),
    Unit("pointwise", 32, 32, 6, act="none", narrow=True),  # the packed path, where there is one
    Unit("dense", 3, 16, 12, 3, 2, "none"),
    Unit("dense", 3, 16, 12, 3, 2, "none", narrow=True),  # on the dot on AVX2 hosts too
]
FILLS = [(0, 127), (0, -128), (255, -128), (255, 127)]
SATURATING = [(255, 127), (255, -128)]  # the largest positive and negative accumulators


@pytest.mark.parametrize("unit", EDGE_UNITS, ids=[u.id for u in EDGE_UNITS])
def test_edge_values_exact_and_saturating(unit: Unit, host):
    """Inputs all 0 / all 255 (127 for a narrow input) against weights all −128 / all 127:
    the largest accumulators a unit can make. With the observer's scale the output must still
    match; with a scale far too small the outputs saturate at the dtype's ends, as torch's
    clamp does, never wrapping around."""
    hi = 127 if unit.narrow else 255
    ends = list(QRANGE[unit.dtype])
    for x_fill, w_fill in FILLS:
        d = _data(unit, x_fill=min(x_fill, hi), w_fill=w_fill)
        got, ref, stats = run_unit(unit, d, host)
        assert_lowered(unit, stats)
        assert_close(got, ref)
        if (x_fill, w_fill) not in SATURATING:
            continue
        got, ref, _ = run_unit(unit, d, host, saturate=True)
        saturated = np.isin(ref, ends)
        assert saturated.mean() > 0.5, "the case does not saturate"
        assert_close(got, ref)
        np.testing.assert_array_equal(
            got[saturated], ref[saturated], err_msg=f"x={x_fill} w={w_fill}: not saturated"
        )
