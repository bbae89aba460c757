"""Load an artifact and run it: ``CompiledModel(x)`` with numpy or torch in, same kind out."""

from __future__ import annotations

import logging
import os
import statistics
from pathlib import Path

import numpy as np

from sepconv.compiler.artifact import (
    LIBRARY,
    WEIGHTS,
    Manifest,
    check_runs_here,
    read_manifest,
)
from sepconv.errors import ArtifactError, DeviceError, InputError

log = logging.getLogger(__name__)


def _tvm_device(kind: str):
    import tvm

    if kind == "cpu":
        return tvm.cpu(0)
    if kind == "cuda":
        _load_cuda_runtime()
        dev = tvm.cuda(0)
        if not dev.exist:
            raise DeviceError(
                "this artifact runs on a CUDA GPU but none is present on this machine "
                "(tvm.cuda(0) does not exist); run it on a machine with an NVIDIA GPU and driver"
            )
        return dev
    raise DeviceError(f"unknown device {kind!r}; use 'cpu' or 'cuda'")


def _load_cuda_runtime() -> str | None:
    """The full TVM loads its CUDA runtime (``libtvm_runtime_cuda.so``: device API, module
    loader, CUDA-graph builtins) when it is imported; the runtime-only TVM
    (``TVM_USE_RUNTIME_LIB=1``, or no compiler library installed) does not, so load it here.
    It links the NVIDIA driver and ``libcudart.so.13``; where the CUDA runtime is installed but
    not on the loader's path (pip's nvidia packages, /usr/local/cuda) it is preloaded from there.
    Returns why it does not load (None when it does): without a driver the device check that
    follows then says there is no GPU."""
    import tvm_ffi

    if tvm_ffi.get_global_func("ffi.Module.load_from_bytes.cuda", allow_missing=True):
        return None
    from tvm.base import _LOADED_LIBS
    from tvm_ffi.libinfo import load_lib_ctypes

    runtime_dir = Path(_LOADED_LIBS["tvm_runtime"]._name).resolve().parent

    def load():
        _LOADED_LIBS["tvm_runtime_cuda"] = load_lib_ctypes(
            package="tvm", target_name="tvm_runtime_cuda", mode="RTLD_LOCAL",
            extra_lib_paths=[runtime_dir],
        )  # fmt: skip

    try:
        load()
        return None
    except (OSError, RuntimeError) as exc:
        error = str(exc)
    if "libcudart" in error and _preload_cudart():
        try:
            load()
            return None
        except (OSError, RuntimeError) as exc:
            error = str(exc)
    log.debug("TVM's CUDA runtime does not load here: %s", error)
    return error


def _preload_cudart() -> bool:
    """Load ``libcudart.so.13`` globally from where CUDA installs put it; True if one loaded."""
    import ctypes
    import glob
    import sys

    roots = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    candidates = [f"{r}/{sub}/libcudart.so.13" for r in roots if r
                  for sub in ("lib64", "lib", "targets/x86_64-linux/lib")]  # fmt: skip
    for site in sys.path:  # pip's nvidia-cuda-runtime (CUDA builds of PyTorch)
        candidates += glob.glob(f"{site}/nvidia/cu13/lib/libcudart.so.13")
        candidates += glob.glob(f"{site}/nvidia/cuda_runtime/lib/libcudart.so.13")
    for path in candidates:
        if os.path.isfile(path):
            try:
                ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
                return True
            except OSError:
                continue
    return False


def _prepare_cuda_load(manifest: Manifest) -> None:
    """The library's kernels reach the driver through ``tvm_callback_cuda_compile``
    (:mod:`sepconv.targets.cuda_embed`): ready binaries for the GPU need only that hook; kernels
    stored as CUDA C++ (a build without nvcc, or an older artifact) also need TVM's compiler
    (nvcc or NVRTC) here."""
    from sepconv.targets.cuda_embed import install_compile_hook

    if manifest.build.get("cuda_kernels") != "binary":
        from sepconv.targets.triple import configure_cuda_jit

        configure_cuda_jit(required=True)
    install_compile_hook()


