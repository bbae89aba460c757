"""Tuning logs on disk: ``tune_logs/<target-key>/`` as TVM JSON database files, never lost.

One log directory holds TVM's own two files (so TVM's tools read it) and ours::

    database_workload.json       one workload per line: [structural hash, serialized PrimFunc]
    database_tuning_record.json  one measured candidate per line: [workload line index, record]
    provenance.json              who tuned what, where, when, how long (merged by every run)
    .lock                        fcntl lock file: appends and provenance updates hold it

What this adds to TVM's ``JSONDatabase``:

* **Damage is skipped, not fatal.** Lines are validated before TVM sees them; a corrupted or
  truncated line is reported (``file:line: reason``) and skipped, the rest loads. TVM's loader
  would reject the whole file.
* **Concurrent tuners do not corrupt a log.** Appends hold an exclusive ``flock`` and re-read the
  workload table first, so a record always names the right workload line even when another
  process appended workloads meanwhile (TVM's database keeps line indices per process).
* **Records are written as measured.** Each record is one ``write`` on an ``O_APPEND`` file, so a
  SIGKILL loses nothing already measured; failed measurements (build/run errors) are kept in
  memory only, so a flaky device does not poison the log.
* **Several logs at once.** The shipped log and user logs are merged on read (workloads deduped by
  structural hash).
* **Half the size.** TVM serializes a workload as indented JSON inside base64; ours is written
  without the indentation (:func:`compact_workload`; TVM reads both), and
  :meth:`TuneLog.compact` rewrites an existing log's workload file in place.

Records are keyed by the *fused* PrimFunc exactly as :func:`sepconv.compiler.build.lower`
produces it (MetaSchedule's normalisation: ``global_symbol="main"``, ``tirx.noalias``), so a
record made for one model serves any model with a structurally equal layer.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as _dt
import fcntl
import json
import logging
import os
import platform
import shutil
import struct
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sepconv.errors import TuningError

log = logging.getLogger(__name__)

WORKLOAD_FILE = "database_workload.json"
RECORD_FILE = "database_tuning_record.json"
PROVENANCE_FILE = "provenance.json"
LOCK_FILE = ".lock"
SCHEDULED_ATTR = "tirx.is_scheduled"
# On a function scheduled from a record: the record's time (µs per call) as the tuner measured it
RECORD_US_ATTR = "sepconv.record_us"
FAILED_RUN_SECS = 1e9  # MetaSchedule writes 1e10 s for a candidate that failed to build or run

__all__ = [
    "LoadReport",
    "TuneLog",
    "apply_database",
    "database_for_build",
    "log_dirs",
    "log_dir_for",
    "mean_secs",
    "normalize_for_database",
    "open_database",
    "record_cpu",
    "records_on_other_cpus",
    "rules_confirmed",
    "shipped_log_dir",
]


# ---------------------------------------------------------------------------------------------
# Where logs live


def shipped_log_dir(key: str) -> Path:
    """``tune_logs/<key>/`` inside the package: the logs shipped with sepconv."""
    import sepconv.tune_logs

    return Path(sepconv.tune_logs.__file__).resolve().parent / key


def log_dir_for(path: str | os.PathLike, key: str) -> Path:
    """A user's ``--tune-log DIR``: ``DIR`` itself when it already holds database files, else
    ``DIR/<key>/`` (one folder per target key, like ``tune_logs/``)."""
    root = Path(path).expanduser()
    if (root / WORKLOAD_FILE).exists() or (root / RECORD_FILE).exists():
        return root
    return root / key


def log_dirs(key: str, sources: bool | str | os.PathLike | Sequence = True) -> list[Path]:
    """The log directories a build reads for target ``key``.

    ``sources``: ``True`` — the shipped ``tune_logs/<key>/``; ``False``/``None`` — none; a path —
    the shipped log plus that one; a sequence — exactly its entries, where ``True`` stands for
    the shipped log and anything else is a path (see :func:`log_dir_for`).
    """
    if sources is None or sources is False:
        return []
    if sources is True:
        items: list = [True]
    elif isinstance(sources, (str, os.PathLike)):
        items = [True, sources]
    else:
        items = list(sources)
    dirs: list[Path] = []
    for item in items:
        d = shipped_log_dir(key) if item is True else log_dir_for(item, key)
        if d not in dirs:
            dirs.append(d)
    return dirs


# ---------------------------------------------------------------------------------------------
# One log directory: validated reading, locked appends


@dataclass
class LoadReport:
    """What reading logs found: counts and every line skipped (``file:line: reason``)."""

    dirs: list[Path] = field(default_factory=list)
    workloads: int = 0
    records: int = 0
    skipped: list[str] = field(default_factory=list)
    # workload hash → the CPUs of its records that were not loaded (measured on another CPU)
    other_cpus: dict[str, set[str]] = field(default_factory=dict)
    # workload hashes whose confirmation chose our rules' schedule over their records (confirm.py)
    rules_confirmed: set[str] = field(default_factory=set)
    stale_confirmations: int = 0  # confirmations older than their workload's records: ignored


def record_cpu(target: Any) -> str | None:
    """The CPU a record was measured on, from its target (a ``Target`` or a record's target
    JSON): LLVM's ``mcpu`` name (``""`` for a generic CPU target), or None for a GPU target,
    whose log key already names its architecture (``cuda-sm90``)."""
    if not isinstance(target, dict):
        target = {"kind": target.kind.name, "mcpu": str(target.attrs.get("mcpu", ""))}
    if target.get("kind") != "llvm":
        return None
    return str(target.get("mcpu") or "")


def _is_workload_line(obj) -> str | None:
    if not (isinstance(obj, list) and len(obj) == 2 and all(isinstance(x, str) for x in obj)):
        return "not a workload entry [hash, module]"
    if not obj[0].isdigit() or not obj[1]:
        return "workload hash or module missing"
    return None


def _is_record_line(obj) -> str | None:
    if not (isinstance(obj, list) and len(obj) == 2 and isinstance(obj[0], int)):
        return "not a record entry [workload index, record]"
    rec = obj[1]
    if not (isinstance(rec, list) and len(rec) >= 2 and isinstance(rec[0], list)):
        return "record has no trace"
    run_secs = rec[1]
    if run_secs is not None and not (
        isinstance(run_secs, list) and all(isinstance(x, (int, float)) for x in run_secs)
    ):
        return "record run times are not numbers"
    return None


def _parse_line(line: str, check: Callable[[Any], str | None]) -> tuple[Any, str | None]:
    """(the line's JSON, why it is not a valid line or None)."""
    try:
        obj = json.loads(line)
    except ValueError as exc:
        return None, f"not JSON ({exc.msg}; truncated?)"
    return obj, check(obj)


def mean_secs(run_secs: Sequence[Any] | None) -> float | None:
    """Mean of a measurement's run times; ``None`` for none or a failed measurement."""
    if run_secs is None:
        return None
    secs = [float(s) for s in run_secs]
    if not secs or max(secs) >= FAILED_RUN_SECS:
        return None
    return sum(secs) / len(secs)


def compact_workload(workload_json: list) -> list:
    """``[hash, base64(uint64 length + indented JSON)]`` → the same module without the JSON's
    whitespace (TVM's loader reads both). Anything not in that form is returned unchanged."""
    try:
        shash, blob = workload_json
        raw = base64.b64decode(blob, validate=True)
        (length,) = struct.unpack("<Q", raw[:8])
        if length != len(raw) - 8:
            return workload_json
        body = json.dumps(json.loads(raw[8:]), separators=(",", ":")).encode()
    except (ValueError, TypeError, struct.error):
        return workload_json
    return [shash, base64.b64encode(struct.pack("<Q", len(body)) + body).decode("ascii")]


class TuneLog:
    """One log directory. Reads validate line by line; writes hold ``flock`` on ``.lock``."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.workload_file = self.path / WORKLOAD_FILE
        self.record_file = self.path / RECORD_FILE
        self._index: dict[str, int] = {}  # workload hash → line index in the workload file
        self._lines = 0  # non-empty lines of the workload file seen so far (TVM's index base)
        self._offset = 0  # bytes of the workload file read so far

    def __repr__(self) -> str:
        return f"TuneLog({str(self.path)!r})"

    @contextlib.contextmanager
    def lock(self, exclusive: bool = True) -> Iterator[None]:
        """Hold the directory's lock (shared for reading, exclusive for writing)."""
        if exclusive:
            self.path.mkdir(parents=True, exist_ok=True)
        elif not self.path.is_dir():
            yield
            return
        fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)  # releases the lock

    # -- reading

    @staticmethod
    def _lines_of(path: Path) -> Iterator[tuple[int, str]]:
        """(line number, text) of the non-empty lines; a missing file has none."""
        try:
            f = open(path, encoding="utf-8", errors="replace")  # noqa: SIM115
        except FileNotFoundError:
            return
        with f:
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    yield lineno, line

    def read(self, report: LoadReport) -> tuple[list[list | None], list[tuple[str, list]]]:
        """Validated lines: workloads by index (None where the line is bad) and records as
        ``(where, [index, record])``; every bad line is added to ``report.skipped``."""
        with self.lock(exclusive=False):
            workloads: list[list | None] = []
            for lineno, line in self._lines_of(self.workload_file):
                where = f"{self.workload_file}:{lineno}"
                obj, reason = _parse_line(line, _is_workload_line)
                if reason:
                    report.skipped.append(f"{where}: {reason}")
                    obj = None
                workloads.append(obj)
            records: list[tuple[str, list]] = []
            for lineno, line in self._lines_of(self.record_file):
                where = f"{self.record_file}:{lineno}"
                obj, reason = _parse_line(line, _is_record_line)
                if reason is None and not 0 <= obj[0] < len(workloads):
                    reason = f"names workload line {obj[0] + 1}, which does not exist"
                elif reason is None and workloads[obj[0]] is None:
                    reason = f"names workload line {obj[0] + 1}, which was skipped"
                if reason:
                    report.skipped.append(f"{where}: {reason}")
                    continue
                records.append((where, obj))
        return workloads, records

    # -- writing

    def _sync_index(self) -> None:
        """Read workload lines appended since the last call (caller holds the lock)."""
        try:
            with open(self.workload_file, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return
        end = data.rfind(b"\n") + 1  # a line without its newline yet is not counted
        for raw in data[:end].split(b"\n"):
            if not raw.strip():
                continue
            try:
                shash = json.loads(raw)[0]
                if isinstance(shash, str):
                    self._index.setdefault(shash, self._lines)
            except (ValueError, IndexError, KeyError, TypeError):
                pass  # a bad line still takes an index, as on reading
            self._lines += 1
        self._offset += end

    @staticmethod
    def _append_line(path: Path, text: str) -> None:
        data = (text + "\n").encode()
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            size = os.fstat(fd).st_size
            if size:
                with open(path, "rb") as f:  # a writer killed mid-line left no newline
                    f.seek(size - 1)
                    if f.read(1) != b"\n":
                        data = b"\n" + data
            os.write(fd, data)
        finally:
            os.close(fd)

    def append(self, workload_json: list, record_json: list) -> None:
        """Append one record (and its workload, unless the file has it) under the lock."""
        shash = workload_json[0]
        with self.lock():
            self._sync_index()
            index = self._index.get(shash)
            if index is None:
                self._append_line(self.workload_file, json.dumps(compact_workload(workload_json)))
                self._sync_index()
                index = self._index[shash]
            self._append_line(self.record_file, json.dumps([index, record_json]))

    def compact(self) -> tuple[int, int]:
        """Rewrite the workload file with :func:`compact_workload` (same lines, same order, so
        every record still names its workload), atomically under the lock; (bytes before,
        after). Lines that do not parse are kept as they are."""
        with self.lock():
            before = self.workload_file.read_bytes()
            out = []
            for line in before.decode().splitlines():
                try:
                    out.append(json.dumps(compact_workload(json.loads(line))) if line else line)
                except ValueError:
                    out.append(line)
            after = ("\n".join(out) + "\n").encode()
            tmp = self.workload_file.with_suffix(".json.tmp")
            tmp.write_bytes(after)
            os.replace(tmp, self.workload_file)
            self._index, self._lines, self._offset = {}, 0, 0
        return len(before), len(after)

    def count_records(self, cpu: str | None = None) -> dict[str, int]:
        """Valid records per workload hash (for resuming: what is already measured), only
        those measured on ``cpu`` when it is given (:func:`record_cpu`)."""
        report = LoadReport()
        workloads, records = self.read(report)
        counts: dict[str, int] = {}
        for _, (index, rec) in records:
            if not _measured_on(rec, cpu):
                continue
            shash = workloads[index][0]
            counts[shash] = counts.get(shash, 0) + 1
        return counts

    # -- provenance

    def update_provenance(self, run: dict, models: Iterable[str], target: dict) -> dict:
        """Merge one tuning run into ``provenance.json`` (under the lock) and return it."""
        path = self.path / PROVENANCE_FILE
        with self.lock():
            data: dict = {}
            if path.exists():
                try:
                    data = json.loads(path.read_text())
                    if not isinstance(data, dict):
                        raise ValueError("not a JSON object")
                except ValueError as exc:
                    backup = path.with_name(
                        f"{PROVENANCE_FILE}.corrupt-{_dt.datetime.now():%Y%m%d%H%M%S}"
                    )
                    shutil.copyfile(path, backup)
                    log.warning("%s was unreadable (%s); kept as %s", path, exc, backup)
                    data = {}
            runs = list(data.get("runs", []))
            runs.append(run)
            data["format"] = "sepconv-tune-log-provenance"
            targets = dict(data.get("targets") or {})
            if "target" in data and not targets:  # a log from before targets were kept per CPU
                targets[str(data["target"].get("mcpu", ""))] = data["target"]
            targets[str(target.get("mcpu", ""))] = target
            data["target"] = target  # the latest run's
            data["targets"] = targets  # per CPU (LLVM's mcpu), as the records are filed
            data["models"] = sorted(set(data.get("models", [])) | set(models))
            data["trials_total"] = sum(int(r.get("trials", 0)) for r in runs)
            data["wall_seconds_total"] = round(sum(float(r.get("wall_seconds", 0)) for r in runs))
            data["first_run"] = runs[0].get("date")
            data["last_run"] = run.get("date")
            data["runs"] = runs
            fd, tmp = tempfile.mkstemp(dir=self.path, prefix=f".{PROVENANCE_FILE}.", suffix=".tmp")
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, indent=2)
                f.write("\n")
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        return data


