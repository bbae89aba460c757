"""The ``sepconv`` command: models | compile | validate | run | tune | device | bench | profile.

Every failure prints one line (``error: …``) and exits non-zero; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from sepconv.errors import SepconvError

EXIT_ERROR = 2
MODEL_HELP = (
    "zoo name with optional knobs (mobilenet_v1:0.5@160), torchvision:NAME / timm:NAME, or a model "
    "file: .pt2 (torch.export.save) or .onnx"
)
INPUT_SHAPE_HELP = (
    "input shape for a model file with dynamic dimensions, e.g. 1,3,224,224 (several inputs: "
    "separate with ';')"
)
EXIT_VALIDATION_FAILED = 1
# torchao's optional CUDA kernels that fail to load on a CPU machine, torch's deprecation notes
QUIET_LOGGERS = ("torchao", "torch.utils._pytree")


class StageProgress:
    """Prints each compile stage as it starts and how long the previous one took."""

    def __init__(self, stream=sys.stderr):
        self.stream = stream
        self.current: str | None = None
        self.t0 = 0.0
        self.start = time.perf_counter()

    def __call__(self, stage: str) -> None:
        self._close()
        self.current, self.t0 = stage, time.perf_counter()
        print(f"  {stage} …", end="", file=self.stream, flush=True)

    def _close(self) -> None:
        if self.current is not None:
            print(f" {time.perf_counter() - self.t0:.1f}s", file=self.stream, flush=True)
            self.current = None

    def done(self) -> float:
        self._close()
        return time.perf_counter() - self.start


def cmd_models(args) -> int:
    from sepconv.models import list_models

    infos = list_models()
    if args.json:
        print(json.dumps([_info_dict(i) for i in infos], indent=2))
        return 0
    print(f"{'name':<22} {'input':>9} {'params':>10} {'MACs':>10}  description")
    for i in infos:
        d = _info_dict(i)
        print(
            f"{d['name']:<22} {d['resolution']:>5}×{d['resolution']:<3} {d['params'] / 1e6:>9.2f}M "
            f"{d['macs'] / 1e6:>9.1f}M  {d.get('description', '')}"
        )
    print(
        "\nknobs: family[:width][@resolution], e.g. mobilenet_v1:0.5@160; "
        "also torchvision:NAME and timm:NAME where those packages import"
    )
    return 0


def _info_dict(info) -> dict:
    from dataclasses import asdict, is_dataclass

    return asdict(info) if is_dataclass(info) else dict(info)


def cmd_compile(args) -> int:
    import sepconv

    progress = StageProgress()
    print(f"compiling {args.model} for {args.target}", file=sys.stderr)
    logging.getLogger("sepconv.api").addFilter(_printed_by_the_summary)  # added once
    art = sepconv.compile(
        args.model,
        target=args.target,
        out=args.output,
        batch=args.batch,
        weights=args.weights,
        seed=args.seed,
        force=args.force,
        validate=args.validate,
        mcpu=args.mcpu,
        cuda_arch=args.cuda_arch,
        sepconv_ops=not args.no_sepconv_ops,
        tune_logs=[True] * (not args.no_tune_logs) + [args.tune_log] * bool(args.tune_log),
        records_from_other_cpus=args.records_from_other_cpus,
        cuda_graph=args.cuda_graph,
        precision=args.precision,
        on_stage=progress,
        input_shape=args.input_shape,
        **_int8_options(args),
    )
    total = progress.done()
    b = art.manifest.build
    print(f"wrote {art.path} in {total:.1f}s")
    print(
        f"  target {art.manifest.target['triple']} ({art.manifest.target.get('key', '')}); "
        f"{b['tasks_tuned']} of {b['tasks_total']} tasks tuned"
    )
    confirmed = b.get("rules_confirmed") or []
    if confirmed:
        print(
            f"  {len(confirmed)} more tasks were tuned here and kept our rules' schedule: "
            "re-timed against it, their records were no faster (confirmed.json)"
        )
    elsewhere = b.get("tuned_on_other_cpus") or {}
    if elsewhere:
        cpus = sorted({c for cs in elsewhere.values() for c in cs})
        print(
            f"  {len(elsewhere)} more tasks have records measured on {', '.join(cpus)}, not on "
            f"this build's CPU ({art.manifest.target.get('mcpu') or 'generic'}): built with our "
            "rules; `sepconv tune` measures this CPU, --records-from-other-cpus uses them"
        )
    ops = b.get("sepconv_ops")
    if ops and "int8" in ops:
        q = ops["int8"]
        print(
            f"  int8 operators: {q.get('depthwise', 0)} depthwise, {q.get('pointwise', 0)} "
            f"pointwise, {q.get('dense', 0)} dense ({q.get('left_to_tvm', 0)} left to TVM); "
            f"{q.get('fused', 0)} depthwise → pointwise pairs fused"
        )
        f32 = ops.get("fp32")
        if f32:  # convs the quantizer left in float
            n = sum(f32.get(k, 0) for k in ("fused_dw_pw", "depthwise", "pointwise", "dense"))
            print(f"  fp32 operators: {n} convs the quantizer left in float")
    elif ops:
        gates = ops.get("gates_in_weights", 0)
        print(
            f"  sepconv ops: {ops['fused_dw_pw']} fused dw→pw, {ops['depthwise']} depthwise, "
            f"{ops['pointwise']} pointwise, {ops['dense']} other convs, "
            f"{ops.get('linear', 0)} linear" + (f"; {gates} SE gates in weights" if gates else "")
        )
    tri = b.get("triton_ops")
    if tri:
        print(
            f"  triton kernels: {tri['fused_dw_pw']} fused dw→pw, {tri['depthwise']} depthwise, "
            f"{tri['se']} SE ({tri['kernels']} distinct); CUDA graph "
            f"{'on' if b.get('cuda_graph') else 'off'}"
        )
    failures = b.get("rule_failures") or []
    if failures:
        named = "; ".join(f"{f['rule']} on {f['function']}" for f in failures[:3])
        more = f" and {len(failures) - 3} more" if len(failures) > 3 else ""
        print(
            f"  warning: {len(failures)} schedule rule(s) raised, so those functions took a "
            f"later, usually slower, rule: {named}{more} (manifest build.rule_failures has "
            "the errors; please report them)"
        )
    quant = art.manifest.model.get("quantization")
    if quant and quant.get("calibration", {}).get("kind") == "random":
        print(
            f"  warning: int8 calibrated on {quant.get('samples', '?')} seeded random inputs; "
            "accuracy on real inputs needs representative data (--calibration DATA)"
        )
    if art.manifest.validation is not None:
        v = art.manifest.validation
        print(f"  validation: {'PASS' if v['passed'] else 'FAIL'}")
        return 0 if v["passed"] else EXIT_VALIDATION_FAILED
    return 0


def _printed_by_the_summary(record: logging.LogRecord) -> bool:
    """The random-calibration warning: cmd_compile prints it after the summary, not also amid
    the progress line."""
    return not record.getMessage().startswith("int8 without calibration data")


def _int8_options(args) -> dict:
    """--calibration / --observer → sepconv.compile's keywords (int8 only)."""
    if args.precision != "int8":
        for flag, value in (("--calibration", args.calibration), ("--observer", args.observer)):
            if value is not None:
                raise SepconvError(f"{flag} is for --precision int8")
        return {}
    return {"calibration": args.calibration, "observer": args.observer or "histogram"}