class CompiledModel:
    """A compiled model ready to run. Build one with :func:`sepconv.load`."""

    def __init__(self, root: Path, manifest: Manifest, device: str | None = None):
        import tvm
        from safetensors.numpy import load_file
        from tvm.runtime.vm import VirtualMachine

        self.path = root
        self.manifest = manifest
        family = manifest.target.get("family", "x86")
        default_device = "cuda" if family == "cuda" else "cpu"
        self.device = device or default_device
        if family != "cuda" and self.device != "cpu":
            raise DeviceError(f"{root} was compiled for the CPU; load it with device='cpu'")
        if family == "cuda" and self.device != "cuda":
            raise DeviceError(f"{root} was compiled for CUDA; load it with device='cuda'")
        check_runs_here(root, manifest)
        self._dev = _tvm_device(self.device)
        if family == "cuda":
            _prepare_cuda_load(manifest)
        try:
            lib = tvm.runtime.load_module(str(root / LIBRARY))
        except Exception as exc:
            raise ArtifactError(
                f"cannot load {root / LIBRARY}: {exc}; recompile the model"
            ) from exc
        self._vm = VirtualMachine(lib, self._dev)
        weights = load_file(str(root / WEIGHTS))
        missing = [n for n in manifest.weight_names if n not in weights]
        if missing:
            raise ArtifactError(f"{root / WEIGHTS} lacks weights {missing[:3]}; recompile")
        self._params = [tvm.runtime.tensor(weights[n], self._dev) for n in manifest.weight_names]

    @property
    def inputs(self):
        return self.manifest.inputs

    @property
    def outputs(self):
        return self.manifest.outputs

    def __repr__(self) -> str:
        sig = ", ".join(f"{t.name}: {t.dtype}{list(t.shape)}" for t in self.inputs)
        return (
            f"CompiledModel({self.manifest.model.get('name')!r}, {sig}, "
            f"target={self.manifest.target['triple']!r}, device={self.device!r})"
        )

    def _check(self, args) -> list[np.ndarray]:
        if len(args) != len(self.inputs):
            raise InputError(
                f"the model takes {len(self.inputs)} input(s) "
                f"({', '.join(t.name for t in self.inputs)}), got {len(args)}"
            )
        arrays = []
        for arg, spec in zip(args, self.inputs):
            if hasattr(arg, "detach") and hasattr(arg, "cpu"):  # torch.Tensor
                arg = arg.detach().cpu().numpy()
            if not isinstance(arg, np.ndarray):
                raise InputError(
                    f"input {spec.name!r} must be a numpy array or torch tensor, got "
                    f"{type(arg).__name__}"
                )
            if arg.ndim != len(spec.shape):
                raise InputError(
                    f"input {spec.name!r} must have rank {len(spec.shape)} {tuple(spec.shape)}, "
                    f"got rank {arg.ndim} {tuple(arg.shape)}"
                )
            if tuple(arg.shape) != tuple(spec.shape):
                raise InputError(
                    f"input {spec.name!r} must have shape {tuple(spec.shape)}, got "
                    f"{tuple(arg.shape)}; the artifact was compiled for that shape — recompile "
                    "with --batch/--resolution (or another example input) for a different one"
                )
            if str(arg.dtype) != spec.dtype:
                raise InputError(
                    f"input {spec.name!r} must be {spec.dtype}, got {arg.dtype}; convert it "
                    f"first (e.g. x.astype(np.{spec.dtype}) or x.to(torch.{spec.dtype}))"
                )
            arrays.append(np.ascontiguousarray(arg))
        return arrays

    def _run(self, arrays: list[np.ndarray]):
        import tvm

        tensors = [tvm.runtime.tensor(a, self._dev) for a in arrays]
        out = self._vm["main"](*tensors, *self._params)
        return out

    def __call__(self, *args):
        torch_in = any(hasattr(a, "detach") and hasattr(a, "cpu") for a in args)
        out = self._run(self._check(args))
        results = [o.numpy() for o in out] if not hasattr(out, "numpy") else [out.numpy()]
        if torch_in:
            import torch

            results = [torch.from_numpy(r) for r in results]
        return results[0] if len(results) == 1 else tuple(results)

    def time(self, *args, warmup: int = 10, runs: int = 50) -> dict:
        """Latency in ms over ``runs`` calls after ``warmup`` (TVM's time evaluator, on device)."""
        import tvm

        tensors = [tvm.runtime.tensor(a, self._dev) for a in self._check(args)]
        self._vm.set_input("main", *tensors, *self._params)
        evaluator = self._vm.time_evaluator(
            "invoke_stateful", self._dev, number=1, repeat=runs, min_repeat_ms=0
        )
        for _ in range(warmup):
            self._vm.invoke_stateful("main")
        samples = [s * 1e3 for s in evaluator("main").results]
        samples.sort()
        return {
            "median_ms": statistics.median(samples),
            "p10_ms": samples[int(0.1 * (len(samples) - 1))],
            "p90_ms": samples[int(0.9 * (len(samples) - 1))],
            "runs": len(samples),
            "threads": int(os.environ.get("TVM_NUM_THREADS", "0")) or None,
        }


def load(path: str | os.PathLike, device: str | None = None) -> CompiledModel:
    """Verify an artifact (manifest, checksums, architecture) and make it callable."""
    root, manifest = read_manifest(path)
    return CompiledModel(root, manifest, device)
