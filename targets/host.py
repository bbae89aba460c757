"""What the machine we run on is: architecture, CPU name and ISA features, usable cores, GPU.

Everything here reads this machine only; ``triple.py`` turns it into TVM targets. The CPU name and
feature set come from LLVM's own host detection as bundled with TVM
(``tvm.codegen.llvm.GetHostCPUName`` / ``GetHostCPUFeatures``, i.e. ``sys::getHostCPUName`` and
``sys::getHostCPUFeatures``: CPUID plus the OS's XSAVE state, what ``clang -march=native`` uses).
``/proc/cpuinfo`` is read as a cross-check and for tests. Results are cached per process.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

from sepconv.errors import UnknownTargetError

logger = logging.getLogger(__name__)

# platform.machine() spellings → the architecture field of our triples.
_MACHINE_ARCH = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}


def host_arch() -> str:
    """This machine's CPU architecture as our triples spell it (``x86_64``, ``aarch64``), or
    ``platform.machine()`` lower-cased when it is neither."""
    machine = platform.machine().lower()
    return _MACHINE_ARCH.get(machine, machine)


def host_triple() -> str:
    """The supported triple naming this machine (``x86_64-linux-gnu`` or ``aarch64-linux-gnu``).

    Raises :class:`UnknownTargetError` on a machine we cannot compile for natively (not Linux, or
    another architecture); cross-compiling for a named triple still works there.
    """
    arch = host_arch()
    if not sys.platform.startswith("linux") or arch not in ("x86_64", "aarch64"):
        raise UnknownTargetError(
            f"this machine ({sys.platform}, {platform.machine()}) is not a supported host; "
            "name a target explicitly: x86_64-linux-gnu, aarch64-linux-gnu or cuda"
        )
    return f"{arch}-linux-gnu"


@functools.lru_cache(maxsize=1)
def host_cpu_name() -> str:
    """LLVM's name for this CPU (e.g. ``znver4``, ``sapphirerapids``, ``cortex-a72``).

    Under a hypervisor this is derived from the CPU model the hypervisor reports, so it can name an
    older part than the silicon; :func:`host_cpu_features` is what the CPU really offers.
    """
    import tvm  # noqa: F401  (registers the LLVM functions)
    from tvm.target import codegen

    return str(codegen.llvm_get_system_cpu())


@functools.lru_cache(maxsize=1)
def host_cpu_features() -> dict[str, bool]:
    """LLVM's ISA features of this CPU, ``{"avx512f": True, "sse4a": False, ...}``.

    Only ISA features appear (no tuning flags like ``prefer-256-bit``). Features the OS does not
    enable (e.g. AVX-512 without the ZMM state in XCR0) are reported off.
    """
    import tvm  # noqa: F401
    import tvm_ffi

    get = tvm_ffi.get_global_func("tvm.codegen.llvm.GetHostCPUFeatures", allow_missing=True)
    if get is None:  # TVM's runtime alone (no LLVM): callers fall back to /proc/cpuinfo
        return {}
    return {str(k): bool(v) for k, v in get().items()}


@functools.lru_cache(maxsize=1)
def cpuinfo_flags() -> frozenset[str]:
    """The kernel's feature flags for CPU 0 (x86 ``flags``, AArch64 ``Features``); empty if
    ``/proc/cpuinfo`` is unreadable."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def cpu_model_name() -> str:
    """The CPU's model as the kernel names it (``/proc/cpuinfo``'s ``model name``, ``Hardware``
    or ``cpu model`` line, e.g. ``AMD EPYC 9R14``), else ``platform.processor()`` or
    ``platform.machine()``: for reports and provenance, not for code generation."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# LLVM feature names → the kernel's /proc/cpuinfo flag where the two spell it differently beyond
# '_', '.' and '-' (sse4.2 ≡ sse4_2, avx512vnni ≡ avx512_vnni are matched by normalising).
_CPUINFO_ALIAS = {
    "sse3": "pni", "bmi": "bmi1", "lzcnt": "abm", "pclmul": "pclmulqdq", "sha": "sha_ni",
    "crc32": "sse4_2", "neon": "asimd", "fullfp16": "asimdhp", "dotprod": "asimddp",
    "fp16fml": "asimdfhm", "rdm": "asimdrdm", "lse": "atomics", "crc": "crc32",
}  # fmt: skip


# LLVM features that name a set of older ones and have no /proc/cpuinfo flag of their own (Linux
# lists no "avx10"): held when every member is. AVX10.1 is exactly Sapphire Rapids' AVX-512 set;
# LLVM's host detection reports it where CPUID enumerates AVX10 (first seen on a 2026 Xeon VM
# under kernel 6.18). avx10.2 adds instructions no older flag covers, so it stays unknown.
_AVX10_1 = (
    "avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw", "avx512ifma", "avx512vbmi",
    "avx512_vbmi2", "avx512_vnni", "avx512_bitalg", "avx512_vpopcntdq", "avx512_bf16",
    "avx512_fp16",
)  # fmt: skip
_CPUINFO_IMPLIED = {"avx10.1": _AVX10_1, "avx10.1-256": _AVX10_1, "avx10.1-512": _AVX10_1}


def _norm(flag: str) -> str:
    return flag.lower().replace("_", "").replace(".", "").replace("-", "")


def missing_isa_features(features) -> list[str]:
    """Which of ``features`` (LLVM names, e.g. a target's ``avx512f``, ``fma``) this CPU lacks.

    Asks LLVM's host detection where TVM's compiler is loaded; with TVM's runtime alone (a
    deployment) reads ``/proc/cpuinfo`` instead: a feature is held when the kernel lists its
    flag, or every flag of the set it names (``avx10.1``).
    """
    wanted = sorted(set(features))
    llvm = host_cpu_features()
    if llvm:
        return [f for f in wanted if f in llvm and not llvm[f]]
    flags = {_norm(f) for f in cpuinfo_flags()}
    if not flags:
        return []

    def held(f: str) -> bool:
        if f in _CPUINFO_IMPLIED:
            return all(_norm(member) in flags for member in _CPUINFO_IMPLIED[f])
        return _norm(f) in flags or _norm(_CPUINFO_ALIAS.get(f, f)) in flags

    return [f for f in wanted if not held(f)]


def _cgroup_cpu_limit() -> int | None:
    """CPUs a cgroup-v2 ``cpu.max`` quota allows (``docker --cpus``), or None when unlimited."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    try:
        return max(1, math.ceil(int(quota) / int(period)))
    except (ValueError, ZeroDivisionError):
        return None


