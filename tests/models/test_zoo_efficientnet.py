"""EfficientNet compound scaling: B1…B7 derived from φ with α = 1.2, β = 1.1, γ = 1.15."""

from __future__ import annotations

import math

import pytest
import torch

from sepconv.errors import UnknownModelError
from sepconv.models import FAMILIES, count_macs, count_params, get_model, list_models
from sepconv.models.efficientnet import (
    ALPHA,
    BETA,
    GAMMA,
    PUBLISHED,
    EfficientNet,
    compound_scaling,
)

# torchvision's parameter counts for efficientnet_b0 … b7 (published coefficients)
TORCHVISION_PARAMS = [
    5_288_548,
    7_794_184,
    9_109_994,
    12_233_232,
    19_341_616,
    30_389_784,
    43_040_704,
    66_347_960,
]
# what this module derives from φ (the docstring's table)
DERIVED_PARAMS = [
    5_288_548,
    9_109_994,
    12_233_232,
    16_338_888,
    25_940_032,
    33_702_516,
    45_477_208,
    68_741_810,
]


def test_constraint_alpha_beta2_gamma2_is_about_two():
    assert ALPHA * BETA**2 * GAMMA**2 == pytest.approx(2, abs=0.1)  # 1.92


def test_b0_is_the_baseline():
    assert compound_scaling(0) == (0, 1.0, 1.0, 224)


def test_derived_multipliers_follow_phi():
    for phi in range(8):
        s = compound_scaling(phi)
        assert s.width == pytest.approx(BETA**phi)
        assert s.depth == pytest.approx(ALPHA**phi)
        assert s.resolution % 8 == 0
        assert abs(s.resolution - 224 * GAMMA**phi) <= 4


def test_derived_resolutions_monotonic_and_as_documented():
    res = [compound_scaling(phi).resolution for phi in range(8)]
    assert res == [224, 256, 296, 344, 392, 448, 520, 592]
    assert all(a < b for a, b in zip(res, res[1:], strict=False))
    # the published ones are monotonic too, but are not γ^φ (B1 240 is φ ≈ 0.5)
    assert [r for _, _, r in PUBLISHED] == [224, 240, 260, 300, 380, 456, 528, 600]


def test_registry_uses_derived_resolution():
    for phi in range(8):
        assert FAMILIES[f"efficientnet_b{phi}"].resolution == compound_scaling(phi).resolution


def test_published_coefficients_reproduce_torchvision_param_counts():
    for (width, depth, _), expected in zip(PUBLISHED, TORCHVISION_PARAMS, strict=True):
        with torch.device("meta"):
            assert count_params(EfficientNet(width, depth)) == expected


def test_derived_params_and_macs_grow_as_compound_scaling_says():
    infos = {i.name: i for i in list_models()}
    params = [infos[f"efficientnet_b{phi}"].params for phi in range(8)]
    macs = [infos[f"efficientnet_b{phi}"].macs for phi in range(8)]
    assert params == DERIVED_PARAMS
    assert all(a < b for a, b in zip(macs, macs[1:], strict=False))
    # FLOPs ∝ d·w²·r² = (α·β²·γ²)^φ; depth ceil and width rounding only add (+0…30%)
    for phi in range(1, 8):
        ratio = macs[phi] / macs[0] / (ALPHA * BETA**2 * GAMMA**2) ** phi
        assert 1.0 <= ratio <= 1.3, (phi, ratio)


def test_derived_b1_is_published_b2_architecture():
    with torch.device("meta"):
        b1 = EfficientNet(compound_scaling(1).width, compound_scaling(1).depth)
    assert count_params(b1) == TORCHVISION_PARAMS[2]
    # depth scaling: every stage gets ceil(n · α^φ) blocks
    blocks = [len(stage) for stage in list(b1.features)[1:-1]]
    assert blocks == [math.ceil(n * ALPHA) for n in (1, 2, 2, 3, 3, 4, 1)]


def test_resolution_override_and_no_width_knob():
    spec = get_model("efficientnet_b0@128", num_classes=10)
    assert spec.name == "efficientnet_b0@128"
    assert spec.input_shape == (1, 3, 128, 128)
    assert count_macs(spec.module, spec.input_shape) < 0.39e9 * (128 / 224) ** 2 * 1.05
    with pytest.raises(UnknownModelError, match="no width knob"):
        get_model("efficientnet_b3:1.2")
