"""Every zoo family compiles and matches eager PyTorch (small sizes here, full size under slow)."""

import numpy as np
import pytest
import torch

import sepconv
from sepconv.models import get_model

# Small widths/resolutions keep the default tier fast; each still has every block type.
SMALL = [
    "mobilenet_v1:0.25@64",
    "mobilenet_v2:0.35@64",
    "mobilenet_v3_small:0.5@64",
    "mobilenet_v3_large:0.35@64",
    "efficientnet_b0@64",
    "shufflenet_v2:0.5@64",
]
FULL = [
    "mobilenet_v1",
    "mobilenet_v2",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "efficientnet_b0",
    "shufflenet_v2",
]


def _compile_and_validate(name, tmp_path, batch=1):
    art = sepconv.compile(name, target="host", out=tmp_path / "m", batch=batch)
    report = sepconv.validate(art.path)
    assert report.passed, report.summary()
    return art, report


@pytest.mark.parametrize("name", SMALL)
def test_small_zoo_model_matches_eager(name, tmp_path):
    art, report = _compile_and_validate(name, tmp_path)
    assert art.manifest.build["tasks_total"] > 0
    assert report.outputs[0].max_abs_error <= report.outputs[0].tolerance


def test_batch_8_and_top1_agreement(tmp_path):
    art, report = _compile_and_validate("mobilenet_v2:0.35@64", tmp_path, batch=8)
    assert art.manifest.inputs[0].shape == (8, 3, 64, 64)
    assert report.top1_checked >= 8 * report.num_inputs - report.top1_ambiguous
    assert report.top1_agree == report.top1_checked


def test_resolution_knob_other_than_224(tmp_path):
    art = sepconv.compile("mobilenet_v1:0.25@96", out=tmp_path / "r")
    assert art.manifest.inputs[0].shape == (1, 3, 96, 96)
    spec = get_model("mobilenet_v1:0.25@96")
    x = spec.example_input(seed=5)
    got = art.load()(x)
    ref = spec.module(x).detach()
    assert torch.max(torch.abs(got - ref)) <= 1e-4 * torch.max(torch.abs(ref)) + 1e-5


def test_arbitrary_module_through_the_api(tmp_path):
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 6, 5, padding=2, groups=3),
        torch.nn.SiLU(),
        torch.nn.Conv2d(6, 4, 1),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 9 * 9, 3),
    ).eval()
    x = torch.randn(4, 3, 9, 9)
    art = sepconv.compile(net, out=tmp_path / "any", example_input=x)
    y = art.load()(x.numpy())
    ref = net(x).detach().numpy()
    assert np.abs(y - ref).max() <= 1e-4 * np.abs(ref).max() + 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("name", FULL)
def test_full_size_zoo_model_matches_eager(name, tmp_path):
    _compile_and_validate(name, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", [f"efficientnet_b{i}" for i in range(1, 8)])
def test_scaled_efficientnets_match_eager(name, tmp_path):
    _compile_and_validate(name, tmp_path)
