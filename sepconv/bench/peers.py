"""The systems `sepconv bench` compares: sepconv itself and the peers a user would reach for.

A :class:`Peer` answers two questions: can it run here (:meth:`Peer.available` → a reason why not,
or ``None``), and what is one inference of this module (:meth:`Peer.prepare` → :class:`Prepared`).
Every prepared system is validated against eager PyTorch before it is timed (``sepconv.bench``
does that); all are timed by :func:`sepconv.timing.time_interleaved` (the one timer), except on a
remote device, where the device times itself (TVM's time evaluator, network excluded).

A peer has a ``precision``: fp32 systems are held to the ``sepconv validate`` tolerance, int8
ones (``--precision int8``'s sepconv, ``onnxruntime-int8``, ``openvino-int8``) to an SQNR floor
against fp32 eager, and every int8 system of a model is calibrated on the same samples
(:meth:`BenchSettings.calibration_for`).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sepconv.errors import SepconvError
from sepconv.timing import Timing

log = logging.getLogger(__name__)

LOCAL_ONLY = "peers run only on the local machine"


class PeerUnavailable(SepconvError):
    """Raised by :meth:`Peer.prepare` when the system cannot run this model here (not a failure)."""


@dataclass
class BenchSettings:
    """What every system is measured under (recorded in the report)."""

    target: str = "host"
    mcpu: str | None = None  # sepconv's LLVM CPU (haswell: AVX2 code on an AVX-512 host)
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
    precision: str = "fp32"  # sepconv's own: fp32 | int8
    calibration: Any = None  # int8: DATA for every int8 system (None: seeded random inputs)
    observer: str = "histogram"  # int8: sepconv's activation observer (histogram | minmax)
    min_sqnr_db: float | None = None  # int8 systems' SQNR floor vs fp32 (None: MIN_SQNR_DB)
    _calibrations: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def is_local(self) -> bool:
        return self.device.strip().lower() in ("local", "localhost", "host", "")

    def calibration_for(self, example: torch.Tensor):
        """The :class:`~sepconv.compiler.int8.calibration.Calibration` every int8 system of a
        model with this input is calibrated on: ``calibration`` (or seeded random inputs) read
        once per input shape, so all quantizers see the very same samples."""
        key = tuple(example.shape)
        if key not in self._calibrations:
            from sepconv.compiler.int8.calibration import load_calibration

            self._calibrations[key] = load_calibration(
                self.calibration, [key], [str(example.numpy().dtype)], seed=self.seed
            )
        return self._calibrations[key]


@dataclass
class Prepared:
    """One system ready to run a model: ``fn(x)`` is one inference of the torch tensor ``x``."""

    fn: Callable[[torch.Tensor], Any]
    info: dict = field(default_factory=dict)  # extra report fields (sepconv: tuned state)
    timer: Callable[[torch.Tensor, int, int], Timing] | None = None  # its own clock, if any
    close: Callable[[], None] | None = None
    # the system's own check beside the bench's (sepconv int8: sepconv.validate's figures vs
    # the simulated quantization); {"passed": False, "reason": ...} fails it
    validation: dict | None = None


def missing_packages(*modules: str) -> str | None:
    """Why a peer's Python packages cannot run here (the first that does not import), or None."""
    import importlib

    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            return f"{exc.name or name} is not installed (pip install 'sepconv[bench]')"
    return None


class Peer:
    """A system to compare. Subclass it (``name``, ``available``, ``prepare``) to add one."""

    name = "peer"
    local_only = True  # runs in this process; cannot use a remote device
    precision = "fp32"  # "int8": validated by SQNR against fp32 eager, not the fp32 tolerance
    fp32_twin: str | None = None  # int8: the fp32 system it quantizes (its int8 gain's baseline)

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


def _onnx_source(module):
    """The ONNX ModelFile behind a bench reference module, or None (a PyTorch model)."""
    source = getattr(module, "sepconv_source", None)
    return source if source is not None and source.kind == "onnx" else None


def _require_torch_model(module, peer: str) -> None:
    if _onnx_source(module) is not None:
        raise PeerUnavailable(f"the model is an ONNX file: there is no PyTorch model for {peer}")


class TorchEager(Peer):
    name = "torch"

    def prepare(self, module, example):
        _require_torch_model(module, self.name)

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
        _require_torch_model(module, self.name)
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


