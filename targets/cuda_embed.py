"""Ready-made GPU binaries carried inside TVM CUDA modules, so a library loads without a compiler.

Why this exists: TVM 0.27 can only create a CUDA module object when its CUDA runtime library
loads (``ffi.Module.create.cuda``, registered by ``libtvm_runtime_cuda.so``, which needs the
NVIDIA driver's ``libcuda.so.1``). On a machine without a driver its codegen builds a
``CUDAFallbackModule`` instead, holding CUDA C++ source that the receiving GPU machine compiles
when the library loads, through the Python hook ``tvm_callback_cuda_compile`` — so every load
would need nvcc or NVRTC and the compiler's Python package, and would spend seconds compiling.
Binaries travel instead, as the "source" of such a module:

    // sepconv-embedded-cuda-binary v1          ← first line: this format
    // name sepconv_dw_…  arch sm_90
    /* cubin.z <base64> */  /* ptx.z <base64> */    ← Triton kernels: its cubin and PTX
    /* fatbin.z <base64> */ /* source.z <base64> */ ← TVM's kernels: nvcc's fatbin (SASS + PTX)
                                                       and the CUDA C++ it came from

(``.z``: zlib-compressed before base64 — PTX and C++ shrink ~10×; plain blobs still decode.)

Comments only, so the text is still valid CUDA C++. Two hooks use it:

- :func:`precompiled_kernels` (build time) registers ``tvm_callback_cuda_postproc``, which TVM's
  CUDA codegen calls with the source of every module it generates: the source is compiled with
  nvcc for the target's ``sm_XX`` and replaced by its encoding.
- :func:`install_compile_hook` (load time, and build time on a GPU machine) wraps
  ``tvm_callback_cuda_compile`` so that an encoded "source" compiles to the binary that runs on
  the local GPU (:func:`binary_for`); any other source goes to TVM's compiler unchanged.

Importing this module needs neither Triton, nor a GPU, nor TVM's compiler library: a library
loads with the TVM runtime alone.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import re
import threading
import zlib
from collections.abc import Callable, Iterator

from sepconv.errors import DeviceError

log = logging.getLogger(__name__)

MARKER = "// sepconv-embedded-cuda-binary v1"
_BLOBS = ("cubin", "ptx", "fatbin", "source")
_TEXT_BLOBS = ("ptx", "source")
_LOCK = threading.RLock()
_DELEGATE = None  # TVM's own tvm_callback_cuda_compile, once ours is installed
_INSTALLED = False


def encode(
    name: str,
    arch: str,
    cubin: bytes | None = None,
    ptx: str | None = None,
    *,
    fatbin: bytes | None = None,
    source: str | None = None,
) -> str:
    """The CUDA "source" that stands for ready binaries of kernel(s) ``name`` built for ``arch``."""
    if cubin is None and ptx is None and fatbin is None:
        raise ValueError("encode needs a cubin, PTX or fatbin")
    blobs = {"cubin": cubin, "ptx": ptx, "fatbin": fatbin, "source": source}
    parts = [MARKER, f"// name {name} arch {arch}"]
    for kind in _BLOBS:
        value = blobs[kind]
        if value is None:
            continue
        raw = value.encode("utf-8") if kind in _TEXT_BLOBS else bytes(value)
        packed = base64.b64encode(zlib.compress(raw, 9)).decode("ascii")
        parts.append(f"/* {kind}.z {packed} */")
    return "\n".join(parts) + "\n"


def decode(code: str) -> dict | None:
    """``{"name", "arch", "cubin", "ptx", "fatbin", "source"}`` (absent blobs None) for an
    encoded source, None for anything else (real CUDA C++)."""
    if not code.startswith(MARKER):
        return None
    head = re.search(r"^// name (\S+) arch (\S+)$", code, re.MULTILINE)
    found = {
        kind: zlib.decompress(base64.b64decode(blob)) if z else base64.b64decode(blob)
        for kind, z, blob in re.findall(
            r"/\* (cubin|ptx|fatbin|source)(\.z)? ([A-Za-z0-9+/=]+) \*/", code
        )
    }
    decoded = {"name": head.group(1) if head else "?", "arch": head.group(2) if head else "?"}
    for kind in _BLOBS:
        raw = found.get(kind)
        decoded[kind] = raw.decode("utf-8") if raw is not None and kind in _TEXT_BLOBS else raw
    return decoded


def _sm(arch: str) -> tuple[int, bool]:
    """``"sm_90a"`` → ``(90, True)``: the number and whether it is the arch-specific variant."""
    m = re.fullmatch(r"sm_(\d+)(a?)", arch or "")
    if m is None:
        raise ValueError(f"not an sm_XX architecture: {arch!r}")
    return int(m.group(1)), bool(m.group(2))


def _ptx_target(ptx: str) -> str | None:
    m = re.search(r"^\s*\.target\s+(sm_\d+a?)", ptx, re.MULTILINE)
    return m.group(1) if m else None


def _ptx_runs_on(ptx_arch: str, local: int) -> bool:
    # The driver JIT-compiles PTX for its own GPU when the GPU is at least the PTX's target;
    # arch-specific PTX (sm_90a: wgmma, setmaxnreg) runs on that architecture only.
    number, specific = _sm(ptx_arch)
    return local == number if specific else local >= number


def binary_for(decoded: dict, local_arch: str | None) -> bytes:
    """What the driver should load on a GPU of ``local_arch`` (None: not known here).

    The cubin when it was built for this GPU's architecture (``sm_90a`` counts as ``sm_90``);
    nvcc's fatbin when the GPU is that architecture or newer (the driver picks the SASS or
    JIT-compiles the PTX inside); the PTX when its target allows this GPU; else the carried CUDA
    C++ source compiled for this GPU by TVM's compiler. Raises :class:`DeviceError` naming the
    fix when none of them can run here.
    """
    built, _ = _sm(decoded["arch"])
    if local_arch is None:
        for kind in ("fatbin", "cubin"):
            if decoded.get(kind) is not None:
                return decoded[kind]
        return decoded["ptx"].encode("utf-8")
    local, _ = _sm(local_arch)
    if decoded.get("cubin") is not None and local == built:
        return decoded["cubin"]
    if decoded.get("fatbin") is not None and local >= built:
        return decoded["fatbin"]
    ptx = decoded.get("ptx")
    if ptx is not None and _ptx_runs_on(_ptx_target(ptx) or decoded["arch"], local):
        return ptx.encode("utf-8")
    if decoded.get("source") is not None:
        return _compile_source(decoded["source"], decoded["name"])
    raise DeviceError(
        f"CUDA kernel {decoded['name']} was built for {decoded['arch']} and cannot run on this "
        f"{local_arch} GPU; recompile the model with --cuda-arch {local_arch} "
        f"(sepconv compile … --target cuda --cuda-arch {local_arch})"
    )


def _compile_source(source: str, name: str) -> bytes:
    delegate = _DELEGATE  # found by install_compile_hook, before ours replaced it
    if delegate is None:
        raise DeviceError(
            f"CUDA kernels {name} must be compiled for this GPU, but TVM's CUDA compiler hook is "
            "not available (a runtime-only TVM): recompile the model for this GPU's --cuda-arch "
            "on a machine with the full TVM, or install apache-tvm here"
        )
    return bytes(delegate(source))


def _tvm_compile_hook():
    """TVM's ``tvm_callback_cuda_compile`` (nvcc/NVRTC), None where TVM's compiler package does
    not import (the runtime-only TVM)."""
    try:
        import tvm.support.nvcc  # noqa: F401  (registers tvm_callback_cuda_compile)
        import tvm_ffi
    except Exception:  # noqa: BLE001 - runtime-only TVM: tvm.support needs the compiler library
        return None
    return tvm_ffi.get_global_func("tvm_callback_cuda_compile", allow_missing=True)


def _local_arch() -> str | None:
    try:
        import tvm

        dev = tvm.cuda(0)
        if dev.exist:
            return "sm_" + str(dev.compute_version).replace(".", "")
    except Exception:  # noqa: BLE001 - no CUDA runtime: nothing local to match
        pass
    return None


def _compile(code):
    decoded = decode(str(code))
    if decoded is None:
        return _compile_source(str(code), "(TVM-generated)")
    local = _local_arch()
    log.debug("embedded kernel %s (built for %s) on %s", decoded["name"], decoded["arch"], local)
    return binary_for(decoded, local)


def install_compile_hook() -> None:
    """Route ``tvm_callback_cuda_compile`` through :func:`decode` (idempotent). Works with the
    runtime-only TVM: TVM's own hook, when its compiler package imports, handles real sources."""
    global _DELEGATE, _INSTALLED
    import tvm_ffi

    with _LOCK:
        if _INSTALLED:
            return
        _DELEGATE = _tvm_compile_hook()
        tvm_ffi.register_global_func("tvm_callback_cuda_compile", _compile, override=True)
        _INSTALLED = True


