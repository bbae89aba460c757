"""Tuning curve: whole-model latency after N trials, our design spaces vs stock MetaSchedule.

One run, one model (default MobileNetV2 at 224, batch 1, fp32), pinned threads:

1. **Tune** the model from an empty log twice, at the same trial budget: ``--space rules``
   (what ``sepconv tune`` does: our schedule rules' design spaces where they apply, MetaSchedule's
   default space elsewhere) and ``--space default`` (MetaSchedule's own design space for every
   task — stock MetaSchedule). Same tasks (the graph ``compile`` builds), same XGBoost cost model,
   same gradient task scheduler, same builder and runner.
2. **Replay** each log: a log is append-only in measurement order, so its first N records are
   exactly what a run stopped after N measured trials leaves behind. At each checkpoint N the
   model is built with those N records only (tasks without one yet get our rule list — the
   untuned build — so N = 0 is the untuned build in both curves), checked against eager PyTorch,
   and timed. All builds, ONNX Runtime and torch eager are timed together at the end, in
   interleaved rounds (``sepconv.bench.time_interleaved``), so a drifting machine does not tilt
   the curve: median (p10–p90) of ``--runs`` per build.
3. **Kernel level**: per task, our rule's own schedule (found among the rules log's records) and
   each log's best record, as the tuner measured them, summed over the model's calls — steadier
   than whole-model timings on a shared machine.

    python benchmarks/tuning_curve.py                       # ~25 minutes on 2 cores
    python benchmarks/tuning_curve.py --model mobilenet_v2:0.35@96 --trials 60 --runs 10 \\
        --out /tmp/smoke                                    # smoke (~3 minutes)
    → prints the table; writes results/tuning_curve.json and tuning_curve.png

Trials that fail to build or run are counted in the tuner's trial budget but not logged; the
x axis counts logged (successful) trials. The shipped tune logs are not read here.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
SPACES = {
    "rules": "sepconv rules' design spaces (sepconv tune)",
    "default": "stock MetaSchedule design space",
}


def checkpoints(trials: int, points: int) -> list[int]:
    """0, then ``points`` roughly geometric steps ending at ``trials`` (early trials move most)."""
    steps = {0, trials}
    for i in range(points - 1):
        steps.add(max(1, round(trials / 2 ** (points - 1 - i))))
    return sorted(s for s in steps if s <= trials)


def log_prefix(log_dir: Path, n: int, dest: Path) -> Path:
    """A copy of ``log_dir`` holding only its first ``n`` records (and every workload)."""
    from sepconv.compiler.tuning import database as tuning_db

    dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(log_dir / tuning_db.WORKLOAD_FILE, dest / tuning_db.WORKLOAD_FILE)
    records = (log_dir / tuning_db.RECORD_FILE).read_text().splitlines(keepends=True)
    records = [line for line in records if line.strip()]
    (dest / tuning_db.RECORD_FILE).write_text("".join(records[:n]))
    return dest


def logged_records(log_dir: Path) -> int:
    from sepconv.compiler.tuning import database as tuning_db

    return sum(tuning_db.TuneLog(log_dir).count_records().values())


def prepare_checked(peer, module, x, ref):
    """``peer`` prepared and checked against eager PyTorch (never timed if it differs)."""
    import numpy as np

    from sepconv.compiler.validation import compare

    prepared = peer.prepare(module, x)
    out = prepared.fn(x)
    got = np.asarray(out[0] if isinstance(out, list | tuple) else out)
    check = compare("output", got, ref)
    if not check.passed:
        raise SystemExit(
            f"{peer.name}: differs from eager PyTorch (max abs error {check.max_abs_error:.3g} "
            f"> {check.tolerance:.3g}); not timed"
        )
    info = {k: prepared.info[k] for k in ("tasks_tuned", "tasks_total") if k in prepared.info}
    return prepared, {"max_abs_error": check.max_abs_error, **info}


def tune_space(model: str, space: str, trials: int, log_root: Path) -> dict:
    """Tune ``model`` in ``space`` into ``log_root/space``; a log that already holds the budget
    (``--work`` reused) is kept, with the figures of the run that made it."""
    from sepconv.compiler.tuning import tune

    print(f"\n== tuning {model}, {SPACES[space]}: {trials} trials", flush=True)
    report = tune(model, trials=trials, tune_log=log_root / space, space=space)
    stats_file = report.log_dir / "tuning_curve_run.json"
    if report.trials == 0 and stats_file.exists():
        print(f"   reusing {report.log_dir} ({report.stopped})", flush=True)
        return json.loads(stats_file.read_text())
    stats = {
        "log_dir": str(report.log_dir),
        "trials": report.trials,
        "records": logged_records(report.log_dir),
        "tuning_seconds": round(report.tuning_seconds, 1),
        "wall_seconds": round(report.wall_seconds, 1),
        "trials_per_minute": round(report.trials_per_minute, 1),
        "tasks": len(report.tasks),
        "tuner_estimated_ms": round(report.estimated_ms, 4),
        "stopped": report.stopped,
    }
    stats_file.write_text(json.dumps(stats, indent=1))
    return stats


def kernel_level(module, x, logs: dict[str, Path]) -> dict:
    """Per task, as the tuner measured them: our rule's own schedule (found in the rules log) and
    each log's best record, in µs; totals weighted by calls, in ms. Kernel timings are far less
    noisy than whole-model ones on a shared machine, and they need no rebuild."""
    from sepconv.compiler.importer import import_module
    from sepconv.compiler.tuning import best_record_us, extract_tasks, rule_choice_vs_best
    from sepconv.compiler.tuning import database as tuning_db
    from sepconv.targets import resolve_target

    target = resolve_target("host").target
    tasks = extract_tasks([("model", import_module(module, (x,)))], target)
    dbs = {space: tuning_db.open_database([d]) for space, d in logs.items()}
    rows = []
    for task in tasks:
        row: dict = {"task": task.name, "weight": task.weight}
        for space, db in dbs.items():
            if space == "rules":  # the only log that measured the rule's own schedule
                row["rule_us"], row[f"{space}_best_us"] = rule_choice_vs_best(task, target, db)
            else:
                row[f"{space}_best_us"] = best_record_us(task, db)
        rows.append(row)
    keys = ["rule_us"] * ("rules" in dbs) + [f"{space}_best_us" for space in dbs]
    complete = [r for r in rows if all(r.get(k) is not None for k in keys)]
    totals = {k[:-3] + "_ms": sum(r["weight"] * r[k] for r in complete) / 1e3 for k in keys}
    return {"tasks": rows, "tasks_compared": len(complete), "totals": totals}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for space, curve in result["curves"].items():
        xs = [p["records"] for p in curve]
        ys = [p["median_ms"] for p in curve]
        lo = [p["median_ms"] - p["p10_ms"] for p in curve]
        hi = [p["p90_ms"] - p["median_ms"] for p in curve]
        ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, label=SPACES[space])
    untuned_ms = next(iter(result["curves"].values()))[0]["median_ms"]
    for name, ref in result["references"].items():
        if ref is not None and ref["median_ms"] < 3 * untuned_ms:  # else it squashes the curves
            ax.axhline(ref["median_ms"], ls="--", lw=1, color="gray")
            ax.annotate(name, (0, ref["median_ms"]), textcoords="offset points", xytext=(4, 3),
                        fontsize=8, color="gray")  # fmt: skip
    ax.set_xlabel("trials measured (records in the log)")
    ax.set_ylabel("whole-model latency, ms (median, p10–p90)")
    ax.set_title(
        f"{result['model']}: tuning curve, batch 1, {result['threads']} threads "
        f"({result['target_key']})"
    )
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def print_table(result: dict) -> None:
    curves = result["curves"]
    spaces = list(curves)
    print(f"\n{result['model']} — whole-model latency (ms, median) after N logged trials")
    print(f"{'N':>6} " + " ".join(f"{s:>16}" for s in spaces) + "   tasks tuned")
    for i, point in enumerate(curves[spaces[0]]):
        row = [curves[s][i] if i < len(curves[s]) else None for s in spaces]
        cells = " ".join(f"{p['median_ms']:>16.3f}" if p else f"{'–':>16}" for p in row)
        tuned = " ".join(f"{p['tasks_tuned']}/{p['tasks_total']}" for p in row if p)
        print(f"{point['checkpoint']:>6} {cells}   {tuned}")
    for name, ref in result["references"].items():
        if ref is not None:
            print(f"{name}: {ref['median_ms']:.3f} ms")
    k = result["kernel_level"]
    print(
        f"kernel level (Σ calls × µs over the {k['tasks_compared']} tasks with every figure, as "
        "the tuner measured them): " + ", ".join(f"{n} {v:.3f} ms" for n, v in k["totals"].items())
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="mobilenet_v2", help="zoo name (default mobilenet_v2)")
    ap.add_argument("--trials", type=int, default=800, help="budget per space (default 800)")
    ap.add_argument("--points", type=int, default=6, help="checkpoints after 0 (default 6)")
    ap.add_argument("--spaces", default="rules,default", help="default: rules,default")
    ap.add_argument("--runs", type=int, default=50, help="timed runs per build (default 50)")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (default 5)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", type=Path, help="keep the tune logs and builds here (default: temp)")
    ap.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    args = ap.parse_args(argv)
    os.environ["TVM_NUM_THREADS"] = str(args.threads)  # before TVM's thread pool starts
    spaces = [s.strip() for s in args.spaces.split(",") if s.strip()]
    if not spaces or any(s not in SPACES for s in spaces):
        ap.error(f"--spaces takes a comma-separated subset of {', '.join(SPACES)}")

    import torch

    from sepconv.bench.peers import (
        BenchSettings,
        OnnxRuntime,
        Sepconv,
        TorchEager,
        time_interleaved,
    )
    from sepconv.bench.report import machine_info, versions
    from sepconv.models import get_model
    from sepconv.targets import resolve_target

    torch.set_num_threads(args.threads)
    work = args.work or Path(tempfile.mkdtemp(prefix="sepconv-tuning-curve-"))
    spec = get_model(args.model)
    module, x = spec.module, spec.example_input(0)
    with torch.no_grad():
        ref = module(x).numpy()
    key = resolve_target("host").key

    def settings(build_dir: Path, logs) -> BenchSettings:
        return BenchSettings(
            runs=args.runs, warmup=args.warmup, threads=args.threads, tune_logs=logs,
            build_dir=build_dir,
        )  # fmt: skip

    tuning = {s: tune_space(spec.name, s, args.trials, work / "logs") for s in spaces}
    systems: dict[str, tuple] = {}  # name → (prepared, info)
    for peer_cls in (TorchEager, OnnxRuntime):
        peer = peer_cls(settings(work / "peers", False))
        if peer.available() is None:
            systems[peer.name] = prepare_checked(peer, module, x, ref)
    for space in spaces:
        log_dir = Path(tuning[space]["log_dir"])
        for n in checkpoints(tuning[space]["records"], args.points):
            where = work / f"{space}-{n}"
            prefix = log_prefix(log_dir, n, where / "log")
            # one build folder per checkpoint: dlopen returns an already-loaded library by path
            systems[f"{space}@{n}"] = prepare_checked(
                Sepconv(settings(where, [prefix])), module, x, ref
            )
    print(f"\n== timing {len(systems)} builds and peers, interleaved", flush=True)
    timings = time_interleaved(
        {name: prepared.fn for name, (prepared, _) in systems.items()},
        x, warmup=args.warmup, runs=args.runs, rounds=args.rounds,
    )  # fmt: skip

    def point(name: str) -> dict:
        t = timings[name]
        if isinstance(t, Exception):
            raise SystemExit(f"{name}: timing run failed: {t}")
        ms = {"median_ms": t.median_ms, "p10_ms": t.p10_ms, "p90_ms": t.p90_ms}
        return {**ms, **systems[name][1]}

    references = {n: point(n) if n in systems else None for n in ("torch", "onnxruntime")}
    curves = {
        space: [
            {"checkpoint": int(name.split("@")[1]), "records": int(name.split("@")[1]),
             **point(name)}
            for name in systems if name.startswith(f"{space}@")
        ]
        for space in spaces
    }  # fmt: skip

    print("\n== kernel level: the rule's own schedule vs each log's best", flush=True)
    kernels = kernel_level(module, x, {s: Path(t["log_dir"]) for s, t in tuning.items()})
    result = {
        "schema": "sepconv-tuning-curve/1",
        "model": spec.name,
        "target_key": key,
        "threads": args.threads,
        "runs": args.runs,
        "rounds": args.rounds,
        "trials_budget": args.trials,
        "machine": machine_info(),
        "versions": versions(),
        "tuning": tuning,
        "references": references,
        "curves": curves,
        "kernel_level": kernels,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    json_path, png_path = args.out / "tuning_curve.json", args.out / "tuning_curve.png"
    json_path.write_text(json.dumps(result, indent=1))
    plot(result, png_path)
    print_table(result)
    for space, t in tuning.items():
        print(f"{space}: {t['trials']} trials ({t['records']} logged) in {t['tuning_seconds']} s, "
              f"{t['trials_per_minute']} trials/min")  # fmt: skip
    print(f"wrote {json_path}, {png_path}")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
