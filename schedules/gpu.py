"""CUDA rule list: TVM's dlight GPU rules, and the check that every kernel fits the GPU.

The hot paths of a separable network (depthwise convs, fused depthwise→pointwise blocks,
squeeze-and-excitation) do not reach these rules on CUDA: :mod:`sepconv.compiler.triton_ops`
replaces them by Triton kernels before lowering, and their host-side launch functions arrive
already marked scheduled. Everything else (the stem, pointwise convs outside a fused block,
pooling, the classifier, elementwise glue) is taken by the first rule that fits, in the order
``tvm.relax.backend.cuda.pipeline`` uses::

    Matmul → GEMV → Reduction → GeneralReduction → Fallback

dlight's GEMV analysis asserts (instead of declining) on some conv epilogues; :class:`Declining`
turns an exception inside a rule into "not mine", so the next rule takes the function and the
build log stays quiet.

:func:`verify_gpu_kernels` lowers the scheduled functions exactly as ``tvm.compile`` will (the
target's default TIR pipeline, with ``VerifyMemory``), checks that each one became a GPU kernel
(TVM would otherwise quietly compile it for the host CPU) and runs ``VerifyGPUCode`` on every
kernel with the target's limits (threads per block, shared memory, vector width).
"""

from __future__ import annotations

import logging
import re

import tvm
from tvm import s_tir, tirx
from tvm.ir import IRModule
from tvm.s_tir import dlight as dl
from tvm.s_tir.dlight import ScheduleRule
from tvm.target import Target

log = logging.getLogger(__name__)

_KERNEL_LAUNCH = 2  # tvm::CallingConv::kDeviceKernelLaunch
HOST_ONLY_ATTR = "sepconv.kernel_launcher"  # PrimFuncs that only launch external kernels


class Declining(ScheduleRule):
    """Wraps a dlight rule: an exception inside it means "not mine" (logged at debug level)."""

    def __init__(self, rule: ScheduleRule):
        self.rule = rule

    @property
    def name(self) -> str:
        return type(self.rule).__name__

    def is_target_available(self, target: Target) -> bool:
        return self.rule.is_target_available(target)

    def apply(self, func, target, tunable):
        try:
            return self.rule.apply(func, target, tunable)
        except Exception as exc:  # noqa: BLE001 - dlight analyses assert on shapes they do not fit
            log.debug("%s declined by raising %s: %s", self.name, type(exc).__name__, exc)
            return None

    def __repr__(self) -> str:
        return f"Declining({self.rule!r})"


def gpu_rules(target: Target | None = None) -> list:
    """The ordered CUDA rule list (dlight's GPU rules); ``Fallback`` last binds anything.

    ``target`` is accepted for symmetry with :func:`~sepconv.schedules.cpu_rules`: every dlight
    rule reads the thread and shared-memory limits from the target it is applied with.
    """
    del target
    return [
        Declining(dl.gpu.Matmul()),
        Declining(dl.gpu.GEMV()),
        Declining(dl.gpu.Reduction()),
        Declining(dl.gpu.GeneralReduction()),
        dl.gpu.Fallback(),
    ]


# Shared memory one block may use once it opts in (CUDA C++ Programming Guide, "Technical
# Specifications per Compute Capability"), by sm number. TVM's CUDA runtime opts in for every
# kernel whose dynamic shared memory reaches 48 KiB (cuFuncSetAttribute), and dlight's Matmul
# rule uses that room for tensor-core tiles (fp16); static shared memory stays capped at 48 KiB,
# which ptxas enforces when nvcc compiles the kernels at build time.
_OPT_IN_SHARED_KIB = {70: 96, 72: 96, 75: 64, 80: 163, 86: 99, 87: 163, 89: 99, 90: 227,
                      100: 227, 103: 227, 120: 99}  # fmt: skip


