"""The Triton kernels against PyTorch under ``TRITON_INTERPRET=1``, on CPU tensors.

Run as ``TRITON_INTERPRET=1 python -m tests.schedules.triton_interp_cases [OUT.json]`` (the test
module does): ``@triton.jit`` reads the variable when the kernel module is imported, so the
interpreter needs a process of its own — the embedding tests in the pytest process compile the
same kernels for a real GPU target. Each case pins one ``triton.Config`` (autotuning times
configs on a GPU); the cases cover the first and the last config of each layout.

Importing this module needs neither Triton nor torch: :data:`CASES` is plain data.
"""

from __future__ import annotations

import json
import os
import sys
import zlib

# (kind, id, params); configs: "first" / "last" config of the case's layout.
CASES: list[tuple[str, str, dict]] = []


def _add(kind: str, name: str, **params):
    for which in ("first", "last"):
        CASES.append((kind, f"{kind}-{name}-{which}", {**params, "config": which}))


_add("dw", "k3s1_nchw_relu6", n=1, c=8, h=9, w=9, k=3, s=1, act="relu6", cl=False)
_add("dw", "k3s2_nchw_hswish_odd", n=2, c=5, h=11, w=7, k=3, s=2, act="hswish", cl=False)
_add("dw", "k5s1_nhwc_silu", n=1, c=12, h=8, w=10, k=5, s=1, act="silu", cl=True)
_add("dw", "k5s2_nhwc_relu_nobias", n=2, c=6, h=9, w=9, k=5, s=2, act="relu", cl=True, bias=False)
_add("dw", "k3s1_nchw_wide", n=1, c=40, h=6, w=6, k=3, s=1, act=None, cl=False)
_add("fused", "k3s1_nchw_relu6_res", n=1, c=24, co=8, h=9, w=9, k=3, s=1, a1="relu6", a2=None,
     res=True, cl=False)  # fmt: skip
_add("fused", "k5s2_nhwc_hswish_relu", n=2, c=20, co=36, h=10, w=11, k=5, s=2, a1="hswish",
     a2="relu", res=False, cl=True)  # fmt: skip
_add("fused", "k3s2_nchw_silu_many_co", n=1, c=40, co=72, h=7, w=7, k=3, s=2, a1="silu", a2=None,
     res=False, cl=False)  # fmt: skip
_add("fused", "k3s1_nhwc_nobias_res", n=1, c=16, co=16, h=5, w=5, k=3, s=1, a1="relu", a2=None,
     res=True, cl=True, bias=False)  # fmt: skip
_add("se", "nchw_relu_hsigmoid", n=1, c=24, cr=8, h=4, w=4, act="relu", gate="hsigmoid", cl=False)
_add("se", "nhwc_silu_sigmoid", n=2, c=40, cr=10, h=7, w=5, act="silu", gate="sigmoid", cl=True)
_add("se", "nchw_many_channels", n=1, c=144, cr=6, h=3, w=3, act="silu", gate="sigmoid", cl=False)
FP16_CASE = dict(n=1, c=32, co=16, h=6, w=6, k=3, s=1, a1="relu6", a2=None, res=True, cl=False,
                 dtype="float16", config="first")  # fmt: skip
CASES.append(("fused", "fused-fp16-k3s1_nchw", FP16_CASE))

FP32_RULE = (1e-4, 1e-5)  # max abs error <= a * max|ref| + b (the project's fp32 rule)
FP16_RULE = (5e-3, 1e-3)  # half-precision inputs, fp32 accumulation


def _pick(configs, channels_last: bool, which: str):
    from sepconv.schedules.triton_common import layout_configs

    chosen = layout_configs(configs, channels_last)
    return chosen[0] if which == "first" else chosen[-1]


