"""Devices that run and time compiled code: this machine, a TVM RPC server, or a TVM RPC tracker.

Three spellings, nothing else::

    local                       this machine
    rpc://HOST:PORT[/KEY]       one TVM RPC server (``sepconv device serve`` on the board);
                                KEY only if the server was started with one
    tracker://HOST:PORT/KEY     TVM's RPC tracker, any free server registered under KEY
                                (``sepconv device tracker`` + ``sepconv device serve --tracker``)

The tracker is TVM's own scheduler for a fleet of boards; sepconv does not add one.

Every network step has a time limit: a port that refuses, a host that does not answer, a tracker
without a server for the key, all raise :class:`~sepconv.errors.DeviceError` naming the host, the
port and what to check, never hang. Use::

    from sepconv.targets.devices import parse_device, session, time_artifact, run_artifact

    dev = parse_device("tracker://127.0.0.1:9190/rpi4")
    with session(dev) as sess:              # an RPCSession (a LocalSession for "local")
        print(sess.cpu(0).exist)
    t = time_artifact("build/mbv2.sepconv", dev, runs=50)   # {"median_ms": ..., ...}
    y = run_artifact("build/mbv2.sepconv", dev, [x])        # outputs as numpy arrays

Artifacts compiled for another architecture (``--target aarch64-linux-gnu``) are uploaded to the
device and loaded there; the weights are sent once per session.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import statistics
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sepconv.errors import DeviceError

log = logging.getLogger(__name__)

DEFAULT_TRACKER_PORT = 9190
DEFAULT_SERVER_PORT = 9090
CONNECT_TIMEOUT_S = 10.0
"""Seconds to open a connection to a server or tracker."""
SESSION_TIMEOUT_S = 60.0
"""Seconds one remote measurement (upload, load, time) may take before it counts as failed."""

FORMS = "local, rpc://HOST:PORT or tracker://HOST:PORT/KEY"
"""The accepted spellings, for messages."""

__all__ = [
    "Device",
    "RemoteModel",
    "check_device",
    "parse_device",
    "run_artifact",
    "session",
    "time_artifact",
]


@dataclass(frozen=True)
class Device:
    """Where code runs: ``kind`` is ``"local"``, ``"rpc"`` or ``"tracker"``."""

    kind: str
    host: str = ""
    port: int = 0
    key: str = ""

    @property
    def is_local(self) -> bool:
        return self.kind == "local"

    def __str__(self) -> str:
        if self.kind == "local":
            return "local"
        if self.kind == "rpc":
            key = f"/{self.key}" if self.key else ""
            return f"rpc://{_fmt_host(self.host)}:{self.port}{key}"
        return f"tracker://{_fmt_host(self.host)}:{self.port}/{self.key}"


def _fmt_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


_URL = re.compile(
    r"^(?P<scheme>rpc|tracker)://(?:\[(?P<v6>[0-9a-fA-F:.]+)\]|(?P<host>[A-Za-z0-9_.-]+))"
    r"(?::(?P<port>\d+))?(?:/(?P<key>[^/\s]*))?/?$"
)


def parse_device(spec: str | Device | None) -> Device:
    """``"local"`` / ``"rpc://host:port"`` / ``"tracker://host:port/key"`` → :class:`Device`.

    Raises :class:`DeviceError` naming the accepted forms for anything else.
    """
    if isinstance(spec, Device):
        return spec
    if spec is None:
        return Device("local")
    if not isinstance(spec, str):
        raise DeviceError(f"device must be a string ({FORMS}), got {type(spec).__name__}")
    text = spec.strip()
    if text.lower() in ("local", "localhost", "host", ""):
        return Device("local")
    m = _URL.match(text)
    if m is None:
        hint = ""
        if "://" not in text and re.match(r"^[A-Za-z0-9_.-]+:\d+$", text):
            hint = f" (did you mean rpc://{text} or tracker://{text}/KEY?)"
        raise DeviceError(f"unknown device {spec!r}{hint}; use {FORMS}")
    scheme, host = m["scheme"], m["v6"] or m["host"]
    port = int(m["port"]) if m["port"] else None
    key = m["key"] or ""
    if scheme == "rpc":
        if port is None:
            raise DeviceError(f"device {spec!r} needs a port: rpc://HOST:PORT (e.g. :9090)")
        return Device("rpc", host, _check_port(port, spec), key)
    port = DEFAULT_TRACKER_PORT if port is None else port
    if not key:
        raise DeviceError(
            f"device {spec!r} names no device key: use tracker://{_fmt_host(host)}:{port}/KEY, "
            "where KEY is what the boards registered with (sepconv device serve --key KEY)"
        )
    return Device("tracker", host, _check_port(port, spec), key)


def _check_port(port: int, spec: str) -> int:
    if not 0 < port < 65536:
        raise DeviceError(f"device {spec!r}: port {port} is out of range 1-65535")
    return port


# ---------------------------------------------------------------------------------------------
# Connecting


def _probe(host: str, port: int, what: str, timeout: float) -> None:
    """Open and close a TCP connection: a refused or silent port fails here, quickly."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except TimeoutError as exc:
        raise DeviceError(
            f"the {what} at {host}:{port} did not answer within {timeout:.0f}s; check the host "
            "is up and reachable (firewall?) and the port is right"
        ) from exc
    except OSError as exc:
        hint = {
            "RPC server": f"start one there: sepconv device serve --host 0.0.0.0 --port {port}",
            "RPC tracker": f"start one: sepconv device tracker --host 0.0.0.0 --port {port}",
        }[what]
        raise DeviceError(
            f"cannot reach the {what} at {host}:{port} ({exc.strerror or exc}); {hint}"
        ) from exc


