"""Load an artifact and run it: ``CompiledModel(x)`` with numpy or torch in, same kind out.

One class whatever the device: this machine's CPU or CUDA GPU, or a TVM RPC device
(``rpc://HOST:PORT[/KEY]``, ``tracker://HOST:PORT/KEY``; :mod:`sepconv.targets.devices` connects).
A remote artifact's library is uploaded and its weights sent once, when the model loads::

    model = load("build/mbv2-arm", device="tracker://tracker.lab:9190/rpi4")
    y = model(x)                          # outputs fetched back as numpy (or torch)
    t = model.time(x, runs=50)            # {"median_ms", "p10_ms", "p90_ms", "runs", ...}
    model.close()                         # or: with load(...) as model: ...

Timings come from TVM's time evaluator where the code runs (the device, network excluded), as a
:class:`sepconv.timing.Timing` (:meth:`CompiledModel.timing`) or its dict
(:meth:`CompiledModel.time`).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sepconv.compiler.artifact import (
    LIBRARY,
    WEIGHTS,
    Manifest,
    check_runs_here,
    read_manifest,
)
from sepconv.errors import ArtifactError, DeviceError, InputError
from sepconv.timing import Timing

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
    raise DeviceError(
        f"unknown device {kind!r}; use 'cpu', 'cuda', rpc://HOST:PORT or tracker://HOST:PORT/KEY"
    )


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
        from sepconv.targets.cuda_toolchain import configure_cuda_jit

        configure_cuda_jit(required=True)
    install_compile_hook()


LOCAL_NAMES = ("local", "localhost", "host", "")
"""Device spellings that mean this machine (the artifact's own default device)."""


def _remote_device(device: Any):
    """The :class:`~sepconv.targets.devices.Device` ``device`` names when it is remote
    (``rpc://``, ``tracker://``, or a Device), else None (``cpu``, ``cuda``, ``local``, None)."""
    if device is None or (isinstance(device, str) and "://" not in device):
        return None
    from sepconv.targets.devices import parse_device

    parsed = parse_device(device)
    return None if parsed.is_local else parsed


def _last_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[-1][:300] if text else type(exc).__name__


def _content_named(library: Path, manifest) -> Path:
    """The library under a name made from its checksum, for ``dlopen``.

    ``dlopen`` hands back the library already loaded under the same path: an artifact rebuilt
    in place (``--force``) and loaded again in the same process would run the *old* code (seen:
    a MobileNetV1 rebuilt over a MobileNetV2 called with V2's weight count). A hard link (or a
    copy) named by the SHA-256 is a new name per content; equal content reuses it.
    """
    digest = (manifest.files or {}).get(LIBRARY)
    if not digest:
        return library
    cache = Path(tempfile.gettempdir()) / f"sepconv-libs-{os.getuid()}"
    cache.mkdir(mode=0o700, exist_ok=True)
    named = cache / f"{digest[:32]}{library.suffix}"
    if not named.exists():
        tmp = cache / f".{named.name}.{os.getpid()}"
        try:
            os.link(library, tmp)
        except OSError:
            shutil.copyfile(library, tmp)
        os.replace(tmp, named)
    return named


class CompiledModel:
    """A compiled model ready to run, here or on a remote device. Build one with
    :func:`sepconv.load` (``device=`` ``"cpu"``, ``"cuda"``, ``"rpc://HOST:PORT"`` or
    ``"tracker://HOST:PORT/KEY"``; default: the artifact's own, on this machine)."""

    def __init__(self, root: Path, manifest: Manifest, device: Any = None, session: Any = None):
        import tvm
        from safetensors.numpy import load_file
        from tvm.runtime.vm import VirtualMachine

        self.path = root
        self.manifest = manifest
        self._sess = None
        family = manifest.target.get("family", "x86")
        remote = self.remote = _remote_device(device)
        if remote is not None:
            self.device = str(remote)
            lib = self._load_remote(remote, session)
        else:
            if not isinstance(device, str) or device.strip().lower() in LOCAL_NAMES:
                device = None  # "local", Device("local"): the artifact's own device here
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
                lib = tvm.runtime.load_module(str(_content_named(root / LIBRARY, manifest)))
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

    def _load_remote(self, remote: Any, session: Any):
        """Upload the library to ``remote`` (an RPC session, opened unless given) and load it
        there; the architecture check is the device's (it fails to load a foreign library)."""
        from sepconv.targets.devices import connect

        if self.manifest.target.get("family") == "cuda":
            raise DeviceError(
                f"{self.path} is a CUDA artifact; running it over RPC is not supported yet — "
                "copy it to the GPU machine and use sepconv.load there"
            )
        self._sess = session if session is not None else connect(remote)
        remote_name = f"sepconv-{os.getpid()}-{id(self)}.so"
        try:
            self._sess.upload(str(self.path / LIBRARY), remote_name)
            lib = self._sess.load_module(remote_name)
        except Exception as exc:  # noqa: BLE001 - TVM raises plain errors
            raise DeviceError(
                f"{remote} could not load {self.path / LIBRARY} ({_last_line(exc)}); was "
                f"the artifact compiled for the device's architecture (it is "
                f"{self.manifest.arch})?"
            ) from exc
        self._dev = self._sess.cpu(0)
        return lib

    @property
    def is_remote(self) -> bool:
        """True when the model runs on an RPC device (``remote`` is that Device)."""
        return self.remote is not None

    @property
    def inputs(self):
        return self.manifest.inputs

    @property
    def outputs(self):
        return self.manifest.outputs

    def close(self) -> None:
        """Release the VM and weights now; on a remote device this ends the RPC session (a TVM
        RPC server serves one session at a time, and the VM's internal reference cycles would
        otherwise keep it open until garbage collection)."""
        import gc

        self._vm = self._params = self._dev = self._sess = None
        if self.is_remote:
            gc.collect()

    def __enter__(self) -> CompiledModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

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

    def _tensors(self, args: Sequence) -> list:
        import tvm

        return [tvm.runtime.tensor(a, self._dev) for a in self._check(args)]

    def _run(self, args: Sequence):
        tensors = self._tensors(args)
        if not self.is_remote:
            return self._vm["main"](*tensors, *self._params)
        # over RPC the VM's return value is a remote object: fetch outputs one by one
        self._vm.set_input("main", *tensors, *self._params)
        self._vm.invoke_stateful("main")
        out = self._vm.get_outputs("main")
        return list(out) if isinstance(out, tuple) else out

    def __call__(self, *args):
        torch_in = any(hasattr(a, "detach") and hasattr(a, "cpu") for a in args)
        out = self._run(args)
        results = [o.numpy() for o in out] if not hasattr(out, "numpy") else [out.numpy()]
        if torch_in:
            import torch

            results = [torch.from_numpy(r) for r in results]
        return results[0] if len(results) == 1 else tuple(results)

    def timing(self, *args, warmup: int = 10, runs: int = 50) -> Timing:
        """Latency over ``runs`` calls after ``warmup``, timed by TVM's time evaluator where the
        model runs (on the device for a remote one, network excluded)."""
        self._vm.set_input("main", *self._tensors(args), *self._params)
        for _ in range(warmup):
            self._vm.invoke_stateful("main")
        evaluator = self._vm.time_evaluator(
            "invoke_stateful", self._dev, number=1, repeat=runs, min_repeat_ms=0
        )
        return Timing.from_evaluator(evaluator, "main")

    def time(self, *args, warmup: int = 10, runs: int = 50) -> dict:
        """:meth:`timing` as ``{"median_ms", "p10_ms", "p90_ms", "runs", "threads", "device"}``
        (``threads``: this machine's ``TVM_NUM_THREADS``, None when unset or remote)."""
        threads = None if self.is_remote else int(os.environ.get("TVM_NUM_THREADS", "0")) or None
        t = self.timing(*args, warmup=warmup, runs=runs)
        return {**t.to_dict(), "threads": threads, "device": self.device}


def load(path: str | os.PathLike, device: Any = None, session: Any = None) -> CompiledModel:
    """Verify an artifact (manifest, checksums, architecture) and make it callable on
    ``device``: ``"cpu"``/``"cuda"``/``"local"``/None on this machine, ``rpc://HOST:PORT[/KEY]``
    or ``tracker://HOST:PORT/KEY`` (or a :class:`~sepconv.targets.devices.Device`) remotely;
    ``session`` reuses an open RPC session for a remote device."""
    root, manifest = read_manifest(path)
    return CompiledModel(root, manifest, device, session)


def run_artifact(path: str | os.PathLike, device: Any, inputs: Sequence) -> object:
    """Run an artifact once on ``device``; outputs as numpy arrays (a tuple if several)."""
    with load(path, device) as model:
        return model(*inputs)


def time_artifact(
    path: str | os.PathLike,
    device: Any = "local",
    runs: int = 50,
    warmup: int = 10,
    inputs: Sequence | None = None,
    seed: int = 0,
) -> dict:
    """Time an artifact on ``device``: ``{"median_ms", "p10_ms", "p90_ms", "runs", "device",
    ...}`` (``device`` as spelled by :func:`~sepconv.targets.devices.parse_device`).

    ``inputs`` default to seeded random arrays of the artifact's input shapes. On a remote device
    the time is measured there (TVM's time evaluator), not including the network.
    """
    from sepconv.compiler.validation import seeded_inputs
    from sepconv.targets.devices import parse_device

    with load(path, device) as model:
        arrays = list(inputs) if inputs is not None else seeded_inputs(model.inputs, seed)
        result = model.time(*arrays, warmup=warmup, runs=runs)
    if device is None or str(device).strip().lower() in LOCAL_NAMES:
        result["device"] = str(parse_device(device))  # "local", as the caller spelled it
    return result