def machine_description() -> dict:
    """CPU (and GPU) model of this machine, for provenance."""
    from sepconv.targets.host import cpu_model_name, host_cpu_name

    desc = {"cpu": cpu_model_name(), "cores": os.cpu_count(), "machine": platform.machine()}
    try:
        from sepconv.targets import gpu_compute_capability, physical_cores

        desc["llvm_cpu"] = host_cpu_name()
        desc["physical_cores"] = physical_cores()
        cc = gpu_compute_capability()
        if cc:
            desc["gpu_compute_capability"] = cc
    except Exception:  # noqa: BLE001 - provenance must not fail a tuning run
        pass
    return desc


# ---------------------------------------------------------------------------------------------
# The database TVM sees


def _ms():
    from tvm.s_tir import meta_schedule as ms

    return ms


def _mean(run_secs) -> float:
    secs = run_secs or []
    return sum(secs) / len(secs) if secs else float("inf")


def _why(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[-1][:120] if text else ''}"


def _measured_on(rec: list, cpu: str | None) -> bool:
    """Whether a record line's record (``[trace, run_secs, target, args]``) was measured on
    ``cpu``; every record is when ``cpu`` is None, and so is one with no target or a GPU's."""
    if cpu is None or len(rec) < 3 or not isinstance(rec[2], dict):
        return True
    measured = record_cpu(rec[2])
    return measured is None or measured == cpu