def usable_cpus() -> list[int]:
    """The logical CPUs in this process's affinity mask (all of them where there is none)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


@functools.lru_cache(maxsize=1)
def private_l2_bytes() -> int | None:
    """Bytes of L2 cache over the CPUs this process may run on, each L2 counted once however
    many CPUs share it (sysfs ``cache/index*``); None where sysfs does not say."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    seen, total = set(), 0
    for cpu in usable_cpus():
        for index in Path(f"/sys/devices/system/cpu/cpu{cpu}/cache").glob("index*"):
            try:
                if (index / "level").read_text().strip() != "2":
                    continue
                shared = (index / "shared_cpu_list").read_text().strip()
                size = (index / "size").read_text().strip()
                if shared not in seen:
                    total += int(size.rstrip("KMG")) * units.get(size[-1], 1)
                    seen.add(shared)
            except (OSError, ValueError):
                continue
    return total or None


@functools.lru_cache(maxsize=1)
def physical_cores() -> int:
    """Physical cores this process may run on: the CPUs in its affinity mask, SMT siblings counted
    once (sysfs topology), capped by a cgroup CPU quota. At least 1.

    Parallel loops are sized by this: a second hyper-thread on a core adds little to SIMD-bound
    convolution loops and makes timings noisy.
    """
    cores: set[tuple[str, str]] = set()
    for cpu in usable_cpus():
        topo = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            package = (topo / "physical_package_id").read_text().strip()
            core = (topo / "core_id").read_text().strip()
        except OSError:
            cores.add(("cpu", str(cpu)))  # no topology: count logical CPUs
            continue
        cores.add((package, core))
    n = max(1, len(cores))
    limit = _cgroup_cpu_limit()
    return min(n, limit) if limit else n


@functools.lru_cache(maxsize=1)
def gpu_compute_capability() -> str | None:
    """Compute capability of CUDA GPU 0 as ``"9.0"``, or None when there is no usable GPU.

    Asks ``nvidia-smi`` (no CUDA context needed), then TVM's CUDA runtime.
    """
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run(
                [smi, "--query-gpu=compute_cap", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=20,
                check=False,
            )
            lines = [ln.strip() for ln in out.stdout.splitlines() if ln.strip()]
            if out.returncode == 0 and lines and lines[0][0].isdigit():
                return lines[0]
        except (OSError, subprocess.SubprocessError):
            pass
    try:
        import tvm

        dev = tvm.cuda(0)
        if dev.exist:
            return str(dev.compute_version)
    except Exception:  # no CUDA runtime in this TVM build, no driver
        pass
    return None
