"""Lower an imported graph for a target and build it with ``tvm.compile``.

ImportedGraph ──prepare_graph──► Relax (BN folded, weights lifted)
              ──lower──────────► fused TIR PrimFuncs, each scheduled (tuned record or rule)
              ──tvm.compile────► VM executable
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import tvm
from tvm import relax

from sepconv.compiler.costs import function_costs
from sepconv.compiler.importer import ImportedGraph
from sepconv.compiler.passes import (
    count_ops,
    fast_sigmoid,
    fold_batch_norm,
    fold_constants,
    lift_constants,
)
from sepconv.compiler.tvm_compat import partition_before_narrowing
from sepconv.errors import CompileError

log = logging.getLogger(__name__)


@dataclass
class BuildStats:
    """What the build did, for the manifest and the CLI."""

    primfuncs: list[str] = field(default_factory=list)
    sepconv_ops: dict | None = None  # what the separable rewrite did; None when it was off
    triton_ops: dict | None = None  # CUDA: what the Triton rewrite did (compiler.triton_ops)
    cuda_graph: bool | None = None  # CUDA: whether the VM replays one captured CUDA graph
    cuda_kernels: str | None = None  # CUDA: "binary" (nvcc at build) or "source" (at load)
    precision: str = "fp32"
    tuned: list[str] = field(default_factory=list)  # PrimFuncs scheduled from tuning records
    # PrimFuncs left to the rules whose records were measured on other CPUs → those CPUs
    tuned_elsewhere: dict[str, list[str]] = field(default_factory=dict)
    # PrimFuncs left to the rules because a confirmation found their records no faster
    rules_confirmed: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    functions: dict[str, dict] = field(default_factory=dict)  # per PrimFunc: compiler.costs
    # schedule rules that raised, each function then taking a later (usually slower) rule
    rule_failures: list[dict] = field(default_factory=list)

    @property
    def tasks_total(self) -> int:
        return len(self.primfuncs)

    @property
    def tasks_tuned(self) -> int:
        return len(self.tuned)

    def to_json(self) -> dict:
        return {
            "tasks_total": self.tasks_total,
            "tasks_tuned": self.tasks_tuned,
            "tuned_functions": sorted(self.tuned),
            **({"tuned_on_other_cpus": self.tuned_elsewhere} if self.tuned_elsewhere else {}),
            **({"rules_confirmed": self.rules_confirmed} if self.rules_confirmed else {}),
            "sepconv_ops": self.sepconv_ops,
            **({"triton_ops": self.triton_ops} if self.triton_ops is not None else {}),
            **({"cuda_graph": self.cuda_graph} if self.cuda_graph is not None else {}),
            **({"cuda_kernels": self.cuda_kernels} if self.cuda_kernels is not None else {}),
            **({"precision": self.precision} if self.precision != "fp32" else {}),
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
            "functions": self.functions,
            "rule_failures": self.rule_failures,
        }


@dataclass
class BuildResult:
    executable: object  # tvm.relax.VMExecutable
    weights: dict[str, np.ndarray]  # in the order main() takes them after its inputs
    stats: BuildStats


def uses_sepconv_ops(target: tvm.target.Target, sepconv_ops: bool) -> bool:
    """Our separable operators have CPU (LLVM) schedules; other targets keep TVM's convs."""
    return sepconv_ops and target.kind.name == "llvm"


def prepare_graph(
    graph: ImportedGraph,
    target: tvm.target.Target,
    sepconv_ops: bool = True,
    fuse_dw_pw: bool = True,
    precision: str = "fp32",
    triton_stats: dict | None = None,
) -> tuple[tvm.IRModule, dict[str, np.ndarray], dict | None]:
    """Graph passes; returns the module, its lifted weights and the separable-rewrite stats.

    With ``sepconv_ops`` (CPU targets), depthwise/pointwise convs and fused dw→pw chains become
    our own operators (:mod:`sepconv.compiler.separable`); without, TVM's conv2d is kept — the
    switch exists to measure the gain and to bisect a suspected miscompile.
    ``fuse_dw_pw=False`` keeps depthwise and pointwise as two of our operators (to measure the
    fusion alone).

    CUDA: ``precision="fp16"`` computes in half precision behind the same float32 interface
    (``ToMixedPrecision``); with ``sepconv_ops`` the depthwise convs, fused dw→pw blocks and SE
    blocks become embedded Triton kernels (:mod:`sepconv.compiler.triton_ops`), whose counts go
    into ``triton_stats`` when it is a dict.
    """
    from sepconv.compiler.int8.lowering import is_quantized

    if is_quantized(graph.mod):
        return _prepare_quantized(graph, target, sepconv_ops)
    if precision == "int8":
        raise CompileError(
            "precision='int8' needs a quantized graph: give calibration data "
            "(sepconv.compile(..., precision='int8', calibration=DATA), or `sepconv compile "
            "--precision int8 --calibration DATA`) or a PT2E-quantized ExportedProgram / .pt2"
        )
    mod = fold_batch_norm(graph.mod)
    mod = fold_constants(mod)
    stats = None
    if target.kind.name == "cuda":
        from sepconv.compiler.triton_ops import apply_triton_ops, mixed_precision

        mod = mixed_precision(mod, precision)
        if sepconv_ops:
            mod, tri = apply_triton_ops(mod, target, fuse=fuse_dw_pw)
            if triton_stats is not None:
                triton_stats.update(tri.to_json())
    elif precision != "fp32":
        raise CompileError(f"precision={precision!r} is for CUDA targets; CPU builds are fp32")
    if uses_sepconv_ops(target, sepconv_ops):
        from sepconv.compiler.separable import apply_separable_ops

        mod, sep = apply_separable_ops(mod, target, fuse=fuse_dw_pw)
        stats = sep.to_json()
    if target.kind.name == "llvm":
        mod = fast_sigmoid(mod)  # after the layout change: it has no layout rule of its own
    mod, weights = lift_constants(mod)
    return mod, weights, stats


