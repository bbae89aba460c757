"""`sepconv bench`: report contents, validation before timing, unavailable peers, the CLI.

Tiny models and a handful of runs; no timing assertions (the numbers are noise at this size).
"""

from __future__ import annotations

import json
import os
import platform
import sys

import pytest
import torch

from sepconv.bench import (
    BenchSettings,
    Peer,
    PeerUnavailable,
    Prepared,
    parse_peers,
    run_bench,
    time_interleaved,
)
from sepconv.bench.peers import LOCAL_ONLY, OnnxRuntime, TorchCompile, TorchEager
from sepconv.bench.report import ModelResult, SystemResult, latency_frontier
from sepconv.cli import EXIT_ERROR, main
from sepconv.errors import SepconvError
from sepconv.timing import Timing, paired_ratio, time_ratio

MODELS = ["mobilenet_v1:0.25@32", "mobilenet_v2:0.35@32"]
RUNS, WARMUP = 3, 1
PNG = b"\x89PNG\r\n\x1a\n"


class Wrong(Peer):
    """Runs the model but adds 1 to its output: must be marked FAIL and never timed."""

    name = "wrong"
    calls = 0

    @staticmethod
    def spoil(y):
        return y + 1.0

    def prepare(self, module, example):
        def fn(x):
            type(self).calls += 1
            with torch.no_grad():
                return self.spoil(module(x))

        return Prepared(fn)


class Spy(Peer):
    """A correct peer that counts its calls: one to validate, then warm-up and timed runs."""

    name = "spy"
    calls = 0

    def prepare(self, module, example):
        def fn(x):
            Spy.calls += 1
            with torch.no_grad():
                return module(x)

        return Prepared(fn)


class NotHere(Peer):
    name = "not-here"

    def available(self):
        return "not installed on this machine"


class ExportFails(Peer):
    name = "export-fails"

    def prepare(self, module, example):
        raise PeerUnavailable("cannot export this model")


class Crashes(Peer):
    name = "crashes"

    def prepare(self, module, example):
        raise RuntimeError("backend exploded")


def _run_bench(models, peers, **kw):
    """run_bench with the test's runs, no pauses or progress; TVM_NUM_THREADS restored after."""
    env = os.environ.get("TVM_NUM_THREADS")
    try:
        return run_bench(models, peers, runs=RUNS, warmup=WARMUP, settle_s=0, progress=False, **kw)
    finally:
        if env is None:
            os.environ.pop("TVM_NUM_THREADS", None)
        else:
            os.environ["TVM_NUM_THREADS"] = env


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    Wrong.calls = Spy.calls = 0
    report = _run_bench(
        MODELS,
        ["torch", "onnxruntime", "sepconv-no-ops", Wrong, Spy, NotHere, ExportFails, Crashes],
        threads=2,
    )
    out = tmp_path_factory.mktemp("report")
    return report, report.write(out), out


