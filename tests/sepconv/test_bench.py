"""`sepconv bench`: report contents, validation before timing, unavailable peers, the CLI.

Tiny models and a handful of runs; no timing assertions (the numbers are noise at this size).
"""

from __future__ import annotations

import json
import os

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
from sepconv.bench.report import latency_frontier
from sepconv.cli import EXIT_ERROR, main
from sepconv.errors import SepconvError

MODELS = ["mobilenet_v1:0.25@32", "mobilenet_v2:0.35@32"]
RUNS, WARMUP = 3, 1
PNG = b"\x89PNG\r\n\x1a\n"


class Wrong(Peer):
    """Runs the model but adds 1 to its output: must be marked FAIL and never timed."""

    name = "wrong"
    calls = 0

    def prepare(self, module, example):
        def fn(x):
            Wrong.calls += 1
            with torch.no_grad():
                return module(x) + 1.0

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


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    Wrong.calls = Spy.calls = 0
    env = os.environ.get("TVM_NUM_THREADS")
    try:
        report = run_bench(
            MODELS,
            ["torch", "onnxruntime", "sepconv-no-ops", Wrong, Spy, NotHere, ExportFails, Crashes],
            runs=RUNS,
            warmup=WARMUP,
            threads=2,
            settle_s=0,
            progress=False,
        )
    finally:
        if env is None:
            os.environ.pop("TVM_NUM_THREADS", None)
        else:
            os.environ["TVM_NUM_THREADS"] = env
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
            assert t["rounds"] == min(5, RUNS)
        ours = m["systems"]["sepconv"]["info"]
        assert ours["tuned"] in (
            "untuned",
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
    assert main([*argv, "--settle", "0", "--threads", "2", "--report", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert f"`{MODELS[0]}`" in stdout and "report:" in stdout
    d = json.loads((out / "report.json").read_text())
    assert list(d["models"][0]["systems"]) == ["sepconv", "torch"]
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
