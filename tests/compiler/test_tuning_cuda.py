"""Tuning for CUDA without a GPU: every step up to the measurement is real (tasks from what TVM
schedules, MetaSchedule's CUDA space seeded with dlight's schedule, candidates built for sm_90
and checked by nvcc, records in ``cuda-sm90``, a build that uses them); the GPU that measures is
a stand-in whose "times" are a checksum of each candidate. On a GPU machine the same command
measures for real (``pytest -m gpu`` does not cover tuning; ``sepconv tune --target cuda`` does).
"""

from __future__ import annotations

import zlib
from pathlib import Path

import pytest
import torch

import sepconv
from sepconv.compiler import tuning
from sepconv.compiler.importer import import_module
from sepconv.compiler.tuning import database as tuning_db
from sepconv.compiler.tuning import measure
from sepconv.errors import DeviceError, TuningError
from sepconv.targets import find_nvcc, resolve_target
from tests.nets import tiny_separable

X = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))

pytestmark = pytest.mark.skipif(find_nvcc() is None, reason="nvcc (CUDA toolkit) not installed")


def test_without_a_gpu_it_says_where_to_tune(monkeypatch, tmp_path):
    monkeypatch.setattr("sepconv.targets.gpu_compute_capability", lambda: None)
    with pytest.raises(DeviceError, match=r"has none: run .*--device rpc://GPU-HOST:9090"):
        tuning.tune(tiny_separable(), "cuda", example_input=X, trials=2, tune_log=tmp_path)


def test_the_arch_must_be_the_gpus(monkeypatch, tmp_path):
    monkeypatch.setattr("sepconv.targets.gpu_compute_capability", lambda: "8.0")
    with pytest.raises(TuningError, match="GPU is sm_80 but the target is sm_90: tune with"):
        tuning.tune(
            tiny_separable(), "cuda", cuda_arch="sm_90", example_input=X, trials=2,
            tune_log=tmp_path,
        )  # fmt: skip


def _stand_in_gpu():
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.runner import PyRunner, PyRunnerFuture, RunnerResult

    @derived_object
    class Done(PyRunnerFuture):
        def __init__(self, secs):
            super().__init__()
            self.secs = secs

        def done(self):
            return True

        def result(self):
            return RunnerResult(self.secs, None)

    @derived_object
    class StandInGPU(PyRunner):
        """Times each candidate by a checksum of its library: deterministic, distinct."""

        def __init__(self):
            super().__init__()
            self.seen = []

        def run(self, runner_inputs):
            out = []
            for r in runner_inputs:
                assert str(r.device_type) == "cuda"
                data = Path(str(r.artifact_path)).read_bytes()
                self.seen.append(str(r.artifact_path))
                out.append(Done([1e-6 * (1 + zlib.crc32(data) % 1000)]))
            return out

    return StandInGPU()


def test_tuning_pipeline_with_a_stand_in_gpu(monkeypatch, tmp_path):
    monkeypatch.setattr("sepconv.targets.gpu_compute_capability", lambda: "9.0")
    gpu = _stand_in_gpu()
    monkeypatch.setattr(measure, "make_runner", lambda device, config: gpu)
    report = tuning.tune(
        tiny_separable(), "cuda", cuda_arch="sm_90", example_input=X, trials=4,
        tune_log=tmp_path, trials_per_iter=4, task_filter="conv2d", progress=False,
    )  # fmt: skip
    log = tmp_path / "cuda-sm90"
    assert report.target["key"] == "cuda-sm90" and report.trials >= 1 and gpu.seen
    # The stem conv (TVM's, dlight's Matmul rule); the Triton launchers are not tasks at all.
    assert [t.name for t in report.tasks] == ["fused_conv2d_add_relu"]
    tasks = tuning.extract_tasks(
        [("tiny", import_module(tiny_separable(), (X,)))], resolve_target("cuda").target
    )
    assert tasks and not any("sepconv" in t.name for t in tasks)
    db = tuning_db.open_database([log], warn=False)
    assert db.report.records == report.trials
    # Every measured candidate was a CUDA library (nvcc checked its kernels while building).
    art = sepconv.compile(
        tiny_separable(), target="cuda", cuda_arch="sm_90", example_input=X,
        out=tmp_path / "tuned", tune_logs=[log],
    )  # fmt: skip
    assert art.manifest.build["tasks_tuned"] >= 1
    assert art.manifest.build["cuda_kernels"] == "binary"
