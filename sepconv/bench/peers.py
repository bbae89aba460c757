"""The systems `sepconv bench` compares: sepconv itself and the peers a user would reach for.

A :class:`Peer` answers two questions: can it run here (:meth:`Peer.available` → a reason why not,
or ``None``), and what is one inference of this module (:meth:`Peer.prepare` → :class:`Prepared`).
Every prepared system is validated against eager PyTorch before it is timed (``sepconv.bench``
does that); all are timed by :func:`time_call`, except on a remote device, where the device times
itself (TVM's time evaluator, network excluded).
"""

from __future__ import annotations

import contextlib
import gc
import io
import logging
import os
import shutil
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sepconv.errors import SepconvError

log = logging.getLogger(__name__)

LOCAL_ONLY = "peers run only on the local machine"


class PeerUnavailable(SepconvError):
    """Raised by :meth:`Peer.prepare` when the system cannot run this model here (not a failure)."""


@dataclass
class BenchSettings:
    """What every system is measured under (recorded in the report)."""

    target: str = "host"
    device: str = "local"
    batch: int = 1
    runs: int = 50
    warmup: int = 10
    rounds: int = 5  # local timing: runs split into rounds, systems interleaved (drift cancels)
    threads: int = 1
    seed: int = 0
    tune_logs: bool | str | os.PathLike | list = True
    settle_s: float = 1.0  # idle time before each timed block (TVM's pool spins after a run)
    build_dir: Path | None = None  # where artifacts and ONNX files go (a temp dir when None)

    @property
    def is_local(self) -> bool:
        return self.device.strip().lower() in ("local", "localhost", "host", "")


@dataclass
class Timing:
    median_ms: float
    p10_ms: float
    p90_ms: float
    runs: int
    timer: str

    @classmethod
    def from_samples(cls, samples_ms: list[float], timer: str) -> Timing:
        s = sorted(samples_ms)
        return cls(
            statistics.median(s), s[int(0.1 * (len(s) - 1))], s[int(0.9 * (len(s) - 1))], len(s),
            timer,
        )  # fmt: skip


WALL_CLOCK = "wall clock per call (time.perf_counter), this process"
DEVICE_CLOCK = "TVM time_evaluator on the device (network excluded)"


def time_call(fn: Callable[[Any], Any], x: Any, warmup: int, runs: int) -> Timing:
    """The shared timer: ``warmup`` calls, then ``runs`` calls timed one by one (GC paused)."""
    return Timing.from_samples(time_samples(fn, x, warmup, runs), WALL_CLOCK)


def time_interleaved(
    fns: dict[str, Callable[[Any], Any]],
    x: Any,
    *,
    warmup: int,
    runs: int,
    rounds: int,
    settle_s: float = 1.0,
    on_step: Callable[[str, int], None] | None = None,
) -> dict[str, Timing | Exception]:
    """Time several systems against each other: ``rounds`` rounds of about runs/rounds calls
    each, the order reversed every round, each system's samples pooled. A shared machine drifts
    (other tenants, clocks) over the seconds one block takes; timed one block after another,
    that drift would show up as a difference between the systems. A system that raises is
    dropped from later rounds and its exception returned in place of a timing."""
    names = list(fns)
    samples: dict[str, list[float]] = {n: [] for n in names}
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
                samples[name] += time_samples(fns[name], x, n_warm, n_runs)
            except Exception as exc:  # noqa: BLE001 - reported per system by the caller
                failed[name] = exc
    return {n: failed.get(n) or Timing.from_samples(samples[n], WALL_CLOCK) for n in names}


def time_samples(fn: Callable[[Any], Any], x: Any, warmup: int, runs: int) -> list[float]:
    """``warmup`` untimed calls, then the ms of each of ``runs`` calls (GC paused)."""
    for _ in range(warmup):
        fn(x)
    samples = []
    gc_was_on = gc.isenabled()
    gc.disable()
    try:
        for _ in range(runs):
            t0 = time.perf_counter()
            fn(x)
            samples.append((time.perf_counter() - t0) * 1e3)
    finally:
        if gc_was_on:
            gc.enable()
    return samples


