"""Tuning over TVM RPC on loopback: through a tracker, and a device that dies mid-run."""

from __future__ import annotations

import json
import threading
import time

import pytest
import torch

import sepconv
from sepconv.compiler.tuning import MeasureConfig, tune
from sepconv.compiler.tuning import database as tuning_db
from sepconv.errors import DeviceError
from sepconv.targets import resolve_target
from tests.conftest import free_port
from tests.nets import tiny_separable

X = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def records(log) -> int:
    path = log / tuning_db.RECORD_FILE
    return sum(1 for ln in path.read_text().splitlines() if ln.strip()) if path.exists() else 0


def test_tune_through_a_loopback_tracker(tmp_path, tracker):
    device = f"tracker://127.0.0.1:{tracker}/loopback"
    report = tune(
        tiny_separable(),
        example_input=X,
        device=device,
        trials=3,
        tune_log=tmp_path,
        task_filter="dw_pw",
        progress=False,
    )
    assert report.device == device
    assert report.trials == 3 and report.stopped is None
    log = tmp_path / resolve_target("host").key
    assert records(log) == 3
    # confirmed through the tracker too: the task keeps a record or our rules, and says which
    (task,) = [t for t in report.tasks if t.trials]
    assert task.choice in ("record", "rules") and report.confirm_rounds > 0
    assert (log / "confirmed.json").exists()
    art = sepconv.compile(tiny_separable(), example_input=X, out=tmp_path / "a", tune_logs=[log])
    build = art.manifest.build
    assert build["tasks_tuned"] == (task.choice == "record")
    assert build.get("rules_confirmed", []) == ([task.name] if task.choice == "rules" else [])


def test_a_device_that_dies_mid_run_stops_tuning_and_keeps_records(tmp_path):
    from tvm import rpc

    port = free_port()
    server = rpc.Server(host="127.0.0.1", port=port, port_end=port + 50, silent=True)
    log = tmp_path / resolve_target("host").key

    def kill_after_first_records():
        deadline = time.monotonic() + 120
        while records(log) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        server.terminate()

    killer = threading.Thread(target=kill_after_first_records, daemon=True)
    killer.start()
    t0 = time.monotonic()
    try:
        with pytest.raises(DeviceError) as err:
            tune(
                tiny_separable(),
                example_input=X,
                device=f"rpc://127.0.0.1:{server.port}",
                trials=16,
                trials_per_iter=2,
                tune_log=tmp_path,
                task_filter="dw_pw",
                measure=MeasureConfig(min_repeat_ms=0, timeout_s=10),
                progress=False,
            )
    finally:
        killer.join()
        server.terminate()
    assert time.monotonic() - t0 < 120
    msg = str(err.value)
    assert "stopped answering" in msg and "kept" in msg and str(log) in msg
    kept = records(log)
    assert kept >= 2
    db = tuning_db.open_database([log])
    assert db.report.records == kept and db.report.skipped == []
    run = json.loads((log / "provenance.json").read_text())["runs"][-1]
    assert "stopped answering" in run["stopped"] and run["records_written"] == kept
