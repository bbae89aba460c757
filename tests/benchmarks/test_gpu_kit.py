"""The GPU kit (benchmarks/gpu_kit.py): what travels to a GPU machine without TVM's compiler must
be enough there — the staged TVM runtime runs an artifact, and each entry's reference is eager
PyTorch on inputs the GPU machine regenerates and checks."""

from __future__ import annotations

import json
import tarfile

import numpy as np
import pytest
import torch

from benchmarks import gpu_kit
from sepconv.compiler.artifact import read_manifest
from sepconv.targets import find_nvcc
from tests.runtime_only import run_runtime_only


def test_staged_runtime_runs_an_artifact_without_the_compiler(tiny_artifact, tmp_path):
    import sepconv

    tarball = gpu_kit.stage_tvm_runtime(tmp_path / "runtime")
    with tarfile.open(tarball) as tar:
        names = tar.getnames()
        libs = {n.rsplit("/", 1)[-1] for n in names if n.endswith(".so")}
        assert libs == set(gpu_kit.RUNTIME_LIBS)
        assert not any("/3rdparty/" in n for n in names)
        tar.extractall(tmp_path / "site", filter="data")
    assert tarball.stat().st_size < 10 * 2**20  # the device's carry limit is 64 MiB in all
    path, _ = tiny_artifact
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype("float32")
    np.save(tmp_path / "x.npy", x)
    result = run_runtime_only(
        f"""
        import json
        import numpy as np
        import tvm, sepconv
        y = sepconv.load({str(path)!r})(np.load({str(tmp_path / "x.npy")!r}))
        np.save({str(tmp_path / "y.npy")!r}, y)
        print(json.dumps({{"tvm": tvm.__file__, "runtime_only": tvm.base._RUNTIME_ONLY}}))
        """,
        tmp_path,
        site=tmp_path / "site",
    )
    assert result["tvm"].startswith(str(tmp_path / "site")) and result["runtime_only"]
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), sepconv.load(path)(x))


@pytest.mark.skipif(find_nvcc() is None, reason="nvcc (CUDA toolkit) not installed")
def test_entry_carries_artifact_weights_and_checked_references(tmp_path):
    pytest.importorskip("triton")
    from sepconv.compiler.validation import seeded_inputs
    from sepconv.models import get_model

    entry = gpu_kit.Entry("mobilenet_v2:0.35", resolution=32)
    kit_dir = tmp_path / "kit"
    record = gpu_kit.build_entry(entry, kit_dir, "sm_90")
    (kit_dir / gpu_kit.INDEX).write_text(json.dumps({"entries": [record]}))
    assert not (kit_dir / record["artifact"] / "weights.safetensors").exists()  # pooled

    kit = gpu_kit.Kit(kit_dir)  # puts the weights back
    _, manifest = read_manifest(kit.artifact(record))  # checksums verify
    assert manifest.target["cuda_arch"] == "sm_90"
    cases = kit.cases(record, manifest.inputs)
    assert [seed for seed, _, _ in cases] == list(gpu_kit.SEEDS)
    model = get_model(entry.model_ref).module.eval()
    for seed, x, ref in cases:
        np.testing.assert_array_equal(x, seeded_inputs(manifest.inputs, seed)[0])
        with torch.no_grad():
            np.testing.assert_array_equal(ref, model(torch.from_numpy(x)).numpy())

    record["input_sha"]["1"] = "0" * 16  # another machine's generator
    with pytest.raises(RuntimeError, match="seeded input 1 differs"):
        kit.cases(record, manifest.inputs)


def test_what_the_gpu_run_imports_needs_only_tvms_runtime(tmp_path):
    """The GPU machine has TVM's runtime only: the Triton kernels, the kit and the benchmark
    must import there (the rule lists, which need TVM's compiler, stay unimported)."""
    pytest.importorskip("triton")
    result = run_runtime_only(
        f"""
        import json, sys
        sys.path.insert(0, {str(gpu_kit.ROOT)!r})  # as the device script's PYTHONPATH
        from sepconv.schedules import triton_depthwise, triton_fused_dw_pw, triton_se
        from benchmarks import gpu_kit, gpu_layers
        import tests.gpu.test_cuda_gpu
        print(json.dumps({{"rules": "sepconv.schedules.rule_list" in sys.modules,
                          "compiler": "tvm_compiler" in __import__("tvm").base._LOADED_LIBS}}))
        """,
        tmp_path,
        block_torch=False,
    )
    assert result == {"rules": False, "compiler": False}


def test_every_part_names_distinct_entries():
    ids = [e.id for entries in gpu_kit.PARTS.values() for e in entries]
    assert len(ids) == len(set(ids))
    assert {e.model for e in gpu_kit.PARTS["core"]} >= {"mobilenet_v2"}
