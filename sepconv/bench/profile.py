"""``sepconv profile``: where a compiled model spends its time, function by function, against
this machine's limits measured in the same run — and, with ``compare``, a peer's own per-node
profile of the same model beside it::

    from sepconv.bench.profile import profile
    report = profile("build/mobilenet_v2.sepconv", threads=2, compare=["onnxruntime"])
    report.write_markdown("prof.md"); report.write_png("roofline.png")

**How functions are timed.** TVM 0.27's VM has no profiler of its own, so the profile runs the
whole model in the VM with an instrument hook (``VirtualMachine.set_instrument``) that stamps
the clock before and after every call: each fused function is timed *inside the model*, with the
caches and thread pool in the state the model leaves them — not alone on warm inputs. The hook's
own cost (a Python call each side) is measured on the VM's trivial builtins in the same runs and
subtracted from every call. Per function: the median over runs of its time per model run.
Shares are of the sum over functions; the VM's own work (allocation, reshapes) is the gap
between that sum and the model's uninstrumented latency, reported as coverage.

**Work per function** (MACs, compulsory bytes) comes from the manifest (``build.functions``,
computed at compile time by :mod:`sepconv.compiler.costs`); FLOP = 2 × MACs.

**Peers** run their own profilers: ONNX Runtime's ``enable_profiling`` trace (per-node
``kernel_time``) and OpenVINO's per-layer counters (``PERF_COUNT`` →
``get_profiling_info``). Their convolutions and matmuls are matched to ours in execution order,
one peer node per multiply-add reduction of ours (a fused dw→pw function has two), checked by
MACs; where the MACs disagree the alignment is lost and the rest is reported unmatched.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sepconv.errors import SepconvError
from sepconv.timing import Timing

from .limits import MachineLimits, measure_limits
from .runner import _arrays, _one_line, _tvm_threads, _validate, restores_affinity

log = logging.getLogger(__name__)

SCHEMA = "sepconv-profile/1"
PEER_NAMES = ("onnxruntime", "openvino")
METHOD = (
    "in-model: whole-model runs in TVM's VM with an instrument hook timing every call "
    "(hook cost measured on VM builtins and subtracted); median over runs of each function's "
    "time per model run"
)
_MAC_OPS = {  # peer op types that do multiply-adds (matched to our mac_blocks)
    "Conv", "FusedConv", "ConvInteger", "QLinearConv", "Gemm", "MatMul", "FusedGemm",
    "FusedMatMul", "Convolution", "GroupConvolution", "FullyConnected",
}  # fmt: skip


@dataclass
class PeerMatch:
    """A peer's nodes matched to one of our functions (summed over its calls)."""

    us: float  # per model run
    nodes: list[str]
    exact: bool  # every matched node's MACs equal ours
    bytes: int | None = None  # from the peer's shapes (may omit its packed weights)


@dataclass
class FunctionRow:
    name: str
    kind: str
    calls: int  # per model run, as observed
    us: float  # per model run (median over runs)
    us_per_call: float
    share: float
    macs: int | None  # per model run (all calls)
    bytes: int | None  # per model run (all calls)
    mac_blocks: list[int] = field(default_factory=list)  # per call
    peers: dict[str, PeerMatch] = field(default_factory=dict)
    record_us: float | None = None  # per run: its tuning record's time × calls, as tuned
    integer: bool = False  # an int8 operator: its ceiling is the int8 dot loop's, not the FMA's

    @property
    def flops(self) -> float | None:
        return None if self.macs is None else 2.0 * self.macs

    @property
    def intensity(self) -> float | None:
        return self.flops / self.bytes if self.flops and self.bytes else None

    @property
    def gflops(self) -> float | None:
        return self.flops / (self.us * 1e3) if self.flops and self.us > 0 else None

    @property
    def gbs(self) -> float | None:
        return self.bytes / (self.us * 1e3) if self.bytes and self.us > 0 else None

    def peak(self, limits: MachineLimits) -> float:
        """The compute ceiling this function is held to: an int8 operator's is the u8·s8 dot
        loop's (GOP/s, 2 per multiply-add) where that was measured, any other's the FMA peak."""
        return limits.int8_gops if self.integer and limits.int8_gops else limits.fma_gflops

    def to_json(self, limits: MachineLimits) -> dict:
        d = asdict(self)
        d["peers"] = {k: asdict(v) for k, v in self.peers.items()}
        d.update(
            flops=self.flops, intensity=self.intensity, gflops=self.gflops, gbs=self.gbs,
            frac_fma_peak=self.gflops / limits.fma_gflops if self.gflops else None,
            frac_peak=self.gflops / self.peak(limits) if self.gflops else None,
            frac_copy_bw=self.gbs / limits.copy_gbs if self.gbs else None,
        )  # fmt: skip
        return d


@dataclass
class PeerNode:
    name: str
    op: str
    us: float  # median per run
    macs: int | None = None
    bytes: int | None = None