def _collect(
    dirs: Sequence[Path],
    report: LoadReport,
    only: set[str] | None = None,
    cpu: str | None = None,
) -> dict[str, list[tuple[str, list, list]]]:
    """The validated lines of ``dirs`` by workload hash: ``(workload file:line, workload JSON,
    [(where, record)])`` per log that has the workload, parsed as JSON but not yet by TVM.
    With ``cpu``, records measured on other CPUs are left out and named in
    ``report.other_cpus``."""
    found: dict[str, list[tuple[str, list, list]]] = {}
    for d in dirs:
        tlog = TuneLog(d)
        if not tlog.workload_file.exists() and not tlog.record_file.exists():
            continue
        report.dirs.append(d)
        workloads, records = tlog.read(report)
        by_workload: dict[int, list[tuple[str, list]]] = {}
        for where, (index, rec) in records:
            if _measured_on(rec, cpu):
                by_workload.setdefault(index, []).append((where, rec))
            elif only is None or workloads[index][0] in only:
                elsewhere = report.other_cpus.setdefault(workloads[index][0], set())
                elsewhere.add(record_cpu(rec[2]) or "generic")
        for index, recs in by_workload.items():
            shash = workloads[index][0]
            if only is None or shash in only:
                where = f"{tlog.workload_file}:{index + 1}"
                found.setdefault(shash, []).append((where, workloads[index], recs))
    return found


