"""Target triple → TVM target, tuning-log key, and the compiler that links the library.

Three triples are supported, plus ``host`` for this machine::

    x86_64-linux-gnu    LLVM, x86-64 CPUs; key by SIMD tier: x86_64-avx512 / -avx2 / -avx / -sse
    aarch64-linux-gnu   LLVM, 64-bit ARM with NEON (Raspberry Pi 4, RK3399, Graviton); aarch64-neon
    cuda                CUDA C++ kernels for one SM architecture + LLVM host code; cuda-sm90

A CPU triple that names this machine's architecture, without ``mcpu``, is compiled for this very
CPU: LLVM's name for it plus the exact ISA features the CPU and OS offer (as ``clang
-march=native``). An explicit ``mcpu`` compiles for that CPU instead (e.g. ``x86-64-v3`` for any
AVX2 machine) and the key and vector width follow *its* features, asked of LLVM.

TVM 0.27 takes targets as JSON dicts only; its bundled LLVM defaults to the triple
``x86_64-conda-linux-gnu``, with which ``mcpu=native`` is silently ignored, so every target here
names ``mtriple`` and a real ``mcpu``.

The compilers behind the ``cuda`` triple (nvcc, TVM's CUDA JIT) are :mod:`.cuda_toolchain`.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from typing import Any

from tvm.target import Target, codegen

from sepconv.errors import CompileError, DeviceError, UnknownTargetError

from . import host as _host
from .cuda_toolchain import check_arch_buildable, check_cuda_kernels, configure_cuda_jit

logger = logging.getLogger(__name__)

SUPPORTED_TRIPLES = ("x86_64-linux-gnu", "aarch64-linux-gnu", "cuda")
"""Canonical triples; ``host`` names this machine's."""

# Other spellings of the same triples (GNU vendor fields, bare architecture names). Matched after
# lower-casing and stripping.
_ALIASES = {
    "x86_64": "x86_64-linux-gnu",
    "x86-64": "x86_64-linux-gnu",
    "amd64": "x86_64-linux-gnu",
    "x86_64-linux": "x86_64-linux-gnu",
    "x86_64-pc-linux-gnu": "x86_64-linux-gnu",
    "x86_64-unknown-linux-gnu": "x86_64-linux-gnu",
    "aarch64": "aarch64-linux-gnu",
    "arm64": "aarch64-linux-gnu",
    "aarch64-linux": "aarch64-linux-gnu",
    "aarch64-unknown-linux-gnu": "aarch64-linux-gnu",
    "arm64-linux-gnu": "aarch64-linux-gnu",
}

# Names a user may mean but that are ambiguous or unsupported: what to say instead of guessing.
_HINTS = {
    "gpu": "cuda (NVIDIA GPUs; pass cuda_arch / --cuda-arch to pick the architecture)",
    "nvidia": "cuda",
    "nvptx": "cuda",
    "nvptx64": "cuda",
    "nvptx64-nvidia-cuda": "cuda",
    "llvm": "host (this machine) or an explicit CPU triple",
    "cpu": "host (this machine) or an explicit CPU triple",
    "native": "host",
    "x86": "x86_64-linux-gnu (32-bit x86 is not supported)",
    "i686": "x86_64-linux-gnu (32-bit x86 is not supported)",
    "arm": "aarch64-linux-gnu (32-bit ARM is not supported)",
    "armv7": "aarch64-linux-gnu (32-bit ARM is not supported)",
    "armv7l": "aarch64-linux-gnu (32-bit ARM is not supported)",
    "arm-linux-gnueabihf": "aarch64-linux-gnu (32-bit ARM is not supported)",
    "rocm": "nothing yet: AMD GPUs are not supported (cuda is the only GPU target)",
    "metal": "nothing yet: Apple GPUs are not supported (cuda is the only GPU target)",
}

