"""Design spaces: our rules' ``tunable=True`` form, enumerated; MetaSchedule's default elsewhere.

A rule's ``apply(func, target, tunable=True)`` is its design space. Our rules sample with
``sample_categorical``, and the NHWC tile rules then use the value as a *Python* number
(``int(sch.get(rv))``), so their traces do not depend on the sample and replaying them — all
MetaSchedule can do — would never explore. The space is therefore enumerated here: the rule is
re-run with every combination of its categorical decisions forced
(:func:`sepconv.compiler.tvm_compat.forced_categorical_decisions`; a seeded sample of at most
``MAX_RULE_SPACES`` when there are more; the rule's own choice always first), and each distinct
schedule is one candidate. A rule whose schedules still sample otherwise
(``sample_perfect_tile``…) is searched by MetaSchedule's evolutionary search. A rule without any
sampling instruction (elementwise, pooling, fallback) has no space: those tasks get
MetaSchedule's default space, with the rule's own schedule measured first — so a task's best
record is never worse than the untuned build on the machine that tuned it. A rule that declares
itself not ``searchable`` (the pooling rule: its split follows how the producer wrote the map,
which a kernel timed alone cannot show) is measured alone: its schedule is the whole space. A
rule whose schedules MetaSchedule's postprocessors reject gets the default space without a seed
(logged).
``space="default"`` tunes everything in the default space, unseeded (stock MetaSchedule).
"""

from __future__ import annotations

import itertools
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sepconv.compiler import tvm_compat
from sepconv.compiler.tuning.tasks import TuneTask
from sepconv.errors import TuningError

log = logging.getLogger(__name__)

MAX_RULE_SPACES = 64
"""At most this many forced-decision schedules per rule (sampled, default decisions first)."""

__all__ = ["MAX_RULE_SPACES", "RuleSpace", "design_space", "rule_spaces", "space_generator"]


def _run_rule(rule: Any, func: Any, target: Any, decisions: Sequence[int]) -> tuple[list, list]:
    """``rule.apply(func, target, tunable=True)`` with categorical decisions forced; returns
    (schedules, candidates-per-sample seen)."""
    from sepconv.compiler.tvm_compat import forced_categorical_decisions

    with forced_categorical_decisions(decisions) as seen:
        space = rule.apply(func, target, True)
    if space is None:
        return [], seen
    return (list(space) if isinstance(space, (list, tuple)) else [space]), seen


@dataclass
class RuleSpace:
    """A rule's design space for one function: ``schedules[0]`` is the rule's own choice.

    ``enumerated``: every schedule is one fixed point (all categorical decisions forced), so the
    space is searched exhaustively in cost-model order; otherwise the schedules still sample
    (e.g. ``sample_perfect_tile``) and the evolutionary search explores them.
    """

    rule: str | None
    schedules: list
    enumerated: bool = True
    own: list = field(default_factory=list)  # no space (nothing sampled): the rule's schedule
    searchable: bool = True  # False: ``own`` is the whole space (the rule's ``searchable``)


def rule_spaces(
    func: Any, target: Any, rules: Sequence[Any] | None = None, max_spaces: int = MAX_RULE_SPACES
) -> RuleSpace:
    """The design space of the first rule that accepts ``func`` (``tunable=True``).

    Each combination of the rule's ``sample_categorical`` decisions is forced in turn (all of
    them when there are at most ``max_spaces``, else the rule's default plus a seeded random
    sample) and the distinct schedules are kept. No schedules: the rule samples nothing (use
    MetaSchedule's default space), or no rule accepts the function.
    """
    import tvm_ffi

    from sepconv.schedules import cpu_rules, gpu_rules

    if rules is None:  # TVM's dlight rules on CUDA sample nothing: their schedule seeds the search
        rules = gpu_rules(target) if target.kind.name == "cuda" else cpu_rules(target)
    for rule in rules:
        try:
            first, seen = _run_rule(rule, func, target, [])
        except Exception as exc:  # noqa: BLE001 - as schedule_function: next rule
            log.debug("rule %s raised on a tuning task: %s", type(rule).__name__, exc)
            continue
        if not first:
            continue
        name = getattr(rule, "name", type(rule).__name__)
        kinds = {i.kind.name for s in first for i in s.trace.insts}
        samples = {k for k in kinds if k.startswith("Sample")}
        if not samples:
            return RuleSpace(name, [], own=first, searchable=getattr(rule, "searchable", True))
        if samples != {"SampleCategorical"} or not seen:
            return RuleSpace(name, first, enumerated=False)
        combos = list(itertools.product(*(range(n) for n in seen)))
        if len(combos) > max_spaces - 1:
            combos = random.Random(0).sample(combos, max_spaces - 1)
        spaces: dict[int, Any] = {}
        for s in first:
            spaces.setdefault(tvm_ffi.structural_hash(s.mod), s)
        for combo in combos:
            try:
                schs, _ = _run_rule(rule, func, target, combo)
            except Exception as exc:  # noqa: BLE001 - a decision the rule cannot schedule
                log.debug("rule %s with decisions %s raised: %s", name, combo, exc)
                continue
            for s in schs:
                spaces.setdefault(tvm_ffi.structural_hash(s.mod), s)
        return RuleSpace(name, list(spaces.values()))
    return RuleSpace(None, [])


