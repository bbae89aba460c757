"""Model names, knobs, the ModelSpec contract, list_models and the torchvision:/timm: doors."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from sepconv.errors import ModelLoadError, SepconvError, UnknownModelError
from sepconv.models import (
    FAMILIES,
    ModelInfo,
    ModelSpec,
    builtin_equivalent,
    get_model,
    list_models,
    parse_name,
)
from sepconv.models.mobilenet_v2 import MobileNetV2


@pytest.mark.parametrize(
    ("name", "parsed"),
    [
        ("mobilenet_v1", ("mobilenet_v1", None, None)),
        ("mobilenet_v1:0.5@160", ("mobilenet_v1", 0.5, 160)),
        ("mobilenet_v2:0.35@96", ("mobilenet_v2", 0.35, 96)),
        ("mobilenet_v3_small", ("mobilenet_v3_small", None, None)),
        ("mobilenet_v3_large:0.75@160", ("mobilenet_v3_large", 0.75, 160)),
        ("efficientnet_b7", ("efficientnet_b7", None, None)),
        ("efficientnet_b0@128", ("efficientnet_b0", None, 128)),
        ("shufflenet_v2", ("shufflenet_v2", None, None)),
        ("shufflenet_v2:0.5@128", ("shufflenet_v2", 0.5, 128)),
        ("  MobileNet_V1:0.50@160 ", ("mobilenet_v1", 0.5, 160)),
        ("torchvision:resnet18", ("torchvision:resnet18", None, None)),
        ("timm:mobilenetv3_large_100@256", ("timm:mobilenetv3_large_100", None, 256)),
    ],
)
def test_parse_name(name, parsed):
    assert parse_name(name) == parsed


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("resnet50", "unknown model 'resnet50'"),
        ("mobilenet_v4:0.5", "Known families: mobilenet_v1"),
        ("", "non-empty"),
        ("mobilenet_v1:0", "not a positive number"),
        ("mobilenet_v1:-0.5", "not a positive number"),
        ("mobilenet_v1:abc", "not a positive number"),
        ("mobilenet_v1:nan", "not a positive number"),
        ("mobilenet_v1:inf", "not a positive number"),
        ("mobilenet_v1:", "not a positive number"),
        ("mobilenet_v1@0", "not a positive integer"),
        ("mobilenet_v1@12.5", "not a positive integer"),
        ("mobilenet_v1@-64", "not a positive integer"),
        ("mobilenet_v1:0.5@", "not a positive integer"),
        ("mobilenet_v1:0.5:0.5", "not a positive number"),
        ("efficientnet_b0:1.1", "no width knob"),
        ("shufflenet_v2:0.75", "widths 0.5, 1, 1.5, 2"),
        ("torchvision:", "no model named"),
    ],
)
def test_bad_names(name, message):
    with pytest.raises(UnknownModelError, match=message):
        parse_name(name)
    with pytest.raises(SepconvError):
        get_model(name)


def test_unknown_name_lists_families_and_syntax():
    with pytest.raises(UnknownModelError) as err:
        get_model("resnet50")
    text = str(err.value)
    for family in FAMILIES:
        assert family in text
    assert "family[:width][@resolution]" in text
    assert "torchvision:NAME" in text


@pytest.mark.parametrize(
    ("name", "canonical"),
    [
        ("mobilenet_v1:1.0@224", "mobilenet_v1"),
        ("mobilenet_v1:0.50@160", "mobilenet_v1:0.5@160"),
        ("efficientnet_b1@256", "efficientnet_b1"),
        ("efficientnet_b1@240", "efficientnet_b1@240"),
        ("shufflenet_v2:2.0", "shufflenet_v2:2"),
        ("mobilenet_v2:0.35@96", "mobilenet_v2:0.35@96"),
    ],
)
def test_canonical_names_round_trip(name, canonical):
    spec = get_model(name, num_classes=3)
    assert spec.name == canonical
    assert parse_name(spec.name)[0] == spec.family


def test_model_spec_contract():
    spec = get_model("mobilenet_v1:0.5@160", batch=2, num_classes=10)
    assert isinstance(spec, ModelSpec)
    assert (spec.name, spec.family) == ("mobilenet_v1:0.5@160", "mobilenet_v1")
    assert spec.input_shape == (2, 3, 160, 160)
    assert spec.num_classes == 10
    assert not spec.module.training
    assert all(not m.training for m in spec.module.modules())
    x = spec.example_input()
    assert x.dtype == torch.float32 and x.shape == (2, 3, 160, 160)
    assert torch.equal(x, spec.example_input(0))
    assert not torch.equal(x, spec.example_input(1))
    with torch.no_grad():
        assert spec.module(x).shape == (2, 10)


def test_bad_batch_and_num_classes():
    with pytest.raises(ValueError, match="batch"):
        get_model("mobilenet_v1", batch=0)
    with pytest.raises(ValueError, match="num_classes"):
        get_model("mobilenet_v1", num_classes=0)


def test_list_models():
    infos = list_models()
    assert [i.name for i in infos] == list(FAMILIES)
    assert len(infos) == 13
    assert all(isinstance(i, ModelInfo) and i.description for i in infos)
    by_name = {i.name: i for i in infos}
    expected = {  # name: (resolution, params, MACs)
        "mobilenet_v1": (224, 4_231_976, 568_740_352),
        "mobilenet_v2": (224, 3_504_872, 300_774_272),
        "mobilenet_v3_large": (224, 5_483_032, 216_589_760),
        "mobilenet_v3_small": (224, 2_542_856, 56_510_400),
        "efficientnet_b0": (224, 5_288_548, 385_814_752),
        "efficientnet_b7": (592, 68_741_810, 38_761_717_264),
        "shufflenet_v2": (224, 2_279_760, 145_814_296),
    }
    for name, (res, params, macs) in expected.items():
        assert (by_name[name].resolution, by_name[name].params, by_name[name].macs) == (
            res,
            params,
            macs,
        )
    infos.clear()  # callers get a copy of the cache
    assert len(list_models()) == 13


# ---- torchvision: and timm: ----


@pytest.mark.parametrize(
    ("name", "suggestion"),
    [
        ("torchvision:mobilenet_v2", "'mobilenet_v2'"),
        ("torchvision:shufflenet_v2_x0_5", "'shufflenet_v2:0.5'"),
        ("torchvision:resnet18", "built-in model: mobilenet_v1"),
        ("timm:mobilenetv3_large_100", "'mobilenet_v3_large'"),
        ("timm:tf_efficientnet_b3", "'efficientnet_b3'"),
    ],
)
def test_external_without_library_explains(monkeypatch, name, suggestion):
    source = name.split(":")[0]
    monkeypatch.setitem(sys.modules, source, None)  # makes `import <source>` fail here
    with pytest.raises(ModelLoadError) as err:
        get_model(name)
    text = str(err.value)
    assert f"needs {source}" in text
    assert "CUDA" in text and "CPU-only torch" in text
    assert "full torch" in text
    assert suggestion in text


@pytest.mark.parametrize(
    ("source", "model", "near"),
    [
        ("torchvision", "mobilenet_v3_small", "mobilenet_v3_small"),
        ("torchvision", "efficientnet_b0", "efficientnet_b0"),
        ("torchvision", "shufflenet_v2_x1_0", "shufflenet_v2"),
        ("timm", "mobilenetv2_050", "mobilenet_v2:0.5"),
        ("timm", "mobilenetv2_140", "mobilenet_v2:1.4"),
        ("timm", "mobilenetv1_100", "mobilenet_v1"),
        ("timm", "mobilenetv3_small_075", "mobilenet_v3_small:0.75"),
        ("timm", "resnet50", None),
    ],
)
def test_builtin_equivalent(source, model, near):
    assert builtin_equivalent(source, model) == near


def test_external_with_a_library(monkeypatch):
    """The success path, with a stand-in torchvision (the real one needs a full torch)."""

    def fake_get_model(name, weights=None, num_classes=1000):
        if name != "mobilenet_v2":
            raise ValueError(f"Unknown model {name}")
        return MobileNetV2(0.35, num_classes)

    fake = types.ModuleType("torchvision")
    # "resnet999" is listed but fails to build: the library's own error path
    fake.models = types.SimpleNamespace(
        get_model=fake_get_model, list_models=lambda: ["mobilenet_v2", "resnet999"]
    )
    monkeypatch.setitem(sys.modules, "torchvision", fake)
    spec = get_model("torchvision:mobilenet_v2@64", batch=2, num_classes=7)
    assert (spec.name, spec.family) == ("torchvision:mobilenet_v2@64", "torchvision:mobilenet_v2")
    assert spec.input_shape == (2, 3, 64, 64)
    with torch.no_grad():
        assert spec.module(spec.example_input()).shape == (2, 7)
    again = get_model("torchvision:mobilenet_v2@64", batch=2, num_classes=7)
    assert all(
        torch.equal(a, b)
        for a, b in zip(
            spec.module.state_dict().values(), again.module.state_dict().values(), strict=True
        )
    )
    assert get_model("torchvision:mobilenet_v2").input_shape == (1, 3, 224, 224)
    with pytest.raises(UnknownModelError, match="cannot build 'resnet999'"):
        get_model("torchvision:resnet999")
    with pytest.raises(
        UnknownModelError, match="no model 'mobilenet_v22'; close matches: mobilenet_v2"
    ):
        get_model("torchvision:mobilenet_v22")
