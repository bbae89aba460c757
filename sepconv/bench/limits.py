"""This machine's limits, measured in the run that uses them: FMA peak and copy bandwidth.

Efficiency figures ("82 % of peak") are only meaningful against limits measured beside them: a
shared machine differs from one day (one minute) to the next. Both limits are measured with the
thread count the model runs with.

* **FMA peak**: a register-resident FMA loop compiled by TVM for the code's CPU (``mcpu``: the
  artifact's — AVX2 code on an AVX-512 host has half the peak) — independent vector chains
  ``a = a·b + c``, enough of them to cover the FMA latency on every port, one per thread — or
  a large fp32 sgemm (``torch.matmul``, n×n, 2n³ FLOP) if that is higher — not for code narrower
  than the host's vectors, which torch's sgemm is not. The sgemm alone is
  no ceiling: torch's BLAS reached 164 GFLOP/s on a 2-core Zen 5 EPYC whose loop measured 250–
  500 (the VM's two vCPUs on one or two physical cores) and where our GEMMs ran at 370.
* **copy bandwidth**: a large array copy (``Tensor.copy_``), bytes read + written per second;
  ``copy_gbs`` from DRAM (256 MB by default) and ``cache_copy_gbs`` from a copy that fits in
  cache (4 MB) — the ceiling for memory-bound kernels such as depthwise convolutions.
"""

from __future__ import annotations

import functools
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
    fma_gflops: float  # the FMA peak, GFLOP/s: the higher of the two below
    copy_gbs: float  # large copy, GB/s (read + written)
    cache_copy_gbs: float  # cache-resident copy, GB/s (read + written)
    sgemm_n: int
    copy_mb: float
    cache_copy_mb: float
    fma_loop_gflops: float = 0.0  # register-resident FMA loop (0: could not be built here)
    int8_gops: float = 0.0  # the u8·s8 dot loop, GOP/s (0: not measured, or no dot instruction)
    int8_dot: str = ""  # the dot intrinsic it ran (schedules.int8_intrinsics)
    sgemm_gflops: float = 0.0  # torch.matmul n×n
    mcpu: str = ""  # the CPU the FMA loop was compiled for
    method: str = (
        "FMA peak: the higher of a register-resident FMA loop compiled by TVM for mcpu (median "
        "GFLOP/s) and torch.matmul n×n fp32 (2n³ FLOP) — the loop alone where mcpu's vectors "
        "are narrower than the host's; bandwidth: median (read + written bytes)/s of "
        "Tensor.copy_; both on the model's thread count"
    )
    measured: list[dict] = field(default_factory=list)  # each measurement, when several merged

    def best(self, other: MachineLimits) -> MachineLimits:
        """The higher of each limit (a busy moment only lowers a limit), both kept in
        ``measured``: measured before and after a profile, one tenant's burst cannot halve it."""
        keys = (
            "fma_gflops", "copy_gbs", "cache_copy_gbs", "fma_loop_gflops", "sgemm_gflops",
            "int8_gops",
        )  # fmt: skip
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


FMA_CHAINS = 12  # independent accumulators: ≥ latency × ports (4 × 2), and 12 + 2 fit AVX2's 16
FMA_ITERS = 400_000


def _register_loop(threads: int, dtype: str, lanes: int, chains: int, iters: int, step):
    """One thread's ``chains`` independent vector recurrences ``acc = step(acc, out_row)`` of
    ``lanes`` × ``dtype``, ``iters`` times, in registers: a compute ceiling, nothing else."""
    from tvm.script import tirx as T

    n = chains * lanes

    @T.prim_func(s_tir=True)
    def main(out: T.Buffer((threads, n), dtype)):
        T.func_attr({"global_symbol": "main", "tirx.noalias": True})
        for t in T.parallel(threads):
            acc = T.alloc_buffer((n,), dtype, scope="local")
            for j in T.vectorized(n):
                acc[j] = out[t, j]  # unknown at compile time: nothing to fold
            for _ in T.serial(iters):
                for c in T.unroll(chains):
                    acc[T.ramp(c * lanes, 1, lanes)] = step(
                        acc[T.ramp(c * lanes, 1, lanes)], out[t, T.ramp(0, 1, lanes)]
                    )
            for j in T.vectorized(n):
                out[t, j] = acc[j]

    return main