def space_generator(traces: Sequence[Any]) -> Any:
    """A ScheduleFn replaying the given design-space traces on MetaSchedule's schedule."""
    from tvm.s_tir import meta_schedule as ms

    def fn(sch: Any) -> list:
        out = []
        for trace in traces:
            s = sch.copy()
            trace.apply_to_schedule(s, remove_postproc=True)
            out.append(s)
        return out

    return ms.space_generator.ScheduleFn(fn)


def passes_postprocs(ctx: Any) -> list:
    """The design spaces of ``ctx`` that MetaSchedule's postprocessors accept."""
    ok = []
    for sch in ctx.generate_design_space():
        s = sch.copy()
        try:
            if all(p.apply(s) for p in ctx.space_generator.postprocs):
                ok.append(sch)
        except Exception as exc:  # noqa: BLE001
            log.debug("postprocessor raised on %s: %s", ctx.task_name, exc)
    return ok


def _probe(task: TuneTask, target: Any, ms: Any, traces: list) -> Any:
    # light_tensor_intrinsics nests, so the driver's block is reused; called alone (a test, a
    # script) the full import costs minutes in a process with many modules loaded
    with tvm_compat.light_tensor_intrinsics(target):
        return ms.TuneContext(task.mod, target=target, space_generator=space_generator(traces))


def design_space(task: TuneTask, target: Any, ms: Any, space: str) -> tuple[Any, str]:
    """(space generator, how to search it: ``"enumerate"`` or ``"evolve"``) for ``task``.

    ``space="rules"``: our rule's design space where it has one that MetaSchedule's
    postprocessors accept, else MetaSchedule's default space (seeded with the rule's own
    schedule, ``task.seeds``, when a rule without a space accepts the task). ``space="default"``:
    always the default, unseeded (stock MetaSchedule). Sets ``task.space``/``rule``/
    ``num_spaces``/``seeds``.
    """
    if space == "rules":
        rs = rule_spaces(task.mod["main"], target)
        task.rule = rs.rule
        if rs.schedules:
            traces = [s.trace for s in rs.schedules]
            accepted = passes_postprocs(_probe(task, target, ms, traces))
            if accepted:
                if len(accepted) < len(traces):
                    log.info(
                        "%s: MetaSchedule's postprocessors reject %d of rule %s's %d schedules",
                        task.name,
                        len(traces) - len(accepted),
                        rs.rule,
                        len(traces),
                    )
                    traces = [s.trace for s in accepted]
                task.space, task.num_spaces = "rule", len(traces)
                return space_generator(traces), "enumerate" if rs.enumerated else "evolve"
            log.warning(
                "MetaSchedule's postprocessors reject every schedule of rule %s for %s; tuning "
                "it in MetaSchedule's default space",
                rs.rule,
                task.name,
            )
        elif rs.rule is not None and not rs.searchable:
            own = passes_postprocs(_probe(task, target, ms, [x.trace for x in rs.own]))
            if own:
                task.space, task.num_spaces = "rule", len(own)
                return space_generator([x.trace for x in own]), "enumerate"
        elif rs.rule is not None:
            # the rule's own schedule is measured first: the best record is then never worse
            # than the untuned build, on the machine that tuned
            task.seeds = passes_postprocs(_probe(task, target, ms, [x.trace for x in rs.own]))
            log.info("rule %s has no design space for %s: default space", rs.rule, task.name)
    elif space != "default":
        raise TuningError(f"space must be 'rules' or 'default', got {space!r}")
    task.space, task.num_spaces = "default", 0
    return "post-order-apply", "evolve"
