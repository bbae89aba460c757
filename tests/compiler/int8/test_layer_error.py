"""Where int8 error enters a model: each quantized activation against fp32, and a collapsed
model's validation naming the layer where the error grows most.

The planted collapse is the classic one: a layer whose output has one channel a thousand times
larger than the rest. A per-tensor activation scale sized for that channel rounds every other
channel to the zero point, so the next layer — which reads only those channels — loses its
signal. Its SQNR against fp32 falls from ~30 dB at its inputs to ~0 dB."""

from __future__ import annotations

import contextlib
import io

import pytest
import torch
from torch import nn

import sepconv
from sepconv.cli import EXIT_VALIDATION_FAILED, main

pytest.importorskip("torchao", reason="int8 quantizes through torchao's PT2E")

SHAPE = (1, 3, 32, 32)


class OutlierChannel(nn.Module):
    """stem → pw (channel 0 ×1000) → dw → pw reading channels 1… only → pool → linear."""

    def __init__(self, outlier: float = 1000.0):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU())
        self.expand = nn.Sequential(nn.Conv2d(8, 8, 1), nn.ReLU())
        self.dw = nn.Sequential(nn.Conv2d(8, 8, 3, 1, 1, groups=8), nn.ReLU())
        self.project = nn.Sequential(nn.Conv2d(8, 16, 1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(16, 10)
        with torch.no_grad():
            self.expand[0].weight[0] *= outlier
            self.expand[0].bias[0] = self.expand[0].bias[0].abs() * outlier
            self.project[0].weight[:, 0] = 0.0  # the outlier channel carries nothing onward
            for layer in (self.project[0], self.head):  # no constant: only the crushed channels
                layer.bias.zero_()

    def forward(self, x):
        y = self.project(self.dw(self.expand(self.stem(x))))
        return self.head(torch.flatten(self.pool(y), 1))


def _reference(model):
    from sepconv.compiler.int8.ptq import quantize_model

    x = torch.randn(SHAPE)
    reference, _ = quantize_model(model.eval(), (x,), target_arch="x86_64")
    return reference, x


def test_every_quantized_activation_is_measured_and_named():
    reference, x = _reference(OutlierChannel(outlier=1.0))  # a healthy model
    errors = reference.layer_errors(x)
    layers = [e.layer for e in errors]
    assert layers[0] == "input x" and errors[0].input_sqnr_db is None
    for name in ("stem.0 (Conv2d → ReLU)", "expand.0 (Conv2d → ReLU)", "dw.0 (Conv2d → ReLU)",
                 "project.0 (Conv2d → ReLU)"):  # fmt: skip
        assert name in layers, layers
    assert [e.index for e in errors] == list(range(len(errors)))
    dw = errors[layers.index("dw.0 (Conv2d → ReLU)")]
    assert dw.shape == (1, 8, 16, 16)
    # its inputs are the points that feed it: the expand unit's quantized output
    assert dw.input_sqnr_db == errors[layers.index("expand.0 (Conv2d → ReLU)")].sqnr_db
    # a healthy 8-bit model: every point well above the collapse floor
    assert min(e.sqnr_db for e in errors) > 15, [(e.layer, e.sqnr_db) for e in errors]


def test_the_layer_where_error_grows_most_is_the_one_reading_the_crushed_channels():
    from sepconv.compiler.int8.layer_error import worst_growth

    reference, x = _reference(OutlierChannel())
    errors = {e.layer: e for e in reference.layer_errors(x)}
    worst = worst_growth(list(errors.values()))
    assert worst.layer == "project.0 (Conv2d → ReLU)", [
        (e.layer, e.sqnr_db) for e in errors.values()
    ]
    assert worst.sqnr_db < 5 and worst.input_sqnr_db > 20
    # the outlier layer itself still looks fine: its SQNR is its big channel's
    assert errors["expand.0 (Conv2d → ReLU)"].sqnr_db > 20


@pytest.fixture(scope="module")
def collapsed_artifact(tmp_path_factory):
    model = OutlierChannel().eval()
    art = sepconv.compile(
        model, example_input=torch.randn(SHAPE), precision="int8", tune_logs=False,
        out=tmp_path_factory.mktemp("collapse") / "m",
    )  # fmt: skip
    return art, model


def test_a_collapsed_model_fails_validation_naming_the_layer(collapsed_artifact):
    art, model = collapsed_artifact
    report = sepconv.validate(art.path, reference=model)
    assert not report.passed
    out = report.outputs[0]
    # the compiler is right (it matches the simulated quantization); quantization is not
    assert out.sqnr_vs_quantized_db >= 15 and out.sqnr_db < 8, report.summary()
    assert report.error_grows_most_at.startswith("project.0 (Conv2d → ReLU)"), report.summary()
    assert "grows most at project.0" in report.summary()
    assert report.to_json()["layers"] and "project.0 (Conv2d → ReLU) ◀" in report.layer_table()


def test_cli_validate_prints_the_layer_table_and_exits_failed(collapsed_artifact, monkeypatch):
    art, model = collapsed_artifact
    # the CLI rebuilds the fp32 reference from a file the user names
    path = art.path.parent / "outlier.pt2"
    torch.export.save(torch.export.export(model, (torch.randn(SHAPE),)), str(path))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["validate", str(art.path), "--reference", str(path), "--layers"])
    text = printed.getvalue()
    assert code == EXIT_VALIDATION_FAILED, text
    assert "quantization error grows most at project.0" in text
    assert "| SQNR vs fp32 (dB) |" in text and "◀" in text
    # a lower floor is the user's call: the same model then passes
    with contextlib.redirect_stdout(io.StringIO()):
        code = main(["validate", str(art.path), "--reference", str(path), "--min-sqnr-db", "-50"])
    assert code == 0


def test_layers_flag_is_refused_on_fp32_artifacts(tmp_path):
    from tests.nets import tiny_separable

    art = sepconv.compile(
        tiny_separable(), example_input=torch.randn(1, 3, 16, 16), out=tmp_path / "fp32",
        tune_logs=False,
    )  # fmt: skip
    with pytest.raises(sepconv.SepconvError, match="for int8 artifacts"):
        sepconv.validate(art.path, layers=True)


def test_an_artifact_of_another_quantization_recipe_is_not_validated_against_this_one(
    collapsed_artifact,
):
    """The reference is rebuilt from the manifest by this sepconv's recipe: an artifact
    quantized by another (an older sepconv's) would be compared with scales it never had."""
    import json

    from sepconv.compiler.artifact import MANIFEST
    from sepconv.compiler.int8.ptq import RECIPE

    art, model = collapsed_artifact
    manifest = json.loads((art.path / MANIFEST).read_text())
    assert manifest["model"]["quantization"]["recipe"] == RECIPE
    manifest["model"]["quantization"]["recipe"] = RECIPE - 1
    (art.path / MANIFEST).write_text(json.dumps(manifest))
    try:
        with pytest.raises(sepconv.SepconvError, match="recompile it with this sepconv"):
            sepconv.validate(art.path, reference=model)
    finally:
        manifest["model"]["quantization"]["recipe"] = RECIPE
        (art.path / MANIFEST).write_text(json.dumps(manifest))
