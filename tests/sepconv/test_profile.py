"""`sepconv profile`: one row per fused function with its work, shares, machine limits, peers'
own per-node profiles matched by layer, the files, the CLI; and the OpenVINO / ExecuTorch peers.

Tiny model, a few runs, small limit measurements; no timing assertions.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import re
import subprocess
import sys

import pytest
import torch

from sepconv.bench import BenchSettings, PeerUnavailable, time_call
from sepconv.bench import profile as P
from sepconv.bench.limits import measure_limits
from sepconv.bench.peers import ExecuTorchXnnpack, OpenVino
from sepconv.bench.runner import _arrays, _validate
from sepconv.cli import main
from sepconv.errors import SepconvError

PNG = b"\x89PNG\r\n\x1a\n"
SMALL_LIMITS = {"sgemm_n": 256, "copy_mb": 16, "cache_copy_mb": 1, "runs": 3}
# TinySeparable at batch 2, 16×16 (tests/conftest.py), counted by hand
STEM = 2 * 8 * 8 * 8 * 3 * 3 * 3  # N · Co · 8×8 out (stride 2) · Ci · 3×3
DW, PW = 2 * 8 * 8 * 8 * 3 * 3, 2 * 8 * 8 * 8 * 8
LINEAR = 2 * 8 * 10


def _have(module: str) -> bool:
    try:
        __import__(module)
        return True
    except ImportError:
        return False


@pytest.fixture(scope="module")
def report(tiny_artifact):
    path, model = tiny_artifact
    compare = ["onnxruntime"] + ["openvino"] * _have("openvino")
    return P.profile(
        path, threads=1, runs=3, warmup=1, compare=compare, reference=model,
        limits_kw=SMALL_LIMITS,
    )  # fmt: skip


def test_one_row_per_function_with_its_work(report, tiny_artifact):
    from sepconv.compiler.artifact import read_manifest

    _, manifest = read_manifest(tiny_artifact[0])
    functions = manifest.build["functions"]
    names = [r.name for r in report.rows]
    assert len(names) == len(set(names)) and set(names) <= set(functions)
    # every function that does multiply-adds runs (nothing else can compute the convs)
    assert {n for n, f in functions.items() if f["macs"]} <= set(names)
    assert sum(r.share for r in report.rows) == pytest.approx(1.0, abs=1e-6)
    assert [r.us for r in report.rows] == sorted((r.us for r in report.rows), reverse=True)
    by_blocks = {tuple(r.mac_blocks): r for r in report.rows}
    stem = by_blocks[(STEM,)]
    assert stem.macs == STEM and stem.calls == 1
    # input 2×16×16×3, weight 3×3×3×8, bias 8, output 2×8×8×8 (fp32)
    assert stem.bytes == 4 * (2 * 16 * 16 * 3 + 3 * 3 * 3 * 8 + 8 + 2 * 8 * 8 * 8)
    assert stem.intensity == pytest.approx(2 * STEM / stem.bytes)
    fused = by_blocks[(DW, PW)]
    assert fused.kind == "dw→pw" and fused.macs == DW + PW
    assert by_blocks[(LINEAR,)].macs == LINEAR
    assert all(r.us >= 0 and r.calls >= 1 for r in report.rows)
    assert report.model_ms > 0 and report.functions_ms > 0


def test_limits_are_measured_and_positive(report):
    """Limits are measured with the threads the model really ran with: 1 as asked, unless TVM's
    pool had already started in this process (an earlier test ran a model) with its own count."""
    lim = report.limits
    assert lim.threads == report.threads == (P._tvm_threads() or 1)
    assert lim.fma_gflops > 0 and lim.copy_gbs > 0 and lim.cache_copy_gbs > 0
    assert lim.ridge == pytest.approx(lim.fma_gflops / lim.copy_gbs)
    assert lim.sgemm_n == SMALL_LIMITS["sgemm_n"]
    assert len(lim.measured) == 2  # before and after the model's runs, the higher kept
    assert lim.fma_gflops == max(m["fma_gflops"] for m in lim.measured)
    # the peak: the FMA loop, built for the artifact's CPU, or the sgemm where that is higher
    assert lim.fma_loop_gflops > 0 and lim.sgemm_gflops > 0
    assert lim.mcpu == report.target["mcpu"]
    for m in lim.measured:
        assert m["fma_gflops"] == max(m["fma_loop_gflops"], m["sgemm_gflops"])


def test_narrower_code_is_held_to_its_own_loop_not_the_hosts_sgemm():
    """AVX2 code on an AVX-512 host: torch's sgemm runs AVX-512, so only the AVX2 FMA loop is
    that code's ceiling."""
    from sepconv.bench.limits import _vector_bits

    if platform.machine() != "x86_64" or _vector_bits(None) <= 256:
        pytest.skip("needs a host with vectors wider than AVX2's")
    lim = measure_limits(1, mcpu="haswell", **SMALL_LIMITS)
    assert lim.fma_loop_gflops > 0 and lim.sgemm_gflops > 0
    assert lim.fma_gflops == lim.fma_loop_gflops


