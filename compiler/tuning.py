"""Auto-tuning with MetaSchedule: our rules' design spaces, XGBoost, measured on a device.

::

    model ──lower()──► fused PrimFuncs (exactly what build() schedules)
          ──extract──► tasks, deduplicated by structural workload (across models too)
          ──space────► our rule with tunable=True where one accepts the function,
                       MetaSchedule's post-order-apply space elsewhere
          ──search───► XGBoost cost model; gradient task scheduler across tasks
          ──measure──► builder (persistent worker pool) → runner (local | RPC | tracker)
          ──records──► tune_logs/<target-key>/ as measured (sepconv.compiler.tuning_db)

Design spaces. A rule's ``apply(func, target, tunable=True)`` is its design space. Our rules
sample with ``sample_categorical``, and the NHWC tile rules then use the value as a *Python*
number (``int(sch.get(rv))``), so their traces do not depend on the sample and replaying them —
all MetaSchedule can do — would never explore. The space is therefore enumerated here: the rule
is re-run with every combination of its categorical decisions forced (a seeded sample of at most
``MAX_RULE_SPACES`` when there are more; the rule's own choice always first), and each distinct
schedule is one candidate. :class:`RankedEnumeration` measures them best-predicted first (XGBoost)
until the space or the budget is spent; evolutionary search on such a space spends its time
failing to mutate. A rule whose schedules still sample otherwise (``sample_perfect_tile``…) is
searched by MetaSchedule's evolutionary search. A rule without any sampling instruction
(elementwise, pooling, fallback) has no space: those tasks get MetaSchedule's default space and
its evolutionary search, with the rule's own schedule measured first — so a task's best record
is never worse than the untuned build on the machine that tuned it (stock MetaSchedule's
candidates often are, early on). A rule whose schedules MetaSchedule's postprocessors reject
gets the default space without a seed (logged). ``space="default"`` tunes everything in the
default space, unseeded (stock MetaSchedule, for comparison).

Builder. MetaSchedule's default build function imports ``tvm.s_tir.tensor_intrin`` (≈25 s) in
every fresh worker, and ``LocalBuilder`` starts fresh workers per batch, so every candidate times
out on a small machine (FACTS.md). ``PoolBuilder`` keeps a pool of workers that import only
``tvm`` and reuses it; each build is ``tvm.compile`` + link (a cross-linker for remote targets).
The tuning process itself imports only the x86 and ARM tensor intrinsics
(:func:`light_tensor_intrinsics`), not all of them.

Resuming. Records are appended as they are measured. On a rerun, every record already in the log
for these tasks is replayed once: its module hash marks it measured (it is not measured again)
and it trains the cost model before the first new trial. ``trials`` counts the records already
in the log, so a killed run continues where it stopped.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import itertools
import logging
import os
import random
import sys
import tempfile
import threading
import time
import types
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sepconv.errors import DeviceError, TuningError

log = logging.getLogger(__name__)

MAX_RULE_SPACES = 64
"""At most this many forced-decision schedules per rule (sampled, default decisions first)."""
DEFAULT_POPULATION = 256
"""Evolutionary-search population for MetaSchedule's default space (its own default is 512)."""
FAILED_RUN_SECS = 1e9
DEAD_DEVICE_BATCHES = 2
"""Consecutive measurement batches that all fail with a connection/timeout error before the
device counts as gone and tuning stops (the records measured so far are kept)."""

__all__ = [
    "TuneReport",
    "TuneTask",
    "best_record_us",
    "extract_tasks",
    "rule_choice_vs_best",
    "tune",
]


# ---------------------------------------------------------------------------------------------
# Tasks


@dataclass
class TuneTask:
    """One tuning task: a fused PrimFunc (as MetaSchedule's workload module) and its weight."""

    name: str
    mod: object  # IRModule {"main": PrimFunc}, normalised as the database keys it
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
    graphs: Sequence[tuple[str, object]], target, sepconv_ops: bool = True
) -> list[TuneTask]:
    """Tasks of every ``(model name, ImportedGraph)``, from exactly the module ``build`` schedules
    (``lower``), deduplicated by structural equality of the workload (so two models sharing a
    layer shape share its task, and its weight adds up)."""
    import tvm_ffi
    from tvm import tirx

    from sepconv.compiler.build import lower
    from sepconv.compiler.tuning_db import SCHEDULED_ATTR, normalize_for_database

    tasks: list[TuneTask] = []
    by_hash: dict[int, list[TuneTask]] = {}
    for model_name, graph in graphs:
        mod, _weights, _stats = lower(graph, target, sepconv_ops)
        counts = _call_counts(mod)
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


