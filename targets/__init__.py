"""Targets: triple → TVM target (+ host), tuning-log key, cross compilers, this machine's CPU/GPU.

``resolve_target("host")`` is the usual entry point; see :mod:`sepconv.targets.triple`. The CUDA
toolchain (nvcc, TVM's CUDA JIT) is :mod:`sepconv.targets.cuda_toolchain`; this machine is
:mod:`sepconv.targets.host`.
"""

from .cuda_toolchain import check_cuda_source, configure_cuda_jit, find_nvcc
from .host import (
    cpu_model_name,
    gpu_compute_capability,
    host_arch,
    host_cpu_name,
    physical_cores,
)
from .triple import (
    SUPPORTED_TRIPLES,
    TargetSpec,
    canonical_triple,
    ensure_runs_here,
    host_triple,
    missing_on_host,
    parse_cuda_arch,
    resolve_target,
)

__all__ = [
    "SUPPORTED_TRIPLES",
    "TargetSpec",
    "canonical_triple",
    "check_cuda_source",
    "configure_cuda_jit",
    "cpu_model_name",
    "ensure_runs_here",
    "find_nvcc",
    "gpu_compute_capability",
    "host_arch",
    "host_cpu_name",
    "host_triple",
    "missing_on_host",
    "parse_cuda_arch",
    "physical_cores",
    "resolve_target",
]
