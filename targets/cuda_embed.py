"""Ready-made GPU binaries (Triton cubin/PTX) carried inside TVM CUDA modules.

Why this exists: TVM 0.27 can only create a CUDA module object when its CUDA runtime library
loads (``ffi.Module.create.cuda``, registered by ``libtvm_runtime_cuda.so``, which needs the
NVIDIA driver's ``libcuda.so.1``). On a machine without a driver its codegen builds a
``CUDAFallbackModule`` instead: CUDA C++ source that the receiving GPU machine compiles when the
library loads, through the Python hook ``tvm_callback_cuda_compile``. A binary made elsewhere
(Triton's cubin) has no place in that scheme, so it travels as the "source" of such a module:

    // sepconv-embedded-cuda-binary v1          ← first line: this format
    // name sepconv_dw_…  arch sm_90
    /* cubin <base64> */  /* ptx <base64> */    ← comments only: still valid CUDA C++

and :func:`install_compile_hook` wraps ``tvm_callback_cuda_compile`` so that such a "source"
compiles to its own cubin (when the GPU's architecture is the one it was built for) or PTX (the
driver JIT-compiles it for another GPU). Any other source goes to TVM's compiler unchanged.
Being comments only, the text also passes the nvcc check :meth:`TargetSpec.export_library` runs
on every CUDA module (an empty translation unit).

The hook must be installed wherever such a module is compiled: at build time on a GPU machine
(TVM compiles CUDA sources as it builds) and before ``tvm.runtime.load_module`` of an artifact
built without a GPU. :func:`sepconv.load` and the Triton embedding install it; importing this
module needs neither Triton nor a GPU.
"""

from __future__ import annotations

import base64
import logging
import re
import threading

log = logging.getLogger(__name__)

MARKER = "// sepconv-embedded-cuda-binary v1"
_LOCK = threading.Lock()
_DELEGATE = None  # TVM's own tvm_callback_cuda_compile, once ours is installed


def encode(name: str, arch: str, cubin: bytes | None, ptx: str | None) -> str:
    """The CUDA "source" that stands for a ready binary of kernel ``name`` built for ``arch``."""
    if cubin is None and ptx is None:
        raise ValueError("encode needs a cubin, PTX or both")
    parts = [MARKER, f"// name {name} arch {arch}"]
    if cubin is not None:
        parts.append("/* cubin " + base64.b64encode(bytes(cubin)).decode("ascii") + " */")
    if ptx is not None:
        parts.append("/* ptx " + base64.b64encode(ptx.encode("utf-8")).decode("ascii") + " */")
    return "\n".join(parts) + "\n"


def decode(code: str) -> dict | None:
    """``{"name", "arch", "cubin": bytes | None, "ptx": str | None}`` for an encoded source,
    None for anything else (real CUDA C++)."""
    if not code.startswith(MARKER):
        return None
    head = re.search(r"^// name (\S+) arch (\S+)$", code, re.MULTILINE)
    blobs = dict(re.findall(r"/\* (cubin|ptx) ([A-Za-z0-9+/=]+) \*/", code))
    return {
        "name": head.group(1) if head else "?",
        "arch": head.group(2) if head else "?",
        "cubin": base64.b64decode(blobs["cubin"]) if "cubin" in blobs else None,
        "ptx": base64.b64decode(blobs["ptx"]).decode("utf-8") if "ptx" in blobs else None,
    }


def _local_arch() -> str | None:
    try:
        import tvm

        dev = tvm.cuda(0)
        if dev.exist:
            return "sm_" + str(dev.compute_version).replace(".", "")
    except Exception:  # noqa: BLE001 - no CUDA runtime: nothing local to match
        pass
    return None


def binary_for(decoded: dict, local_arch: str | None) -> bytes:
    """The cubin when it was built for this GPU (``sm_90a`` counts as ``sm_90``), else the PTX
    for the driver to JIT-compile; the cubin when there is no PTX."""
    built = decoded["arch"].rstrip("a")
    if decoded["cubin"] is not None and (local_arch is None or local_arch.rstrip("a") == built):
        return decoded["cubin"]
    if decoded["ptx"] is not None:
        return decoded["ptx"].encode("utf-8")
    return decoded["cubin"]


def _compile(code):
    decoded = decode(str(code))
    if decoded is None:
        return _DELEGATE(code)
    local = _local_arch()
    log.debug("embedded kernel %s (built for %s) on %s", decoded["name"], decoded["arch"], local)
    return binary_for(decoded, local)


def install_compile_hook() -> None:
    """Route ``tvm_callback_cuda_compile`` through :func:`decode` (idempotent)."""
    global _DELEGATE
    import tvm.support.nvcc  # noqa: F401  (registers TVM's tvm_callback_cuda_compile)
    import tvm_ffi

    with _LOCK:
        if _DELEGATE is not None:
            return
        current = tvm_ffi.get_global_func("tvm_callback_cuda_compile", allow_missing=True)
        if current is None:
            raise RuntimeError("tvm_callback_cuda_compile is not registered (tvm.support.nvcc)")
        _DELEGATE = current
        tvm_ffi.register_global_func("tvm_callback_cuda_compile", _compile, override=True)


__all__ = ["MARKER", "binary_for", "decode", "encode", "install_compile_hook"]