def _call_counts(mod) -> dict[str, int]:
    """How many times the Relax functions call each PrimFunc (``call_tir``)."""
    import tvm
    from tvm import relax

    counts: dict[str, int] = {}

    call_tir = tvm.ir.Op.get("relax.call_tir")

    def visit(expr):
        if isinstance(expr, relax.Call) and expr.op.same_as(call_tir):
            if isinstance(expr.args[0], relax.GlobalVar):
                name = expr.args[0].name_hint
                counts[name] = counts.get(name, 0) + 1

    for _gv, func in mod.functions_items():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return counts


# ---------------------------------------------------------------------------------------------
# Design spaces


@contextlib.contextmanager
def light_tensor_intrinsics(target) -> Iterator[None]:
    """Within this block, ``import tvm.s_tir.tensor_intrin`` costs ≈2 s instead of ≈25 s.

    ``TuneContext`` imports that package, which registers the tensor intrinsics of every backend
    (13 s of it CUDA's). MetaSchedule's CPU rules need only x86's and ARM's; for CPU targets a
    stand-in package is registered whose submodules still import on demand, and those two are
    imported. Afterwards the stand-in is removed, so a later plain import gets the real package.
    CUDA targets get the real package, imported with :func:`_cheap_inspect_stack` (36 s → 3 s
    here, ``benchmarks/compile_overheads.py``).
    """
    name = "tvm.s_tir.tensor_intrin"
    if name in sys.modules or target.kind.name != "llvm":
        with _cheap_inspect_stack():
            importlib.import_module(name)
        yield
        return
    import tvm.s_tir

    spec = importlib.util.find_spec(name)
    stub = types.ModuleType(name)
    stub.__path__ = list(spec.submodule_search_locations)
    stub.__file__ = spec.origin
    sys.modules[name] = stub
    try:
        for sub in ("x86", "arm_cpu"):
            importlib.import_module(f"{name}.{sub}")
        yield
    finally:
        if sys.modules.get(name) is stub:
            del sys.modules[name]
        if getattr(tvm.s_tir, "tensor_intrin", None) is stub:
            delattr(tvm.s_tir, "tensor_intrin")


@contextlib.contextmanager
def _cheap_inspect_stack() -> Iterator[None]:
    """TVMScript's ``@T.prim_func`` calls ``inspect.stack()`` for every function it parses, and
    that resolves each frame's module through ``inspect.getmodule`` — a scan of ``sys.modules``
    per frame. The tensor-intrinsic package parses ~500 functions, so its import spends 90 % of
    its time there. The parser reads only each frame, its file, line and source line; this
    ``stack`` gives those (from ``linecache``) without the scan, for the duration of the block."""
    import inspect
    import linecache

    extra = {"positions": None} if sys.version_info >= (3, 11) else {}

    def stack(context: int = 1):
        frames, f = [], sys._getframe(1)
        while f is not None:
            code = f.f_code
            line = linecache.getline(code.co_filename, f.f_lineno, f.f_globals)
            frames.append(inspect.FrameInfo(
                f, code.co_filename, f.f_lineno, code.co_name,
                [line] if line else None, 0 if line else None, **extra,
            ))  # fmt: skip
            f = f.f_back
        return frames

    real = inspect.stack
    inspect.stack = stack
    try:
        yield
    finally:
        inspect.stack = real


_forced = threading.local()


def _install_decision_hook() -> None:
    """Let :func:`_run_rule` force ``sample_categorical`` decisions (this thread only)."""
    from tvm.s_tir import Schedule

    if getattr(Schedule.sample_categorical, "_sepconv_hook", False):
        return
    original = Schedule.sample_categorical

    def sample_categorical(self, candidates, probs, decision=None):
        state = getattr(_forced, "state", None)
        if state is not None:
            i = len(state["seen"])
            state["seen"].append(len(candidates))
            if i < len(state["decisions"]):
                decision = state["decisions"][i] % len(candidates)
        return original(self, candidates, probs, decision)

    sample_categorical._sepconv_hook = True
    Schedule.sample_categorical = sample_categorical


def _run_rule(rule, func, target, decisions: Sequence[int]):
    """``rule.apply(func, target, tunable=True)`` with categorical decisions forced; returns
    (schedules, candidates-per-sample seen)."""
    _install_decision_hook()
    _forced.state = {"decisions": list(decisions), "seen": []}
    try:
        space = rule.apply(func, target, True)
        seen = _forced.state["seen"]
    finally:
        _forced.state = None
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


def rule_spaces(func, target, rules=None, max_spaces: int = MAX_RULE_SPACES) -> RuleSpace:
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
            return RuleSpace(name, [], own=first)
        if samples != {"SampleCategorical"} or not seen:
            return RuleSpace(name, first, enumerated=False)
        combos = list(itertools.product(*(range(n) for n in seen)))
        if len(combos) > max_spaces - 1:
            combos = random.Random(0).sample(combos, max_spaces - 1)
        spaces: dict[int, object] = {}
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