def _int8_validation_options(args) -> dict:
    """--layers / --min-sqnr-db → sepconv.validate's int8 keywords (only when given, so an
    fp32 artifact's validation is called as it always was)."""
    options = {}
    if args.layers:
        options["layers"] = True
    if args.min_sqnr_db is not None:
        options["min_sqnr_db"] = args.min_sqnr_db
    return options


def cmd_validate(args) -> int:
    import sepconv

    report = sepconv.validate(
        args.artifact,
        reference=args.reference,
        seed=args.seed,
        num_inputs=args.inputs,
        bisect=args.bisect,
        **_int8_validation_options(args),
    )
    if args.json:
        print(json.dumps(report.to_json(), indent=2, default=str))
    else:
        print(report.summary())
        layer_table = getattr(report, "layer_table", lambda: "")()
        if layer_table:
            print(layer_table)
        if report.bisect is not None:
            print(report.bisect.summary())
            print(report.bisect.table())
    return 0 if report.passed else EXIT_VALIDATION_FAILED


def cmd_run(args) -> int:
    import numpy as np

    import sepconv
    from sepconv.compiler.validation import seeded_inputs

    model = sepconv.load(args.artifact)
    if args.input:
        path = Path(args.input)
        if not path.is_file():
            raise SepconvError(f"input file {path} does not exist")
        try:
            x = np.load(path, allow_pickle=False)
        except ValueError as exc:
            raise SepconvError(f"{path} is not a .npy array: {exc}") from exc
        if x.ndim == len(model.inputs[0].shape) - 1:
            x = x[None]  # a single image without the batch axis
        arrays = [x]
        source = str(path)
    else:
        arrays = seeded_inputs(model.inputs, args.seed)
        source = f"random (seed {args.seed})"
    out = model(*arrays)
    outs = out if isinstance(out, tuple) else (out,)
    print(f"{model!r}\ninput: {source}")
    for spec, o in zip(model.outputs, outs):
        print(f"output {spec.name}: shape {tuple(o.shape)}, dtype {o.dtype}")
    first = outs[0]
    if first.ndim == 2 and first.shape[1] > 1:
        for b, row in enumerate(first[: args.show_batch]):
            top = np.argsort(row)[::-1][:5]
            probs = np.exp(row - row.max())
            probs /= probs.sum()
            ranked = ", ".join(f"{int(c)} ({probs[c]:.3f})" for c in top)
            print(f"top-5 [{b}]: {ranked}")
    t = model.time(*arrays, warmup=args.warmup, runs=args.runs)
    threads = os.environ.get("TVM_NUM_THREADS", "all cores")
    print(
        f"latency: median {t['median_ms']:.3f} ms, p10 {t['p10_ms']:.3f} ms, "
        f"p90 {t['p90_ms']:.3f} ms over {t['runs']} runs (threads: {threads})"
    )
    return 0


