"""apply_schedules on whole (small) networks: nothing left unscheduled, numbers match torch."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import tvm

from sepconv.errors import CompileError
from sepconv.schedules import (
    Fallback,
    apply_schedules,
    cpu_rules,
    is_scheduled,
    unscheduled_functions,
)
from tests.schedules.conftest import primfuncs, run_vm


def _assert_close(out, ref):
    tol = 1e-4 * float(np.abs(ref).max()) + 1e-5
    err = float(np.abs(out - ref).max())
    assert err <= tol, f"max abs err {err:.3g} > {tol:.3g}"


def test_untouched_module_is_all_unscheduled(zoo_mod):
    mod, _, _ = zoo_mod
    assert unscheduled_functions(mod) == sorted(primfuncs(mod))


def test_op_zoo_every_function_scheduled_and_correct(zoo_mod, target):
    mod, x, ref = zoo_mod
    report: dict[str, str] = {}
    scheduled = apply_schedules(mod, target, report=report)
    assert unscheduled_functions(scheduled) == []
    assert set(report) == set(primfuncs(mod))
    # every op kind of the zoo lands on its specialised rule, nothing needs the fallback
    assert set(report.values()) == {"Conv2D", "DepthwiseConv2D", "Dense", "Reduction",
                                    "Injective"}  # fmt: skip
    assert unscheduled_functions(mod) != [], "apply_schedules must not modify its input"
    _assert_close(run_vm(scheduled, target, x), ref)


def test_mini_mobilenet_v2_matches_torch(mbv2_mod, target):
    mod, x, ref = mbv2_mod
    report: dict[str, str] = {}
    scheduled = apply_schedules(mod, target, report=report)
    assert unscheduled_functions(scheduled) == []
    assert "Fallback" not in report.values()
    _assert_close(run_vm(scheduled, target, x), ref)


class _Broken:
    name = "Broken"

    def apply(self, func, target, tunable):
        raise RuntimeError("deliberately broken rule")


def test_raising_rule_falls_through_to_fallback(mbv2_mod, target, caplog):
    mod, x, ref = mbv2_mod
    report: dict[str, str] = {}
    failures: list = []
    with caplog.at_level(logging.WARNING, logger="sepconv.schedules"):
        scheduled = apply_schedules(
            mod, target, rules=[_Broken(), Fallback()], report=report, failures=failures
        )
    assert set(report.values()) == {"Fallback"}
    assert sorted(f["function"] for f in failures) == sorted(report)
    assert all(f["rule"] == "Broken" and "deliberately broken" in f["error"] for f in failures)
    assert unscheduled_functions(scheduled) == []
    warned = [r.getMessage() for r in caplog.records if "Broken" in r.getMessage()]
    assert len(warned) == len(primfuncs(mod))
    assert all("deliberately broken" in w for w in warned)
    _assert_close(run_vm(scheduled, target, x), ref)


def test_no_accepting_rule_raises_compile_error_naming_functions(mbv2_mod, target):
    mod, _, _ = mbv2_mod
    with pytest.raises(CompileError) as info:
        apply_schedules(mod, target, rules=[_Broken()])
    for name in primfuncs(mod):
        assert name in str(info.value)


def test_already_scheduled_functions_are_kept(mbv2_mod, target):
    mod, _, _ = mbv2_mod
    name, func = next(iter(primfuncs(mod).items()))
    marked = func.with_attr("tirx.is_scheduled", True)
    mod2 = mod.clone()
    mod2[mod2.get_global_var(name)] = marked
    report: dict[str, str] = {}
    out = apply_schedules(mod2, target, report=report)
    assert name not in report
    assert out[name].same_as(marked)
    assert all(is_scheduled(f) for f in primfuncs(out).values())


def test_rules_work_with_dlight_apply_default_schedule(mbv2_mod, target):
    from tvm.s_tir import dlight

    mod, _, _ = mbv2_mod
    with target:
        out = dlight.ApplyDefaultSchedule(*cpu_rules(target))(mod.clone())
    assert unscheduled_functions(out) == []


def test_aarch64_neon_schedules_and_builds(zoo_mod):
    """Cross target: 4-lane NEON vectors, built on this machine (not run)."""
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    from sepconv.compiler.debug import build_vm  # noqa: F401  (same pipeline as the bench)

    mod, _, _ = zoo_mod
    arm = tvm.target.Target(
        {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"], "num-cores": 4}
    )
    report: dict[str, str] = {}
    scheduled = apply_schedules(mod, arm, report=report)
    assert unscheduled_functions(scheduled) == []
    assert "Fallback" not in report.values()
    pipe = tvm.transform.Sequential(cpu.dataflow_lower_passes(arm) + cpu.finalize_passes(arm))
    with arm:
        ex = tvm.compile(scheduled, target=arm, relax_pipeline=pipe)
    assert ex is not None
