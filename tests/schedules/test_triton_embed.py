"""Triton kernels compiled for sm_90 without a GPU and carried by TVM CUDA modules."""

from __future__ import annotations

import re

import pytest

triton = pytest.importorskip("triton")

if triton.knobs.runtime.interpret:
    pytest.skip(
        "TRITON_INTERPRET=1 is set: kernels are interpreted, not compiled", allow_module_level=True
    )

import tvm  # noqa: E402
from tvm import tirx  # noqa: E402

from sepconv.schedules import triton_depthwise as K  # noqa: E402
from sepconv.schedules import triton_embed  # noqa: E402
from sepconv.targets import cuda_embed  # noqa: E402

TARGET = tvm.target.Target({"kind": "cuda", "arch": "sm_90", "thread_warp_size": 32})


def _dw_launch(c=8, h=10, w=10, k=3, stride=1, act=2):
    oh = (h + 2 * (k // 2) - k) // stride + 1
    cfg = K.pick_config(c, oh, oh, channels_last=False)
    meta = {k_: v for k_, v in cfg.kwargs.items() if k_ != "LAYOUT_NHWC"}
    X = tirx.decl_buffer((1, c, h, w), "float32", name="x")
    W = tirx.decl_buffer((c, 1, k, k), "float32", name="w")
    B = tirx.decl_buffer((1, c, 1, 1), "float32", name="b")
    Y = tirx.decl_buffer((1, c, oh, oh), "float32", name="y")
    i32 = lambda v: tirx.const(v, "int32")  # noqa: E731
    args = [X.data, W.data, B.data, Y.data, i32(c), i32(h), i32(w), i32(oh), i32(oh), k, k,
            stride, k // 2, k // 2, 1, True, act, False,
            meta["BLOCK_P"], meta["BLOCK_C"]]  # fmt: skip
    launch = triton_embed.Launch(
        K.depthwise_kernel, args, K.grid(1, c, oh, oh, meta),
        {"num_warps": cfg.num_warps, "num_stages": cfg.num_stages}, prefix="dw",
    )  # fmt: skip
    return [X, W, B, Y], launch


@pytest.fixture(scope="module")
def dw_launcher():
    buffers, launch = _dw_launch()
    func, modules = triton_embed.launch_primfunc(buffers, [launch], TARGET)
    return func, modules, launch


def _call_packed_args(func):
    stmts = list(func.body.seq) if isinstance(func.body, tirx.SeqStmt) else [func.body]
    return [s.value for s in stmts]


def test_module_carries_cubin_and_ptx_for_the_target(dw_launcher):
    _, modules, _ = dw_launcher
    assert len(modules) == 1 and modules[0].kind == "cuda"
    decoded = cuda_embed.decode(str(modules[0].inspect_source("cuda")))
    assert decoded is not None and decoded["arch"] == "sm_90"
    assert decoded["cubin"][:4] == b"\x7fELF"
    assert re.search(r"\.entry\s+" + re.escape(decoded["name"]) + r"\s*\(", decoded["ptx"])
    assert ".target sm_90" in decoded["ptx"]


def test_launch_passes_exactly_the_kernel_parameters(dw_launcher):
    """Runtime (non-constexpr) arguments, then a null per scratch pointer, then the launch
    dimensions: threads, grid x/y/z, dynamic shared memory bytes when the kernel uses some."""
    func, modules, launch = dw_launcher
    name = cuda_embed.decode(str(modules[0].inspect_source("cuda")))["name"]
    kernel = triton_embed.embedded_kernels()[name]
    (call,) = _call_packed_args(func)
    args = list(call.args)
    assert str(args[0]).strip('"') == name
    runtime = [a for a, p in zip(launch.args, K.depthwise_kernel.params) if not p.is_constexpr]
    ptx_params = len(re.findall(r"\.param\b", re.search(r"\.entry[^(]*\(([^)]*)\)", kernel.ptx)[1]))
    assert len(kernel.arg_types) == ptx_params == len(runtime) + kernel.num_scratch
    dyn_shared = [kernel.shared] if kernel.shared else []
    assert len(args) == 1 + len(kernel.arg_types) + 1 + len(launch.grid) + len(dyn_shared)
    launch_dims = [int(a) for a in args[1 + len(kernel.arg_types) :]]
    assert launch_dims == [launch.options["num_warps"] * 32, *launch.grid, *dyn_shared]


def test_launcher_is_marked_scheduled_and_opaque(dw_launcher):
    func, _, _ = dw_launcher
    assert bool(func.attrs["tirx.is_scheduled"]) and int(func.attrs["op_pattern"]) == 8


def test_specialisations_get_their_own_names_and_share_modules():
    b1, l1 = _dw_launch(k=3, stride=1)
    b2, l2 = _dw_launch(k=5, stride=2)
    b3, l3 = _dw_launch(c=16, h=12, w=12)  # same specialisation as l1: shapes are runtime args
    names = []
    for buffers, launch in ((b1, l1), (b2, l2), (b3, l3)):
        _, (module,) = triton_embed.launch_primfunc(buffers, [launch], TARGET)
        names.append(cuda_embed.decode(str(module.inspect_source("cuda")))["name"])
    assert names[0] != names[1] and names[0] == names[2]
    assert all(n.startswith("sepconv_dw_") for n in names)


def test_gpu_target_follows_the_tvm_arch():
    from triton.backends.compiler import GPUTarget

    t = tvm.target.Target({"kind": "cuda", "arch": "sm_80"})
    assert triton_embed.gpu_target(t) == GPUTarget("cuda", 80, 32)
