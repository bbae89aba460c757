"""Each rule accepts what it should, declines what it should not, and keeps the numbers."""

from __future__ import annotations

import numpy as np
import pytest

from sepconv.schedules import (
    Conv2D,
    Dense,
    DepthwiseConv2D,
    Fallback,
    Injective,
    Reduction,
    cpu_rules,
    schedule_function,
)
from tests.schedules import ops
from tests.schedules.conftest import run_primfunc

# name -> (PrimFunc builder, rule expected to take it)
CASES = {
    "dw3x3": (lambda: ops.conv(1, 8, 16, 16, 8, 3, groups=8), "DepthwiseConv2D"),
    "dw3x3_s2": (lambda: ops.conv(1, 8, 16, 16, 8, 3, stride=2, groups=8), "DepthwiseConv2D"),
    "dw3x3_s2_odd": (lambda: ops.conv(1, 8, 15, 15, 8, 3, stride=2, groups=8), "DepthwiseConv2D"),
    "dw5x5_hswish": (lambda: ops.conv(1, 8, 14, 14, 8, 5, groups=8, act="hswish"),
                     "DepthwiseConv2D"),
    "dw_multiplier2": (lambda: ops.conv(1, 8, 16, 16, 16, 3, groups=8, bias=False, act=None),
                       "DepthwiseConv2D"),
    "pointwise": (lambda: ops.conv(1, 16, 8, 8, 32, 1), "Conv2D"),
    "pointwise_7x7": (lambda: ops.conv(1, 32, 7, 7, 48, 1), "Conv2D"),
    "pointwise_odd": (lambda: ops.conv(1, 12, 5, 5, 10, 1), "Conv2D"),
    "pointwise_no_epilogue": (lambda: ops.conv(1, 16, 8, 8, 32, 1, bias=False, act=None),
                              "Conv2D"),
    "pointwise_batch2": (lambda: ops.conv(2, 16, 8, 8, 32, 1), "Conv2D"),
    "stem_3x3_s2": (lambda: ops.conv(1, 3, 32, 32, 16, 3, stride=2), "Conv2D"),
    "grouped_3x3": (lambda: ops.conv(1, 16, 8, 8, 16, 3, groups=4), "Conv2D"),
    "grouped_3x3_wide": (lambda: ops.conv(1, 32, 8, 8, 64, 3, groups=2), "Conv2D"),
    "dense": (lambda: ops.dense(1, 64, 10), "Dense"),
    "dense_batch3": (lambda: ops.dense(3, 64, 32), "Dense"),
    "dense_nk_weight": (lambda: ops.dense(2, 64, 24, transposed_weight=True), "Dense"),
    "elementwise": (lambda: ops.elementwise((1, 8, 6, 6)), "Injective"),
    "elementwise_large": (lambda: ops.elementwise((1, 32, 32, 32)), "Injective"),
    "transpose": (lambda: ops.transpose((1, 2, 4, 5, 5), (0, 2, 1, 3, 4)), "Injective"),
    "global_avg_pool_7x7": (lambda: ops.mean_hw(1, 16, 7, 7), "Reduction"),
    "global_avg_pool_8x8": (lambda: ops.mean_hw(1, 4, 8, 8), "Reduction"),
    "softmax": (lambda: ops.softmax(2, 10), "Reduction"),
    "global_avg_pool_nhwc": (lambda: ops.mean_nhwc(1, 14, 14, 32), "Reduction"),
    "global_avg_pool_nhwc_24": (lambda: ops.mean_nhwc(1, 7, 7, 24), "Reduction"),
    "global_avg_pool_nhwc_12": (lambda: ops.mean_nhwc(1, 5, 5, 12), "Reduction"),
    "max_pool_nhwc": (lambda: ops.max_pool_nhwc(1, 12, 12, 24), "Reduction"),
    "channel_shuffle_58": (lambda: ops.channel_shuffle_nhwc(1, 20, 20, 29), "Injective"),
}  # fmt: skip

_FUNCS: dict = {}


