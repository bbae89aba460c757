"""Tune logs on disk: damaged lines skipped and reported, locked appends, provenance merging.

These tests write records by hand (a tiny elementwise workload, a split schedule), so they run in
seconds; tests/compiler/test_tuning.py covers records made by real tuning runs.
"""

from __future__ import annotations

import json
import logging
import threading

import pytest
import tvm
import tvm_ffi
from tvm import s_tir, te

from sepconv.compiler.tuning import database as tuning_db
from sepconv.compiler.tuning.database import (
    RECORD_FILE,
    WORKLOAD_FILE,
    TuneLog,
    apply_database,
    log_dirs,
    open_database,
)

TARGET = tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "x86-64-v3"})


def workload(rows: int):
    """A normalised workload module: B = A * 2 over (rows, 64)."""
    a = te.placeholder((rows, 64), name="A")
    b = te.compute((rows, 64), lambda i, j: a[i, j] * 2.0, name="B")
    return tuning_db.normalize_for_database(te.create_prim_func([a, b]))


def record(mod, factor: int, secs: float = 1e-6, target=TARGET):
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo
    from tvm.s_tir.meta_schedule.database import TuningRecord, Workload

    sch = s_tir.Schedule(mod)
    _, j = sch.get_loops(sch.get_sblock("B"))
    sch.split(j, [None, factor])
    return TuningRecord(
        sch.trace, Workload(mod), [secs], target, ArgInfo.from_prim_func(mod["main"])
    )


def write_log(path, items, target=TARGET):
    """Commit ``(mod, factor, secs)`` records through the database, as a tuner does."""
    db = open_database([], write_dir=path)
    for mod, factor, secs in items:
        db.commit_workload(mod)
        db.commit_tuning_record(record(mod, factor, secs, target))
    return db


def lines(path):
    return [ln for ln in path.read_text().splitlines() if ln.strip()]


def test_records_are_written_as_committed_in_tvm_format(tmp_path):
    w8, w16 = workload(8), workload(16)
    db = write_log(tmp_path, [(w8, 4, 3e-6), (w8, 8, 2e-6), (w16, 4, 5e-6)])
    assert db.appended == 3
    assert len(lines(tmp_path / WORKLOAD_FILE)) == 2
    assert len(lines(tmp_path / RECORD_FILE)) == 3
    # TVM's own JSONDatabase reads what we wrote
    from tvm.s_tir.meta_schedule.database import JSONDatabase

    tvm_db = JSONDatabase(work_dir=str(tmp_path), allow_missing=False)
    assert len(tvm_db) == 3
    best = tvm_db.query_tuning_record(w8, TARGET, "main")
    assert [float(s) for s in best.run_secs] == pytest.approx([2e-6])


def test_workloads_are_written_without_tvms_indentation(tmp_path):
    """Same module, about half the bytes of TVM's own serialization; TVM reads both."""
    from tvm.s_tir.meta_schedule.database import Workload

    mod = workload(8)
    tvm_json = Workload(mod).as_json()
    compact = tuning_db.compact_workload(tvm_json)
    assert compact[0] == tvm_json[0] and len(compact[1]) < 0.7 * len(tvm_json[1])
    tvm.ir.assert_structural_equal(Workload.from_json(compact).mod, mod)
    write_log(tmp_path, [(mod, 4, 3e-6)])
    assert json.loads(lines(tmp_path / WORKLOAD_FILE)[0]) == compact
    assert tuning_db.compact_workload(["1", "not base64!"]) == ["1", "not base64!"]


def test_compacting_an_old_log_keeps_every_record(tmp_path):
    from tvm.s_tir.meta_schedule.database import Workload

    w8, w16 = workload(8), workload(16)
    write_log(tmp_path, [(w8, 4, 3e-6), (w16, 4, 5e-6), (w8, 8, 2e-6)])
    wl_file = tmp_path / WORKLOAD_FILE  # as TVM (and our older logs) wrote it: indented
    wl_file.write_text(
        "".join(json.dumps(Workload(m).as_json()) + "\n" for m in (w8, w16)) + "damaged line\n"
    )
    before, after = TuneLog(tmp_path).compact()
    assert after < 0.7 * before
    assert lines(wl_file)[-1] == "damaged line"  # kept as it was, still reported on reading
    db = open_database([tmp_path], warn=False)
    assert (db.report.workloads, db.report.records) == (2, 3)
    best = db.query_tuning_record(w8, TARGET, "main")
    assert [float(s) for s in best.run_secs] == pytest.approx([2e-6])


