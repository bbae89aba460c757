"""int8 observers: which activation-range observer to default to, measured on the zoo.

For each zoo model at 224, quantize with each observer (``compiler/int8/ptq.py``: ``minmax``,
``histogram``) on the same calibration inputs, and measure the simulated quantization — what an
int8 artifact matches (``sepconv validate``'s first reference) — against fp32 eager on held-out
seeded inputs: SQNR (dB), cosine, top-1 agreement. No TVM build: the observer decides the scales,
the compiler then reproduces them.

    python benchmarks/int8_observers.py [--models ...] [--calibration DATA] [--inputs 8]
    → prints the table; writes benchmarks/results/int8_observers.json and .md

Random-weight models with random calibration: the figures rank observers on equal terms, they
are not the models' real int8 accuracy.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from int8_zoo import RESULTS, ZOO  # the same models, results beside its


def main(argv=None) -> int:
    from sepconv.compiler.int8.accuracy import cosine, sqnr_db
    from sepconv.compiler.int8.ptq import OBSERVERS, full_range_dot, quantize_model
    from sepconv.models import get_model
    from sepconv.targets import resolve_target

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(ZOO))
    p.add_argument("--observers", nargs="+", default=list(OBSERVERS), choices=OBSERVERS)
    p.add_argument("--calibration", help="calibration DATA (default: 16 seeded inputs)")
    p.add_argument("--inputs", type=int, default=8, help="held-out validation inputs")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(RESULTS / "int8_observers"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    tspec = resolve_target("host")
    full_range = full_range_dot(tspec.isa)
    rows = []
    for name in args.models:
        spec = get_model(name)
        module, x = spec.module.eval(), spec.example_input(0)
        held_out = [spec.example_input(1000 + i) for i in range(args.inputs)]
        with torch.no_grad():
            refs = [module(h).numpy() for h in held_out]
        row = {"model": spec.name, "observers": {}}
        for obs in args.observers:
            t0 = time.perf_counter()
            reference, record = quantize_model(
                module, (x,), calibration=args.calibration, target_arch=tspec.host_arch,
                observer=obs, full_range=full_range,
            )  # fmt: skip
            seconds = time.perf_counter() - t0
            with torch.no_grad():
                gots = [reference(h).numpy() for h in held_out]
            sq = [sqnr_db(g, r) for g, r in zip(gots, refs)]
            row["observers"][obs] = {
                "sqnr_db_median": float(np.median(sq)),
                "sqnr_db_min": float(min(sq)),
                "cosine_min": float(min(cosine(g, r) for g, r in zip(gots, refs))),
                "top1_agree": int(sum(np.argmax(g) == np.argmax(r) for g, r in zip(gots, refs))),
                "quantize_s": seconds,
                "samples": record["samples"],
            }
        rows.append(row)
        print(json.dumps(row), flush=True)
    report = {
        "machine": {"target_key": tspec.key, "mcpu": tspec.mcpu, "threads": args.threads},
        "scheme": "activations u8 0…255" if full_range else "activations per target",
        "calibration": args.calibration or "16 seeded random inputs",
        "held_out_inputs": args.inputs,
        "rows": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1))
    md = _markdown(report, args.observers)
    out.with_suffix(".md").write_text(md)
    print(md)
    return 0


def _markdown(report, observers) -> str:
    head = " | ".join(f"{o} SQNR dB (min) | {o} top-1" for o in observers)
    lines = [
        f"int8 observers, {report['machine']['target_key']}, calibration: "
        f"{report['calibration']}, {report['held_out_inputs']} held-out inputs; SQNR of the "
        "simulated quantization against fp32 (median over inputs, worst in brackets)",
        "",
        f"| model | {head} |",
        "|---|" + "---|" * (2 * len(observers)),
    ]
    n = report["held_out_inputs"]
    for r in report["rows"]:
        cells = []
        for o in observers:
            m = r["observers"][o]
            cells += [
                f"{m['sqnr_db_median']:.1f} ({m['sqnr_db_min']:.1f})",
                f"{m['top1_agree']}/{n}",
            ]
        lines.append(f"| {r['model']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
