"""Confirming what tuning chose: each task's fastest logged records re-timed against our rule's
own schedule, in interleaved rounds, before a build may prefer them.

A tuner keeps the fastest time it measured for each candidate. Among hundreds of candidates timed
once each on a machine whose speed wanders (a shared VM steps between speeds for seconds at a
time), the fastest logged time belongs to a candidate that was timed at a fast moment as often as
to a faster one: on a 2-core Zen 4 VM, records tuned that way made every zoo model slower than our
rules (README, "Shipped tune log"). Re-timing a few finalists against the rule's schedule, round
after round in alternating order, puts each pair under the same conditions; a record is used only
when it beats the rule's schedule by :data:`MIN_GAIN` in the median over rounds of their ratio
(:func:`sepconv.timing.rounds_ratio`; with fewer than 3 rounds, the medians' ratio) and its
median time is lower too.

The choice is kept beside the records, per CPU, in ``confirmed.json``::

    {"format": "sepconv-confirmed", "cpus": {"znver4": {"<workload hash>": {
        "choice": "record" | "rules", "trace": "<digest of the chosen record's trace>",
        "records": 12, "us": {"rules": 41.2, "record": 38.0}, "paired_ratio": 0.93, ...}}}}

A build reads it (:func:`sepconv.compiler.tuning.database.open_database` with ``confirmed``): a
confirmed ``rules`` task gets the rule's schedule, a confirmed ``record`` exactly that record. A
confirmation is stale once the log holds more records for the task on that CPU than it saw;
then the fastest logged record is used, as before.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import logging
import os
import statistics
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

CONFIRM_FILE = "confirmed.json"
CONFIRM_FORMAT = "sepconv-confirmed"
CONFIRM_ROUNDS = 5
"""Interleaved rounds of every finalist (each round times each finalist once, ``repeat=1``)."""
CONFIRM_TOP_K = 2
"""Logged records re-timed per task beside the rule's schedule: the fastest distinct ones."""
MIN_GAIN = 0.02
"""A record replaces the rule's schedule only when its paired ratio to it is ≤ 1 − this."""

__all__ = [
    "CONFIRM_FILE",
    "Confirmation",
    "confirm_tasks",
    "read_confirmations",
    "trace_digest",
    "write_confirmations",
]