@dataclass
class Prepared:
    """One system ready to run a model: ``fn(x)`` is one inference of the torch tensor ``x``."""

    fn: Callable[[torch.Tensor], Any]
    info: dict = field(default_factory=dict)  # extra report fields (sepconv: tuned state)
    timer: Callable[[torch.Tensor, int, int], Timing] | None = None  # its own clock, if any
    close: Callable[[], None] | None = None


class Peer:
    """A system to compare. Subclass it (``name``, ``available``, ``prepare``) to add one."""

    name = "peer"
    local_only = True  # runs in this process; cannot use a remote device

    def __init__(self, settings: BenchSettings):
        self.settings = settings

    def available(self) -> str | None:
        """Why this system cannot run here, or None if it can."""
        if self.local_only and not self.settings.is_local:
            return LOCAL_ONLY
        return None

    def prepare(self, module: torch.nn.Module, example: torch.Tensor) -> Prepared:
        raise NotImplementedError

    def workdir(self) -> Path:
        root = self.settings.build_dir
        if root is None:
            root = Path(tempfile.mkdtemp(prefix="sepconv-bench-"))
            self.settings.build_dir = root
        root.mkdir(parents=True, exist_ok=True)
        return root


class TorchEager(Peer):
    name = "torch"

    def prepare(self, module, example):
        def fn(x):
            with torch.no_grad():
                return module(x)

        return Prepared(fn)


def _cxx_compiler() -> str | None:
    try:
        from torch._inductor import config

        configured = config.cpp.cxx[-1] if isinstance(config.cpp.cxx, tuple) else config.cpp.cxx
    except Exception:  # noqa: BLE001 - private config, may move
        configured = None
    for name in (configured, "g++", "c++", "clang++"):
        if name and shutil.which(name):
            return name
    return None


class TorchCompile(Peer):
    name = "torch.compile"

    def available(self):
        reason = super().available()
        if reason is None and _cxx_compiler() is None:
            reason = "torch.compile (inductor) needs a C++ compiler; none found (g++, clang++)"
        return reason

    def prepare(self, module, example):
        # Models of one class share forward's code object: without a reset, dynamo's recompile
        # limit would silently run later models eagerly.
        torch._dynamo.reset()
        compiled = torch.compile(module)
        try:
            with torch.no_grad():
                compiled(example)  # inductor compiles on the first call
        except Exception as exc:  # noqa: BLE001 - any backend failure means "cannot run here"
            raise PeerUnavailable(f"torch.compile failed: {_first_line(exc)}") from exc

        def fn(x):
            with torch.no_grad():
                return compiled(x)

        return Prepared(fn, {"backend": "inductor"}, close=torch._dynamo.reset)


class OnnxRuntime(Peer):
    name = "onnxruntime"
    opset = 17

    def available(self):
        reason = super().available()
        if reason is None:
            try:
                import onnx  # noqa: F401
                import onnxruntime  # noqa: F401
            except ImportError as exc:
                reason = f"{exc.name} is not installed (pip install 'sepconv[bench]')"
        return reason

    def _export(self, module, example, path: Path) -> str:
        errors = []
        for dynamo in (False, True):  # the TorchScript exporter is quick and quiet; dynamo next
            try:
                with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                    warnings.simplefilter("ignore")
                    torch.onnx.export(
                        module, (example,), str(path), dynamo=dynamo, opset_version=self.opset,
                        input_names=["input"],
                    )  # fmt: skip
                return "dynamo" if dynamo else "torchscript"
            except Exception as exc:  # noqa: BLE001
                errors.append(f"dynamo={dynamo}: {_first_line(exc)}")
        raise PeerUnavailable("torch.onnx.export failed: " + "; ".join(errors))

    def prepare(self, module, example):
        import onnxruntime as ort

        fd, name = tempfile.mkstemp(suffix=".onnx", dir=self.workdir())
        os.close(fd)
        path = Path(name)
        try:
            exporter = self._export(module.eval(), example, path)
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = self.settings.threads
            opts.inter_op_num_threads = 1
            opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            opts.log_severity_level = 3
            sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        finally:
            path.unlink(missing_ok=True)
        input_name = sess.get_inputs()[0].name

        def fn(x):
            return sess.run(None, {input_name: x.numpy()})

        info = {"exporter": exporter, "opset": self.opset, "provider": "CPUExecutionProvider"}
        return Prepared(fn, info)


