"""Tuning end to end on this machine: records written as measured, used by builds (after fusion),
shared across models, kept through SIGKILL, not re-measured, safe with two tuners at once.

A toy network at 16×16 and a handful of trials keep this to about two minutes on two cores.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import tvm_ffi

import sepconv
from sepconv.compiler.tuning import MeasureConfig, format_report, rule_spaces, tune
from sepconv.compiler.tuning import database as tuning_db
from sepconv.targets import resolve_target
from tests.nets import TinySeparable, randomize_bn, tiny_separable

ROOT = Path(__file__).resolve().parents[2]
X = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
FLATTEN = "fused_transpose_reshape"  # the tiny model's head: [N, 1, 1, C] → [N, C]
SEPCONV_TASKS = "sepconv"  # the stem conv and the fused depthwise→pointwise block

# A tuning run in its own process (for SIGKILL and for two tuners at once).
TUNE_SCRIPT = """
import json, sys, torch
from sepconv.compiler.tuning import tune
from tests.nets import tiny_separable
log_dir, trials, per_iter, tasks = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
r = tune(tiny_separable(), example_input=x, trials=trials, tune_log=log_dir, task_filter=tasks,
         trials_per_iter=per_iter, confirm_rounds=0, progress=False)
print("REPORT " + json.dumps(r.to_json()))
"""


def tuner(log_dir, trials, per_iter=4, tasks=SEPCONV_TASKS) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT), TVM_NUM_THREADS="1")
    return subprocess.Popen(
        [sys.executable, "-c", TUNE_SCRIPT, str(log_dir), str(trials), str(per_iter), tasks],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def report_of(proc: subprocess.Popen, timeout: float = 300) -> dict:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    line = next(ln for ln in out.splitlines() if ln.startswith("REPORT "))
    return json.loads(line[len("REPORT ") :])


def key_dir(root: Path) -> Path:
    return root / resolve_target("host").key


def record_lines(log: Path) -> list[str]:
    path = log / tuning_db.RECORD_FILE
    return [ln for ln in path.read_text().splitlines() if ln.strip()] if path.exists() else []


def candidate_hashes(log: Path) -> list[int]:
    """The structural hash of every logged candidate's module (its trace replayed)."""
    db = tuning_db.open_database([log])
    return [
        tvm_ffi.structural_hash(r.as_measure_candidate().sch.mod)
        for r in db.get_all_tuning_records()
    ]


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    root = tmp_path_factory.mktemp("tune_logs")
    report = tune(
        tiny_separable(),
        example_input=X,
        trials=10,
        tune_log=root,
        task_filter=SEPCONV_TASKS,
        trials_per_iter=4,
        confirm_rounds=0,  # the records as logged; confirmation has its own tests below
        progress=False,
    )
    return root, report


def test_tuning_writes_records_as_measured(tuned):
    root, report = tuned
    log = key_dir(root)
    assert report.log_dir == log
    assert report.trials == 10
    assert len(record_lines(log)) == report.trials  # every measured candidate, none lost
    spaces = {t.space for t in report.tasks}
    assert spaces == {"rule"}, "our rules' design spaces are used for our operators"
    assert all(t.best_us and t.best_us > 0 for t in report.tasks if t.trials)
    assert report.trials_per_minute > 0
    prov = json.loads((log / "provenance.json").read_text())
    run = prov["runs"][-1]
    assert run["trials"] == 10 and run["versions"]["tvm"]
    # how and for which CPU the records were measured: the default times in the model's state
    host = resolve_target("host")
    assert report.cache == run["cache"] == "model" and run["mcpu"] == host.mcpu
    assert prov["targets"][host.mcpu]["key"] == log.name
    assert prov["models"] == ["TinySeparable"] and prov["target"]["key"] == log.name
    assert run["machine"]["cpu"]


