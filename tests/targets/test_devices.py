"""Devices: the three spellings, fast clear failures, running artifacts over loopback RPC."""

from __future__ import annotations

import socket
import threading
import time

import numpy as np
import pytest

from sepconv.compiler.runtime import load, run_artifact, time_artifact
from sepconv.errors import DeviceError
from sepconv.targets.devices import Device, check_device, connect, parse_device
from tests.conftest import free_port


@pytest.fixture(scope="module")
def rpc_server():
    from tvm import rpc

    port = free_port()
    server = rpc.Server(host="127.0.0.1", port=port, port_end=port + 50, silent=True)
    yield f"rpc://127.0.0.1:{server.port}"
    server.terminate()


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("local", Device("local")),
        (None, Device("local")),
        ("rpc://127.0.0.1:9090", Device("rpc", "127.0.0.1", 9090)),
        ("rpc://board.lab:9091/", Device("rpc", "board.lab", 9091)),
        ("rpc://board.lab:9091/rpi4", Device("rpc", "board.lab", 9091, "rpi4")),
        ("tracker://tracker.lab:9190/rpi4", Device("tracker", "tracker.lab", 9190, "rpi4")),
        ("tracker://[::1]:9190/rk3399", Device("tracker", "::1", 9190, "rk3399")),
        ("tracker://tracker.lab/rpi4", Device("tracker", "tracker.lab", 9190, "rpi4")),
    ],
)
def test_accepted_device_forms(spec, expected):
    dev = parse_device(spec)
    assert dev == expected
    assert parse_device(str(dev)) == dev


@pytest.mark.parametrize(
    "spec, words",
    [
        ("ssh://board:22", ["unknown device", "rpc://HOST:PORT", "tracker://HOST:PORT/KEY"]),
        ("board.lab:9090", ["did you mean rpc://board.lab:9090"]),
        ("rpc://board.lab", ["needs a port"]),
        ("rpc://board.lab:70000", ["out of range"]),
        ("tracker://tracker.lab:9190", ["names no device key", "sepconv device serve"]),
        ("tracker://tracker.lab:9190/", ["names no device key"]),
    ],
)
def test_rejected_device_forms_name_the_accepted_ones(spec, words):
    with pytest.raises(DeviceError) as err:
        parse_device(spec)
    for w in words:
        assert w in str(err.value)


def test_unreachable_server_fails_fast_with_host_port_and_hint():
    port = free_port()  # nothing listens there
    t0 = time.monotonic()
    with pytest.raises(DeviceError) as err:
        connect(f"rpc://127.0.0.1:{port}")
    assert time.monotonic() - t0 < 5
    msg = str(err.value)
    assert f"127.0.0.1:{port}" in msg and "sepconv device serve" in msg
    with pytest.raises(DeviceError, match="sepconv device tracker"):
        connect(f"tracker://127.0.0.1:{port}/rpi4")