# Cores assumed for a CPU we cannot see (cross compilation): the quad-core boards aarch64 means
# for us (Raspberry Pi 4, RK3399's big+little are 2+4). Pass num_cores for anything else.
DEFAULT_CROSS_CORES = 4
DEFAULT_CUDA_ARCH = "sm_90"
DEFAULT_AARCH64_MCPU = "generic"  # any ARMv8-A with NEON; name the core (cortex-a72) to tune for it
# Host code of a CUDA library built for a GPU we cannot see: x86-64-v2 (SSE4.2) runs on every
# machine that holds an sm_75+ GPU; it is only kernel-launch glue.
PORTABLE_X86_MCPU = "x86-64-v2"

# ISA features reported in describe() and used for keys, per family.
_REPORTED_FEATURES = {
    "x86": (
        "sse4.2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512dq", "avx512vl",
        "avx512vnni", "avx512bf16", "avx512fp16", "avxvnni", "amx-tile",
    ),
    "arm": ("neon", "fullfp16", "dotprod", "i8mm", "bf16", "sve", "sve2"),
}  # fmt: skip

_CROSS_GCC_PACKAGE = {"aarch64": "gcc-aarch64-linux-gnu", "x86_64": "gcc-x86-64-linux-gnu"}


@dataclass(frozen=True)
class TargetSpec:
    """Everything the compiler needs to know about where the code will run."""

    triple: str
    """Canonical triple: ``x86_64-linux-gnu``, ``aarch64-linux-gnu`` or ``cuda``."""
    target: Target
    """Full TVM target (for cuda: with its LLVM ``host``)."""
    key: str
    """Tuning-log key: triple + the features that change schedules (``x86_64-avx512``,
    ``x86_64-avx2``, ``x86_64-avx``, ``x86_64-sse``, ``aarch64-neon``, ``cuda-sm90``)."""
    family: str
    """``"x86"``, ``"arm"`` or ``"cuda"``: schedule rules are chosen by this."""
    vector_bits: int
    """Width of one CPU SIMD register (512 / 256 / 128); 0 for cuda."""
    num_cores: int
    """CPU threads the parallel loops are sized for (cuda: the host code's)."""
    is_host: bool
    """True when the compiled library can run on this machine directly."""
    mcpu: str = ""
    """LLVM CPU name of the (host) code."""
    cuda_arch: str = ""
    """``sm_XX`` for cuda, else empty."""
    features: tuple[str, ...] = field(default=())
    """The ISA features that matter for schedules that the target has (``avx512f``, ``fma``…)."""
    isa: tuple[str, ...] = field(default=())
    """Every instruction-set feature the generated CPU code may use (for cuda: its host code's);
    a machine lacking one of them cannot run the library."""

    @property
    def host_arch(self) -> str:
        """Architecture of the library's CPU code (``x86_64``, ``aarch64``): for cuda, of its
        host part."""
        host = self.target.host if self.family == "cuda" else self.target
        return _triple_arch(str(host.attrs["mtriple"]))

    def describe(self) -> dict[str, Any]:
        """JSON-able record of the target, for artifact manifests and tuning-log provenance.

        ``host_arch`` (the CPU architecture of the library's code) is recorded for cuda only: for
        CPU triples it is the triple's first field, and a reader takes it from there.
        """
        d: dict[str, Any] = {
            "triple": self.triple,
            "tvm_target": str(self.target),
            "key": self.key,
            "family": self.family,
            "mcpu": self.mcpu,
            "cuda_arch": self.cuda_arch,
            "features": list(self.features),
            "isa": list(self.isa),
            "vector_bits": self.vector_bits,
            "num_cores": self.num_cores,
        }
        if self.family == "cuda":
            d["host_arch"] = self.host_arch
        return d

    def export_library(self, executable: Any, path: str | os.PathLike) -> None:
        """Write the compiled ``executable`` (from ``tvm.compile``) as a shared library at ``path``,
        linked by the right compiler: this machine's C compiler for its own architecture, the GNU
        cross compiler (``aarch64-linux-gnu-gcc``) otherwise.

        For cuda the host part is linked the same way and the kernels are embedded. A TVM without
        a loadable CUDA runtime (any machine without an NVIDIA driver) embeds them as CUDA C++
        source, which TVM compiles for the local GPU when the library is first loaded; here that
        source is first compiled with ``nvcc`` for ``cuda_arch``, when nvcc is present, so that a
        kernel that does not build fails now rather than on the GPU machine.

        Raises :class:`CompileError` naming the missing compiler and the package that provides it,
        or with the linker's or nvcc's message.
        """
        path = os.fspath(path)
        compiler = self._linker()
        if self.family == "cuda":
            check_cuda_kernels(executable, self.target)
        from tvm.support import cc

        triple = f"{self.host_arch}-linux-gnu"
        fcompile = cc.cross_compiler(compiler, get_target_triple=lambda: triple)
        try:
            executable.export_library(path, fcompile=fcompile)
        except RuntimeError as exc:
            raise CompileError(
                f"linking {path} for {self.triple} with {compiler} failed: {exc}"
            ) from exc

    def _linker(self) -> str:
        arch = self.host_arch
        if arch == _host.host_arch():
            cc = os.environ.get("CXX") or os.environ.get("CC")
            if cc:
                return cc
            for name in ("g++", "gcc", "clang++", "clang", "c++", "cc"):
                found = shutil.which(name)
                if found:
                    return found
            raise CompileError(
                "no C/C++ compiler found to link the library: install one (Debian/Ubuntu: "
                "apt-get install -y g++) or set CXX"
            )
        for name in (f"{arch}-linux-gnu-gcc", f"{arch}-linux-gnu-g++"):
            found = shutil.which(name)
            if found:
                return found
        package = _CROSS_GCC_PACKAGE.get(arch, f"a GNU cross compiler for {arch}")
        raise CompileError(
            f"cross compiler {arch}-linux-gnu-gcc not found: linking a {self.triple} library on "
            f"this {_host.host_arch()} machine needs it (Debian/Ubuntu: apt-get install -y "
            f"{package})"
        )