def _apply_confirmations(
    found: dict[str, list[tuple[str, list, list]]], report: LoadReport, cpu: str
) -> None:
    """Keep, of each workload confirmed on ``cpu`` (``confirmed.json`` in the logs read, later
    logs overriding earlier ones), only the record its confirmation chose — or none, where it
    chose our rules. A confirmation that saw fewer records than the logs now hold is stale, and
    leaves the workload's records as they are (the fastest logged is used)."""
    from sepconv.compiler.tuning.confirm import read_confirmations, trace_digest

    confirmations: dict[str, dict] = {}
    for d in report.dirs:
        confirmations.update(read_confirmations(d, cpu))
    for shash, entry in confirmations.items():
        entries = found.get(shash)
        if not entries:
            continue
        if sum(len(recs) for _, _, recs in entries) > int(entry.get("records") or 0):
            report.stale_confirmations += 1
            continue
        if entry["choice"] == "rules":
            del found[shash]
            report.rules_confirmed.add(shash)
            continue
        chosen = entry.get("trace")
        kept = []
        for wl_where, workload, recs in entries:
            # its time is the confirmed one: what the build reports as the record's (record_us)
            mine = [
                (w, [rec[0], [float(entry["us"]["record"]) * 1e-6], *rec[2:]])
                for w, rec in recs
                if trace_digest(rec[0]) == chosen
            ]
            if mine:
                kept.append((wl_where, workload, mine))
        if kept:
            found[shash] = kept
        else:  # the chosen record is not in the logs read: as if unconfirmed
            report.stale_confirmations += 1