def cmd_tune(args) -> int:
    from sepconv.compiler.tuning import MeasureConfig, format_report, tune

    start = time.perf_counter()

    def stage(name: str) -> None:  # whole lines: the progress bar follows the last one
        print(f"  [{time.perf_counter() - start:5.1f}s] {name}", file=sys.stderr, flush=True)

    models = ", ".join(args.model)
    print(f"tuning {models} for {args.target} on {args.device}", file=sys.stderr)
    measure = None
    cache = "flushed" if args.flush_cache else args.cache
    if args.min_repeat_ms is not None or args.timeout is not None or cache is not None:
        measure = MeasureConfig(cache=cache)
        if args.device != "local":
            measure.min_repeat_ms = 0
        if args.min_repeat_ms is not None:
            measure.min_repeat_ms = args.min_repeat_ms
        if args.timeout is not None:
            measure.timeout_s = args.timeout
    from sepconv.compiler.model_files import as_model_file

    models = [as_model_file(m, args.input_shape) or m for m in args.model]  # .pt2 / .onnx files
    report = tune(
        models if len(models) > 1 else models[0],
        target=args.target,
        device=args.device,
        trials=args.trials,
        tune_log=args.tune_log,
        batch=args.batch,
        mcpu=args.mcpu,
        cuda_arch=args.cuda_arch,
        sepconv_ops=not args.no_sepconv_ops,
        max_trials_per_task=args.max_trials_per_task,
        trials_per_iter=args.trials_per_iter,
        measure=measure,
        task_filter=args.tasks,
        space=args.space,
        on_stage=stage,
        **({} if args.confirm_rounds is None else {"confirm_rounds": args.confirm_rounds}),
    )
    print(format_report(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_json(), indent=2) + "\n")
        print(f"report: {args.json}")
    return 0


