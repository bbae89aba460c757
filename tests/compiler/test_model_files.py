"""Model files (.pt2 from torch.export.save, .onnx): loading, input shapes, the ONNX graph reaching
our separable operators, references (eager ep.module() / ONNX Runtime) and the manifest record."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from sepconv.cli import EXIT_ERROR, main
from sepconv.compiler.model_files import (
    canonicalize_onnx,
    from_exported_program,
    load_model_file,
    parse_input_shape,
)
from sepconv.errors import ImportFailure, ModelFileError
from tests.nets import tiny_separable

onnx = pytest.importorskip("onnx", reason="ONNX model files need the onnx package")
pytest.importorskip("onnxruntime", reason="the .onnx reference is ONNX Runtime")

SHAPE = (1, 3, 16, 16)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """tiny_separable as a static .pt2 and as an .onnx with a dynamic batch dimension."""
    root = tmp_path_factory.mktemp("model_files")
    model, x = tiny_separable(), torch.randn(SHAPE)
    torch.export.save(torch.export.export(model, (x,)), str(root / "tiny.pt2"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (x,), str(root / "tiny.onnx"), dynamo=False, opset_version=17,
            input_names=["input"], dynamic_axes={"input": {0: "N"}},
        )  # fmt: skip
    return root


def test_onnx_model_gets_fused_ops_and_validates_against_onnxruntime(files, tmp_path):
    import sepconv

    art = sepconv.compile(
        files / "tiny.onnx", out=tmp_path / "a", input_shape="1,3,16,16", validate=True
    )
    ops = art.manifest.build["sepconv_ops"]
    # dw 3×3 → ReLU6 (ONNX Clip) → pw 1×1 becomes one fused operator; the stem is a dense conv
    assert ops["fused_dw_pw"] == 1 and ops["dense"] == 1 and ops["left_to_tvm"] == 0
    v = art.manifest.validation
    assert v["passed"] and v["reference"].startswith("ONNX Runtime")
    rec = art.manifest.model
    assert rec["source"] == "file" and rec["format"] == "onnx"
    assert rec["sha256"] == load_model_file(files / "tiny.onnx", SHAPE).sha256
    assert rec["input_shape"] == [list(SHAPE)]


def test_canonicalize_onnx_turns_the_clip_kernels_into_relax_max_min(files):
    from tvm.relax.frontend.onnx import from_onnx

    from sepconv.compiler.passes import count_ops

    mod = from_onnx(onnx.load(str(files / "tiny.onnx")), shape_dict={"input": list(SHAPE)})
    before = count_ops(mod, "relax.call_tir")
    assert before >= 2  # the frontend's Clip: TE maximum and minimum kernels
    mod = canonicalize_onnx(mod)
    assert count_ops(mod, "relax.call_tir") == before - 2
    assert count_ops(mod, "relax.maximum") >= 1 and count_ops(mod, "relax.minimum") >= 1


def test_pt2_validates_later_from_the_manifest_and_refuses_a_changed_file(files, tmp_path, capsys):
    src = tmp_path / "tiny.pt2"
    src.write_bytes((files / "tiny.pt2").read_bytes())
    out = tmp_path / "b.sepconv"
    assert main(["compile", str(src), "-o", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["format"] == "pt2" and manifest["model"]["path"] == str(src)
    capsys.readouterr()
    assert main(["validate", str(out)]) == 0
    assert "PASS" in capsys.readouterr().out
    src.write_bytes(src.read_bytes() + b"\0")
    assert main(["validate", str(out)]) == EXIT_ERROR
    assert "changed since compilation" in capsys.readouterr().err
    src.unlink()
    assert main(["validate", str(out)]) == EXIT_ERROR
    assert "is gone" in capsys.readouterr().err


def test_dynamic_dimensions_need_an_input_shape(files, capsys):
    with pytest.raises(ModelFileError, match=r"dynamic dimensions \(\?,3,16,16\).*--input-shape"):
        load_model_file(files / "tiny.onnx")
    with pytest.raises(ModelFileError, match="does not fit"):
        load_model_file(files / "tiny.onnx", "1,3,32,16")
    assert load_model_file(files / "tiny.onnx", "2,3,16,16").inputs[0].shape == (2, 3, 16, 16)
    assert main(["compile", str(files / "tiny.onnx"), "-o", "/nonexistent/x"]) == EXIT_ERROR
    assert "--input-shape 1,3,224,224" in capsys.readouterr().err


def test_dynamic_pt2_is_specialised_to_the_input_shape():
    model = tiny_separable()
    batch = torch.export.Dim("batch", min=1, max=8)
    ep = torch.export.export(model, (torch.randn(2, 3, 16, 16),), dynamic_shapes=({0: batch},))
    with pytest.raises(ModelFileError, match="dynamic dimensions"):
        from_exported_program(ep)
    mf = from_exported_program(ep, (4, 3, 16, 16))
    graph = mf.import_graph()
    assert graph.inputs[0].shape == (4, 3, 16, 16) and graph.outputs[0].shape == (4, 10)


def test_parse_input_shape():
    assert parse_input_shape("1,3,224,224") == [(1, 3, 224, 224)]
    assert parse_input_shape("1x3x8x8;1,4") == [(1, 3, 8, 8), (1, 4)]
    assert parse_input_shape((1, 3, 8, 8)) == [(1, 3, 8, 8)]
    for bad in ("1,3,a,4", "1,0,2", ""):
        with pytest.raises(ModelFileError, match="positive integers"):
            parse_input_shape(bad)


def test_bad_files_give_clear_errors(files, tmp_path):
    (tmp_path / "notes.onnx").write_text("this is not a model\n")
    with pytest.raises(ModelFileError, match=r"notes.onnx is not a (readable|valid) ONNX model"):
        load_model_file(tmp_path / "notes.onnx")
    data = (files / "tiny.pt2").read_bytes()
    (tmp_path / "cut.pt2").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="not a readable ExportedProgram.*re-save"):
        load_model_file(tmp_path / "cut.pt2")
    data = (files / "tiny.onnx").read_bytes()
    (tmp_path / "cut.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="cut.onnx is not a (readable|valid) ONNX model"):
        load_model_file(tmp_path / "cut.onnx", SHAPE)
    with pytest.raises(ModelFileError, match="does not exist"):
        load_model_file(tmp_path / "missing.pt2")
    (tmp_path / "weights.bin").write_bytes(b"\x00" * 16)
    with pytest.raises(ModelFileError, match=r"reads \.pt2 files.*and \.onnx"):
        load_model_file(tmp_path / "weights.bin")


def test_an_onnx_op_tvm_lacks_is_named(tmp_path):
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Celu", ["x"], ["y"])],
        "celu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4])],
    )
    path = tmp_path / "celu.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    mf = load_model_file(path)
    with pytest.raises(ImportFailure, match=r"does not support the ONNX op\(s\) Celu.*\.pt2"):
        mf.import_graph()


def test_bench_an_onnx_file_against_onnxruntime(files, tmp_path):
    from sepconv.bench import run_bench

    report = run_bench(
        [str(files / "tiny.onnx")], "onnxruntime,torch", input_shape="1,3,16,16", runs=2,
        warmup=0, rounds=1, threads=1, settle_s=0, tune_logs=False, progress=False,
    )  # fmt: skip
    systems = report.models[0].systems
    assert systems["sepconv"].status == "ok" and systems["sepconv"].validation["passed"]
    assert (
        systems["onnxruntime"].status == "ok" and systems["onnxruntime"].info["exporter"] == "file"
    )
    assert systems["torch"].status == "unavailable" and "ONNX file" in systems["torch"].reason


def test_tune_a_model_file_from_the_cli_and_build_with_its_records(files, tmp_path, capsys):
    """`sepconv tune FILE` tunes the tasks `sepconv compile FILE` builds (same graph)."""
    import sepconv

    log = tmp_path / "log"
    assert main(["tune", str(files / "tiny.pt2"), "--trials", "4", "--tune-log", str(log),
                 "--tasks", "sepconv", "--confirm-rounds", "3"]) == 0  # fmt: skip
    assert "confirmed in 3 interleaved rounds" in capsys.readouterr().out
    art = sepconv.compile(files / "tiny.pt2", out=tmp_path / "t", tune_logs=[log])
    build = art.manifest.build  # each tuned task: its confirmed record, or our rules kept
    assert build["tasks_tuned"] + len(build.get("rules_confirmed", [])) >= 1, build