def func_of(name):
    if name not in _FUNCS:
        _FUNCS[name] = CASES[name][0]()
    return _FUNCS[name]


@pytest.mark.parametrize("name", sorted(CASES))
def test_first_accepting_rule(name, target):
    _, rule = schedule_function(func_of(name), target, cpu_rules(target), name)
    assert rule == CASES[name][1]


@pytest.mark.parametrize("name", sorted(CASES))
def test_scheduled_function_computes_the_same(name, target):
    func = func_of(name)
    sch, rule = schedule_function(func, target, cpu_rules(target), name)
    ref = run_primfunc(func, target)
    out = run_primfunc(sch.mod["main"], target)
    tol = 1e-5 * max(1.0, float(np.abs(ref).max()))
    np.testing.assert_allclose(out, ref, rtol=0, atol=tol, err_msg=f"{name} via {rule}")


DECLINES = {
    DepthwiseConv2D: ["pointwise", "stem_3x3_s2", "grouped_3x3", "dense", "elementwise",
                      "global_avg_pool_7x7", "softmax"],
    Conv2D: ["dw3x3", "dw_multiplier2", "dense", "elementwise", "global_avg_pool_7x7",
             "softmax"],
    Dense: ["pointwise", "dw3x3", "elementwise", "global_avg_pool_7x7", "softmax"],
    Reduction: ["pointwise", "dw3x3", "dense", "elementwise", "transpose"],
    Injective: ["pointwise", "dw3x3", "dense", "global_avg_pool_7x7", "softmax"],
}  # fmt: skip


@pytest.mark.parametrize(
    ("rule", "name"), [(r, n) for r, names in DECLINES.items() for n in names],
    ids=lambda v: v if isinstance(v, str) else v.__name__,
)  # fmt: skip
def test_rule_declines_what_it_does_not_fit(rule, name, target):
    assert rule().apply(func_of(name), target, False) is None


@pytest.mark.parametrize("name", ["dw3x3", "pointwise", "dense", "softmax", "transpose"])
def test_rules_decline_non_cpu_targets(name):
    import tvm

    cuda = tvm.target.Target({"kind": "cuda", "arch": "sm_80"})
    for rule in (DepthwiseConv2D(), Conv2D(), Dense(), Reduction(), Injective()):
        assert rule.apply(func_of(name), cuda, False) is None


def test_conv_rule_uses_whole_vectors_and_parallel(target):
    """The pointwise schedule has a parallel outer loop and a vectorised inner loop."""
    sch = Conv2D().apply(func_of("pointwise"), target, False)
    text = sch.mod["main"].script()
    assert "T.parallel" in text and "T.vectorized" in text


def test_channels_last_pool_runs_vectors_along_the_channels(target):
    """NHWC pooling: the vector loop is the contiguous channel axis and the pixels are the
    loop around it — not one channel at a time, which reads one float per cache line. A 7×7
    map's tasks split the channels."""
    sch = Reduction().apply(func_of("global_avg_pool_nhwc_24"), target, False)
    text = sch.mod["main"].script()
    update = text[text.index("for ax1_ax2_fused in range(T.int64(49))") :]
    assert "T.vectorized" in update.split('T.sblock("x0_red_update")')[0]
    assert "T.parallel" in text and "x0_red_rf" not in text


def test_global_pool_tasks_own_rows_of_the_map_as_its_producer_wrote_them(target):
    """From 14 rows up the tasks split the rows (partial sums per row, added at the end), so
    each core reads the rows it has just written in the producer, not half of every row."""
    from sepconv.schedules.target_params import cpu_params

    sch = Reduction().apply(func_of("global_avg_pool_nhwc"), target, False)
    text = sch.mod["main"].script()
    rows = text[text.index("T.parallel(T.int64(14))") :]
    lanes = min(cpu_params(target).lanes("float32"), 16)
    assert f"T.vectorized(T.int64({lanes}))" in rows.split('T.sblock("x0_red_rf_update")')[0]
    assert 'T.sblock("x0_red_update")' in rows  # the rows' partials added after the loop
    y = run_primfunc(func_of("global_avg_pool_nhwc"), target)
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (1, 14, 14, 32)).astype("float32")
    np.testing.assert_allclose(y, x.mean(axis=(1, 2), keepdims=True), rtol=1e-5, atol=1e-6)


