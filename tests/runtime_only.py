"""Run a script the way a deployment machine would: the TVM runtime alone (no compiler library:
``TVM_USE_RUNTIME_LIB=1``), no PyTorch, no CUDA compiler on PATH, and for CUDA a stand-in NVIDIA
driver whose every call says there is no device — so the library's real CUDA loader runs up to
the first call that would need a GPU."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

_NO_TORCH = """
import sys
class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is not installed on this deployment machine")
sys.meta_path.insert(0, _NoTorch())
"""


def run_runtime_only(
    script: str,
    tmp_path: Path,
    driver_stub: Path | None = None,
    site: Path | None = None,
    block_torch: bool = True,
) -> dict:
    """Run ``script`` (which prints one JSON object as its last line) runtime-only; its result.
    ``site``: a directory searched before the installed packages, holding a TVM without its
    compiler library (then TVM falls back to its runtime by itself: the variable is not set).
    ``block_torch=False``: PyTorch may be imported (the GPU machine of the kit has it)."""
    env = dict(os.environ, PATH="/usr/bin:/bin")
    env.pop("TVM_USE_RUNTIME_LIB", None)
    if site is None:
        env["TVM_USE_RUNTIME_LIB"] = "1"
    else:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    env.pop("TVM_CUDA_COMPILE_MODE", None)
    if driver_stub is not None:
        env["LD_LIBRARY_PATH"] = str(driver_stub.parent)
    path = tmp_path / "deploy_script.py"
    path.write_text((_NO_TORCH if block_torch else "") + textwrap.dedent(script))
    proc = subprocess.run(
        [sys.executable, str(path)], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def no_device_driver(tmp_path: Path) -> Path:
    """Build ``libcuda.so.1`` exporting every driver function TVM's CUDA runtime links, each
    returning CUDA_ERROR_NO_DEVICE (skips where gcc or nm is missing)."""
    import tvm

    if not (shutil.which("gcc") and shutil.which("nm")):
        pytest.skip("gcc and nm are needed to build the stand-in driver")
    lib = Path(tvm.__file__).parent / "lib" / "libtvm_runtime_cuda.so"
    if not lib.is_file():
        pytest.skip(f"this TVM has no CUDA runtime library ({lib})")
    ldd = subprocess.run(["ldd", str(lib)], capture_output=True, text=True).stdout
    missing = [
        ln.split()[0]
        for ln in ldd.splitlines()
        if "not found" in ln and not ln.split()[0].startswith(("libcuda.so", "libtvm_ffi"))
    ]
    if missing:
        pytest.skip(f"{lib.name} needs {missing} (the CUDA runtime), not installed here")
    nm = subprocess.run(
        ["nm", "-D", "--undefined-only", str(lib)], capture_output=True, text=True, check=True
    ).stdout
    names = {ln.split()[-1] for ln in nm.splitlines() if ln.strip()}
    symbols = sorted(n for n in names if n.startswith("cu") and not n.startswith("cuda"))
    lines = ['static const char *name = "CUDA_ERROR_NO_DEVICE";']
    for sym in symbols:
        if sym in ("cuGetErrorName", "cuGetErrorString"):
            lines.append(f"int {sym}(int e, const char **s) {{ *s = name; return 0; }}")
        else:
            lines.append(f"int {sym}(void) {{ return 100; }}")
    src = tmp_path / "libcuda_stub.c"
    src.write_text("\n".join(lines) + "\n")
    out = tmp_path / "driver" / "libcuda.so.1"
    out.parent.mkdir()
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(out), str(src)], check=True)
    return out
