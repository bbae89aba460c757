"""Shared fixtures: one compiled artifact per session, a loopback RPC tracker with a server."""

from __future__ import annotations

import shutil
import socket
import time

import pytest
import torch

from tests.nets import tiny_separable


@pytest.fixture(scope="session")
def tiny_artifact(tmp_path_factory):
    """A compiled TinySeparable for batch 2, 16×16 (session-wide; copy before modifying)."""
    import sepconv

    out = tmp_path_factory.mktemp("art") / "tiny"
    model = tiny_separable()
    art = sepconv.compile(model, target="host", out=out, example_input=torch.randn(2, 3, 16, 16))
    return art.path, model


@pytest.fixture
def artifact_copy(tiny_artifact, tmp_path):
    path, model = tiny_artifact
    dst = tmp_path / path.name
    shutil.copytree(path, dst)
    return dst, model


@pytest.fixture
def as_avx2_host(monkeypatch):
    """Call it to make this machine look like an AVX2 CPU without AVX-512, through LLVM's host
    detection (``llvm=True``) or, as with TVM's runtime alone, /proc/cpuinfo."""
    from sepconv.targets import host as H

    def simulate(llvm: bool = True) -> None:
        real = dict(H.host_cpu_features())
        avx2 = {k: (v and not k.startswith("avx512")) for k, v in real.items()}
        monkeypatch.setattr(H, "host_cpu_features", lambda: avx2 if llvm else {})
        flags = frozenset(f for f in H.cpuinfo_flags() if not f.startswith("avx512"))
        monkeypatch.setattr(H, "cpuinfo_flags", lambda: flags | {"avx", "avx2", "fma"})

    return simulate


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def tracker():
    from tvm import rpc
    from tvm.rpc.tracker import Tracker

    port = free_port()
    trk = Tracker(host="127.0.0.1", port=port, port_end=port + 50, silent=True)
    sport = free_port()
    server = rpc.Server(
        host="127.0.0.1",
        port=sport,
        port_end=sport + 50,
        tracker_addr=("127.0.0.1", trk.port),
        key="loopback",
        silent=True,
    )
    deadline = time.monotonic() + 20
    from sepconv.targets.devices import Device, count_servers

    dev = Device("tracker", "127.0.0.1", trk.port, "loopback")
    while count_servers(dev) == 0:
        assert time.monotonic() < deadline, "the RPC server did not register with the tracker"
        time.sleep(0.2)
    yield trk.port
    server.terminate()
    trk.terminate()
