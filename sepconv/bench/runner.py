"""The bench loop: per model, prepare and validate every system, then time them interleaved."""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import gc
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch

from sepconv.errors import SepconvError
from sepconv.timing import time_interleaved

from .peers import (
    PEERS,
    BenchSettings,
    Peer,
    PeerUnavailable,
    Prepared,
    Sepconv,
    SepconvFp32,
    parse_peers,
)
from .report import BenchReport, ModelResult, SystemResult

log = logging.getLogger(__name__)

DEFAULT_PEERS = ("torch", "torch.compile", "onnxruntime")
# --precision int8: what int8 buys over our fp32 and over ONNX Runtime's, and the other int8s
DEFAULT_INT8_PEERS = ("sepconv-fp32", "onnxruntime", "onnxruntime-int8", "openvino-int8")
PRECISIONS = ("fp32", "int8")


def default_peers(precision: str = "fp32") -> tuple[str, ...]:
    """The peers a bench of sepconv in ``precision`` compares with when none are named."""
    if precision not in PRECISIONS:
        raise SepconvError(
            f"sepconv bench measures precision {' or '.join(PRECISIONS)}, not {precision!r} "
            "(fp16 is for CUDA targets: sepconv compile --precision fp16)"
        )
    return DEFAULT_INT8_PEERS if precision == "int8" else DEFAULT_PEERS


def _arrays(out) -> list[np.ndarray]:
    if isinstance(out, list | tuple):
        return [a for o in out for a in _arrays(o)]
    if isinstance(out, torch.Tensor):
        return [out.detach().cpu().numpy()]
    return [np.asarray(out)]


def _mismatch(got: list[np.ndarray], refs: list[np.ndarray]) -> str | None:
    if len(got) != len(refs):
        return f"{len(got)} outputs, eager has {len(refs)}"
    if any(g.shape != r.shape for g, r in zip(got, refs)):
        shapes = [tuple(g.shape) for g in got], [tuple(r.shape) for r in refs]
        return f"output shapes {shapes[0]} differ from eager {shapes[1]}"
    return None


def _validate(outputs, refs: list[np.ndarray]) -> tuple[dict, str | None]:
    """fp32: the ``sepconv validate`` tolerance on every output."""
    from sepconv.compiler.validation import ABS_TOL, REL_TOL, compare

    got = _arrays(outputs)
    rule = f"max_abs_error <= {REL_TOL:g} * max|eager| + {ABS_TOL:g}"
    if len(got) != len(refs):
        return {"passed": False, "rule": rule}, _mismatch(got, refs)
    cmps = [compare(f"output{i}", g, r) for i, (g, r) in enumerate(zip(got, refs))]
    worst = max(cmps, key=lambda c: c.max_abs_error - c.tolerance)
    v = {
        "passed": all(c.passed for c in cmps),
        "max_abs_error": worst.max_abs_error,
        "max_rel_error": worst.max_rel_error,
        "tolerance": worst.tolerance,
        "rule": rule,
    }
    if v["passed"]:
        return v, None
    return v, _mismatch(got, refs) or (
        f"differs from eager PyTorch: max abs error {worst.max_abs_error:.3g} > tolerance "
        f"{worst.tolerance:.3g}"
    )


def _validate_int8(outputs, refs: list[np.ndarray], min_sqnr_db: float) -> tuple[dict, str | None]:
    """int8: the worst output's SQNR against fp32 eager ≥ ``min_sqnr_db`` (cosine beside it)."""
    from sepconv.compiler.int8.accuracy import cosine, sqnr_db

    got = _arrays(outputs)
    rule = f"SQNR vs fp32 eager >= {min_sqnr_db:g} dB"
    problem = _mismatch(got, refs)
    if problem is not None:
        return {"passed": False, "rule": rule, "min_sqnr_db": min_sqnr_db}, problem
    finite = all(np.all(np.isfinite(g)) for g in got)
    sqnr = min(sqnr_db(g, r) for g, r in zip(got, refs)) if finite else float("-inf")
    v = {
        "passed": bool(sqnr >= min_sqnr_db),
        "sqnr_db": sqnr,
        "cosine": min(cosine(g, r) for g, r in zip(got, refs)) if finite else None,
        "max_abs_error": max(float(np.max(np.abs(g - r), initial=0)) for g, r in zip(got, refs)),
        "min_sqnr_db": min_sqnr_db,
        "rule": rule,
    }
    if v["passed"]:
        return v, None
    if not finite:
        return v, "non-finite outputs (NaN or inf)"
    return v, f"SQNR {sqnr:.1f} dB vs fp32 eager PyTorch < {min_sqnr_db:g} dB"


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0][:400] if text else "") or type(exc).__name__


