"""The tuning driver: :func:`tune` checks its arguments and the device, extracts the tasks,
opens the log and runs MetaSchedule's gradient task scheduler over our design spaces.

Records are appended as they are measured. ``trials`` counts the records already in the log for
these tasks, so a killed run continues where it stopped (:mod:`sepconv.compiler.tuning.search`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from sepconv.compiler import tvm_compat
from sepconv.compiler.tuning import database as tuning_db
from sepconv.compiler.tuning import measure as measuring
from sepconv.compiler.tuning.confirm import CONFIRM_ROUNDS, confirm_tasks
from sepconv.compiler.tuning.measure import MeasureConfig, make_pool_builder
from sepconv.compiler.tuning.report import (
    TaskResult,
    TuneReport,
    make_progress_callback,
    record_provenance,
)
from sepconv.compiler.tuning.search import (
    METASCHEDULE_LOGGER,
    Budget,
    best_record_us,
    make_search_strategies,
    tune_context,
)
from sepconv.compiler.tuning.tasks import TuneTask, extract_tasks
from sepconv.errors import DeviceError, TuningError

log = logging.getLogger(__name__)

__all__ = ["tune"]

INTERRUPTED = "interrupted; the records measured so far are kept"


def _resolve_models(
    models: Any, example_input: Any, batch: int, weights: Any, seed: int
) -> list[tuple[str, Any, Any]]:
    """[(name, module, inputs)] for one model or a list of zoo names / modules."""
    from sepconv.compiler.model_source import resolve_model

    if isinstance(models, (str, os.PathLike)) or not isinstance(models, (list, tuple)):
        models = [models]
    out = []
    for m in models:
        module, inputs, record = resolve_model(m, example_input, batch, weights, seed)
        out.append((record["name"], module, inputs))
    return out


def tune(
    model: Any,
    target: str = "host",
    *,
    device: str = "local",
    trials: int = 1000,
    tune_log: str | os.PathLike | None = None,
    batch: int = 1,
    example_input: Any = None,
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
    confirm_rounds: int = CONFIRM_ROUNDS,
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

    Then each task's choice is confirmed (:mod:`sepconv.compiler.tuning.confirm`, on CPU
    targets): its fastest records and our rule's own schedule are re-timed in ``confirm_rounds``
    interleaved rounds, and a build uses a record only where it beat the rule's schedule there.
    ``confirm_rounds=0`` skips it; a run with nothing left to tune still confirms.

    CUDA (``target="cuda"``, ``cuda_arch`` or the GPU's): the tasks are what TVM schedules (the
    Triton kernels are not tuned here: their configurations are Triton's autotuning), searched in
    MetaSchedule's CUDA space seeded with dlight's schedule; candidates are measured on the GPU
    of ``device`` — this machine's, or a served one's — and the log key is ``cuda-smXX``.

    Raises :class:`DeviceError` when the device cannot be reached, has no GPU for a cuda target,
    or stops answering during the run (the records measured until then are kept).
    """
    import re

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
    # what another CPU measured says nothing of this one: its records are neither resumed nor
    # compared with (a build uses only its own CPU's, tuning_db.open_database)
    cpu = tuning_db.record_cpu(tspec.target)
    database = tuning_db.open_database(
        [], write_dir=log_dir, only={t.workload_hash for t in tasks}, cpu=cpu
    )
    logged = tuning_db.TuneLog(log_dir).count_records(cpu)
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
        with tvm_compat.light_tensor_intrinsics(tspec.target):
            device_error = _search(
                tasks, report, database, tspec, dev, remaining,
                per_task=max_trials_per_task or trials,
                per_iter=trials_per_iter, measure=measure, space=space, builders=builders,
                progress=progress, on_stage=on_stage,
            )  # fmt: skip
    if device_error is None and confirm_rounds > 0 and report.stopped != INTERRUPTED:
        _confirm(tasks, report, log_dir, tspec, dev, measure, confirm_rounds, builders, on_stage)
    report.wall_seconds = time.perf_counter() - t_start
    if remaining > 0 or report.confirm_rounds:
        record_provenance(report, database.appended, tspec)
    if device_error is not None:
        raise DeviceError(
            f"device {dev} stopped answering during tuning ({device_error}); "
            f"{database.appended} records measured before are kept in {log_dir}; check the "
            "device and rerun the same command to continue"
        )
    return report