def _space_generator(traces):
    """A ScheduleFn replaying the given design-space traces on MetaSchedule's schedule."""
    from tvm.s_tir import meta_schedule as ms

    def fn(sch):
        out = []
        for trace in traces:
            s = sch.copy()
            trace.apply_to_schedule(s, remove_postproc=True)
            out.append(s)
        return out

    return ms.space_generator.ScheduleFn(fn)


def _passes_postprocs(ctx) -> list:
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


# ---------------------------------------------------------------------------------------------
# Builder: a persistent pool that never imports tvm.s_tir.tensor_intrin


def build_candidate(mod, target, tspec) -> str:
    """Build one candidate in a builder worker: ``tvm.compile`` and link a shared library
    (with the target's cross-linker when it is for another architecture). Returns its path."""
    import tvm
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    lib = tvm.compile(mod, target=target)
    path = os.path.join(tempfile.mkdtemp(prefix="sepconv-tune-"), "candidate.so")
    if tspec is None:
        lib.export_library(path)
    else:
        tspec.export_library(lib, path)
    return path


def _make_pool_builder():
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder
    from tvm.support.popen_pool import PopenPoolExecutor

    @derived_object
    class PoolBuilder(PyBuilder):
        """Builds candidates in a pool of long-lived worker processes (recycled every
        ``max_uses`` builds); a build that takes longer than ``timeout_sec`` fails alone."""

        def __init__(self, tspec=None, max_workers: int = 2, timeout_sec: float = 60.0):
            super().__init__()
            self.tspec = tspec
            self.max_workers = max_workers
            self.timeout_sec = timeout_sec
            self.pool = PopenPoolExecutor(
                max_workers=max_workers, timeout=timeout_sec, maximum_process_uses=256
            )

        def build(self, build_inputs):
            futures = [
                self.pool.submit(build_candidate, b.mod, b.target, self.tspec) for b in build_inputs
            ]
            results = []
            for fut in futures:
                try:
                    results.append(BuilderResult(fut.result(), None))
                except TimeoutError:
                    results.append(
                        BuilderResult(None, f"PoolBuilder: timeout after {self.timeout_sec}s")
                    )
                except Exception as exc:  # noqa: BLE001 - a candidate that does not build
                    results.append(BuilderResult(None, f"PoolBuilder: {type(exc).__name__}: {exc}"))
            return results

        def shutdown(self):
            self.pool.shutdown(wait=False)

    return PoolBuilder


# ---------------------------------------------------------------------------------------------
# Runner per device


@dataclass
class MeasureConfig:
    """How each candidate is timed: ``repeat`` timings of at least ``min_repeat_ms`` each."""

    repeat: int = 3
    min_repeat_ms: int = 25
    timeout_s: float = 60.0
    flush_cache: bool = False


def make_runner(device, measure: MeasureConfig):
    from tvm.s_tir import meta_schedule as ms

    from sepconv.targets import devices

    evaluator = ms.runner.EvaluatorConfig(
        number=1,
        repeat=measure.repeat,
        min_repeat_ms=measure.min_repeat_ms,
        enable_cpu_cache_flush=measure.flush_cache,
    )
    if device.is_local:
        return ms.runner.LocalRunner(evaluator_config=evaluator, timeout_sec=measure.timeout_s)
    if device.kind == "rpc":
        config = ms.runner.RPCConfig(
            tracker_host=device.host,
            tracker_port=device.port,
            tracker_key=f"rpc:{device.host}:{device.port}",
            session_timeout_sec=int(measure.timeout_s),
        )
        create = functools.partial(
            devices.create_rpc_session, host=device.host, port=device.port, key=device.key
        )
        workers = 1
    else:
        config = ms.runner.RPCConfig(
            tracker_host=device.host,
            tracker_port=device.port,
            tracker_key=device.key,
            session_timeout_sec=int(measure.timeout_s),
        )
        create = devices.create_rpc_session
        workers = max(1, min(8, devices.count_servers(device)))
    return ms.runner.RPCRunner(
        rpc_config=config,
        evaluator_config=evaluator,
        f_create_session=create,
        max_workers=workers,
    )


# ---------------------------------------------------------------------------------------------
# Search: skip what the log already measured


def _mean_secs(run_secs) -> float | None:
    if run_secs is None:
        return None
    secs = [float(s) for s in run_secs]
    if not secs or max(secs) >= FAILED_RUN_SECS:
        return None
    return sum(secs) / len(secs)


def _logged_candidates(task: TuneTask, database, context, cost_model) -> dict[int, list[float]]:
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