# ---------------------------------------------------------------------------------------------
# Triples


def canonical_triple(triple: str) -> str:
    """``"x86_64"`` → ``"x86_64-linux-gnu"``, ``"host"`` → this machine's triple; raises
    :class:`UnknownTargetError` listing the supported triples for anything else."""
    if not isinstance(triple, str):
        raise UnknownTargetError(
            f"target must be a triple string, got {type(triple).__name__}; supported: "
            + ", ".join(SUPPORTED_TRIPLES + ("host",))
        )
    name = triple.strip().lower()
    if name == "host":
        return _host.host_triple()
    if name in SUPPORTED_TRIPLES:
        return name
    if name in _ALIASES:
        return _ALIASES[name]
    supported = ", ".join(SUPPORTED_TRIPLES) + " (or host, this machine)"
    if name in _HINTS:
        hint = f"; did you mean {_HINTS[name]}?"
    elif re.fullmatch(r"(sm_?|compute_?)?\d+(\.\d)?a?", name):
        hint = f"; that looks like a CUDA architecture: use target='cuda', cuda_arch={triple!r}"
    else:
        close = difflib.get_close_matches(
            name, list(SUPPORTED_TRIPLES) + list(_ALIASES) + ["host"], n=2, cutoff=0.6
        )
        close = list(dict.fromkeys(_ALIASES.get(c, c) for c in close))
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
    raise UnknownTargetError(f"unknown target {triple!r}{hint} Supported: {supported}")


def host_triple() -> str:
    """This machine's triple (``x86_64-linux-gnu`` or ``aarch64-linux-gnu``)."""
    return _host.host_triple()


def _triple_arch(triple: str) -> str:
    return triple.split("-", 1)[0]