def _confirm(
    tasks: Sequence[TuneTask], report: TuneReport, log_dir: Any, tspec: Any, dev: Any,
    measure: MeasureConfig | None, rounds: int, builders: int | None,
    on_stage: Callable[[str], None],
) -> None:  # fmt: skip
    """Confirm ``tasks``' choices (confirm.py) and put them in ``report``."""
    t0 = time.perf_counter()
    try:
        with tvm_compat.light_tensor_intrinsics(tspec.target):
            found = confirm_tasks(
                tasks, log_dir, tspec, dev, measure, rounds=rounds, builders=builders,
                on_stage=on_stage,
            )  # fmt: skip
    except KeyboardInterrupt:
        report.stopped = "interrupted while confirming; builds use the fastest logged records"
        return
    report.confirm_seconds = time.perf_counter() - t0
    report.confirm_rounds = rounds if found else 0
    for r in report.tasks:
        c = found.get(r.name)
        if c is not None:
            r.choice, r.confirmed_us, r.rules_us = c.choice, c.chosen_us, c.us.get("rules")


def _require_local_gpu(tspec: Any) -> None:
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
    tasks: Sequence[TuneTask], report: TuneReport, database: Any, tspec: Any, dev: Any,
    remaining: int, *, per_task: int, per_iter: int | None, measure: MeasureConfig | None,
    space: str, builders: int | None, progress: bool, on_stage: Callable[[str], None],
) -> str | None:  # fmt: skip
    """Run MetaSchedule's task scheduler over ``tasks``; fills ``report``. Returns the device
    error that stopped it, if one did."""
    from tvm.s_tir import meta_schedule as ms

    on_stage("design spaces")
    budget = Budget(remaining)
    strategies = make_search_strategies(budget)
    contexts, searches, weights, results = [], [], [], []
    for t, r in zip(tasks, report.tasks):
        task_budget = per_task - r.logged
        if task_budget <= 0:
            continue
        ctx, search = tune_context(t, tspec.target, ms, space, task_budget, strategies)
        r.space, r.rule = t.space, t.rule
        contexts.append(ctx)
        searches.append(search)
        weights.append(t.weight)
        results.append(r)
    if not contexts:
        report.stopped = "every task already has max_trials_per_task records"
        return None

    measure = measure or (MeasureConfig() if dev.is_local else MeasureConfig(min_repeat_ms=0))
    report.cache = measure.state(dev.is_local)
    per_iter = per_iter or max(4, min(64, remaining // len(contexts)))
    on_stage(f"tune {len(contexts)} tasks on {dev}")
    builder = make_pool_builder(
        tspec=None if tspec.is_host else tspec,
        max_workers=builders or max(1, min(4, os.cpu_count() or 1)),
    )
    runner = measuring.make_runner(dev, measure)
    prog = make_progress_callback(results, budget, progress)
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
                cost_model=tvm_compat.lazy_xgb_model(max(1, os.cpu_count() or 1)),
            )
    except KeyboardInterrupt:
        report.stopped = INTERRUPTED
    finally:
        prog.close()
        builder.shutdown()
    report.tuning_seconds = time.perf_counter() - t0
    report.trials = prog.done
    report.skipped_measured = sum(search.skipped for search in searches)
    if prog.device_error is not None:
        report.stopped = f"device {dev} stopped answering ({prog.device_error})"
    return prog.device_error


@contextlib.contextmanager
def _quiet_metaschedule() -> Iterator[None]:
    """MetaSchedule logs a table per batch at INFO; keep it out of the user's terminal unless
    sepconv's debug logging is on."""
    loggers = [logging.getLogger("tvm.s_tir.meta_schedule"), logging.getLogger(METASCHEDULE_LOGGER)]
    levels = [lg.level for lg in loggers]
    if not log.isEnabledFor(logging.DEBUG):
        for lg in loggers:
            lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