def test_a_tuned_build_uses_the_records_after_fusion(tuned, tmp_path):
    """The TVM trap: records keyed before fusion never matched after it. Here the tasks come
    from the fused module the build schedules, and the built functions are the records'."""
    from sepconv.compiler.build import lower, schedule
    from sepconv.compiler.importer import import_module

    root, report = tuned
    tuned_tasks = sorted(t.name for t in report.tasks if t.trials)
    art = sepconv.compile(
        tiny_separable(), example_input=X, out=tmp_path / "tuned", tune_logs=[root]
    )
    build = art.manifest.build
    assert build["tasks_tuned"] == len(tuned_tasks) > 0
    assert build["tuned_functions"] == tuned_tasks
    assert build["tune_logs"] == [str(key_dir(root))]
    report_v = sepconv.validate(art.load(), tiny_separable())
    assert report_v.passed, report_v.summary()

    # the functions built are exactly the best records' schedules
    target = resolve_target("host").target
    db = tuning_db.open_database([key_dir(root)])
    mod, _, _ = lower(import_module(tiny_separable(), (X,)), target)
    scheduled, names = schedule(mod, target, db)
    assert names == tuned_tasks
    for name in names:
        best = db.query_schedule(tuning_db.normalize_for_database(mod[name]), target, name)
        assert tvm_ffi.structural_equal(scheduled[name].body, best.mod["main"].body)
        assert scheduled[name].attrs["tirx.is_scheduled"]
        # the record's time travels to the manifest, for `sepconv profile` to set beside its own
        record = db.query_tuning_record(tuning_db.normalize_for_database(mod[name]), target, name)
        us = 1e6 * tuning_db.mean_secs(record.run_secs)
        assert build["functions"][name]["record_us"] == pytest.approx(us, rel=1e-3)
    assert not any(
        "record_us" in build["functions"][n] for n in set(build["functions"]) - set(names)
    )
    from sepconv.bench.profile import profile

    prof = profile(
        art.path,
        threads=1,
        runs=2,
        warmup=0,
        limits_kw={"sgemm_n": 128, "copy_mb": 4, "cache_copy_mb": 1, "runs": 2},
    )
    assert prof.tuned["functions"] == len(names) and prof.tuned["records_ms"] > 0
    assert "tuner µs" in prof.markdown() and prof.to_json()["tuned"] == prof.tuned

    untuned = sepconv.compile(
        tiny_separable(), example_input=X, out=tmp_path / "untuned", tune_logs=False
    )
    assert untuned.manifest.build["tasks_tuned"] == 0


def test_bench_untuned_peer_ignores_the_records(tuned, tmp_path):
    """`sepconv bench --peers sepconv-untuned`: the same build without the records, so the
    tuned-vs-untuned ratio compares our rules with the tuned schedules."""
    from sepconv.bench.peers import BenchSettings, Sepconv, SepconvUntuned

    root, _ = tuned
    settings = BenchSettings(tune_logs=[root], build_dir=tmp_path)
    with_logs = Sepconv(settings).prepare(tiny_separable(), X).info
    without = SepconvUntuned(settings).prepare(tiny_separable(), X)
    assert with_logs["tasks_tuned"] > 0
    assert without.info["tuned"] == "untuned" and without.info["tasks_tuned"] == 0
    assert with_logs["tasks_total"] == without.info["tasks_total"]
    with torch.no_grad():
        want = tiny_separable()(X).numpy()
    assert abs(without.fn(X) - want).max() < 1e-4


def test_the_rules_own_choice_is_measured_and_never_beats_the_best_record(tuned):
    from sepconv.compiler.importer import import_module
    from sepconv.compiler.tuning import extract_tasks, rule_choice_vs_best

    root, report = tuned
    target = resolve_target("host").target
    db = tuning_db.open_database([key_dir(root)])
    measured = {r.name for r in report.tasks if r.trials}
    tasks = extract_tasks([("tiny", import_module(tiny_separable(), (X,)))], target)
    checked = 0
    for task in tasks:
        own, best = rule_choice_vs_best(task, target, db)
        if task.name in measured:
            assert own is not None and best is not None and 0 < best <= own, task.name
            checked += 1
        else:
            assert own is None and best is None  # nothing logged for it
    assert checked == len(measured) > 0