def _commit(db, entries: list[tuple[str, list, list]], report: LoadReport, top_k: int | None):
    """Parse one workload's collected lines with TVM (a record's trace is replayed to read it,
    ≈10 ms each) into ``db``: its ``top_k`` fastest readable records per log, or all."""
    ms = _ms()
    wl = None
    for wl_where, workload, recs in entries:
        if wl is None:
            try:
                wl = db.commit_workload(ms.database.Workload.from_json(workload).mod)
            except Exception as exc:  # noqa: BLE001 - TVM rejects it: report, skip
                report.skipped.append(f"{wl_where}: TVM cannot read it ({_why(exc)})")
                report.skipped.extend(f"{w}: its workload could not be read" for w, _ in recs)
                continue
            report.workloads += 1
        if top_k is not None:
            recs = sorted(recs, key=lambda item: _mean(item[1][1]))
        taken = 0
        for where, rec in recs:
            if top_k is not None and taken >= top_k:
                break
            try:
                db.commit_tuning_record(ms.database.TuningRecord.from_json(rec, wl))
            except Exception as exc:  # noqa: BLE001 - e.g. a trace that no longer replays
                report.skipped.append(f"{where}: TVM cannot read it ({_why(exc)})")
                continue
            taken += 1
            report.records += 1


def record_json(record: Any) -> list:
    """TVM's JSON form of a tuning record (see :func:`sepconv.compiler.tvm_compat.record_as_json`
    for the traces TVM's Python conversion cannot write)."""
    from sepconv.compiler.tvm_compat import record_as_json

    return record_as_json(record, WORKLOAD_FILE, RECORD_FILE)