def ort_session(path, threads: int, **options):
    """An ONNX Runtime CPU session on ``threads`` intra-op threads, one inter-op, sequential;
    ``options`` set more ``SessionOptions`` attributes (``enable_profiling=True``)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    for key, value in options.items():
        setattr(opts, key, value)
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def ort_reduce_range(mcpu: str | None = None) -> bool:
    """Whether ONNX Runtime's int8 should use 7-bit weights here: without VNNI, x86's u8×s8 dot
    (``vpmaddubsw``) sums pairs into 16 bits, which full-range operands can saturate (sepconv
    quantizes its weights to 7 bits there too). ``mcpu``: sepconv's code CPU — AVX2 code on a
    VNNI host is measured against ONNX Runtime quantized as for an AVX2 host."""
    from sepconv.compiler.int8.ptq import full_range_dot
    from sepconv.targets import resolve_target

    return not full_range_dot(resolve_target("host", mcpu=mcpu).isa)


def ort_quantize_static(fp32_path, int8_path, samples, reduce_range: bool, input_name="input"):
    """ONNX Runtime's static quantization of ``fp32_path`` into ``int8_path``, calibrated on
    ``samples`` (tuples of arrays, the first fed to ``input_name``): QDQ format, per-channel s8
    weights, u8 activations, MinMax calibration (its default)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(samples)

        def get_next(self):
            s = next(self.it, None)
            return None if s is None else {input_name: s[0]}

    with _quiet("root"):  # its advice to run ONNX Runtime's pre-processing first
        quantize_static(
            str(fp32_path), str(int8_path), Reader(), quant_format=QuantFormat.QDQ,
            per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            reduce_range=reduce_range,
        )  # fmt: skip


@contextlib.contextmanager
def _quiet(*loggers: str):
    """Raise these loggers to ERROR for the duration (a quantizer's progress and advice)."""
    saved = [(lg, lg.level) for lg in map(logging.getLogger, loggers)]
    for lg, _ in saved:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in saved:
            lg.setLevel(level)


class OnnxRuntime(Peer):
    name = "onnxruntime"
    opset = 17

    def available(self):
        return super().available() or missing_packages("onnx", "onnxruntime")

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

    def _to_run(self, path: Path, example) -> tuple[Path, dict]:
        """The ONNX file to run from the fp32 one at ``path``, and what to report about it."""
        return path, {}

    def prepare(self, module, example):
        fd, name = tempfile.mkstemp(suffix=".onnx", dir=self.workdir())
        os.close(fd)
        path = run_path = Path(name)
        try:
            source = _onnx_source(module)
            if source is not None:  # an ONNX file: run it as it is
                path.write_bytes(source.onnx_model.SerializeToString())
                exporter = "file"
            else:
                exporter = self._export(module.eval(), example, path)
            run_path, extra = self._to_run(path, example)
            sess = ort_session(run_path, self.settings.threads)
        finally:
            path.unlink(missing_ok=True)
            run_path.unlink(missing_ok=True)
        input_name = sess.get_inputs()[0].name

        def fn(x):
            return sess.run(None, {input_name: x.numpy()})

        info = {"exporter": exporter, "opset": self.opset, "provider": "CPUExecutionProvider"}
        return Prepared(fn, {**info, **extra})


class OnnxRuntimeInt8(OnnxRuntime):
    """ONNX Runtime's own int8: :func:`ort_quantize_static` of the same ONNX file the
    ``onnxruntime`` peer runs, calibrated on the samples sepconv's int8 uses."""

    name = "onnxruntime-int8"
    precision = "int8"
    fp32_twin = "onnxruntime"

    def _to_run(self, path, example):
        import onnx

        graph = onnx.load(str(path), load_external_data=False).graph
        weights = {t.name for t in graph.initializer}
        input_name = next(i.name for i in graph.input if i.name not in weights)
        cal = self.settings.calibration_for(example)
        reduce_range = ort_reduce_range(self.settings.mcpu)
        int8_path = path.with_suffix(".int8.onnx")
        try:
            ort_quantize_static(path, int8_path, cal.samples, reduce_range, input_name)
        except Exception as exc:  # noqa: BLE001 - the quantizer cannot take this graph
            int8_path.unlink(missing_ok=True)
            raise PeerUnavailable(f"quantize_static failed: {_first_line(exc)}") from exc
        info = {
            "quantization": "quantize_static QDQ, per-channel s8 weights, u8 activations, MinMax",
            "reduce_range": reduce_range,
            "calibration_samples": len(cal.samples),
        }
        return int8_path, info


def openvino_config(threads: int) -> dict:
    """The CPU plugin settings every OpenVINO measurement here uses (bench and profile)."""
    return {
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_NUM_THREADS": int(threads),
        "INFERENCE_PRECISION_HINT": "f32",
    }


