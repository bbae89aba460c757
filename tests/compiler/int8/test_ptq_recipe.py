"""What our PT2E recipe adds to torchao's (``ptq._SeparableRecipe``), on the converted graphs:
squeeze-and-excitation's multiply reads the quantized map the pool reads, and a channel concat
takes and gives 8-bit maps on one scale — so no float map is left between integer operators."""

from __future__ import annotations

import pytest
import torch
from torch import nn

pytest.importorskip("torchao", reason="int8 quantizes through torchao's PT2E")

from sepconv.compiler.int8.ptq import quantize_model  # noqa: E402


class SE(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.dw = nn.Sequential(nn.Conv2d(8, 8, 3, 1, 1, groups=8), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1, self.fc2 = nn.Conv2d(8, 4, 1), nn.Conv2d(4, 8, 1)
        self.project = nn.Conv2d(8, 8, 1)

    def forward(self, x):
        y = self.dw(x)
        g = torch.sigmoid(self.fc2(torch.relu(self.fc1(self.pool(y)))))
        return self.project(y * g)


class Concat(nn.Module):
    """ShuffleNetV2's unit: split, a branch of convs, concat, channel shuffle."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 16, 1)
        self.branch = nn.Sequential(nn.Conv2d(8, 8, 1), nn.ReLU())
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        a, b = self.stem(x).chunk(2, dim=1)
        y = torch.cat((a, self.branch(b)), dim=1)
        y = y.view(1, 2, 8, 8, 8).transpose(1, 2).reshape(1, 16, 8, 8)
        return self.head(y)


def _graph(module, shape):
    reference, record = quantize_model(module.eval(), (torch.randn(shape),))
    return reference.graphs.exported.graph, record


def _name(n):
    return str(getattr(n, "target", ""))


def _is(n, op):
    return n.op == "call_function" and op in _name(n).split(".")


def test_the_se_multiply_reads_the_quantized_map(shape=(1, 8, 8, 8)):
    graph, record = _graph(SE(), shape)
    assert record["recipe"] == 2
    (mul,) = [n for n in graph.nodes if _is(n, "mul")]
    x, gate = mul.args
    assert _is(x, "dequantize_per_tensor"), x  # the 8-bit map, not the conv's float output
    assert not _is(gate, "dequantize_per_tensor")  # the [N, C, 1, 1] gate stays float
    # the pool reads the same quantized map (one observer, one scale)
    (pool,) = [n for n in graph.nodes if _is(n, "adaptive_avg_pool2d") or _is(n, "mean")]
    assert pool.args[0].args[0] is x.args[0], (pool.args[0], x)


def test_a_channel_concat_is_8_bit_on_one_scale(shape=(1, 3, 8, 8)):
    graph, _ = _graph(Concat(), shape)
    (cat,) = [n for n in graph.nodes if _is(n, "cat")]
    inputs = cat.args[0]
    assert all(_is(a, "dequantize_per_tensor") for a in inputs), inputs
    (out,) = [u for u in cat.users if _is(u, "quantize_per_tensor")]
    params = {tuple(a.args[1:3]) for a in inputs} | {tuple(out.args[1:3])}
    assert len(params) == 1, params  # every input and the output: the same scale and zero point
    # the branch conv's output is quantized for the concat: an integer unit, not a float conv
    relu = [n for n in graph.nodes if _is(n, "relu")][0]
    assert any(_is(u, "quantize_per_tensor") for u in relu.users)


@pytest.mark.parametrize("full_range, weight_max", [(True, 127), (False, 63)])
def test_weights_are_7_bit_where_the_dot_sums_pairs_in_16_bits(full_range, weight_max):
    """x86 without VNNI: ``vpmaddubsw`` adds two u8·s8 products in s16, so the weights are
    quantized to −64…63 (2·255·64 = 32640 fits) and the activations keep their 8 bits; with
    VNNI both keep the full range. The scheme is recorded, and rebuilt from the record."""
    from sepconv.compiler.int8.ptq import QuantScheme, scheme_for

    scheme = scheme_for("x86_64", full_range=full_range)
    assert (scheme.weight_max, scheme.reduce_range) == (weight_max, False)
    assert QuantScheme.from_json(scheme.to_json()) == scheme
    reference, record = quantize_model(
        SE().eval(), (torch.randn(1, 8, 8, 8),), full_range=full_range
    )
    assert record["weight_range"] == [-weight_max - 1, weight_max]
    assert record["activation_range"] is None
    exported = reference.graphs.exported
    weights = [t for t in exported.constants.values() if t.dtype == torch.int8]
    weights += [p for p in exported.state_dict.values() if p.dtype == torch.int8]
    assert weights and max(int(w.max()) for w in weights) <= weight_max
    assert min(int(w.min()) for w in weights) >= -weight_max - 1
    assert any(int(w.max()) == weight_max or int(w.min()) == -weight_max - 1 for w in weights)


def test_an_older_records_scheme_still_rebuilds():
    """Recipe-2 AVX2 artifacts recorded 0…127 activations and no weight range."""
    from sepconv.compiler.int8.ptq import QuantScheme

    old = {"activation_dtype": "uint8", "observer": "histogram", "activation_range": [0, 127]}
    assert QuantScheme.from_json(old) == QuantScheme("uint8", "histogram", reduce_range=True)