def run_case(kind: str, p: dict) -> dict:
    import torch
    import torch.nn.functional as F

    from sepconv.schedules.triton_common import torch_activation

    gen = torch.Generator().manual_seed(zlib.crc32(repr(sorted(p.items())).encode()))
    fmt = torch.channels_last if p["cl"] else torch.contiguous_format
    dtype = getattr(torch, p.get("dtype", "float32"))

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).to(dtype)

    if kind == "dw":
        from sepconv.schedules import triton_depthwise as K

        x = rand(p["n"], p["c"], p["h"], p["w"]).contiguous(memory_format=fmt)
        w, b = rand(p["c"], 1, p["k"], p["k"]), rand(p["c"]) if p.get("bias", True) else None
        y = K.depthwise_conv2d(x, w, b, stride=p["s"], padding=p["k"] // 2, act=p["act"],
                               config=_pick(K.CONFIGS, p["cl"], p["config"]))  # fmt: skip
        ref = torch_activation(
            F.conv2d(x.float(), w.float(), None if b is None else b.float(), stride=p["s"],
                     padding=p["k"] // 2, groups=p["c"]), p["act"])  # fmt: skip
    elif kind == "fused":
        from sepconv.schedules import triton_fused_dw_pw as K

        x = rand(p["n"], p["c"], p["h"], p["w"]).contiguous(memory_format=fmt)
        bias = p.get("bias", True)
        wd, bd = rand(p["c"], 1, p["k"], p["k"]), rand(p["c"]) if bias else None
        wp, bp = rand(p["co"], p["c"], 1, 1, scale=0.3), rand(p["co"]) if bias else None
        d = torch_activation(
            F.conv2d(x.float(), wd.float(), None if bd is None else bd.float(), stride=p["s"],
                     padding=p["k"] // 2, groups=p["c"]), p["a1"])  # fmt: skip
        if dtype == torch.float16:
            d = d.half().float()  # the kernel feeds tl.dot in the input precision
        ref = torch_activation(F.conv2d(d, wp.float(), None if bp is None else bp.float()),
                               p["a2"])  # fmt: skip
        r = rand(*ref.shape).contiguous(memory_format=fmt) if p["res"] else None
        if r is not None:
            ref = ref + r.float()
        y = K.fused_dw_pw(x, wd, bd, wp, bp, stride=p["s"], padding=p["k"] // 2,
                          act_dw=p["a1"], act_pw=p["a2"], residual=r,
                          config=_pick(K.CONFIGS, p["cl"], p["config"]))  # fmt: skip
    elif kind == "se":
        from sepconv.schedules import triton_se as K

        x = rand(p["n"], p["c"], p["h"], p["w"]).contiguous(memory_format=fmt)
        w1, b1 = rand(p["cr"], p["c"], 1, 1, scale=0.3), rand(p["cr"])
        w2, b2 = rand(p["c"], p["cr"], 1, 1, scale=0.3), rand(p["c"])
        s = x.float().mean((2, 3), keepdim=True)
        g = torch_activation(
            F.conv2d(torch_activation(F.conv2d(s, w1.float(), b1.float()), p["act"]),
                     w2.float(), b2.float()), p["gate"])  # fmt: skip
        ref = x.float() * g
        configs = (_pick(K.POOL_CONFIGS, p["cl"], p["config"]),
                   _pick(K.SCALE_CONFIGS, p["cl"], p["config"]))  # fmt: skip
        y = K.squeeze_excite(x, w1, b1, w2, b2, p["act"], p["gate"], configs=configs)
    else:
        raise ValueError(kind)
    a, b = FP16_RULE if dtype == torch.float16 else FP32_RULE
    scale = float(ref.abs().max())
    err = float((y.float() - ref).abs().max())
    same_format = y.is_contiguous(memory_format=fmt)
    return {"err": err, "scale": scale, "tol": a * scale + b, "shape_ok":
            tuple(y.shape) == tuple(ref.shape), "format_ok": bool(same_format)}  # fmt: skip


def main(argv: list[str]) -> int:
    if os.environ.get("TRITON_INTERPRET") != "1":
        print("set TRITON_INTERPRET=1", file=sys.stderr)
        return 2
    results = {}
    for kind, case_id, params in CASES:
        try:
            results[case_id] = run_case(kind, params)
        except Exception as exc:  # noqa: BLE001 - reported per case
            results[case_id] = {"error": f"{type(exc).__name__}: {exc}"}
    text = json.dumps(results, indent=1)
    if len(argv) > 1:
        with open(argv[1], "w") as f:
            f.write(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
