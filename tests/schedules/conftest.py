"""Fixtures for the schedule-rule tests: targets and lowered (legalised + fused) modules."""

from __future__ import annotations

import numpy as np
import pytest
import torch


def host_target(num_cores: int = 2):
    """An LLVM target for this machine: its CPU name corrected to the features it really has (as
    ``sepconv compile`` resolves it), so what we build also runs here."""
    from sepconv.targets import resolve_target

    return resolve_target("host", num_cores=num_cores).target


def require_runs_here(target) -> None:
    """Skip, saying why, a test that would execute code this CPU cannot run (SIGILL kills the
    whole pytest process)."""
    from sepconv.targets import missing_on_host

    missing = missing_on_host(target)
    if missing:
        pytest.skip(f"runs code for {target.attrs.get('mcpu')}; this host lacks {missing}")


def lower(model: torch.nn.Module, x: torch.Tensor, target):
    from sepconv.compiler.debug import lower_to_tir

    return lower_to_tir(model.eval(), x, target)


def primfuncs(mod) -> dict:
    import tvm

    return {gv.name_hint: f for gv, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)}


def run_primfunc(func, target, seed: int = 0) -> np.ndarray:
    """Build one PrimFunc alone, run it on seeded random inputs, return its last argument."""
    import tvm

    require_runs_here(target)
    f = func.with_attr("global_symbol", "main")
    lib = tvm.compile(tvm.IRModule({"main": f}), target=target).jit()
    rng = np.random.default_rng(seed)
    args = [
        tvm.runtime.tensor(rng.uniform(-1, 1, [int(s) for s in p.shape]).astype(str(p.dtype)))
        for p in func.params
    ]
    lib["main"](*args)
    return args[-1].numpy()


def run_vm(mod, target, x: torch.Tensor) -> np.ndarray:
    import tvm

    from sepconv.compiler.debug import build_vm, first_tensor

    require_runs_here(target)
    vm = build_vm(mod, target)
    return first_tensor(vm["main"](tvm.runtime.tensor(x.numpy())))


@pytest.fixture(scope="session")
def target():
    return host_target()


@pytest.fixture(scope="session")
def zoo_mod(target):
    """OpZoo lowered to fused PrimFuncs, with its input and torch reference output."""
    from tests.schedules.nets import op_zoo

    model = op_zoo()
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(x).numpy()
    return lower(model, x, target), x, ref


@pytest.fixture(scope="session")
def mbv2_mod(target):
    from tests.schedules.nets import mini_mobilenet_v2

    model = mini_mobilenet_v2()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = model(x).numpy()
    return lower(model, x, target), x, ref
