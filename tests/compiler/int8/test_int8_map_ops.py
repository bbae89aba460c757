"""The integer map operators against torch's fake-quant ops: squeeze-and-excitation's gate
multiply ``q(dequantize(xq) · g)`` and global average pool ``q(mean(dequantize(xq)))``, and a
max pool ``q(max_pool2d(dequantize(xq)))`` (ShuffleNetV2's after the stem), each written
in Relax as PT2E's graph imports, built through the whole compiler and compared with what the
converted PT2E graph computes eagerly (``adaptive_avg_pool2d`` for the pool, as the zoo's SE
blocks are exported)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import tvm
from tvm import relax

from sepconv.compiler.artifact import TensorInfo
from sepconv.compiler.build import build
from sepconv.compiler.importer import ImportedGraph

pytest.importorskip("torchao", reason="the fake-quant reference ops come with torchao's PT2E")
import torchao.quantization.pt2e  # noqa: E402, F401 - registers torch.ops.quantized_decomposed

QD = torch.ops.quantized_decomposed
TORCH_DTYPE = {"uint8": torch.uint8, "int8": torch.int8}
QRANGE = {"uint8": (0, 255), "int8": (-128, 127)}
SX = 0.0474
# (channels, map side, dtype): the zoo's SE shapes, small; 7×7 and 14×14 maps have the most
# ties in their means (49 and 196 divide few sums)
SHAPES = [(16, 8, "uint8"), (40, 14, "uint8"), (24, 7, "uint8"), (16, 8, "int8"), (8, 15, "uint8")]


def _c(a):
    return relax.const(np.asarray(a))


def _build_and_run(mod, inputs, out_shape, dtype, target):
    graph = ImportedGraph(
        mod,
        [TensorInfo(f"in{i}", a.shape, str(a.dtype)) for i, a in enumerate(inputs)],
        [TensorInfo("out", out_shape, dtype)],
    )
    result = build(graph, target)
    vm = relax.VirtualMachine(result.executable, tvm.cpu())
    args = [tvm.runtime.tensor(a) for a in inputs]
    args += [tvm.runtime.tensor(w) for w in result.weights.values()]
    return vm["main"](*args).numpy(), result.stats


def _map(c, hw, dtype, seed):
    rng = np.random.default_rng(seed)
    lo, hi = QRANGE[dtype]
    zx = -128 if dtype == "int8" else 0  # post-ReLU maps: zero point at the bottom of the range
    return rng.integers(lo, hi + 1, (1, c, hw, hw)).astype(dtype), zx


def _dequantize(xq, zx, dtype):
    lo, hi = QRANGE[dtype]
    return QD.dequantize_per_tensor(torch.from_numpy(xq), SX, zx, lo, hi, TORCH_DTYPE[dtype])


def _quantize(y, s, z, dtype):
    lo, hi = QRANGE[dtype]
    return QD.quantize_per_tensor(y, s, z, lo, hi, TORCH_DTYPE[dtype]).numpy()


def _relax(xq, zx, dtype, body, sy, zy, extra=()):
    bb = relax.BlockBuilder()
    xv = relax.Var("xq", relax.TensorType(xq.shape, dtype))
    params = [xv, *extra]
    with bb.function("main", params):
        with bb.dataflow():
            x = bb.emit(relax.op.dequantize(xv, _c(np.float32(SX)), _c(np.int32(zx)), axis=-1))
            v = bb.emit(body(x))
            q = bb.emit_output(
                relax.op.quantize(v, _c(np.float32(sy)), _c(np.int32(zy)), axis=-1, out_dtype=dtype)
            )
        bb.emit_func_output(q)
    return bb.get()


def _steps(got, ref, stats, kind, function=None):
    ops = stats.sepconv_ops["int8"]
    assert ops[kind] == 1, ops
    function = function or f"sepconv_q{kind}"
    assert any(function in f for f in stats.primfuncs), stats.primfuncs
    assert got.dtype == ref.dtype and got.shape == ref.shape
    return np.abs(got.astype(np.int32) - ref.astype(np.int32))


@pytest.mark.parametrize("c,hw,dtype", SHAPES)
def test_se_gate_matches_fake_quant(c, hw, dtype, host):
    xq, zx = _map(c, hw, dtype, 0)
    g = torch.sigmoid(torch.randn(1, c, 1, 1, generator=torch.Generator().manual_seed(1)))
    y = _dequantize(xq, zx, dtype) * g
    sy, zy = float(y.abs().max()) / 127, 0 if dtype == "int8" else 3
    ref = _quantize(y, sy, zy, dtype)
    gv = relax.Var("g", relax.TensorType((1, c, 1, 1), "float32"))
    mod = _relax(xq, zx, dtype, lambda x: relax.op.multiply(x, gv), sy, zy, extra=(gv,))
    got, stats = _build_and_run(mod, [xq, g.numpy()], ref.shape, dtype, host)
    steps = _steps(got, ref, stats, "gate")
    assert steps.max() == 0, f"max {steps.max()} steps; {np.mean(steps == 0):.4%} exact"


@pytest.mark.parametrize("c,hw,dtype", SHAPES)
def test_global_average_pool_is_the_exact_mean(c, hw, dtype, host):
    """Re-quantized with its input's scale, as PT2E shares it, the mean is Σ(xq − zx) / (H·W)
    rounded half to even: exactly that everywhere, and the same as the reference everywhere
    except on exact ties, where the reference's float sum decides (≤ 1 step there)."""
    xq, zx = _map(c, hw, dtype, 2)
    y = F.adaptive_avg_pool2d(_dequantize(xq, zx, dtype), 1)
    ref = _quantize(y, SX, zx, dtype)
    mod = _relax(xq, zx, dtype, lambda x: relax.op.mean(x, axis=[-1, -2], keepdims=True), SX, zx)
    got, stats = _build_and_run(mod, [xq], ref.shape, dtype, host)
    steps = _steps(got, ref, stats, "mean")
    total = (xq.astype(np.int64) - zx).sum(axis=(2, 3), keepdims=True)
    exact = np.round(total / (hw * hw)).astype(np.int64) + zx  # numpy rounds half to even
    np.testing.assert_array_equal(got.astype(np.int64), exact)
    ties = (2 * total) % (hw * hw) == 0  # S / (H·W) is k + ½ (or an integer: agree anyway)
    assert steps.max() <= 1 and not np.any(steps[~ties]), "apart off a tie"