def test_a_server_that_never_answers_times_out():
    """A port that accepts but never speaks TVM RPC (a hung board): an error, not a hang."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    conns = []
    stop = threading.Event()

    def accept():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conns.append(listener.accept()[0])
            except OSError:
                pass

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        t0 = time.monotonic()
        with pytest.raises(DeviceError, match="did not complete within 1s"):
            connect(f"rpc://127.0.0.1:{listener.getsockname()[1]}", timeout=1.0)
        assert time.monotonic() - t0 < 5
    finally:
        stop.set()
        t.join()
        for c in conns:
            c.close()
        listener.close()


def test_run_and_time_an_artifact_over_rpc(tiny_artifact, rpc_server):
    import sepconv
    from sepconv.compiler.validation import seeded_inputs

    path, _model = tiny_artifact
    local = sepconv.load(path)
    x = seeded_inputs(local.inputs, 3)
    remote_y = run_artifact(path, rpc_server, x)
    np.testing.assert_allclose(remote_y, local(*x), rtol=1e-5, atol=1e-6)
    t = time_artifact(path, rpc_server, runs=5, warmup=1)
    assert t["median_ms"] > 0 and t["runs"] == 5 and t["device"] == rpc_server
    with load(path, rpc_server) as m:  # one upload, several calls
        np.testing.assert_allclose(m(*x), remote_y)
        assert m.time(*x, runs=3, warmup=1)["runs"] == 3
    assert time_artifact(path, "local", runs=3, warmup=1)["median_ms"] > 0


def test_validate_an_artifact_on_a_remote_device(tiny_artifact, rpc_server):
    from sepconv.compiler.validation import validate_against

    path, model = tiny_artifact
    with load(path, rpc_server) as m:
        report = validate_against(m, model, model_name="tiny", num_inputs=2)
    assert report.passed, report.summary()


def test_tracker_hands_out_its_server_and_names_missing_keys(tracker, tiny_artifact):
    info = check_device(f"tracker://127.0.0.1:{tracker}/loopback")
    assert info["servers"] == 1 and info["cpu_exists"]
    path, _ = tiny_artifact
    assert time_artifact(path, f"tracker://127.0.0.1:{tracker}/loopback", runs=3)["runs"] == 3
    t0 = time.monotonic()
    with pytest.raises(DeviceError) as err:
        connect(f"tracker://127.0.0.1:{tracker}/rpi4")
    assert time.monotonic() - t0 < 5
    assert "no free server with key 'rpi4'" in str(err.value) and "loopback" in str(err.value)


def test_cli_device_check(capsys, rpc_server):
    from sepconv.cli import main

    assert main(["device", "check", rpc_server]) == 0
    assert "cpu_exists=True" in capsys.readouterr().out
    port = free_port()
    assert main(["device", "check", f"rpc://127.0.0.1:{port}", "--timeout", "2"]) == 2
    assert f"cannot reach the RPC server at 127.0.0.1:{port}" in capsys.readouterr().err


def test_cli_tune_rejects_a_bad_device_before_any_work(capsys):
    from sepconv.cli import main

    t0 = time.monotonic()
    assert main(["tune", "mobilenet_v2", "--device", "board:9090", "--trials", "4"]) == 2
    assert time.monotonic() - t0 < 5
    assert "did you mean rpc://board:9090" in capsys.readouterr().err


def test_cli_device_tracker_and_serve(tmp_path):
    """`sepconv device tracker` and `sepconv device serve --tracker --key`, as on a lab's boards."""
    import os
    import signal
    import subprocess
    import sys

    from sepconv.targets.devices import count_servers

    def start(*args):
        return subprocess.Popen(
            [sys.executable, "-m", "sepconv.cli", "device", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )

    def wait_for(proc, text):
        seen = []
        for line in proc.stdout:  # the command prints its address once it listens
            seen.append(line)
            if text in line:
                return
        raise AssertionError(f"{text!r} never printed: {''.join(seen)[-2000:]}")

    tport, sport = free_port(), free_port()
    procs = [start("tracker", "--host", "127.0.0.1", "--port", str(tport))]
    try:
        wait_for(procs[0], f"RPC tracker listening on 127.0.0.1:{tport}")
        procs.append(
            start("serve", "--host", "127.0.0.1", "--port", str(sport),
                  "--tracker", f"127.0.0.1:{tport}", "--key", "board")
        )  # fmt: skip
        wait_for(procs[1], "registered with tracker")
        dev = Device("tracker", "127.0.0.1", tport, "board")
        deadline = time.monotonic() + 20
        while count_servers(dev) == 0:
            assert time.monotonic() < deadline, "the server did not register"
            time.sleep(0.2)
        assert check_device(dev)["cpu_exists"]
    finally:
        for p in reversed(procs):
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=20)
            finally:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.stdout.close()
    assert all(p.returncode == 0 for p in procs)