def test_report_files_and_schema(bench):
    report, files, out = bench
    assert {p.name for p in out.iterdir()} >= {
        "report.json",
        "report.md",
        "latency_vs_macs.png",
        "speedup.png",
    }
    for name in ("latency_vs_macs.png", "speedup.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 5000
    d = json.loads(files["json"].read_text())
    assert d["schema"] == "sepconv-bench/1"
    assert {"cpu", "cores_physical", "cores_logical", "memory_gib", "os"} <= set(d["machine"])
    assert {"sepconv", "tvm", "torch", "onnxruntime", "python"} <= set(d["versions"])
    s = d["settings"]
    assert (s["runs"], s["warmup"], s["threads"], s["batch"], s["device"]) == (
        RUNS,
        WARMUP,
        2,
        1,
        "local",
    )
    assert s["timing_order"][-1] == "sepconv"  # TVM's spinning pool must not slow the peers
    assert [m["name"] for m in d["models"]] == MODELS
    for m in d["models"]:
        assert m["params"] > 0 and m["macs"] > 0 and m["input_shape"] == [1, 3, 32, 32]
        # sepconv-no-ops: a second build of the same module in one process (own library path)
        for name in ("sepconv", "torch", "onnxruntime", "sepconv-no-ops", "spy"):
            r = m["systems"][name]
            assert r["status"] == "ok", r
            assert r["validation"]["passed"] and r["validation"]["max_abs_error"] is not None
            t = r["latency_ms"]
            assert t["runs"] == RUNS and t["p10"] <= t["median"] <= t["p90"]
            assert t["rounds"] == min(5, RUNS) == len(t["round_medians"])
        ours = m["systems"]["sepconv"]["info"]
        # a host whose CPU has no records of its own may still find other CPUs' (Zen 4 here)
        elsewhere = ours["tasks_tuned_on_other_cpus"]
        assert ours["tuned"] in (
            "untuned" + (f" ({elsewhere} tasks tuned on other CPUs)" if elsewhere else ""),
            f"tuned {ours['tasks_tuned']}/{ours['tasks_total']} tasks",
        )
        assert set(m["speedup"]) == {"torch", "onnxruntime", "sepconv-no-ops", "spy"}
    md = files["markdown"].read_text()
    for text in ("| model |", "`mobilenet_v1:0.25@32`", "sepconv schedules", "vs onnxruntime"):
        assert text in md


def test_failed_validation_is_marked_and_not_timed(bench):
    report, files, _ = bench
    for m in report.models:
        r = m.systems["wrong"]
        assert r.status == "FAIL" and r.latency_ms is None
        assert r.validation["passed"] is False and "differs from eager PyTorch" in r.reason
    assert Wrong.calls == len(MODELS)  # validated once per model, never run again
    rounds = min(5, RUNS)  # the default rounds, at most one per run
    warmups = WARMUP + (rounds - 1) * max(1, -(-WARMUP // rounds))
    assert Spy.calls == len(MODELS) * (1 + warmups + RUNS)
    assert report.failed
    assert "FAIL [" in files["markdown"].read_text()


def test_unavailable_peers_are_reported_not_crashed(bench):
    report, files, _ = bench
    for m in report.models:
        assert m.systems["not-here"].status == "unavailable"
        assert m.systems["not-here"].reason == "not installed on this machine"
        assert m.systems["export-fails"].status == "unavailable"
        assert m.systems["crashes"].status == "FAIL"
        assert "prepare failed: backend exploded" in m.systems["crashes"].reason
    md = files["markdown"].read_text()
    assert "n/a [" in md and "not-here: not installed on this machine" in md


def test_peers_do_not_run_on_remote_devices():
    settings = BenchSettings(device="tracker://127.0.0.1:9190/rpi4")
    for peer in (TorchEager, TorchCompile, OnnxRuntime):
        assert peer(settings).available() == LOCAL_ONLY
    assert TorchEager(BenchSettings()).available() is None


def test_torch_compile_unavailable_not_crashed(monkeypatch):
    import sepconv.bench.peers as peers

    monkeypatch.setattr(peers, "_cxx_compiler", lambda: None)
    assert "C++ compiler" in TorchCompile(BenchSettings()).available()

    def broken(module, **kw):
        def fn(x):
            raise RuntimeError("InductorError: no working C++ compiler")

        return fn

    monkeypatch.setattr(torch, "compile", broken)
    with pytest.raises(PeerUnavailable, match="torch.compile failed"):
        TorchCompile(BenchSettings()).prepare(torch.nn.ReLU(), torch.zeros(1))


def test_time_interleaved_reverses_order_and_pools_samples():
    calls: list[str] = []

    def system(name):
        def fn(x):
            calls.append(name)

        return fn

    def broken(x):
        calls.append("broken")
        raise RuntimeError("segfault soon")

    fns = {"a": system("a"), "b": system("b"), "broken": broken}
    out = time_interleaved(fns, None, warmup=2, runs=7, rounds=3, settle_s=0)
    assert out["a"].runs == out["b"].runs == 7  # 3 + 2 + 2, pooled
    assert isinstance(out["broken"], RuntimeError)  # reported, not retried in later rounds
    assert calls.count("broken") == 1
    # round 1: a, b, broken (warm-up 2); round 2 reversed (warm-up 1, broken dropped); round 3
    blocks = [k for i, k in enumerate(calls) if i == 0 or calls[i - 1] != k]
    assert blocks == ["a", "b", "broken", "b", "a", "b"]
    assert calls.count("a") == 2 + 3 + 1 + 2 + 1 + 2
    # each round's median is kept, in round order, for ratios paired by round
    assert len(out["a"].round_medians_ms) == len(out["b"].round_medians_ms) == 3


def _timed(rounds: list[float], runs_per_round: int = 10) -> Timing:
    """A system timed in interleaved rounds, each round's runs all at that round's time."""
    t = Timing.from_samples([ms for ms in rounds for _ in range(runs_per_round)])
    t.round_medians_ms = tuple(rounds)
    return t


# b takes twice a's time. A slow phase (×1.5) begins inside round 0, after b's block and before
# a's, and ends after round 2.
SLOW_A = [1.5, 1.5, 1.5, 1.0, 1.0]
SLOW_B = [2.0, 3.0, 3.0, 2.0, 2.0]


def test_a_slow_phase_that_splits_a_round_moves_pooled_medians_not_paired_ratios():
    a, b = _timed(SLOW_A), _timed(SLOW_B)
    assert b.median_ms / a.median_ms == pytest.approx(2.0 / 1.5)  # the pooled medians: wrong
    assert paired_ratio(b, a) == pytest.approx(2.0) == time_ratio(b, a)


def test_ratios_fall_back_to_medians_without_enough_common_rounds():
    a, b = _timed([1.0, 1.5]), _timed([3.0, 2.0])
    assert paired_ratio(b, a) is None  # two rounds: too few to pair
    assert time_ratio(b, a) == pytest.approx(b.median_ms / a.median_ms)
    one_block = Timing.from_samples([2.0] * 10)  # a remote system: timed on its device
    assert paired_ratio(one_block, a) is None
    assert time_ratio(one_block, _timed(SLOW_A)) == pytest.approx(2.0 / 1.5)


def test_bench_speedups_are_paired_by_round():
    def system(rounds):
        t = _timed(rounds)
        return SystemResult("ok", latency_ms={"median": t.median_ms, "round_medians": rounds})

    m = ModelResult("m", systems={"sepconv": system(SLOW_A), "peer": system(SLOW_B)})
    assert m.speedup() == {"peer": pytest.approx(2.0)}
    m.systems["peer"].latency_ms.pop("round_medians")  # a stored report without them
    assert m.speedup()["peer"] == pytest.approx(m.median("peer") / m.median("sepconv"))


def test_peer_names():
    assert parse_peers("torch, onnxruntime,torch") == ["torch", "onnxruntime"]
    assert parse_peers("none") == [] and parse_peers("") == []
    with pytest.raises(SepconvError, match="valid peers: torch, torch.compile, onnxruntime"):
        parse_peers("torch,tensorrt")
    with pytest.raises(SepconvError, match="unknown model"):
        run_bench(["mobilenet_v9"], "torch", progress=False)
    with pytest.raises(SepconvError, match="rounds ≥ 1"):
        run_bench(["mobilenet_v1"], "torch", rounds=0, progress=False)


def test_latency_frontier():
    # b does more MACs than a in less time: a is off the frontier (MACs misled).
    pts = [("a", 100.0, 5.0), ("b", 200.0, 4.0), ("c", 400.0, 9.0), ("d", 50.0, 1.0)]
    assert latency_frontier(pts) == ["d", "b", "c"]


def test_cli_bench_writes_report(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TVM_NUM_THREADS", "2")
    out = tmp_path / "report"
    argv = ["bench", MODELS[0], "--peers", "torch", "--runs", "3", "--warmup", "1"]
    # --mcpu haswell: AVX2 code, which every host of ours runs (an AVX-512 one too)
    argv += ["--mcpu", "haswell"]
    assert main([*argv, "--settle", "0", "--threads", "2", "--report", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert f"`{MODELS[0]}`" in stdout and "report:" in stdout
    d = json.loads((out / "report.json").read_text())
    assert list(d["models"][0]["systems"]) == ["sepconv", "torch"]
    assert d["settings"]["mcpu"] == d["settings"]["target_spec"]["mcpu"] == "haswell"
    assert d["models"][0]["systems"]["sepconv"]["info"]["target"] == "x86_64-avx2"
    assert (out / "latency_vs_macs.png").stat().st_size > 0
    assert (out / "speedup.png").stat().st_size > 0


def test_cli_unknown_peer_is_one_line_error(capsys):
    assert main(["bench", MODELS[0], "--peers", "torch,tensorrt"]) == EXIT_ERROR
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: unknown peer 'tensorrt'")
    assert "torch, torch.compile, onnxruntime" in err[0]


def test_cli_bench_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["bench", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "usage: sepconv bench" in out and "--peers" in out and "--report" in out


# --precision int8 ---------------------------------------------------------------------------

INT8_MODEL = "mobilenet_v2:0.35@32"
# Tiny random-weight models quantize far below MIN_SQNR_DB (README, "int8"): a low floor that
# still fails a wrong answer (Garbage: −6 dB). Measured here: sepconv 7, ONNX Runtime 11, NNCF 3.
INT8_FLOOR_DB = 1.0


class Noisy(Peer):
    """An int8 stand-in: eager output plus noise 20 dB down — passes the int8 rule, would fail
    the fp32 tolerance by far."""

    name = "noisy-int8"
    precision = "int8"

    def prepare(self, module, example):
        def fn(x):
            with torch.no_grad():
                y = module(x)
            return y + 0.1 * y.std() * torch.randn(y.shape, generator=torch.Generator())

        return Prepared(fn)


class Garbage(Wrong):
    """A broken int8 system (the sign flipped: −6 dB): FAIL by the SQNR rule, never timed."""

    name = "garbage-int8"
    precision = "int8"
    calls = 0

    @staticmethod
    def spoil(y):
        return -y


@pytest.fixture(scope="module")
def calibration_file(tmp_path_factory):
    import numpy as np

    path = tmp_path_factory.mktemp("calibration") / "cal.npy"
    np.save(path, np.random.default_rng(0).standard_normal((12, 3, 32, 32), dtype=np.float32))
    return path


@pytest.fixture(scope="module")
def int8_bench(tmp_path_factory, calibration_file):
    Garbage.calls = 0
    report = _run_bench(
        [INT8_MODEL],
        ["sepconv-fp32", "onnxruntime", "onnxruntime-int8", "openvino-int8", Noisy, Garbage],
        precision="int8",
        calibration=calibration_file,
        min_sqnr_db=INT8_FLOOR_DB,
        threads=1,
    )
    out = tmp_path_factory.mktemp("int8-report")
    return report, report.write(out)


def _has_nncf() -> bool:
    import importlib.util

    return importlib.util.find_spec("nncf") is not None


def test_int8_bench_validates_by_sqnr_and_reports_it(int8_bench, calibration_file):
    report, files = int8_bench
    d = json.loads(files["json"].read_text())
    s = d["settings"]
    assert (s["precision"], s["observer"], s["min_sqnr_db"]) == ("int8", "histogram", 1.0)
    assert s["calibration"] == str(calibration_file)
    m = d["models"][0]
    # every int8 system saw the same 12 samples, read once
    assert m["calibration"]["kind"] == "files" and m["calibration"]["samples"] == 12
    systems = m["systems"]
    timed = ["sepconv", "sepconv-fp32", "onnxruntime", "onnxruntime-int8", "noisy-int8"]
    if _has_nncf():
        ov = systems["openvino-int8"]
        assert ov["info"]["calibration_samples"] == 12
        # NNCF's int8 of this random-weight 32×32 model collapses on AVX-512 VNNI hosts (0.4 dB
        # against fp32, measured with OpenVINO 2026.4 alone); elsewhere it passes. Either way
        # it was validated before timing, and a failure is reported, not timed
        if ov["status"] == "FAIL":
            assert "dB vs fp32 eager PyTorch < 1 dB" in ov["reason"] and ov["latency_ms"] is None
        else:
            timed.append("openvino-int8")
    else:
        assert systems["openvino-int8"]["status"] == "unavailable"
    for name in timed:
        r = systems[name]
        assert r["status"] == "ok", (name, r)
        assert r["latency_ms"]["runs"] == RUNS
        v = r["validation"]
        assert v["passed"]
        if r["precision"] == "int8":
            assert v["sqnr_db"] >= INT8_FLOOR_DB and 0 < v["cosine"] <= 1
            assert v["rule"] == "SQNR vs fp32 eager >= 1 dB"
        else:
            assert v["max_abs_error"] <= v["tolerance"]
    assert [systems[n]["precision"] for n in ("sepconv", "sepconv-fp32", "onnxruntime")] == [
        "int8",
        "fp32",
        "fp32",
    ]
    assert systems["sepconv"]["info"]["quantization"]["samples"] == 12
    assert systems["onnxruntime-int8"]["info"]["calibration_samples"] == 12
    # sepconv's own int8 check: the integer kernels against its simulated quantization
    own = systems["sepconv"]["validation"]["own"]
    assert own["passed"] and "each operator" in own["rule"]
    assert "within 1 step" in own["operators"]
    assert set(m["speedup"]) >= {"sepconv-fp32", "onnxruntime", "onnxruntime-int8"}
    # int8 over its own fp32 (openvino's fp32 is not in this run)
    assert set(m["int8_speedup"]) == {"sepconv", "onnxruntime-int8"}
    assert m["int8_speedup"]["sepconv"] == pytest.approx(m["speedup"]["sepconv-fp32"])
    md = files["markdown"].read_text()
    for text in (
        "# sepconv bench (int8)",
        "| sepconv (int8) | sepconv-fp32 |",
        "int8 systems by SQNR ≥ 1 dB against fp32 eager",
        "vs sepconv-fp32",
        "vs onnxruntime-int8",
        "onnxruntime-int8 vs onnxruntime",
        "| model | system | SQNR dB | cosine | vs simulated quantization |",
    ):
        assert text in md, text
    ours = systems["sepconv"]
    assert f"· {ours['validation']['sqnr_db']:.1f} dB" in md


@pytest.mark.skipif(platform.machine() != "x86_64", reason="x86 CPUs named")
def test_onnxruntime_int8_is_quantized_for_sepconvs_code_isa():
    """AVX2 code (no VNNI: sepconv narrows its activations) is measured against ONNX Runtime
    quantized as for an AVX2 host — 7-bit, as ONNX Runtime documents there —, on any host."""
    from sepconv.bench.peers import ort_reduce_range

    assert ort_reduce_range("haswell") is True
    assert ort_reduce_range("icelake-server") is False  # VNNI: the full u8 range
    assert ort_reduce_range("alderlake") is False  # AVX-VNNI's 256-bit vpdpbusd


def test_int8_broken_peer_fails_by_sqnr_and_is_not_timed(int8_bench):
    report, files = int8_bench
    r = report.models[0].systems["garbage-int8"]
    assert r.status == "FAIL" and r.latency_ms is None and r.precision == "int8"
    assert r.validation["passed"] is False and r.validation["sqnr_db"] < 0
    assert r.reason.startswith("SQNR -6.0 dB vs fp32 eager PyTorch < 1 dB"), r.reason
    assert Garbage.calls == 1
    assert report.failed
    assert "garbage-int8: SQNR -6.0 dB" in files["markdown"].read_text()


def test_openvino_int8_without_nncf_is_unavailable_not_crashed(monkeypatch):
    from sepconv.bench.peers import OpenVinoInt8
    from sepconv.bench.runner import _prepare_and_validate

    monkeypatch.setitem(sys.modules, "nncf", None)  # import nncf → ImportError
    peer = OpenVinoInt8(BenchSettings(precision="int8"))
    reason = peer.available()
    assert reason.startswith("nncf is not installed")
    result, prepared = _prepare_and_validate(peer, reason, None, None, [], peer.settings)
    assert (result.status, result.reason, result.precision) == ("unavailable", reason, "int8")
    assert prepared is None


def test_openvino_int8_quantizer_failure_is_unavailable(monkeypatch):
    nncf = pytest.importorskip("nncf")
    pytest.importorskip("openvino")
    from sepconv.bench.peers import OpenVinoInt8

    def broken(*args, **kwargs):
        raise RuntimeError("this OpenVINO is too new for this NNCF")

    monkeypatch.setattr(nncf, "quantize", broken)
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.ReLU()).eval()
    with pytest.raises(PeerUnavailable, match="nncf.quantize failed: RuntimeError: this"):
        OpenVinoInt8(BenchSettings(precision="int8")).prepare(module, torch.zeros(1, 3, 8, 8))


def test_bench_precision_errors(tmp_path):
    model = "mobilenet_v1:0.25@32"
    with pytest.raises(SepconvError, match="precision fp32 or int8, not 'fp16'"):
        run_bench([model], "torch", precision="fp16", progress=False)
    with pytest.raises(SepconvError, match=r"calibration \(--calibration\) is for precision"):
        run_bench([model], "torch", calibration=tmp_path, progress=False)
    with pytest.raises(SepconvError, match=r"observer \(--observer\) is for precision"):
        run_bench([model], "torch", observer="minmax", progress=False)
    with pytest.raises(SepconvError, match="unknown observer 'mse'; choose one of histogram"):
        run_bench([model], "torch", precision="int8", observer="mse", progress=False)
    with pytest.raises(SepconvError, match="no such calibration file or folder"):
        run_bench([model], "torch", precision="int8", calibration=tmp_path / "x", progress=False)
    with pytest.raises(SepconvError, match="sepconv-fp32 peer is sepconv's fp32 build beside"):
        run_bench([model], "sepconv-fp32", progress=False)


def test_cli_bench_precision_errors_are_one_line(capsys):
    for argv, text in (
        (["--precision", "fp16"], "error: sepconv bench measures precision fp32 or int8, not"),
        (["--calibration", "cal.npy"], "error: --calibration is for --precision int8"),
    ):
        assert main(["bench", MODELS[0], *argv]) == EXIT_ERROR
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(text), err


def test_cli_bench_int8_options_reach_run_bench(monkeypatch, tmp_path, capsys):
    import sepconv.bench as bench_api
    from sepconv.bench import BenchReport

    seen = {}

    def fake(models, peers, **kw):
        seen.update(kw, peers=peers)
        return BenchReport({}, {}, {}, [])

    monkeypatch.setattr(bench_api, "run_bench", fake)
    monkeypatch.setattr(BenchReport, "write", lambda self, out: {})
    monkeypatch.setattr(BenchReport, "markdown", lambda self: "table")
    argv = ["bench", MODELS[0], "--precision", "int8", "--calibration", "cal.npy"]
    assert main([*argv, "--observer", "minmax", "--min-sqnr-db", "3"]) == 0
    assert seen["peers"] == ["sepconv-fp32", "onnxruntime", "onnxruntime-int8", "openvino-int8"]
    assert (seen["precision"], seen["calibration"], seen["observer"], seen["min_sqnr_db"]) == (
        "int8",
        "cal.npy",
        "minmax",
        3.0,
    )
    assert "sepconv int8 vs sepconv-fp32" in capsys.readouterr().err