@pytest.mark.skipif(platform.machine() != "x86_64", reason="reads x86 assembly")
@pytest.mark.parametrize("mcpu, register", [("haswell", "ymm"), ("skylake-avx512", "zmm")])
def test_fma_loop_is_vector_fmas_on_the_cpus_registers(mcpu, register):
    """Compiled (not run: an AVX2 host cannot run the AVX-512 one) for each ISA: the loop body
    is vector FMAs on that ISA's registers, the count of chains the FLOP figure assumes."""
    from sepconv.bench.limits import FMA_CHAINS, build_fma_loop

    lib, shape, flop, spec = build_fma_loop(2, mcpu, iters=10)
    lanes = 8 if register == "ymm" else 16
    assert shape == (2, FMA_CHAINS * lanes) and flop == 2 * 2 * 10 * FMA_CHAINS * lanes
    asm = lib.mod.inspect_source("asm")
    fmas = re.findall(rf"vfmadd\w*\s+[^\n]*%{register}", asm)
    assert len(fmas) >= FMA_CHAINS
    if register == "ymm":
        assert "zmm" not in asm
    with pytest.raises(SepconvError, match="threads must be ≥ 1"):
        measure_limits(0)


@pytest.mark.skipif(platform.machine() != "x86_64", reason="reads x86 assembly")
@pytest.mark.parametrize(
    "mcpu, instructions",
    [("haswell", ["vpmaddubsw", "vpmaddwd"]), ("skylake-avx512", ["vpmaddubsw", "vpmaddwd"]),
     ("icelake-server", ["vpdpbusd"]), ("alderlake", ["vpdpbusd"])],
)  # fmt: skip
def test_int8_dot_loop_is_the_kernels_dot_instruction(mcpu, instructions):
    """The int8 peak loop runs the instruction our int8 kernels tensorize with on that CPU
    (compiled, not run), once per chain per step: the ops figure counts 2 per multiply-add."""
    from sepconv.bench.limits import FMA_CHAINS, build_dot_loop

    lib, shape, ops, name, spec = build_dot_loop(2, mcpu, iters=10)
    lanes = 8 if mcpu in ("haswell", "alderlake") else 16
    assert shape == (2, FMA_CHAINS * lanes) and ops == 2 * 2 * 10 * FMA_CHAINS * 4 * lanes
    assert name.startswith(f"sepconv_dot_{lanes}x4")
    asm = lib.mod.inspect_source("asm")
    for instruction in instructions:
        assert len(re.findall(rf"{instruction}\s", asm)) >= FMA_CHAINS, instruction
    assert (mcpu in ("icelake-server", "alderlake")) == ("vpmaddubsw" not in asm)


def test_an_int8_profile_holds_its_integer_operators_to_the_int8_peak(tmp_path):
    """An int8 artifact's profile measures the dot loop's peak and holds the integer operators'
    % peak to it; float functions keep the FMA peak."""
    import sepconv
    from tests.nets import tiny_separable

    pytest.importorskip("torchao")
    art = sepconv.compile(
        tiny_separable(), precision="int8", example_input=torch.randn(1, 3, 16, 16),
        out=tmp_path / "int8", tune_logs=False,
    )  # fmt: skip
    rep = P.profile(art.path, threads=1, runs=3, warmup=1, limits_kw=SMALL_LIMITS)
    lim = rep.limits
    integer = [r for r in rep.rows if r.integer]
    assert integer and all("sepconv_q" in r.name for r in integer)
    assert not [r for r in rep.rows if "sepconv_q" in r.name and not r.integer]
    if not lim.int8_dot:  # no u8·s8 dot on this CPU: the FMA peak is every function's
        assert lim.int8_gops == 0 and all(r.peak(lim) == lim.fma_gflops for r in rep.rows)
        return
    assert lim.int8_gops > 0 and len(lim.measured) == 2
    assert all(r.peak(lim) == lim.int8_gops for r in integer)
    row = next(r for r in integer if r.gflops)
    assert row.to_json(lim)["frac_peak"] == pytest.approx(row.gflops / lim.int8_gops)
    assert f"int8 peak {lim.int8_gops:.1f} GOP/s" in rep.markdown()