def test_failed_measurements_are_not_written(tmp_path):
    db = write_log(tmp_path, [(workload(8), 4, 1e10), (workload(8), 8, 2e-6)])
    assert db.appended == 1
    assert len(lines(tmp_path / RECORD_FILE)) == 1


def test_damaged_lines_are_reported_by_file_and_line_and_skipped(tmp_path, caplog):
    w8, w16 = workload(8), workload(16)
    write_log(tmp_path, [(w8, 4, 3e-6), (w8, 8, 2e-6), (w16, 4, 5e-6), (w16, 8, 4e-6)])
    rec_file = tmp_path / RECORD_FILE
    recs = lines(rec_file)
    good_w16 = json.dumps([1, json.loads(recs[3])[1]])
    rec_file.write_text(
        "\n".join(
            [
                recs[0],
                "this is not json",  # line 2
                recs[2],
                recs[1][: len(recs[1]) // 2],  # line 4: truncated
                json.dumps([7, json.loads(recs[0])[1]]),  # line 5: no workload line 8
                good_w16,
            ]
        )
        + "\n"
    )
    with caplog.at_level(logging.WARNING, logger="sepconv.compiler.tuning.database"):
        db = open_database([tmp_path])
    report = db.report
    assert report.records == 3 and report.workloads == 2
    assert [s.split(": ")[0] for s in report.skipped] == [
        f"{rec_file}:2",
        f"{rec_file}:4",
        f"{rec_file}:5",
    ]
    assert "truncated" in report.skipped[1]
    text = caplog.text
    assert f"{rec_file}:2" in text and f"{rec_file}:4" in text and "3 damaged line(s)" in text
    # what loaded still schedules a build
    mod = tvm.IRModule({"f8": w8["main"].without_attr("global_symbol")})
    mod, tuned = apply_database(mod, TARGET, db)
    assert tuned == ["f8"]
    assert mod["f8"].attrs["tirx.is_scheduled"]
    assert "global_symbol" not in mod["f8"].attrs


def test_a_damaged_workload_line_skips_its_records(tmp_path):
    w8, w16 = workload(8), workload(16)
    write_log(tmp_path, [(w8, 4, 3e-6), (w16, 4, 5e-6)])
    wl_file = tmp_path / WORKLOAD_FILE
    wls = lines(wl_file)
    wl_file.write_text(wls[0][:100] + "\n" + wls[1] + "\n")
    db = open_database([tmp_path])
    assert db.report.records == 1 and db.report.workloads == 1
    assert any(s.startswith(f"{wl_file}:1") for s in db.report.skipped)
    assert any("skipped" in s and RECORD_FILE in s for s in db.report.skipped)


def test_append_after_a_writer_killed_mid_line(tmp_path):
    w8 = workload(8)
    write_log(tmp_path, [(w8, 4, 3e-6)])
    rec_file = tmp_path / RECORD_FILE
    rec_file.write_text(rec_file.read_text() + lines(rec_file)[0][:50])  # no newline
    write_log(tmp_path, [(w8, 8, 2e-6)])
    db = open_database([tmp_path])
    assert db.report.records == 2
    assert len(db.report.skipped) == 1


def test_concurrent_writers_keep_indices_consistent(tmp_path):
    """Each writer has its own view of the workload table; appends are locked and re-read it, so
    every record names its own workload however the writers interleave."""
    mods = {rows: workload(rows) for rows in (8, 16, 24, 32)}
    errors = []

    def writer(order, factor):
        try:
            db = open_database([], write_dir=tmp_path)
            for _ in range(5):
                for rows in order:
                    db.commit_workload(mods[rows])
                    db.commit_tuning_record(record(mods[rows], factor, rows * 1e-7))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [
        threading.Thread(target=writer, args=(order, f))
        for order, f in [((8, 16, 24, 32), 4), ((32, 24, 16, 8), 8), ((16, 32, 8, 24), 2)]
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    db = open_database([tmp_path])
    assert db.report.skipped == []
    assert db.report.records == 3 * 5 * 4
    assert len(lines(tmp_path / WORKLOAD_FILE)) == 4  # each workload written once
    for rows, mod in mods.items():
        top = db.get_top_k(db.commit_workload(mod), 100)
        assert len(top) == 15  # the run time encodes the workload it was written for
        assert all(float(r.run_secs[0]) == pytest.approx(rows * 1e-7) for r in top)
        assert all(tvm_ffi.structural_equal(r.workload.mod, mod) for r in top)


def test_several_logs_merge(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    w8, w16 = workload(8), workload(16)
    write_log(a, [(w8, 4, 3e-6)])
    write_log(b, [(w8, 8, 1e-6), (w16, 4, 5e-6)])
    db = open_database([a, b, tmp_path / "missing"])
    assert db.report.records == 3 and db.report.workloads == 2
    best = db.query_tuning_record(w8, TARGET, "main")
    assert float(best.run_secs[0]) == pytest.approx(1e-6)


def test_log_dirs(tmp_path):
    shipped = tuning_db.shipped_log_dir("x86_64-avx2")
    assert shipped.parent.name == "tune_logs" and shipped.name == "x86_64-avx2"
    assert log_dirs("x86_64-avx2", True) == [shipped]
    assert log_dirs("x86_64-avx2", False) == []
    assert log_dirs("x86_64-avx2", tmp_path) == [shipped, tmp_path / "x86_64-avx2"]
    assert log_dirs("x86_64-avx2", [tmp_path]) == [tmp_path / "x86_64-avx2"]
    write_log(tmp_path / "db", [(workload(8), 4, 1e-6)])  # a database folder is used as is
    assert log_dirs("x86_64-avx2", [tmp_path / "db", True]) == [tmp_path / "db", shipped]


def test_provenance_is_merged_not_overwritten(tmp_path, caplog):
    tlog = TuneLog(tmp_path)
    target = {"key": "x86_64-avx2"}
    tlog.update_provenance({"date": "d1", "trials": 10, "wall_seconds": 60}, ["m1"], target)
    data = tlog.update_provenance({"date": "d2", "trials": 5, "wall_seconds": 30}, ["m2"], target)
    assert data["models"] == ["m1", "m2"]
    assert data["trials_total"] == 15 and data["wall_seconds_total"] == 90
    assert [r["date"] for r in data["runs"]] == ["d1", "d2"]
    assert json.loads((tmp_path / "provenance.json").read_text()) == data
    zen = {"key": "x86_64-avx2", "mcpu": "znver3"}  # one folder, records of several CPUs
    data = tlog.update_provenance({"date": "d2b", "trials": 1}, ["m1"], zen)
    assert data["targets"] == {"": target, "znver3": zen} and data["target"] == zen
    (tmp_path / "provenance.json").write_text('{"runs": [')  # damaged: kept aside, restarted
    with caplog.at_level(logging.WARNING):
        data = tlog.update_provenance({"date": "d3", "trials": 1}, ["m3"], target)
    assert [r["date"] for r in data["runs"]] == ["d3"]
    assert list(tmp_path.glob("provenance.json.corrupt-*"))
    assert "unreadable" in caplog.text


def test_a_build_reads_only_the_best_record_per_workload(tmp_path):
    from tvm.s_tir.meta_schedule.database import Workload

    w8, w16 = workload(8), workload(16)
    write_log(tmp_path, [(w8, 4, 3e-6), (w8, 8, 1e-6), (w8, 2, 2e-6), (w16, 4, 5e-6)])
    db = open_database([tmp_path], top_k=1)
    assert db.report.records == 2
    best = db.query_tuning_record(w8, TARGET, "main")
    assert float(best.run_secs[0]) == pytest.approx(1e-6)
    only16 = open_database([tmp_path], only={Workload(w16).as_json()[0]})
    assert only16.report.records == 1 and only16.report.workloads == 1


def test_a_lazy_database_reads_only_the_workloads_a_build_queries(tmp_path, caplog):
    """A build opens the shipped log lazily: TVM replays the traces of the workloads the model
    has, not the log's hundreds; what it finds is what an eager read finds, and a record TVM
    rejects is still reported, when its workload is queried."""
    w8, w16, w32 = workload(8), workload(16), workload(32)
    write_log(tmp_path, [(w8, 4, 3e-6), (w8, 8, 2e-6), (w16, 4, 5e-6), (w32, 4, 1e-6)])
    rec_file = tmp_path / RECORD_FILE
    damaged = json.loads(lines(rec_file)[3])
    damaged[1][0] = [["not", "a", "trace"]]
    rec_file.write_text("\n".join([*lines(rec_file)[:3], json.dumps(damaged)]) + "\n")
    lazy = open_database([tmp_path], top_k=1, lazy=True)
    assert len(lazy.pending) == 3 and lazy.report.records == 0
    best = lazy.query_tuning_record(w8, TARGET, "main")
    assert [float(s) for s in best.run_secs] == pytest.approx([2e-6])
    assert len(lazy.pending) == 2 and (lazy.report.workloads, lazy.report.records) == (1, 1)
    assert lazy.has_workload(w16) and len(lazy.pending) == 1
    with caplog.at_level(logging.WARNING, logger=tuning_db.log.name):
        assert lazy.query_tuning_record(w32, TARGET, "main") is None
    assert any(f"{RECORD_FILE}:4" in r.getMessage() for r in caplog.records)
    eager = open_database([tmp_path], top_k=1, warn=False)
    assert (eager.report.workloads, eager.report.records) == (3, 2)
    assert (lazy.report.workloads, lazy.report.records) == (3, 2) and not lazy.pending


def test_a_build_reads_only_the_records_measured_on_its_cpu(tmp_path):
    """One log folder serves an ISA class; a record is a measurement on one CPU. Another CPU's
    records neither schedule the build (the faster machine's would always win) nor vanish:
    they are named per function."""
    other = tvm.target.Target({**TARGET.export(), "mcpu": "znver5"})
    w8, w16 = workload(8), workload(16)
    write_log(tmp_path, [(w8, 4, 2e-6)])
    write_log(tmp_path, [(w8, 8, 1e-6), (w16, 4, 1e-6)], target=other)
    cpu = tuning_db.record_cpu(TARGET)
    assert (cpu, tuning_db.record_cpu(other)) == ("x86-64-v3", "znver5")
    assert tuning_db.record_cpu({"kind": "cuda", "arch": "sm_90"}) is None

    own = open_database([tmp_path], top_k=1, cpu=cpu)
    best = own.query_tuning_record(w8, TARGET, "main")
    assert [float(s) for s in best.run_secs] == pytest.approx([2e-6])
    assert not own.has_workload(w16)
    hashes = {m: tuning_db._ms().database.Workload(m).as_json()[0] for m in (w8, w16)}
    assert own.report.other_cpus == {hashes[w8]: {"znver5"}, hashes[w16]: {"znver5"}}
    assert TuneLog(tmp_path).count_records(cpu) == {hashes[w8]: 1}
    assert TuneLog(tmp_path).count_records() == {hashes[w8]: 2, hashes[w16]: 1}
    anyone = open_database([tmp_path], top_k=1)
    assert [float(s) for s in anyone.query_tuning_record(w8, TARGET, "main").run_secs] == (
        pytest.approx([1e-6])
    )

    mod = tvm.IRModule({"f8": w8["main"], "f16": w16["main"]})
    mod = tvm.IRModule({gv: f.without_attr("global_symbol") for gv, f in mod.functions_items()})
    scheduled, tuned = apply_database(mod, TARGET, own)
    assert tuned == ["f8"]
    assert tuning_db.records_on_other_cpus(scheduled, own) == {"f16": ["znver5"]}
    lazy, _ = tuning_db.database_for_build("x86_64-avx2", [tmp_path], cpu="haswell")
    assert lazy is not None and not lazy.has_workload(w8)  # only other CPUs' records: reported
    assert tuning_db.records_on_other_cpus(mod, lazy) == {
        "f8": ["x86-64-v3", "znver5"],
        "f16": ["znver5"],
    }