@dataclass
class PeerProfile:
    name: str
    status: str  # "ok" | "FAIL" | "unavailable"
    reason: str | None = None
    nodes: list[PeerNode] = field(default_factory=list)
    total_us: float = 0.0  # sum of node times per run
    model_ms: float | None = None  # its whole-run time (median), from its own trace or clock
    matched: dict = field(default_factory=dict)  # counts: ours, matched, exact, unmatched time
    validation: dict | None = None
    info: dict = field(default_factory=dict)


@dataclass
class ProfileReport:
    artifact: str
    model: dict
    target: dict
    threads: int | None
    runs: int
    warmup: int
    model_ms: float  # uninstrumented latency (TVM time evaluator, median)
    functions_ms: float  # sum of the per-function medians
    hook_overhead_us: float
    limits: MachineLimits
    rows: list[FunctionRow]
    peers: dict[str, PeerProfile] = field(default_factory=dict)
    machine: dict = field(default_factory=dict)
    method: str = METHOD
    created: str = ""
    schema: str = SCHEMA

    @property
    def coverage(self) -> float:
        return self.functions_ms / self.model_ms if self.model_ms else 0.0

    @property
    def tuned(self) -> dict | None:
        """The functions built from tuning records: their time here and the time their records
        say (the tuner's estimate of them), per run; None when none was."""
        rows = [r for r in self.rows if r.record_us is not None]
        if not rows:
            return None
        here, records = sum(r.us for r in rows) / 1e3, sum(r.record_us for r in rows) / 1e3
        return {"functions": len(rows), "model_ms": here, "records_ms": records,
                "ratio": here / records if records else None}  # fmt: skip

    def to_json(self) -> dict:
        from .report import _finite

        return _finite(
            {
                "schema": self.schema, "created": self.created, "method": self.method,
                "artifact": self.artifact, "model": self.model, "target": self.target,
                "threads": self.threads, "runs": self.runs, "warmup": self.warmup,
                "machine": self.machine, "limits": self.limits.to_json(),
                "model_ms": self.model_ms, "functions_ms": self.functions_ms,
                "coverage": self.coverage, "hook_overhead_us": self.hook_overhead_us,
                "tuned": self.tuned,
                "functions": [r.to_json(self.limits) for r in self.rows],
                "peers": {k: asdict(v) for k, v in self.peers.items()},
            }
        )  # fmt: skip

    def markdown(self) -> str:
        return _markdown(self)

    def write_json(self, path: str | os.PathLike) -> Path:
        return _write(Path(path), json.dumps(self.to_json(), indent=2) + "\n")

    def write_markdown(self, path: str | os.PathLike) -> Path:
        return _write(Path(path), self.markdown())

    def write_png(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        return roofline_png(self, path)


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


# ---------------------------------------------------------------------------- our functions


def _kind(name: str, mac_blocks: list[int]) -> str:
    if not mac_blocks:
        return "memory"
    if "dw_pw" in name:
        return "dw→pw"
    if "sepconv_dw" in name:
        return "depthwise"
    if "sepconv_pw" in name:
        return "pointwise"
    if "matmul" in name or "dense" in name or "sepconv_linear" in name:
        return "matmul"
    return "conv"


def _tensor_bytes(t) -> int:
    try:
        n = int(np.prod([int(s) for s in t.shape]))
        return n * np.dtype(str(t.dtype)).itemsize
    except (TypeError, ValueError, AttributeError):
        return 0


def _record(compiled, arrays: list[np.ndarray], warmup: int, runs: int, functions: dict):
    """Run the model ``warmup + runs`` times under the VM's instrument hook.

    Returns (per-run list of (name, ns) calls in order, hook overhead ns, bytes per call seen
    in the first run). Calls of names that are not our PrimFuncs (VM builtins) time the hook.
    """
    import tvm
    from tvm.runtime.vm import VMInstrumentReturnKind

    vm = compiled._vm
    dev = compiled._dev
    tensors = [tvm.runtime.tensor(a, dev) for a in arrays]
    params = compiled._params
    stamps: list[tuple[str, bool, int]] = []
    clock = time.perf_counter_ns
    no_op = int(VMInstrumentReturnKind.NO_OP)
    shapes: dict[str, int] = {}

    def ours(symbol: str) -> bool:  # without costs (an older artifact): all but VM builtins
        return symbol in functions if functions else not symbol.startswith("vm.")

    def shape_hook(func, symbol, before, ret, *args):
        if before and ours(symbol) and symbol not in shapes:
            shapes[symbol] = sum(_tensor_bytes(a) for a in args if hasattr(a, "shape"))
        return no_op

    def hook(func, symbol, before, ret, *args):
        stamps.append((symbol, before, clock()))
        return no_op

    vm.set_instrument(shape_hook)
    vm["main"](*tensors, *params)
    vm.set_instrument(hook)
    per_run: list[list[tuple[str, int]]] = []
    builtin_ns: list[int] = []
    try:
        for i in range(warmup + runs):
            stamps.clear()
            vm["main"](*tensors, *params)
            if i < warmup:
                continue
            calls: list[tuple[str, int]] = []
            open_: dict[str, int] = {}
            for symbol, before, t in stamps:
                if before:
                    open_[symbol] = t
                    continue
                t0 = open_.pop(symbol, None)
                if t0 is None:
                    continue
                if ours(symbol):
                    calls.append((symbol, t - t0))
                elif symbol.startswith("vm.builtin.null_value"):
                    builtin_ns.append(t - t0)
            per_run.append(calls)
    finally:
        vm.set_instrument(None)  # no hook left on the caller's model
    overhead = float(statistics.median(builtin_ns)) if builtin_ns else 0.0
    return per_run, overhead, shapes


def _rows(per_run, overhead_ns: float, functions: dict, shapes: dict) -> list[FunctionRow]:
    from sepconv.compiler.int8.lowering import is_integer_function

    totals: dict[str, list[float]] = {}
    per_call: dict[str, list[float]] = {}
    counts: dict[str, int] = {}
    for calls in per_run:
        run_tot: dict[str, float] = {}
        run_n: dict[str, int] = {}
        for name, ns in calls:
            us = max(ns - overhead_ns, 0.0) / 1e3
            run_tot[name] = run_tot.get(name, 0.0) + us
            run_n[name] = run_n.get(name, 0) + 1
            per_call.setdefault(name, []).append(us)
        for name, us in run_tot.items():
            totals.setdefault(name, []).append(us)
        for name, n in run_n.items():
            counts[name] = max(counts.get(name, 0), n)
    med = {n: statistics.median(v) for n, v in totals.items()}
    total = sum(med.values()) or 1.0
    rows = []
    for name, us in med.items():
        cost = functions.get(name) or {}
        calls = counts[name]
        blocks = [int(b) for b in cost.get("mac_blocks", [])]
        macs = cost.get("macs")
        nbytes = cost.get("bytes") or shapes.get(name)
        record_us = cost.get("record_us")
        rows.append(
            FunctionRow(
                name=name, kind=_kind(name, blocks) if cost else "?", calls=calls, us=us,
                us_per_call=statistics.median(per_call[name]), share=us / total,
                macs=None if macs is None else int(macs) * calls,
                bytes=None if not nbytes else int(nbytes) * calls, mac_blocks=blocks,
                record_us=None if record_us is None else float(record_us) * calls,
                integer=is_integer_function(name),
            )
        )  # fmt: skip
    rows.sort(key=lambda r: -r.us)
    return rows


# ---------------------------------------------------------------------------- peers


def _shape_bytes(shapes: list[list[int]]) -> int:
    return sum(int(np.prod(s)) * 4 for s in shapes if s is not None)


def _mac_count(op: str, inputs: list, output: list | None) -> int | None:
    """MACs of a peer conv/matmul node from its shapes (None when they are not all given)."""
    if not output:
        return None
    out = int(np.prod(output))
    if op in ("Conv", "FusedConv", "Convolution") and len(inputs) >= 2 and inputs[1]:
        if len(inputs[1]) >= 3:
            return out * int(np.prod(inputs[1][1:]))
    if op == "GroupConvolution" and len(inputs) >= 2 and inputs[1] and len(inputs[1]) >= 4:
        return out * int(np.prod(inputs[1][2:]))
    if op in ("Gemm", "MatMul", "FusedGemm", "FusedMatMul", "FullyConnected") and inputs:
        if inputs[0]:
            return out * int(inputs[0][-1])
    return None


def _export_onnx(module, example, workdir: Path) -> Path:
    from .peers import BenchSettings, OnnxRuntime

    peer = OnnxRuntime(BenchSettings(build_dir=workdir))
    path = workdir / "model.onnx"
    peer._export(module.eval(), example, path)
    return path


def _profile_onnxruntime(module, example, threads, warmup, runs, workdir, refs) -> PeerProfile:
    import onnxruntime as ort

    from .peers import ort_session

    path = _export_onnx(module, example, workdir)
    sess = ort_session(
        path, threads, enable_profiling=True, profile_file_prefix=str(workdir / "ort_profile")
    )
    feed = {sess.get_inputs()[0].name: example.numpy()}
    validation, problem = _validate(sess.run(None, feed), refs)
    for _ in range(warmup + runs):
        sess.run(None, feed)
    trace = json.loads(Path(sess.end_profiling()).read_text())
    prof = PeerProfile("onnxruntime", "ok", validation=validation)
    prof.info = {"version": ort.__version__, "profiler": "SessionOptions.enable_profiling"}
    if problem:
        prof.status, prof.reason = "FAIL", problem
        return prof
    model_runs = [e for e in trace if e.get("cat") == "Session" and e.get("name") == "model_run"]
    model_runs = model_runs[-runs:]
    nodes = [e for e in trace if e.get("cat") == "Node" and e.get("name", "").endswith("_time")]
    per_run: list[list[dict]] = []
    for r in model_runs:
        lo, hi = r["ts"], r["ts"] + r["dur"]
        per_run.append(sorted((e for e in nodes if lo <= e["ts"] <= hi), key=lambda e: e["ts"]))
    prof.model_ms = statistics.median(r["dur"] for r in model_runs) / 1e3 if model_runs else None
    prof.nodes = _median_nodes(per_run, _ort_node)
    prof.total_us = sum(n.us for n in prof.nodes)
    return prof


def _ort_node(e: dict) -> tuple[str, str, int | None, int | None]:
    args = e.get("args", {})
    name = e["name"].removesuffix("_kernel_time")
    op = args.get("op_name", "?")

    def shapes(key):
        return [next(iter(d.values()), None) if isinstance(d, dict) else None
                for d in args.get(key, [])]  # fmt: skip

    ins, outs = shapes("input_type_shape"), shapes("output_type_shape")
    macs = _mac_count(op, ins, outs[0] if outs else None) if op in _MAC_OPS else None
    nbytes = _shape_bytes([s for s in ins + outs if s]) if ins or outs else None
    return name, op, macs, nbytes


def _median_nodes(per_run: list[list[Any]], describe) -> list[PeerNode]:
    """Nodes in the execution order of the first run, each with its median time over runs."""
    if not per_run:
        return []

    def keyed(run) -> list[tuple[str, Any]]:  # a name seen again in a run gets "#k"
        count: dict[str, int] = {}
        out = []
        for e in run:
            name = describe(e)[0]
            k = count[name] = count.get(name, -1) + 1
            out.append((f"{name}#{k}" if k else name, e))
        return out

    times: dict[str, list[float]] = {}
    for run in per_run:
        for key, e in keyed(run):
            times.setdefault(key, []).append(_duration_us(e))
    out = []
    for key, e in keyed(per_run[0]):
        _, op, macs, nbytes = describe(e)
        out.append(PeerNode(key, op, statistics.median(times[key]), macs, nbytes))
    return out


def _duration_us(e) -> float:
    if isinstance(e, dict):
        return float(e["dur"])
    return float(e[4])  # OpenVINO tuple: (name, op, macs, bytes, us)


def _profile_openvino(module, example, threads, warmup, runs, workdir, refs) -> PeerProfile:
    import openvino as ov

    from .peers import openvino_config

    ov_model = ov.convert_model(module.eval(), example_input=example)
    compiled = ov.Core().compile_model(
        ov_model, "CPU", {**openvino_config(threads), "PERF_COUNT": True}
    )
    req = compiled.create_infer_request()
    x = example.numpy()
    req.infer({0: x})
    outs = [req.get_output_tensor(i).data.copy() for i in range(len(compiled.outputs))]
    validation, problem = _validate(outs, refs)
    prof = PeerProfile("openvino", "ok", validation=validation)
    prof.info = {"version": ov.__version__, "profiler": "PERF_COUNT + get_profiling_info"}
    if problem:
        prof.status, prof.reason = "FAIL", problem
        return prof
    shapes = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        ins = [
            list(i.get_partial_shape().to_shape()) if i.get_partial_shape().is_static else None
            for i in op.inputs()
        ]
        outs_ = [
            list(o.get_partial_shape().to_shape()) if o.get_partial_shape().is_static else None
            for o in op.outputs()
        ]
        shapes[op.get_friendly_name()] = (ins, outs_)
    per_run, wall = [], []
    for i in range(warmup + runs):
        t0 = time.perf_counter()
        req.infer({0: x})
        dt = time.perf_counter() - t0
        if i < warmup:
            continue
        wall.append(dt * 1e3)
        run = []
        for p in req.get_profiling_info():
            if str(p.status).endswith("EXECUTED") and not str(p.status).endswith("NOT_EXECUTED"):
                ins, outs_ = shapes.get(p.node_name, ([], []))
                op = p.node_type
                macs = _mac_count(op, ins, outs_[0] if outs_ else None) if op in _MAC_OPS else None
                nbytes = _shape_bytes([s for s in ins + outs_ if s]) or None
                run.append((p.node_name, op, macs, nbytes, p.real_time.total_seconds() * 1e6))
        per_run.append(run)
    # the shared timer's statistics; the loop is its own because counters are read between calls
    prof.model_ms = Timing.from_samples(wall).median_ms if wall else None
    prof.info["model_ms_clock"] = "wall clock of InferRequest.infer (counters on)"
    prof.nodes = _median_nodes(per_run, lambda e: e[:4])
    prof.total_us = sum(n.us for n in prof.nodes)
    return prof


def _peer_available(name: str) -> str | None:
    from .peers import missing_packages

    packages = {"onnxruntime": ("onnxruntime", "onnx"), "openvino": ("openvino",)}[name]
    return missing_packages(*packages)


MATCH_WINDOW = 6  # how far ahead in the peer's order a layer may be (branches run in any order)
MAX_PADDING = 4.0  # a peer's MACs may exceed ours this much (channels padded to its vector block)


def match_peer(order: list[str], rows: list[FunctionRow], peer: PeerProfile) -> None:
    """Match ``peer``'s multiply-add nodes to our functions' mac_blocks in execution order.

    ``order`` is our call sequence (function names, one per call). Each of our reductions takes
    one of the next :data:`MATCH_WINDOW` unmatched peer conv/matmul nodes: the first with equal
    MACs (exact: this also resynchronises where the two run branches in another order); failing
    that, the very next node if its MACs are unknown or 1–:data:`MAX_PADDING`× ours (a peer that
    pads small channel counts to its vector block: matched by order). A reduction with neither
    is left unmatched, and so are the peer nodes nothing took — never guessed.
    """
    by_name = {r.name: r for r in rows}
    mac_nodes = [n for n in peer.nodes if n.op in _MAC_OPS]
    pool = list(mac_nodes)
    passed: dict[int, int] = {}  # peer node → how often a reduction of ours went past it
    ours = matched = exact = 0
    for name in order:
        row = by_name.get(name)
        if row is None or not row.mac_blocks:
            continue
        for block in row.mac_blocks:
            ours += 1
            window = pool[:MATCH_WINDOW]
            pick = next((n for n in window if n.macs == block), None)
            ok_exact = pick is not None
            if pick is None and window:  # only the next node in order may differ by padding
                head = window[0]
                if head.macs is None or block <= head.macs <= MAX_PADDING * block:
                    pick = head
            # a node passed over MATCH_WINDOW times is one nothing of ours will take: drop it,
            # so it does not hold the head of the window (and the padding check) for good
            for n in window[: window.index(pick) if pick is not None else len(window)]:
                passed[id(n)] = passed.get(id(n), 0) + 1
            if pick is not None:
                pool.remove(pick)
            pool = [n for n in pool if passed.get(id(n), 0) < MATCH_WINDOW]
            if pick is None:
                log.info("%s: no node matches our %s (%d MACs)", peer.name, name, block)
                continue
            matched += 1
            exact += ok_exact
            m = row.peers.get(peer.name)
            if m is None:
                m = row.peers[peer.name] = PeerMatch(0.0, [], True, 0)
            m.us += pick.us
            m.nodes.append(pick.name)
            m.exact = m.exact and ok_exact
            m.bytes = None if m.bytes is None or pick.bytes is None else m.bytes + pick.bytes
    matched_names = {n for r in rows for n in (r.peers.get(peer.name).nodes if peer.name in
                                                r.peers else [])}  # fmt: skip
    other = [n for n in peer.nodes if n.name not in matched_names]
    by_op: dict[str, float] = {}
    for n in other:
        by_op[n.op] = by_op.get(n.op, 0.0) + n.us
    peer.matched = {
        "our_reductions": ours,
        "matched": matched,
        "exact_macs": exact,
        "peer_mac_nodes": len(mac_nodes),
        "unmatched_peer_us": sum(n.us for n in other),
        "unmatched_peer_us_by_op": dict(sorted(by_op.items(), key=lambda kv: -kv[1])),
        "rule": f"execution order, one peer conv/matmul node per multiply-add reduction of ours, "
        f"equal MACs within the next {MATCH_WINDOW} unmatched, else the next one if its MACs "
        f"are unknown or 1–{MAX_PADDING:g}× ours (channel padding)",
    }


# ---------------------------------------------------------------------------- the entry point


@restores_affinity
def profile(
    model,
    *,
    threads: int | None = None,
    runs: int = 20,
    warmup: int = 5,
    compare: str | list[str] | tuple[str, ...] = (),
    reference=None,
    seed: int = 0,
    limits: MachineLimits | None = None,
    limits_kw: dict | None = None,
) -> ProfileReport:
    """Profile a compiled model (artifact path or :class:`~sepconv.CompiledModel`).

    ``threads`` sets ``TVM_NUM_THREADS`` (it only takes effect if TVM's thread pool has not
    started yet: the CLI sets it first); the machine limits and the peers use the thread count
    the model actually runs with. ``compare`` names peers (``onnxruntime``, ``openvino``) that
    profile the same model with their own profilers; they need the eager module: ``reference``,
    or, for a zoo artifact, rebuilt from the manifest. ``limits`` reuses limits measured
    earlier (otherwise they are measured before and after the model's runs, the higher of each
    kept: a shared machine's busy moment only lowers a limit); ``limits_kw`` passes
    sizes to :func:`~sepconv.bench.limits.measure_limits`.
    """
    from sepconv.compiler.runtime import CompiledModel, load
    from sepconv.compiler.validation import seeded_inputs

    if runs < 1 or warmup < 0:
        raise SepconvError(f"need runs ≥ 1 and warmup ≥ 0 (got {runs}, {warmup})")
    peers = _parse_compare(compare)
    if threads is None and os.environ.get("TVM_NUM_THREADS", "").isdigit():
        threads = int(os.environ["TVM_NUM_THREADS"])
    if threads is None:
        from sepconv.targets import physical_cores

        threads = physical_cores()
    if threads < 1:
        raise SepconvError(f"threads must be ≥ 1, got {threads}")
    os.environ["TVM_NUM_THREADS"] = str(threads)  # read when TVM's pool starts
    if isinstance(model, CompiledModel):
        compiled = model
    elif isinstance(model, str | os.PathLike):
        compiled = load(model)
    else:
        raise SepconvError(
            f"profile takes an artifact path or a loaded model (sepconv.load), got "
            f"{type(model).__name__}; compile it first: sepconv compile MODEL -o build/m"
        )
    if compiled.device != "cpu":
        raise SepconvError(
            f"{compiled.path} runs on {compiled.device}; sepconv profile measures CPU artifacts "
            "(compile for the host, e.g. --target host)"
        )
    functions = dict(compiled.manifest.build.get("functions") or {})
    if not functions:
        log.warning(
            "%s has no per-function costs in its manifest (build.functions: compiled by an "
            "older sepconv): times and bytes only, no MACs; recompile it (sepconv compile … "
            "--force) for GFLOP/s and the roofline", compiled.path,
        )  # fmt: skip
    tvm_threads = _tvm_threads()
    if tvm_threads is not None and tvm_threads != threads:
        log.warning(
            "TVM runs %d threads, not %d: its thread pool started before TVM_NUM_THREADS was set",
            tvm_threads, threads,
        )  # fmt: skip
    run_threads = tvm_threads or threads
    arrays = seeded_inputs(compiled.inputs, seed)
    if peers:  # a missing reference fails now, before the runs
        reference = _reference(compiled, reference, seed, len(arrays))

    # the FMA loop is built for the artifact's CPU: AVX2 code on an AVX-512 host has half its peak
    limits_kw = {
        "mcpu": compiled.manifest.target.get("mcpu") or None,
        "int8": (compiled.manifest.build or {}).get("precision") == "int8",
        **(limits_kw or {}),
    }
    before = measure_limits(run_threads, **limits_kw) if limits is None else None
    per_run, overhead_ns, shapes = _record(compiled, arrays, warmup, runs, functions)
    rows = _rows(per_run, overhead_ns, functions, shapes)
    order = [name for name, _ in per_run[0]] if per_run else []
    t = compiled.time(*arrays, warmup=warmup, runs=max(runs, 10))
    if limits is None:  # before and after the model's runs: the higher of each
        limits = before.best(measure_limits(run_threads, **limits_kw))

    peer_profiles: dict[str, PeerProfile] = {}
    if peers:
        peer_profiles = _profile_peers(peers, arrays, reference, run_threads, warmup, runs)
        for p in peer_profiles.values():
            if p.status == "ok":
                match_peer(order, rows, p)

    from .report import machine_info

    return ProfileReport(
        artifact=str(compiled.path),
        model=dict(compiled.manifest.model),
        target={k: compiled.manifest.target.get(k) for k in ("triple", "key", "mcpu")},
        threads=run_threads, runs=runs, warmup=warmup,
        model_ms=t["median_ms"], functions_ms=sum(r.us for r in rows) / 1e3,
        hook_overhead_us=overhead_ns / 1e3, limits=limits, rows=rows, peers=peer_profiles,
        machine=machine_info(),
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )  # fmt: skip


def _parse_compare(compare) -> list[str]:
    from .peers import split_names

    names, unknown = split_names(compare, PEER_NAMES)
    if unknown:
        raise SepconvError(
            f"cannot compare with {', '.join(map(repr, unknown))}: profile compares with "
            f"{', '.join(PEER_NAMES)} (comma-separated, e.g. --compare onnxruntime,openvino)"
        )
    return names


def _reference(compiled, reference, seed: int, n_inputs: int):
    """The eager module the peers run (checked before any timing starts)."""
    import torch

    if reference is None:
        from sepconv.api import _reference_for

        try:
            reference = _reference_for(compiled)  # zoo artifacts
        except SepconvError as exc:
            raise SepconvError(
                f"--compare needs the eager model: {exc} — from Python, "
                "sepconv.profile(artifact, compare=[...], reference=module); from the CLI, "
                "--reference ZOO_NAME"
            ) from exc
    elif isinstance(reference, str):
        from sepconv.models import get_model

        reference = get_model(reference, batch=compiled.inputs[0].shape[0], seed=seed).module
    if not isinstance(reference, torch.nn.Module):
        raise SepconvError(f"reference must be an nn.Module or a zoo name, got {reference!r}")
    if n_inputs != 1:
        raise SepconvError("peer comparison supports single-input models only")
    return reference.eval()


def _profile_peers(peers, arrays, reference, threads, warmup, runs):
    import torch

    x = torch.from_numpy(arrays[0])
    with torch.no_grad():
        refs = _arrays(reference(x))
    out: dict[str, PeerProfile] = {}
    fns = {"onnxruntime": _profile_onnxruntime, "openvino": _profile_openvino}
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with tempfile.TemporaryDirectory(prefix="sepconv-profile-") as tmp:
            for name in peers:
                reason = _peer_available(name)
                if reason is not None:
                    out[name] = PeerProfile(name, "unavailable", reason)
                    continue
                try:
                    with torch.no_grad():
                        out[name] = fns[name](reference, x, threads, warmup, runs, Path(tmp), refs)
                except SepconvError as exc:
                    out[name] = PeerProfile(name, "unavailable", str(exc))
                except Exception as exc:  # noqa: BLE001 - a peer that fails is reported
                    log.debug("%s profile failed", name, exc_info=True)
                    out[name] = PeerProfile(name, "FAIL", f"profile failed: {_one_line(exc)}")
    finally:
        torch.set_num_threads(old)
    return out


# ---------------------------------------------------------------------------- output


def _short(name: str, n: int = 44) -> str:
    return name if len(name) <= n else name[: n - 1] + "…"


def _f(v: float | None, fmt: str = "{:.1f}") -> str:
    return "–" if v is None else fmt.format(v)


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.0f} %"