def trace_digest(trace_json: Any) -> str:
    """A short digest of a record's trace as the log stores it (``record[0]``)."""
    text = json.dumps(trace_json, separators=(",", ":"), sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


@dataclass
class Confirmation:
    """One task's confirmed choice."""

    choice: str  # "record" or "rules"
    trace: str | None  # the chosen record's trace digest ("record" only)
    records: int  # the task's records on this CPU when it was confirmed
    us: dict[str, float] = field(default_factory=dict)  # finalist → median µs over rounds
    logged_us: float | None = None  # the fastest logged time, as the tuner recorded it
    paired_ratio: float | None = None  # chosen record / rule's schedule, paired by round
    rounds: int = 0

    @property
    def chosen_us(self) -> float | None:
        return self.us.get("record" if self.choice == "record" else "rules")

    def to_json(self) -> dict:
        return {
            "choice": self.choice,
            "trace": self.trace,
            "records": self.records,
            "us": {k: round(v, 6) for k, v in self.us.items()},
            "logged_us": None if self.logged_us is None else round(self.logged_us, 3),
            "paired_ratio": None if self.paired_ratio is None else round(self.paired_ratio, 4),
            "rounds": self.rounds,
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }


def read_confirmations(log_dir: str | os.PathLike, cpu: str | None) -> dict[str, dict]:
    """Workload hash → confirmation entry for ``cpu`` in ``log_dir`` (none when the file is
    missing or unreadable: an unreadable file is reported, and the records are used as logged)."""
    path = Path(log_dir) / CONFIRM_FILE
    if cpu is None or not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
        entries = data["cpus"].get(cpu, {}) if data.get("format") == CONFIRM_FORMAT else None
        if not isinstance(entries, dict):
            raise ValueError("not a sepconv-confirmed file")
    except (OSError, ValueError, KeyError, AttributeError, TypeError) as exc:
        log.warning("%s is unreadable (%s); records are used as logged", path, exc)
        return {}
    return {
        h: e
        for h, e in entries.items()
        if isinstance(e, dict) and e.get("choice") in ("record", "rules")
    }


def write_confirmations(log_dir: str | os.PathLike, cpu: str, entries: dict[str, dict]) -> None:
    """Merge ``entries`` (workload hash → :meth:`Confirmation.to_json`) into ``log_dir``'s
    confirmations for ``cpu``, atomically, under the log's lock."""
    from sepconv.compiler.tuning.database import TuneLog

    tlog = TuneLog(log_dir)
    path = tlog.path / CONFIRM_FILE
    with tlog.lock():
        data: dict = {}
        with contextlib.suppress(OSError, ValueError):
            data = json.loads(path.read_text())
        if not isinstance(data, dict) or data.get("format") != CONFIRM_FORMAT:
            data = {"format": CONFIRM_FORMAT, "cpus": {}}
        data.setdefault("cpus", {}).setdefault(cpu, {}).update(entries)
        fd, tmp = tempfile.mkstemp(dir=tlog.path, prefix=f".{CONFIRM_FILE}.", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
            f.write("\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)


def rule_candidate(task: Any, target: Any) -> Any | None:
    """Our rule's own schedule of ``task`` as a MeasureCandidate (after MetaSchedule's
    postprocessors): what the build uses without a record. None when no rule schedules it."""
    from tvm.s_tir import meta_schedule as ms

    from sepconv.compiler import tvm_compat
    from sepconv.compiler.tuning.measure import measure_candidates
    from sepconv.compiler.tuning.spaces import rule_spaces, space_generator

    rs = rule_spaces(task.mod["main"], target, max_spaces=1)  # its own choice is all we time
    own = (rs.schedules[:1] if rs.enumerated else []) or rs.own[:1]
    if not own:
        return None
    # TuneContext imports tvm.s_tir.tensor_intrin: ≈25 s of CUDA intrinsics unless stood in
    with tvm_compat.light_tensor_intrinsics(target):
        ctx = ms.TuneContext(
            task.mod, target=target, space_generator=space_generator([own[0].trace])
        )
    cands, _ = measure_candidates(ctx, ctx.generate_design_space())
    return cands[0] if cands else None


@dataclass
class _Finalist:
    task: int
    label: str  # "rules" or "record:<rank>"
    trace: str | None
    candidate: Any
    logged_us: float | None = None
    secs: list = field(default_factory=list)  # per round (None: the round failed)


def _finalists(
    index: int, task: Any, entries: list, target: Any, top_k: int
) -> tuple[list[_Finalist], int]:
    """(the finalists of one task, its records on this CPU): the rule's schedule and the
    ``top_k`` fastest logged records whose modules differ from it and from each other."""
    import tvm_ffi
    from tvm.s_tir import meta_schedule as ms

    from sepconv.compiler.tuning.database import mean_secs

    recs = [rec for _, _, rs in entries for _, rec in rs]
    out: list[_Finalist] = []
    seen: set[int] = set()
    own = rule_candidate(task, target)
    if own is not None:
        out.append(_Finalist(index, "rules", None, own))
        seen.add(tvm_ffi.structural_hash(own.sch.mod))
    workload = ms.database.Workload.from_json(entries[0][1])
    timed = sorted(
        ((s, rec) for rec in recs if (s := mean_secs(rec[1])) is not None), key=lambda t: t[0]
    )  # by time alone: records of equal time do not compare
    for secs, rec in timed:
        if sum(f.label != "rules" for f in out) >= top_k:
            break
        try:
            cand = ms.database.TuningRecord.from_json(rec, workload).as_measure_candidate()
        except Exception as exc:  # noqa: BLE001 - a trace that no longer replays
            log.debug("cannot replay a record of %s: %s", task.name, exc)
            continue
        h = tvm_ffi.structural_hash(cand.sch.mod)
        if h in seen:
            continue
        seen.add(h)
        out.append(_Finalist(index, f"record:{len(out)}", trace_digest(rec[0]), cand, secs * 1e6))
    return out, len(recs)


def _decide(finalists: list[_Finalist], records: int, rounds: int) -> Confirmation | None:
    """The task's choice from its finalists' per-round times (None: nothing was timed)."""
    from sepconv.timing import rounds_ratio

    def median_us(f: _Finalist) -> float | None:
        ok = [s for s in f.secs if s is not None]
        return statistics.median(ok) * 1e6 if len(ok) * 2 > len(f.secs) else None

    rules = next((f for f in finalists if f.label == "rules"), None)
    records_ = [f for f in finalists if f.label != "rules" and median_us(f) is not None]
    logged = min((f.logged_us for f in finalists if f.logged_us is not None), default=None)
    if not records_:
        return None
    if rules is None or median_us(rules) is None:  # no rule to fall back on: the fastest record
        best = min(records_, key=median_us)
        return Confirmation("record", best.trace, records, {"record": median_us(best)}, logged,
                            None, rounds)  # fmt: skip

    def ratio(f: _Finalist) -> float:
        pairs = [(a, b) for a, b in zip(f.secs, rules.secs) if a is not None and b is not None]
        paired = rounds_ratio([a for a, _ in pairs], [b for _, b in pairs])
        return median_us(f) / median_us(rules) if paired is None else paired

    best = min(records_, key=ratio)
    r = ratio(best)
    us = {"rules": median_us(rules), "record": median_us(best)}
    # and faster in the medians too: where the two disagree, the rounds' noise exceeds the gain
    if r <= 1.0 - MIN_GAIN and us["record"] < us["rules"]:
        return Confirmation("record", best.trace, records, us, logged, r, rounds)
    return Confirmation("rules", None, records, us, logged, r, rounds)


def confirm_tasks(
    tasks: Sequence[Any],
    log_dir: str | os.PathLike,
    tspec: Any,
    device: Any,
    measure: Any = None,
    *,
    rounds: int = CONFIRM_ROUNDS,
    top_k: int = CONFIRM_TOP_K,
    builders: int | None = None,
    on_stage: Callable[[str], None] | None = None,
) -> dict[str, Confirmation]:
    """Confirm ``tasks``' choices against our rules on ``device`` and write them to
    ``log_dir``'s ``confirmed.json``; returns task name → :class:`Confirmation`.

    Each task's finalists (the rule's own schedule and its ``top_k`` fastest distinct records on
    this CPU) are built once and timed in ``rounds`` rounds, every finalist of every task once per
    round (the order reversed each round), under ``measure`` (the tuning run's cache state) with
    one timing per round. Tasks whose only record is the rule's schedule need no confirmation.
    """
    from dataclasses import replace

    from tvm.s_tir import meta_schedule as ms

    from sepconv.compiler import tvm_compat
    from sepconv.compiler.tuning import database as tuning_db
    from sepconv.compiler.tuning.measure import MeasureConfig, make_pool_builder, make_runner

    on_stage = on_stage or (lambda _s: None)
    cpu = tuning_db.record_cpu(tspec.target)
    if cpu is None:  # a GPU's log is per architecture, and its builds read every record
        return {}
    report = tuning_db.LoadReport()
    found = tuning_db._collect(
        [Path(log_dir)], report, only={t.workload_hash for t in tasks}, cpu=cpu
    )
    finalists: list[_Finalist] = []
    counts: dict[int, int] = {}
    with tvm_compat.light_tensor_intrinsics(tspec.target):
        for i, t in enumerate(tasks):
            entries = found.get(t.workload_hash)
            if not entries:
                continue
            fs, counts[i] = _finalists(i, t, entries, tspec.target, top_k)
            if any(f.label != "rules" for f in fs):  # else its records are the rule's own
                finalists += fs
    if not finalists:
        return {}
    on_stage(f"confirm {len({f.task for f in finalists})} tasks: {len(finalists)} finalists × "
             f"{rounds} rounds")  # fmt: skip
    builder = make_pool_builder(
        tspec=None if tspec.is_host else tspec,
        max_workers=builders or max(1, min(4, os.cpu_count() or 1)),
    )
    try:
        built = builder.build(
            [ms.builder.BuilderInput(f.candidate.sch.mod, tspec.target) for f in finalists]
        )
    finally:
        builder.shutdown()
    dev_type = "cuda" if tspec.family == "cuda" else "cpu"
    ready = [(f, b) for f, b in zip(finalists, built) if b.error_msg is None]
    inputs = [ms.runner.RunnerInput(b.artifact_path, dev_type, f.candidate.args_info)
              for f, b in ready]  # fmt: skip
    measure = measure or (MeasureConfig() if device.is_local else MeasureConfig(min_repeat_ms=0))
    runner = make_runner(device, replace(measure, repeat=1))
    for r in range(rounds):
        order = list(range(len(inputs)))
        if r % 2:
            order.reverse()
        for i, fut in zip(order, runner.run([inputs[i] for i in order])):
            res = fut.result()
            ready[i][0].secs.append(
                tuning_db.mean_secs(res.run_secs) if res.error_msg is None else None
            )
    out: dict[str, Confirmation] = {}
    entries_json: dict[str, dict] = {}
    for i, t in enumerate(tasks):
        mine = [f for f in finalists if f.task == i]
        if not mine:
            continue
        for f in mine:  # a finalist that did not build has no rounds
            f.secs = f.secs or [None] * rounds
        c = _decide(mine, counts[i], rounds)
        if c is not None:
            out[t.name] = c
            entries_json[t.workload_hash] = c.to_json()
    if entries_json:
        write_confirmations(log_dir, cpu, entries_json)
    return out