def test_onnxruntime_profile_matches_every_conv(report):
    ort = report.peers["onnxruntime"]
    assert ort.status == "ok", ort.reason
    assert ort.validation["passed"]
    assert ort.nodes and ort.total_us > 0
    m = ort.matched
    assert m["our_reductions"] == 4  # stem, dw, pw, linear
    assert m["matched"] == 4
    # ORT's NCHWc convs pad 8 channels to its vector block (16 floats on AVX-512, 8 on AVX2), so
    # a conv's MACs equal ours or are ours times the padding; the linear is never padded
    macs = {n.name: n.macs for n in ort.nodes}
    for r in report.rows:
        if r.mac_blocks:
            match = r.peers["onnxruntime"]
            assert len(match.nodes) == len(r.mac_blocks)
            for ours, node in zip(r.mac_blocks, match.nodes):
                assert macs[node] % ours == 0 and 1 <= macs[node] // ours <= P.MAX_PADDING
            assert match.exact == all(macs[n] == b for n, b in zip(match.nodes, r.mac_blocks))
        else:
            assert "onnxruntime" not in r.peers
    assert next(r for r in report.rows if "_linear_" in r.name).peers["onnxruntime"].exact


@pytest.mark.skipif(not _have("openvino"), reason="openvino is not installed (sepconv[bench])")
def test_openvino_profile_matches_every_conv(report):
    ov = report.peers["openvino"]
    assert ov.status == "ok", ov.reason
    assert ov.validation["passed"]
    assert ov.matched["matched"] == 4 and ov.matched["exact_macs"] == 4


def test_match_by_order_checked_by_macs():
    rows = [
        P.FunctionRow("a", "conv", 1, 5.0, 5.0, 0.3, 100, 10, [100]),
        P.FunctionRow("b", "dw→pw", 1, 5.0, 5.0, 0.3, 30, 10, [10, 20]),
        P.FunctionRow("c", "conv", 1, 5.0, 5.0, 0.2, 4, 10, [4]),
        P.FunctionRow("d", "conv", 1, 5.0, 5.0, 0.2, 7, 10, [7]),
    ]
    peer = P.PeerProfile("x", "ok", nodes=[
        P.PeerNode("c1", "Conv", 4.0, 100), P.PeerNode("add", "Add", 1.0),
        P.PeerNode("c3", "Conv", 2.0, 20), P.PeerNode("c2", "Conv", 2.0, 10),  # other order
        P.PeerNode("c4", "Conv", 1.0, 8),  # our 4 MACs with channels padded 2×
        P.PeerNode("c5", "Conv", 3.0, 999),  # nothing of ours: never forced onto d
    ])  # fmt: skip
    P.match_peer(["a", "b", "c", "d"], rows, peer)
    assert rows[0].peers["x"].nodes == ["c1"] and rows[0].peers["x"].exact
    assert rows[1].peers["x"].nodes == ["c2", "c3"] and rows[1].peers["x"].exact
    assert rows[2].peers["x"].nodes == ["c4"] and not rows[2].peers["x"].exact
    assert "x" not in rows[3].peers
    m = peer.matched
    assert (m["matched"], m["exact_macs"], m["our_reductions"]) == (4, 3, 5)
    assert m["unmatched_peer_us"] == pytest.approx(4.0)  # c5 and the Add


@pytest.mark.skipif(
    not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
    reason="needs an affinity mask of two CPUs or more",
)
def test_profile_gives_the_caller_its_cpu_affinity_back(tiny_artifact):
    """A fresh process whose first TVM call is ``profile(threads=1)``: TVM's pool starts
    there and pins the calling thread to one core (its master-thread affinity). Afterwards the
    caller runs on the CPUs it had — before ``restores_affinity``, on core 0 alone, and so did
    every thread it started later (the order-dependent failure of
    ``test_host_features_agree_with_proc_cpuinfo`` after this file)."""
    path, _ = tiny_artifact
    code = (
        "import os, sys\n"
        "from sepconv.bench import profile as P\n"
        "before = os.sched_getaffinity(0)\n"
        f"P.profile({str(path)!r}, threads=1, runs=1, warmup=0, limits_kw={SMALL_LIMITS!r})\n"
        "after = os.sched_getaffinity(0)\n"
        "print(sorted(before), sorted(after))\n"
        "sys.exit(0 if after == before else 1)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TVM_NUM_THREADS"}
    run = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, (run.stdout[-500:], run.stderr[-2000:])


def test_files_are_written(report, tmp_path):
    j = report.write_json(tmp_path / "p.json")
    md = report.write_markdown(tmp_path / "p.md")
    png = report.write_png(tmp_path / "roof.png")
    data = json.loads(j.read_text())
    assert data["schema"] == P.SCHEMA and len(data["functions"]) == len(report.rows)
    row = next(f for f in data["functions"] if f["mac_blocks"] == [STEM])
    assert row["frac_fma_peak"] == pytest.approx(row["gflops"] / data["limits"]["fma_gflops"])
    assert data["limits"]["copy_gbs"] > 0 and "onnxruntime" in data["peers"]
    text = md.read_text()
    assert "| function |" in text and "onnxruntime µs" in text and "GFLOP/s" in text
    assert png.read_bytes().startswith(PNG)


