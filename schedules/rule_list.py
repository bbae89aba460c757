"""The rule lists and the pass that applies them (the package docstring explains them).

Kept out of the package's ``__init__`` so that the Triton kernels (``schedules/triton_*.py``,
which need only Triton) import where TVM has only its runtime: the GPU machine of
``benchmarks/gpu_kit.py``."""

from __future__ import annotations

import logging
from collections import Counter

from tvm import s_tir, tirx
from tvm.ir import IRModule
from tvm.target import Target

from sepconv.errors import CompileError
from sepconv.schedules.base import CpuRule
from sepconv.schedules.conv2d import Conv2D
from sepconv.schedules.dense import Dense
from sepconv.schedules.depthwise_conv import DepthwiseConv2D
from sepconv.schedules.fallback import Fallback
from sepconv.schedules.fused_dw_pw import FusedDepthwisePointwise
from sepconv.schedules.gpu import gpu_rules
from sepconv.schedules.injective import Injective
from sepconv.schedules.int8_pointwise import Int8Pointwise
from sepconv.schedules.reduction import Reduction
from sepconv.schedules.sepconv_conv import SepconvConv
from sepconv.schedules.sepconv_dw import SepconvDepthwise
from sepconv.schedules.sepconv_pw import SepconvPointwise
from sepconv.schedules.target_params import CpuParams, cpu_params

log = logging.getLogger(__name__)

__all__ = [
    "Conv2D",
    "CpuParams",
    "CpuRule",
    "Dense",
    "DepthwiseConv2D",
    "Fallback",
    "Injective",
    "FusedDepthwisePointwise",
    "Reduction",
    "SepconvConv",
    "SepconvDepthwise",
    "SepconvPointwise",
    "apply_schedules",
    "cpu_params",
    "cpu_rules",
    "gpu_rules",
    "is_scheduled",
    "schedule_function",
    "unscheduled_functions",
]

SCHEDULED_ATTR = "tirx.is_scheduled"


def cpu_rules(target: Target | None = None) -> list:
    """The ordered CPU rule list; the first rule that accepts a function wins, fallback last.

    ``target`` is accepted for symmetry with other target families (every rule reads what it
    needs from the target it is applied with).
    """
    del target
    return [
        Int8Pointwise(),  # before the fp32 fused rule, which the int8 fused operator matches too
        FusedDepthwisePointwise(),
        SepconvDepthwise(),
        SepconvPointwise(),
        SepconvConv(),
        DepthwiseConv2D(),
        Conv2D(),
        Dense(),
        Reduction(),
        Injective(),
        Fallback(),
    ]


def is_scheduled(func) -> bool:
    return (
        isinstance(func, tirx.PrimFunc)
        and func.attrs is not None
        and SCHEDULED_ATTR in func.attrs
        and bool(func.attrs[SCHEDULED_ATTR])
    )


def unscheduled_functions(mod: IRModule) -> list[str]:
    """Names of the PrimFuncs in ``mod`` that no rule has scheduled."""
    return sorted(
        gv.name_hint
        for gv, func in mod.functions_items()
        if isinstance(func, tirx.PrimFunc) and not is_scheduled(func)
    )


def _rule_name(rule) -> str:
    return getattr(rule, "name", None) or type(rule).__name__


def schedule_function(
    func: tirx.PrimFunc,
    target: Target,
    rules: list,
    name: str = "<func>",
    tunable: bool = False,
    failures: list | None = None,
) -> tuple[s_tir.Schedule | None, str | None]:
    """Apply the first rule that accepts ``func``: ``(schedule, rule name)`` or ``(None, None)``.

    A rule that raises is logged (warning, with rule and function names) and skipped; with
    ``failures`` a list, ``{"function", "rule", "error"}`` is appended to it too — the next rule
    is usually a slower schedule, which the build reports rather than hides.
    """
    for rule in rules:
        try:
            space = rule.apply(func, target, tunable)
        except Exception as exc:  # noqa: BLE001 - one broken rule must not kill the build
            first = str(exc).strip().splitlines()
            error = f"{type(exc).__name__}: {first[-1][:200] if first else ''}"
            log.warning(
                "schedule rule %s raised on %s (%s); trying the next rule",
                _rule_name(rule),
                name,
                error,
            )
            if failures is not None:
                failures.append({"function": name, "rule": _rule_name(rule), "error": error})
            continue
        if space is None:
            continue
        if isinstance(space, (list, tuple)):
            if not space:
                continue
            space = space[0]
        return space, _rule_name(rule)
    return None, None


def apply_schedules(
    mod: IRModule,
    target: Target,
    rules: list | None = None,
    report: dict[str, str] | None = None,
    failures: list | None = None,
) -> IRModule:
    """Schedule every PrimFunc of ``mod`` for ``target``; raise CompileError if any is left.

    Functions already marked ``tirx.is_scheduled`` (tuned records, hand-written kernels) are
    kept as they are. The input module is not modified. When ``report`` is a dict it is filled
    with ``{function name: rule name}`` for the functions scheduled here; ``failures``, a list,
    gets every rule that raised (:func:`schedule_function`).
    """
    if rules is None:
        rules = gpu_rules(target) if target.kind.name == "cuda" else cpu_rules(target)
    updates = {}
    hits: Counter = Counter()
    for gv, func in mod.functions_items():
        if not isinstance(func, tirx.PrimFunc) or is_scheduled(func):
            continue
        sch, rule = schedule_function(func, target, rules, gv.name_hint, failures=failures)
        if sch is None:
            continue
        updates[gv] = sch.mod["main"].with_attr(SCHEDULED_ATTR, True)
        hits[rule] += 1
        if report is not None:
            report[gv.name_hint] = rule
    if updates:
        mod = mod.clone()
        for gv, func in updates.items():
            mod[gv] = func
    log.info("scheduled %d functions: %s", sum(hits.values()), dict(hits))
    left = unscheduled_functions(mod)
    if left:
        raise CompileError(
            f"no schedule rule accepted {len(left)} function(s) for target "
            f"{target.kind.name}: {', '.join(left)}; add a rule to sepconv.schedules or a "
            "Fallback at the end of the rule list"
        )
    return mod