class OpenVino(Peer):
    """OpenVINO's CPU plugin on the module converted directly (``openvino.convert_model``):
    latency hint, threads pinned to the bench's, fp32 inference precision (no bf16 downcast)."""

    name = "openvino"

    def available(self):
        return super().available() or missing_packages("openvino")

    def _convert(self, module, example):
        import openvino as ov

        source = _onnx_source(module)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if source is None:
                    return ov.convert_model(module.eval(), example_input=example)
                # an ONNX file: OpenVINO reads it as it is
                fd, name = tempfile.mkstemp(suffix=".onnx", dir=self.workdir())
                with os.fdopen(fd, "wb") as f:
                    f.write(source.onnx_model.SerializeToString())
                try:
                    return ov.convert_model(name)
                finally:
                    os.unlink(name)
        except Exception as exc:  # noqa: BLE001 - a conversion failure means "cannot run here"
            raise PeerUnavailable(f"openvino.convert_model failed: {_first_line(exc)}") from exc

    def _to_run(self, ov_model, example) -> tuple[Any, dict]:
        """The model to compile from the converted fp32 one, and what to report about it."""
        return ov_model, {}

    def prepare(self, module, example):
        import openvino as ov

        ov_model, extra = self._to_run(self._convert(module, example), example)
        config = openvino_config(self.settings.threads)
        compiled = ov.Core().compile_model(ov_model, "CPU", config)
        request = compiled.create_infer_request()
        n_out = len(compiled.outputs)

        def fn(x):
            request.infer({0: x.numpy()})
            return [request.get_output_tensor(i).data.copy() for i in range(n_out)]

        return Prepared(fn, {"version": ov.__version__, "device": "CPU", **config, **extra})


class OpenVinoInt8(OpenVino):
    """OpenVINO int8 through NNCF: ``nncf.quantize`` (its defaults: the CPU performance preset,
    fast bias correction) of the converted model, with an ``nncf.Dataset`` of the samples
    sepconv's int8 uses; compiled as the ``openvino`` peer is."""

    name = "openvino-int8"
    precision = "int8"
    fp32_twin = "openvino"

    def available(self):
        return super().available() or missing_packages("nncf")

    def _to_run(self, ov_model, example):
        import nncf

        cal = self.settings.calibration_for(example)
        data = nncf.Dataset([s[0] for s in cal.samples])
        try:  # NNCF draws progress bars on stdout and logs there: keep the CLI's output clean
            with _quiet("nncf"), contextlib.redirect_stdout(io.StringIO()):
                quantized = nncf.quantize(ov_model, data, subset_size=len(cal.samples))
        except Exception as exc:  # noqa: BLE001 - e.g. an NNCF that does not fit this OpenVINO
            raise PeerUnavailable(f"nncf.quantize failed: {_first_line(exc)}") from exc
        info = {"nncf": nncf.__version__, "calibration_samples": len(cal.samples)}
        return quantized, info


EXECUTORCH_INSTALL = (
    "pip install executorch (its wheel must match the installed torch; it links libtorch)"
)


class ExecuTorchXnnpack(Peer):
    """ExecuTorch with the XNNPACK delegate: ``torch.export`` → ``to_edge_transform_and_lower``
    with ``XnnpackPartitioner`` → ``.pte`` program run by ExecuTorch's runtime (its threadpool
    set to the bench's threads)."""

    name = "executorch"

    def available(self):
        reason = super().available()
        if reason is not None:
            return reason
        try:
            from executorch.backends.xnnpack.partition.xnnpack_partitioner import (  # noqa: F401
                XnnpackPartitioner,
            )
            from executorch.runtime import Runtime  # noqa: F401
        except ImportError as exc:
            return f"executorch is not installed or does not import ({exc}); {EXECUTORCH_INSTALL}"
        except Exception as exc:  # noqa: BLE001 - an ABI mismatch with torch shows up here
            return f"executorch does not load with torch {torch.__version__}: {_first_line(exc)}"
        return None

    def prepare(self, module, example):
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower
        from executorch.runtime import Runtime

        _require_torch_model(module, self.name)
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                ep = torch.export.export(module.eval(), (example,))
                program = to_edge_transform_and_lower(
                    ep, partitioner=[XnnpackPartitioner()]
                ).to_executorch()
        except Exception as exc:  # noqa: BLE001 - lowering failure: cannot run this model
            raise PeerUnavailable(f"ExecuTorch lowering failed: {_first_line(exc)}") from exc
        try:
            from executorch.extension.pybindings import portable_lib

            portable_lib._unsafe_reset_threadpool(self.settings.threads)
            threads = int(portable_lib._threadpool_get_thread_count())
        except Exception:  # noqa: BLE001 - private API: keep its default pool
            log.debug("could not set ExecuTorch's thread count", exc_info=True)
            threads = None
        buffer = program.buffer  # the loaded program reads this memory: keep it alive
        loaded = Runtime.get().load_program(buffer)
        method = loaded.load_method("forward")

        def fn(x, _keep=(buffer, loaded)):
            return method.execute([x])

        info = {"delegate": "XnnpackPartitioner", "threads": threads}
        try:
            from importlib import metadata

            info["version"] = metadata.version("executorch")
        except Exception:  # noqa: BLE001
            pass
        return Prepared(fn, info)


