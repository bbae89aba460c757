"""The artifact contract: round trip, refusal of damaged/foreign artifacts, atomic writes."""

import json
import shutil

import numpy as np
import pytest
import torch

import sepconv
from sepconv.compiler import artifact as A
from sepconv.errors import ArtifactError, DeviceError, InputError, SepconvError
from tests.nets import TinySeparable, tiny_separable
from tests.runtime_only import run_runtime_only


def _flip_byte(path, offset=-100):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_round_trip_numpy_and_torch(tiny_artifact):
    path, model = tiny_artifact
    compiled = sepconv.load(path)
    x = torch.randn(2, 3, 16, 16)
    ref = model(x).detach().numpy()
    y_np = compiled(x.numpy())
    y_t = compiled(x)
    assert isinstance(y_np, np.ndarray) and isinstance(y_t, torch.Tensor)
    assert np.abs(y_np - ref).max() <= 1e-4 * np.abs(ref).max() + 1e-5
    assert np.array_equal(y_t.numpy(), y_np)


def test_load_accepts_path_without_suffix(tiny_artifact):
    path, _ = tiny_artifact
    assert sepconv.load(str(path)[: -len(A.SUFFIX)]).path == path


def test_manifest_contents(tiny_artifact):
    path, model = tiny_artifact
    m = json.loads((path / A.MANIFEST).read_text())
    assert m["format"] == A.FORMAT_NAME and m["format_version"] == A.FORMAT_VERSION
    assert m["inputs"][0]["shape"] == [2, 3, 16, 16] and m["outputs"][0]["shape"] == [2, 10]
    assert set(m["files"]) == {A.LIBRARY, A.WEIGHTS}
    for name, digest in m["files"].items():
        assert A.sha256_file(path / name) == digest
    assert {"sepconv", "tvm", "torch"} <= set(m["versions"])
    assert m["target"]["triple"] == "x86_64-linux-gnu"
    assert m["build"]["tasks_total"] > 0 and m["build"]["tasks_tuned"] == 0


def test_weights_are_not_pickled(tiny_artifact):
    path, _ = tiny_artifact
    from safetensors.numpy import load_file

    weights = load_file(str(path / A.WEIGHTS))  # safetensors cannot carry code
    assert len(weights) == len(json.loads((path / A.MANIFEST).read_text())["weight_names"])


@pytest.mark.parametrize("name", [A.LIBRARY, A.WEIGHTS, A.MANIFEST])
def test_missing_file_is_refused(artifact_copy, name):
    path, _ = artifact_copy
    (path / name).unlink()
    with pytest.raises(ArtifactError, match="missing|not a sepconv artifact"):
        sepconv.load(path)


@pytest.mark.parametrize("name", [A.LIBRARY, A.WEIGHTS])
def test_changed_byte_fails_checksum(artifact_copy, name):
    path, _ = artifact_copy
    _flip_byte(path / name)
    with pytest.raises(ArtifactError, match="checksum"):
        sepconv.load(path)


def test_unknown_format_version(artifact_copy):
    path, _ = artifact_copy
    m = json.loads((path / A.MANIFEST).read_text())
    m["format_version"] = 99
    (path / A.MANIFEST).write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match="format version 99"):
        sepconv.load(path)


def test_foreign_and_corrupted_manifest(artifact_copy):
    path, _ = artifact_copy
    (path / A.MANIFEST).write_text(json.dumps({"format": "onnx"}))
    with pytest.raises(ArtifactError, match="not a sepconv artifact"):
        sepconv.load(path)
    (path / A.MANIFEST).write_text("{not json")
    with pytest.raises(ArtifactError, match="corrupted"):
        sepconv.load(path)


def test_manifest_lying_about_architecture_is_caught(artifact_copy):
    path, _ = artifact_copy
    m = json.loads((path / A.MANIFEST).read_text())
    m["target"]["triple"] = "aarch64-linux-gnu"
    (path / A.MANIFEST).write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match="not a aarch64 shared library"):
        sepconv.load(path)


@pytest.mark.skipif(
    shutil.which("aarch64-linux-gnu-gcc") is None,
    reason="needs Debian's gcc-aarch64-linux-gnu to cross-compile",
)
def test_artifact_for_another_architecture_is_refused_with_a_way_to_run_it(tmp_path):
    art = sepconv.compile(
        tiny_separable(),
        target="aarch64-linux-gnu",
        out=tmp_path / "arm",
        example_input=torch.randn(1, 3, 16, 16),
    )
    assert art.manifest.target["triple"] == "aarch64-linux-gnu"
    with pytest.raises(ArtifactError, match="compiled for aarch64-linux-gnu.*RPC"):
        sepconv.load(art.path)


@pytest.fixture(scope="module")
def avx512_artifact(tmp_path_factory):
    """TinySeparable compiled (never run here) for skylake-avx512."""
    art = sepconv.compile(
        tiny_separable(),
        target="x86_64-linux-gnu",
        mcpu="skylake-avx512",
        out=tmp_path_factory.mktemp("avx512") / "tiny",
        example_input=torch.randn(1, 3, 16, 16),
    )
    assert "avx512f" in art.manifest.target["isa"]
    return art.path