def rule_choice_vs_best(task: TuneTask, target, database) -> tuple[float | None, float | None]:
    """(µs of our rule's own schedule, µs of the best record) for ``task``, as measured in
    ``database`` — what tuning bought on that task, both sides timed by the same tuner on the same
    device. ``None`` where the log has no such record (the rule's schedule is found among the
    records by its module, as a resumed run finds what it measured)."""
    import tvm_ffi
    from tvm.s_tir import meta_schedule as ms

    best = best_record_us(task, database)
    rs = rule_spaces(task.mod["main"], target)
    own = rs.schedules[:1] if rs.enumerated else []
    own = own or rs.own[:1]
    if not own:
        return None, best
    ctx = ms.TuneContext(task.mod, target=target, space_generator=_space_generator([own[0].trace]))
    cands, _ = measure_candidates(ctx, ctx.generate_design_space())
    if not cands:
        return None, best
    logged = _logged_candidates(task, database, None, None)
    secs = _mean_secs(logged.get(tvm_ffi.structural_hash(cands[0].sch.mod)))
    return (secs * 1e6 if secs is not None else None), best


def best_record_us(task: TuneTask, database) -> float | None:
    """µs of ``task``'s best record in ``database`` (``None`` when it has none)."""
    if not database.has_workload(task.mod):
        return None
    top = database.get_top_k(database.commit_workload(task.mod), 1)
    secs = _mean_secs(top[0].run_secs) if top else None
    return secs * 1e6 if secs is not None else None


@dataclass
class Budget:
    """Trials left in this run, shared by every task's search so that no batch overshoots it
    (MetaSchedule's scheduler checks its global limit only before each batch)."""

    total: int
    used: int = 0
    stopped: bool = False

    @property
    def left(self) -> int:
        return 0 if self.stopped else max(0, self.total - self.used)


def measure_candidates(context, schedules, logged=(), task_name: str = "") -> tuple[list, int]:
    """(measure candidates, how many were already logged): each distinct schedule after
    MetaSchedule's postprocessors, minus those the log has measured."""
    import tvm_ffi
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo
    from tvm.s_tir.meta_schedule.search_strategy import MeasureCandidate

    postprocs = list(context.space_generator.postprocs)
    out, seen, skipped = [], set(), 0
    for space in schedules:
        sch = space.copy()
        sch.enter_postproc()
        try:
            if not all(p.apply(sch) for p in postprocs):
                continue
        except Exception as exc:  # noqa: BLE001
            log.debug("postprocessor raised on %s: %s", task_name, exc)
            continue
        h = tvm_ffi.structural_hash(sch.mod)
        if h in seen:
            continue
        seen.add(h)
        if h in logged:
            skipped += 1
            continue
        out.append(MeasureCandidate(sch, ArgInfo.from_entry_func(sch.mod, remove_preproc=True)))
    return out, skipped


def _make_search_strategies(budget: Budget):
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
            logged = _logged_candidates(self.task, database, self.context, cost_model)
            self.todo, self.skipped = measure_candidates(
                self.context, design_spaces, logged, self.task.name
            )

        def post_tuning(self):
            self.todo = []

        def generate_measure_candidates(self):
            k = min(self.per_iter, self.max_trials - self.trials, len(self.todo), budget.left)
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
            self.logged = _logged_candidates(self.task, database, self.context, cost_model)
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
                batch, self.seeds = self.seeds[: budget.left], []
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
                    return fresh[: budget.left]
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


def _make_cost_model(num_cores: int):
    """MetaSchedule's XGBoost cost model, minus its training before it predicts anything.

    ``XGBModel`` answers with random scores until it holds ``num_warmup_samples`` (100)
    measurements, yet retrains (≈2 s here) on almost every batch before that; skipping those
    trainings roughly doubles trials per minute on a small machine and changes no prediction.
    """
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.cost_model import XGBModel

    @derived_object
    class TuningXGBModel(XGBModel._cls):
        def _train(self, xs, ys):
            if self.data_size < self.num_warmup_samples:
                self.last_train_size = 0  # train as soon as the warm-up is reached
                return
            super()._train(xs, ys)

    return TuningXGBModel(num_tuning_cores=num_cores, adaptive_training=True)


# ---------------------------------------------------------------------------------------------
# Progress


@dataclass
class TaskResult:
    """One task's part of a tuning run."""

    name: str
    weight: float
    space: str = ""  # "rule" / "default"; "" when not tuned in this run
    rule: str | None = None
    trials: int = 0  # measured in this run
    logged: int = 0  # records in the log before this run
    best_us: float | None = None  # best mean latency, this run or the log
    errors: int = 0
    models: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "weight": self.weight,
            "space": self.space,
            "rule": self.rule,
            "trials": self.trials,
            "logged_before": self.logged,
            "best_us": None if self.best_us is None else round(self.best_us, 3),
            "errors": self.errors,
            "models": self.models,
        }


_DEVICE_GONE = (
    "Timeout", "timeout", "timed out", "DeviceError", "cannot reach", "did not answer",
    "did not complete within", "onnection refused", "onnection reset", "Broken pipe",
)  # fmt: skip
"""Runner errors that mean the device, not the candidate, failed."""


