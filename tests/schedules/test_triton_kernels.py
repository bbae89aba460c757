"""Each Triton kernel matches PyTorch, on CPU tensors under TRITON_INTERPRET=1 (no GPU needed).

The interpreter runs in one subprocess for all cases (``triton_interp_cases``): ``@triton.jit``
decides between compiling and interpreting when the kernel module is imported, and this pytest
process also compiles the same kernels for sm_90 (the embedding tests).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.schedules.triton_interp_cases import CASES

pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def interp_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("triton") / "results.json"
    env = {**os.environ, "TRITON_INTERPRET": "1", "TRITON_DEFAULT_FP_FUSION": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "tests.schedules.triton_interp_cases", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.parametrize("case_id", [c[1] for c in CASES])
def test_kernel_matches_torch(interp_results, case_id):
    r = interp_results[case_id]
    assert "error" not in r, r.get("error")
    assert r["shape_ok"] and r["format_ok"], r
    assert r["err"] <= r["tol"], f"{case_id}: max abs error {r['err']:.3g} > {r['tol']:.3g}"


def test_every_kernel_and_layout_is_covered():
    kinds = {(c[0], c[2]["cl"]) for c in CASES}
    assert kinds == {(k, cl) for k in ("dw", "fused", "se") for cl in (False, True)}
    dw = [c[2] for c in CASES if c[0] == "dw"]
    assert {(p["k"], p["s"]) for p in dw} >= {(3, 1), (3, 2), (5, 1), (5, 2)}


def test_kernels_state_bytes_and_roofline():
    from sepconv.schedules import triton_depthwise, triton_fused_dw_pw, triton_se

    for module in (triton_depthwise, triton_fused_dw_pw, triton_se):
        doc = module.__doc__
        assert "Bytes moved" in doc and "Roofline" in doc, module.__name__
        assert hasattr(module, "bytes_moved")
    # 3×3 stride-1 depthwise at batch 1: ~2.25 FLOP per byte (FACTS.md).
    n, c, h = 1, 144, 56
    intensity = triton_depthwise.flops(n, c, h, h, 3, 3) / triton_depthwise.bytes_moved(
        n, c, h, h, h, h, 3, 3
    )
    assert 2.2 < intensity < 2.3