# (channels, map side, dtype, kernel, stride, padding): ShuffleNetV2's 3×3/2 pad 1 on odd and even
# maps, and a 2×2/2 window without padding
POOLS = [(24, 16, "uint8", 3, 2, 1), (24, 15, "uint8", 3, 2, 1), (16, 8, "int8", 3, 2, 1),
         (40, 8, "uint8", 2, 2, 0)]  # fmt: skip


@pytest.mark.parametrize("shared", [True, False], ids=["shared-params", "requantized"])
@pytest.mark.parametrize("c,hw,dtype,k,stride,pad", POOLS)
def test_max_pool_is_the_8bit_max(c, hw, dtype, k, stride, pad, shared, host):
    """With the input's parameters on the output (PT2E shares them) the result is the max of
    the 8-bit window, bit for bit; with other parameters it is that max requantized — both
    exactly what the fake-quant graph computes (dequantizing is increasing)."""
    xq, zx = _map(c, hw, dtype, 3)
    y = F.max_pool2d(_dequantize(xq, zx, dtype), k, stride, pad)
    sy, zy = (SX, zx) if shared else (SX * 1.7, zx + 5)
    ref = _quantize(y, sy, zy, dtype)
    pool = lambda x: relax.op.nn.max_pool2d(x, k, stride, pad)  # noqa: E731
    mod = _relax(xq, zx, dtype, pool, sy, zy)
    got, stats = _build_and_run(mod, [xq], ref.shape, dtype, host)
    steps = _steps(got, ref, stats, "max_pool", "sepconv_qmaxpool")
    assert steps.max() == 0, f"max {steps.max()} steps; {np.mean(steps == 0):.4%} exact"
    if shared:
        window = torch.from_numpy(xq.astype(np.int32)).float()
        lowest = float(QRANGE[dtype][0])
        padded = F.pad(window, (pad,) * 4, value=lowest)
        np.testing.assert_array_equal(got, F.max_pool2d(padded, k, stride).numpy().astype(dtype))