def test_records_measured_on_another_cpu_are_named_not_applied(tuned, tmp_path):
    """The same log with its records' target naming another CPU: the build uses our rules,
    says which functions another CPU tuned, and uses them when asked to."""
    import shutil

    root, report = tuned
    moved = tmp_path / "logs" / key_dir(root).name
    shutil.copytree(key_dir(root), moved)
    recs = [json.loads(ln) for ln in record_lines(moved)]
    for rec in recs:
        rec[1][2]["mcpu"] = "some-other-cpu"
    (moved / tuning_db.RECORD_FILE).write_text("".join(json.dumps(r) + "\n" for r in recs))
    tuned_tasks = sorted(t.name for t in report.tasks if t.trials)

    art = sepconv.compile(tiny_separable(), example_input=X, out=tmp_path / "a", tune_logs=[moved])
    build = art.manifest.build
    assert build["tasks_tuned"] == 0
    assert build["tuned_on_other_cpus"] == {n: ["some-other-cpu"] for n in tuned_tasks}
    forced = sepconv.compile(
        tiny_separable(), example_input=X, out=tmp_path / "b", tune_logs=[moved],
        records_from_other_cpus=True,
    )  # fmt: skip
    assert forced.manifest.build["tuned_functions"] == tuned_tasks
    assert "tuned_on_other_cpus" not in forced.manifest.build


def test_records_serve_another_model_sharing_a_layer(tuned, tmp_path):
    root, report = tuned
    torch.manual_seed(1)
    other = randomize_bn(TinySeparable(classes=7), seed=1)  # same convs, another classifier
    art = sepconv.compile(other, example_input=X, out=tmp_path / "other", tune_logs=[root])
    build = art.manifest.build
    assert 0 < build["tasks_tuned"] < build["tasks_total"]
    assert all("sepconv" in name for name in build["tuned_functions"])


def test_rule_design_spaces_are_enumerated():
    from sepconv.compiler.build import lower
    from sepconv.compiler.importer import import_module
    from sepconv.schedules import cpu_rules, schedule_function

    target = resolve_target("host").target
    mod, _, _ = lower(import_module(tiny_separable(), (X,)), target)
    fused = next(name for gv in mod.get_global_vars() if "dw_pw" in (name := gv.name_hint))
    func = tuning_db.normalize_for_database(mod[fused])["main"]
    space = rule_spaces(func, target)
    assert space.rule == "FusedDepthwisePointwise" and space.enumerated
    assert len(space.schedules) > 1
    hashes = {tvm_ffi.structural_hash(s.mod) for s in space.schedules}
    assert len(hashes) == len(space.schedules)
    default, _ = schedule_function(func, target, cpu_rules(target), fused)
    assert tvm_ffi.structural_hash(default.mod) == tvm_ffi.structural_hash(
        space.schedules[0].mod
    ), "the rule's own choice is the first candidate"
    assert rule_spaces(mod[FLATTEN], target).schedules == []  # no space: default one
    pool = rule_spaces(mod["mean"], target)  # no space, and not searchable: its own schedule
    assert pool.schedules == [] and len(pool.own) == 1 and not pool.searchable


def test_tasks_without_a_rule_space_measure_the_rules_schedule_first(tmp_path):
    """A task our rules schedule without a space (the head's flatten) is tuned in MetaSchedule's
    default space, but the rule's own schedule is one of the measured candidates: the best
    record can never be worse than the untuned build on the machine that tuned."""
    from tvm.s_tir import meta_schedule as ms

    from sepconv.compiler import tuning, tvm_compat
    from sepconv.compiler.importer import import_module
    from sepconv.compiler.tuning import spaces

    target = resolve_target("host").target
    graphs = [("tiny", import_module(tiny_separable(), (X,)))]
    task = next(t for t in tuning.extract_tasks(graphs, target) if t.name == FLATTEN)
    assert spaces.design_space(task, target, ms, "rules") == ("post-order-apply", "evolve")
    assert task.seeds and task.rule is not None
    with tvm_compat.light_tensor_intrinsics(target):  # as the driver does: 200 s → 2 s here
        ctx = ms.TuneContext(task.mod, target=target, space_generator="post-order-apply")
    (seed,), _ = tuning.measure_candidates(ctx, task.seeds)
    tune(
        tiny_separable(), example_input=X, trials=3, tune_log=tmp_path, task_filter=f"^{FLATTEN}$",
        trials_per_iter=2, progress=False,
    )  # fmt: skip
    assert tvm_ffi.structural_hash(seed.sch.mod) in candidate_hashes(key_dir(tmp_path))
    # stock MetaSchedule (the comparison baseline) is not seeded
    stock = next(t for t in tuning.extract_tasks(graphs, target) if t.name == FLATTEN)
    spaces.design_space(stock, target, ms, "default")
    assert stock.seeds == []


