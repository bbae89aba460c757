import json

import numpy as np
import pytest
import torch

import sepconv
from sepconv.compiler.artifact import MANIFEST
from sepconv.compiler.validation import compare
from sepconv.errors import SepconvError
from tests.nets import tiny_separable


def test_compare_tolerance_rule():
    ref = np.array([[10.0, -2.0]], np.float32)
    ok = compare("y", ref + 5e-4, ref)  # 5e-4 <= 1e-4 * 10 + 1e-5
    bad = compare("y", ref + 2e-3, ref)
    assert ok.passed and not bad.passed
    assert bad.max_rel_error == pytest.approx(2e-4, rel=1e-3)
    assert not compare("y", ref * np.nan, ref).passed


def test_validate_passes_and_is_recorded(artifact_copy):
    path, model = artifact_copy
    report = sepconv.validate(path, reference=model)
    assert report.passed, report.summary()
    assert report.outputs[0].max_abs_error <= report.outputs[0].tolerance
    assert report.top1_checked + report.top1_ambiguous == 2 * report.num_inputs
    assert report.top1_agree == report.top1_checked
    recorded = json.loads((path / MANIFEST).read_text())["validation"]
    assert recorded["passed"] is True
    sepconv.load(path)  # recording the result does not break the checksums


def test_validate_catches_a_different_model(artifact_copy):
    path, _ = artifact_copy
    other = tiny_separable(seed=1)
    report = sepconv.validate(path, reference=other)
    assert not report.passed
    assert "FAIL" in report.summary()


def test_module_artifact_needs_its_reference(artifact_copy):
    path, _ = artifact_copy
    with pytest.raises(SepconvError, match="reference=module"):
        sepconv.validate(path)


def test_validate_seeded_inputs_are_deterministic(tiny_artifact):
    from sepconv.compiler.validation import seeded_inputs

    compiled = sepconv.load(tiny_artifact[0])
    a, b = seeded_inputs(compiled.inputs, 3), seeded_inputs(compiled.inputs, 3)
    assert np.array_equal(a[0], b[0]) and a[0].shape == (2, 3, 16, 16)
    assert not np.array_equal(a[0], seeded_inputs(compiled.inputs, 4)[0])
    torch.testing.assert_close(torch.from_numpy(a[0]), torch.from_numpy(b[0]))
