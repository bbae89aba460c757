"""Auto-tuning with MetaSchedule: our rules' design spaces, XGBoost, measured on a device.

::

    model ──lower()──► fused PrimFuncs (exactly what build() schedules)
          ──extract──► tasks, deduplicated by structural workload (across models too)   tasks.py
          ──space────► our rule with tunable=True where one accepts the function,       spaces.py
                       MetaSchedule's post-order-apply space elsewhere
          ──search───► XGBoost cost model; gradient task scheduler across tasks         search.py
          ──measure──► builder (persistent worker pool) → runner (local | RPC | tracker) measure.py
          ──records──► tune_logs/<target-key>/ as measured                              database.py

:func:`tune` (``driver.py``) runs the pipeline; ``report.py`` holds what a run did (per-task
results, the progress bar, the CLI table, provenance). The TVM workarounds tuning needs (the
light tensor-intrinsic import, forced sampling decisions, the lazy XGBoost model) are in
:mod:`sepconv.compiler.tvm_compat`.

Importing this package is cheap: TVM is imported when a function needs it.
"""

from __future__ import annotations

from sepconv.compiler.tuning.driver import tune
from sepconv.compiler.tuning.measure import MeasureConfig, measure_candidates
from sepconv.compiler.tuning.report import (
    TaskResult,
    TuneReport,
    format_report,
    rule_choice_vs_best,
)
from sepconv.compiler.tuning.search import best_record_us
from sepconv.compiler.tuning.spaces import RuleSpace, rule_spaces
from sepconv.compiler.tuning.tasks import TuneTask, extract_tasks

__all__ = [
    "MeasureConfig",
    "RuleSpace",
    "TaskResult",
    "TuneReport",
    "TuneTask",
    "best_record_us",
    "extract_tasks",
    "format_report",
    "measure_candidates",
    "rule_choice_vs_best",
    "rule_spaces",
    "tune",
]
