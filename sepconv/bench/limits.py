"""This machine's limits, measured in the run that uses them: FMA peak and copy bandwidth.

Efficiency figures ("82 % of peak") are only meaningful against limits measured beside them: a
shared machine differs from one day (one minute) to the next. Both limits are measured with the
thread count the model runs with.

* **FMA peak**: a large fp32 sgemm (``torch.matmul``, n×n, 2n³ FLOP), the best a tuned BLAS
  reaches here — a practical ceiling for convolutions and matmuls.
* **copy bandwidth**: a large array copy (``Tensor.copy_``), bytes read + written per second;
  ``copy_gbs`` from DRAM (256 MB by default) and ``cache_copy_gbs`` from a copy that fits in
  cache (4 MB) — the ceiling for memory-bound kernels such as depthwise convolutions.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

from sepconv.errors import SepconvError
from sepconv.timing import time_call

log = logging.getLogger(__name__)


@dataclass
class MachineLimits:
    threads: int
    fma_gflops: float  # fp32 sgemm, GFLOP/s
    copy_gbs: float  # large copy, GB/s (read + written)
    cache_copy_gbs: float  # cache-resident copy, GB/s (read + written)
    sgemm_n: int
    copy_mb: float
    cache_copy_mb: float
    method: str = (
        "FMA peak: median GFLOP/s of torch.matmul n×n fp32 (2n³ FLOP); bandwidth: median "
        "(read + written bytes)/s of Tensor.copy_; torch pinned to the model's thread count"
    )
    measured: list[dict] = field(default_factory=list)  # each measurement, when several merged

    def best(self, other: MachineLimits) -> MachineLimits:
        """The higher of each limit (a busy moment only lowers a limit), both kept in
        ``measured``: measured before and after a profile, one tenant's burst cannot halve it."""
        keys = ("fma_gflops", "copy_gbs", "cache_copy_gbs")
        runs = (self.measured or [{k: getattr(self, k) for k in keys}]) + (
            other.measured or [{k: getattr(other, k) for k in keys}]
        )
        return replace(self, **{k: max(r[k] for r in runs) for k in keys}, measured=runs)

    @property
    def ridge(self) -> float:
        """FLOP per byte where the roofline turns: below it a kernel is bandwidth-bound."""
        return self.fma_gflops / self.copy_gbs

    def to_json(self) -> dict:
        return {**asdict(self), "ridge_flop_per_byte": self.ridge}


def _median_s(fn: Callable[[], object], runs: int, warmup: int = 1) -> float:
    """Median seconds of ``fn()`` by the shared timer (:func:`sepconv.timing.time_call`)."""
    return time_call(fn, warmup=warmup, runs=runs).median_ms / 1e3


def sgemm_gflops(threads: int, n: int = 2048, runs: int = 5) -> float:
    """GFLOP/s of an n×n fp32 matmul on ``threads`` torch threads."""
    import torch

    with _torch_threads(threads):
        a = torch.rand(n, n)
        b = torch.rand(n, n)
        c = torch.empty(n, n)
        s = _median_s(lambda: torch.matmul(a, b, out=c), runs, warmup=2)
    return 2.0 * n**3 / s / 1e9


def copy_gbs(threads: int, nbytes: int = 256 << 20, runs: int = 7) -> float:
    """GB/s (read + written) of copying an ``nbytes`` fp32 array on ``threads`` threads."""
    import torch

    with _torch_threads(threads):
        src = torch.rand(max(nbytes // 4, 1024))
        dst = torch.empty_like(src)
        s = _median_s(lambda: dst.copy_(src), runs, warmup=2)
    return 2.0 * src.numel() * 4 / s / 1e9


class _torch_threads:
    def __init__(self, threads: int):
        self.threads = threads

    def __enter__(self):
        import torch

        self.old = torch.get_num_threads()
        torch.set_num_threads(self.threads)

    def __exit__(self, *exc):
        import torch

        torch.set_num_threads(self.old)


def measure_limits(
    threads: int,
    *,
    sgemm_n: int = 2048,
    copy_mb: float = 256,
    cache_copy_mb: float = 4,
    runs: int = 5,
) -> MachineLimits:
    """Measure FMA peak and copy bandwidth now, on ``threads`` threads (a few seconds)."""
    if threads < 1:
        raise SepconvError(f"threads must be ≥ 1, got {threads}")
    if sgemm_n < 64 or copy_mb <= 0 or cache_copy_mb <= 0:
        raise SepconvError(
            f"need sgemm_n ≥ 64 and positive copy sizes (got n={sgemm_n}, {copy_mb} MB, "
            f"{cache_copy_mb} MB)"
        )
    t0 = time.perf_counter()
    limits = MachineLimits(
        threads=threads,
        fma_gflops=sgemm_gflops(threads, sgemm_n, runs),
        copy_gbs=copy_gbs(threads, int(copy_mb * (1 << 20)), runs),
        cache_copy_gbs=copy_gbs(threads, int(cache_copy_mb * (1 << 20)), max(runs, 20)),
        sgemm_n=sgemm_n,
        copy_mb=copy_mb,
        cache_copy_mb=cache_copy_mb,
    )
    log.info(
        "machine limits on %d threads: %.1f GFLOP/s sgemm, %.1f GB/s copy, %.1f GB/s cached "
        "copy (%.1fs)", threads, limits.fma_gflops, limits.copy_gbs, limits.cache_copy_gbs,
        time.perf_counter() - t0,
    )  # fmt: skip
    return limits
