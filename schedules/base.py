"""The base class of the CPU schedule rules (a ``tvm.s_tir.dlight`` ``ScheduleRule``)."""

from __future__ import annotations

from tvm.s_tir.dlight import ScheduleRule
from tvm.target import Target


class CpuRule(ScheduleRule):
    """A dlight schedule rule for LLVM CPU targets; ``apply`` returns None on other targets.

    ``apply(func, target, tunable)`` returns a ``tvm.s_tir.Schedule`` when the rule fits the
    PrimFunc, or None ("not mine"), exactly as dlight's rules do, so a list of these rules works
    with ``tvm.s_tir.dlight.ApplyDefaultSchedule`` as well as with ``apply_schedules``.
    """

    # False: the tuner measures this rule's own schedule and searches no other. For a rule that
    # chooses what a kernel timed alone cannot show (which core wrote the data it reads).
    searchable = True

    def is_target_available(self, target: Target) -> bool:
        return target is not None and target.kind.name == "llvm"

    @property
    def name(self) -> str:
        return type(self).__name__

    def __repr__(self) -> str:
        return f"{self.name}()"
