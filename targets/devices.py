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

    from sepconv.targets.devices import parse_device, session

    dev = parse_device("tracker://127.0.0.1:9190/rpi4")
    with session(dev) as sess:              # an RPCSession (a LocalSession for "local")
        print(sess.cpu(0).exist)

This module describes devices and connects to them; it knows nothing of what runs there.
Running an artifact on a device is the runtime's job (:mod:`sepconv.compiler.runtime`:
``load(path, device=dev)``, ``run_artifact``, ``time_artifact``): a library compiled for another
architecture (``--target aarch64-linux-gnu``) is uploaded to the device and loaded there, the
weights sent once per session.
"""

from __future__ import annotations

import contextlib
import logging
import re
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass

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
    "check_device",
    "connect",
    "count_servers",
    "parse_device",
    "session",
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