def _prepare_and_validate(
    system: Peer, reason: str | None, module, x, refs, settings: BenchSettings
) -> tuple[SystemResult, Prepared | None]:
    precision = {"precision": system.precision, "fp32_twin": system.fp32_twin}
    if reason is not None:
        return SystemResult("unavailable", reason, **precision), None
    try:
        prepared = system.prepare(module, x)
    except PeerUnavailable as exc:
        return SystemResult("unavailable", str(exc), **precision), None
    except Exception as exc:  # noqa: BLE001 - a system that cannot build the model failed it
        log.debug("%s failed to prepare", system.name, exc_info=True)
        return SystemResult("FAIL", f"prepare failed: {_one_line(exc)}", **precision), None
    result = SystemResult("ok", info=dict(prepared.info), **precision)
    try:
        out = prepared.fn(x)
        if system.precision == "int8":
            validation, problem = _validate_int8(out, refs, settings.min_sqnr_db)
        else:
            validation, problem = _validate(out, refs)
    except Exception as exc:  # noqa: BLE001
        validation, problem = {"passed": False}, f"run failed: {_one_line(exc)}"
    own = prepared.validation
    if own is not None:
        validation["own"] = own
        if problem is None and not own.get("passed", True):
            validation["passed"] = False
            problem = own.get("reason") or "failed its own validation"
    result.validation = validation
    if problem is not None:
        result.status, result.reason = "FAIL", problem
        _close(prepared)
        return result, None
    return result, prepared


def _close(prepared: Prepared | None) -> None:
    if prepared is not None and prepared.close is not None:
        try:
            prepared.close()
        except Exception:  # noqa: BLE001
            log.debug("closing a prepared system failed", exc_info=True)


def _systems(peers, settings: BenchSettings) -> list[Peer]:
    """sepconv first, then the peers: names, Peer subclasses or Peer instances."""
    items = parse_peers(peers) if isinstance(peers, str) else list(peers)
    names = parse_peers([p for p in items if isinstance(p, str)])
    out: list[Peer] = [Sepconv(settings)]
    for p in items:
        if isinstance(p, str):
            if p.strip() in names:
                out.append(PEERS[p.strip()](settings))
        elif isinstance(p, type) and issubclass(p, Peer):
            out.append(p(settings))
        elif isinstance(p, Peer):
            out.append(p)
        else:
            raise SepconvError(f"a peer is a name ({', '.join(PEERS)}) or a Peer, got {p!r}")
    unique: dict[str, Peer] = {}
    for s in out:
        unique.setdefault(s.name, s)
    if settings.precision != "int8" and SepconvFp32.name in unique:
        raise SepconvError(
            f"the {SepconvFp32.name} peer is sepconv's fp32 build beside --precision int8; "
            "without it sepconv itself is fp32"
        )
    return list(unique.values())