def _make_progress_callback():
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback

    @derived_object
    class Progress(PyMeasureCallback):
        """Counts trials, keeps each task's best, drives the progress bar and stops tuning when
        the device is gone (every candidate of several batches failed to connect/time out)."""

        def __init__(self, results: list[TaskResult], budget: Budget, show: bool):
            super().__init__()
            self.results = results
            self.budget = budget
            total = budget.total
            self.done = 0
            self.dead_batches = 0
            self.device_error: str | None = None
            self.bar = None
            if show:
                from tqdm.auto import tqdm

                self.bar = tqdm(total=total, unit="trial", dynamic_ncols=True, leave=True)
                self.bar.set_postfix_str(self.summary(), refresh=True)

        def estimate_ms(self) -> tuple[float, int]:
            known = [r for r in self.results if r.best_us is not None]
            est = sum(r.weight * r.best_us for r in known) / 1e3
            return est, len(self.results) - len(known)

        def summary(self, task: TaskResult | None = None) -> str:
            est, missing = self.estimate_ms()
            text = f"model≈{est:.3f} ms" + (f" (+{missing} tasks unmeasured)" if missing else "")
            if task is not None and task.best_us is not None:
                text = f"{task.name[:40]} best {task.best_us:.1f} µs · " + text
            return text

        def apply(self, task_scheduler, task_id, measure_candidates, builder_results, results):
            task = self.results[task_id]
            n = len(results)
            self.done += n
            self.budget.used += n
            task.trials += n
            failed_conn = 0
            for b, r in zip(builder_results, results):
                if b.error_msg is not None or r.error_msg is not None:
                    task.errors += 1
                    msg = str(r.error_msg or "")
                    if any(s in msg for s in _DEVICE_GONE):
                        failed_conn += 1
                    continue
                secs = _mean_secs(r.run_secs)
                if secs is not None and (task.best_us is None or secs * 1e6 < task.best_us):
                    task.best_us = secs * 1e6
            if n and failed_conn == n:
                self.dead_batches += 1
            elif n:
                self.dead_batches = 0
            if self.dead_batches >= DEAD_DEVICE_BATCHES and self.device_error is None:
                last = next((str(r.error_msg) for r in results if r.error_msg), "")
                self.device_error = last.strip().splitlines()[-1][:300] if last.strip() else "?"
                self.budget.stopped = True  # every search then reports itself done
            if self.bar is not None:
                self.bar.update(n)
                self.bar.set_postfix_str(self.summary(task), refresh=False)

        def close(self):
            if self.bar is not None:
                self.bar.set_postfix_str(self.summary(), refresh=True)
                self.bar.close()

    return Progress


# ---------------------------------------------------------------------------------------------
# The driver


@dataclass
class TuneReport:
    """What a tuning run did (also merged into the log's provenance.json)."""

    log_dir: Path
    target: dict
    device: str
    models: list[str]
    tasks: list[TaskResult]
    trials: int  # measured in this run
    trials_budget: int
    trials_logged_before: int
    wall_seconds: float  # whole run, including extraction and set-up
    tuning_seconds: float  # the measurement loop only
    skipped_measured: int = 0  # candidates answered from the log instead of re-measured
    stopped: str | None = None  # why the run ended early, if it did

    @property
    def trials_per_minute(self) -> float:
        return 60.0 * self.trials / self.tuning_seconds if self.tuning_seconds > 0 else 0.0

    @property
    def estimated_ms(self) -> float:
        return sum(t.weight * t.best_us for t in self.tasks if t.best_us is not None) / 1e3

    def to_json(self) -> dict:
        return {
            "log_dir": str(self.log_dir),
            "device": self.device,
            "models": self.models,
            "trials": self.trials,
            "trials_budget": self.trials_budget,
            "trials_logged_before": self.trials_logged_before,
            "trials_per_minute": round(self.trials_per_minute, 1),
            "wall_seconds": round(self.wall_seconds, 1),
            "tuning_seconds": round(self.tuning_seconds, 1),
            "skipped_measured": self.skipped_measured,
            "estimated_ms": round(self.estimated_ms, 4),
            "stopped": self.stopped,
            "tasks": [t.to_json() for t in self.tasks],
        }


def _resolve_models(models, example_input, batch, weights, seed):
    """[(name, module, inputs)] for one model or a list of zoo names / modules."""
    from sepconv.api import _resolve_model

    if isinstance(models, (str, os.PathLike)) or not isinstance(models, (list, tuple)):
        models = [models]
    out = []
    for m in models:
        module, inputs, record = _resolve_model(m, example_input, batch, weights, seed)
        out.append((record["name"], module, inputs))
    return out


