"""Fixed costs of a compile and of a CUDA tuning run, each against the form it replaced.

1. **Reading the shipped tune log** (every ``sepconv compile`` does): the log as shipped, with
   workloads stored without TVM's JSON indentation, vs the same log with every workload
   re-serialized by TVM itself (indented, as TVM's JSONDatabase writes it).
2. **Importing TVM's tensor intrinsics** (every CUDA tuning run does): plain, vs inside
   :func:`sepconv.compiler.tvm_compat.cheap_inspect_stack` (each run checks that CUDA's tensor-core
   intrinsics got registered).

Each measurement is a fresh Python process (imports are cached per process), the two forms
interleaved, order reversed each round; the table shows medians.

    python benchmarks/compile_overheads.py --rounds 5 --import-rounds 2
    → prints a table, writes benchmarks/results/compile_overheads.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
LOG = ROOT / "tune_logs" / "x86_64-avx512"

READ_LOG = """
import sys, time
from sepconv.compiler.tuning import database as tuning_db
t = time.perf_counter()
db = tuning_db.open_database([sys.argv[1]], warn=False, top_k=1)
print(time.perf_counter() - t, db.report.workloads, db.report.records)
"""

IMPORT_INTRINSICS = """
import sys, time, contextlib
import torch, tvm  # what a tuning process has loaded by then
from sepconv.compiler import tvm_compat
cheap = sys.argv[1] == "cheap"
t = time.perf_counter()
with (tvm_compat.cheap_inspect_stack() if cheap else contextlib.nullcontext()):
    import tvm.s_tir.tensor_intrin
elapsed = time.perf_counter() - t
from tvm.s_tir import TensorIntrin
names = ["wmma_sync_16x16x16_f16f16f32", "wmma_load_16x16x16_f16_a_shared", "mma_f16f16f32_trans_b"]
missing = [n for n in names if TensorIntrin.get(n, allow_missing=True) is None]
assert not missing, missing  # the cheap import registers what the plain one does
print(elapsed)
"""


def indented_copy(src: Path, dst: Path) -> None:
    """``src`` with every workload as TVM serializes it (indented JSON inside base64)."""
    from tvm.s_tir.meta_schedule.database import Workload

    from sepconv.compiler.tuning import database as tuning_db

    dst.mkdir(parents=True, exist_ok=True)
    lines = []
    for line in (src / tuning_db.WORKLOAD_FILE).read_text().splitlines():
        if line.strip():
            lines.append(json.dumps(Workload(Workload.from_json(json.loads(line)).mod).as_json()))
    (dst / tuning_db.WORKLOAD_FILE).write_text("\n".join(lines) + "\n")
    (dst / tuning_db.RECORD_FILE).write_text((src / tuning_db.RECORD_FILE).read_text())


def run(script: str, *args: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", script, *args], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return out.stdout.split()


def interleaved(variants: dict[str, tuple], rounds: int) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {k: [] for k in variants}
    names = list(variants)
    for r in range(rounds):
        for name in names if r % 2 == 0 else reversed(names):
            script, *args = variants[name]
            samples[name].append(float(run(script, *args)[0]))
    return samples


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5, help="log reads per form")
    ap.add_argument("--import-rounds", type=int, default=2, help="imports per form")
    ap.add_argument("--out", type=Path, default=RESULTS / "compile_overheads.json")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="sepconv-overheads-") as tmp:
        indented = Path(tmp) / "indented"
        indented_copy(LOG, indented)
        sizes = {
            "shipped (compact)": (LOG / "database_workload.json").stat().st_size,
            "TVM's indented form": (indented / "database_workload.json").stat().st_size,
        }
        reads = interleaved(
            {"shipped (compact)": (READ_LOG, str(LOG)),
             "TVM's indented form": (READ_LOG, str(indented))},
            args.rounds,
        )  # fmt: skip
    imports = interleaved(
        {"cheap inspect.stack": (IMPORT_INTRINSICS, "cheap"),
         "plain import": (IMPORT_INTRINSICS, "plain")},
        args.import_rounds,
    )  # fmt: skip
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "log_workload_bytes": sizes,
        "log_read_s": {k: {"median": statistics.median(v), "samples": v} for k, v in reads.items()},
        "tensor_intrin_import_s": {
            k: {"median": statistics.median(v), "samples": v} for k, v in imports.items()
        },
    }
    print(f"\n{'what':<40} {'form':<22} {'median':>9}")
    for k, v in result["log_read_s"].items():
        print(f"{'read shipped tune log (' + str(args.rounds) + ' runs)':<40} {k:<22} "
              f"{v['median']:8.2f}s   workloads file {sizes[k] / 1e6:.1f} MB")  # fmt: skip
    for k, v in result["tensor_intrin_import_s"].items():
        print(f"{'import tensor intrinsics (' + str(args.import_rounds) + ' runs)':<40} {k:<22} "
              f"{v['median']:8.2f}s")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
