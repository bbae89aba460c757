"""Our separable operators against eager PyTorch, on every depthwise layer shape of the zoo.

Each case compiles a block through the whole compiler (import → recognition pass → our
operators → their schedule rules → codegen) and compares with eager PyTorch on the same input.
"""

from __future__ import annotations

import pytest
import torch
import tvm

from sepconv.compiler.build import build, lower
from sepconv.compiler.importer import import_module
from sepconv.compiler.validation import compare
from sepconv.targets import resolve_target
from tests.compiler.separable_cases import DepthwiseLayer, separable_block, zoo_depthwise_layers

LAYERS = zoo_depthwise_layers()


@pytest.fixture(scope="module")
def host():
    return resolve_target("host").target


def compiled_output(module, x: torch.Tensor, target, sepconv_ops: bool = True):
    """(output, build stats) of ``module`` compiled for ``target`` and run on ``x``."""
    result = build(import_module(module, (x,)), target, sepconv_ops=sepconv_ops)
    vm = tvm.relax.VirtualMachine(result.executable, tvm.cpu())
    args = [tvm.runtime.tensor(x.numpy())] + [
        tvm.runtime.tensor(w) for w in result.weights.values()
    ]
    out = vm["main"](*args)
    out = out[0] if not hasattr(out, "numpy") else out
    return out.numpy(), result.stats


def assert_matches_eager(module, x, target, sepconv_ops=True):
    with torch.no_grad():
        ref = module(x).numpy()
    got, stats = compiled_output(module, x, target, sepconv_ops)
    cmp = compare("output", got, ref)
    assert cmp.passed, f"max abs error {cmp.max_abs_error:.3g} > tolerance {cmp.tolerance:.3g}"
    return stats


def test_zoo_has_the_layer_kinds_the_issue_names():
    kinds = {(layer.kernel, layer.stride) for layer in LAYERS}
    assert {(3, 1), (3, 2), (5, 1), (5, 2)} <= kinds
    assert any(layer.pointwise_out for layer in LAYERS)
    assert any(layer.pointwise_out is None for layer in LAYERS)  # SE blocks: no fusion


@pytest.mark.parametrize("layer", LAYERS, ids=[layer.id for layer in LAYERS])
def test_zoo_layer_matches_eager(layer: DepthwiseLayer, host):
    """Blocks followed by a pointwise conv go through the fused operator, the rest through the
    depthwise one (with h-swish, as MobileNetV3's SE blocks have)."""
    block = separable_block(layer, act="relu6" if layer.pointwise_out else "hswish")
    x = torch.randn(
        1, layer.channels, layer.height, layer.width, generator=torch.Generator().manual_seed(0)
    )
    stats = assert_matches_eager(block, x, host)
    ops = stats.sepconv_ops
    if layer.pointwise_out:
        assert ops["fused_dw_pw"] == 1, ops
    else:
        assert ops["depthwise"] == 1 and ops["fused_dw_pw"] == 0, ops


EXTRA = [
    # channels, multiplier, kernel, stride, padding, dilation, h, w, pointwise_out
    DepthwiseLayer(8, 2, 3, 1, 1, 1, 15, 17, 12),  # channel multiplier 2, odd sizes, fused
    DepthwiseLayer(8, 2, 5, 2, 2, 1, 15, 17, None),  # multiplier 2, k5 s2, odd
    DepthwiseLayer(24, 1, 7, 1, 3, 1, 13, 13, 16),  # k7
    DepthwiseLayer(24, 1, 3, 2, 1, 1, 9, 11, 40),  # s2, odd, output 5×6
    DepthwiseLayer(24, 1, 3, 1, 2, 2, 12, 12, None),  # dilation 2
    DepthwiseLayer(20, 1, 5, 2, 2, 1, 7, 7, 36),  # channels not a multiple of a vector
    DepthwiseLayer(3, 1, 3, 1, 1, 1, 10, 10, 5),  # fewer channels than lanes
]


@pytest.mark.parametrize("layer", EXTRA, ids=[layer.id for layer in EXTRA])
@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("act", ["relu", "hswish", "silu"])
def test_shapes_beyond_the_zoo(layer, batch, act, host):
    block = separable_block(layer, act=act, seed=1)
    gen = torch.Generator().manual_seed(batch)
    x = torch.randn(batch, layer.channels, layer.height, layer.width, generator=gen)
    ops = assert_matches_eager(block, x, host).sepconv_ops
    fusable = layer.pointwise_out is not None and layer.multiplier == 1
    assert ops["fused_dw_pw"] == int(fusable), ops


def test_without_sepconv_ops_the_graph_keeps_tvm_convs(host):
    layer = LAYERS[0]
    block = separable_block(layer)
    x = torch.randn(1, layer.channels, 28, 28)
    stats = assert_matches_eager(block, x, host, sepconv_ops=False)
    assert stats.sepconv_ops is None
    mod, _, _ = lower(import_module(block, (x,)), host, sepconv_ops=False)
    assert "sepconv" not in mod.script()


