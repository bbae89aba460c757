"""The emulated aarch64 device (``-m arm``): qemu-user + an aarch64 Python with the TVM runtime.

``targets/emulated/aarch64.sh setup`` runs first (idempotent; needs root and network the first
time, ~0.5 GB); the server registers with a loopback tracker. Emulated timings are not ARM
performance and nothing here looks at them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

import sepconv
from sepconv.compiler.runtime import load
from sepconv.compiler.tuning import database as tuning_db
from sepconv.compiler.validation import validate_against
from sepconv.errors import ArtifactError
from sepconv.models import get_model
from sepconv.targets.devices import Device, count_servers
from tests.targets.test_devices import free_port

pytestmark = pytest.mark.arm

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "targets" / "emulated" / "aarch64.sh"
MODEL = "mobilenet_v2:0.35@32"
KEY = "emu-aarch64"


@pytest.fixture(scope="module")
def emulated_device(tmp_path_factory):
    """``tracker://127.0.0.1:PORT/emu-aarch64`` served by the emulated aarch64 RPC server."""
    from tvm.rpc.tracker import Tracker

    setup = subprocess.run(
        ["bash", str(SCRIPT), "setup"], capture_output=True, text=True, timeout=1800
    )
    if setup.returncode != 0:
        pytest.skip(f"the emulated aarch64 device could not be set up: {setup.stderr[-600:]}")
    port = free_port()
    tracker = Tracker(host="127.0.0.1", port=port, port_end=port + 50, silent=True)
    sport = free_port()
    logfile = tmp_path_factory.mktemp("emu") / "server.log"
    with open(logfile, "w") as out:
        server = subprocess.Popen(
            ["bash", str(SCRIPT), "serve", "--port", str(sport), "--port-end", str(sport + 50),
             "--tracker", f"127.0.0.1:{tracker.port}", "--key", KEY],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    device = Device("tracker", "127.0.0.1", tracker.port, KEY)
    try:
        deadline = time.monotonic() + 240  # importing TVM takes ~15-25 s under emulation
        while count_servers(device) == 0:
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the emulated RPC server did not register:\n{logfile.read_text()}")
            time.sleep(1)
        yield str(device)
    finally:
        try:
            os.killpg(server.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        server.wait(timeout=30)
        tracker.terminate()


@pytest.fixture(scope="module")
def arm_artifact(tmp_path_factory):
    art = sepconv.compile(
        MODEL,
        target="aarch64-linux-gnu",
        out=tmp_path_factory.mktemp("arm") / "mbv2",
        tune_logs=False,
    )
    return art


def test_cross_compiled_mobilenet_v2_runs_on_the_device_and_matches_torch(
    emulated_device, arm_artifact
):
    assert arm_artifact.manifest.arch == "aarch64"
    with pytest.raises(ArtifactError, match="cannot run on this"):
        sepconv.load(arm_artifact.path)  # an x86 host refuses it, pointing at RPC
    with load(arm_artifact.path, emulated_device) as model:
        report = validate_against(model, get_model(MODEL).module, model_name=MODEL, num_inputs=2)
    assert report.passed, report.summary()


def test_tune_a_depthwise_task_through_the_tracker(emulated_device, tmp_path):
    from sepconv.compiler.tuning import tune

    report = tune(
        MODEL,
        target="aarch64-linux-gnu",
        device=emulated_device,
        trials=3,
        tune_log=tmp_path,
        task_filter="sepconv_dw_pw_9_",  # a fused depthwise→pointwise block
        confirm_rounds=0,  # emulated timings mean nothing: the record is used as logged
        progress=False,
    )
    assert report.trials == 3 and report.stopped is None
    assert report.log_dir == tmp_path / "aarch64-neon"
    db = tuning_db.open_database([report.log_dir])
    assert db.report.records == 3
    # the device's records schedule the next cross build, which still runs correctly there
    art = sepconv.compile(
        MODEL, target="aarch64-linux-gnu", out=tmp_path / "tuned", tune_logs=[tmp_path]
    )
    assert art.manifest.build["tasks_tuned"] == 1
    with load(art.path, emulated_device) as model:
        report = validate_against(model, get_model(MODEL).module, model_name=MODEL, num_inputs=1)
    assert report.passed, report.summary()


def test_int8_cross_compiled_runs_on_the_device_and_matches_simulated_quantization(
    emulated_device, tmp_path
):
    """int8 for AArch64 (s8 activations, the sdot operand order) on the emulated device."""
    import torch

    from sepconv.compiler.int8.accuracy import validate_int8
    from sepconv.compiler.int8.ptq import quantized_reference
    from sepconv.compiler.validation import seeded_inputs

    art = sepconv.compile(
        MODEL, target="aarch64-linux-gnu", out=tmp_path / "mbv2-int8", tune_logs=False,
        precision="int8",
    )  # fmt: skip
    quant = art.manifest.model["quantization"]
    assert quant["activation_dtype"] == "int8"
    assert art.manifest.build["sepconv_ops"]["int8"]["left_to_tvm"] == 0
    fp32 = get_model(MODEL).module
    with load(art.path, emulated_device) as model:
        inputs = tuple(torch.from_numpy(a) for a in seeded_inputs(model.inputs, 0))
        qref = quantized_reference(quant, fp32, inputs)
        # the fp32 floor is set on the zoo at 224; this 32×32 random-weight model quantizes to a
        # few dB (see tests/compiler/int8/test_int8_models.py): the check here is the integer
        # semantics against the simulated quantization, which keeps its default rule
        report = validate_int8(model, qref, fp32, model_name=MODEL, num_inputs=2, min_sqnr_db=2.0)
    assert report.passed, report.summary()