# ---------------------------------------------------------------------------------------------
# CPU targets


def _cpu_features(target: Target) -> frozenset[str]:
    """The CPU features LLVM enables for the target's mtriple + mcpu + mattr."""
    return frozenset(str(f) for f in codegen.llvm_get_cpu_features(target))


def _host_cpu_target(triple: str, num_cores: int) -> tuple[Target, str]:
    """This machine's CPU: LLVM's name for it, corrected to the exact ISA features the CPU and OS
    offer (what ``-march=native`` does). The name alone can be wrong both ways under a hypervisor:
    a KVM guest on Sapphire Rapids may be called ``rocketlake`` (AMX, AVX512-FP16 missing) and a
    guest whose AVX-512 is masked may still be called ``skylake-avx512``."""
    mcpu = _host.host_cpu_name()
    attrs: dict[str, Any] = {"kind": "llvm", "mtriple": triple, "mcpu": mcpu}
    implied = _cpu_features(Target(attrs))
    actual = _host.host_cpu_features()
    mattr = sorted(
        ("+" if on else "-") + name for name, on in actual.items() if on != (name in implied)
    )
    if mattr:
        attrs["mattr"] = mattr
    elif triple.startswith("aarch64"):
        attrs["mattr"] = ["+neon"]
    attrs["num-cores"] = num_cores
    return Target(attrs), mcpu


