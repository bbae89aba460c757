"""Tuning tasks: the fused PrimFuncs of exactly the module ``build`` schedules, deduplicated."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["TuneTask", "call_counts", "extract_tasks"]


@dataclass
class TuneTask:
    """One tuning task: a fused PrimFunc (as MetaSchedule's workload module) and its weight."""

    name: str
    mod: Any  # IRModule {"main": PrimFunc}, normalised as the database keys it
    weight: float  # how many times the models call it
    models: list[str] = field(default_factory=list)
    rule: str | None = None  # our rule that accepts it, if any
    space: str = "default"  # "rule" or "default"
    num_spaces: int = 0  # design spaces (rule: distinct schedules)
    seeds: list = field(default_factory=list)  # default space: the rule's own schedule, first

    @functools.cached_property
    def workload_hash(self) -> str:
        """The structural hash the tune log keys this workload by."""
        from tvm.s_tir.meta_schedule.database import Workload

        return Workload(self.mod).as_json()[0]


def extract_tasks(
    graphs: Sequence[tuple[str, Any]], target: Any, sepconv_ops: bool = True
) -> list[TuneTask]:
    """Tasks of every ``(model name, ImportedGraph)``, from exactly the module ``build`` schedules
    (``lower``), deduplicated by structural equality of the workload (so two models sharing a
    layer shape share its task, and its weight adds up)."""
    import tvm_ffi
    from tvm import tirx

    from sepconv.compiler.build import lower
    from sepconv.compiler.tuning.database import SCHEDULED_ATTR, normalize_for_database

    tasks: list[TuneTask] = []
    by_hash: dict[int, list[TuneTask]] = {}
    for model_name, graph in graphs:
        mod, _weights, _stats = lower(graph, target, sepconv_ops)
        counts = call_counts(mod)
        for gv, func in mod.functions_items():
            if not isinstance(func, tirx.PrimFunc):
                continue
            if func.attrs is not None and SCHEDULED_ATTR in func.attrs:
                continue  # hand-written kernels: nothing to tune
            wmod = normalize_for_database(func)
            h = tvm_ffi.structural_hash(wmod)
            weight = float(counts.get(gv.name_hint, 1))
            for t in by_hash.get(h, []):
                if tvm_ffi.structural_equal(t.mod, wmod):
                    t.weight += weight
                    if model_name not in t.models:
                        t.models.append(model_name)
                    break
            else:
                task = TuneTask(gv.name_hint, wmod, weight, [model_name])
                tasks.append(task)
                by_hash.setdefault(h, []).append(task)
    return tasks


def call_counts(mod: Any) -> dict[str, int]:
    """How many times the Relax functions call each PrimFunc (``call_tir``)."""
    import tvm
    from tvm import relax

    counts: dict[str, int] = {}

    call_tir = tvm.ir.Op.get("relax.call_tir")

    def visit(expr: Any) -> None:
        if isinstance(expr, relax.Call) and expr.op.same_as(call_tir):
            if isinstance(expr.args[0], relax.GlobalVar):
                name = expr.args[0].name_hint
                counts[name] = counts.get(name, 0) + 1

    for _gv, func in mod.functions_items():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return counts
