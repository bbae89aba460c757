"""What a schedule rule needs to know about a CPU target, read from the ``tvm.target.Target``.

Every rule is parameterised by this record instead of being copied per target: the same
pointwise-conv rule emits 16-lane fp32 vectors and a 12×2-register tile on AVX-512, 8-lane vectors
and a 6×2 tile on AVX2, and 4-lane vectors on NEON.

Works for cross targets: nothing here looks at the machine we run on. Note that
``tvm.target.codegen.llvm_get_vector_width`` is not used for x86: in TVM 0.27 it answers 512 for
every x86 CPU, Haswell included, so the width is derived from the CPU's feature flags instead
(``avx512f`` → 512, ``avx``/``avx2`` → 256, else SSE's 128). For other architectures it is the
answer (128 for AArch64 NEON, SVE counted as 128 since its length is unknown at compile time).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import tvm
from tvm.target import Target


@dataclass(frozen=True)
class CpuParams:
    """The target facts the CPU schedule rules use."""

    vector_bits: int
    """Width of one SIMD register in bits (512 AVX-512, 256 AVX2, 128 NEON/SSE)."""
    num_cores: int
    """Threads the parallel loops are sized for (target ``num-cores``, else this machine's)."""
    num_vector_regs: int
    """Architectural SIMD registers (32 on AVX-512 and AArch64, 16 on AVX2/SSE)."""
    arch: str
    """``"x86"``, ``"aarch64"``, ``"arm"`` or ``"other"``."""

    def lanes(self, dtype: str | tvm.DataType = "float32") -> int:
        """SIMD lanes for one register of ``dtype`` (16 fp32 lanes on AVX-512)."""
        bits = tvm.DataType(str(dtype)).bits
        return max(1, self.vector_bits // max(bits, 8))

    @property
    def accumulator_regs(self) -> int:
        """Registers a register-tiled reduction may keep accumulators in.

        Leaves room for the operands of one step (a weight vector or two, a broadcast input).
        """
        return self.num_vector_regs - 4


def _x86_vector_bits(target: Target) -> int:
    from tvm.target.codegen import target_has_features

    try:
        if target_has_features("avx512f", target):
            return 512
        if target_has_features("avx2", target) or target_has_features("avx", target):
            return 256
    except Exception:  # a target LLVM cannot parse features for: SSE2 is x86-64's baseline
        pass
    return 128


def target_features(
    target: Target, names=("avx2", "avx512f", "avx512bw", "avx512vnni", "avxvnni")
) -> set:
    """Which of ``names`` the (x86) target has, by LLVM's reading of its mcpu and mattr."""
    from tvm.target.codegen import target_has_features

    if cpu_arch(target) != "x86":
        return set()
    try:
        return {n for n in names if target_has_features(n, target)}
    except Exception:  # noqa: BLE001 - features LLVM cannot parse: none assumed
        return set()


def cpu_arch(target: Target) -> str:
    """An LLVM target's CPU family: ``x86``, ``aarch64``, ``arm`` or ``other``."""
    triple = str(target.attrs.get("mtriple", "") or "")
    keys = set(target.keys)
    if triple.startswith(("x86_64", "i386", "i686")):
        return "x86"
    if triple.startswith(("aarch64", "arm64")):
        return "aarch64"
    if triple.startswith(("arm", "thumb")):
        return "arm"
    if "arm_cpu" in keys:
        return "aarch64"
    if not triple:
        return "x86"  # TVM's default llvm target is the (x86) host
    return "other"


def cpu_params(target: Target) -> CpuParams:
    """Read the SIMD width, register count and core count the rules size their tiles by."""
    arch = cpu_arch(target)
    if arch == "x86":
        bits = _x86_vector_bits(target)
        regs = 32 if bits == 512 else 16
    else:
        bits = 128
        try:
            from tvm.target.codegen import llvm_get_vector_width

            width = int(llvm_get_vector_width(target))
            if width > 0:
                bits = width
        except Exception:
            pass
        regs = 32 if arch == "aarch64" else 16
    cores = target.attrs.get("num-cores", None)
    num_cores = int(cores) if cores else (os.cpu_count() or 1)
    return CpuParams(vector_bits=bits, num_cores=max(1, num_cores), num_vector_regs=regs, arch=arch)