def _with_timeout(fn, timeout: float, what: str):
    """Run ``fn()`` in a thread; DeviceError if it takes longer than ``timeout``."""
    box: dict = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            box["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise DeviceError(f"{what} did not complete within {timeout:.0f}s")
    if "error" in box:
        raise box["error"]
    return box["value"]


def _tracker_keys(summary: dict) -> dict[str, int]:
    """Free servers per key in a tracker summary."""
    keys: dict[str, int] = {}
    for item in summary.get("server_info", []):
        k = str(item.get("key", ""))
        k = k.split(":", 1)[1] if k.startswith("server:") else k
        keys[k] = keys.get(k, 0) + 1
    return keys


def tracker_summary(device: Device, timeout: float = CONNECT_TIMEOUT_S) -> dict:
    """The tracker's summary (servers and queue), with a time limit."""
    from tvm import rpc

    _probe(device.host, device.port, "RPC tracker", timeout)
    try:
        tracker = _with_timeout(
            lambda: rpc.connect_tracker(device.host, device.port),
            timeout,
            f"connecting to the RPC tracker at {device.host}:{device.port}",
        )
        return _with_timeout(tracker.summary, timeout, "asking the RPC tracker for its summary")
    except DeviceError:
        raise
    except Exception as exc:  # noqa: BLE001 - TVM raises plain errors
        raise DeviceError(
            f"the RPC tracker at {device.host}:{device.port} failed: {_last_line(exc)}"
        ) from exc


def connect(
    device: Device | str,
    timeout: float = CONNECT_TIMEOUT_S,
    session_timeout: float = 0,
):
    """An RPC session on ``device`` (a ``LocalSession`` for local). Raises DeviceError, with
    host, port and a hint, when the device cannot be reached within ``timeout`` seconds.

    ``session_timeout`` (seconds, 0 = none) asks the server to end the session after that long.
    """
    from tvm import rpc

    device = parse_device(device)
    if device.is_local:
        return rpc.LocalSession()
    if device.kind == "rpc":
        _probe(device.host, device.port, "RPC server", timeout)
        try:
            return _with_timeout(
                lambda: rpc.connect(
                    device.host, device.port, key=device.key, session_timeout=session_timeout
                ),
                timeout,
                f"opening an RPC session with {device.host}:{device.port} (is it a TVM RPC "
                "server, and is it busy with another client?)",
            )
        except DeviceError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise DeviceError(
                f"the RPC server at {device.host}:{device.port} refused the session: "
                f"{_last_line(exc)}"
            ) from exc
    summary = tracker_summary(device, timeout)
    keys = _tracker_keys(summary)
    if keys.get(device.key, 0) == 0:
        known = ", ".join(sorted(keys)) or "none"
        raise DeviceError(
            f"the RPC tracker at {device.host}:{device.port} has no free server with key "
            f"{device.key!r} (keys registered: {known}); on the board run: sepconv device serve "
            f"--tracker {device.host}:{device.port} --key {device.key}"
        )
    try:
        tracker = rpc.connect_tracker(device.host, device.port)
        return _with_timeout(
            lambda: tracker.request(
                device.key, priority=1, session_timeout=session_timeout, max_retry=2
            ),
            timeout * 3,
            f"getting a {device.key!r} server from the RPC tracker at "
            f"{device.host}:{device.port} (all busy?)",
        )
    except DeviceError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise DeviceError(
            f"the RPC tracker at {device.host}:{device.port} could not hand out a "
            f"{device.key!r} server: {_last_line(exc)}"
        ) from exc


@contextlib.contextmanager
def session(device: Device | str, timeout: float = CONNECT_TIMEOUT_S) -> Iterator:
    """``with session("rpc://127.0.0.1:9090") as sess:`` — an RPC session, closed afterwards."""
    import gc

    sess = connect(device, timeout)
    try:
        yield sess
    finally:
        del sess  # the connection closes with the last reference
        gc.collect()


def check_device(device: Device | str, timeout: float = CONNECT_TIMEOUT_S) -> dict:
    """Connect once and describe the device: ``{"device", "cpu_exists", "cuda_exists",
    "servers"...}``."""
    device = parse_device(device)
    info: dict = {"device": str(device)}
    if device.kind == "tracker":
        info["servers"] = _tracker_keys(tracker_summary(device, timeout)).get(device.key, 0)
    with session(device, timeout) as sess:
        info["cpu_exists"] = bool(sess.cpu(0).exist)
        try:
            info["cuda_exists"] = bool(sess.cuda(0).exist)
        except Exception:  # noqa: BLE001 - a runtime built without CUDA
            info["cuda_exists"] = False
    return info


def _last_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[-1][:300] if text else type(exc).__name__


# ---------------------------------------------------------------------------------------------
# MetaSchedule's RPC runner: a session factory for a direct (tracker-less) server


def create_rpc_session(
    rpc_config, host: str = "", port: int = 0, key: str = "", timeout: float = CONNECT_TIMEOUT_S
):
    """``f_create_session`` for MetaSchedule's RPCRunner: a direct server when ``host`` is set,
    else the tracker of ``rpc_config``. Runs in the runner's worker process."""
    if host:
        return connect(Device("rpc", host, port, key), timeout, rpc_config.session_timeout_sec)
    dev = Device("tracker", rpc_config.tracker_host, int(rpc_config.tracker_port))
    dev = Device(dev.kind, dev.host, dev.port, rpc_config.tracker_key)
    return connect(dev, timeout, rpc_config.session_timeout_sec)


def count_servers(device: Device, timeout: float = CONNECT_TIMEOUT_S) -> int:
    """Servers that can measure for ``device`` at once (1 for local and rpc)."""
    if device.kind != "tracker":
        return 1
    return _tracker_keys(tracker_summary(device, timeout)).get(device.key, 0)


# ---------------------------------------------------------------------------------------------
# Running compiled artifacts on a device


class RemoteModel:
    """An artifact loaded on a device (local or over RPC): ``model(x)``, ``model.time(x)``.

    Works like :class:`sepconv.compiler.runtime.CompiledModel` (same ``inputs``/``outputs``/
    ``manifest``), so :func:`sepconv.compiler.validation.validate_against` accepts it. The
    library is uploaded and the weights sent once, when the model is created.
    """

    def __init__(self, path: str | os.PathLike, device: Device | str, sess=None):
        import tvm
        from safetensors.numpy import load_file
        from tvm import relax

        from sepconv.compiler.artifact import LIBRARY, WEIGHTS, read_manifest

        self.device = parse_device(device)
        self.path, self.manifest = read_manifest(path)
        if self.manifest.target.get("family") == "cuda":
            raise DeviceError(
                f"{self.path} is a CUDA artifact; running it over RPC is not supported yet — "
                "copy it to the GPU machine and use sepconv.load there"
            )
        self._sess = sess if sess is not None else connect(self.device)
        remote_name = f"sepconv-{os.getpid()}-{id(self)}.so"
        try:
            self._sess.upload(str(self.path / LIBRARY), remote_name)
            lib = self._sess.load_module(remote_name)
        except Exception as exc:  # noqa: BLE001
            raise DeviceError(
                f"{self.device} could not load {self.path / LIBRARY} ({_last_line(exc)}); was "
                f"the artifact compiled for the device's architecture (it is "
                f"{self.manifest.arch})?"
            ) from exc
        self._dev = self._sess.cpu(0)
        self._vm = relax.VirtualMachine(lib, self._dev)
        weights = load_file(str(self.path / WEIGHTS))
        self._params = [
            tvm.runtime.tensor(weights[n], self._dev) for n in self.manifest.weight_names
        ]

    @property
    def inputs(self):
        return self.manifest.inputs

    @property
    def outputs(self):
        return self.manifest.outputs

    def close(self) -> None:
        """End the RPC session now (a TVM RPC server serves one session at a time; the VM's
        internal reference cycles would otherwise keep it open until garbage collection)."""
        import gc

        self._vm = self._params = self._dev = self._sess = None
        gc.collect()

    def __enter__(self) -> RemoteModel:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RemoteModel({self.manifest.model.get('name')!r}, device={str(self.device)!r})"

    def _tensors(self, arrays: Sequence[np.ndarray]):
        import tvm

        if len(arrays) != len(self.inputs):
            raise DeviceError(f"the model takes {len(self.inputs)} input(s), got {len(arrays)}")
        out = []
        for a, spec in zip(arrays, self.inputs):
            a = a.detach().cpu().numpy() if hasattr(a, "detach") else np.asarray(a)
            if tuple(a.shape) != tuple(spec.shape) or str(a.dtype) != spec.dtype:
                raise DeviceError(
                    f"input {spec.name!r} must be {spec.dtype}{list(spec.shape)}, got "
                    f"{a.dtype}{list(a.shape)}"
                )
            out.append(tvm.runtime.tensor(np.ascontiguousarray(a), self._dev))
        return out

    def __call__(self, *arrays):
        torch_in = any(hasattr(a, "detach") for a in arrays)
        # over RPC the VM's return value is a remote object: fetch outputs one by one
        self._vm.set_input("main", *self._tensors(arrays), *self._params)
        self._vm.invoke_stateful("main")
        out = self._vm.get_outputs("main")
        results = [o.numpy() for o in out] if isinstance(out, tuple) else [out.numpy()]
        if torch_in:
            import torch

            results = [torch.from_numpy(r) for r in results]
        return results[0] if len(results) == 1 else tuple(results)

    def time(self, *arrays, warmup: int = 3, runs: int = 20) -> dict:
        """Latency in ms over ``runs`` calls, timed on the device (TVM's time evaluator)."""
        self._vm.set_input("main", *self._tensors(arrays), *self._params)
        for _ in range(warmup):
            self._vm.invoke_stateful("main")
        evaluator = self._vm.time_evaluator(
            "invoke_stateful", self._dev, number=1, repeat=runs, min_repeat_ms=0
        )
        samples = sorted(s * 1e3 for s in evaluator("main").results)
        return {
            "median_ms": statistics.median(samples),
            "p10_ms": samples[int(0.1 * (len(samples) - 1))],
            "p90_ms": samples[int(0.9 * (len(samples) - 1))],
            "runs": len(samples),
            "device": str(self.device),
        }


def load_on(path: str | os.PathLike, device: Device | str):
    """An artifact ready to run on ``device``: a CompiledModel for local, else a RemoteModel."""
    device = parse_device(device)
    if device.is_local:
        from sepconv.compiler.runtime import load

        return load(path)
    return RemoteModel(path, device)


def run_artifact(path: str | os.PathLike, device: Device | str, inputs: Sequence) -> object:
    """Run an artifact once on ``device``; outputs as numpy arrays (a tuple if several)."""
    model = load_on(path, device)
    try:
        return model(*inputs)
    finally:
        if isinstance(model, RemoteModel):
            model.close()


def time_artifact(
    path: str | os.PathLike,
    device: Device | str = "local",
    runs: int = 50,
    warmup: int = 10,
    inputs: Sequence | None = None,
    seed: int = 0,
) -> dict:
    """Time an artifact on ``device``: ``{"median_ms", "p10_ms", "p90_ms", "runs", ...}``.

    ``inputs`` default to seeded random arrays of the artifact's input shapes. On a remote device
    the time is measured there (TVM's time evaluator), not including the network.
    """
    from sepconv.compiler.validation import seeded_inputs

    model = load_on(path, device)
    try:
        arrays = list(inputs) if inputs is not None else seeded_inputs(model.inputs, seed)
        result = model.time(*arrays, warmup=warmup, runs=runs)
    finally:
        if isinstance(model, RemoteModel):
            model.close()
    result.setdefault("device", str(parse_device(device)))
    return result


def library_path(path: str | os.PathLike) -> Path:
    """The compiled library inside an artifact directory."""
    from sepconv.compiler.artifact import LIBRARY, artifact_path

    return artifact_path(path) / LIBRARY
