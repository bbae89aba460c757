"""The systems `sepconv bench` compares: sepconv itself and the peers a user would reach for.

A :class:`Peer` answers two questions: can it run here (:meth:`Peer.available` → a reason why not,
or ``None``), and what is one inference of this module (:meth:`Peer.prepare` → :class:`Prepared`).
Every prepared system is validated against eager PyTorch before it is timed (``sepconv.bench``
does that); all are timed by :func:`sepconv.timing.time_interleaved` (the one timer), except on a
remote device, where the device times itself (TVM's time evaluator, network excluded).
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
class Prepared:
    """One system ready to run a model: ``fn(x)`` is one inference of the torch tensor ``x``."""

    fn: Callable[[torch.Tensor], Any]
    info: dict = field(default_factory=dict)  # extra report fields (sepconv: tuned state)
    timer: Callable[[torch.Tensor, int, int], Timing] | None = None  # its own clock, if any
    close: Callable[[], None] | None = None


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

    def prepare(self, module, example):
        import onnxruntime as ort

        fd, name = tempfile.mkstemp(suffix=".onnx", dir=self.workdir())
        os.close(fd)
        path = Path(name)
        try:
            source = _onnx_source(module)
            if source is not None:  # an ONNX file: run it as it is
                path.write_bytes(source.onnx_model.SerializeToString())
                exporter = "file"
            else:
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

    def prepare(self, module, example):
        import openvino as ov

        source = _onnx_source(module)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if source is not None:  # an ONNX file: OpenVINO reads it as it is
                    fd, name = tempfile.mkstemp(suffix=".onnx", dir=self.workdir())
                    with os.fdopen(fd, "wb") as f:
                        f.write(source.onnx_model.SerializeToString())
                    try:
                        ov_model = ov.convert_model(name)
                    finally:
                        os.unlink(name)
                else:
                    ov_model = ov.convert_model(module.eval(), example_input=example)
        except Exception as exc:  # noqa: BLE001 - a conversion failure means "cannot run here"
            raise PeerUnavailable(f"openvino.convert_model failed: {_first_line(exc)}") from exc
        config = openvino_config(self.settings.threads)
        compiled = ov.Core().compile_model(ov_model, "CPU", config)
        request = compiled.create_infer_request()
        n_out = len(compiled.outputs)

        def fn(x):
            request.infer({0: x.numpy()})
            return [request.get_output_tensor(i).data.copy() for i in range(n_out)]

        return Prepared(fn, {"version": ov.__version__, "device": "CPU", **config})


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

        source = getattr(module, "sepconv_source", None)  # a model file: compile the file's graph
        name = type(module).__name__ if source is None else source.name
        # one path per peer: dlopen hands back an already-loaded library for a reused path
        out = self.workdir() / f"{self.name}-{name}-{example.shape[-1]}-{os.getpid()}-{id(module)}"
        art = sepconv.compile(
            module if source is None else source, target=self.settings.target, out=out,
            example_input=example, force=True,
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
                return model.timing(x.numpy(), warmup=warmup, runs=runs)

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
    p.name: p
    for p in (
        TorchEager, TorchCompile, OnnxRuntime, OpenVino, ExecuTorchXnnpack, SepconvWithoutOps,
        SepconvUntuned,
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