@pytest.mark.parametrize("detection", ["llvm", "cpuinfo"])
def test_artifact_for_cpu_features_the_host_lacks_is_refused_before_it_runs(
    avx512_artifact, as_avx2_host, detection
):
    """An AVX-512 library on an AVX2 CPU would die with SIGILL; load() names the features."""
    as_avx2_host(llvm=detection == "llvm")
    with pytest.raises(ArtifactError, match=r"avx512f.*SIGILL.*--mcpu x86-64-v3"):
        sepconv.load(avx512_artifact)


def test_host_without_avx512_refuses_avx512_artifact_for_real(avx512_artifact):
    from sepconv.targets.host import missing_isa_features

    if not missing_isa_features(["avx512f"]):
        pytest.skip("this host has AVX-512 (the refusal is tested with a simulated AVX2 host)")
    with pytest.raises(ArtifactError, match="avx512f"):
        sepconv.load(avx512_artifact)


def test_artifact_without_full_isa_record_is_checked_by_its_features(artifact_copy, as_avx2_host):
    """Artifacts written before ``target.isa`` existed carry ``features`` only."""
    path, _ = artifact_copy
    m = json.loads((path / A.MANIFEST).read_text())
    del m["target"]["isa"]
    m["target"]["features"] = m["target"]["features"] + ["avx512f"]
    (path / A.MANIFEST).write_text(json.dumps(m))
    as_avx2_host()
    with pytest.raises(ArtifactError, match="avx512f"):
        sepconv.load(path)


def test_cpu_artifact_on_cuda_device_is_refused(tiny_artifact):
    with pytest.raises(DeviceError, match="device='cpu'"):
        sepconv.load(tiny_artifact[0], device="cuda")


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros((1, 3, 16, 16), np.float32), "shape"),
        (np.zeros((2, 3, 16), np.float32), "rank"),
        (np.zeros((2, 3, 16, 16), np.float64), "float32"),
        ([[1.0]], "numpy array or torch tensor"),
    ],
)
def test_wrong_input_is_refused(tiny_artifact, bad, match):
    compiled = sepconv.load(tiny_artifact[0])
    with pytest.raises(InputError, match=match):
        compiled(bad)


def test_wrong_number_of_inputs(tiny_artifact):
    compiled = sepconv.load(tiny_artifact[0])
    x = np.zeros((2, 3, 16, 16), np.float32)
    with pytest.raises(InputError, match="takes 1 input"):
        compiled(x, x)


def test_existing_output_needs_force(tiny_artifact, tmp_path):
    out = tmp_path / "again"
    model, x = tiny_separable(), torch.randn(1, 3, 16, 16)
    sepconv.compile(model, out=out, example_input=x)
    with pytest.raises(ArtifactError, match="--force"):
        sepconv.compile(model, out=out, example_input=x)
    before = A.sha256_file(A.artifact_path(out) / A.MANIFEST)
    sepconv.compile(model, out=out, example_input=torch.randn(2, 3, 16, 16), force=True)
    assert A.sha256_file(A.artifact_path(out) / A.MANIFEST) != before
    assert sepconv.load(out).inputs[0].shape == (2, 3, 16, 16)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again.sepconv"]  # no temp left


def test_failed_compile_leaves_nothing(tmp_path, monkeypatch):
    from sepconv.targets import TargetSpec

    def broken_export(self, executable, path):
        raise OSError("disk full")

    monkeypatch.setattr(TargetSpec, "export_library", broken_export)
    with pytest.raises(OSError):
        sepconv.compile(tiny_separable(), out=tmp_path / "x", example_input=torch.randn(1, 3, 8, 8))
    assert list(tmp_path.iterdir()) == []


def test_failed_force_recompile_keeps_the_old_artifact(tmp_path, monkeypatch):
    out = tmp_path / "keep"
    sepconv.compile(tiny_separable(), out=out, example_input=torch.randn(1, 3, 8, 8))
    from sepconv.targets import TargetSpec

    monkeypatch.setattr(
        TargetSpec, "export_library", lambda self, e, p: (_ for _ in ()).throw(OSError("boom"))
    )
    with pytest.raises(OSError):
        sepconv.compile(
            tiny_separable(), out=out, example_input=torch.randn(1, 3, 8, 8), force=True
        )
    sepconv.load(out)  # the earlier artifact is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.sepconv"]


def test_module_without_example_input_is_refused():
    with pytest.raises(SepconvError, match="example input"):
        sepconv.compile(TinySeparable())


def test_loads_and_runs_with_the_tvm_runtime_alone(tiny_artifact, tmp_path):
    """A deployment machine needs numpy, safetensors and the TVM runtime: no TVM compiler
    library, no PyTorch. Same outputs as the full install's load."""
    path, model = tiny_artifact
    x = np.random.default_rng(3).standard_normal((2, 3, 16, 16)).astype("float32")
    np.save(tmp_path / "x.npy", x)
    result = run_runtime_only(
        f"""
        import json, sys
        import numpy as np
        import tvm, sepconv
        m = sepconv.load({str(path)!r})
        y = m(np.load({str(tmp_path / "x.npy")!r}))
        np.save({str(tmp_path / "y.npy")!r}, y)
        print(json.dumps({{"runtime_only": tvm.base._RUNTIME_ONLY,
                          "compiler_loaded": "tvm_compiler" in tvm.base._LOADED_LIBS,
                          "torch": "torch" in sys.modules}}))
        """,
        tmp_path,
    )
    assert result == {"runtime_only": True, "compiler_loaded": False, "torch": False}
    expected = sepconv.load(path)(x)
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), expected)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    assert np.abs(expected - ref).max() <= 1e-4 * np.abs(ref).max() + 1e-5