def _fma_loop(threads: int, lanes: int, chains: int, iters: int):
    from tvm import tirx

    def fma(v, _row):  # a recurrence no compiler can fold: one FMA per lane per step
        return v * tirx.const(0.9999999, "float32") + tirx.const(1e-7, "float32")

    return _register_loop(threads, "float32", lanes, chains, iters, fma)


@functools.lru_cache(maxsize=8)  # a profile measures before and after the model: build once
def build_fma_loop(threads: int, mcpu: str | None = None, iters: int = FMA_ITERS):
    """``(library, its output shape, FLOP per call, target spec)`` of the FMA loop for this
    machine's CPU (``mcpu``: another one it runs, e.g. ``haswell`` on an AVX-512 host)."""
    import tvm

    from sepconv.schedules.target_params import cpu_params
    from sepconv.targets import resolve_target

    spec = resolve_target("host", mcpu=mcpu)
    lanes = cpu_params(spec.target).lanes("float32")
    func = _fma_loop(threads, lanes, FMA_CHAINS, iters)
    lib = tvm.compile(tvm.IRModule({"main": func}), target=spec.target)
    return lib, (threads, FMA_CHAINS * lanes), 2.0 * threads * iters * FMA_CHAINS * lanes, spec


def fma_loop_gflops(threads: int, mcpu: str | None = None, runs: int = 5) -> float:
    """GFLOP/s of the register-resident FMA loop on ``threads`` threads (TVM's pool: run with
    TVM_NUM_THREADS = threads); 0.0 when it cannot be built or run here."""
    import numpy as np
    import tvm

    try:
        lib, shape, flop, spec = build_fma_loop(threads, mcpu)
        if not spec.is_host:
            raise SepconvError(f"code for {spec.mcpu} does not run on this machine")
        out = tvm.runtime.tensor(np.zeros(shape, np.float32))
        s = _median_s(lambda: lib["main"](out), runs, warmup=1)
    except Exception as exc:  # noqa: BLE001 - an mcpu LLVM lacks: the sgemm still measures
        log.warning("no FMA loop for mcpu %s: %s", mcpu, exc)
        return 0.0
    return flop / s / 1e9


def _dot_loop(threads: int, kind: str, lanes: int, chains: int, iters: int):
    from tvm import tirx

    from sepconv.schedules.int8_intrinsics import dot_accumulate

    width = 4 * lanes

    def dot(v, row):
        # the bytes multiplied are the accumulator's own, so no product is loop-invariant (a
        # u8·s8 pair's would be hoisted out of the loop); the weights, a row of the output
        words = tirx.reinterpret(f"uint8x{width}", v)
        return dot_accumulate(kind, lanes, v, words, tirx.reinterpret(f"int8x{width}", row))

    return _register_loop(threads, "int32", lanes, chains, iters, dot)


@functools.lru_cache(maxsize=8)
def build_dot_loop(threads: int, mcpu: str | None = None, iters: int = FMA_ITERS):
    """``(library, output shape, int8 ops per call (2 per multiply-add), instruction, spec)``
    of a register-resident loop of the u8·s8 dot instruction our int8 kernels use on this CPU
    (``mcpu``: another one it runs), or None where the code has no such instruction."""
    import tvm

    from sepconv.schedules.int8_intrinsics import dot_intrinsic
    from sepconv.schedules.target_params import target_features
    from sepconv.targets import resolve_target

    spec = resolve_target("host", mcpu=mcpu)
    dot = dot_intrinsic(target_features(spec.target))
    if dot is None:
        return None
    func = _dot_loop(threads, dot.kind, dot.lanes, FMA_CHAINS, iters)
    lib = tvm.compile(tvm.IRModule({"main": func}), target=spec.target)
    ops = 2.0 * threads * iters * FMA_CHAINS * 4 * dot.lanes
    return lib, (threads, FMA_CHAINS * dot.lanes), ops, dot.name, spec


