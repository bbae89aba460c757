"""The tuning search: how each task's design space is searched, and what the log already knows.

:class:`RankedEnumeration` measures an enumerated rule space best-predicted first (XGBoost,
:func:`sepconv.compiler.tvm_compat.lazy_xgb_model`) until the space or the budget is spent;
evolutionary search on such a space spends its time failing to mutate. Spaces that still sample
get MetaSchedule's evolutionary search wrapped in :class:`ResumingSearch`.

Resuming. On a rerun, every record already in the log for a task is replayed once: its module
hash marks it measured (it is not measured again) and it trains the cost model before the first
new trial.
"""

from __future__ import annotations

import logging
import os
import zlib
from dataclasses import dataclass
from typing import Any

from sepconv.compiler.tuning.database import mean_secs
from sepconv.compiler.tuning.measure import measure_candidates
from sepconv.compiler.tuning.spaces import design_space
from sepconv.compiler.tuning.tasks import TuneTask

log = logging.getLogger(__name__)

DEFAULT_POPULATION = 256
"""Evolutionary-search population for MetaSchedule's default space (its own default is 512)."""
METASCHEDULE_LOGGER = "sepconv.tuning.metaschedule"
"""The logger MetaSchedule's per-task messages go to."""

__all__ = ["Budget", "logged_candidates", "make_search_strategies", "tune_context"]


@dataclass
class Budget:
    """Trials left in this run, shared by every task's search so that no batch overshoots it
    (MetaSchedule's scheduler checks its global limit only before each batch).

    A search takes its batch from the budget when it proposes it, not when the results come
    back: the scheduler's first round asks every task for a batch before any is measured.
    """

    total: int
    taken: int = 0
    stopped: bool = False

    @property
    def left(self) -> int:
        return 0 if self.stopped else max(0, self.total - self.taken)

    def take(self, wanted: int) -> int:
        """Reserve up to ``wanted`` trials; returns how many were granted."""
        granted = max(0, min(wanted, self.left))
        self.taken += granted
        return granted


def logged_candidates(
    task: TuneTask, database: Any, context: Any, cost_model: Any
) -> dict[int, list[float]]:
    """Module hash → run_secs of every record already logged for ``task``; the records also
    train ``cost_model``, so a resumed run starts where the killed one stopped."""
    import tvm_ffi
    from tvm.s_tir.meta_schedule.runner import RunnerResult

    logged: dict[int, list[float]] = {}
    if not database.has_workload(task.mod):
        return logged
    cands, results = [], []
    for rec in database.get_top_k(database.commit_workload(task.mod), 1 << 30):
        try:
            cand = rec.as_measure_candidate()
        except Exception as exc:  # noqa: BLE001 - a trace that no longer replays
            log.debug("cannot replay a record of %s: %s", task.name, exc)
            continue
        secs = [float(x) for x in rec.run_secs]
        logged[tvm_ffi.structural_hash(cand.sch.mod)] = secs
        cands.append(cand)
        results.append(RunnerResult(secs, None))
    if cands and cost_model is not None:
        cost_model.update(context, cands, results)
    return logged


def best_record_us(task: TuneTask, database: Any) -> float | None:
    """µs of ``task``'s best record in ``database`` (``None`` when it has none)."""
    if not database.has_workload(task.mod):
        return None
    top = database.get_top_k(database.commit_workload(task.mod), 1)
    secs = mean_secs(top[0].run_secs) if top else None
    return secs * 1e6 if secs is not None else None


