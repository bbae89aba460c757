"""Every family runs and exports with torch.export (what the compiler imports)."""

from __future__ import annotations

import pytest
import torch

from sepconv.models import FAMILIES, get_model

SMALL = [
    "mobilenet_v1:0.25@64",
    "mobilenet_v2:0.35@64",
    "mobilenet_v3_small:0.5@64",
    "mobilenet_v3_large:0.35@64",
    "efficientnet_b0@64",
    "shufflenet_v2:0.5@64",
]


def test_small_configs_cover_every_family_kind():
    kinds = {name.split(":")[0].split("@")[0] for name in SMALL}
    assert {f for f in FAMILIES if not f.startswith("efficientnet_b")} <= kinds


@pytest.mark.parametrize("name", SMALL)
def test_forward_and_export(name):
    spec = get_model(name, batch=2, num_classes=10)
    x = spec.example_input()
    with torch.no_grad():
        eager = spec.module(x)
    assert eager.shape == (2, 10)
    program = torch.export.export(spec.module, (x,))
    ops = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    in_place = {op for op in ops if op.startswith("aten.") and op.split(".")[1].endswith("_")}
    assert not in_place, in_place
    assert "aten.conv2d.default" in ops and "aten.batch_norm.default" in ops
    with torch.no_grad():
        assert torch.equal(program.module()(x), eager)


@pytest.mark.parametrize("phi", range(1, 8))
def test_efficientnet_b1_to_b7_forward_small(phi):
    spec = get_model(f"efficientnet_b{phi}@32", batch=2, num_classes=5)
    with torch.no_grad():
        assert spec.module(spec.example_input()).shape == (2, 5)


# ---- slow: every default model at its full resolution ----


@pytest.mark.slow
@pytest.mark.parametrize("name", list(FAMILIES))
def test_default_models_full_size(name):
    spec = get_model(name)
    x = torch.cat([spec.example_input(seed) for seed in range(2)])
    with torch.no_grad():
        y = spec.module(x)
    assert y.shape == (2, 1000)
    assert torch.isfinite(y).all() and 0.1 < y.abs().max() < 1e3
    program = torch.export.export(spec.module, (spec.example_input(),))
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x[:1]), y[:1])
