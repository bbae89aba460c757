"""The TVM workarounds of :mod:`sepconv.compiler.tvm_compat`: per workaround, that the TVM
behaviour it exists for is still there, and that what it patches is restored.

A failure in a ``test_tvm_still_…`` test after a TVM upgrade means the upgrade changed what the
workaround relies on: read the workaround's docstring ("Obsolete when"/"Wrong when"), then remove
or fix it, and this test with it.

Workarounds for TVM 0.27 that live elsewhere (the rooms below ``compiler/`` do not import it),
each documented where it is:

- ``schedules/target_params.py``: x86 vector width from CPU feature flags
  (``llvm_get_vector_width`` answers 512 for every x86 CPU).
- ``schedules/triton_embed.py``: ``CrossTritonKernel`` (Triton compiled without a GPU, CUDA
  module without a driver, constexpr/scratch arguments, unique kernel names).
- ``schedules/gpu.py``: ``verify_gpu_kernels`` (TVM lets a GPU function without thread
  bindings through as host code).
- ``targets/cuda_embed.py``: CUDA binaries inside ``CUDAFallbackModule`` sources, load-time
  ``tvm_callback_cuda_compile`` hook.
- ``targets/triple.py``: ``configure_cuda_jit`` (NVRTC needs cuda-bindings, else nvcc),
  ``_cuda_source_modules`` (fallback modules hold source, not kernels).
- ``compiler/costs.py``: a hand-written SBlock walk (no TIR statement visitor in Python).
- ``schedules/nhwc_tile.py``: ``partition_padded_tiles`` (TVM's vectorizer scalarizes a whole
  loop whose block carries a predicate, on targets without scalable vectors; the loop-partition
  hint peels the predicated tile).
"""

from __future__ import annotations

import contextlib
import inspect
import subprocess
import sys
import threading
import types

import numpy as np
import pytest
import tvm
from tvm import te
from tvm.s_tir import Schedule

from sepconv.compiler import tvm_compat
from sepconv.targets import resolve_target


def _matmul():
    a = te.placeholder((8, 8), name="A")
    b = te.placeholder((8, 8), name="B")
    k = te.reduce_axis((0, 8), name="k")
    c = te.compute((8, 8), lambda i, j: te.sum(a[i, k] * b[k, j], axis=k), name="C")
    return te.create_prim_func([a, b, c])


def test_written_for_the_installed_tvm():
    """The workarounds were checked against these versions: an upgrade re-checks them all."""
    from importlib.metadata import version

    assert version("apache-tvm") == tvm_compat.TVM_VERSION
    assert version("apache-tvm-ffi") == tvm_compat.TVM_FFI_VERSION


# -- light_tensor_intrinsics


def test_tvm_still_imports_every_tensor_intrinsic_in_tune_context():
    from tvm.s_tir.meta_schedule import TuneContext

    assert "import tvm.s_tir.tensor_intrin" in inspect.getsource(TuneContext.__init__)


LIGHT_IMPORT = """
import sys
from sepconv.compiler import tvm_compat
from sepconv.targets import resolve_target
from tvm.s_tir import TensorIntrin
name = tvm_compat.TENSOR_INTRIN
assert name not in sys.modules
with tvm_compat.light_tensor_intrinsics(resolve_target("host").target):
    stub = sys.modules[name]
    assert stub.__spec__ is None, "the real package was imported"
    assert TensorIntrin.get("dot_16x4_avx512", allow_missing=True) is not None  # x86's
    assert TensorIntrin.get("dot_4x4_i8i8s32_neon", allow_missing=True) is not None  # ARM's
    assert name + ".cuda" not in sys.modules
assert name not in sys.modules, "the stand-in was left in sys.modules"
import tvm.s_tir
assert getattr(tvm.s_tir, "tensor_intrin", None) is not stub
print("OK")
"""


def test_light_tensor_intrinsics_registers_cpu_ones_and_removes_its_stand_in():
    out = subprocess.run(
        [sys.executable, "-c", LIGHT_IMPORT], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-3000:]


# -- cheap_inspect_stack


def test_tvm_still_calls_inspect_stack_to_parse_a_prim_func():
    from tvm.tirx.script.parser import entry

    assert "inspect.stack()" in inspect.getsource(entry)


def test_cheap_inspect_stack_gives_what_tvmscript_reads():
    """Frames, files, lines and source lines as ``inspect.stack`` gives them (the tensor
    intrinsics import with it in seconds instead of about a minute)."""
    import inspect

    def inner():
        return inspect.stack()

    def outer():
        return inner()

    original = inspect.stack
    real = [(f.frame.f_code, f.filename, f.lineno, f.function, f.code_context) for f in outer()]
    with tvm_compat.cheap_inspect_stack():
        assert inspect.stack is not original
        cheap = [
            (f.frame.f_code, f.filename, f.lineno, f.function, f.code_context) for f in outer()
        ]
    assert inspect.stack is original
    assert [f[3] for f in cheap] == [f[3] for f in real]  # the same frames, outermost included
    assert cheap[:2] == real[:2]  # inner, outer: same code, file, line and source line