class NoDepthwise(torch.nn.Module):
    """A plain CNN: dense and grouped (not depthwise) convs, channel shuffle."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Conv2d(4, 8, 3, padding=1)
        self.b = torch.nn.Conv2d(8, 8, 3, padding=1, groups=2)

    def forward(self, x):
        y = self.b(torch.relu(self.a(x)))
        n, c, h, w = y.shape
        return y.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)


def test_pass_leaves_graphs_without_depthwise_convs_unchanged():
    """Nothing to recognise: the rewrite must not touch the graph (no layout change either)."""
    from sepconv.compiler.passes import fold_batch_norm
    from sepconv.compiler.separable import apply_separable_ops

    mod = fold_batch_norm(import_module(NoDepthwise().eval(), (torch.randn(1, 4, 8, 8),)).mod)
    rewritten, stats = apply_separable_ops(mod, resolve_target("host").target)
    assert stats.to_json() == {k: 0 for k in stats.to_json()}
    tvm.ir.assert_structural_equal(rewritten, mod)


def test_grouped_convs_and_shuffle_still_compile_correctly(host):
    model = NoDepthwise().eval()
    assert_matches_eager(model, torch.randn(2, 4, 9, 9), host)


class GatedProjection(torch.nn.Module):
    """Depthwise → squeeze-and-excitation → projection: the MBConv tail of EfficientNet and
    MobileNetV3. ``gate_first``: ``scale * x``, as torchvision's SE writes it (ours: the map
    first)."""

    def __init__(self, c: int = 32, out: int = 16, hardsigmoid: bool = False, gate_first=False):
        super().__init__()
        from sepconv.models.layers import SqueezeExcitation

        self.dw = torch.nn.Conv2d(c, c, 3, padding=1, groups=c)
        gate = torch.nn.Hardsigmoid if hardsigmoid else torch.nn.Sigmoid
        self.se = SqueezeExcitation(c, 8, gate=gate)
        self.project = torch.nn.Conv2d(c, out, 1)
        self.gate_first = gate_first

    def forward(self, x):
        y = torch.nn.functional.silu(self.dw(x))
        se = self.se
        scale = se.scale_activation(se.fc2(se.activation(se.fc1(se.avgpool(y)))))
        return self.project(scale * y if self.gate_first else y * scale)


@pytest.mark.parametrize(
    "hw, batch, folded",
    [
        (12, 1, True),  # 16 output channels < 144 pixels: the gate scales the weights
        (4, 1, False),  # 16 ≥ 16 pixels: the weights outweigh the map, the map is gated
        (12, 2, False),  # one gate per image: not folded
    ],
)
@pytest.mark.parametrize("hardsigmoid, gate_first", [(False, True), (True, False)])
def test_se_gate_folds_into_the_projection_weights_where_they_are_smaller(
    hw, batch, folded, hardsigmoid, gate_first, host
):
    torch.manual_seed(0)
    block = GatedProjection(hardsigmoid=hardsigmoid, gate_first=gate_first).eval()
    x = torch.randn(batch, 32, hw, hw)
    stats = assert_matches_eager(block, x, host)
    assert stats.sepconv_ops["gates_in_weights"] == int(folded)
    mod, _, _ = lower(import_module(block, (x,)), host)
    # Folded, no function after the depthwise one (whose SiLU multiplies) multiplies a map.
    map_buffer = "T.Buffer((" + ", ".join(f"T.int64({d})" for d in (batch, hw, hw, 32)) + ")"
    map_products = [
        gv.name_hint
        for gv, f in mod.functions.items()
        if "multiply" in gv.name_hint
        and "sepconv_dw" not in gv.name_hint
        and map_buffer in f.script()
    ]
    assert bool(map_products) != folded


@pytest.mark.parametrize("batch, padding", [(1, 1), (2, 0)])
def test_the_stem_reads_the_input_in_the_layout_the_caller_passes(batch, padding, host):
    """The stem conv reads the NCHW input itself: no function copies the input into NHWC."""
    from tests.nets import tiny_separable

    model = tiny_separable()
    model.stem[0].padding = (padding, padding)
    x = torch.randn(batch, 3, 17, 17)
    stats = assert_matches_eager(model, x, host)
    assert stats.sepconv_ops["dense"] == 1
    mod, _, _ = lower(import_module(model, (x,)), host)
    image = "T.Buffer((" + ", ".join(f"T.int64({d})" for d in (batch, 3, 17, 17)) + ")"
    readers = [gv.name_hint for gv, f in mod.functions.items() if image in f.script()]
    assert len(readers) == 1 and "sepconv_conv" in readers[0], readers