def test_bad_input_is_a_clear_error(tiny_artifact, tmp_path):
    import sepconv

    assert sepconv.profile is P.profile  # the front door's name for it
    with pytest.raises(SepconvError, match="compares with onnxruntime, openvino"):
        P.profile(tiny_artifact[0], compare="tensorrt")
    with pytest.raises(SepconvError, match="artifact path or a loaded model"):
        P.profile(42)
    with pytest.raises(SepconvError):
        P.profile(tmp_path / "missing.sepconv")
    # compiled from an nn.Module: the peers need it passed (nothing to rebuild it from)
    with pytest.raises(SepconvError, match="needs the eager model.*reference"):
        P.profile(tiny_artifact[0], compare="onnxruntime")


def test_old_manifest_without_costs_profiles_time_and_bytes(artifact_copy, caplog):
    path, _ = artifact_copy
    manifest = path / "manifest.json"
    data = json.loads(manifest.read_text())
    del data["build"]["functions"]
    manifest.write_text(json.dumps(data))
    rep = P.profile(path, threads=1, runs=2, warmup=0, limits_kw=SMALL_LIMITS)
    assert "recompile" in caplog.text
    assert rep.rows and all(r.macs is None and r.kind == "?" for r in rep.rows)
    assert not any(r.name.startswith("vm.") for r in rep.rows)
    # bytes from the tensors the VM passed: the stem's input, weight, bias and output
    # ("conv_" not "conv": every operator of ours is named fused_sepconv_…)
    stem = next(r for r in rep.rows if "_conv_" in r.name)
    assert stem.bytes == 4 * (2 * 16 * 16 * 3 + 3 * 3 * 3 * 8 + 8 + 2 * 8 * 8 * 8)


def test_cli_profile_writes_json(tiny_artifact, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(P, "measure_limits", functools.partial(measure_limits, **SMALL_LIMITS))
    out = tmp_path / "prof.json"
    rc = main(["profile", str(tiny_artifact[0]), "--runs", "2", "--warmup", "0", "--json",
               str(out), "--markdown", str(tmp_path / "p.md")])  # fmt: skip
    assert rc == 0
    data = json.loads(out.read_text())
    assert {f["name"] for f in data["functions"]} and data["limits"]["fma_gflops"] > 0
    assert "| function |" in capsys.readouterr().out
    assert (tmp_path / "p.md").is_file()
    assert main(["profile", str(tiny_artifact[0]), "--compare", "tvm"]) == 2


@pytest.mark.skipif(not _have("openvino"), reason="openvino is not installed (sepconv[bench])")
def test_openvino_peer_validates_and_times(tiny_artifact):
    _, model = tiny_artifact
    peer = OpenVino(BenchSettings(threads=1))
    assert peer.available() is None
    x = torch.randn(2, 3, 16, 16)
    prepared = peer.prepare(model.eval(), x)
    assert prepared.info["INFERENCE_PRECISION_HINT"] == "f32"
    assert prepared.info["INFERENCE_NUM_THREADS"] == 1
    with torch.no_grad():
        refs = _arrays(model(x))
    validation, problem = _validate(prepared.fn(x), refs)
    assert problem is None and validation["passed"]
    t = time_call(prepared.fn, x, warmup=1, runs=3)
    assert t.runs == 3 and t.median_ms > 0


def test_executorch_unavailable_is_reported_not_crashed(monkeypatch):
    monkeypatch.setitem(sys.modules, "executorch", None)  # import fails as if not installed
    reason = ExecuTorchXnnpack(BenchSettings()).available()
    assert reason is not None and "executorch" in reason and "pip install" in reason
    remote = ExecuTorchXnnpack(BenchSettings(device="rpc://127.0.0.1:9090")).available()
    assert remote is not None and "local" in remote


@pytest.mark.skipif(not _have("executorch"), reason="executorch is not installed")
def test_executorch_peer_validates(tiny_artifact):
    _, model = tiny_artifact
    peer = ExecuTorchXnnpack(BenchSettings(threads=1))
    reason = peer.available()
    if reason is not None:
        pytest.skip(reason)
    x = torch.randn(2, 3, 16, 16)
    try:
        prepared = peer.prepare(model.eval(), x)
    except PeerUnavailable as exc:
        pytest.skip(str(exc))
    with torch.no_grad():
        refs = _arrays(model(x))
    validation, problem = _validate(prepared.fn(x), refs)
    assert problem is None and validation["passed"]