# -- forced_categorical_decisions


def test_tvm_still_honours_a_sampling_decision():
    params = inspect.signature(Schedule.sample_categorical).parameters
    assert list(params)[1:] == ["candidates", "probs", "decision"]
    sch = Schedule(_matmul())
    assert int(sch.get(sch.sample_categorical([2, 4, 8], [0.2, 0.3, 0.5], decision=2))) == 8


def test_forced_decisions_are_forced_counted_scoped_and_restored():
    original = Schedule.sample_categorical
    sch = Schedule(_matmul())
    other: list[int] = []

    def sample_elsewhere() -> None:  # another thread: TVM's behaviour, not counted
        s = Schedule(_matmul())
        other.append(int(s.get(s.sample_categorical([2, 4, 8], [1.0, 0.0, 0.0]))))

    with tvm_compat.forced_categorical_decisions([2, 4]) as seen:
        assert Schedule.sample_categorical is not original
        a = int(sch.get(sch.sample_categorical([2, 4, 8], [1.0, 0.0, 0.0])))
        b = int(sch.get(sch.sample_categorical([16, 32], [1.0, 0.0])))  # 4 % 2 = 0
        c = int(sch.get(sch.sample_categorical([3, 5], [0.0, 1.0])))  # not forced: sampled
        t = threading.Thread(target=sample_elsewhere)
        t.start()
        t.join()
        with tvm_compat.forced_categorical_decisions([1]) as inner:
            d = int(sch.get(sch.sample_categorical([7, 9], [1.0, 0.0])))
        assert Schedule.sample_categorical is not original  # the outer block still forces
        e = int(sch.get(sch.sample_categorical([7, 9], [1.0, 0.0])))
    assert (a, b, c, d, e) == (8, 16, 5, 9, 7)
    assert seen == [3, 2, 2, 2] and inner == [2]
    assert other == [2]
    assert Schedule.sample_categorical is original


def test_forced_decisions_restore_after_an_error():
    original = Schedule.sample_categorical
    with pytest.raises(RuntimeError), tvm_compat.forced_categorical_decisions([0]):
        raise RuntimeError("a rule that fails")
    assert Schedule.sample_categorical is original


# -- lazy_xgb_model


class _Features:
    """A feature extractor stand-in: one 4-feature row per candidate."""

    def extract_from(self, context, candidates):
        return [types.SimpleNamespace(numpy=lambda: np.ones((1, 4))) for _ in candidates]


def _update(model, n: int = 2) -> None:
    context = types.SimpleNamespace(mod=tvm.IRModule({"main": _matmul()}))
    results = [types.SimpleNamespace(run_secs=[1e-3 * (i + 1)]) for i in range(n)]
    model.update(context, [object()] * n, results)


def test_tvm_still_trains_xgboost_before_its_warm_up():
    from tvm.s_tir.meta_schedule.cost_model import XGBModel

    trained = []

    class Counting(XGBModel._cls):  # the private class the workaround subclasses
        def _train(self, xs, ys):
            trained.append(self.data_size)

    model = Counting(num_tuning_cores=1, adaptive_training=True)
    model.extractor = _Features()
    _update(model)
    assert model.data_size == 2 < model.num_warmup_samples
    assert trained == [2], "XGBModel no longer trains before its warm-up: drop lazy_xgb_model"
    predicted = model.predict(None, [object()] * 3)  # random scores until the warm-up
    assert predicted.shape == (3,)


def test_lazy_xgb_model_skips_the_trainings_before_its_warm_up():
    model = tvm_compat.lazy_xgb_model(1)
    inst = model._inst  # the Python object behind TVM's derived-object wrapper
    inst.extractor = _Features()
    _update(inst)
    assert inst.data_size == 2 and inst.booster is None and inst.last_train_size == 0
    assert inst.adaptive_training and inst.config.nthread == 1


# -- record_as_json


def _record_with_an_index_map():
    from tvm.s_tir import meta_schedule as ms

    mod = tvm.IRModule({"main": _matmul()})
    sch = Schedule(mod)
    sch.transform_layout(sch.get_sblock("C"), ("write", 0), lambda i, j: (j, i))
    return ms.database.TuningRecord(
        sch.trace,
        ms.database.Workload(mod),
        run_secs=[1e-3],
        target=resolve_target("host").target,
        args_info=ms.arg_info.ArgInfo.from_prim_func(mod["main"]),
    )


def test_tvm_still_cannot_write_a_trace_with_an_index_map_from_python():
    with pytest.raises(TypeError):
        _record_with_an_index_map().as_json()


def test_record_as_json_writes_it_through_tvms_json_database():
    from tvm.s_tir import meta_schedule as ms

    record = _record_with_an_index_map()
    line = tvm_compat.record_as_json(record, "w.json", "r.json")
    again = ms.database.TuningRecord.from_json(line, record.workload)
    assert [float(s) for s in again.run_secs] == [1e-3]
    assert any(i.kind.name == "TransformLayout" for i in again.trace.insts)


