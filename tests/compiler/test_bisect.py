"""The bisect finds the first compiled function that disagrees with eager PyTorch.

A wrong kernel is planted through the schedule rule list (tests/compiler/planted_fault.py), so it
reaches the artifact and the bisect's debug rebuild through the normal build path.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

import sepconv
from sepconv.errors import SepconvError
from tests.compiler.planted_fault import block_names, plant
from tests.nets import tiny_separable

X = torch.randn(2, 3, 16, 16)


def _compile(tmp_path, name="tiny"):
    model = tiny_separable()
    art = sepconv.compile(
        model, target="host", out=tmp_path / name, example_input=X, tune_logs=False
    )
    return sepconv.load(art.path), model


@pytest.fixture(scope="module")
def healthy(tmp_path_factory):
    return _compile(tmp_path_factory.mktemp("bisect"))


def test_healthy_model_reports_no_divergence(healthy):
    compiled, model = healthy
    report = sepconv.bisect(compiled, reference=model)
    assert report.first_divergence is None and not report.diverged
    assert report.reproduces and report.output_passed
    assert report.points and all(p.status == "ok" for p in report.points)
    by_ref = {p.reference: p for p in report.points}
    # conv + BN + ReLU fused into our stem operator matches the FX node after the ReLU; the
    # fused dw→pw block (with its residual add) matches the FX add; pooling is compared NHWC;
    # the classifier is our linear operator.
    assert by_ref["relu"].origin == "sepconv" and "sepconv_conv" in by_ref["relu"].function
    assert "sepconv_dw_pw" in by_ref["add"].function
    assert by_ref["adaptive_avg_pool2d"].layout == "NCHW→NHWC"
    assert by_ref["linear"].origin == "sepconv" and "sepconv_linear" in by_ref["linear"].function
    assert "no divergence" in report.summary()


def test_planted_fault_in_our_fused_operator_is_named(tmp_path, monkeypatch):
    fault = plant(
        monkeypatch, lambda f: {"sepconv_dw", "sepconv_pw"} <= set(block_names(f)), "sepconv_pw"
    )
    compiled, model = _compile(tmp_path)
    assert fault.planted == 1
    report = sepconv.validate(compiled, reference=model, num_inputs=1, bisect=True)
    assert not report.passed
    b = report.bisect
    assert b.reproduces, "the debug rebuild must carry the planted fault"
    d = b.first_divergence
    assert d is not None and d.function.startswith("fused_sepconv_dw_pw")
    assert d.origin == "sepconv" and "fused dw→pw" in d.op_kind
    assert d.shape == (2, 8, 8, 8) and d.reference == "add"
    assert d.max_abs_error > 0.1 > 100 * d.tolerance  # +0.5 before h-swish and the add
    # Just before it: the stem, in tolerance; nothing unchecked in between.
    assert [p.reference for p in b.before] == ["relu"]
    assert b.before[0].max_abs_error <= b.before[0].tolerance and not b.unchecked
    assert d.function in b.summary() and "FIRST DIVERGENCE" in b.summary()
    data = json.loads(json.dumps(report.to_json(), default=str))
    assert data["bisect"]["first_divergence"]["function"] == d.function
    assert data["bisect"]["diverged"] is True


def test_planted_fault_in_a_tvm_operator_is_named(tmp_path, monkeypatch):
    # the global pool is TVM's mean (the classifier is ours): its sum starts from 0.5
    def is_pool(f):
        return any(n.endswith("_red") for n in block_names(f)) and "sepconv_pw" not in block_names(
            f
        )

    plant(monkeypatch, is_pool, "*_red")
    compiled, model = _compile(tmp_path)
    b = sepconv.bisect(compiled, reference=model, num_inputs=1)
    d = b.first_divergence
    assert d is not None and d.origin == "tvm" and "mean" in d.function
    assert d.reference == "adaptive_avg_pool2d" and d.layout == "NCHW→NHWC"
    assert [p.reference for p in b.before] == ["add"]
    assert all(p.status == "ok" for p in b.points if p.index < d.index)


def test_bisect_needs_a_torch_reference(tiny_artifact):
    from sepconv.compiler.bisect import bisect

    path, _ = tiny_artifact
    compiled = sepconv.load(path)
    with pytest.raises(SepconvError, match="nn.Module"):
        bisect(compiled, object(), model_name="tiny")

    class OnnxReference(torch.nn.Module):  # what validation uses for an .onnx model file
        sepconv_source = SimpleNamespace(kind="onnx", name="net.onnx")

    with pytest.raises(SepconvError, match="ONNX model"):
        bisect(compiled, OnnxReference(), model_name="tiny")
