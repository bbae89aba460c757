"""Channel-only data movement stays channels-last (:mod:`sepconv.compiler.channels_last`)."""

from __future__ import annotations

import pytest
import torch
import tvm
from tvm import relax

from sepconv.compiler.channels_last import propagate_channels_last
from sepconv.compiler.importer import import_module
from sepconv.compiler.passes import fold_batch_norm
from sepconv.compiler.separable import to_channels_last
from sepconv.models.shufflenet_v2 import ShuffleUnit
from sepconv.targets import resolve_target
from tests.compiler.test_separable import assert_matches_eager


@pytest.fixture(scope="module")
def host():
    return resolve_target("host").target


def _permutes(mod) -> list[list[int]]:
    found = []

    def visit(expr):
        if isinstance(expr, relax.Call) and getattr(expr.op, "name", "") == "relax.permute_dims":
            found.append([int(a) for a in expr.attrs.axes])

    relax.analysis.post_order_visit(mod["main"].body, visit)
    return found


class TwoUnits(torch.nn.Module):
    """ShuffleNetV2's downsampling unit, then a stride-1 unit (split → branch → concat →
    channel shuffle), on channels that are not whole vectors (2 × 29)."""

    def __init__(self):
        super().__init__()
        self.down = ShuffleUnit(24, 58, 2)
        self.unit = ShuffleUnit(58, 58, 1)

    def forward(self, x):
        return self.unit(self.down(x))


def _channels_last(model, x):
    mod = fold_batch_norm(import_module(model.eval(), (x,)).mod)
    return to_channels_last(relax.transform.FoldConstant()(mod))


def test_shuffle_units_keep_only_the_graphs_two_layout_transposes(host):
    model, x = TwoUnits(), torch.randn(1, 24, 16, 16)
    permutes = _permutes(_channels_last(model, x))
    # NCHW only where the graph's output leaves (ConvertLayout gives the input one transpose
    # per branch that reads it)
    assert permutes.count([0, 3, 1, 2]) == 1 and permutes[-1] == [0, 3, 1, 2], permutes
    assert {tuple(p) for p in permutes if len(p) == 4} == {(0, 2, 3, 1), (0, 3, 1, 2)}
    # the two shuffles: a permute of the channel factors of [N, H, W, 2, 29]
    assert permutes.count([0, 1, 2, 4, 3]) == 2, permutes
    stats = assert_matches_eager(model, x, host).sepconv_ops
    assert stats["fused_dw_pw"] == 3 and stats["pointwise"] == 2, stats


class ReshapesSpace(torch.nn.Module):
    """A reshape that moves channels into a spatial axis is not channel-only: not followed."""

    def __init__(self):
        super().__init__()
        self.dw = torch.nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.pw = torch.nn.Conv2d(8, 8, 1)

    def forward(self, x):
        y = self.pw(self.dw(x))
        n, c, h, w = y.shape
        z = y.reshape(n, c // 2, 2 * h, w)  # channel pairs stacked along H
        return torch.relu(z).reshape(n, c, h, w) + y


def test_a_reshape_that_moves_spatial_axes_is_left_in_nchw(host):
    model, x = ReshapesSpace(), torch.randn(1, 8, 6, 6)
    mod = _channels_last(model, x)
    assert [0, 3, 1, 2] in _permutes(mod)  # the conv's output still goes back to NCHW
    assert_matches_eager(model, x, host)


def test_a_followed_value_with_an_nchw_consumer_keeps_its_nchw_binding():
    """x_nhwc → NCHW view → split: one half goes back to NHWC (followed: no transpose), the
    other half is returned in NCHW (its binding stays)."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 4, 4, 6), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            nchw = bb.emit(relax.op.permute_dims(x, [0, 3, 1, 2]))
            halves = bb.emit(relax.op.split(nchw, 2, axis=1))
            a = bb.emit(relax.TupleGetItem(halves, 0))
            b = bb.emit(relax.TupleGetItem(halves, 1))
            back = bb.emit(relax.op.permute_dims(a, [0, 2, 3, 1]))
            out = bb.emit_output(relax.Tuple([back, b]))
        bb.emit_func_output(out)
    mod = bb.get()
    new = propagate_channels_last(mod)
    assert _permutes(new).count([0, 2, 3, 1]) == 0, new["main"].script()
    data = tvm.runtime.tensor(torch.randn(1, 4, 4, 6).numpy())
    results = []
    for m in (mod, new):
        ex = tvm.compile(m, target="llvm")
        out = relax.VirtualMachine(ex, tvm.cpu())["main"](data)
        results.append([t.numpy() for t in out])
    for got, ref in zip(results[1], results[0], strict=True):
        assert (got == ref).all()


def test_int8_shuffles_run_on_the_8_bit_nhwc_maps(host):
    """PT2E's quantized ShuffleNet: between our integer operators the concat, shuffle and split
    are dequantize → float op → quantize chains; they are followed too, so the graph keeps only
    the input's and the output's layout transposes (it had one pair per unit)."""
    from sepconv.compiler.importer import import_exported
    from sepconv.compiler.int8.lowering import lower_quantized
    from sepconv.compiler.int8.ptq import quantize_model
    from sepconv.models import get_model

    spec = get_model("shufflenet_v2:0.5@32")
    x = spec.example_input()
    reference, _ = quantize_model(spec.module, (x,))
    graph = import_exported(reference.graphs.exported, (x,))
    mod, _ = lower_quantized(graph.mod, host)
    permutes = _permutes(mod)
    assert permutes.count([0, 1, 2, 4, 3]) == 16, permutes  # the 16 units' shuffles, NHWC
    assert permutes.count([0, 3, 1, 2]) <= 2 and [0, 2, 1, 3, 4] not in permutes, permutes
    # the last 1×1 conv, which PT2E's recipe leaves in float, runs as our NHWC pointwise op
    from sepconv.compiler.build import prepare_graph
    from sepconv.compiler.passes import count_ops

    assert count_ops(mod, "relax.nn.conv2d") == 1
    built, _, stats = prepare_graph(graph, host)  # the same graph, through the whole int8 path
    assert count_ops(built, "relax.nn.conv2d") == 0 and stats["fp32"]["pointwise"] == 1, stats
    assert _permutes(built).count([0, 3, 1, 2]) == permutes.count([0, 3, 1, 2]) - 1
