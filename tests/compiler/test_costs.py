"""Per-function costs stored at build time: MACs follow the models' counting rule, bytes are the
parameter buffers once."""

from __future__ import annotations

import pytest
import torch

from sepconv.compiler.build import lower
from sepconv.compiler.costs import function_costs
from sepconv.compiler.importer import import_module
from sepconv.models import count_macs
from sepconv.targets import resolve_target
from tests.nets import tiny_separable


@pytest.mark.parametrize("sepconv_ops", [True, False], ids=["sepconv-ops", "tvm-conv2d"])
def test_macs_agree_with_the_counting_rule(sepconv_ops):
    model = tiny_separable().eval()
    x = torch.randn(2, 3, 16, 16)
    mod, _, _ = lower(import_module(model, (x,)), resolve_target("host").target, sepconv_ops)
    costs = function_costs(mod)
    assert sum(c.macs * c.calls for c in costs.values()) == count_macs(model, tuple(x.shape))
    # the stem by hand: N=2, Co=8, 8×8 output (stride 2), Ci=3, 3×3 kernel
    stem = 2 * 8 * 8 * 8 * 3 * 3 * 3
    dw, pw = 2 * 8 * 8 * 8 * 3 * 3, 2 * 8 * 8 * 8 * 8
    blocks = sorted(b for c in costs.values() for b in c.mac_blocks)
    assert blocks == sorted([stem, dw, pw, 2 * 8 * 10])
    if sepconv_ops:  # fused dw→pw: one function, two reductions, the intermediate not counted
        (fused,) = [c for c in costs.values() if c.mac_blocks == [dw, pw]]
        # in (2×8×8×8) + dw weight (3×3×8) + bias (8) + pw weight (8×8) + bias (8) + out
        assert fused.bytes == 4 * (2 * 1024 + 72 + 8 + 64 + 8)
    assert all(c.calls >= 1 for c in costs.values() if c.macs)
