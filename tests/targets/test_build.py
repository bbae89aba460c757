"""A tiny TIR function compiles and exports for every triple; x86 runs here."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import tvm
from tvm import te

from sepconv import targets
from sepconv.errors import CompileError

C, H, T = targets.cuda_toolchain, targets.host, targets.triple

EM_X86_64, EM_AARCH64 = 62, 183
N = 1000  # not a multiple of any vector width: the tail must be right too

needs_nvcc = pytest.mark.skipif(
    targets.find_nvcc() is None, reason="nvcc (CUDA toolkit) not installed"
)


def _elf_machine(path) -> int:
    head = open(path, "rb").read(20)
    assert head[:4] == b"\x7fELF", "not an ELF file"
    return int.from_bytes(head[18:20], "little")


def _vector_add():
    a = te.placeholder((N,), name="A")
    b = te.placeholder((N,), name="B")
    c = te.compute((N,), lambda i: a[i] * 2.0 + b[i], name="C")
    return tvm.IRModule({"main": te.create_prim_func([a, b, c])})


def _cpu_build(spec):
    sch = tvm.s_tir.Schedule(_vector_add())
    (i,) = sch.get_loops(sch.get_sblock("C"))
    lanes = max(spec.vector_bits // 32, 4)
    _, inner = sch.split(i, [None, lanes])
    sch.vectorize(inner)
    return tvm.compile(sch.mod, target=spec.target)


def _check_runs(path):
    lib = tvm.runtime.load_module(str(path))
    a = np.random.default_rng(0).standard_normal(N).astype("float32")
    b = np.random.default_rng(1).standard_normal(N).astype("float32")
    dev = tvm.cpu()
    c = tvm.runtime.tensor(np.zeros(N, "float32"), dev)
    lib["main"](tvm.runtime.tensor(a, dev), tvm.runtime.tensor(b, dev), c)
    np.testing.assert_allclose(c.numpy(), a * 2 + b, rtol=1e-6)


@pytest.mark.skipif(H.host_arch() != "x86_64", reason="needs an x86_64 host")
@pytest.mark.parametrize("mcpu", [None, "x86-64-v3"])
def test_x86_library_runs_here(tmp_path, mcpu):
    spec = targets.resolve_target("x86_64-linux-gnu", mcpu=mcpu)
    if targets.missing_on_host(spec.target):
        pytest.skip(f"{mcpu} code needs {targets.missing_on_host(spec.target)}, this host lacks it")
    assert spec.is_host
    path = tmp_path / "vadd.so"
    spec.export_library(_cpu_build(spec), path)
    assert _elf_machine(path) == EM_X86_64
    _check_runs(path)


@pytest.mark.skipif(
    H.host_arch() != "aarch64" and shutil.which("aarch64-linux-gnu-gcc") is None,
    reason="cross compiler aarch64-linux-gnu-gcc not installed (apt-get install "
    "gcc-aarch64-linux-gnu)",
)
def test_aarch64_library_is_an_arm_elf(tmp_path):
    spec = targets.resolve_target("aarch64-linux-gnu", mcpu="cortex-a72")
    path = tmp_path / "vadd.so"
    spec.export_library(_cpu_build(spec), path)
    assert _elf_machine(path) == EM_AARCH64
    if H.host_arch() == "aarch64":
        _check_runs(path)


def test_missing_cross_compiler_names_the_package(tmp_path, monkeypatch):
    cross = "x86_64" if H.host_arch() == "aarch64" else "aarch64"
    spec = targets.resolve_target(
        f"{cross}-linux-gnu", mcpu="x86-64-v3" if cross == "x86_64" else None
    )
    real_which = shutil.which
    monkeypatch.setattr(
        T.shutil, "which", lambda name: None if name.startswith(cross) else real_which(name)
    )
    with pytest.raises(CompileError) as err:
        spec.export_library(_cpu_build(spec), tmp_path / "x.so")
    msg = str(err.value)
    assert f"{cross}-linux-gnu-gcc" in msg and "apt-get install" in msg
    assert T._CROSS_GCC_PACKAGE[cross] in msg
    assert not (tmp_path / "x.so").exists()


def _cuda_build(spec):
    from tvm.s_tir import dlight as dl

    with spec.target:
        mod = dl.ApplyDefaultSchedule(dl.gpu.Fallback())(_vector_add())
    return tvm.compile(mod, target=spec.target)


def test_cuda_builds_and_exports_without_a_gpu(tmp_path, monkeypatch):
    spec = targets.resolve_target("cuda", cuda_arch="sm_80")
    checked = []
    monkeypatch.setattr(C, "check_cuda_source", lambda src, arch: checked.append((src, arch)))
    ex = _cuda_build(spec)
    path = tmp_path / "vadd_cuda.so"
    spec.export_library(ex, path)
    assert _elf_machine(path) == (EM_AARCH64 if spec.host_arch == "aarch64" else EM_X86_64)
    if H.gpu_compute_capability() is None:
        # No CUDA runtime here: the kernels travel as CUDA C++ source, checked at export.
        assert len(checked) == 1 and checked[0][1] == "sm_80"
        assert "__global__" in checked[0][0] and "main_kernel" in checked[0][0]
        assert b"main_kernel" in path.read_bytes()


@needs_nvcc
def test_cuda_kernels_compile_with_nvcc_for_the_arch(tmp_path):
    spec = targets.resolve_target("cuda", cuda_arch="sm_90")
    ex = _cuda_build(spec)
    sources = C._cuda_source_modules(ex.mod)
    if not sources:
        pytest.skip("this TVM compiled the kernels already (CUDA runtime present)")
    C.check_cuda_source(sources[0], "sm_90")  # raises on failure
    spec.export_library(ex, tmp_path / "vadd_cuda.so")  # runs the same check


@needs_nvcc
def test_cuda_source_that_does_not_build_is_a_compile_error():
    with pytest.raises(CompileError, match="nvcc cannot build"):
        C.check_cuda_source('extern "C" __global__ void k() { undefined_thing(); }', "sm_90")
