"""int8 zoo: sepconv int8 vs sepconv fp32 vs ONNX Runtime int8 vs ONNX Runtime fp32, one run.

Each zoo model at 224, batch 1, 2 threads. Both int8 systems are calibrated on the same seeded
inputs (16 by default, :mod:`sepconv.compiler.int8.calibration`): sepconv through PT2E
(``sepconv.compile(precision="int8")``), ONNX Runtime through ``quantize_static`` on the same
ONNX export (QDQ, per-channel s8 weights, u8 activations, ``reduce_range`` on CPUs without
VNNI, as sepconv does: :func:`sepconv.bench.peers.ort_quantize_static`, which
``sepconv bench --precision int8``'s ``onnxruntime-int8`` peer runs too). Every system is
validated first — sepconv int8 by ``sepconv.validate`` (simulated quantization + fp32 rules),
ONNX Runtime int8 by the same metrics against fp32 eager — and the accuracy figures (SQNR dB vs
fp32, top-1 agreement with fp32 over the validation inputs) are printed beside the times, with
the top-1 of PT2E's simulated quantization (the reference sepconv's operators match): what
sepconv's quantization recipe costs before any kernel runs.
Medians of interleaved rounds.

    TVM_NUM_THREADS=2 python benchmarks/int8_zoo.py [--models ...] [--calibration DATA]
        [--mcpu haswell]
    → prints the table; writes benchmarks/results/int8_zoo.json and int8_zoo.md

``--mcpu haswell`` builds both sepconv systems as AVX2 code (no VNNI: 7-bit weights), which an
AVX-512 host runs; ONNX Runtime is then quantized as for an AVX2 host (``reduce_range``: 7-bit
weights too), but still picks its kernels for the host it runs on.

Random-weight models quantize worse than trained ones: the SQNR figures compare the two
quantizers on equal terms, they are not the models' real int8 accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results"
ZOO = ("mobilenet_v1", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large",
       "efficientnet_b0", "shufflenet_v2")  # fmt: skip


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(ZOO))
    p.add_argument("--calibration", help="calibration DATA for both quantizers (default: seeded)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--mcpu", help="LLVM CPU for sepconv (haswell: AVX2 code on an AVX-512 host)")
    p.add_argument("--runs", type=int, default=60)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--inputs", type=int, default=8, help="validation inputs")
    p.add_argument(
        "--accuracy-inputs",
        type=int,
        default=256,
        help="inputs the SQNR and top-1 figures are over (default 256: on a random-"
        "weight model top-1 over 64 moved by 7 between recipes 0.1 dB apart)",
    )
    p.add_argument("--out", default=str(RESULTS / "int8_zoo"))
    args = p.parse_args(argv)
    os.environ.setdefault("TVM_NUM_THREADS", str(args.threads))
    torch.set_num_threads(args.threads)

    import sepconv
    from sepconv.bench.limits import measure_limits
    from sepconv.bench.peers import ort_quantize_static, ort_reduce_range, ort_session
    from sepconv.compiler.int8.accuracy import cosine, sqnr_db
    from sepconv.compiler.int8.calibration import load_calibration
    from sepconv.compiler.int8.ptq import quantized_reference
    from sepconv.compiler.validation import seeded_inputs
    from sepconv.models import get_model
    from sepconv.targets import resolve_target
    from sepconv.timing import time_interleaved, time_ratio

    tspec = resolve_target("host", mcpu=args.mcpu)
    reduce_range = ort_reduce_range(args.mcpu)
    work = Path(tempfile.mkdtemp(prefix="sepconv-int8-"))
    rows = []
    for name in args.models:
        spec = get_model(name)
        module, x = spec.module, spec.example_input(0)
        a8 = sepconv.compile(name, out=work / f"{name}-int8", force=True, precision="int8",
                             calibration=args.calibration, mcpu=args.mcpu)  # fmt: skip
        a32 = sepconv.compile(name, out=work / f"{name}-fp32", force=True, mcpu=args.mcpu)
        # PT2E's simulated quantization, the reference our operators match: what the recipe
        # (scales, zero points, what stays float) costs before any kernel runs. Rebuilt once
        # (it calibrates again) and validated against here, not by compile and again by validate
        simulated = quantized_reference(a8.manifest.model["quantization"], module, (x,))
        v8 = sepconv.validate(a8.path, num_inputs=args.inputs, quantized_reference=simulated)
        m8, m32 = sepconv.load(a8.path), sepconv.load(a32.path)
        onnx32, onnx8 = work / f"{name}.onnx", work / f"{name}-int8.onnx"
        torch.onnx.export(module, (x,), str(onnx32), dynamo=False, opset_version=17,
                          input_names=["input"])  # fmt: skip
        cal = load_calibration(args.calibration, [tuple(x.shape)], ["float32"])
        ort_quantize_static(onnx32, onnx8, cal.samples, reduce_range)
        s32, s8 = ort_session(onnx32, args.threads), ort_session(onnx8, args.threads)
        # accuracy of both int8 systems (and the simulation) against fp32 eager, same inputs
        acc = {"sepconv-int8": [], "onnxruntime-int8": [], "pt2e-simulated": []}
        top1 = {k: 0 for k in acc}
        for i in range(args.accuracy_inputs):
            xi = seeded_inputs(m8.inputs, i)[0]
            with torch.no_grad():
                ref = module(torch.from_numpy(xi)).numpy()
                sim = simulated(torch.from_numpy(xi))
            sim = (sim[0] if isinstance(sim, (tuple, list)) else sim).numpy()
            outs = (("sepconv-int8", m8(xi)), ("onnxruntime-int8", s8.run(None, {"input": xi})[0]),
                    ("pt2e-simulated", sim))  # fmt: skip
            for k, got in outs:
                acc[k].append((sqnr_db(got, ref), cosine(got, ref)))
                top1[k] += int(np.argmax(got) == np.argmax(ref))
        xn = x.numpy()
        fns = {  # timed right here, in this iteration: the loop variables do not move on
            "sepconv-int8": lambda m8=m8, xn=xn: m8(xn),
            "sepconv-fp32": lambda m32=m32, xn=xn: m32(xn),
            "onnxruntime-int8": lambda s8=s8, xn=xn: s8.run(None, {"input": xn}),
            "onnxruntime-fp32": lambda s32=s32, xn=xn: s32.run(None, {"input": xn}),
        }
        times = time_interleaved(fns, warmup=10, runs=args.runs, rounds=args.rounds)
        ms = {k: getattr(t, "median_ms", None) for k, t in times.items()}

        def ratio(num: str, den: str, times=times) -> float | None:
            a, b = times[num], times[den]
            failed = isinstance(a, Exception) or isinstance(b, Exception)
            return None if failed else time_ratio(a, b)

        row = {
            "model": spec.name, "ms": ms,
            "speedup": {"int8_vs_own_fp32": ratio("sepconv-fp32", "sepconv-int8"),
                        "vs_onnxruntime_int8": ratio("onnxruntime-int8", "sepconv-int8")},
            "sepconv_int8_validation": v8.to_json(),
            "accuracy_vs_fp32": {k: {"sqnr_db_min": min(a for a, _ in v),
                                     "sqnr_db_median": float(np.median([a for a, _ in v])),
                                     "cosine_min": min(c for _, c in v),
                                     "top1_agree": f"{top1[k]}/{args.accuracy_inputs}"}
                                 for k, v in acc.items()},
            "int8_ops": a8.manifest.build.get("sepconv_ops"),
        }  # fmt: skip
        rows.append(row)
        print(json.dumps({"model": spec.name, "ms": ms}), flush=True)
    limits = measure_limits(args.threads, mcpu=args.mcpu, int8=True)  # the dot loop, FMA peak
    report = {
        "machine": {"cpu": platform.processor() or _cpu_name(), "target_key": tspec.key,
                    "mcpu": tspec.mcpu, "threads": args.threads,
                    "limits": limits if isinstance(limits, dict)
                    else getattr(limits, "__dict__", str(limits))},
        "calibration": args.calibration or "16 seeded random inputs",
        "reduce_range": reduce_range,
        "rows": rows,
    }  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1, default=str))
    md = _markdown(report)
    out.with_suffix(".md").write_text(md)
    print(md)
    return 0


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def _markdown(report) -> str:
    lines = [
        f"int8 zoo on {report['machine']['cpu']} (sepconv code: {report['machine']['target_key']}"
        f", mcpu {report['machine']['mcpu']}), "
        f"{report['machine']['threads']} threads, batch 1, calibration: {report['calibration']}",
        "",
        "| model | sepconv int8 ms | sepconv fp32 | ORT int8 | ORT fp32 | int8 vs own fp32 | "
        "vs ORT int8 | SQNR dB sepconv / ORT (median) | top-1 vs fp32 sepconv / ORT | "
        "top-1 of PT2E's simulation |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        ms, a = r["ms"], r["accuracy_vs_fp32"]
        keys = ("sepconv-int8", "sepconv-fp32", "onnxruntime-int8", "onnxruntime-fp32")
        s8, s32, o8, o32 = (ms.get(k) for k in keys)

        def f(v):
            return "—" if v is None else f"{v:.2f}"

        def ratio(v):
            return "—" if v is None else f"{v:.2f}×"

        gain = r["speedup"]
        lines.append(
            f"| {r['model']} | {f(s8)} | {f(s32)} | {f(o8)} | {f(o32)} | "
            f"{ratio(gain['int8_vs_own_fp32'])} | {ratio(gain['vs_onnxruntime_int8'])} | "
            f"{a['sepconv-int8']['sqnr_db_median']:.1f} / "
            f"{a['onnxruntime-int8']['sqnr_db_median']:.1f} | {a['sepconv-int8']['top1_agree']} / "
            f"{a['onnxruntime-int8']['top1_agree']} | "
            f"{a.get('pt2e-simulated', {}).get('top1_agree', '—')} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