def test_a_rule_that_is_not_searchable_is_its_own_whole_space():
    """The pooling rule's split follows how the producer wrote the map, which a kernel timed
    alone cannot show: the tuner measures the rule's schedule and no other candidate."""
    from tvm.s_tir import meta_schedule as ms

    from sepconv.compiler import tuning, tvm_compat
    from sepconv.compiler.importer import import_module
    from sepconv.compiler.tuning import spaces

    target = resolve_target("host").target
    graphs = [("tiny", import_module(tiny_separable(), (X,)))]
    task = next(t for t in tuning.extract_tasks(graphs, target) if t.name == "mean")
    with tvm_compat.light_tensor_intrinsics(target):
        gen, search = spaces.design_space(task, target, ms, "rules")
        assert (task.space, task.num_spaces, search) == ("rule", 1, "enumerate")
        ctx = ms.TuneContext(task.mod, target=target, space_generator=gen)
        (space,) = ctx.generate_design_space()
    own = spaces.rule_spaces(task.mod["main"], target).own[0]
    assert tvm_ffi.structural_hash(space.mod) == tvm_ffi.structural_hash(own.mod)


def test_rerun_continues_where_the_log_stops(tuned, tmp_path):
    import shutil

    root, first = tuned
    root2 = tmp_path / "logs"
    shutil.copytree(root, root2)
    done = tune(
        tiny_separable(), example_input=X, trials=10, tune_log=root2,
        task_filter=SEPCONV_TASKS, progress=False,
    )  # fmt: skip
    assert done.trials == 0 and "already holds 10 records" in done.stopped
    more = tune(
        tiny_separable(), example_input=X, trials=14, tune_log=root2,
        task_filter=SEPCONV_TASKS, trials_per_iter=4, progress=False,
    )  # fmt: skip
    assert more.trials_logged_before == 10
    assert 0 < more.trials <= 4
    log = key_dir(root2)
    assert len(record_lines(log)) == 10 + more.trials
    hashes = candidate_hashes(log)
    assert len(set(hashes)) == len(hashes), "a logged candidate was measured again"


def test_sigkill_keeps_every_record_and_the_rerun_does_not_remeasure(tmp_path):
    log = key_dir(tmp_path)
    proc = tuner(tmp_path, trials=16, per_iter=1, tasks="dw_pw")
    try:
        deadline = time.monotonic() + 240
        while len(record_lines(log)) < 3:
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "no records after 240 s"
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        with __import__("contextlib").suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # its build/measure workers
        proc.communicate()
    before = record_lines(log)
    assert len(before) >= 3
    assert tuning_db.open_database([log]).report.skipped == []

    again = tune(
        tiny_separable(), example_input=X, trials=len(before) + 3, tune_log=tmp_path,
        task_filter="dw_pw", trials_per_iter=3, progress=False,
    )  # fmt: skip
    after = record_lines(log)
    assert after[: len(before)] == before, "records measured before the kill were changed"
    assert again.trials_logged_before == len(before)
    assert len(after) == len(before) + again.trials
    hashes = candidate_hashes(log)
    assert len(set(hashes)) == len(hashes), "a record measured before the kill was re-measured"