def cmd_device_serve(args) -> int:
    from tvm import rpc

    tracker = None
    if args.tracker:
        host, _, port = args.tracker.rpartition(":")
        if not host or not port.isdigit():
            raise SepconvError(f"--tracker must be HOST:PORT, got {args.tracker!r}")
        if not args.key:
            raise SepconvError("--tracker needs --key: the name tuners ask the tracker for")
        tracker = (host, int(port))
    port_end = args.port_end or args.port + 100
    try:
        server = rpc.Server(
            host=args.host,
            port=args.port,
            port_end=port_end,
            tracker_addr=tracker,
            key=args.key or "",
            custom_addr=args.custom_addr,
            silent=not args.debug,
        )
    except (ValueError, OSError, RuntimeError) as exc:
        raise SepconvError(
            f"cannot start an RPC server on {args.host}, ports {args.port}-{port_end - 1}: {exc}"
        ) from exc
    where = f"rpc://{args.host}:{server.port}"
    reg = f", registered with tracker {args.tracker} as {args.key!r}" if tracker else ""
    print(f"RPC server listening on {where}{reg}; Ctrl-C to stop", flush=True)
    _exit_on_sigterm()
    try:
        server.proc.join()
    finally:
        server.terminate()
    return 0


def _exit_on_sigterm() -> None:
    """SIGTERM ends a long-running command through its ``finally`` (stopping its workers)."""
    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))


def cmd_device_tracker(args) -> int:
    from tvm.rpc.tracker import Tracker

    port_end = args.port_end or args.port + 100
    try:
        tracker = Tracker(host=args.host, port=args.port, port_end=port_end, silent=not args.debug)
    except (ValueError, OSError, RuntimeError) as exc:
        raise SepconvError(
            f"cannot start an RPC tracker on {args.host}, ports {args.port}-{port_end - 1}: "
            f"{str(exc).strip().splitlines()[-1]}"
        ) from exc
    print(
        f"RPC tracker listening on {args.host}:{tracker.port}; boards join with: sepconv device "
        f"serve --tracker HOST:{tracker.port} --key KEY; Ctrl-C to stop",
        flush=True,
    )
    _exit_on_sigterm()
    try:
        tracker.proc.join()
    finally:
        tracker.terminate()
    return 0


def cmd_device_check(args) -> int:
    from sepconv.targets.devices import check_device

    info = check_device(args.device, timeout=args.timeout)
    print(" ".join(f"{k}={v}" for k, v in info.items()))
    return 0


def cmd_bench(args) -> int:
    from sepconv.bench import default_peers, parse_peers, run_bench

    peers = parse_peers(default_peers(args.precision) if args.peers is None else args.peers)
    int8 = _int8_options(args)
    threads = args.threads
    if threads is None and os.environ.get("TVM_NUM_THREADS", "").isdigit():
        threads = int(os.environ["TVM_NUM_THREADS"])
    ours = "sepconv" + " int8" * (args.precision == "int8")
    print(
        f"benchmarking {', '.join(args.model)} for {args.target} on {args.device}: {ours} vs "
        f"{', '.join(peers) or 'no peers'}",
        file=sys.stderr,
    )
    report = run_bench(
        args.model,
        peers,
        input_shape=args.input_shape,
        target=args.target,
        mcpu=args.mcpu,
        device=args.device,
        batch=args.batch,
        runs=args.runs,
        warmup=args.warmup,
        rounds=args.rounds,
        threads=threads,
        seed=args.seed,
        tune_logs=[True] * (not args.no_tune_logs) + [args.tune_log] * bool(args.tune_log),
        settle_s=args.settle,
        build_dir=args.build_dir,
        precision=args.precision,
        min_sqnr_db=args.min_sqnr_db,
        **int8,
    )
    files = report.write(args.report)
    print(report.markdown())
    print("report: " + ", ".join(str(f) for f in files.values()))
    return EXIT_VALIDATION_FAILED if report.failed else 0


