"""``sepconv bench``: measured latency of models on a target, against the tools users would use
instead (torch eager, ``torch.compile``, ONNX Runtime, OpenVINO, ExecuTorch with XNNPACK).
Compile → check → time, in that order::

    from sepconv.bench import run_bench
    report = run_bench(["mobilenet_v1:0.5", "mobilenet_v2"], peers="torch,onnxruntime", runs=50)
    report.write("build/report")   # report.json, report.md, latency_vs_macs.png, speedup.png

Every system's output on a seeded input is compared with eager PyTorch (the ``sepconv validate``
tolerance; int8 systems: SQNR against fp32 ≥ ``min_sqnr_db``) before it is timed; one that
disagrees is reported ``FAIL`` and never timed. ``run_bench(..., precision="int8",
calibration=DATA)`` benchmarks sepconv's int8 against its fp32 and ONNX Runtime's and OpenVINO's
(NNCF) int8, all calibrated on the same samples. A system that cannot run here (not installed,
no C++ compiler, export fails, remote device) is reported ``unavailable`` with the reason. Peers
are timed before sepconv with an idle pause before each block: TVM's thread pool busy-waits
after a run and would slow whatever runs next.

``sepconv.profile(artifact)`` (:mod:`sepconv.bench.profile`) breaks one compiled model down by
fused function against the machine's limits (:mod:`sepconv.bench.limits`), peers beside it.
"""

from __future__ import annotations

from sepconv.timing import Timing, time_call, time_interleaved

from .limits import MachineLimits, measure_limits
from .peers import (
    PEERS,
    BenchSettings,
    Peer,
    PeerUnavailable,
    Prepared,
    parse_peers,
)
from .profile import ProfileReport
from .report import BenchReport, ModelResult, SystemResult
from .runner import DEFAULT_INT8_PEERS, DEFAULT_PEERS, default_peers, run_bench

__all__ = [
    "DEFAULT_INT8_PEERS",
    "DEFAULT_PEERS",
    "PEERS",
    "BenchReport",
    "BenchSettings",
    "MachineLimits",
    "ModelResult",
    "Peer",
    "PeerUnavailable",
    "Prepared",
    "ProfileReport",
    "SystemResult",
    "Timing",
    "default_peers",
    "measure_limits",
    "parse_peers",
    "run_bench",
    "time_call",
    "time_interleaved",
]