def make_search_strategies(budget: Budget) -> tuple[type, type]:
    """(RankedEnumeration, ResumingSearch): MetaSchedule search strategies sharing ``budget``."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.runner import RunnerResult
    from tvm.s_tir.meta_schedule.search_strategy import PySearchStrategy

    @derived_object
    class RankedEnumeration(PySearchStrategy):
        """Exhaustive search of an enumerated rule space, best predicted first.

        Every design space is one fixed schedule; after MetaSchedule's postprocessors they are
        the candidates. Each batch measures the unmeasured candidates the XGBoost cost model
        ranks highest (the rule's own choice goes first, before the model knows anything).
        Candidates already in the log are not measured again. The evolutionary search would
        spend most of its time failing to mutate such spaces.
        """

        def __init__(self, task: TuneTask, budget: int):
            super().__init__()
            self.task = task
            self.budget = budget
            self.context = None
            self.skipped = 0

        def _initialize_with_tune_context(self, context):
            self.context = context

        def pre_tuning(self, max_trials, num_trials_per_iter, design_spaces, database, cost_model):
            self.max_trials = min(int(max_trials), self.budget)
            self.per_iter = int(num_trials_per_iter)
            self.cost_model = cost_model
            self.trials = 0
            logged = logged_candidates(self.task, database, self.context, cost_model)
            self.todo, self.skipped = measure_candidates(
                self.context, design_spaces, logged, self.task.name
            )

        def post_tuning(self):
            self.todo = []

        def generate_measure_candidates(self):
            k = budget.take(min(self.per_iter, self.max_trials - self.trials, len(self.todo)))
            if k <= 0:
                return None
            if self.trials > 0 and self.cost_model is not None and len(self.todo) > k:
                scores = self.cost_model.predict(self.context, self.todo)
                order = sorted(range(len(self.todo)), key=lambda i: -float(scores[i]))
                self.todo = [self.todo[i] for i in order]
            batch, self.todo = self.todo[:k], self.todo[k:]
            return batch

        def notify_runner_results(self, measure_candidates, results):
            self.trials += len(measure_candidates)

        def clone(self):
            return RankedEnumeration(self.task, self.budget)

    @derived_object
    class ResumingSearch(PySearchStrategy):
        """MetaSchedule's evolutionary search, for spaces that still sample: candidates whose
        module an earlier run measured are answered from the log instead of measured again,
        and the task's budget is what is left of it after the records already logged."""

        def __init__(self, inner, task: TuneTask, budget: int):
            super().__init__()
            self.inner = inner
            self.task = task
            self.budget = budget
            self.context = None
            self.logged: dict[int, list[float]] = {}
            self._pending: tuple[list, list] | None = ([], [])
            self.skipped = 0
            self.seeds: list = []

        def _initialize_with_tune_context(self, context):
            self.context = context
            self.inner._initialize_with_tune_context(context)

        def pre_tuning(self, max_trials, num_trials_per_iter, design_spaces, database, cost_model):
            self.logged = logged_candidates(self.task, database, self.context, cost_model)
            self.seeds, skipped = measure_candidates(
                self.context, self.task.seeds, self.logged, self.task.name
            )
            self.skipped += skipped
            self.inner.pre_tuning(
                max(1, min(int(max_trials), self.budget) - len(self.seeds)),
                num_trials_per_iter,
                design_spaces,
                database,
                cost_model,
            )

        def post_tuning(self):
            self.inner.post_tuning()

        def generate_measure_candidates(self):
            import tvm_ffi

            if self.seeds and budget.left > 0:  # measured first, outside the evolution
                batch, self.seeds = self.seeds[: budget.take(len(self.seeds))], []
                self._pending = None
                return batch
            for _ in range(8):
                if budget.left <= 0:
                    return None
                cands = self.inner.generate_measure_candidates()
                if cands is None:
                    return None
                fresh, known, known_results = [], [], []
                for c in cands:
                    secs = self.logged.get(tvm_ffi.structural_hash(c.sch.mod))
                    if secs is None:
                        fresh.append(c)
                    else:
                        known.append(c)
                        known_results.append(RunnerResult(secs, None))
                self.skipped += len(known)
                if fresh:
                    self._pending = (known, known_results)
                    return fresh[: budget.take(len(fresh))]
                self.inner.notify_runner_results(known, known_results)
            return None

        def notify_runner_results(self, measure_candidates, results):
            if self._pending is None:  # the seeds: the evolution did not propose them
                self._pending = ([], [])
                return
            known, known_results = self._pending
            self._pending = ([], [])
            self.inner.notify_runner_results(
                list(measure_candidates) + known, list(results) + known_results
            )

        def clone(self):
            return ResumingSearch(self.inner.clone(), self.task, self.budget)

    return RankedEnumeration, ResumingSearch


def tune_context(
    task: TuneTask, target: Any, ms: Any, space: str, budget: int, strategies: tuple[type, type]
) -> tuple[Any, Any]:
    """(TuneContext, search strategy) of ``task`` with its design space."""
    ranked_enumeration, resuming_search = strategies
    generator, how = design_space(task, target, ms, space)
    if how == "enumerate":
        search = ranked_enumeration(task, budget)
    else:
        population = DEFAULT_POPULATION if task.space == "default" else 64
        inner = ms.search_strategy.EvolutionarySearch(
            population_size=population, init_min_unmeasured=min(50, population // 4)
        )
        search = resuming_search(inner, task, budget)
    ctx = ms.TuneContext(
        task.mod,
        target=target,
        space_generator=generator,
        search_strategy=search,
        task_name=task.name,
        num_threads=max(1, os.cpu_count() or 1),
        rand_state=_seed(task.name),
        logger=logging.getLogger(METASCHEDULE_LOGGER),
    )
    return ctx, search


def _seed(name: str) -> int:
    return zlib.crc32(name.encode()) % (2**31 - 2) + 1
