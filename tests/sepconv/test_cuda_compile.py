"""The CUDA target without a GPU: cross-compiles an artifact whose library embeds the Triton
kernels, every TVM kernel is scheduled and within the GPU's limits, and loading says plainly
that there is no GPU. (Running it is the ``gpu`` tier: tests/gpu/.)"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from sepconv.cli import main
from sepconv.errors import DeviceError
from sepconv.targets import find_nvcc
from tests.runtime_only import no_device_driver, run_runtime_only

triton = pytest.importorskip("triton")

pytestmark = [
    pytest.mark.skipif(find_nvcc() is None, reason="nvcc (CUDA toolkit) not installed"),
    pytest.mark.skipif(
        triton.knobs.runtime.interpret, reason="TRITON_INTERPRET=1: kernels cannot be compiled"
    ),
]

SMALL = "mobilenet_v2:0.35@32"


@pytest.fixture(scope="module")
def cuda_artifact(tmp_path_factory):
    out = tmp_path_factory.mktemp("cuda") / "mbv2.sepconv"
    argv = ["compile", SMALL, "--target", "cuda", "--cuda-arch", "sm_90", "-o", str(out)]
    assert main(argv) == 0
    return out


def test_artifact_is_written_for_the_gpu(cuda_artifact):
    manifest = json.loads((cuda_artifact / "manifest.json").read_text())
    target = manifest["target"]
    assert (target["triple"], target["family"], target["key"]) == ("cuda", "cuda", "cuda-sm90")
    assert target["cuda_arch"] == "sm_90" and target["host_arch"] == "x86_64"
    build = manifest["build"]
    assert build["triton_ops"]["fused_dw_pw"] == 17  # every inverted-residual block
    assert build["triton_ops"]["left_to_tvm"] == 0
    assert build["cuda_graph"] is True  # batch 1


def test_library_embeds_every_triton_kernel(cuda_artifact):
    manifest = json.loads((cuda_artifact / "manifest.json").read_text())
    data = (cuda_artifact / "model.so").read_bytes()
    names = set(re.findall(rb"// name (sepconv_\w+) arch sm_90", data))
    assert len(names) == manifest["build"]["triton_ops"]["kernels"] >= 1
    # The host code launches them by name.
    for name in names:
        assert data.count(name) >= 2


def _embedded(artifact) -> list[dict]:
    from sepconv.targets import cuda_embed

    text = (artifact / "model.so").read_bytes().decode("latin-1")
    pattern = re.escape(cuda_embed.MARKER) + r"\n// name .*\n(?:/\* [\w.]+ [A-Za-z0-9+/=]+ \*/\n)+"
    return [cuda_embed.decode(code) for code in re.findall(pattern, text)]


def test_every_kernel_is_a_binary_for_the_arch(cuda_artifact):
    """nvcc compiled TVM's kernels at build time: the library carries SASS for sm_90 (+ PTX),
    so the GPU machine needs no CUDA compiler and spends no time compiling at load."""
    manifest = json.loads((cuda_artifact / "manifest.json").read_text())
    assert manifest["build"]["cuda_kernels"] == "binary"
    embedded = _embedded(cuda_artifact)
    triton_kernels = [d for d in embedded if d["cubin"] is not None]
    tvm_modules = [d for d in embedded if d["fatbin"] is not None]
    assert len(triton_kernels) == manifest["build"]["triton_ops"]["kernels"]
    assert len(tvm_modules) == 1 and len(embedded) == len(triton_kernels) + 1
    assert all(d["arch"] == "sm_90" for d in embedded)
    fatbin, source = tvm_modules[0]["fatbin"], tvm_modules[0]["source"]
    kernels = re.findall(r"__global__ void (?:__launch_bounds__\(\d+\) )?(\w+)\(", source)
    assert len(kernels) >= 10
    assert b"\x7fELF" in fatbin  # the SASS
    assert [k for k in kernels if k.encode() not in fatbin] == []
    for d in triton_kernels:
        assert d["cubin"][:4] == b"\x7fELF" and d["name"].encode() in d["cubin"]


def test_loads_with_the_tvm_runtime_alone_up_to_the_driver(cuda_artifact, tmp_path):
    """What a GPU machine with only the TVM runtime does, run here against a stand-in driver
    that has no device: TVM's CUDA runtime loads, the library's CUDA modules deserialize through
    our hook as binaries (no nvcc on PATH, no TVM compiler), and load then says there is no GPU."""
    driver = no_device_driver(tmp_path)
    result = run_runtime_only(
        f"""
        import json
        import tvm, tvm_ffi
        from sepconv.compiler import runtime
        from sepconv.errors import DeviceError
        from sepconv.targets import cuda_embed

        runtime._load_cuda_runtime()
        loader = tvm_ffi.get_global_func("ffi.Module.load_from_bytes.cuda", allow_missing=True)
        handed = []
        real_binary_for = cuda_embed.binary_for
        def spy(decoded, local):
            out = real_binary_for(decoded, local)
            handed.append([decoded["name"], "fatbin" if out == decoded["fatbin"] else
                           "cubin" if out == decoded["cubin"] else "other"])
            return out
        cuda_embed.binary_for = spy
        cuda_embed.install_compile_hook()
        lib = tvm.runtime.load_module({str(cuda_artifact / "model.so")!r})
        try:
            import sepconv
            sepconv.load({str(cuda_artifact)!r})
            error = None
        except DeviceError as exc:
            error = str(exc)
        print(json.dumps({{"loader": loader is not None, "exist": tvm.cuda(0).exist,
                          "handed": handed, "error": error,
                          "compiler": "tvm_compiler" in tvm.base._LOADED_LIBS}}))
        """,
        tmp_path,
        driver_stub=driver,
    )
    assert result["loader"] and not result["exist"] and not result["compiler"]
    kinds = sorted(kind for _, kind in result["handed"])
    assert kinds == ["cubin"] * (len(_embedded(cuda_artifact)) - 1) + ["fatbin"]
    assert "CUDA GPU but none is present" in result["error"]


def test_loading_without_a_gpu_says_so(cuda_artifact):
    import sepconv

    with pytest.raises(DeviceError, match="CUDA GPU but none is present"):
        sepconv.load(cuda_artifact, device="cuda")
    with pytest.raises(DeviceError, match="CUDA GPU but none is present"):
        sepconv.load(cuda_artifact)  # a CUDA artifact defaults to device="cuda"


def test_cuda_artifact_is_refused_on_cpu(cuda_artifact):
    import sepconv

    with pytest.raises(DeviceError, match="device='cuda'"):
        sepconv.load(cuda_artifact, device="cpu")


@pytest.fixture(scope="module")
def tiny_graph():
    from sepconv.compiler.importer import import_module
    from tests.nets import tiny_separable

    return import_module(tiny_separable(), (torch.randn(1, 3, 16, 16),))


@pytest.fixture(scope="module")
def cuda_target():
    from sepconv.targets import resolve_target

    return resolve_target("cuda", cuda_arch="sm_90").target


def test_every_function_is_scheduled_and_verified(tiny_graph, cuda_target):
    from sepconv.compiler.build import fuse, prepare_graph, schedule
    from sepconv.schedules import unscheduled_functions
    from sepconv.schedules.gpu import verify_gpu_kernels

    mod, _, _ = prepare_graph(tiny_graph, cuda_target)
    mod, _ = schedule(fuse(mod, cuda_target), cuda_target)
    assert unscheduled_functions(mod) == []
    assert verify_gpu_kernels(mod, cuda_target) == []


def test_verification_catches_an_unbound_kernel(tiny_graph, cuda_target):
    """Without thread bindings TVM compiles a GPU function as host code that would read GPU
    memory from the CPU; the verification names every such function."""
    import tvm

    from sepconv.compiler.build import fuse, prepare_graph
    from sepconv.schedules.gpu import verify_gpu_kernels

    mod, _, _ = prepare_graph(tiny_graph, cuda_target, sepconv_ops=False)
    fused = fuse(mod, cuda_target)
    problems = verify_gpu_kernels(fused, cuda_target)
    names = [gv.name_hint for gv, f in fused.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]
    assert len(problems) == len(names) > 0
    assert all("no thread-bound GPU kernel" in p for p in problems)


@pytest.mark.parametrize(
    "arch, kib", [("sm_90", 227), ("sm_80", 163), ("sm_75", 64), ("sm_89", 99)]
)
def test_shared_memory_limit_is_the_architectures(arch, kib):
    """TVM's runtime opts every kernel into the architecture's full shared memory; checking
    against the 48 KiB default refused dlight's fp16 tensor-core GEMMs (MobileNetV2's expansion
    convs) although they run."""
    from sepconv.schedules.gpu import gpu_constraints
    from sepconv.targets import resolve_target

    target = resolve_target("cuda", cuda_arch=arch).target
    assert gpu_constraints(target)["max_shared_memory_per_block"] == kib * 1024


def test_fp16_pointwise_conv_on_tensor_cores_is_accepted(cuda_target):
    """MobileNetV2's 96→576 expansion at 14×14 in fp16: dlight's Matmul rule schedules it on
    WMMA with over 48 KiB of dynamic shared memory — within sm_90's limit, and nvcc builds it."""
    import tvm
    from tvm import relax
    from tvm.script import relax as R

    from sepconv.compiler.build import build
    from sepconv.compiler.importer import ImportedGraph, TensorInfo

    @tvm.script.ir_module
    class Expansion:
        @R.function
        def main(x: R.Tensor((1, 96, 14, 14), "float32"), w: R.Tensor((576, 96, 1, 1), "float32")):
            with R.dataflow():
                y = R.nn.relu(R.nn.conv2d(x, w))
                R.output(y)
            return y

    rng = np.random.default_rng(0)
    mod = relax.transform.BindParams(
        "main", {"w": rng.standard_normal((576, 96, 1, 1)).astype("float32")}
    )(Expansion)
    graph = ImportedGraph(
        mod,
        [TensorInfo("x", (1, 96, 14, 14), "float32")],
        [TensorInfo("y", (1, 576, 14, 14), "float32")],
    )
    result = build(graph, cuda_target, precision="fp16")
    assert result.stats.cuda_kernels == ("binary" if find_nvcc() else "source")