def _prepare_quantized(graph: ImportedGraph, target: tvm.target.Target, sepconv_ops: bool):
    """A PT2E-quantized graph: its quantized units become our integer operators (before any
    constant folding, which would turn the int8 weights back into float ones)."""
    if target.kind.name != "llvm":
        raise CompileError(
            f"int8 compiles for CPU targets (x86_64, aarch64); not for {target.kind.name}"
        )
    mod, stats = graph.mod, None
    if sepconv_ops:
        from sepconv.compiler.int8.lowering import lower_quantized

        mod, q = lower_quantized(mod, target)
        stats = {"int8": q.to_json()}
        if count_ops(mod, "relax.nn.conv2d"):  # convs the quantizer left in float
            from sepconv.compiler.separable import apply_separable_ops

            mod, sep = apply_separable_ops(mod, target, always=True)
            stats["fp32"] = sep.to_json()
    mod = fold_constants(mod)
    mod = fast_sigmoid(mod)
    mod, weights = lift_constants(mod)
    return mod, weights, stats


def fuse(mod: tvm.IRModule, target: tvm.target.Target) -> tvm.IRModule:
    """Legalize to TIR and fuse, exactly as tuning task extraction sees the graph."""
    from sepconv.compiler.int8.lowering import LEGALIZE

    with target:
        seq = tvm.transform.Sequential(
            [
                relax.transform.LegalizeOps(LEGALIZE),
                relax.transform.AnnotateTIROpPattern(),
                relax.transform.FoldConstant(),
                relax.transform.FuseOps(),
                relax.transform.FuseTIR(),
                relax.transform.DeadCodeElimination(),
            ]
        )
        return seq(mod)


def lower(
    graph: ImportedGraph,
    target: tvm.target.Target,
    sepconv_ops: bool = True,
    fuse_dw_pw: bool = True,
) -> tuple[tvm.IRModule, dict[str, np.ndarray], dict | None]:
    """Graph passes + legalize + fuse: exactly the PrimFuncs that are scheduled, tuned and built.

    Tuning extracts its tasks from this, so tuning records match what ``build`` compiles.
    """
    mod, weights, stats = prepare_graph(graph, target, sepconv_ops, fuse_dw_pw)
    return fuse(mod, target), weights, stats


def record_times(mod: tvm.IRModule) -> dict[str, float]:
    """µs per call of each function scheduled from a tuning record, as the tuner timed it."""
    from sepconv.compiler.tuning.database import RECORD_US_ATTR

    return {
        gv.name_hint: float(f.attrs[RECORD_US_ATTR])
        for gv, f in mod.functions_items()
        if isinstance(f, tvm.tirx.PrimFunc) and f.attrs is not None and RECORD_US_ATTR in f.attrs
    }


def primfunc_names(mod: tvm.IRModule) -> list[str]:
    return sorted(
        gv.name_hint for gv, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)
    )


def schedule(
    mod: tvm.IRModule, target: tvm.target.Target, database=None, failures: list | None = None
) -> tuple[tvm.IRModule, list[str]]:
    """Schedule every PrimFunc: tuned records first, then our rule list for what is left
    (``failures``: the rules that raised, as :func:`sepconv.schedules.apply_schedules`)."""
    from sepconv.schedules import apply_schedules

    tuned: list[str] = []
    if database is not None:
        from sepconv.compiler.tuning.database import apply_database

        mod, tuned = apply_database(mod, target, database)
    mod = apply_schedules(mod, target, failures=failures)
    return mod, tuned


def _finalize_pipeline(target: tvm.target.Target) -> tvm.transform.Pass:
    if target.kind.name == "cuda":  # its finalize passes include RewriteCUDAGraph
        from tvm.relax.backend.cuda import pipeline as cuda

        return tvm.transform.Sequential(
            cuda.dataflow_lower_passes(target) + cuda.finalize_passes(target)
        )
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    passes = cpu.dataflow_lower_passes(target) + cpu.finalize_passes(target)
    return tvm.transform.Sequential(passes)


