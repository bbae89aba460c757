"""A/B of two builds of the same models: artifacts from two sepconv versions (or two settings),
each validated against eager PyTorch first, then timed in one interleaved run.

    # build A and B however they differ (another checkout's sepconv, --no-tune-logs, --mcpu …)
    python benchmarks/ab_artifacts.py --a build/before --b build/after --threads 2

Every ``NAME.sepconv`` in ``--a`` is paired with the one of the same name in ``--b``. Both must be
zoo artifacts (validation rebuilds the reference from the manifest). Prints a table (median ms
and p10–p90 of each, B/A paired by round: ``sepconv.timing.time_ratio``) and writes JSON
(default ``benchmarks/results/ab_artifacts.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--a", required=True, type=Path, help="folder of artifacts (system A)")
    ap.add_argument("--b", required=True, type=Path, help="folder of artifacts (system B)")
    ap.add_argument("--label-a", default="A")
    ap.add_argument("--label-b", default="B")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/ab_artifacts.json"))
    args = ap.parse_args(argv)
    os.environ["TVM_NUM_THREADS"] = str(args.threads)  # before TVM's pool starts

    import numpy as np
    import torch

    import sepconv
    from sepconv.timing import time_interleaved, time_ratio

    torch.set_num_threads(args.threads)
    pairs = sorted(
        (p.name, p, args.b / p.name) for p in args.a.glob("*.sepconv") if (args.b / p.name).is_dir()
    )
    if not pairs:
        print(f"no artifact of {args.a} has a namesake in {args.b}", file=sys.stderr)
        return 2
    rows = []
    for name, path_a, path_b in pairs:
        models = {args.label_a: sepconv.load(path_a), args.label_b: sepconv.load(path_b)}
        checks = {k: sepconv.validate(m, record=False) for k, m in models.items()}
        if not all(c.passed for c in checks.values()):
            print(f"{name}: validation failed, not timed", file=sys.stderr)
            rows.append({"model": name, "validated": {k: c.passed for k, c in checks.items()}})
            continue
        info = models[args.label_a].inputs[0]
        x = np.random.default_rng(0).standard_normal(info.shape).astype(info.dtype)
        t = time_interleaved(
            models, x, warmup=args.warmup, runs=args.runs, rounds=args.rounds
        )  # fmt: skip
        a, b = t[args.label_a], t[args.label_b]
        rows.append({
            "model": name, "validated": True,
            args.label_a: a.to_dict(), args.label_b: b.to_dict(),
            "b_over_a": time_ratio(b, a),  # paired by round
        })  # fmt: skip
    width = max(len(r["model"]) for r in rows)
    print(f"{'model':<{width}}  {args.label_a:>22}  {args.label_b:>22}  B/A")
    for r in rows:
        if r["validated"] is not True:
            print(f"{r['model']:<{width}}  validation failed: {r['validated']}")
            continue
        a, b = r[args.label_a], r[args.label_b]
        cell = "{median_ms:7.2f} ({p10_ms:.2f}–{p90_ms:.2f})".format
        print(f"{r['model']:<{width}}  {cell(**a):>22}  {cell(**b):>22}  {r['b_over_a']:.3f}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"threads": args.threads, "runs": args.runs,
                                     "rounds": args.rounds, "rows": rows}, indent=2))  # fmt: skip
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