def test_gpu_rules_decline_instead_of_raising(tiny_graph, cuda_target):
    from sepconv.compiler.build import fuse, prepare_graph
    from sepconv.schedules import apply_schedules

    mod, _, _ = prepare_graph(tiny_graph, cuda_target, sepconv_ops=False)
    report = {}
    apply_schedules(fuse(mod, cuda_target), cuda_target, report=report)
    assert set(report.values()) <= {"Matmul", "GEMV", "Reduction", "GeneralReduction", "Fallback"}
    assert any("conv2d" in name for name in report)


@pytest.mark.parametrize(
    "batch, cuda_graph, expected",
    [(1, None, True), (2, None, False), (1, False, False), (2, True, True)],
)
def test_cuda_graph_default_and_switch(batch, cuda_graph, expected, cuda_target):
    from sepconv.compiler.build import build
    from sepconv.compiler.importer import import_module
    from tests.nets import tiny_separable

    graph = import_module(tiny_separable(), (torch.randn(batch, 3, 16, 16),))
    result = build(graph, cuda_target, cuda_graph=cuda_graph)
    assert result.stats.cuda_graph is expected
    assert ("vm.builtin.cuda_graph.run_or_capture" in result.executable.as_text()) is expected


def test_fp16_build_keeps_a_float32_interface(tiny_graph, cuda_target):
    from sepconv.compiler.build import build
    from sepconv.schedules.triton_embed import embedded_kernels

    result = build(tiny_graph, cuda_target, precision="fp16")
    tri = result.stats.triton_ops
    assert tri["fused_dw_pw"] + tri["depthwise"] == 1 and tri["kernels"] == 1
    assert {str(w.dtype) for w in result.weights.values()} == {"float16"}
    assert all(t.dtype == "float32" for t in tiny_graph.inputs + tiny_graph.outputs)
    kernel = next(k for k in embedded_kernels().values() if ".f16" in k.ptx or ".b16" in k.ptx)
    assert kernel.arch == "sm_90"


def test_precision_is_refused_for_cpu_targets(tiny_graph):
    from sepconv.compiler.build import build
    from sepconv.errors import CompileError
    from sepconv.targets import resolve_target

    with pytest.raises(CompileError, match="CUDA"):
        build(tiny_graph, resolve_target("x86_64-linux-gnu").target, precision="fp16")
