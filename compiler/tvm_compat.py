"""Every workaround sepconv's compiler needs for TVM as it is, in one place.

Written for **apache-tvm 0.27.0.post1** with **apache-tvm-ffi 0.1.14.post1**. Each entry says why
it exists and how to tell that it is obsolete; ``tests/compiler/test_tvm_compat.py`` checks, per
entry, that the TVM behaviour it works around is still there (so a TVM upgrade that fixes it
fails a test that says to remove the workaround) and that anything patched is restored.

Anything that patches TVM (or the standard library) for the whole process is a context manager
that restores what it patched on exit:

============================== ==============================================================
:func:`light_tensor_intrinsics` ``sys.modules`` stand-in for ``tvm.s_tir.tensor_intrin`` (CPU)
:func:`cheap_inspect_stack`     ``inspect.stack`` without the ``sys.modules`` scan (TVMScript)
:func:`forced_categorical_decisions` ``Schedule.sample_categorical`` with forced decisions
:func:`lazy_xgb_model`          XGBoost cost model that skips training before its warm-up
:func:`record_as_json`          ``TuningRecord.as_json`` for traces that carry an ``IndexMap``
:func:`normalize_workload`      MetaSchedule's private ``_normalize_mod`` (the database key)
:func:`partition_before_narrowing` ``tirx.transform.NarrowDataType`` run after LoopPartition
============================== ==============================================================

Workarounds elsewhere that cannot live here (the rooms below ``compiler/`` do not import it) are
listed in this module's test file.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import sys
import threading
import types
from collections.abc import Iterator, Sequence
from typing import Any

TVM_VERSION = "0.27.0.post1"
"""The apache-tvm release these workarounds were written for."""
TVM_FFI_VERSION = "0.1.14.post1"
"""The apache-tvm-ffi release these workarounds were written for."""

TENSOR_INTRIN = "tvm.s_tir.tensor_intrin"

__all__ = [
    "TVM_FFI_VERSION",
    "TVM_VERSION",
    "cheap_inspect_stack",
    "forced_categorical_decisions",
    "lazy_xgb_model",
    "light_tensor_intrinsics",
    "normalize_workload",
    "partition_before_narrowing",
    "record_as_json",
]


# ---------------------------------------------------------------------------------------------
# Importing the tensor intrinsics


@contextlib.contextmanager
def light_tensor_intrinsics(target: Any) -> Iterator[None]:
    """Within this block, ``import tvm.s_tir.tensor_intrin`` costs ≈2 s instead of ≈25 s.

    **Why.** ``TuneContext.__init__`` imports that package, which registers the tensor
    intrinsics of every backend (13 s of it CUDA's). MetaSchedule's CPU rules need only x86's and
    ARM's; for CPU targets a stand-in package is registered in ``sys.modules`` whose submodules
    still import on demand, and those two are imported. On exit the stand-in is removed, so a
    later plain import gets the real package. CUDA targets get the real package, imported with
    :func:`cheap_inspect_stack` (36 s → 3 s here, ``benchmarks/compile_overheads.py``).

    **Obsolete when** ``TuneContext.__init__`` no longer imports ``tvm.s_tir.tensor_intrin``
    (or that import becomes cheap, e.g. lazily registered intrinsics).
    """
    if TENSOR_INTRIN in sys.modules or target.kind.name != "llvm":
        with cheap_inspect_stack():
            importlib.import_module(TENSOR_INTRIN)
        yield
        return
    import tvm.s_tir

    spec = importlib.util.find_spec(TENSOR_INTRIN)
    stub = types.ModuleType(TENSOR_INTRIN)
    stub.__path__ = list(spec.submodule_search_locations)
    stub.__file__ = spec.origin
    sys.modules[TENSOR_INTRIN] = stub
    try:
        for sub in ("x86", "arm_cpu"):
            importlib.import_module(f"{TENSOR_INTRIN}.{sub}")
        yield
    finally:
        if sys.modules.get(TENSOR_INTRIN) is stub:
            del sys.modules[TENSOR_INTRIN]
        if getattr(tvm.s_tir, "tensor_intrin", None) is stub:
            delattr(tvm.s_tir, "tensor_intrin")


@contextlib.contextmanager
def cheap_inspect_stack() -> Iterator[None]:
    """``inspect.stack`` without resolving each frame's module, for the duration of the block.

    **Why.** TVMScript's ``@T.prim_func`` calls ``inspect.stack()`` for every function it parses,
    and that resolves each frame's module through ``inspect.getmodule`` — a scan of
    ``sys.modules`` per frame. The tensor-intrinsic package parses ~500 functions, so its import
    spends 90 % of its time there. The parser reads only each frame, its file, line and source
    line; this ``stack`` gives those (from ``linecache``) without the scan.

    **Obsolete when** TVMScript's parser entry (``tvm.tirx.script.parser.entry``) stops calling
    ``inspect.stack()`` (e.g. walks ``sys._getframe`` itself).
    """
    import linecache

    extra = {"positions": None} if sys.version_info >= (3, 11) else {}

    def stack(context: int = 1) -> list[inspect.FrameInfo]:
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


# ---------------------------------------------------------------------------------------------
# Forcing a rule's sampled decisions

_forced = threading.local()
_hook_lock = threading.Lock()
_hook_depth = 0
_hook_original: Any = None


@contextlib.contextmanager
def forced_categorical_decisions(decisions: Sequence[int]) -> Iterator[list[int]]:
    """Within the block, the *i*-th ``Schedule.sample_categorical`` of this thread takes
    ``decisions[i] % len(candidates)`` (later ones sample as usual); yields the list of
    ``len(candidates)`` of every call made, filled as the block runs.

    **Why.** Our NHWC tile rules sample with ``sample_categorical`` and then use the value as a
    Python number (``int(sch.get(rv))``) to shape the schedule, so their traces do not depend on
    the sample and MetaSchedule's trace replay cannot explore them; the design space is
    enumerated by re-running the rule with every decision forced. TVM offers no way to force the
    decisions of Python code that calls the schedule directly (``decision=`` is an argument of
    each call, which the rules do not pass), so the method is wrapped on the class while the
    block runs; other threads (MetaSchedule's) see TVM's behaviour. Nested or concurrent blocks
    share one wrapper; the last to leave restores TVM's method.

    **Obsolete when** TVM can force a schedule's sampling decisions from outside (a decision
    provider on ``Schedule``). **Wrong when** ``sample_categorical`` loses its ``decision``
    parameter or stops honouring it.
    """
    from tvm.s_tir import Schedule

    global _hook_depth, _hook_original
    with _hook_lock:
        if _hook_depth == 0:
            original = Schedule.sample_categorical

            def sample_categorical(self, candidates, probs, decision=None):
                state = getattr(_forced, "state", None)
                if state is not None:
                    i = len(state[1])
                    state[1].append(len(candidates))
                    if i < len(state[0]):
                        decision = state[0][i] % len(candidates)
                return original(self, candidates, probs, decision)

            _hook_original = original
            Schedule.sample_categorical = sample_categorical
        _hook_depth += 1
    outer = getattr(_forced, "state", None)
    seen: list[int] = []
    _forced.state = (list(decisions), seen)
    try:
        yield seen
    finally:
        _forced.state = outer
        with _hook_lock:
            _hook_depth -= 1
            if _hook_depth == 0:
                Schedule.sample_categorical = _hook_original
                _hook_original = None


# ---------------------------------------------------------------------------------------------
# The XGBoost cost model


def lazy_xgb_model(num_tuning_cores: int) -> Any:
    """MetaSchedule's XGBoost cost model (``adaptive_training=True``), minus its trainings before
    it predicts anything.

    **Why.** ``XGBModel`` answers with random scores until it holds ``num_warmup_samples`` (100)
    measurements, yet retrains (≈2 s here) on almost every batch before that; skipping those
    trainings roughly doubles trials per minute on a small machine and changes no prediction.
    Subclassing it needs the undecorated class, the private ``XGBModel._cls`` (TVM's
    ``derived_object`` forbids subclassing the decorated one and names ``_cls`` in its error).

    **Obsolete when** ``XGBModel.update`` stops training below ``num_warmup_samples``.
    **Wrong when** ``XGBModel`` loses ``_cls``, ``_train``, ``data_size``, ``last_train_size``
    or ``num_warmup_samples``.
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

    return TuningXGBModel(num_tuning_cores=num_tuning_cores, adaptive_training=True)


# ---------------------------------------------------------------------------------------------
# Tuning records and workloads


def record_as_json(record: Any, workload_file: str, record_file: str) -> list:
    """TVM's JSON form of a tuning record (``[trace, run_secs, target, args_info]``).

    **Why.** TVM's Python conversion (``TuningRecord.as_json``) raises ``TypeError`` on traces
    whose instructions carry an ``IndexMap`` (MetaSchedule's CUDA candidates: ``transform_layout``
    on tensor-core tiles); TVM's C++ ``JSONDatabase`` writes them, so such a record goes through
    a scratch one (files named ``workload_file``/``record_file`` in a temporary directory) and
    its line is read back.

    **Obsolete when** ``TuningRecord.as_json`` converts such a trace.
    """
    import json
    import os
    import tempfile

    try:
        return record.as_json()
    except TypeError:
        pass
    from tvm.s_tir import meta_schedule as ms

    with tempfile.TemporaryDirectory(prefix="sepconv-record-") as tmp:
        scratch = ms.database.JSONDatabase(
            path_workload=os.path.join(tmp, workload_file),
            path_tuning_record=os.path.join(tmp, record_file),
        )
        scratch.commit_workload(record.workload.mod)
        scratch.commit_tuning_record(record)
        with open(os.path.join(tmp, record_file)) as f:
            return json.loads(f.readline())[1]


def normalize_workload(func: Any) -> Any:
    """The workload key of a fused PrimFunc: the IRModule MetaSchedule's ``TuneContext`` (and its
    task extraction) stores for it (``global_symbol="main"``, ``tirx.noalias``).

    **Why.** The normalisation is MetaSchedule's private ``tune_context._normalize_mod``; the
    tune log must key records exactly as MetaSchedule does, so it is called, not copied.

    **Wrong when** it is renamed or ``TuneContext(func).mod`` stops being its result.
    """
    from tvm.s_tir.meta_schedule.tune_context import _normalize_mod

    return _normalize_mod(func)


# ---------------------------------------------------------------------------------------------
# Loop-partition hints on int64 loops


@contextlib.contextmanager
def partition_before_narrowing(target: Any) -> Iterator[None]:
    """Have TVM's TIR pipeline run ``LoopPartition`` before ``NarrowDataType`` (restored on
    exit) when ``target`` is x86; a no-op for other targets.

    **Why.** Our functions' loops are int64, as Relax's shapes are (FuseTIR needs them to
    agree). ``LowerOpaqueBlock`` turns a loop's ``pragma_loop_partition_hint`` annotation into an
    ``AttrStmt`` on its loop variable; ``NarrowDataType(32)`` then replaces the variable with an
    int32 one but leaves the ``AttrStmt`` on the old one, so ``LoopPartition`` finds no hinted
    loop. ``schedules.nhwc_tile.partition_padded_tiles`` hints the channel-tile loop of every
    padded GEMM (ShuffleNetV2's 58, 116, 232 channels, 1000 classes): unpartitioned, TVM
    scalarized the whole epilogue — on AVX2 code ShuffleNetV2 int8's 24 → 58 conv took 702 µs
    of 3.36 ms in ``sepconv profile``, 342 µs alone against 91 µs partitioned. Partitioning first
    sees the variable the hint names; narrowing afterwards narrows the partitioned loops.

    **x86 only.** Built with it, a cross-compiled fp32 MobileNetV2 hung on the emulated aarch64
    device (every thread idle; ``-m arm``), and passed without it. Not understood yet; the
    AArch64 build keeps TVM's order, and its padded tiles stay scalarized.

    **Wrong when** ``NarrowDataType`` keeps the hint on the narrowed loop
    (``tests/compiler/test_tvm_compat.py`` lowers a hinted int64 loop and notices).
    """
    from tvm import s_tir, tirx
    from tvm.ir.transform import Sequential

    from sepconv.schedules.target_params import cpu_arch

    original = tirx.transform.NarrowDataType
    x86 = target is not None and target.kind.name == "llvm" and cpu_arch(target) == "x86"
    if not x86 or getattr(original, "partitions_first", False):  # nested: already in place
        yield
        return

    def partition_then_narrow(target_bits: int):
        return Sequential([s_tir.transform.LoopPartition(), original(target_bits)])

    partition_then_narrow.partitions_first = True
    tirx.transform.NarrowDataType = partition_then_narrow
    try:
        yield
    finally:
        tirx.transform.NarrowDataType = original
