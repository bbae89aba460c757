"""The CUDA toolchain: nvcc, the architectures it builds, TVM's CUDA JIT, kernel compilation.

:mod:`.triple` describes the ``cuda`` target; this module finds and runs the compilers that build
for it: ``nvcc`` (on PATH or under ``$CUDA_HOME`` / ``$CUDA_PATH`` / ``/usr/local/cuda``) to check
that an architecture can be built and that exported kernels compile (:func:`check_cuda_source`),
to precompile kernels into a fatbin (:func:`compile_cuda_fatbin`), and TVM's
``tvm_callback_cuda_compile`` hook (:func:`configure_cuda_jit`: NVRTC, else nvcc).
"""

from __future__ import annotations

import functools
import logging
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from tvm.target import Target

from sepconv.errors import CompileError, DeviceError, UnknownTargetError

logger = logging.getLogger(__name__)


def find_nvcc() -> str | None:
    """Path of nvcc: on PATH, else under $CUDA_HOME / $CUDA_PATH / /usr/local/cuda."""
    found = shutil.which("nvcc")
    if found:
        return found
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root and (Path(root) / "bin" / "nvcc").is_file():
            return str(Path(root) / "bin" / "nvcc")
    return None


@functools.lru_cache(maxsize=4)
def nvcc_arches(nvcc: str) -> tuple[str, ...]:
    """The ``sm_XX`` architectures this nvcc can generate code for (``nvcc --list-gpu-code``)."""
    try:
        out = subprocess.run(
            [nvcc, "--list-gpu-code"], capture_output=True, text=True, timeout=60, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise CompileError(f"{nvcc} --list-gpu-code failed: {exc}") from exc
    return tuple(a for a in out.split() if re.fullmatch(r"sm_\d+[a-z]?", a))


def check_arch_buildable(arch: str) -> None:
    """Raise :class:`UnknownTargetError` when this machine's nvcc cannot generate code for
    ``arch``, listing the ones it can; only warn when there is no nvcc."""
    nvcc = find_nvcc()
    if nvcc is None:
        logger.warning(
            "nvcc not found: cannot check that %s can be built; the kernels are compiled where "
            "the library is first loaded",
            arch,
        )
        return
    available = nvcc_arches(nvcc)
    base = arch.rstrip("a")
    if base not in available:
        raise UnknownTargetError(
            f"CUDA architecture {arch} cannot be built by {nvcc} (it generates "
            f"{', '.join(available)}); pick one of those with cuda_arch / --cuda-arch"
        )


def configure_cuda_jit(required: bool = False) -> str | None:
    """Make sure TVM can compile CUDA kernels in this process, and say how.

    TVM 0.27 compiles CUDA C++ through the ``tvm_callback_cuda_compile`` hook, with NVRTC by
    default, which needs the ``cuda-bindings`` package; without it every CUDA build or load fails.
    This registers the hook and, when cuda-bindings is missing but nvcc is present, switches TVM
    to nvcc (``TVM_CUDA_COMPILE_MODE=nvcc``) unless the user set that variable. Returns the mode
    (``"nvrtc"`` / ``"nvcc"``), or None when neither works; ``required=True`` raises
    :class:`DeviceError` then.
    """
    import tvm.support.nvcc  # noqa: F401  (registers tvm_callback_cuda_compile)

    mode = os.environ.get("TVM_CUDA_COMPILE_MODE")
    if mode:
        return mode.lower()
    try:
        import cuda.bindings.nvrtc  # noqa: F401

        return "nvrtc"
    except ImportError:
        pass
    if find_nvcc() and shutil.which("nvcc"):
        os.environ["TVM_CUDA_COMPILE_MODE"] = "nvcc"
        logger.info("cuda-bindings not installed: TVM will compile CUDA kernels with nvcc")
        return "nvcc"
    if required:
        raise DeviceError(
            "cannot compile CUDA kernels here: TVM needs either the cuda-bindings package "
            "(pip install cuda-bindings, for NVRTC) or nvcc on PATH (the CUDA toolkit)"
        )
    return None


def _runtime_module(executable: Any) -> Any:
    return executable.mod if hasattr(executable, "mod") else executable


def _cuda_source_modules(mod: Any) -> list[str]:
    """CUDA C++ sources of the not-yet-compiled CUDA modules under ``mod``.

    Without a loadable CUDA runtime (``ffi.Module.create.cuda`` unregistered: no NVIDIA driver),
    TVM 0.27 puts a ``CUDAFallbackModule`` holding the generated source in the library; with one,
    the kernels are already compiled and there is nothing to check. Sources that carry ready
    binaries (:mod:`sepconv.targets.cuda_embed`) were compiled already and are left out.
    """
    import tvm_ffi

    from sepconv.targets.cuda_embed import decode

    if tvm_ffi.get_global_func("ffi.Module.create.cuda", allow_missing=True) is not None:
        return []
    sources, seen, stack = [], set(), [mod]
    while stack:
        m = stack.pop()
        if id(m) in seen:
            continue
        seen.add(id(m))
        stack.extend(m.imports)
        if m.kind == "cuda":
            source = str(m.inspect_source("cuda"))
            if source and decode(source) is None:
                sources.append(source)
    return sources


def check_cuda_kernels(executable: Any, target: Target) -> None:
    """Compile the CUDA C++ kernels a built ``executable`` carries as source with nvcc for the
    target's arch (see :func:`_cuda_source_modules`); raise :class:`CompileError` if one does not
    build, warn and return when there is no nvcc."""
    sources = _cuda_source_modules(_runtime_module(executable))
    if not sources:
        return
    nvcc = find_nvcc()
    if nvcc is None:
        logger.warning("nvcc not found: the CUDA kernels are exported unchecked")
        return
    arch = str(target.attrs["arch"])
    for source in sources:
        check_cuda_source(source, arch)
    logger.info("CUDA kernels build for %s; they are compiled again where the library loads", arch)


def compile_cuda_fatbin(source: str, arch: str) -> bytes:
    """Compile CUDA C++ ``source`` with nvcc and TVM's own flags into a fatbin holding SASS for
    ``arch`` (``sm_90``) and its PTX (which the driver JIT-compiles on newer GPUs); raise
    :class:`CompileError` with nvcc's message if it does not build."""
    nvcc = find_nvcc()
    if nvcc is None:
        raise CompileError("nvcc not found: install the CUDA toolkit or put nvcc on PATH")
    from tvm.support import nvcc as tvm_nvcc

    sm = arch.removeprefix("sm_")
    env_path = os.environ.get("PATH", "")
    nvcc_dir = str(Path(nvcc).parent)
    with (
        tempfile.TemporaryDirectory(prefix="sepconv-nvcc-") as tmp,
        Target({"kind": "cuda", "arch": arch}),
    ):
        if nvcc_dir not in env_path.split(os.pathsep):  # TVM runs plain "nvcc"
            os.environ["PATH"] = nvcc_dir + os.pathsep + env_path
        try:
            out = Path(tmp) / "kernels.fatbin"
            tvm_nvcc.compile_cuda(
                source,
                target_format="fatbin",
                arch=[
                    "-gencode",
                    f"arch=compute_{sm},code=sm_{sm}",
                    "-gencode",
                    f"arch=compute_{sm},code=compute_{sm}",
                ],
                path_target=str(out),
                compiler="nvcc",
            )
            return out.read_bytes()
        except RuntimeError as exc:
            msg = str(exc)
            tail = msg[msg.find("Compilation error:") :] if "Compilation error:" in msg else msg
            raise CompileError(f"nvcc cannot build the CUDA kernels for {arch}:\n{tail}") from exc
        finally:
            os.environ["PATH"] = env_path


def check_cuda_source(source: str, arch: str) -> None:
    """Compile CUDA C++ ``source`` with nvcc for ``arch``; raise :class:`CompileError` with
    nvcc's message if it does not build."""
    compile_cuda_fatbin(source, arch)


__all__ = [
    "check_arch_buildable",
    "check_cuda_kernels",
    "check_cuda_source",
    "compile_cuda_fatbin",
    "configure_cuda_jit",
    "find_nvcc",
    "nvcc_arches",
]