def restores_affinity(fn):
    """Run ``fn`` and put the calling thread's CPU affinity back afterwards.

    Starting TVM's thread pool pins the thread that starts it to the first ``TVM_NUM_THREADS``
    cores (TVM's master-thread affinity), and every thread it starts later inherits that: after
    ``profile(threads=1)`` the caller stayed on one core, and so did torch's and a peer's threads
    created after it. Within the call the pin holds, so every system timed there runs on the same
    cores."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            before = os.sched_getaffinity(0)
        except (AttributeError, OSError):  # no affinity on this OS: nothing to put back
            return fn(*args, **kwargs)
        try:
            return fn(*args, **kwargs)
        finally:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(0, before)

    return wrapper


@restores_affinity
def run_bench(
    models: Sequence[str],
    peers: str | Sequence | None = None,
    *,
    target: str = "host",
    mcpu: str | None = None,
    device: str = "local",
    batch: int = 1,
    runs: int = 50,
    warmup: int = 10,
    rounds: int = 5,
    threads: int | None = None,
    seed: int = 0,
    tune_logs: bool | str | os.PathLike | list = True,
    settle_s: float = 1.0,
    build_dir: str | os.PathLike | None = None,
    progress: bool = True,
    input_shape: str | tuple[int, ...] | list | None = None,
    precision: str = "fp32",
    calibration=None,
    observer: str | None = None,
    min_sqnr_db: float | None = None,
) -> BenchReport:
    """Validate, then time, sepconv and ``peers`` on each zoo model (names with knobs) or model
    file (``.pt2``: the peers run ``ep.module()``; ``.onnx``: the reference and the onnxruntime
    peer are ONNX Runtime on the file, the torch peers cannot run it). ``input_shape`` fixes a
    file's dynamic dimensions. ``peers`` None: :func:`default_peers` of the precision.
    ``mcpu`` is the LLVM CPU sepconv compiles for (``haswell``: AVX2 code on an AVX-512 host,
    with the AVX2 tuning log); the peers run as they would on this machine.

    ``precision="int8"``: sepconv is quantized (``sepconv.compile(precision="int8")``) on
    ``calibration`` (DATA as ``sepconv.compile`` takes it; None: seeded random inputs) with
    ``observer``; every int8 system (sepconv, ``onnxruntime-int8``, ``openvino-int8``) is
    calibrated on the same samples and must reach ``min_sqnr_db`` (default
    :data:`~sepconv.compiler.int8.accuracy.MIN_SQNR_DB`) against fp32 eager before it is timed;
    fp32 systems keep the fp32 tolerance.

    ``threads`` pins torch, ONNX Runtime and TVM (``TVM_NUM_THREADS``, which TVM reads once, when
    its thread pool starts: set it before any TVM code runs, as the CLI does); default: physical
    cores. ``build_dir`` keeps the compiled artifacts (default: a temporary folder).
    """
    from tqdm.auto import tqdm

    from sepconv.models import parse_name
    from sepconv.targets import physical_cores, resolve_target

    from .report import machine_info, versions

    if isinstance(models, str):
        models = [models]
    if not models:
        raise SepconvError("name at least one model to benchmark (see `sepconv models`)")
    peers = default_peers(precision) if peers is None else peers
    observer, min_sqnr_db = _check_int8(precision, calibration, observer, min_sqnr_db)
    if runs < 1 or warmup < 0 or batch < 1 or rounds < 1:
        raise SepconvError(
            f"need runs ≥ 1, warmup ≥ 0, batch ≥ 1, rounds ≥ 1 (got {runs}, {warmup}, {batch}, "
            f"{rounds})"
        )
    from sepconv.compiler.model_files import as_model_file

    # a typo or an unreadable file fails now, not after an hour of the models before it
    models = [as_model_file(m, input_shape) or m for m in models]
    for name in models:
        if isinstance(name, str):
            parse_name(name)
    threads = threads or physical_cores()
    if threads < 1:
        raise SepconvError(f"threads must be ≥ 1, got {threads}")
    os.environ["TVM_NUM_THREADS"] = str(threads)  # read when TVM's pool starts: before any run
    tspec = resolve_target(target, mcpu=mcpu)
    if device.strip().lower() not in ("local", "localhost", "host", ""):
        from sepconv.targets.devices import check_device, parse_device

        device = str(parse_device(device))
        check_device(device)  # a device that does not answer fails now, before any compile
    tmp = None
    if build_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="sepconv-bench-")
        build_dir = tmp.name
    settings = BenchSettings(
        target=target, mcpu=mcpu, device=device, batch=batch, runs=runs, warmup=warmup,
        rounds=rounds,
        threads=threads, seed=seed, tune_logs=tune_logs, settle_s=settle_s,
        build_dir=Path(build_dir), precision=precision, calibration=calibration,
        observer=observer, min_sqnr_db=min_sqnr_db,
    )  # fmt: skip
    systems = _systems(peers, settings)
    reasons = {}
    for s in systems:
        try:
            reasons[s.name] = s.available()
        except Exception as exc:  # noqa: BLE001
            reasons[s.name] = f"availability check failed: {_one_line(exc)}"
    timing_order = [s for s in systems if s.name != Sepconv.name] + systems[:1]

    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    results: list[ModelResult] = []
    bar = tqdm(
        total=len(models) * len(systems) * 2, desc="bench", unit="step", disable=not progress
    )
    try:
        for name in models:
            results.append(_bench_model(name, systems, reasons, timing_order, settings, bar))
    finally:
        bar.close()
        torch.set_num_threads(old_threads)
        if tmp is not None:
            tmp.cleanup()
            for m in results:  # the artifacts went with the temporary folder
                for r in m.systems.values():
                    r.info.pop("artifact", None)
    tvm_threads = _tvm_threads()
    if tvm_threads is not None and tvm_threads != threads:
        log.warning(
            "TVM ran %d threads, not %d: its thread pool had started before run_bench set "
            "TVM_NUM_THREADS (set it before TVM runs anything)", tvm_threads, threads,
        )  # fmt: skip
    own = ("build_dir", "tune_logs", "calibration", "_calibrations")
    own += ("observer",) * (precision != "int8")  # sepconv's quantizer: int8 only
    settings_json = {
        **{f.name: getattr(settings, f.name) for f in fields(settings) if f.name not in own},
        "build_dir": None if tmp is not None else str(build_dir),
        "calibration": _json_calibration(calibration),
        "tune_logs": _json_logs(tune_logs),
        "target_spec": {k: tspec.describe()[k] for k in ("triple", "key", "mcpu", "num_cores")},
        "tvm_threads": tvm_threads,
        "systems": [s.name for s in systems],
        "timing_order": [s.name for s in timing_order],
        "validation_seed": seed,
    }
    return BenchReport(
        settings_json,
        machine_info(),
        versions(),
        results,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )


def _check_int8(precision, calibration, observer, min_sqnr_db) -> tuple[str, float]:
    """The int8 options, checked before anything compiles → (observer, SQNR floor)."""
    from sepconv.compiler.int8.accuracy import MIN_SQNR_DB
    from sepconv.compiler.int8.ptq import DEFAULT_OBSERVER, OBSERVERS

    default_peers(precision)  # an unknown precision fails here, naming the valid ones
    if precision != "int8":
        for flag, value in (("calibration", calibration), ("observer", observer)):
            if value is not None:
                raise SepconvError(f"{flag} (--{flag}) is for precision='int8' (--precision int8)")
    if observer is not None and observer not in OBSERVERS:
        raise SepconvError(f"unknown observer {observer!r}; choose one of {', '.join(OBSERVERS)}")
    if isinstance(calibration, str | os.PathLike) and not Path(calibration).exists():
        raise SepconvError(f"{calibration}: no such calibration file or folder")
    return observer or DEFAULT_OBSERVER, MIN_SQNR_DB if min_sqnr_db is None else min_sqnr_db


def _json_calibration(calibration) -> str | None:
    if calibration is None or isinstance(calibration, str | os.PathLike):
        return None if calibration is None else str(calibration)
    return f"in-memory {type(calibration).__name__}"


def _json_logs(tune_logs) -> bool | str | list:
    if isinstance(tune_logs, list | tuple):
        return [x if isinstance(x, bool) else str(x) for x in tune_logs]
    return tune_logs if isinstance(tune_logs, bool) else str(tune_logs)


def _tvm_threads() -> int | None:
    try:
        import tvm

        return int(tvm.get_global_func("runtime.NumThreads")())
    except Exception:  # noqa: BLE001
        return None


def _bench_model(name, systems, reasons, timing_order, settings, bar) -> ModelResult:
    from sepconv.compiler.model_files import ModelFile
    from sepconv.models import count_macs, count_params, get_model

    is_file = isinstance(name, ModelFile)
    result = ModelResult(name.name if is_file else name)
    try:
        spec = (
            _FileSpec(name)
            if is_file
            else get_model(name, batch=settings.batch, seed=settings.seed)
        )
    except SepconvError as exc:
        result.error = str(exc)
        bar.update(2 * len(systems))
        return result
    one = (1, *spec.input_shape[1:])
    result.name, result.family = spec.name, spec.family
    result.input_shape = list(spec.input_shape)
    if not is_file:  # a file's graph has no nn.Conv2d modules to count
        result.params = count_params(spec.module)
        result.macs_per_image = count_macs(spec.module, one)
        result.macs = result.macs_per_image * spec.input_shape[0]
    x = spec.example_input(settings.seed)
    if any(s.precision == "int8" for s in systems):
        try:  # the samples every int8 system is calibrated on: a bad DATA fails the model once
            result.calibration = settings.calibration_for(x).source
        except SepconvError as exc:
            result.error = str(exc)
            bar.update(2 * len(systems))
            return result
    with torch.no_grad():
        refs = _arrays(spec.module(x))
    prepared: dict[str, Prepared] = {}
    for system in systems:
        bar.set_postfix_str(f"{spec.name} · {system.name}: prepare + validate", refresh=True)
        r, p = _prepare_and_validate(system, reasons[system.name], spec.module, x, refs, settings)
        result.systems[system.name] = r
        if p is not None:
            prepared[system.name] = p
        bar.update(1)
    try:
        _time_interleaved(result, prepared, timing_order, x, settings, bar, spec.name)
    finally:
        for p in prepared.values():
            _close(p)
        prepared.clear()
        gc.collect()
    return result


class _FileSpec:
    """A model file in the shape of a zoo ModelSpec: its reference is what the peers run."""

    def __init__(self, mf):
        self.name, self.family = mf.name, f"{mf.kind} file"
        self.module = mf.reference()
        self.input_shape = tuple(mf.inputs[0].shape)
        self._mf = mf

    def example_input(self, seed: int = 0) -> torch.Tensor:
        return self._mf.example_inputs(seed)[0]


def _time_interleaved(result, prepared, timing_order, x, settings, bar, model) -> None:
    """Local systems: interleaved rounds (:func:`time_interleaved`). Systems with their own
    clock (a remote device) are timed there, one block each."""
    ok = [s.name for s in timing_order if s.name in prepared]
    local = {n: prepared[n].fn for n in ok if prepared[n].timer is None}
    rounds = max(1, min(settings.rounds, settings.runs))

    def step(name: str, i: int) -> None:
        bar.set_postfix_str(f"{model} · {name}: timing ({i + 1}/{rounds})", refresh=True)

    timings: dict = {}
    for n in ok:
        if prepared[n].timer is not None:
            step(n, 0)
            time.sleep(settings.settle_s)
            try:
                timings[n] = prepared[n].timer(x, settings.warmup, settings.runs)
            except Exception as exc:  # noqa: BLE001
                timings[n] = exc
    if local:
        timings.update(
            time_interleaved(
                local,
                x,
                warmup=settings.warmup,
                runs=settings.runs,
                rounds=rounds,
                settle_s=settings.settle_s,
                on_step=step,
            )
        )
    for system in timing_order:
        r, t = result.systems.get(system.name), timings.get(system.name)
        if isinstance(t, Exception):
            r.status, r.reason = "FAIL", f"timing run failed: {_one_line(t)}"
        elif t is not None:
            r.latency_ms = {
                "median": t.median_ms, "p10": t.p10_ms, "p90": t.p90_ms, "runs": t.runs,
                "timer": t.timer, "rounds": rounds if system.name in local else 1,
                "round_medians": list(t.round_medians_ms),
            }  # fmt: skip
        bar.update(1)