def _kernel_binaries(target: tvm.target.Target, stats: BuildStats):
    """CUDA: compile TVM's kernels with nvcc as they are generated, so the library carries
    binaries and loads with the TVM runtime alone (:mod:`sepconv.targets.cuda_embed`). Without
    nvcc the library carries CUDA C++ that the GPU machine compiles at load."""
    if target.kind.name != "cuda":
        return contextlib.nullcontext()
    from sepconv.targets.cuda_embed import precompiled_kernels
    from sepconv.targets.cuda_toolchain import compile_cuda_fatbin, find_nvcc

    if find_nvcc() is None:
        log.warning(
            "nvcc not found: the CUDA kernels are stored as source and compiled where the "
            "library loads (that machine needs nvcc or NVRTC and the full TVM)"
        )
        stats.cuda_kernels = "source"
        return contextlib.nullcontext()
    stats.cuda_kernels = "binary"
    return precompiled_kernels(str(target.attrs["arch"]), compile_cuda_fatbin)


def build(
    graph: ImportedGraph,
    target: tvm.target.Target,
    database=None,
    on_stage=None,
    sepconv_ops: bool = True,
    cuda_graph: bool | None = None,
    precision: str = "fp32",
    before_codegen: Callable[[tvm.IRModule], tvm.IRModule] | None = None,
) -> BuildResult:
    """``on_stage(name)`` is called as each stage starts (the CLI shows it as progress).

    ``before_codegen(mod) -> mod`` sees the scheduled module just before ``tvm.compile``: the
    bisect (:mod:`sepconv.compiler.bisect`) uses it to return every intermediate from ``main``
    while keeping every PrimFunc exactly as a normal build schedules it.

    CUDA only: ``cuda_graph`` captures the whole model in one CUDA graph that every later call
    replays (Relax ``RewriteCUDAGraph``; default: on for batch 1, which is launch-bound);
    ``precision`` is ``"fp32"`` or ``"fp16"`` (see :func:`prepare_graph`).
    """
    on_stage = on_stage or (lambda _name: None)
    from sepconv.compiler.int8.lowering import is_quantized

    stats = BuildStats(precision="int8" if is_quantized(graph.mod) else precision)
    is_cuda = target.kind.name == "cuda"
    if is_cuda:
        stats.triton_ops = {} if sepconv_ops else None
        batch = graph.inputs[0].shape[0] if graph.inputs and graph.inputs[0].shape else 1
        stats.cuda_graph = bool(batch == 1 if cuda_graph is None else cuda_graph)
    elif cuda_graph:
        raise CompileError("cuda_graph applies to CUDA targets only")
    on_stage("graph passes")
    t0 = time.perf_counter()
    mod, weights, stats.sepconv_ops = prepare_graph(
        graph, target, sepconv_ops, precision=precision, triton_stats=stats.triton_ops
    )
    stats.seconds["graph_passes"] = time.perf_counter() - t0

    on_stage("lower and schedule")
    t0 = time.perf_counter()
    mod = fuse(mod, target)
    stats.primfuncs = primfunc_names(mod)
    elsewhere = {}
    if database is not None:  # read before scheduling changes the keys
        from sepconv.compiler.tuning.database import records_on_other_cpus, rules_confirmed

        elsewhere = records_on_other_cpus(mod, database)
        stats.rules_confirmed = rules_confirmed(mod, database)
    try:  # what `sepconv profile` puts on the roofline; never a reason for a build to fail
        stats.functions = {name: c.to_json() for name, c in sorted(function_costs(mod).items())}
    except Exception:  # noqa: BLE001
        log.warning("per-function costs could not be computed; the profile shows no MACs",
                    exc_info=log.isEnabledFor(logging.DEBUG))  # fmt: skip
    mod, stats.tuned = schedule(mod, target, database, failures=stats.rule_failures)
    stats.tuned_elsewhere = {
        name: cpus
        for name, cpus in elsewhere.items()
        if name not in stats.tuned and name not in stats.rules_confirmed
    }
    for name, us in record_times(mod).items():
        stats.functions.setdefault(name, {})["record_us"] = us
    if is_cuda:
        from sepconv.schedules.gpu import verify_gpu_kernels

        problems = verify_gpu_kernels(mod, target)
        if problems:
            raise CompileError("CUDA kernels failed verification: " + "; ".join(problems[:5]))
    stats.seconds["lower_and_schedule"] = time.perf_counter() - t0
    if before_codegen is not None:
        mod = before_codegen(mod)

    on_stage("codegen")
    t0 = time.perf_counter()
    graph_ctx = (
        tvm.transform.PassContext(config={"relax.backend.use_cuda_graph": True})
        if stats.cuda_graph
        else contextlib.nullcontext()
    )
    try:
        with target, graph_ctx, _kernel_binaries(target, stats), partition_before_narrowing(target):
            executable = tvm.compile(mod, target=target, relax_pipeline=_finalize_pipeline(target))
    except Exception as exc:
        raise CompileError(
            f"tvm.compile failed for target {target.kind.name}: {type(exc).__name__}: "
            f"{str(exc).strip().splitlines()[-1][:300] if str(exc).strip() else ''}"
        ) from exc
    stats.seconds["codegen"] = time.perf_counter() - t0
    log.info("built %d functions in %s", len(stats.primfuncs), stats.seconds)
    return BuildResult(executable=executable, weights=weights, stats=stats)
