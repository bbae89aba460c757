"""Benchmark the CPU rule list on a zoo model: torch eager vs TVM untuned vs TVM + our rules.

Compile → check → time, in that order: each TVM build is validated against torch eager before
it is timed, and all three are timed in the same run (median of ``--runs`` after warm-up, by the
shared timer :mod:`sepconv.timing`).

    TVM_NUM_THREADS=2 python benchmarks/schedule_rules.py mobilenet_v2 --threads 2 --layers 8

``--layers N`` also times the N most expensive PrimFuncs one by one (untuned vs scheduled),
with the rule that scheduled each and its achieved GFLOP/s or GB/s (TVM's time evaluator).
The lowering and VM build it measures are the compiler's (:mod:`sepconv.compiler.debug`).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from sepconv.compiler.debug import build_vm, first_tensor, lower_to_tir
from sepconv.timing import Timing, time_call


def _func_cost(func) -> tuple[str, float]:
    """('GFLOP/s', flops) for a conv/matmul, else ('GB/s', bytes of its parameters)."""
    from tvm import s_tir

    from sepconv.schedules.analysis import match_conv2d_nchw

    info = match_conv2d_nchw(s_tir.Schedule(func))
    if info is not None:
        return "GFLOP/s", 2.0 * info.macs
    nbytes = 0
    for p in func.params:
        if hasattr(p, "shape"):
            nbytes += int(np.prod([int(s) for s in p.shape])) * 4
    return "GB/s", float(nbytes)


def time_primfunc(func, target, number: int = 20, repeat: int = 7) -> float:
    """Median µs of one PrimFunc on random inputs."""
    import tvm

    from sepconv.targets import ensure_runs_here

    ensure_runs_here(target, "a kernel")
    f = func.with_attr("global_symbol", "main")
    lib = tvm.compile(tvm.IRModule({"main": f}), target=target).jit()
    dev = tvm.cpu()
    rng = np.random.default_rng(0)
    args = [
        tvm.runtime.tensor(rng.uniform(-1, 1, [int(s) for s in p.shape]).astype(str(p.dtype)), dev)
        for p in func.params
    ]
    timer = lib.time_evaluator("main", dev, number=number, repeat=repeat, min_repeat_ms=20)
    return Timing.from_evaluator(timer, *args).median_us


def main(argv=None) -> dict:
    import torch
    import tvm

    from sepconv.models import get_model
    from sepconv.schedules import apply_schedules

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", default="mobilenet_v2")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--mcpu", default=None, help="LLVM CPU name (default: this machine's)")
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--layers", type=int, default=0, help="also time the N costliest functions")
    ap.add_argument("--skip-untuned", action="store_true")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    os.environ.setdefault("TVM_NUM_THREADS", str(args.threads))
    from sepconv.targets import resolve_target

    target = resolve_target("host", mcpu=args.mcpu, num_cores=args.threads).target
    spec = get_model(args.model)
    x = spec.example_input()
    model = spec.module.eval()
    with torch.no_grad():
        ref = model(x).numpy()
    tol = 1e-4 * float(np.abs(ref).max()) + 1e-5

    mod = lower_to_tir(model, x, target)
    report: dict[str, str] = {}
    t0 = time.perf_counter()
    scheduled = apply_schedules(mod, target, report=report)
    sched_s = time.perf_counter() - t0
    xt = tvm.runtime.tensor(x.numpy())

    results = {"model": spec.name, "threads": args.threads, "target": str(target)}
    variants = [("tvm+rules", scheduled)]
    if not args.skip_untuned:
        variants.append(("tvm untuned", mod))
    vms = {}
    for name, m in variants:
        vm = build_vm(m, target)
        out = first_tensor(vm["main"](xt))
        err = float(np.abs(out - ref).max())
        if err > tol:
            raise SystemExit(f"{name}: max abs err {err:.3g} > tol {tol:.3g}: not timing it")
        results[f"{name} max_err"] = err
        vms[name] = vm
    with torch.no_grad():
        results["torch eager ms"] = time_call(model, x, warmup=5, runs=args.runs).median_ms
    for name, vm in vms.items():
        results[f"{name} ms"] = time_call(vm["main"], xt, warmup=5, runs=args.runs).median_ms
    results["schedule seconds"] = sched_s
    results["rule hits"] = {
        r: sum(1 for v in report.values() if v == r) for r in set(report.values())
    }
    try:
        results["loadavg"] = os.getloadavg()[0]
    except OSError:
        pass

    print(f"{spec.name}, batch 1, {args.threads} threads, median of {args.runs}")
    print(f"  torch eager    {results['torch eager ms']:8.2f} ms")
    for name in vms:
        print(
            f"  {name:14s} {results[name + ' ms']:8.2f} ms   "
            f"(max err {results[name + ' max_err']:.2g})"
        )
    print(f"  rules: {results['rule hits']}  (scheduling took {sched_s:.2f} s)")

    if args.layers:
        # count how often each function is called in main
        from tvm import relax

        calls: dict[str, int] = {}

        def visit(expr):
            if isinstance(expr, relax.Call):
                for arg in expr.args:
                    if isinstance(arg, tvm.ir.GlobalVar):
                        calls[arg.name_hint] = calls.get(arg.name_hint, 0) + 1

        relax.analysis.post_order_visit(scheduled["main"].body, visit)
        rows = []
        for gv, func in mod.functions_items():
            if not isinstance(func, tvm.tirx.PrimFunc):
                continue
            name = gv.name_hint
            after = time_primfunc(scheduled[name], target)
            rows.append((after * calls.get(name, 1), name, func, after))
        rows.sort(key=lambda r: r[0], reverse=True)
        results["layers"] = []
        print(
            f"\n  {'function':42s} {'rule':16s} {'calls':>5s} "
            f"{'untuned µs':>11s} {'ours µs':>9s}  rate"
        )
        for _, name, func, after in rows[: args.layers]:
            before = time_primfunc(func, target, number=2, repeat=3)
            unit, amount = _func_cost(func)
            rate = amount / after / 1e3
            print(
                f"  {name:42s} {report.get(name, '-'):16s} {calls.get(name, 1):5d} "
                f"{before:11.1f} {after:9.1f}  {rate:6.1f} {unit}"
            )
            results["layers"].append(
                {"name": name, "rule": report.get(name), "calls": calls.get(name, 1),
                 "untuned_us": before, "ours_us": after, unit: rate}
            )  # fmt: skip
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)
    return results


if __name__ == "__main__":
    main()