def test_two_tuners_on_one_log(tmp_path):
    procs = [tuner(tmp_path, trials=6, per_iter=3), tuner(tmp_path, trials=6, per_iter=3)]
    reports = [report_of(p) for p in procs]
    log = key_dir(tmp_path)
    db = tuning_db.open_database([log])
    assert db.report.skipped == []
    assert db.report.records == len(record_lines(log))
    assert db.report.records >= max(r["trials"] for r in reports) > 0
    workloads = [
        json.loads(ln)[0]
        for ln in (log / tuning_db.WORKLOAD_FILE).read_text().splitlines()
        if ln.strip()
    ]
    assert len(workloads) == len(set(workloads)), "a workload was written twice"
    # every record replays on the workload it names
    assert len(candidate_hashes(log)) == db.report.records
    prov = json.loads((log / "provenance.json").read_text())
    assert len(prov["runs"]) == 2


def test_tuning_locally_for_cpu_features_the_host_lacks_is_refused(tmp_path, as_avx2_host):
    """Measuring AVX-512 candidates on an AVX2 CPU would SIGILL the runners: refused up front."""
    from sepconv.errors import TuningError

    as_avx2_host()
    with pytest.raises(TuningError, match=r"lacks avx512.*--device rpc://"):
        tune(tiny_separable(), example_input=X, trials=2, tune_log=tmp_path,
             mcpu="skylake-avx512", progress=False)  # fmt: skip
    assert not any(tmp_path.rglob("*.json"))


def test_flush_cache_times_single_calls_with_cold_weights(monkeypatch):
    """`sepconv tune --cache flushed` (`--flush-cache`): each timing is one call after TVM
    flushes every argument but the input from the caches (a repeated call would find the
    weights cached again)."""
    from sepconv.cli import EXIT_ERROR, main
    from sepconv.compiler import tuning
    from sepconv.compiler.tuning import measure as measuring
    from sepconv.errors import SepconvError

    warm = measuring.evaluator_config(MeasureConfig(cache="warm"))
    cold = measuring.evaluator_config(MeasureConfig(cache="flushed"))
    assert (warm.number, warm.min_repeat_ms, warm.enable_cpu_cache_flush) == (1, 25, False)
    assert (cold.number, cold.min_repeat_ms, cold.enable_cpu_cache_flush) == (1, 0, True)
    assert cold.repeat >= measuring.FLUSHED_REPEAT > warm.repeat
    seen = {}

    def fake_tune(*args, **kw):
        seen.update(kw)
        raise SepconvError("stop here")

    monkeypatch.setattr(tuning, "tune", fake_tune)
    assert main(["tune", "mobilenet_v1:0.25@32", "--trials", "1", "--flush-cache"]) == EXIT_ERROR
    assert seen["measure"].cache == "flushed"
    assert main(["tune", "mobilenet_v1:0.25@32", "--trials", "1", "--cache", "warm"]) == EXIT_ERROR
    assert seen["measure"].cache == "warm"
    assert main(["tune", "mobilenet_v1:0.25@32", "--trials", "1"]) == EXIT_ERROR
    assert seen["measure"] is None  # the driver's default: cache="model" locally


