"""What a tuning run did: per-task results, the progress bar, the report table, provenance."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sepconv.compiler.tuning.database import mean_secs
from sepconv.compiler.tuning.search import Budget, best_record_us, logged_candidates
from sepconv.compiler.tuning.tasks import TuneTask

log = logging.getLogger(__name__)

DEAD_DEVICE_BATCHES = 2
"""Consecutive measurement batches that all fail with a connection/timeout error before the
device counts as gone and tuning stops (the records measured so far are kept)."""

_DEVICE_GONE = (
    "Timeout", "timeout", "timed out", "DeviceError", "cannot reach", "did not answer",
    "did not complete within", "onnection refused", "onnection reset", "Broken pipe",
)  # fmt: skip
"""Runner errors that mean the device, not the candidate, failed."""

__all__ = [
    "TaskResult",
    "TuneReport",
    "format_report",
    "make_progress_callback",
    "record_provenance",
    "rule_choice_vs_best",
]


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
    choice: str | None = None  # confirmed: "record" or "rules" (confirm.py); None: unconfirmed
    confirmed_us: float | None = None  # the chosen schedule's time when confirmed
    rules_us: float | None = None  # the rule's own schedule's time when confirmed

    @property
    def expected_us(self) -> float | None:
        """What a build of this task should take: the confirmed choice's time, else the best
        logged time."""
        return self.confirmed_us if self.confirmed_us is not None else self.best_us

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
            "choice": self.choice,
            "confirmed_us": None if self.confirmed_us is None else round(self.confirmed_us, 3),
            "rules_us": None if self.rules_us is None else round(self.rules_us, 3),
        }


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
    cache: str | None = None  # the caches' state candidates were timed in (MeasureConfig)
    confirm_seconds: float = 0.0  # re-timing the finalists against our rules (confirm.py)
    confirm_rounds: int = 0

    @property
    def trials_per_minute(self) -> float:
        return 60.0 * self.trials / self.tuning_seconds if self.tuning_seconds > 0 else 0.0

    @property
    def estimated_ms(self) -> float:
        """Σ weight × best logged time: the tuner's own estimate of the models."""
        return sum(t.weight * t.best_us for t in self.tasks if t.best_us is not None) / 1e3

    @property
    def confirmed_ms(self) -> float | None:
        """Σ weight × what a build uses, as confirmed (None when nothing was confirmed)."""
        if not any(t.choice for t in self.tasks):
            return None
        return sum(t.weight * t.expected_us for t in self.tasks if t.expected_us is not None) / 1e3

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
            "confirmed_ms": None if self.confirmed_ms is None else round(self.confirmed_ms, 4),
            "confirm_seconds": round(self.confirm_seconds, 1),
            "confirm_rounds": self.confirm_rounds,
            "stopped": self.stopped,
            "cache": self.cache,
            "tasks": [t.to_json() for t in self.tasks],
        }


def make_progress_callback(results: list[TaskResult], budget: Budget, show: bool) -> Any:
    """A MetaSchedule measure callback that fills ``results`` and drives the progress bar."""
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
            task.trials += n
            failed_conn = 0
            for b, r in zip(builder_results, results):
                if b.error_msg is not None or r.error_msg is not None:
                    task.errors += 1
                    msg = str(r.error_msg or "")
                    if any(s in msg for s in _DEVICE_GONE):
                        failed_conn += 1
                    continue
                secs = mean_secs(r.run_secs)
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

    return Progress(results, budget, show)


def rule_choice_vs_best(
    task: TuneTask, target: Any, database: Any
) -> tuple[float | None, float | None]:
    """(µs of our rule's own schedule, µs of the best record) for ``task``, as measured in
    ``database`` — what tuning bought on that task, both sides timed by the same tuner on the same
    device. ``None`` where the log has no such record (the rule's schedule is found among the
    records by its module, as a resumed run finds what it measured)."""
    import tvm_ffi

    from sepconv.compiler.tuning.confirm import rule_candidate

    best = best_record_us(task, database)
    own = rule_candidate(task, target)
    if own is None:
        return None, best
    logged = logged_candidates(task, database, None, None)
    secs = mean_secs(logged.get(tvm_ffi.structural_hash(own.sch.mod)))
    return (secs * 1e6 if secs is not None else None), best


def record_provenance(report: TuneReport, appended: int, tspec: Any) -> None:
    """Merge this run (machine, trials, speed, versions) into the log's ``provenance.json``."""
    import datetime as dt

    import tvm

    import sepconv
    from sepconv.compiler.tuning.database import TuneLog, machine_description

    run = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "models": report.models,
        "device": report.device,
        "machine": machine_description(),  # the host: the device itself when local
        "mcpu": tspec.mcpu,  # the CPU its records are filed under (database.record_cpu)
        "cache": report.cache,  # how candidates were timed: records of other states differ
        "trials": report.trials,
        "records_written": appended,
        "trials_per_minute": round(report.trials_per_minute, 1),
        "wall_seconds": round(report.wall_seconds, 1),
        "tuning_seconds": round(report.tuning_seconds, 1),
        "tasks": len(report.tasks),
        "estimated_ms": round(report.estimated_ms, 4),
        "confirmed_ms": None if report.confirmed_ms is None else round(report.confirmed_ms, 4),
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
    confirmed = [t for t in report.tasks if t.choice]
    if confirmed:
        kept = sum(t.choice == "rules" for t in confirmed)
        lines.append(
            f"confirmed in {report.confirm_rounds} interleaved rounds against our rules "
            f"({report.confirm_seconds:.0f}s): {len(confirmed) - kept} tasks use a record, "
            f"{kept} keep the rules' schedule; the build's estimate {report.confirmed_ms:.3f} ms"
        )
    if report.stopped:
        lines.append(f"stopped: {report.stopped}")
    lines.append(f"records: {report.log_dir}")
    return "\n".join(lines)
