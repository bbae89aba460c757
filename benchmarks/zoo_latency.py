"""Zoo latency: sepconv (tuned) vs sepconv untuned vs torch eager, ONNX Runtime, OpenVINO and
ExecuTorch (XNNPACK), every zoo model.

A preset over ``sepconv bench`` (:func:`sepconv.bench.run_bench`): each model at 224 (its own
resolution for EfficientNet), batch 1, fp32, 2 threads; every system validated against eager
PyTorch before it is timed; median (p10–p90) of ≥50 runs after warm-up. sepconv uses the tuning
records shipped for the target when there are any (the table says "tuned N/M tasks" or
"untuned"); the ``sepconv-untuned`` peer is the same build without them (our schedule rules
alone), so "vs sepconv-untuned" is what the shipped tuning buys. ``--untuned`` ignores the
records for sepconv itself too.

    python benchmarks/zoo_latency.py
    → prints the table; writes benchmarks/results/zoo_latency.json, zoo_latency.md,
      zoo_latency_latency_vs_macs.png, zoo_latency_speedup.png

Run it on an otherwise idle machine: the timings are only as quiet as the cores.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
ZOO = (
    "mobilenet_v1",
    "mobilenet_v2",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "efficientnet_b0",
    "shufflenet_v2",
)
PEERS = "torch,onnxruntime,openvino,executorch,sepconv-untuned"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(ZOO), help="default: the zoo at 224")
    p.add_argument("--peers", default=PEERS, help=f"default: {PEERS}")
    p.add_argument("--runs", type=int, default=50, help="timed runs per system (default 50)")
    p.add_argument("--warmup", type=int, default=10, help="untimed runs first (default 10)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (default 5)")
    p.add_argument("--threads", type=int, default=2, help="threads for every system (default 2)")
    p.add_argument("--target", default="host", help="target triple (default: host)")
    p.add_argument("--mcpu", help="LLVM CPU for sepconv (haswell: AVX2 code on an AVX-512 host)")
    p.add_argument("--stem", default="zoo_latency", help="results file names (default zoo_latency)")
    p.add_argument("--untuned", action="store_true", help="ignore the shipped tuning records")
    p.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    args = p.parse_args(argv)
    os.environ["TVM_NUM_THREADS"] = str(args.threads)  # before TVM's thread pool starts

    from sepconv.bench import run_bench
    from sepconv.errors import SepconvError

    try:
        report = run_bench(
            args.models,
            args.peers,
            target=args.target,
            mcpu=args.mcpu,
            batch=1,
            runs=args.runs,
            warmup=args.warmup,
            rounds=args.rounds,
            threads=args.threads,
            tune_logs=not args.untuned,
        )
    except SepconvError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    files = report.write(args.out, stem=args.stem)
    print(report.markdown())
    print("wrote " + ", ".join(str(f) for f in files.values()))
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