def load_for_device(path: Path, device: str):
    """A loaded artifact on ``device`` (local, rpc://, tracker://): one CompiledModel, with the
    same call and timing interface wherever it runs (timed on the device when remote)."""
    from sepconv.compiler.runtime import load

    return load(path, device)


class Sepconv(Peer):
    """sepconv itself: compiled for the target (with tuning records where they exist) in the
    bench's precision, run on the device. Locally it is timed by the shared clock; remotely by
    the device's. int8: quantized on the bench's calibration samples and checked by
    ``sepconv validate``'s int8 rule (vs the simulated quantization) besides the bench's."""

    name = "sepconv"
    local_only = False
    sepconv_ops = True
    tuned = True  # read the tuning records the settings name

    @property
    def precision(self) -> str:
        return self.settings.precision

    @property
    def fp32_twin(self) -> str | None:  # the variants (untuned, no-ops) have no fp32 twin here
        return SepconvFp32.name if self.precision == "int8" and self.name == "sepconv" else None

    def available(self):
        from sepconv.targets import resolve_target

        spec = resolve_target(self.settings.target, mcpu=self.settings.mcpu)
        if self.settings.is_local and not spec.is_host:
            return (
                f"code for {spec.triple} ({spec.mcpu}) does not run on this machine; pass "
                "--device rpc://HOST:PORT or tracker://HOST:PORT/KEY"
            )
        return None

    def _int8_options(self, source, example) -> dict:
        if source is not None and source.kind == "onnx":
            raise PeerUnavailable(
                "sepconv's int8 quantizes PyTorch models (a zoo name or a .pt2 file), not ONNX "
                "files"
            )
        data = self.settings.calibration
        if not (data is None or isinstance(data, str | os.PathLike)):
            # in-memory data may be a one-shot iterator: the samples the other peers got
            data = self.settings.calibration_for(example).samples
        return {
            "precision": "int8", "calibration": data, "observer": self.settings.observer,
            "seed": self.settings.seed,
            "validate": self.settings.is_local,  # runs the artifact here (cheap: 3 inputs)
        }  # fmt: skip

    def prepare(self, module, example):
        import sepconv

        source = getattr(module, "sepconv_source", None)  # a model file: compile the file's graph
        name = type(module).__name__ if source is None else source.name
        int8 = self._int8_options(source, example) if self.precision == "int8" else {}
        # one path per peer: dlopen hands back an already-loaded library for a reused path
        out = self.workdir() / f"{self.name}-{name}-{example.shape[-1]}-{os.getpid()}-{id(module)}"
        art = sepconv.compile(
            module if source is None else source, target=self.settings.target,
            mcpu=self.settings.mcpu, out=out, example_input=example, force=True,
            tune_logs=self.settings.tune_logs if self.tuned else False,
            sepconv_ops=self.sepconv_ops, **int8,
        )  # fmt: skip
        b = art.manifest.build
        tuned, total = int(b.get("tasks_tuned", 0)), int(b.get("tasks_total", 0))
        elsewhere = len(b.get("tuned_on_other_cpus") or {})
        untuned = "untuned" + (f" ({elsewhere} tasks tuned on other CPUs)" if elsewhere else "")
        info = {
            "tuned": f"tuned {tuned}/{total} tasks" if tuned else untuned,
            "tasks_tuned": tuned,
            "tasks_total": total,
            "tasks_tuned_on_other_cpus": elsewhere,
            "target": art.manifest.target.get("key"),
            "artifact": str(art.path),
        }
        quant = art.manifest.model.get("quantization")
        if quant:
            info["quantization"] = {k: quant.get(k) for k in ("observer", "samples", "tool")}
        model = load_for_device(art.path, self.settings.device)

        def fn(x):
            return model(x.numpy())

        timer = None
        if not self.settings.is_local:

            def timer(x, warmup, runs):
                return model.timing(x.numpy(), warmup=warmup, runs=runs)

        own = _int8_check(art.manifest.validation) if int8 else None
        return Prepared(fn, info, timer, validation=own)