@contextlib.contextmanager
def precompiled_kernels(arch: str, compile_fatbin: Callable[[str, str], bytes]) -> Iterator[None]:
    """While active, TVM's CUDA codegen hands each module's source to ``compile_fatbin(source,
    arch)`` and stores the encoded result instead (module docstring). Encoded sources (Triton's
    stubs) pass through unchanged."""
    import tvm_ffi

    hook_name = "tvm_callback_cuda_postproc"

    def postproc(code, _target=None):
        code = str(code)
        if decode(code) is not None:
            return code
        name = (
            ",".join(
                re.findall(
                    r'extern "C" __global__ void (?:__launch_bounds__\(\d+\) )?'
                    r"(\w+)\(",
                    code,
                )[:3]
            )
            or "tvm_kernels"
        )
        return encode(name, arch, fatbin=compile_fatbin(code, arch), source=code)

    install_compile_hook()  # with a driver present TVM compiles the result at once
    with _LOCK:
        previous = tvm_ffi.get_global_func(hook_name, allow_missing=True)
        tvm_ffi.register_global_func(hook_name, postproc, override=True)
        try:
            yield
        finally:
            if previous is not None:
                tvm_ffi.register_global_func(hook_name, previous, override=True)
            else:
                tvm_ffi.registry.remove_global_func(hook_name)


__all__ = [
    "MARKER",
    "binary_for",
    "decode",
    "encode",
    "install_compile_hook",
    "precompiled_kernels",
]
