"""The compiler's pipeline opened up, for schedule-rule tests and benchmarks: a model lowered to
fused PrimFuncs with its weights bound back in (:func:`lower_to_tir`), a module built into a VM
with the CPU pipeline (:func:`build_vm`), and the first output tensor of a VM call
(:func:`first_tensor`). ``benchmarks/schedule_rules.py`` times them; ``tests/schedules`` runs them.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def lower_to_tir(module: Any, example: Any, target: Any, sepconv_ops: bool = False):
    """The compiler's own lowering (``sepconv.compiler.build.lower``), weights bound back in as
    constants so that ``main`` takes only the input. NCHW (no separable operators) by default:
    that is what the schedules room's NCHW rules are measured on."""
    import tvm
    from tvm import relax

    from sepconv.compiler.build import lower
    from sepconv.compiler.importer import import_module

    mod, weights, _ = lower(import_module(module.eval(), (example,)), target, sepconv_ops)
    params = {name: tvm.runtime.tensor(w) for name, w in weights.items()}
    return relax.transform.BindParams("main", params)(mod)


def build_vm(mod: Any, target: Any):
    """``mod`` built with TVM's CPU pipeline for ``target``, as a VM on this machine's CPU.
    Refuses (``ensure_runs_here``) code this CPU cannot execute: SIGILL would kill the process."""
    import tvm
    from tvm import relax
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    from sepconv.targets import ensure_runs_here

    ensure_runs_here(target, "a model")
    pipe = tvm.transform.Sequential(cpu.dataflow_lower_passes(target) + cpu.finalize_passes(target))
    with target:
        ex = tvm.compile(mod, target=target, relax_pipeline=pipe)
    return relax.VirtualMachine(ex, tvm.cpu())


def first_tensor(out: Any) -> np.ndarray:
    """The first tensor of a VM result (nested tuples unwrapped), as numpy."""
    while not hasattr(out, "numpy"):
        out = out[0]
    return out.numpy()
