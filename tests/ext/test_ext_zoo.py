"""The external-zoo tier (-m ext): torchvision:NAME and timm:NAME resolve, compile and validate.

Needs an environment where torchvision and timm import (the CUDA build of torch 2.14.1; it runs
without a GPU): tests/ext/setup_env.sh builds one. Small resolutions keep it fast.
"""

from __future__ import annotations

import importlib

import pytest

from sepconv.errors import UnknownModelError

pytestmark = pytest.mark.ext


def _require(package: str):
    try:
        return importlib.import_module(package)
    except Exception as exc:  # noqa: BLE001 - ImportError, or OSError/RuntimeError from CUDA libs
        pytest.skip(
            f"{package} cannot be imported here ({type(exc).__name__}: {str(exc)[:120]}); the "
            "ext tier needs torchvision and timm with the CUDA build of torch: "
            "tests/ext/setup_env.sh"
        )


@pytest.mark.parametrize(
    "name",
    [
        "torchvision:mobilenet_v2@64",
        "torchvision:mobilenet_v3_small@64",
        "torchvision:efficientnet_b0@64",
        "timm:mobilenetv3_small_100@64",
        "timm:mobilenetv2_050@64",
        "timm:efficientnet_b0@64",
    ],
)
def test_external_model_compiles_and_validates(name, tmp_path):
    import sepconv

    _require(name.partition(":")[0])
    art = sepconv.compile(name, out=tmp_path / "m", validate=True, tune_logs=False)
    assert art.manifest.inputs[0].shape == (1, 3, 64, 64)
    assert art.manifest.validation["passed"], art.manifest.validation
    ops = art.manifest.build["sepconv_ops"]
    assert ops["depthwise"] + ops["fused_dw_pw"] > 0  # the separable blocks became our operators


@pytest.mark.parametrize(
    ("source", "model"), [("torchvision", "mobilenet_v2"), ("timm", "mobilenetv3_small_100")]
)
def test_resolution_knob(source, model):
    from sepconv.models import get_model

    _require(source)
    assert get_model(f"{source}:{model}@96").input_shape == (1, 3, 96, 96)
    spec = get_model(f"{source}:{model}", batch=2)
    assert spec.input_shape == (2, 3, 224, 224) and spec.name == f"{source}:{model}"


@pytest.mark.parametrize(
    ("name", "close"),
    [
        ("torchvision:mobilenet_v5", "mobilenet_v2"),
        ("timm:mobilenetv3_smal_100", "mobilenetv3_small_100"),
    ],
)
def test_unknown_external_name_lists_close_matches(name, close):
    from sepconv.models import get_model

    _require(name.partition(":")[0])
    with pytest.raises(UnknownModelError, match=f"close matches: .*{close}"):
        get_model(name)