def _int8_check(report: dict | None) -> dict | None:
    """``sepconv validate``'s int8 report (recorded by the compile) → the bench's summary of it:
    the integer kernels against the simulated quantization, ``passed`` by that rule alone (each
    operator on the reference's inputs; the whole-model SQNR where that check could not run) —
    the bench applies its own SQNR floor against fp32."""
    from sepconv.compiler.int8.accuracy import MIN_SQNR_VS_QUANTIZED_DB

    outputs = (report or {}).get("outputs") or []
    if not outputs:
        return None
    vq = min(o["sqnr_vs_quantized_db"] for o in outputs)
    fp32 = [o["sqnr_db"] for o in outputs if o.get("sqnr_db") is not None]
    by_operator = (report.get("operators") or {}).get("passed")
    check = {
        "passed": bool(vq >= MIN_SQNR_VS_QUANTIZED_DB) if by_operator is None else by_operator,
        "rule": (
            f"sepconv validate: median SQNR vs simulated quantization ≥ "
            f"{MIN_SQNR_VS_QUANTIZED_DB:g} dB"
            if by_operator is None
            else "sepconv validate: each operator on the reference's inputs within 1 step, "
            "≥ 99.9 % exact"
        ),
        "operators": report.get("operator_summary"),
        "sqnr_vs_quantized_db": vq,
        "worst_sqnr_vs_quantized_db": min(o["worst_sqnr_vs_quantized_db"] for o in outputs),
        "max_steps": max(o["steps"] for o in outputs),
        "exact_fraction": min(o["exact_fraction"] for o in outputs),
        "sqnr_db": min(fp32) if fp32 else None,
        "top1_vs_fp32": report.get("top1_vs_fp32"),
        "num_inputs": report.get("num_inputs"),
    }
    if not check["passed"]:
        check["reason"] = (
            f"sepconv validate: SQNR {vq:.1f} dB vs the simulated quantization < "
            f"{MIN_SQNR_VS_QUANTIZED_DB:g} dB (the compiled int8 departs from its own quantized "
            "graph)"
            if by_operator is None
            else f"sepconv validate: {report.get('operator_summary')}"
        )
    return check


class SepconvFp32(Sepconv):
    """sepconv's fp32 build beside ``--precision int8``: what int8 buys over our own fp32."""

    name = "sepconv-fp32"
    precision = "fp32"
    fp32_twin = None


class SepconvWithoutOps(Sepconv):
    """sepconv with ``--no-sepconv-ops``: TVM's NCHW conv2d under our NCHW rules — what our
    depthwise / fused operators are measured against (in the bench's precision)."""

    name = "sepconv-no-ops"
    sepconv_ops = False


class SepconvUntuned(Sepconv):
    """sepconv without tuning records — our schedule rules alone: what tuning buys (in the
    bench's precision)."""

    name = "sepconv-untuned"
    tuned = False


PEERS: dict[str, type[Peer]] = {
    p.name: p
    for p in (
        TorchEager, TorchCompile, OnnxRuntime, OpenVino, ExecuTorchXnnpack, SepconvWithoutOps,
        SepconvUntuned, SepconvFp32, OnnxRuntimeInt8, OpenVinoInt8,
    )
}  # fmt: skip
"""Peers by the names ``--peers`` accepts."""


def split_names(spec, valid) -> tuple[list[str], list[str]]:
    """``"a, b,a"`` or ``["a", "b"]`` → (the names once each, in order; those not in ``valid``)."""
    names = spec.split(",") if isinstance(spec, str) else list(spec or ())
    names = list(dict.fromkeys(n.strip() for n in names if isinstance(n, str) and n.strip()))
    return names, [n for n in names if n not in valid]


def parse_peers(spec: str | list | tuple) -> list[str]:
    """``"torch,onnxruntime"`` → ``["torch", "onnxruntime"]``; unknown names raise, listing the
    valid ones. ``""`` / ``"none"`` means no peers (sepconv alone)."""
    names, unknown = split_names(spec, PEERS)
    if names == ["none"]:
        return []
    if unknown:
        raise SepconvError(
            f"unknown peer{'s' * (len(unknown) > 1)} {', '.join(map(repr, unknown))}; valid "
            f"peers: {', '.join(PEERS)} (comma-separated; sepconv itself is always measured)"
        )
    return names


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {line[:300]}" if line else type(exc).__name__
