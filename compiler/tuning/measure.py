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


CACHE_STATES = ("model", "warm", "flushed")


@dataclass
class MeasureConfig:
    """How each candidate is timed: ``repeat`` timings of at least ``min_repeat_ms`` each, with
    the caches in state ``cache``:

    - ``"model"`` (default on this machine): as the model finds them. The input feature map is
      the one the previous layer has just written, so it stays; the weights and the output are
      the layer's own, touched once per inference while the rest of the model passes through
      the core's caches, so calls rotate over enough copies of them
      (:func:`rotation_bytes`: twice the CPUs' private L2 caches) that each call reads its
      weights from beyond L2 — from the shared L3 where it holds them, as it does the
      model's. :func:`rotating_run_evaluator`.
    - ``"warm"``: MetaSchedule's own timing, the same arguments again and again; a layer whose
      weights fit in L2 is timed with them there, which the model never has.
    - ``"flushed"``: before each single call every argument but the input is flushed from all
      caches (TVM's ``cache_flush_cpu_non_first_arg``), so weights come from DRAM; ``repeat``
      is at least :data:`FLUSHED_REPEAT`.

    Remote devices (RPC) time candidates with TVM's evaluator on the device: ``warm`` or
    ``flushed`` (``None``, the default, is ``model`` locally and ``warm`` over RPC).
    """

    repeat: int = 3
    min_repeat_ms: int = 25
    timeout_s: float = 60.0
    cache: str | None = None

    def __post_init__(self) -> None:
        if self.cache is not None and self.cache not in CACHE_STATES:
            from sepconv.errors import TuningError

            raise TuningError(f"cache must be one of {', '.join(CACHE_STATES)}, got {self.cache!r}")

    def state(self, local: bool) -> str:
        """The cache state candidates are timed in on a local or a remote device."""
        if self.cache is None:
            return "model" if local else "warm"
        if self.cache == "model" and not local:
            from sepconv.errors import TuningError

            raise TuningError(
                "cache='model' rotates argument copies from this process, so it times local "
                "candidates only; over RPC use 'warm' or 'flushed' (--cache)"
            )
        return self.cache


FLUSHED_REPEAT = 20  # single calls of a few µs: more of them for a steady mean
L2_FALLBACK_BYTES = 2 << 20  # per CPU, where sysfs does not say


def rotation_bytes() -> int:
    """Bytes the rotated copies of a candidate's weights and output span at least: twice the
    private (L2) caches of the CPUs this process may run on
    (:func:`sepconv.targets.host.private_l2_bytes`; 2 MiB a CPU where sysfs does not say)."""
    from sepconv.targets.host import private_l2_bytes, usable_cpus

    return 2 * (private_l2_bytes() or L2_FALLBACK_BYTES * len(usable_cpus()))


# A candidate whose weights and output are a few bytes would need millions of copies to span
# the L2s; past this many, what is left of them in L2 is too small to matter to its time.
MAX_ROTATED_COPIES = 4096


def _nbytes(arr: Any) -> int:
    import numpy as np

    n = 1
    for d in arr.shape:
        n *= int(d)
    return n * np.dtype(str(arr.dtype)).itemsize


def rotated_arguments(args: list, device: Any, span: int) -> list[list]:
    """``args`` and as many copies of all but the first (``args[0]``, the input, is shared) as
    make the copies span ``span`` bytes (at most :data:`MAX_ROTATED_COPIES`)."""
    import tvm

    own = sum(_nbytes(a) for a in args[1:])
    copies = min(MAX_ROTATED_COPIES, -(-span // own)) if own else 1
    sets = [list(args)]
    for _ in range(copies - 1):
        clone = [args[0]]
        for a in args[1:]:
            b = tvm.runtime.empty(a.shape, a.dtype, device)
            b.copyfrom(a)
            clone.append(b)
        sets.append(clone)
    return sets


def rotating_run_evaluator(rt_mod: Any, device: Any, config: Any, repeated_args: list) -> list:
    """MetaSchedule's ``f_run_evaluator`` for ``cache="model"``: seconds per call, each of
    ``config.repeat`` timings at least ``config.min_repeat_ms`` of calls rotating over
    :func:`rotated_arguments`. The calls are timed in a Python loop: a call from Python costs
    ~0.2 µs here, about what the model's VM spends dispatching one."""
    import time

    func = rt_mod[rt_mod.entry_name]
    sets = rotated_arguments(list(repeated_args[0]), device, rotation_bytes())
    for args in sets:  # untimed: first touches of the copies, lazy initialisation
        func(*args)
    costs = []
    for _ in range(max(1, config.repeat)):
        calls, start = 0, time.perf_counter()
        while True:
            for args in sets:
                func(*args)
            calls += len(sets)
            elapsed = time.perf_counter() - start
            if elapsed * 1e3 >= config.min_repeat_ms:
                break
        costs.append(elapsed / calls)
    return costs


def evaluator_config(measure: MeasureConfig, local: bool = True) -> Any:
    """MetaSchedule's timing settings for ``measure``."""
    from tvm.s_tir import meta_schedule as ms

    flush = measure.state(local) == "flushed"
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

    evaluator = evaluator_config(measure, device.is_local)
    if device.is_local:
        rotate = measure.state(local=True) == "model"
        return ms.runner.LocalRunner(
            evaluator_config=evaluator,
            timeout_sec=measure.timeout_s,
            f_run_evaluator=rotating_run_evaluator if rotate else None,
        )
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