def test_pool_window_vectors_belong_to_one_pixel(target):
    """A vector is the channels of one pixel, the pixel taken from the parallel loop (6 × 6
    pixels × 3 groups of 8 channels, never fused into the lanes; AVX-512 too, on 256-bit
    halves): a window's padding test is then one scalar branch, not a lane-wise gather."""
    from sepconv.schedules.target_params import cpu_params

    lanes = min(cpu_params(target).lanes("float32"), 8)
    sch = Reduction().apply(func_of("max_pool_nhwc"), target, False)
    text = sch.mod["main"].script()
    assert "T.parallel(T.int64(108))" in text, text
    assert f"T.vectorized(T.int64({lanes}))" in text, text


def test_ragged_channel_loop_stays_its_own_loop(target):
    """58 channels are no whole vector: the channel loop is kept apart from the (parallel)
    pixels, so the shuffle's index arithmetic simplifies against its range when lowered —
    fused into the pixels it stays a div/mod of the fused index per element."""
    sch = Injective().apply(func_of("channel_shuffle_58"), target, False)
    text = sch.mod["main"].script()
    assert "v_ax3 = T.axis.spatial(T.int64(58), ax3)" in text and "T.parallel" in text, text


def test_depthwise_rule_pads_per_channel_not_per_load(target):
    """Padding is a separate block computed per task: no bounds test inside the window loop."""
    sch = DepthwiseConv2D().apply(func_of("dw3x3"), target, False)
    text = sch.mod["main"].script()
    assert "T.parallel" in text and "T.vectorized" in text
    conv_update = text[text.index('T.sblock("group_conv2d_nchw_update")') :]
    conv_update = (
        conv_update[: conv_update.index("T.sblock(", 10)]
        if "T.sblock(" in conv_update[10:]
        else conv_update
    )
    assert "if_then_else" not in conv_update


@pytest.mark.parametrize("name", sorted(CASES))
def test_fallback_alone_is_correct(name, target):
    func = func_of(name)
    sch = Fallback().apply(func, target, False)
    assert sch is not None
    np.testing.assert_allclose(
        run_primfunc(sch.mod["main"], target), run_primfunc(func, target), rtol=0, atol=1e-5
    )


@pytest.mark.parametrize(
    "name", ["dw3x3", "dw5x5_hswish", "pointwise", "pointwise_7x7", "grouped_3x3_wide", "dense"]
)
def test_tunable_design_space_samples_are_correct(name, target):
    """tunable=True: the trace samples tile sizes (defaulting to the heuristic's choice), and
    replaying it with other decisions — what MetaSchedule's mutator does — stays correct."""
    import tvm

    func = func_of(name)
    ref = run_primfunc(func, target)
    sch, rule = schedule_function(func, target, cpu_rules(target), name, tunable=True)
    assert rule == CASES[name][1]
    trace = sch.trace
    samples = [inst for inst in trace.insts if inst.kind.name == "SampleCategorical"]
    assert samples, [inst.kind.name for inst in trace.insts]
    tried = 0
    for inst in samples:
        n_cands = len(inst.attrs[0])
        for choice in range(n_cands):
            if choice == int(trace.decisions[inst]) or tried >= 4:
                continue
            new_trace = trace.with_decision(inst, choice, remove_postproc=True)
            replay = tvm.s_tir.Schedule(func)
            new_trace.apply_to_schedule(replay, remove_postproc=True)
            assert replay.mod["main"].script() != sch.mod["main"].script()
            out = run_primfunc(replay.mod["main"], target)
            np.testing.assert_allclose(
                out, ref, rtol=0, atol=1e-5 * max(1.0, float(np.abs(ref).max()))
            )
            tried += 1