# -- normalize_workload


def test_normalize_workload_is_what_tune_context_stores():
    import tvm_ffi
    from tvm.s_tir import meta_schedule as ms

    func = _matmul()
    key = tvm_compat.normalize_workload(func)
    assert list(key["main"].attrs.keys()) and key["main"].attrs["tirx.noalias"]
    with tvm_compat.light_tensor_intrinsics(resolve_target("host").target):
        ctx = ms.TuneContext(func, target=resolve_target("host").target)
    assert tvm_ffi.structural_equal(ctx.mod, key)


# -- partition_padded_tiles (schedules/nhwc_tile.py)


def _predicated_vector_loop(hint: bool) -> str:
    """58 real channels of 4 tiles of 16, the last predicated, lowered by TVM's TIR pipeline."""
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def crop(a: T.Buffer((4, 16), "float32"), b: T.Buffer((58,), "float32")):
        for t in range(4):
            for v in T.vectorized(16):
                with T.sblock("crop"):
                    c = T.axis.spatial(58, t * 16 + v)
                    T.where(t * 16 + v < 58)
                    b[c] = a[c // 16, c % 16] + T.float32(1)

    sch = Schedule(crop)
    if hint:
        sch.annotate(sch.get_loops(sch.get_sblock("crop"))[0], "pragma_loop_partition_hint", 1)
    target = tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "znver4"})
    s_tir, tirx = tvm.s_tir.transform, tvm.tirx.transform
    # the default pipeline's order (tvm/s_tir/pipeline.py), up to the vectorizer
    passes = [tirx.BindTarget(target), s_tir.LowerInitBlock(), s_tir.ConvertBlocksToOpaque(),
              s_tir.LowerOpaqueBlock(), tirx.FlattenBuffer(), s_tir.LoopPartition(),
              tirx.VectorizeLoop()]  # fmt: skip
    return tvm.ir.transform.Sequential(passes)(sch.mod).script()


def test_tvm_still_scalarizes_a_predicated_vector_loop():
    """Obsolete when TVM vectorizes the predicated tiles (masked stores): the hint then only
    duplicates the loop body — remove it."""
    assert "T.Ramp(" not in _predicated_vector_loop(hint=False)


def test_the_partition_hint_keeps_the_whole_tiles_vectorized():
    assert "T.Ramp(" in _predicated_vector_loop(hint=True)


# -- partition_before_narrowing


def _hinted_int64_loop(patched: bool) -> str:
    """The padded epilogue above on int64 loops, as Relax's functions have them, through the
    default pipeline's passes up to the vectorizer — NarrowDataType among them, looked up when
    called, as ``tvm/s_tir/pipeline.py`` does."""
    from tvm.script import tirx as T

    i64 = T.int64

    @T.prim_func(s_tir=True)
    def crop(a: T.Buffer((i64(4), i64(16)), "float32"), b: T.Buffer((i64(58),), "float32")):
        for t in range(i64(4)):
            for v in T.vectorized(i64(16)):
                with T.sblock("crop"):
                    c = T.axis.spatial(i64(58), t * i64(16) + v)
                    T.where(t * i64(16) + v < i64(58))
                    b[c] = a[c // i64(16), c % i64(16)] + T.float32(1)

    sch = Schedule(crop)
    sch.annotate(sch.get_loops(sch.get_sblock("crop"))[0], "pragma_loop_partition_hint", 1)
    target = tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "znver4"})
    s_tir, tirx = tvm.s_tir.transform, tvm.tirx.transform
    patch = tvm_compat.partition_before_narrowing(target) if patched else contextlib.nullcontext()
    with patch:
        passes = [tirx.BindTarget(target), s_tir.LowerInitBlock(), s_tir.ConvertBlocksToOpaque(),
                  s_tir.LowerOpaqueBlock(), tirx.FlattenBuffer(), tirx.NarrowDataType(32),
                  s_tir.LoopPartition(), tirx.VectorizeLoop()]  # fmt: skip
        return tvm.ir.transform.Sequential(passes)(sch.mod).script()


def test_narrowing_still_loses_the_partition_hint_of_an_int64_loop():
    """Obsolete when NarrowDataType moves the hint to the int32 loop it makes: then the tile loop
    partitions without the patch — remove ``partition_before_narrowing``."""
    assert "T.Ramp(" not in _hinted_int64_loop(patched=False)


def test_partitioning_before_narrowing_keeps_the_whole_tiles_vectorized():
    narrow = tvm.tirx.transform.NarrowDataType
    assert "T.Ramp(" in _hinted_int64_loop(patched=True)
    assert tvm.tirx.transform.NarrowDataType is narrow  # restored


def test_partitioning_before_narrowing_is_for_x86_only():
    """On AArch64 the patch is a no-op (a cross-compiled model built with it hung on the
    emulated device)."""
    narrow = tvm.tirx.transform.NarrowDataType
    arm = tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72"})
    with tvm_compat.partition_before_narrowing(arm):
        assert tvm.tirx.transform.NarrowDataType is narrow
