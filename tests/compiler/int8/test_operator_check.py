"""The per-operator int8 check: each compiled operator on the simulated quantization's own inputs,
ties told apart from faults, a planted fault named, and the validation rule built on it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import sepconv
from sepconv.compiler.int8 import operator_check as oc
from sepconv.compiler.validation import seeded_inputs

pytest.importorskip("torchao", reason="int8 quantizes through torchao's PT2E")


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    """(PT2E program, its int8 artifact) of TinySeparable: stem, depthwise, pointwise + residual,
    mean pool, linear."""
    from sepconv.compiler.int8.ptq import quantize_module, scheme_for
    from tests.nets import tiny_separable

    gen = torch.Generator().manual_seed(0)
    calibration = [(torch.randn(1, 3, 16, 16, generator=gen),) for _ in range(8)]
    ep, _ = quantize_module(
        tiny_separable(), (torch.randn(1, 3, 16, 16),), calibration, scheme_for("x86_64")
    )
    out = tmp_path_factory.mktemp("opcheck") / "tiny"
    art = sepconv.compile(ep, precision="int8", out=out, tune_logs=False, validate=False)
    return ep, art.path


def _stem_weight(model) -> tuple[int, tuple]:
    """Index of the stem conv's int8 weights among the model's params, and the index of its
    output channel 0 in them: HWIO [3, 3, 3, O], or on a dot instruction the packed panels
    [O/L, 3 rows · 12 bytes / 4, L, 4] (ops.pack_conv; the other convs' and the linear's panels
    have 8 / 4 = 2 blocks)."""
    found = []
    for i, p in enumerate(model._params):
        shape = tuple(p.shape)
        if str(p.dtype) != "int8" or len(shape) != 4:
            continue
        if shape[:3] == (3, 3, 3):
            found.append((i, (..., 0)))
        elif shape[1] == 9 and shape[3] == 4:
            found.append((i, (0, slice(None), 0, slice(None))))
    assert len(found) == 1, [tuple(p.shape) for p in model._params]
    return found[0]


def test_every_operator_matches_on_the_references_inputs(quantized):
    ep, path = quantized
    model = sepconv.load(path)
    check = oc.check_operators(model, ep, seeded_inputs(model.inputs, 0))
    assert check.passed, check.summary()
    # every 8-bit tensor a function writes found its reference tensor: the input's, the stem's
    # (NHWC), the pooled features' ([N, C] as [N, 1, 1, C]); the depthwise conv's is fused
    # into the float pointwise conv that reads it (the quantizer left that one float)
    names = [o.function for o in check.operators]
    assert not [o for o in check.operators if o.reference is None], check.summary()
    assert any(n.startswith("sepconv_qconv") for n in names), names
    assert len({o.reference for o in check.checked}) == 3, check.summary()
    assert all(o.max_steps <= 1 and o.exact + o.ties >= oc.MIN_EXACT for o in check.checked)
    assert check.output_exact == 1.0
    assert "within 1 step" in check.summary()


def test_a_corrupted_operator_is_named_and_fails_validation(quantized):
    ep, path = quantized
    model = sepconv.load(path)
    i, channel0 = _stem_weight(model)
    w = model._params[i].numpy()
    bad = w.copy()
    bad[channel0] = np.clip(bad[channel0].astype(np.int32) + 3, -127, 127).astype(np.int8)
    model._params[i].copyfrom(bad)  # output channel 0 of the stem conv now computes wrongly
    check = oc.check_operators(model, ep, seeded_inputs(model.inputs, 0))
    assert check.passed is False
    first = check.failed[0]
    assert first.function.startswith("sepconv_qconv"), check.summary()
    assert first.max_steps > 1 or first.exact + first.ties < oc.MIN_EXACT
    # forced inputs: the operators after it read the reference's map, so they still pass
    after = check.checked[check.checked.index(first) + 1 :]
    assert after and all(o.passed for o in after), check.summary()
    report = sepconv.validate(model, reference=ep, record=False)
    assert not report.passed
    assert any("first at sepconv_qconv" in n and "compiler fault" in n for n in report.notes)
    assert report.operators["passed"] is False
    model._params[i].copyfrom(w)
    assert sepconv.validate(model, reference=ep, record=False).passed


def _quantize(x, scale):
    return torch.ops.quantized_decomposed.quantize_per_tensor(x, scale, 0, 0, 255, torch.uint8)


def _dequantize(q, scale):
    return torch.ops.quantized_decomposed.dequantize_per_tensor(q, scale, 0, 0, 255, torch.uint8)


def _recorded(forward, x):
    import torchao.quantization.pt2e  # noqa: F401 - registers quantized_decomposed

    module = type("M", (torch.nn.Module,), {"forward": lambda self, x: forward(x)})()
    recorder = oc._QuantizeRecorder(torch.fx.symbolic_trace(module))
    recorder.run(x)
    return recorder.found


def test_a_rounding_tie_is_told_from_a_step():
    """x/s = k + ½ exactly is a tie (either rounding is the reference's, up to its float
    noise); k + 0.3 is not."""
    (found,) = _recorded(lambda x: _quantize(x, 0.5), torch.tensor([1.25, 1.15, 2.0]))
    # ·(1/0.5): 2.5 (a tie: 2 by round half to even, 3 allowed), 2.3, 4.0
    assert found.q.tolist() == [2, 2, 4] and found.alt.tolist() == [3, 2, 4]
    same = lambda v: v  # noqa: E731
    got = np.array([3, 2, 4], np.uint8)  # the other side of the tie: allowed
    assert oc._compare(got, found, same, False) == (pytest.approx(2 / 3), pytest.approx(1 / 3), 0)
    got = np.array([2, 3, 4], np.uint8)  # one step off where there is no tie: a fault
    assert oc._compare(got, found, same, False) == (pytest.approx(2 / 3), 0.0, 1)


def test_a_quantize_our_float_functions_write_allows_their_float_noise():
    """Written by an integer operator, a value 0.5 % of a step from a tie is a fault one step
    off; written by one of our float functions (a mean pool of a float conv's output, which
    both sides compute in fp32 in their own order and forcing cannot align), it is the tie."""
    from sepconv.compiler.int8.lowering import is_integer_function

    # ·(1/0.5): 2.51 (0.01 steps from 2.5), 2.3
    (found,) = _recorded(lambda x: _quantize(x, 0.5), torch.tensor([1.255, 1.15]))
    assert found.q.tolist() == [3, 2] and found.alt.tolist() == [3, 2]
    assert found.alt_float.tolist() == [2, 2]
    same = lambda v: v  # noqa: E731
    got = np.array([2, 2], np.uint8)
    assert oc._compare(got, found, same, False) == (0.5, 0.0, 1)
    assert oc._compare(got, found, same, True) == (0.5, 0.5, 0)
    # which functions count as float: by the names the VM calls them
    assert is_integer_function("sepconv_qpw_3") and not is_integer_function("fused_mean_quantize43")


def test_a_requantization_carries_the_earlier_tie():
    """quantize(dequantize(q)) at another scale, through a flatten: q's tie, rounded the other
    way, lands two steps off at the new scale — allowed there, since our compiled model may
    hold q only inside a fused function."""

    def forward(x):
        d = _dequantize(_quantize(x, 0.5), 0.5)
        return _quantize(torch.ops.aten.flatten.using_ints(d, 1), 0.3)

    first, second = _recorded(forward, torch.tensor([[1.25, 2.0]]))
    assert first.q.tolist() == [[2, 4]] and first.alt.tolist() == [[3, 4]]
    # 1.0 / 0.3 → 3; the other rounding, 1.5 / 0.3 → 5
    assert second.q.tolist() == [[3, 7]] and second.alt.tolist() == [[5, 7]]
    same = lambda v: v  # noqa: E731
    assert oc._compare(np.array([[5, 7]], np.uint8), second, same, False) == (0.5, 0.5, 0)
    assert oc._compare(np.array([[4, 7]], np.uint8), second, same, False) == (0.5, 0.0, 1)


def test_no_check_without_a_pt2e_graph(quantized):
    _, path = quantized
    model = sepconv.load(path)
    check = oc.check_operators(model, torch.nn.Identity(), seeded_inputs(model.inputs, 0))
    assert check.passed is None and "not a PT2E graph" in check.reason
    assert check.summary().startswith("operator check not run")