def _count(n: int | None) -> str:
    from .report import _count as count

    return count(n) if n else "–"


def _markdown(rep: ProfileReport) -> str:
    lim = rep.limits
    ok_peers = [p for p, prof in rep.peers.items() if prof.status == "ok"]
    lines = [
        f"# sepconv profile: {rep.model.get('name', '?')}",
        "",
        f"Artifact `{rep.artifact}`, target {rep.target.get('triple')} "
        f"({rep.target.get('key')}, mcpu {rep.target.get('mcpu')}); {rep.threads} threads; "
        f"{rep.machine.get('cpu', '?')}.  ",
        f"Model {rep.model_ms:.3f} ms (uninstrumented, median); functions sum to "
        f"{rep.functions_ms:.3f} ms ({100 * rep.coverage:.0f} % of it: under 100 % the gap is "
        "the VM's own work — allocations, reshapes —, over it the hook's perturbation and noise). "
        f"Hook cost {rep.hook_overhead_us:.1f} µs per call, subtracted.  ",
        f"Machine limits measured in this run (before and after the model, the higher) on "
        f"{lim.threads} threads: FMA peak "
        f"{lim.fma_gflops:.1f} GFLOP/s (FMA loop for {lim.mcpu or 'this CPU'} "
        f"{lim.fma_loop_gflops:.1f}, sgemm {lim.sgemm_n}² {lim.sgemm_gflops:.1f}), copy bandwidth "
        f"{lim.copy_gbs:.1f} GB/s ({lim.copy_mb:g} MB; {lim.cache_copy_gbs:.1f} GB/s at "
        f"{lim.cache_copy_mb:g} MB, in cache); ridge {lim.ridge:.1f} FLOP/byte"
        + (
            f"; int8 peak {lim.int8_gops:.1f} GOP/s ({lim.int8_dot} loop, 2 ops per "
            "multiply-add), the ceiling of the integer operators' % peak"
            if lim.int8_gops
            else ""
        )
        + ".  ",
        f"Timing: {rep.method}; {rep.runs} runs after {rep.warmup} warm-up.",
        "",
    ]
    tuned = rep.tuned
    if tuned:
        lines[-1:-1] = [
            f"Tuned: {tuned['functions']} functions from tuning records take "
            f"{tuned['model_ms']:.3f} ms here; their records say {tuned['records_ms']:.3f} ms "
            f"(the tuner's estimate of them; here / records = {_f(tuned['ratio'], '{:.2f}')}, per "
            "function in the `tuner µs` column).  "
        ]
    head = ["function", "kind", "calls", "µs", "share", "MACs", "bytes", "FLOP/B", "GFLOP/s",
            "% peak", "GB/s", "% BW"]  # fmt: skip
    if tuned:
        head.append("tuner µs")
    for p in ok_peers:
        head += [f"{p} µs", f"{p} GFLOP/s", "match"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rep.rows:
        cells = [
            f"`{_short(r.name)}`", r.kind, str(r.calls), f"{r.us:.1f}", _pct(r.share),
            _count(r.macs), _count(r.bytes), _f(r.intensity), _f(r.gflops),
            _pct(r.gflops / r.peak(lim) if r.gflops else None), _f(r.gbs),
            _pct(r.gbs / lim.copy_gbs if r.gbs else None),
        ]  # fmt: skip
        if tuned:
            cells.append(_f(r.record_us))
        for p in ok_peers:
            m = r.peers.get(p)
            if m is None:
                cells += ["–", "–", "–"]
                continue
            gf = r.flops / (m.us * 1e3) if r.flops and m.us > 0 else None
            how = "MACs" if m.exact else "order"
            cells += [f"{m.us:.1f}", _f(gf), f"{len(m.nodes)} node(s), {how}"]
        lines.append("| " + " | ".join(cells) + " |")
    for name, prof in rep.peers.items():
        lines.append("")
        if prof.status != "ok":
            lines.append(f"**{name}**: {prof.status} — {prof.reason}")
            continue
        mt = prof.matched
        other = ", ".join(f"{op} {us:.0f} µs" for op, us in
                          list(mt.get("unmatched_peer_us_by_op", {}).items())[:6])  # fmt: skip
        lines.append(
            f"**{name}** {prof.info.get('version', '')} ({prof.info.get('profiler')}): nodes sum "
            f"to {prof.total_us / 1e3:.3f} ms per run"
            + (f", run {prof.model_ms:.3f} ms" if prof.model_ms else "")
            + f"; matched {mt.get('matched', 0)} of our {mt.get('our_reductions', 0)} "
            f"multiply-add reductions to its {mt.get('peer_mac_nodes', 0)} conv/matmul nodes "
            f"({mt.get('exact_macs', 0)} with equal MACs); its unmatched nodes take "
            f"{mt.get('unmatched_peer_us', 0) / 1e3:.3f} ms ({other or 'none'})."
        )
    lines += [
        "",
        "MACs and bytes per model run (all calls); bytes = every input, weight and output "
        "once (compulsory traffic). % peak and % BW are of the limits above (% peak of an int8 "
        "operator: of the int8 peak, where measured). A peer's time is "
        "of its conv/matmul nodes matched to the function (with whatever it fuses into them); "
        "its other nodes — pools, layout reorders, anything it does not fuse — are the "
        "unmatched time above.",
    ]
    return "\n".join(lines) + "\n"


def roofline_png(rep: ProfileReport, path: Path) -> Path:
    """Arithmetic intensity (FLOP/byte) vs achieved GFLOP/s, log-log, one point per function
    with MACs, per system, under the measured FMA-peak and copy-bandwidth lines. A peer's point
    sits at our function's intensity (the same layer's work and compulsory bytes), so the
    vertical distance between the two is the speed difference on that layer."""
    from matplotlib.figure import Figure

    lim = rep.limits
    fig = Figure(figsize=(8, 5.5), dpi=110)
    ax = fig.add_subplot(1, 1, 1)
    pts = [r for r in rep.rows if r.intensity and r.gflops]
    xs = [r.intensity for r in pts]
    peer_pts: dict[str, list[tuple[float, float]]] = {}
    for name, prof in rep.peers.items():
        if prof.status != "ok":
            continue
        for r in pts:
            m = r.peers.get(name)
            if m is not None and m.us > 0:  # at the layer's intensity: same work, same x
                peer_pts.setdefault(name, []).append((r.intensity, r.flops / (m.us * 1e3)))
    lo = min(xs + [lim.ridge]) / 3 if xs else 0.1
    hi = max(xs + [lim.ridge]) * 3 if xs else 100
    grid = np.geomspace(lo, hi, 200)
    roofs = [
        (lim.fma_gflops, lim.copy_gbs, "k-", 1.5,
         f"roofline: {lim.fma_gflops:.0f} GFLOP/s, {lim.copy_gbs:.0f} GB/s (DRAM copy)"),
        (lim.fma_gflops, lim.cache_copy_gbs, "k--", 1,
         f"{lim.cache_copy_gbs:.0f} GB/s ({lim.cache_copy_mb:g} MB copy, in cache)"),
    ]  # fmt: skip
    if lim.int8_gops:
        label = f"int8 roofline: {lim.int8_gops:.0f} GOP/s ({lim.int8_dot} loop)"
        roofs.append((lim.int8_gops, lim.copy_gbs, "k:", 1, label))
    for peak, bandwidth, style, width, label in roofs:
        ax.plot(grid, np.minimum(peak, bandwidth * grid), style, lw=width, label=label)
    if pts:
        size = [20 + 400 * r.share for r in pts]
        ax.scatter(
            [r.intensity for r in pts],
            [r.gflops for r in pts],
            s=size,
            c="tab:red",
            alpha=0.7,
            label="sepconv (size: share of time)",
            zorder=3,
        )
        for r in sorted(pts, key=lambda r: -r.share)[:5]:
            ax.annotate(
                _short(r.name.removeprefix("fused_"), 28),
                (r.intensity, r.gflops),
                fontsize=6,
                xytext=(3, 3),
                textcoords="offset points",
            )
    markers = {"onnxruntime": ("D", "tab:green"), "openvino": ("s", "tab:blue")}
    for name, p in peer_pts.items():
        mk, col = markers.get(name, ("^", "tab:purple"))
        ax.scatter(
            [a for a, _ in p],
            [b for _, b in p],
            marker=mk,
            c=col,
            s=25,
            alpha=0.7,
            label=f"{name} (matched nodes, at the layer's intensity)",
            zorder=2,
        )
    if not pts:
        ax.text(0.5, 0.5, "no function with multiply-adds", ha="center", transform=ax.transAxes)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP / byte, compulsory traffic)")
    ax.set_ylabel("achieved GFLOP/s")
    ax.set_title(
        f"{rep.model.get('name', '?')}: roofline, {rep.threads} threads, "
        f"{rep.machine.get('cpu', '')}"[:100],
        fontsize=9,
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    return path