def tune(
    model,
    target: str = "host",
    *,
    device: str = "local",
    trials: int = 1000,
    tune_log: str | os.PathLike | None = None,
    batch: int = 1,
    example_input=None,
    weights: str | os.PathLike | None = None,
    seed: int = 0,
    mcpu: str | None = None,
    cuda_arch: str | None = None,
    sepconv_ops: bool = True,
    max_trials_per_task: int | None = None,
    trials_per_iter: int | None = None,
    measure: MeasureConfig | None = None,
    task_filter: str | None = None,
    space: str = "rules",
    builders: int | None = None,
    progress: bool = True,
    on_stage: Callable[[str], None] | None = None,
) -> TuneReport:
    """Tune ``model`` (a zoo name, an ``nn.Module`` with ``example_input``, or a list of either)
    for ``target`` on ``device`` (``local``, ``rpc://host:port``, ``tracker://host:port/key``).

    Records are appended to ``tune_log`` (a directory; its ``<target key>/`` subfolder unless it
    already holds database files), by default the package's ``tune_logs/<key>/`` that every
    ``compile`` reads. ``trials`` is the total for these tasks *including* records already in the
    log, so rerunning a killed run continues it. ``task_filter`` (a regular expression) tunes
    only the tasks whose name matches. ``space="default"`` tunes every task in MetaSchedule's
    own design space instead of our rules' (stock MetaSchedule, for comparison).

    CUDA (``target="cuda"``, ``cuda_arch`` or the GPU's): the tasks are what TVM schedules (the
    Triton kernels are not tuned here: their configurations are Triton's autotuning), searched in
    MetaSchedule's CUDA space seeded with dlight's schedule; candidates are measured on the GPU
    of ``device`` — this machine's, or a served one's — and the log key is ``cuda-smXX``.

    Raises :class:`DeviceError` when the device cannot be reached, has no GPU for a cuda target,
    or stops answering during the run (the records measured until then are kept).
    """
    import re

    from sepconv.compiler import tuning_db
    from sepconv.compiler.importer import import_module
    from sepconv.targets import resolve_target
    from sepconv.targets.devices import check_device, parse_device

    t_start = time.perf_counter()
    on_stage = on_stage or (lambda _s: None)
    if trials < 1:
        raise TuningError(f"trials must be ≥ 1, got {trials}")
    if batch < 1:
        raise TuningError(f"batch must be ≥ 1, got {batch}")
    if space not in ("rules", "default"):
        raise TuningError(f"space must be 'rules' or 'default', got {space!r}")
    dev = parse_device(device)
    tspec = resolve_target(target, mcpu=mcpu, cuda_arch=cuda_arch)
    if tspec.family == "cuda" and dev.is_local:
        _require_local_gpu(tspec)
    elif not tspec.is_host and dev.is_local:
        from sepconv.targets import missing_on_host

        raise TuningError(
            f"{tspec.triple} code ({tspec.key}, mcpu={tspec.mcpu}) cannot run on this machine, "
            f"which lacks {', '.join(missing_on_host(tspec.target))}: pass a device that runs "
            "it, e.g. --device rpc://BOARD:9090 or tracker://HOST:9190/KEY (see sepconv device "
            "serve), or tune for this machine (no --mcpu)"
        )
    log_dir = (
        tuning_db.log_dir_for(tune_log, tspec.key)
        if tune_log is not None
        else tuning_db.shipped_log_dir(tspec.key)
    )
    tuning_db.require_writable(log_dir)
    if not dev.is_local:
        on_stage(f"check device {dev}")
        info = check_device(dev)
        if tspec.family == "cuda" and not info.get("cuda_exists"):
            raise DeviceError(
                f"device {dev} has no CUDA GPU (its TVM runtime sees none): tuning for cuda "
                "measures on the GPU — serve from a machine with an NVIDIA GPU and a TVM built "
                "with CUDA"
            )

    on_stage("export")
    entries = _resolve_models(model, example_input, batch, weights, seed)
    graphs = [(name, import_module(module, inputs)) for name, module, inputs in entries]
    on_stage("extract tasks")
    tasks = extract_tasks(graphs, tspec.target, sepconv_ops)
    if task_filter:
        pattern = re.compile(task_filter)
        tasks = [t for t in tasks if pattern.search(t.name)]
        if not tasks:
            raise TuningError(f"no task name matches {task_filter!r}")

    on_stage("read tuning log")
    database = tuning_db.open_database([], write_dir=log_dir, only={t.workload_hash for t in tasks})
    logged = tuning_db.TuneLog(log_dir).count_records()
    results = [
        TaskResult(t.name, t.weight, logged=logged.get(t.workload_hash, 0), models=list(t.models))
        for t in tasks
    ]
    for t, r in zip(tasks, results):
        r.best_us = best_record_us(t, database)
    report = TuneReport(
        log_dir=log_dir,
        target=tspec.describe(),
        device=str(dev),
        models=[name for name, _ in graphs],
        tasks=results,
        trials=0,
        trials_budget=trials,
        trials_logged_before=sum(r.logged for r in results),
        wall_seconds=0.0,
        tuning_seconds=0.0,
    )
    remaining = trials - report.trials_logged_before
    device_error = None
    if remaining <= 0:
        report.stopped = (
            f"the log already holds {report.trials_logged_before} records for these tasks "
            f"(≥ {trials}); raise trials to tune further"
        )
    else:
        with light_tensor_intrinsics(tspec.target):
            device_error = _search(
                tasks, report, database, tspec, dev, remaining,
                per_task=max_trials_per_task or trials,
                per_iter=trials_per_iter, measure=measure, space=space, builders=builders,
                progress=progress, on_stage=on_stage,
            )  # fmt: skip
    report.wall_seconds = time.perf_counter() - t_start
    if remaining > 0:
        _record_provenance(report, database.appended, tspec)
    if device_error is not None:
        raise DeviceError(
            f"device {dev} stopped answering during tuning ({device_error}); "
            f"{database.appended} records measured before are kept in {log_dir}; check the "
            "device and rerun the same command to continue"
        )
    return report