def load_for_device(path: Path, device: str):
    """A loaded artifact on ``device``: local → CompiledModel; rpc:// / tracker:// → the tuning
    issue's RemoteModel (same call and ``time`` interface, timed on the device)."""
    if device.strip().lower() in ("local", "localhost", "host", ""):
        from sepconv.compiler.runtime import load

        return load(path)
    try:
        from sepconv.targets.devices import load_on
    except ImportError as exc:
        raise SepconvError(
            f"device {device!r}: remote devices need the tuning issue's device support "
            "(sepconv.targets.devices), which this installation lacks; use --device local"
        ) from exc
    return load_on(path, device)


class Sepconv(Peer):
    """sepconv itself: compiled for the target (with tuning records where they exist), run on the
    device. Locally it is timed by the shared clock; remotely by the device's."""

    name = "sepconv"
    local_only = False
    sepconv_ops = True
    tuned = True  # read the tuning records the settings name

    def available(self):
        from sepconv.targets import resolve_target

        spec = resolve_target(self.settings.target)
        if self.settings.is_local and not spec.is_host:
            return (
                f"code for {spec.triple} ({spec.mcpu}) does not run on this machine; pass "
                "--device rpc://HOST:PORT or tracker://HOST:PORT/KEY"
            )
        return None

    def prepare(self, module, example):
        import sepconv

        name = type(module).__name__
        # one path per peer: dlopen hands back an already-loaded library for a reused path
        out = self.workdir() / f"{self.name}-{name}-{example.shape[-1]}-{os.getpid()}-{id(module)}"
        art = sepconv.compile(
            module, target=self.settings.target, out=out, example_input=example, force=True,
            tune_logs=self.settings.tune_logs if self.tuned else False,
            sepconv_ops=self.sepconv_ops,
        )  # fmt: skip
        b = art.manifest.build
        tuned, total = int(b.get("tasks_tuned", 0)), int(b.get("tasks_total", 0))
        info = {
            "tuned": f"tuned {tuned}/{total} tasks" if tuned else "untuned",
            "tasks_tuned": tuned,
            "tasks_total": total,
            "target": art.manifest.target.get("key"),
            "artifact": str(art.path),
        }
        model = load_for_device(art.path, self.settings.device)

        def fn(x):
            return model(x.numpy())

        timer = None
        if not self.settings.is_local:

            def timer(x, warmup, runs):
                t = model.time(x.numpy(), warmup=warmup, runs=runs)
                return Timing(t["median_ms"], t["p10_ms"], t["p90_ms"], t["runs"], DEVICE_CLOCK)

        return Prepared(fn, info, timer)


class SepconvWithoutOps(Sepconv):
    """sepconv with ``--no-sepconv-ops``: TVM's NCHW conv2d under our NCHW rules — what our
    depthwise / fused operators are measured against."""

    name = "sepconv-no-ops"
    sepconv_ops = False


class SepconvUntuned(Sepconv):
    """sepconv without tuning records — our schedule rules alone: what tuning buys."""

    name = "sepconv-untuned"
    tuned = False


PEERS: dict[str, type[Peer]] = {
    p.name: p for p in (TorchEager, TorchCompile, OnnxRuntime, SepconvWithoutOps, SepconvUntuned)
}
"""Peers by the names ``--peers`` accepts."""


def parse_peers(spec: str | list | tuple) -> list[str]:
    """``"torch,onnxruntime"`` → ``["torch", "onnxruntime"]``; unknown names raise, listing the
    valid ones. ``""`` / ``"none"`` means no peers (sepconv alone)."""
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    names = [n.strip() for n in names if isinstance(n, str) and n.strip()]
    if names == ["none"]:
        return []
    unknown = [n for n in names if n not in PEERS]
    if unknown:
        raise SepconvError(
            f"unknown peer{'s' * (len(unknown) > 1)} {', '.join(map(repr, unknown))}; valid "
            f"peers: {', '.join(PEERS)} (comma-separated; sepconv itself is always measured)"
        )
    return list(dict.fromkeys(names))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {line[:300]}" if line else type(exc).__name__
