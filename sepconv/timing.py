"""The one timer: every latency sepconv reports (runtime, bench, profile, benchmarks) comes from
here, as a :class:`Timing` (median, p10, p90 in ms, the samples, and which clock took them).

Two clocks, one result type::

    from sepconv.timing import Timing, time_call, time_interleaved

    t = time_call(fn, x, warmup=10, runs=50)          # wall clock around fn(x), GC paused
    t = Timing.from_evaluator(evaluator, "main")      # a TVM time evaluator (timed on the device)
    ts = time_interleaved({"a": f, "b": g}, x, warmup=10, runs=50, rounds=5)
    time_ratio(ts["b"], ts["a"])                      # b's time / a's, paired by round

A bottom-layer utility: it imports nothing from sepconv, and nothing beyond the standard library.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "DEVICE_CLOCK",
    "WALL_CLOCK",
    "Timing",
    "paired_ratio",
    "rounds_ratio",
    "time_call",
    "time_interleaved",
    "time_ratio",
    "time_samples",
]

WALL_CLOCK = "wall clock per call (time.perf_counter), this process"
DEVICE_CLOCK = "TVM time_evaluator on the device (network excluded)"


@dataclass
class Timing:
    """Latency of one system: median, 10th and 90th percentile in ms over ``runs`` samples."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    runs: int
    timer: str
    samples_ms: tuple[float, ...] = field(default=(), repr=False, compare=False)
    round_medians_ms: tuple[float, ...] = field(default=(), repr=False, compare=False)
    """Per interleaved round, in round order, the median of that round's samples
    (:func:`time_interleaved`; empty for a system timed in one block)."""

    @classmethod
    def from_samples(cls, samples_ms: Sequence[float], timer: str = WALL_CLOCK) -> Timing:
        s = sorted(samples_ms)
        if not s:
            raise ValueError("no timing samples: need runs >= 1")
        return cls(
            statistics.median(s), s[int(0.1 * (len(s) - 1))], s[int(0.9 * (len(s) - 1))], len(s),
            timer, tuple(samples_ms),
        )  # fmt: skip

    @classmethod
    def from_evaluator(cls, evaluator: Callable[..., Any], *args: Any) -> Timing:
        """Run a TVM time evaluator (``module.time_evaluator(name, dev, number, repeat, ...)``)
        on ``args``: one sample per repeat, each the mean of ``number`` calls, timed where the
        module runs (on the device for an RPC session)."""
        return cls.from_samples([s * 1e3 for s in evaluator(*args).results], DEVICE_CLOCK)

    @property
    def median_us(self) -> float:
        return self.median_ms * 1e3

    def to_dict(self) -> dict:
        """``{"median_ms", "p10_ms", "p90_ms", "runs"}``, as ``CompiledModel.time`` returns it."""
        return {
            "median_ms": self.median_ms,
            "p10_ms": self.p10_ms,
            "p90_ms": self.p90_ms,
            "runs": self.runs,
        }


MIN_PAIRED_ROUNDS = 3


def paired_ratio(num: Timing, den: Timing) -> float | None:
    """``num``'s time over ``den``'s, paired by round: the median over the interleaved rounds
    of the two systems' round medians' ratio. None unless both were timed in the same
    :func:`time_interleaved` run, with at least :data:`MIN_PAIRED_ROUNDS` rounds.

    Why not the ratio of the pooled medians: a shared machine has slow phases (on a 2-core VM
    here, a model's runs went from 5.8 to 7.5 ms within a second, and stayed there). When one
    starts or ends inside a round, it slows one system's blocks and not the other's, and so
    shifts one pooled median alone. Within a round the two blocks are seconds apart, so a
    ratio per round cancels any phase that covers both, and the median over the rounds drops
    the rounds a phase boundary split."""
    return rounds_ratio(num.round_medians_ms, den.round_medians_ms)


def rounds_ratio(num: Sequence[float], den: Sequence[float]) -> float | None:
    """:func:`paired_ratio` on two systems' round medians as stored (a bench report's
    ``latency_ms["round_medians"]``)."""
    if len(num) < MIN_PAIRED_ROUNDS or len(num) != len(den):
        return None
    return statistics.median(x / y for x, y in zip(num, den, strict=True))


def time_ratio(num: Timing, den: Timing) -> float:
    """``num``'s time over ``den``'s: :func:`paired_ratio` where it applies, else the ratio of
    the medians (systems timed in separate blocks, or in fewer rounds)."""
    paired = paired_ratio(num, den)
    return num.median_ms / den.median_ms if paired is None else paired


def time_samples(fn: Callable[..., Any], *args: Any, warmup: int, runs: int) -> list[float]:
    """``warmup`` untimed calls of ``fn(*args)``, then the ms of each of ``runs`` calls (GC
    paused while timing)."""
    for _ in range(warmup):
        fn(*args)
    samples = []
    gc_was_on = gc.isenabled()
    gc.disable()
    try:
        for _ in range(runs):
            t0 = time.perf_counter()
            fn(*args)
            samples.append((time.perf_counter() - t0) * 1e3)
    finally:
        if gc_was_on:
            gc.enable()
    return samples


def time_call(fn: Callable[..., Any], *args: Any, warmup: int = 10, runs: int = 50) -> Timing:
    """The shared timer: ``warmup`` calls of ``fn(*args)``, then ``runs`` calls timed one by one
    (GC paused)."""
    return Timing.from_samples(time_samples(fn, *args, warmup=warmup, runs=runs), WALL_CLOCK)


def time_interleaved(
    fns: dict[str, Callable[..., Any]],
    *args: Any,
    warmup: int,
    runs: int,
    rounds: int,
    settle_s: float = 1.0,
    on_step: Callable[[str, int], None] | None = None,
) -> dict[str, Timing | Exception]:
    """Time several systems against each other, each called as ``fn(*args)``: ``rounds`` rounds
    of about runs/rounds calls each, the order reversed every round, each system's samples
    pooled. A shared machine drifts (other tenants, clocks) over the seconds one block takes;
    timed one block after another, that drift would show up as a difference between the systems.
    A system that raises is dropped from later rounds and its exception returned in place of a
    timing. Each timing keeps its per-round medians, for :func:`paired_ratio`."""
    names = list(fns)
    samples: dict[str, list[float]] = {n: [] for n in names}
    round_medians: dict[str, list[float]] = {n: [] for n in names}
    failed: dict[str, Exception] = {}
    rounds = max(1, min(rounds, runs))
    for i in range(rounds):
        n_runs = runs // rounds + (i < runs % rounds)
        n_warm = warmup if i == 0 else max(1, -(-warmup // rounds))
        for name in names if i % 2 == 0 else names[::-1]:
            if name in failed:
                continue
            if on_step is not None:
                on_step(name, i)
            time.sleep(settle_s)  # let the last system's spinning threads go to sleep
            try:
                block = time_samples(fns[name], *args, warmup=n_warm, runs=n_runs)
            except Exception as exc:  # noqa: BLE001 - reported per system by the caller
                failed[name] = exc
                continue
            samples[name] += block
            round_medians[name].append(statistics.median(block))
    out: dict[str, Timing | Exception] = {}
    for n in names:
        if n in failed:
            out[n] = failed[n]
        else:
            t = Timing.from_samples(samples[n], WALL_CLOCK)
            t.round_medians_ms = tuple(round_medians[n])
            out[n] = t
    return out