def _require_local_gpu(tspec) -> None:
    """Tuning for cuda on this machine measures on its GPU: one that runs ``tspec``'s code."""
    from sepconv.targets import gpu_compute_capability, parse_cuda_arch

    local = gpu_compute_capability()
    if local is None:
        raise DeviceError(
            "tuning for cuda measures every candidate on the GPU, and this machine has none: run "
            "`sepconv tune … --target cuda` on the GPU machine, or serve its GPU (sepconv device "
            "serve there) and pass --device rpc://GPU-HOST:9090"
        )
    arch = parse_cuda_arch(local)
    built = str(tspec.target.attrs.get("arch", ""))
    if built.rstrip("a") != arch:
        raise TuningError(
            f"this machine's GPU is {arch} but the target is {built}: tune with "
            f"--cuda-arch {arch} (records are kept per architecture, cuda-{arch.replace('_', '')})"
        )


def _search(
    tasks, report, database, tspec, dev, remaining, *, per_task, per_iter, measure, space,
    builders, progress, on_stage,
) -> str | None:  # fmt: skip
    """Run MetaSchedule's task scheduler over ``tasks``; fills ``report``. Returns the device
    error that stopped it, if one did."""
    from tvm.s_tir import meta_schedule as ms

    on_stage("design spaces")
    budget = Budget(remaining)
    strategies = _make_search_strategies(budget)
    contexts, searches, weights, results = [], [], [], []
    for t, r in zip(tasks, report.tasks):
        task_budget = per_task - r.logged
        if task_budget <= 0:
            continue
        ctx, search = _tune_context(t, tspec.target, ms, space, task_budget, strategies)
        r.space, r.rule = t.space, t.rule
        contexts.append(ctx)
        searches.append(search)
        weights.append(t.weight)
        results.append(r)
    if not contexts:
        report.stopped = "every task already has max_trials_per_task records"
        return None

    measure = measure or (MeasureConfig() if dev.is_local else MeasureConfig(min_repeat_ms=0))
    per_iter = per_iter or max(4, min(64, remaining // len(contexts)))
    on_stage(f"tune {len(contexts)} tasks on {dev}")
    builder = _make_pool_builder()(
        tspec=None if tspec.is_host else tspec,
        max_workers=builders or max(1, min(4, os.cpu_count() or 1)),
    )
    runner = make_runner(dev, measure)
    prog = _make_progress_callback()(results, budget, progress)
    t0 = time.perf_counter()
    try:
        with _quiet_metaschedule():
            ms.TaskScheduler.create("gradient").tune(
                tasks=contexts,
                task_weights=weights,
                max_trials_global=remaining,
                max_trials_per_task=per_task,
                num_trials_per_iter=per_iter,
                builder=builder,
                runner=runner,
                measure_callbacks=[*ms.MeasureCallback.create("default"), prog],
                database=database,
                cost_model=_make_cost_model(max(1, os.cpu_count() or 1)),
            )
    except KeyboardInterrupt:
        report.stopped = "interrupted; the records measured so far are kept"
    finally:
        prog.close()
        builder.shutdown()
    report.tuning_seconds = time.perf_counter() - t0
    report.trials = prog.done
    report.skipped_measured = sum(search.skipped for search in searches)
    if prog.device_error is not None:
        report.stopped = f"device {dev} stopped answering ({prog.device_error})"
    return prog.device_error


def _design_space(task: TuneTask, target, ms, space: str) -> tuple[object, str]:
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
            probe = ms.TuneContext(
                task.mod, target=target, space_generator=_space_generator(traces)
            )
            accepted = _passes_postprocs(probe)
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
                return _space_generator(traces), "enumerate" if rs.enumerated else "evolve"
            log.warning(
                "MetaSchedule's postprocessors reject every schedule of rule %s for %s; tuning "
                "it in MetaSchedule's default space",
                rs.rule,
                task.name,
            )
        elif rs.rule is not None:
            # the rule's own schedule is measured first: the best record is then never worse
            # than the untuned build, on the machine that tuned
            probe = ms.TuneContext(
                task.mod, target=target, space_generator=_space_generator([x.trace for x in rs.own])
            )
            task.seeds = _passes_postprocs(probe)
            log.info("rule %s has no design space for %s: default space", rs.rule, task.name)
    elif space != "default":
        raise TuningError(f"space must be 'rules' or 'default', got {space!r}")
    task.space, task.num_spaces = "default", 0
    return "post-order-apply", "evolve"


def _tune_context(task: TuneTask, target, ms, space: str, budget: int, strategies):
    """(TuneContext, search strategy) of ``task`` with its design space."""
    RankedEnumeration, ResumingSearch = strategies
    generator, how = _design_space(task, target, ms, space)
    if how == "enumerate":
        search = RankedEnumeration(task, budget)
    else:
        population = DEFAULT_POPULATION if task.space == "default" else 64
        inner = ms.search_strategy.EvolutionarySearch(
            population_size=population, init_min_unmeasured=min(50, population // 4)
        )
        search = ResumingSearch(inner, task, budget)
    ctx = ms.TuneContext(
        task.mod,
        target=target,
        space_generator=generator,
        search_strategy=search,
        task_name=task.name,
        num_threads=max(1, os.cpu_count() or 1),
        rand_state=_seed(task.name),
        logger=_ms_logger(),
    )
    return ctx, search


def _seed(name: str) -> int:
    import zlib

    return zlib.crc32(name.encode()) % (2**31 - 2) + 1


def _ms_logger() -> logging.Logger:
    return logging.getLogger("sepconv.tuning.metaschedule")


class _quiet_metaschedule:
    """MetaSchedule logs a table per batch at INFO; keep it out of the user's terminal unless
    sepconv's debug logging is on."""

    def __enter__(self):
        self.loggers = [logging.getLogger("tvm.s_tir.meta_schedule"), _ms_logger()]
        self.levels = [lg.level for lg in self.loggers]
        if not log.isEnabledFor(logging.DEBUG):
            for lg in self.loggers:
                lg.setLevel(logging.WARNING)
        return self

    def __exit__(self, *exc):
        for lg, level in zip(self.loggers, self.levels):
            lg.setLevel(level)
        return False


def _record_provenance(report: TuneReport, appended: int, tspec) -> None:
    import datetime as dt

    import tvm

    import sepconv
    from sepconv.compiler.tuning_db import TuneLog, machine_description

    run = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "models": report.models,
        "device": report.device,
        "machine": machine_description(),  # the host: the device itself when local
        "trials": report.trials,
        "records_written": appended,
        "trials_per_minute": round(report.trials_per_minute, 1),
        "wall_seconds": round(report.wall_seconds, 1),
        "tuning_seconds": round(report.tuning_seconds, 1),
        "tasks": len(report.tasks),
        "estimated_ms": round(report.estimated_ms, 4),
        "stopped": report.stopped,
        "versions": {"sepconv": sepconv.__version__, "tvm": tvm.__version__},
    }
    try:
        TuneLog(report.log_dir).update_provenance(run, report.models, tspec.describe())
    except OSError as exc:
        log.warning("could not update %s/provenance.json: %s", report.log_dir, exc)


def format_report(report: TuneReport, limit: int = 30) -> str:
    """A table of the tasks (heaviest first) and the run's totals, for the CLI."""
    lines = [
        f"{'task':<48} {'w':>3} {'space':<22} {'trials':>6} {'best µs':>10}",
    ]
    rows = sorted(
        report.tasks, key=lambda t: -(t.weight * (t.best_us or 0.0)) if t.best_us else 0.0
    )
    for t in rows[:limit]:
        space = f"{t.space}:{t.rule}" if t.space == "rule" else (t.space or "skipped")
        best = f"{t.best_us:10.1f}" if t.best_us is not None else f"{'-':>10}"
        lines.append(f"{t.name[:48]:<48} {t.weight:>3.0f} {space[:22]:<22} {t.trials:>6} {best}")
    if len(rows) > limit:
        lines.append(f"… {len(rows) - limit} more tasks")
    lines.append(
        f"{report.trials} trials in {report.tuning_seconds:.0f}s "
        f"({report.trials_per_minute:.0f}/min; {report.wall_seconds:.0f}s in all), "
        f"{report.trials_logged_before} already in the log, "
        f"{report.skipped_measured} candidates answered from it"
    )
    lines.append(f"estimated model latency (sum of weight × best): {report.estimated_ms:.3f} ms")
    if report.stopped:
        lines.append(f"stopped: {report.stopped}")
    lines.append(f"records: {report.log_dir}")
    return "\n".join(lines)