def max_shared_memory(target: Target) -> int:
    """Bytes of shared memory a block may use on ``target``'s architecture (48 KiB if unknown)."""
    value = target.attrs.get("max_shared_memory_per_block")
    declared = int(value) if value is not None else 49152
    m = re.fullmatch(r"sm_(\d+)a?", str(target.attrs.get("arch", "")))
    opt_in = _OPT_IN_SHARED_KIB.get(int(m.group(1))) if m else None
    return max(declared, opt_in * 1024) if opt_in else declared


def gpu_constraints(target: Target) -> dict[str, int]:
    """The limits ``VerifyGPUCode`` checks, read from the CUDA target."""

    def attr(name: str, default: int) -> int:
        value = target.attrs.get(name)
        return int(value) if value is not None else default

    threads = attr("max_threads_per_block", attr("max_num_threads", 1024))
    return {
        "max_threads_per_block": threads,
        "max_shared_memory_per_block": max_shared_memory(target),
        "max_thread_x": threads,
        "max_thread_y": threads,
        "max_thread_z": 64,
        "max_vthread": 8,
        "max_vector_bytes": 16,
    }


def _with_symbols(mod: IRModule) -> IRModule:
    """The PrimFuncs of ``mod`` with a global symbol each (the TIR pipeline only splits host and
    device code of functions that have one; Relax's ``AttachGlobalSymbol`` adds it at build)."""
    funcs = {}
    for gv, func in mod.functions_items():
        if isinstance(func, tirx.PrimFunc):
            if func.attrs is None or "global_symbol" not in func.attrs:
                func = func.with_attr("global_symbol", gv.name_hint)
            funcs[gv] = func
    return IRModule(funcs)


def verify_gpu_kernels(mod: IRModule, target: Target) -> list[str]:
    """Lower ``mod``'s PrimFuncs for ``target`` and return the problems found, one line each.

    An empty list means every function lowered, each became (or contains) a thread-bound GPU
    kernel, and every kernel is within the target's limits. TVM 0.27 does not refuse a
    function without thread bindings: its ``VerifyMemory`` lets it through and it is compiled
    as host code that would read GPU memory from the CPU, so that is checked here. Functions
    marked ``sepconv.kernel_launcher`` (the Triton launchers) are host code by design.
    """
    problems: list[str] = []
    tir_mod = _with_symbols(mod)
    if not len(tir_mod.functions):
        return problems
    pipeline, _, _ = tvm.tirx.get_default_tir_pipeline(target)
    try:
        with target:
            lowered = tvm.transform.Sequential([tirx.transform.BindTarget(target), pipeline])(
                tir_mod
            )
    except Exception as exc:  # noqa: BLE001 - reported to the caller as a problem
        lines = str(exc).strip().splitlines()
        return [f"lowering failed: {type(exc).__name__}: {lines[-1] if lines else ''}"]
    limits = gpu_constraints(target)
    kernels = []
    for gv, func in lowered.functions_items():
        if not isinstance(func, tirx.PrimFunc) or func.attrs is None:
            continue
        conv = func.attrs.get("calling_conv")
        if conv is None or int(conv) != _KERNEL_LAUNCH:
            continue
        kernels.append(gv.name_hint)
        if not s_tir.analysis.verify_gpu_code(func, limits):
            problems.append(f"{gv.name_hint}: exceeds the GPU limits {limits}")
    for gv, func in tir_mod.functions_items():
        if func.attrs is not None and HOST_ONLY_ATTR in func.attrs:
            continue  # launches kernels made elsewhere (Triton), touches no memory itself
        if not any(k.startswith(gv.name_hint + "_kernel") for k in kernels):
            problems.append(
                f"{gv.name_hint}: no thread-bound GPU kernel (it would run on the host CPU "
                "against GPU memory)"
            )
    return problems


__all__ = [
    "HOST_ONLY_ATTR",
    "Declining",
    "gpu_constraints",
    "gpu_rules",
    "max_shared_memory",
    "verify_gpu_kernels",
]