def _make_database_class():
    """The PyDatabase subclass, created on first use so that importing this module is cheap."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.database import PyDatabase

    @derived_object
    class SepconvDatabase(PyDatabase):
        """A MetaSchedule database over merged tune logs; commits are appended to ``writer``.

        Reads are served from memory. A committed record is appended to the write log at once
        (under its lock) unless it is a failed measurement.
        """

        def __init__(self, inner, writer, report, pending, top_k, warn):
            super().__init__()
            self.inner = inner
            self.writer = writer
            self.report = report
            self.appended = 0
            self.pending = pending  # workload hash → lines TVM has not read yet (lazy)
            self.top_k = top_k
            self.warn = warn

        def _read(self, shashes) -> None:
            for shash in shashes:
                entries = self.pending.pop(shash, None)
                if entries is None:
                    continue
                before = len(self.report.skipped)
                _commit(self.inner, entries, self.report, self.top_k)
                for line in self.report.skipped[before:] if self.warn else ():
                    log.warning("tuning log: skipped %s", line)

        def _read_for(self, mod) -> None:
            if self.pending:
                import tvm_ffi

                self._read([str(tvm_ffi.structural_hash(mod))])

        def _read_all(self) -> None:
            self._read(list(self.pending))

        def has_workload(self, mod):
            self._read_for(mod)
            return self.inner.has_workload(mod)

        def commit_workload(self, mod):
            return self.inner.commit_workload(mod)

        def commit_tuning_record(self, record):
            self.inner.commit_tuning_record(record)
            if self.writer is None:
                return
            if mean_secs(record.run_secs) is None:
                return
            self.writer.append(record.workload.as_json(), record_json(record))
            self.appended += 1

        def get_top_k(self, workload, top_k):
            self._read_for(workload.mod)
            return self.inner.get_top_k(workload, top_k)

        def get_all_tuning_records(self):
            self._read_all()
            return self.inner.get_all_tuning_records()

        def query_tuning_record(self, mod, target, workload_name):
            self._read_for(mod)
            return self.inner.query_tuning_record(mod, target, workload_name)

        def query_schedule(self, mod, target, workload_name):
            self._read_for(mod)
            return self.inner.query_schedule(mod, target, workload_name)

        def query_ir_module(self, mod, target, workload_name):
            self._read_for(mod)
            return self.inner.query_ir_module(mod, target, workload_name)

        def __len__(self):
            self._read_all()
            return len(self.inner)

    return SepconvDatabase


_DB_CLASS = None


def open_database(
    dirs: Sequence[str | os.PathLike] | str | os.PathLike,
    write_dir: str | os.PathLike | None = None,
    *,
    top_k: int | None = None,
    only: set[str] | None = None,
    warn: bool = True,
    lazy: bool = False,
    cpu: str | None = None,
    confirmed: bool = False,
):
    """A MetaSchedule database holding the valid records of every log in ``dirs`` (missing ones
    are fine) and, when ``write_dir`` is given, appending new records there as they are
    committed. ``top_k`` keeps only the fastest records per workload (a build needs one);
    ``only`` restricts it to these workload hashes. Skipped lines are logged as warnings naming
    ``file:line``; the load summary is on the returned database's ``report``.

    ``cpu`` (LLVM's ``mcpu`` name, :func:`record_cpu`): only the records measured on that CPU
    are loaded; the others are counted per workload in ``report.other_cpus``. A record says how
    fast a schedule ran on one CPU, and one log folder serves a whole ISA class: on this
    project's machines records tuned on another CPU of the class made models slower than our
    rules (README, "Shipped tune log"), and the fastest record of a mixed log is the one
    measured on the fastest machine.

    ``lazy``: TVM reads a workload's records when a query first names it, not here. A build
    queries only its model's workloads, a few dozen of the shipped log's hundreds; the lines
    are still read and checked now, and what TVM then rejects is logged when it is queried.

    ``confirmed`` (with ``cpu``): where ``confirmed.json`` holds a tuning run's confirmation for
    that CPU (:mod:`sepconv.compiler.tuning.confirm`), a workload gets only the record it chose,
    or none where it chose our rules (``report.rules_confirmed``). A build reads it so; tuning
    reads every record.
    """
    global _DB_CLASS
    if isinstance(dirs, (str, os.PathLike)):
        dirs = [dirs]
    paths = [Path(d) for d in dirs]
    writer = TuneLog(write_dir) if write_dir is not None else None
    if writer is not None and writer.path not in paths:
        paths.append(writer.path)
    ms = _ms()
    report = LoadReport()
    inner = ms.database.MemoryDatabase(module_equality="structural")
    found = _collect(paths, report, only, cpu)
    if confirmed and cpu is not None:
        _apply_confirmations(found, report, cpu)
    if not lazy:
        for entries in found.values():
            _commit(inner, entries, report, top_k)
        found = {}
    if warn:
        for line in report.skipped:
            log.warning("tuning log: skipped %s", line)
    if report.skipped and warn:
        log.warning(
            "tuning log: %d damaged line(s) skipped; %d records of %d workloads loaded",
            len(report.skipped),
            report.records,
            report.workloads,
        )
    if _DB_CLASS is None:
        _DB_CLASS = _make_database_class()
    return _DB_CLASS(inner, writer, report, found, top_k, warn)


# ---------------------------------------------------------------------------------------------
# Applying records in a build


def normalize_for_database(func: Any) -> Any:
    """The workload key of a fused PrimFunc: what MetaSchedule's task extraction stores
    (:func:`sepconv.compiler.tvm_compat.normalize_workload`)."""
    from sepconv.compiler.tvm_compat import normalize_workload

    return normalize_workload(func)


def apply_database(mod, target, database) -> tuple[object, list[str]]:
    """Schedule every PrimFunc of ``mod`` that has a record in ``database`` with its best record.

    Returns ``(module, names of the PrimFuncs scheduled from records)``; those are marked
    ``tirx.is_scheduled`` so that the rule list leaves them alone, and carry the record's time
    (``sepconv.record_us``: what the tuner measured, which ``sepconv profile`` sets beside
    the time in the model). A record that exists but
    cannot be replayed (the PrimFunc changed shape since it was tuned can't match, so this means
    a TVM or trace problem) is reported as a warning, never dropped silently, and the function
    falls back to the rules.
    """
    from tvm import tirx

    updates = {}
    tuned: list[str] = []
    for gv, func in mod.functions_items():
        if not isinstance(func, tirx.PrimFunc):
            continue
        if func.attrs is not None and SCHEDULED_ATTR in func.attrs:
            continue
        key = normalize_for_database(func)
        if not database.has_workload(key):
            continue
        try:
            sch = database.query_schedule(key, target, gv.name_hint)
            record = database.query_tuning_record(key, target, gv.name_hint)
        except Exception as exc:  # noqa: BLE001 - one bad record must not fail the build
            log.warning(
                "tuning record for %s could not be replayed (%s: %s); using the schedule rules",
                gv.name_hint,
                type(exc).__name__,
                str(exc).strip().splitlines()[-1][:200] if str(exc).strip() else "",
            )
            continue
        if sch is None:
            continue  # only failed measurements for it
        new = sch.mod["main"]
        had_symbol = func.attrs is not None and "global_symbol" in func.attrs
        new = (
            new.with_attr("global_symbol", func.attrs["global_symbol"])
            if had_symbol
            else new.without_attr("global_symbol")
        )
        new = new.with_attr(SCHEDULED_ATTR, True)
        secs = mean_secs(record.run_secs) if record is not None else None
        updates[gv] = new if secs is None else new.with_attr(RECORD_US_ATTR, secs * 1e6)
        tuned.append(gv.name_hint)
    if updates:
        mod = mod.clone()
        for gv, func in updates.items():
            mod[gv] = func
    log.info("%d PrimFuncs scheduled from tuning records", len(tuned))
    return mod, sorted(tuned)


def database_for_build(key: str, sources=True, cpu: str | None = None):
    """The merged database a build reads (None when there is no log), and the dirs read;
    ``cpu``: only records measured on that CPU (:func:`open_database`)."""
    dirs = [d for d in log_dirs(key, sources) if d.is_dir()]
    if not dirs:
        return None, []
    db = open_database(dirs, top_k=1, lazy=True, cpu=cpu, confirmed=True)
    report = db.report
    if not db.pending and not report.other_cpus and not report.rules_confirmed and len(db) == 0:
        return None, []
    return db, [str(d) for d in db.report.dirs]


def _unscheduled_keys(mod: Any) -> Iterator[tuple[str, str]]:
    """(name, workload hash) of every PrimFunc of ``mod`` not yet scheduled."""
    from tvm import tirx

    for gv, func in mod.functions_items():
        if not isinstance(func, tirx.PrimFunc):
            continue
        if func.attrs is not None and SCHEDULED_ATTR in func.attrs:
            continue
        yield gv.name_hint, _ms().database.Workload(normalize_for_database(func)).as_json()[0]


def records_on_other_cpus(mod: Any, database: Any) -> dict[str, list[str]]:
    """PrimFunc name → the CPUs whose records for it ``database`` left out, for every PrimFunc
    of ``mod`` not scheduled from a record: what tuning elsewhere would have applied."""
    other = getattr(getattr(database, "report", None), "other_cpus", None)
    if not other:
        return {}
    return {name: sorted(other[key]) for name, key in _unscheduled_keys(mod) if other.get(key)}


def rules_confirmed(mod: Any, database: Any) -> list[str]:
    """Names of the PrimFuncs of ``mod`` whose records a confirmation on this CPU found no
    faster than our rules' schedule (:mod:`sepconv.compiler.tuning.confirm`)."""
    confirmed = getattr(getattr(database, "report", None), "rules_confirmed", None)
    if not confirmed:
        return []
    return sorted(name for name, key in _unscheduled_keys(mod) if key in confirmed)


def require_writable(path: Path) -> None:
    """Raise TuningError when a log directory cannot be written (before minutes of tuning)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=path, prefix=".probe", delete=True)  # noqa: SIM115
        probe.close()
    except OSError as exc:
        raise TuningError(
            f"cannot write the tuning log {path}: {exc.strerror or exc}; pass --tune-log DIR "
            "(tune_log=...) to write somewhere else"
        ) from exc