def test_candidates_are_timed_with_the_caches_as_the_model_leaves_them():
    """The default local timing (cache="model") rotates copies of a candidate's weights and
    output, spanning twice the L2 caches, over one shared input: each call reads weights the
    other copies have pushed out of L2, as the rest of the model does between two inferences.
    Over RPC it is refused (the loop runs in this process); there TVM's evaluator times."""
    import numpy as np
    import tvm

    from sepconv.compiler.tuning import measure as measuring
    from sepconv.errors import TuningError
    from sepconv.targets.devices import parse_device

    dev = tvm.cpu()
    args = [tvm.runtime.tensor(np.full(n, i, "float32"), dev) for i, n in enumerate((8, 1024, 256))]
    sets = measuring.rotated_arguments(args, dev, span=64 << 10)
    own = (1024 + 256) * 4
    assert len(sets) == -(-(64 << 10) // own) and sets[0] == args
    assert all(s[0] is args[0] for s in sets)  # the input is shared: hot, as in the model
    assert len({id(s[1]) for s in sets}) == len(sets)  # weights and outputs: one copy a call
    assert all(np.array_equal(s[1].numpy(), args[1].numpy()) for s in sets)
    tiny = measuring.rotated_arguments(args[:1] + [args[0]], dev, span=1 << 40)
    assert len(tiny) == measuring.MAX_ROTATED_COPIES  # bounded however small the weights
    assert len(measuring.rotated_arguments(args[:1], dev, span=1 << 20)) == 1  # input only

    called = []

    class FakeModule:
        entry_name = "main"

        def __getitem__(self, name):
            return lambda *a: called.append(tuple(id(x) for x in a))

    config = measuring.evaluator_config(MeasureConfig(repeat=2, min_repeat_ms=1))
    costs = measuring.rotating_run_evaluator(FakeModule(), dev, config, [args])
    assert len(costs) == 2 and all(c > 0 for c in costs)
    rotation = len({c[1] for c in called})
    expected = min(measuring.MAX_ROTATED_COPIES, -(-measuring.rotation_bytes() // own))
    assert rotation == expected and len(called) % rotation == 0

    assert measuring.MeasureConfig().state(local=True) == "model"
    assert measuring.MeasureConfig().state(local=False) == "warm"
    with pytest.raises(TuningError, match="over RPC"):
        measuring.make_runner(parse_device("rpc://127.0.0.1:9"), MeasureConfig(cache="model"))
    with pytest.raises(TuningError, match="cache must be"):
        MeasureConfig(cache="cold")
    runner = measuring.make_runner(parse_device("local"), MeasureConfig())
    assert runner.f_run_evaluator is measuring.rotating_run_evaluator


# ---------------------------------------------------------------------------------------------
# Confirmation: the finalists re-timed against our rules before a build may prefer them


def test_a_lucky_record_is_re_timed_before_a_build_uses_it(tuned, tmp_path):
    """The winner's curse: one candidate timed at a fast moment. Plant it (the slowest record
    logged at 1 ns); a build then picks it. A confirming run (nothing left to search) re-times
    it beside our rule's schedule; the build then uses what the rounds chose, at the time they
    measured, and says which functions kept our rules."""
    import shutil

    from sepconv.compiler.tuning import confirm

    root, report = tuned
    log = tmp_path / "logs" / key_dir(root).name
    shutil.copytree(key_dir(root), log)
    lines = [json.loads(ln) for ln in record_lines(log)]
    slowest = max(range(len(lines)), key=lambda i: tuning_db.mean_secs(lines[i][1][1]) or 0)
    lines[slowest][1][1] = [1e-9]
    (log / tuning_db.RECORD_FILE).write_text("".join(json.dumps(r) + "\n" for r in lines))
    planted = confirm.trace_digest(lines[slowest][1][0])

    lucky = sepconv.compile(tiny_separable(), example_input=X, out=tmp_path / "a", tune_logs=[log])
    us = [f.get("record_us") for f in lucky.manifest.build["functions"].values()]
    assert min(u for u in us if u) == pytest.approx(1e-3)  # the lucky time, believed

    again = tune(
        tiny_separable(), example_input=X, trials=1, tune_log=log.parent,
        task_filter=SEPCONV_TASKS, confirm_rounds=3, progress=False,
    )  # fmt: skip
    assert again.trials == 0 and again.confirm_rounds == 3
    entries = json.loads((log / confirm.CONFIRM_FILE).read_text())["cpus"][
        resolve_target("host").mcpu
    ]
    tuned_tasks = {t.name for t in report.tasks if t.trials}
    assert len(entries) == len(tuned_tasks)
    for t in again.tasks:
        if t.name in tuned_tasks:
            assert t.choice in ("record", "rules") and t.rules_us > 0.1 and t.confirmed_us > 0.1
    assert again.confirmed_ms is not None
    assert "confirmed in 3 interleaved rounds" in format_report(again)
    for e in entries.values():
        assert e["records"] >= 1 and e["rounds"] == 3
        assert e["us"]["rules"] > 0.1 and e["us"]["record"] > 0.1  # re-timed, not the 1 ns
        won = e["paired_ratio"] <= 1 - confirm.MIN_GAIN and e["us"]["record"] < e["us"]["rules"]
        assert (e["choice"] == "record") == won, e
        assert (e["trace"] is None) == (e["choice"] == "rules")

    art = sepconv.compile(tiny_separable(), example_input=X, out=tmp_path / "b", tune_logs=[log])
    build = art.manifest.build
    by_name = {t.name: t for t in again.tasks}
    assert build["tuned_functions"] == sorted(n for n, t in by_name.items() if t.choice == "record")
    assert build.get("rules_confirmed", []) == sorted(
        n for n, t in by_name.items() if t.choice == "rules"
    )
    for name in build["tuned_functions"]:  # the record's time is the confirmed one
        confirmed_us = by_name[name].confirmed_us  # as confirmed.json stores it: to the ps
        assert build["functions"][name]["record_us"] == pytest.approx(confirmed_us, abs=1e-6)
    assert not any(e["trace"] == planted and e["us"]["record"] < 0.1 for e in entries.values())
    assert sepconv.validate(art.load(), tiny_separable()).passed

    # a record logged after the confirmation makes it stale: the fastest logged is used again
    with open(log / tuning_db.RECORD_FILE, "a") as f:
        f.write(json.dumps(lines[slowest]) + "\n")
    db, _ = tuning_db.database_for_build(log.name, [log], cpu=resolve_target("host").mcpu)
    assert db.report.stale_confirmations >= 1


def _finalists(rules, *records):
    from sepconv.compiler.tuning.confirm import _Finalist

    def secs(us):
        return [None if u is None else u * 1e-6 for u in us]

    out = [_Finalist(0, "rules", None, None, secs=secs(rules))]
    for i, (logged, us) in enumerate(records):
        out.append(_Finalist(0, f"record:{i + 1}", f"t{i}", None, logged, secs(us)))
    return out


def test_a_record_must_beat_the_rules_round_by_round():
    from sepconv.compiler.tuning.confirm import MIN_GAIN, _decide

    # 5 % faster in every round, through a slow phase: used
    c = _decide(_finalists([10, 20, 10, 10, 20], (1.0, [9.5, 19, 9.5, 9.5, 19])), 4, 5)
    assert c.choice == "record" and c.trace == "t0" and c.paired_ratio == pytest.approx(0.95)
    assert c.chosen_us == pytest.approx(9.5) and c.logged_us == 1.0
    # 1 % faster: within MIN_GAIN, the rules' schedule is kept
    assert MIN_GAIN > 0.01
    c = _decide(_finalists([10] * 5, (1.0, [9.9] * 5)), 4, 5)
    assert c.choice == "rules" and c.trace is None and c.chosen_us == pytest.approx(10)
    # the faster of two records by their paired ratio, not by what the tuner logged
    c = _decide(_finalists([10] * 5, (0.5, [9.6] * 5), (8.0, [9.0] * 5)), 6, 5)
    assert c.choice == "record" and c.trace == "t1" and c.records == 6
    # 5 % slower in each round it ran, but missing from slow rounds: its median is half the
    # rules', its paired ratio 1.05
    c = _decide(_finalists([20, 20, 20, 10, 10], (1.0, [None, 21, None, 10.5, 10.5])), 2, 5)
    assert c.choice == "rules" and c.paired_ratio == pytest.approx(1.05)
    # faster paired, slower in the medians: the rounds' noise is larger than the gain
    c = _decide(_finalists([8, 30, 9, 9, 9], (1.0, [7.5, 28, 8.7, 9.5, 9.5])), 2, 5)
    assert c.paired_ratio < 1 - MIN_GAIN and c.us["record"] > c.us["rules"]
    assert c.choice == "rules"
    # no rule schedules the task: the fastest record by its median
    from sepconv.compiler.tuning.confirm import _Finalist

    only = [_Finalist(0, "record:0", "a", None, 1.0, [5e-6] * 3),
            _Finalist(0, "record:1", "b", None, 2.0, [4e-6] * 3)]  # fmt: skip
    c = _decide(only, 2, 3)
    assert c.choice == "record" and c.trace == "b"
