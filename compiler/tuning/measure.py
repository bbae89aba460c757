"""Measuring candidates: a persistent builder pool, and a runner per device.

MetaSchedule's default build function imports ``tvm.s_tir.tensor_intrin`` (≈25 s) in every fresh
worker, and ``LocalBuilder`` starts fresh workers per batch, so every candidate times out on a
small machine (FACTS.md). The pool builder keeps workers that import only ``tvm`` and reuses
them; each build is ``tvm.compile`` + link (a cross-linker for remote targets).
"""

from __future__ import annotations

import functools
import logging
import os
import tempfile
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

__all__ = [
    "MeasureConfig",
    "build_candidate",
    "make_pool_builder",
    "make_runner",
    "measure_candidates",
]


def build_candidate(mod: Any, target: Any, tspec: Any) -> str:
    """Build one candidate in a builder worker: ``tvm.compile`` and link a shared library
    (with the target's cross-linker when it is for another architecture). Returns its path."""
    import tvm
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    from sepconv.compiler.tvm_compat import partition_before_narrowing

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    with partition_before_narrowing(target):  # as the deployed build compiles it
        lib = tvm.compile(mod, target=target)
    path = os.path.join(tempfile.mkdtemp(prefix="sepconv-tune-"), "candidate.so")
    if tspec is None:
        lib.export_library(path)
    else:
        tspec.export_library(lib, path)
    return path


def make_pool_builder(tspec: Any = None, max_workers: int = 2, timeout_sec: float = 60.0) -> Any:
    """A MetaSchedule builder over a pool of long-lived workers that never import
    ``tvm.s_tir.tensor_intrin``; ``tspec`` is the target spec for cross builds (None: host)."""
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

    return PoolBuilder(tspec=tspec, max_workers=max_workers, timeout_sec=timeout_sec)


@dataclass
class MeasureConfig:
    """How each candidate is timed: ``repeat`` timings of at least ``min_repeat_ms`` each.

    ``flush_cache``: before each timing, every argument but the first (the input feature map,
    which the previous layer has just written) is flushed from the CPU caches, so weights are
    read cold, as they are once per inference in the model. Each timing is then one call
    (``min_repeat_ms`` is not used: later calls would find the weights cached again) and
    ``repeat`` is at least :data:`FLUSHED_REPEAT`.
    """

    repeat: int = 3
    min_repeat_ms: int = 25
    timeout_s: float = 60.0
    flush_cache: bool = False


FLUSHED_REPEAT = 20  # single calls of a few µs: more of them for a steady mean


def evaluator_config(measure: MeasureConfig) -> Any:
    """MetaSchedule's timing settings for ``measure``."""
    from tvm.s_tir import meta_schedule as ms

    flush = measure.flush_cache
    return ms.runner.EvaluatorConfig(
        number=1,
        repeat=max(measure.repeat, FLUSHED_REPEAT) if flush else measure.repeat,
        min_repeat_ms=0 if flush else measure.min_repeat_ms,
        enable_cpu_cache_flush=flush,
    )


def make_runner(device: Any, measure: MeasureConfig) -> Any:
    """MetaSchedule's runner for ``device`` (a parsed ``local`` / ``rpc://`` / ``tracker://``)."""
    from tvm.s_tir import meta_schedule as ms

    from sepconv.targets import devices

    evaluator = evaluator_config(measure)
    if device.is_local:
        return ms.runner.LocalRunner(evaluator_config=evaluator, timeout_sec=measure.timeout_s)
    if device.kind == "rpc":
        key = f"rpc:{device.host}:{device.port}"
        create = functools.partial(
            devices.create_rpc_session, host=device.host, port=device.port, key=device.key
        )
        workers = 1
    else:
        key = device.key
        create = devices.create_rpc_session
        workers = max(1, min(8, devices.count_servers(device)))
    config = ms.runner.RPCConfig(
        tracker_host=device.host,
        tracker_port=device.port,
        tracker_key=key,
        session_timeout_sec=int(measure.timeout_s),
    )
    return ms.runner.RPCRunner(
        rpc_config=config,
        evaluator_config=evaluator,
        f_create_session=create,
        max_workers=workers,
    )


def measure_candidates(
    context: Any, schedules: Iterable[Any], logged: Collection[int] = (), task_name: str = ""
) -> tuple[list, int]:
    """(measure candidates, how many were already logged): each distinct schedule after
    MetaSchedule's postprocessors, minus those the log has measured (``logged``: module
    hashes)."""
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