def cmd_profile(args) -> int:
    from sepconv.bench.profile import profile

    print(f"profiling {args.artifact}", file=sys.stderr)
    report = profile(
        args.artifact, threads=args.threads, runs=args.runs, warmup=args.warmup,
        compare=args.compare, reference=args.reference,
    )  # fmt: skip
    print(report.markdown())
    written = []
    if args.json:
        written.append(report.write_json(args.json))
    if args.markdown:
        written.append(report.write_markdown(args.markdown))
    if args.png:
        written.append(report.write_png(args.png))
    if written:
        print("wrote " + ", ".join(str(f) for f in written))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sepconv", description="Compile depthwise-separable CNNs with TVM."
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    m = sub.add_parser("models", help="list the model zoo (name, input size, params, MACs)")
    m.add_argument("--json", action="store_true", help="print JSON instead of a table")
    m.set_defaults(func=cmd_models)

    c = sub.add_parser("compile", help="compile a model into an artifact directory")
    c.add_argument("model", help=MODEL_HELP)
    c.add_argument("--input-shape", metavar="SHAPE", help=INPUT_SHAPE_HELP)
    c.add_argument(
        "--target",
        "-t",
        default="host",
        help="x86_64-linux-gnu | aarch64-linux-gnu | cuda | host (default: host)",
    )
    c.add_argument(
        "--output", "-o", default=None, help="artifact path (default: build/<model>.sepconv)"
    )
    c.add_argument("--batch", "-b", type=int, default=1, help="batch size (default 1)")
    c.add_argument("--weights", help="local weights file (.safetensors or a torch state_dict)")
    c.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    c.add_argument("--force", action="store_true", help="replace an existing artifact")
    c.add_argument(
        "--validate",
        action="store_true",
        help="validate against eager PyTorch after compiling (host targets)",
    )
    c.add_argument("--mcpu", help="LLVM CPU name to compile for instead of the detected one")
    c.add_argument("--cuda-arch", help="CUDA arch for --target cuda, e.g. sm_90")
    c.add_argument(
        "--no-sepconv-ops",
        action="store_true",
        help="keep TVM's conv2d instead of our depthwise / fused dw→pw operators "
        "(measure their gain, bisect a suspected miscompile)",
    )
    c.add_argument(
        "--tune-log",
        metavar="DIR",
        help="also use the tuning records in DIR (DIR/<target key>/ or a database folder)",
    )
    c.add_argument(
        "--cuda-graph",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="--target cuda: replay the model as one CUDA graph (default: on for batch 1)",
    )
    c.add_argument(
        "--precision",
        choices=["fp32", "fp16", "int8"],
        default="fp32",
        help="compute precision behind the float32 interface (default fp32): fp16 for CUDA "
        "targets, int8 for CPU targets (post-training quantization)",
    )
    c.add_argument(
        "--calibration",
        metavar="DATA",
        help="--precision int8: calibration inputs, a folder of .npy files (one input or batch "
        "each) or one .npy / .npz file (default: seeded random inputs, which say nothing about "
        "accuracy on real data)",
    )
    c.add_argument(
        "--observer",
        choices=["histogram", "minmax"],
        default=None,
        help="--precision int8: how activation ranges are chosen from the calibration data "
        "(default histogram: minimises the quantization error; minmax: the full observed range)",
    )
    c.add_argument(
        "--no-tune-logs",
        action="store_true",
        help="ignore the tuning records shipped in tune_logs/ (rule schedules only)",
    )
    c.add_argument(
        "--records-from-other-cpus",
        action="store_true",
        help="also schedule with records measured on other CPUs of the target's class (by "
        "default a build uses only those measured on its own CPU, LLVM's mcpu)",
    )
    c.set_defaults(func=cmd_compile)

    v = sub.add_parser("validate", help="compare a compiled artifact with eager PyTorch")
    v.add_argument("artifact")
    v.add_argument(
        "--reference",
        help="zoo name or .pt2 / .onnx file to compare with (default: the model compiled)",
    )
    v.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    v.add_argument("--inputs", type=int, default=3, help="how many seeded inputs (default 3)")
    v.add_argument(
        "--bisect",
        action="store_true",
        help="also compare every compiled function's output with the reference's and name the "
        "first one that leaves the tolerance (one debug rebuild); int8: print every operator's "
        "row of the per-operator check",
    )
    v.add_argument(
        "--layers",
        action="store_true",
        help="int8: measure every quantized activation against fp32 and print the table (done "
        "anyway when the fp32 rule fails: the layer where the error grows most is named)",
    )
    v.add_argument(
        "--min-sqnr-db",
        type=float,
        metavar="DB",
        help="int8: the SQNR floor against fp32 (default: the one set on the zoo at 224, README)",
    )
    v.add_argument("--json", action="store_true", help="print the report as JSON")
    v.set_defaults(func=cmd_validate)

    r = sub.add_parser("run", help="run an artifact once, print top-5 and latency")
    r.add_argument("artifact")
    r.add_argument("--input", "-i", help=".npy file with the input (default: seeded random)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--runs", type=int, default=50, help="timed runs (default 50)")
    r.add_argument("--warmup", type=int, default=10, help="warm-up runs (default 10)")
    r.add_argument("--threads", type=int, help="CPU threads (sets TVM_NUM_THREADS)")
    r.add_argument("--show-batch", type=int, default=1, help="rows of top-5 to print")
    r.set_defaults(func=cmd_run)

    t = sub.add_parser("tune", help="auto-tune a model's tasks on a device (MetaSchedule)")
    t.add_argument(
        "model", nargs="+", help="zoo name(s) or .pt2 / .onnx file(s); shared tasks are tuned once"
    )
    t.add_argument("--input-shape", metavar="SHAPE", help=INPUT_SHAPE_HELP)
    t.add_argument("--target", "-t", default="host", help="target triple (default: host)")
    t.add_argument(
        "--device",
        "-d",
        default="local",
        help="local | rpc://HOST:PORT | tracker://HOST:PORT/KEY (default: local)",
    )
    t.add_argument(
        "--trials",
        "-n",
        type=int,
        default=1000,
        help="total trials for these tasks, counting records already in the log (default 1000)",
    )
    t.add_argument(
        "--tune-log",
        metavar="DIR",
        help="write records to DIR/<target key>/ (default: the package's tune_logs/)",
    )
    t.add_argument("--batch", "-b", type=int, default=1, help="batch size (default 1)")
    t.add_argument("--mcpu", help="LLVM CPU name to tune for instead of the detected one")
    t.add_argument("--cuda-arch", help="CUDA arch for --target cuda (default: the GPU's)")
    t.add_argument(
        "--sepconv-ops",
        dest="no_sepconv_ops",
        action="store_false",
        help="tune our separable operators (default)",
    )
    t.add_argument(
        "--no-sepconv-ops",
        dest="no_sepconv_ops",
        action="store_true",
        help="tune the graph compile --no-sepconv-ops builds",
    )
    t.add_argument("--max-trials-per-task", type=int, help="cap per task (default: none)")
    t.add_argument("--trials-per-iter", type=int, help="candidates per batch (default: auto)")
    t.add_argument("--tasks", metavar="REGEX", help="tune only tasks whose name matches")
    t.add_argument(
        "--space",
        choices=("rules", "default"),
        default="rules",
        help="design spaces: our schedule rules' (default) or stock MetaSchedule's",
    )
    t.add_argument(
        "--min-repeat-ms",
        type=int,
        help="each timing lasts at least this long (default 25 local, 0 remote)",
    )
    t.add_argument("--timeout", type=float, help="seconds per measurement before it fails")
    t.add_argument(
        "--cache",
        choices=("model", "warm", "flushed"),
        help="the caches' state while a candidate is timed: as the model leaves them (weights "
        "beyond L2, input hot; default on this machine), warm (MetaSchedule's; default over "
        "RPC) or flushed (weights from DRAM); see benchmarks/tuning_estimate.py",
    )
    t.add_argument("--flush-cache", action="store_true", help="the same as --cache flushed")
    t.add_argument(
        "--confirm-rounds",
        type=int,
        default=None,
        metavar="N",
        help="after the search, re-time each task's fastest records against our rules' schedule "
        "in N interleaved rounds; builds use a record only where it won (default 5; 0: skip)",
    )
    t.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    t.set_defaults(func=cmd_tune, no_sepconv_ops=False)

    d = sub.add_parser("device", help="TVM RPC devices: serve, tracker, check")
    dsub = d.add_subparsers(dest="device_command", required=True, metavar="ACTION")
    ds = dsub.add_parser("serve", help="run a TVM RPC server on this machine (a board)")
    ds.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    ds.add_argument("--port", type=int, default=9090, help="first port to try (default 9090)")
    ds.add_argument("--port-end", type=int, help="try ports up to this one (default PORT+99)")
    ds.add_argument("--tracker", metavar="HOST:PORT", help="register with this RPC tracker")
    ds.add_argument("--key", help="device key to register under, e.g. rpi4 (needs --tracker)")
    ds.add_argument("--custom-addr", help="address to report to the tracker (NAT, containers)")
    ds.set_defaults(func=cmd_device_serve)
    dt = dsub.add_parser("tracker", help="run a TVM RPC tracker (hands boards to tuners)")
    dt.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    dt.add_argument("--port", type=int, default=9190, help="first port to try (default 9190)")
    dt.add_argument("--port-end", type=int, help="try ports up to this one (default PORT+99)")
    dt.set_defaults(func=cmd_device_tracker)
    dc = dsub.add_parser("check", help="connect to a device and report whether it answers")
    dc.add_argument("device", help="local | rpc://HOST:PORT | tracker://HOST:PORT/KEY")
    dc.add_argument("--timeout", type=float, default=10.0, help="seconds (default 10)")
    dc.set_defaults(func=cmd_device_check)

    b = sub.add_parser(
        "bench",
        help="validate, then time models against torch / torch.compile / ONNX Runtime; report",
        description="Compile each model with sepconv, check every system against eager PyTorch, "
        "then time it (median/p10/p90). Writes report.json, report.md, latency_vs_macs.png and "
        "speedup.png into --report. Exit 1 if a system failed validation.",
    )
    b.add_argument("model", nargs="+", help="zoo names with knobs (mobilenet_v1:0.75@192) or files")
    b.add_argument("--input-shape", metavar="SHAPE", help=INPUT_SHAPE_HELP)
    b.add_argument("--target", "-t", default="host", help="target triple (default: host)")
    b.add_argument(
        "--mcpu",
        help="LLVM CPU sepconv compiles for instead of the detected one (haswell: AVX2 code on "
        "an AVX-512 host)",
    )
    b.add_argument(
        "--device",
        "-d",
        default="local",
        help="local | rpc://HOST:PORT | tracker://HOST:PORT/KEY (default: local); peers run "
        "only locally",
    )
    b.add_argument("--batch", "-b", type=int, default=1, help="batch size (default 1)")
    b.add_argument(
        "--peers",
        help="comma-separated peers: torch, torch.compile, onnxruntime, openvino, executorch "
        "(XNNPACK delegate), sepconv-untuned (no tuning records), sepconv-no-ops (TVM's own "
        "conv2d); int8: onnxruntime-int8 (quantize_static), openvino-int8 (NNCF), sepconv-fp32 "
        "(beside --precision int8); or none (default: torch,torch.compile,onnxruntime; with "
        "--precision int8: sepconv-fp32,onnxruntime,onnxruntime-int8,openvino-int8)",
    )
    b.add_argument(
        "--precision",
        default="fp32",
        help="sepconv's precision: fp32 (default) or int8 (post-training quantization; the "
        "int8 systems are checked by SQNR against fp32 eager)",
    )
    b.add_argument(
        "--calibration",
        metavar="DATA",
        help="--precision int8: calibration inputs for every int8 system (as sepconv compile "
        "takes them; default: seeded random inputs)",
    )
    b.add_argument(
        "--observer",
        choices=["histogram", "minmax"],
        default=None,
        help="--precision int8: sepconv's activation observer (default histogram)",
    )
    b.add_argument(
        "--min-sqnr-db",
        type=float,
        metavar="DB",
        help="int8 systems: the SQNR floor against fp32 eager (default: the one set on the zoo "
        "at 224, README)",
    )
    b.add_argument("--runs", "-n", type=int, default=50, help="timed runs (default 50)")
    b.add_argument("--warmup", type=int, default=10, help="untimed runs first (default 10)")
    b.add_argument(
        "--rounds",
        type=int,
        default=5,
        help="split the runs into this many rounds, systems interleaved, order reversed each "
        "round, so a machine's drift does not favour one system (default 5)",
    )
    b.add_argument(
        "--threads", type=int, help="CPU threads for every system (default: physical cores)"
    )
    b.add_argument("--report", default="build/report", metavar="DIR", help="default build/report")
    b.add_argument("--seed", type=int, default=0, help="seed of the validation input")
    b.add_argument("--build-dir", metavar="DIR", help="keep the compiled artifacts here")
    b.add_argument("--tune-log", metavar="DIR", help="also use the tuning records in DIR")
    b.add_argument(
        "--no-tune-logs", action="store_true", help="ignore the shipped tuning records (untuned)"
    )
    b.add_argument(
        "--settle",
        type=float,
        default=1.0,
        metavar="S",
        help="idle seconds before each timed system (TVM's threads spin after a run; default 1)",
    )
    b.set_defaults(func=cmd_bench)

    pr = sub.add_parser(
        "profile",
        help="per-function time, MACs, bytes and roofline of an artifact; peers beside it",
        description="Time each fused function inside the model (TVM VM instrument hook), with "
        "its MACs, bytes, GFLOP/s and GB/s as fractions of this machine's FMA peak and copy "
        "bandwidth measured in the same run. --compare adds ONNX Runtime's / OpenVINO's own "
        "per-node profile of the same model, matched to our functions by layer.",
    )
    pr.add_argument("artifact", help="a compiled artifact (sepconv compile … -o DIR)")
    pr.add_argument("--threads", type=int, help="CPU threads (default: physical cores)")
    pr.add_argument("--runs", "-n", type=int, default=20, help="profiled runs (default 20)")
    pr.add_argument("--warmup", type=int, default=5, help="untimed runs first (default 5)")
    pr.add_argument(
        "--compare", default="", metavar="PEER[,PEER]", help="onnxruntime and/or openvino"
    )
    pr.add_argument("--reference", help="zoo name of the eager model (default: the compiled one)")
    pr.add_argument("--json", metavar="FILE", help="write the report as JSON")
    pr.add_argument("--markdown", metavar="FILE", help="write the Markdown table")
    pr.add_argument("--png", metavar="FILE", help="write the roofline plot")
    pr.set_defaults(func=cmd_profile)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not args.debug:  # import-time noise of --precision int8's quantizer, not about the model
        for name in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)
    if getattr(args, "threads", None):
        os.environ["TVM_NUM_THREADS"] = str(args.threads)
    try:
        return args.func(args)
    except SepconvError as exc:
        if args.debug:
            raise
        print(f"\nerror: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug of ours or TVM's: still one line, traceback on --debug
        if args.debug:
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        print(
            f"\nerror: internal error ({type(exc).__name__}: {first[:300]}); rerun with --debug "
            "for the traceback and report it",
            file=sys.stderr,
        )
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
