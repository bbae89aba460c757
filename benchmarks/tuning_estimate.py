"""Tuner estimate vs the model: what the tune log says each function takes, against its time in
the model, under the three ways ``sepconv tune --cache`` can time candidates.

Per model (default MobileNetV3-Small, V2 and V1 at 224; batch 1, fp32, 2 threads):

1. **The model**: compiled with the shipped tune logs' records for this CPU (with
   ``--records-from-other-cpus``, any CPU's: they are re-timed here either way), timed whole
   (TVM's time evaluator, median) and profiled per function inside the model (``sepconv
   profile``'s instrument hook).
2. **The records**: each task's best record, as logged (``build.functions[…].record_us``), and
   re-timed here now in a fresh process pool in each cache state: ``model`` (the default: calls
   rotate over copies of the weights and output spanning twice the L2 caches, the input
   shared), ``warm`` (MetaSchedule's: the same arguments again and again) and ``flushed`` (every
   argument but the input flushed from the caches before each single call).
3. **Estimates**: Σ over functions of calls × µs per way, against the model's time.

    python benchmarks/tuning_estimate.py               # ~4 minutes a model on 2 cores
    python benchmarks/tuning_estimate.py --models mobilenet_v3_small:0.5@96 --runs 10 --out /tmp/e
    → prints the table; writes results/tuning_estimate.json

Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = ("mobilenet_v3_small", "mobilenet_v2", "mobilenet_v1")
WAYS = {way: {"cache": way} for way in ("warm", "model", "flushed")}  # MeasureConfig per way


def retime_records(
    graph, tspec, ways: dict, any_cpu: bool
) -> tuple[dict[str, float], dict[str, dict]]:
    """(calls per task, {way: µs per call per task}) for each task's best shipped record."""
    from tvm.s_tir import meta_schedule as ms

    from sepconv.compiler.tuning import database as tuning_db
    from sepconv.compiler.tuning.measure import MeasureConfig, make_pool_builder, make_runner
    from sepconv.compiler.tuning.tasks import extract_tasks
    from sepconv.targets.devices import parse_device

    tasks = extract_tasks([("model", graph)], tspec.target)
    cpu = None if any_cpu else tuning_db.record_cpu(tspec.target)
    db, _ = tuning_db.database_for_build(tspec.key, cpu=cpu)
    cands, calls = [], {}
    for t in tasks:
        top = db.get_top_k(db.commit_workload(t.mod), 1) if db is not None else []
        if top:
            cands.append((t.name, top[0].as_measure_candidate()))
            calls[t.name] = t.weight
    builder = make_pool_builder(max_workers=2)
    try:
        built = builder.build([ms.builder.BuilderInput(c.sch.mod, tspec.target) for _, c in cands])
    finally:
        builder.shutdown()
    inputs = [
        ms.runner.RunnerInput(b.artifact_path, "cpu", c.args_info)
        for b, (_, c) in zip(built, cands)
        if b.error_msg is None
    ]
    names = [n for b, (n, _) in zip(built, cands) if b.error_msg is None]
    out = {}
    for way, fields in ways.items():
        runner = make_runner(parse_device("local"), MeasureConfig(**fields))
        us = {}
        for name, fut in zip(names, runner.run(inputs)):
            res = fut.result()
            secs = tuning_db.mean_secs(res.run_secs) if res.error_msg is None else None
            if secs is not None:
                us[name] = secs * 1e6
        out[way] = us
    return calls, out


def estimate_model(name: str, threads: int, runs: int, workdir: Path, any_cpu: bool) -> dict:
    import sepconv
    from sepconv.bench.profile import profile
    from sepconv.compiler.importer import import_module
    from sepconv.models.registry import get_model
    from sepconv.targets import resolve_target

    art = sepconv.compile(
        name, target="host", out=workdir / name.replace(":", "_"), force=True,
        records_from_other_cpus=any_cpu,
    )  # fmt: skip
    prof = profile(art.path, threads=threads, runs=runs)
    here = {r.name: r for r in prof.rows}
    spec = get_model(name)
    calls, timed = retime_records(
        import_module(spec.module, (spec.example_input(),)), resolve_target("host"), WAYS, any_cpu
    )
    funcs = sorted(set(calls) & set(here) & set.intersection(*(set(v) for v in timed.values())))
    logged = {n: (art.manifest.build["functions"].get(n) or {}).get("record_us") for n in funcs}
    sums = {
        "in_model": sum(here[n].us for n in funcs) / 1e3,
        "logged": sum(calls[n] * (logged[n] or 0.0) for n in funcs) / 1e3,
        **{way: sum(calls[n] * us[n] for n in funcs) / 1e3 for way, us in timed.items()},
    }
    rows = [
        {
            "function": n, "calls": calls[n], "in_model_us": here[n].us,
            "logged_us": None if logged[n] is None else calls[n] * logged[n],
            **{f"{way}_us": calls[n] * us[n] for way, us in timed.items()},
        }
        for n in sorted(funcs, key=lambda n: -here[n].us)
    ]  # fmt: skip
    return {
        "model": name, "model_ms": prof.model_ms, "functions": len(funcs),
        "functions_total": len(here), "tasks_tuned": art.manifest.build["tasks_tuned"],
        "sums_ms": sums, "rows": rows, "limits": prof.limits.to_json(),
    }  # fmt: skip


def table(results: list[dict]) -> str:
    ways = [w for w in WAYS if all(w in r["sums_ms"] for r in results)]
    head = (
        "| model | functions | model ms | Σ in model (hook) | logged | "
        + " | ".join(f"re-timed {w}" for w in ways)
        + " |"
    )
    lines = [head, "|---|---|---|---|---|" + "---|" * len(ways)]
    for r in results:
        s, m = r["sums_ms"], r["model_ms"]
        cells = [f"{s[k]:.3f} ({s[k] / m:.2f}×)" for k in ("in_model", "logged", *ways)]
        funcs = f"{r['functions']}/{r['functions_total']}"
        lines.append(f"| {r['model']} | {funcs} | {m:.3f} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Σ over the functions built from records (calls × µs); (×) = Σ / model ms.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--threads", type=int, default=2, help="threads (default 2)")
    p.add_argument("--runs", type=int, default=50, help="profiled runs (default 50)")
    p.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    p.add_argument(
        "--records-from-other-cpus",
        action="store_true",
        help="build with and re-time the records of any CPU (default: this CPU's, as a build)",
    )
    args = p.parse_args(argv)
    os.environ["TVM_NUM_THREADS"] = str(args.threads)  # before TVM's thread pool starts

    from sepconv.bench.report import machine_info

    results = []
    with tempfile.TemporaryDirectory(prefix="sepconv-estimate-") as tmp:
        for name in args.models:
            results.append(
                estimate_model(
                    name, args.threads, args.runs, Path(tmp), args.records_from_other_cpus
                )
            )
            print(table(results[-1:]).splitlines()[2], flush=True)
    print(table(results))
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "tuning_estimate.json"
    path.write_text(
        json.dumps({"machine": machine_info(), "threads": args.threads,
                    "records_from_other_cpus": args.records_from_other_cpus, "models": results},
                   indent=1) + "\n"
    )  # fmt: skip
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
