"""Lower an imported graph for a target and build it with ``tvm.compile``.

ImportedGraph ──prepare_graph──► Relax (BN folded, weights lifted)
              ──lower──────────► fused TIR PrimFuncs, each scheduled (tuned record or rule)
              ──tvm.compile────► VM executable
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import tvm
from tvm import relax

from sepconv.compiler.importer import ImportedGraph
from sepconv.compiler.passes import fast_sigmoid, fold_batch_norm, lift_constants
from sepconv.errors import CompileError

log = logging.getLogger(__name__)


@dataclass
class BuildStats:
    """What the build did, for the manifest and the CLI."""

    primfuncs: list[str] = field(default_factory=list)
    sepconv_ops: dict | None = None  # what the separable rewrite did; None when it was off
    tuned: list[str] = field(default_factory=list)  # PrimFuncs scheduled from tuning records
    seconds: dict[str, float] = field(default_factory=dict)

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
            "sepconv_ops": self.sepconv_ops,
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
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
) -> tuple[tvm.IRModule, dict[str, np.ndarray], dict | None]:
    """Graph passes; returns the module, its lifted weights and the separable-rewrite stats.

    With ``sepconv_ops`` (CPU targets), depthwise/pointwise convs and fused dw→pw chains become
    our own operators (:mod:`sepconv.compiler.separable`); without, TVM's conv2d is kept — the
    switch exists to measure the gain and to bisect a suspected miscompile.
    ``fuse_dw_pw=False`` keeps depthwise and pointwise as two of our operators (to measure the
    fusion alone).
    """
    mod = fold_batch_norm(graph.mod)
    mod = relax.transform.FoldConstant()(mod)
    stats = None
    if uses_sepconv_ops(target, sepconv_ops):
        from sepconv.compiler.separable import apply_separable_ops

        mod, sep = apply_separable_ops(mod, fuse=fuse_dw_pw)
        stats = sep.to_json()
    if target.kind.name == "llvm":
        mod = fast_sigmoid(mod)  # after the layout change: it has no layout rule of its own
    mod, weights = lift_constants(mod)
    return mod, weights, stats


def fuse(mod: tvm.IRModule, target: tvm.target.Target) -> tvm.IRModule:
    """Legalize to TIR and fuse, exactly as tuning task extraction sees the graph."""
    with target:
        seq = tvm.transform.Sequential(
            [
                relax.transform.LegalizeOps(),
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


def primfunc_names(mod: tvm.IRModule) -> list[str]:
    return sorted(
        gv.name_hint for gv, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)
    )


def schedule(
    mod: tvm.IRModule, target: tvm.target.Target, database=None
) -> tuple[tvm.IRModule, list[str]]:
    """Schedule every PrimFunc: tuned records first, then our rule list for what is left."""
    from sepconv.schedules import apply_schedules

    tuned: list[str] = []
    if database is not None:
        from sepconv.compiler.tuning_db import apply_database

        mod, tuned = apply_database(mod, target, database)
    mod = apply_schedules(mod, target)
    return mod, tuned


def _finalize_pipeline(target: tvm.target.Target) -> tvm.transform.Pass:
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    passes = cpu.dataflow_lower_passes(target) + cpu.finalize_passes(target)
    return tvm.transform.Sequential(passes)


def build(
    graph: ImportedGraph,
    target: tvm.target.Target,
    database=None,
    on_stage=None,
    sepconv_ops: bool = True,
) -> BuildResult:
    """``on_stage(name)`` is called as each stage starts (the CLI shows it as progress)."""
    on_stage = on_stage or (lambda _name: None)
    stats = BuildStats()
    on_stage("graph passes")
    t0 = time.perf_counter()
    mod, weights, stats.sepconv_ops = prepare_graph(graph, target, sepconv_ops)
    stats.seconds["graph_passes"] = time.perf_counter() - t0

    on_stage("lower and schedule")
    t0 = time.perf_counter()
    mod = fuse(mod, target)
    stats.primfuncs = primfunc_names(mod)
    mod, stats.tuned = schedule(mod, target, database)
    stats.seconds["lower_and_schedule"] = time.perf_counter() - t0

    on_stage("codegen")
    t0 = time.perf_counter()
    try:
        with target:
            executable = tvm.compile(mod, target=target, relax_pipeline=_finalize_pipeline(target))
    except Exception as exc:
        raise CompileError(
            f"tvm.compile failed for target {target.kind.name}: {type(exc).__name__}: "
            f"{str(exc).strip().splitlines()[-1][:300] if str(exc).strip() else ''}"
        ) from exc
    stats.seconds["codegen"] = time.perf_counter() - t0
    log.info("built %d functions in %s", len(stats.primfuncs), stats.seconds)
    return BuildResult(executable=executable, weights=weights, stats=stats)