def dot_loop_gops(threads: int, mcpu: str | None = None, runs: int = 5) -> tuple[float, str]:
    """(GOP/s, instruction) of the u8·s8 dot loop on ``threads`` threads: the int8 kernels'
    compute ceiling, as the FMA loop is the fp32 kernels'; (0.0, "") where the code has no dot
    instruction or the loop cannot be built or run here."""
    import numpy as np
    import tvm

    try:
        built = build_dot_loop(threads, mcpu)
        if built is None:
            return 0.0, ""
        lib, shape, ops, name, spec = built
        if not spec.is_host:
            raise SepconvError(f"code for {spec.mcpu} does not run on this machine")
        out = tvm.runtime.tensor(np.ones(shape, np.int32))
        s = _median_s(lambda: lib["main"](out), runs, warmup=1)
    except Exception as exc:  # noqa: BLE001 - as the FMA loop's: the other limits still measure
        log.warning("no int8 dot loop for mcpu %s: %s", mcpu, exc)
        return 0.0, ""
    return ops / s / 1e9, name


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


def _vector_bits(mcpu: str | None) -> int:
    from sepconv.targets import resolve_target

    return resolve_target("host", mcpu=mcpu).vector_bits


def _narrower_than_host(mcpu: str | None) -> bool:
    """Whether code for ``mcpu`` has narrower vectors than this machine's (False when unknown:
    the FMA loop for it could not be built either, and the sgemm is the only figure left)."""
    if mcpu is None:
        return False
    try:
        return _vector_bits(mcpu) < _vector_bits(None)
    except SepconvError:
        return False


def measure_limits(
    threads: int,
    *,
    mcpu: str | None = None,
    sgemm_n: int = 2048,
    copy_mb: float = 256,
    cache_copy_mb: float = 4,
    runs: int = 5,
    int8: bool = False,
) -> MachineLimits:
    """Measure FMA peak and copy bandwidth now, on ``threads`` threads (a few seconds);
    ``mcpu``: the CPU the code runs as (an artifact's; default this machine's); ``int8``: the
    u8·s8 dot loop's peak too (:func:`dot_loop_gops`)."""
    if threads < 1:
        raise SepconvError(f"threads must be ≥ 1, got {threads}")
    if sgemm_n < 64 or copy_mb <= 0 or cache_copy_mb <= 0:
        raise SepconvError(
            f"need sgemm_n ≥ 64 and positive copy sizes (got n={sgemm_n}, {copy_mb} MB, "
            f"{cache_copy_mb} MB)"
        )
    t0 = time.perf_counter()
    loop = fma_loop_gflops(threads, mcpu, runs)
    sgemm = sgemm_gflops(threads, sgemm_n, runs)
    int8_gops, int8_dot = dot_loop_gops(threads, mcpu, runs) if int8 else (0.0, "")
    # torch's sgemm runs the host's widest vectors: no ceiling for narrower code (AVX2 code on
    # an AVX-512 host, whose 2048² sgemm measured 355 GFLOP/s against the AVX2 loop's 234)
    narrower = _narrower_than_host(mcpu)
    limits = MachineLimits(
        threads=threads,
        fma_gflops=loop if narrower and loop > 0 else max(loop, sgemm),
        fma_loop_gflops=loop,
        sgemm_gflops=sgemm,
        int8_gops=int8_gops,
        int8_dot=int8_dot,
        mcpu=mcpu or "",
        copy_gbs=copy_gbs(threads, int(copy_mb * (1 << 20)), runs),
        cache_copy_gbs=copy_gbs(threads, int(cache_copy_mb * (1 << 20)), max(runs, 20)),
        sgemm_n=sgemm_n,
        copy_mb=copy_mb,
        cache_copy_mb=cache_copy_mb,
    )
    log.info(
        "machine limits on %d threads: %.1f GFLOP/s FMA loop, %.1f sgemm, %.1f GB/s copy, "
        "%.1f GB/s cached copy (%.1fs)", threads, loop, sgemm, limits.copy_gbs,
        limits.cache_copy_gbs,
        time.perf_counter() - t0,
    )  # fmt: skip
    return limits