def _checked_mcpu(mcpu: str, triple: str) -> str:
    name = mcpu.strip()
    if codegen.llvm_is_valid_cpu(name, triple):
        return name
    known = [
        str(c) for c in codegen.llvm_get_cpu_archlist(Target({"kind": "llvm", "mtriple": triple}))
    ]
    close = difflib.get_close_matches(name.lower(), known, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    examples = {
        "x86_64": "x86-64-v3 (AVX2), x86-64-v4 (AVX-512), skylake-avx512, znver4",
        "aarch64": "generic, cortex-a53, cortex-a72, cortex-a76, neoverse-n1",
    }[_triple_arch(triple)]
    raise UnknownTargetError(
        f"LLVM does not know the CPU {mcpu!r} for {triple}.{hint} Examples: {examples}"
    )


def _x86_tier(features: frozenset[str]) -> tuple[str, int]:
    if "avx512f" in features:
        return "avx512", 512
    if {"avx2", "fma"} <= features:
        return "avx2", 256
    if "avx" in features:
        return "avx", 256
    return "sse", 128


# Feature families the code generator emits in ordinary code. System features (pku, sgx, rtm…)
# a CPU model implies but a hypervisor may hide do not stop compiled kernels from running.
_CODEGEN_FEATURE_PREFIXES = (
    "sse", "ssse3", "avx", "fma", "f16c", "amx", "bmi", "lzcnt", "popcnt", "movbe", "adx",
    "aes", "pclmul", "vpclmulqdq", "vaes", "gfni", "sha", "cx16", "crc32",
    "neon", "sve", "sme", "dotprod", "i8mm", "fullfp16", "fp16fml", "bf16", "lse", "rdm", "crc",
)  # fmt: skip


def codegen_isa(features: frozenset[str]) -> tuple[str, ...]:
    """The instruction-set features among ``features`` that generated code may use: what a
    machine must have to run it (recorded in artifact manifests as ``target.isa``)."""
    return tuple(sorted(f for f in features if f.startswith(_CODEGEN_FEATURE_PREFIXES)))


def missing_on_host(target: Target) -> list[str]:
    """What this machine lacks to run CPU code built for ``target``: its architecture when that
    differs (``["aarch64"]``), else the ISA features the host CPU does not have (``["avx512f",
    …]``); empty when the code runs here."""
    if str(target.kind.name) == "cuda":
        target = target.host
    arch = _triple_arch(str(target.attrs.get("mtriple", "")))
    if arch != _host.host_arch():
        return [arch]
    return _host.missing_isa_features(codegen_isa(_cpu_features(target)))


def ensure_runs_here(target: Target, what: str = "code") -> None:
    """Raise :class:`DeviceError` before ``what`` built for ``target`` is run on a CPU that lacks
    its architecture or ISA features (it would die with SIGILL, taking the process with it)."""
    missing = missing_on_host(target)
    if missing:
        raise DeviceError(
            f"this machine cannot run {what} built for {target.attrs.get('mcpu', '?')} "
            f"({target.attrs.get('mtriple', '?')}): it lacks {', '.join(missing)}. Build for "
            "this machine (no mcpu, or mcpu=x86-64-v3 for any AVX2 CPU), or run it on a device "
            "that has them (`sepconv device serve` there, then --device rpc://HOST:9090)"
        )


def _resolve_cpu(triple: str, mcpu: str | None, num_cores: int | None) -> TargetSpec:
    arch = _triple_arch(triple)
    native = arch == _host.host_arch()
    if mcpu is not None and mcpu.strip().lower() in ("native", "host"):
        if not native:
            raise UnknownTargetError(
                f"mcpu={mcpu!r} means this machine's CPU, but this is a {_host.host_arch()} "
                f"machine and the target is {triple}; name the {arch} CPU (e.g. "
                + ("cortex-a72" if arch == "aarch64" else "x86-64-v3")
                + ")"
            )
        mcpu = None
    if num_cores is None:
        num_cores = _host.physical_cores() if native else DEFAULT_CROSS_CORES
    if mcpu is None and native:
        target, cpu_name = _host_cpu_target(triple, num_cores)
    else:
        cpu_name = (
            _checked_mcpu(mcpu, triple)
            if mcpu is not None
            else (DEFAULT_AARCH64_MCPU if arch == "aarch64" else PORTABLE_X86_MCPU)
        )
        attrs: dict[str, Any] = {"kind": "llvm", "mtriple": triple, "mcpu": cpu_name}
        if arch == "aarch64":
            attrs["mattr"] = ["+neon"]
        attrs["num-cores"] = num_cores
        target = Target(attrs)
    features = _cpu_features(target)
    if arch == "x86_64":
        family = "x86"
        tier, bits = _x86_tier(features)
        key = f"x86_64-{tier}"
    else:
        family = "arm"
        if "neon" not in features:
            raise UnknownTargetError(f"CPU {cpu_name!r} has no NEON; aarch64 targets need it")
        key, bits = "aarch64-neon", 128
    reported = tuple(f for f in _REPORTED_FEATURES[family] if f in features)
    return TargetSpec(
        triple=triple,
        target=target,
        key=key,
        family=family,
        vector_bits=bits,
        num_cores=num_cores,
        is_host=not missing_on_host(target),
        mcpu=cpu_name,
        features=reported,
        isa=codegen_isa(features),
    )


# ---------------------------------------------------------------------------------------------
# CUDA


def parse_cuda_arch(arch: str) -> str:
    """``"sm_90"``, ``"sm90"``, ``"90"``, ``"9.0"``, ``"compute_90"`` → ``"sm_90"``;
    ``"sm_90a"`` / ``"90a"`` keep the arch-specific ``a`` (Hopper and later)."""
    m = re.fullmatch(r"(?:sm_?|compute_?)?(\d+)(?:\.(\d))?(a?)", str(arch).strip().lower())
    if not m:
        raise UnknownTargetError(
            f"cannot read CUDA architecture {arch!r}; write it as sm_90, 90 or 9.0"
        )
    major_minor = m.group(1) + (m.group(2) or "")
    if len(major_minor) < 2:
        raise UnknownTargetError(
            f"cannot read CUDA architecture {arch!r}; write it as sm_90, 90 or 9.0"
        )
    if m.group(3) and int(major_minor) < 90:
        raise UnknownTargetError(
            f"CUDA architecture {arch!r}: the arch-specific 'a' variants exist from sm_90 on"
        )
    return f"sm_{major_minor}{m.group(3)}"


def _resolve_cuda(cuda_arch: str | None, mcpu: str | None, num_cores: int | None) -> TargetSpec:
    local_cc = _host.gpu_compute_capability()
    if cuda_arch is not None:
        arch = parse_cuda_arch(cuda_arch)
    elif local_cc is not None:
        arch = parse_cuda_arch(local_cc)
        logger.info("compiling for this machine's GPU: %s", arch)
    else:
        arch = DEFAULT_CUDA_ARCH
        logger.warning(
            "no CUDA GPU here and no architecture given: compiling for %s (H100); pass "
            "cuda_arch / --cuda-arch (e.g. sm_80 for A100, sm_89 for L4) for another GPU",
            arch,
        )
    check_arch_buildable(arch)
    # Host code: this machine's CPU when the GPU is local, else portable x86-64.
    gpu_here = local_cc is not None and _host.host_arch() in ("x86_64", "aarch64")
    if gpu_here:
        host_spec = _resolve_cpu(_host.host_triple(), mcpu, num_cores)
    else:
        host_spec = _resolve_cpu("x86_64-linux-gnu", mcpu or PORTABLE_X86_MCPU, num_cores)
    target = Target(
        {
            "kind": "cuda",
            "arch": arch,
            "max_threads_per_block": 1024,
            "max_shared_memory_per_block": 49152,
            "thread_warp_size": 32,
            "registers_per_block": 65536,
            "host": json.loads(str(host_spec.target)),
        }
    )
    configure_cuda_jit()
    return TargetSpec(
        triple="cuda",
        target=target,
        key="cuda-" + arch.replace("_", ""),
        family="cuda",
        vector_bits=0,
        num_cores=host_spec.num_cores,
        is_host=gpu_here and host_spec.is_host,
        mcpu=host_spec.mcpu,
        cuda_arch=arch,
        features=(),
        isa=host_spec.isa,
    )


# ---------------------------------------------------------------------------------------------
# Entry point


def resolve_target(
    triple: str = "host",
    *,
    mcpu: str | None = None,
    cuda_arch: str | None = None,
    num_cores: int | None = None,
) -> TargetSpec:
    """Turn a triple (``host``, ``x86_64-linux-gnu``, ``aarch64-linux-gnu``, ``cuda`` or an alias
    such as ``x86_64`` / ``arm64``) into a :class:`TargetSpec`.

    - ``mcpu``: the LLVM CPU to compile for (``x86-64-v3``, ``skylake-avx512``, ``cortex-a72``;
      ``native`` = this machine). Default: this machine's CPU, exactly, when the triple is this
      machine's architecture; ``generic`` for aarch64 otherwise. For cuda it picks the host code's
      CPU.
    - ``cuda_arch``: ``sm_90``, ``90`` or ``9.0``. Default: the local GPU's, else ``sm_90`` with
      a warning. Must be one this machine's nvcc can build.
    - ``num_cores``: threads to size parallel loops for. Default: this machine's physical cores
      for its own architecture, 4 for a cross target.
    """
    canonical = canonical_triple(triple)
    if num_cores is not None and (not isinstance(num_cores, int) or num_cores < 1):
        raise UnknownTargetError(f"num_cores must be a positive integer, got {num_cores!r}")
    if canonical == "cuda":
        return _resolve_cuda(cuda_arch, mcpu, num_cores)
    if cuda_arch is not None:
        raise UnknownTargetError(
            f"cuda_arch={cuda_arch!r} applies to target 'cuda' only, not {canonical}"
        )
    return _resolve_cpu(canonical, mcpu, num_cores)


__all__ = [
    "SUPPORTED_TRIPLES",
    "TargetSpec",
    "canonical_triple",
    "host_triple",
    "parse_cuda_arch",
    "resolve_target",
]
