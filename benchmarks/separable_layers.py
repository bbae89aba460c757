"""Per-layer benchmark of our separable operators (issue 7): compile → check → time.

For every distinct depthwise layer of MobileNetV2 and every separable block of MobileNetV1
(224, batch 1, fp32), in one run, with pinned threads:

* depthwise (dw conv + bias + ReLU6): ours (NHWC ``sepconv_dw``) vs torch eager (oneDNN) vs stock
  TVM (the grouped conv as the compiler builds it without our operators, ``--no-sepconv-ops``),
  with achieved GB/s as a fraction of this machine's copy bandwidth and GFLOP/s as a fraction of
  its FMA peak (as ``sepconv profile`` measures it), both measured in the same run (a 3×3
  stride-1 layer can meet either roof);
* fused block (dw → ReLU6 → pw): our fused operator vs the same block as two of our own kernels
  (dw, then pw) vs torch eager.

Each kernel is validated against eager PyTorch before it is timed. Kernels are timed alone (one
PrimFunc, its inputs in the operator's own layout), torch on its NCHW module.

    TVM_NUM_THREADS=2 python benchmarks/separable_layers.py --threads 2
    → prints two tables, writes benchmarks/results/separable_layers.json and .png
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from sepconv.bench.limits import measure_limits
from sepconv.timing import Timing, time_call

RESULTS = Path(__file__).resolve().parent / "results"


def median_us(fn, runs: int, warmup: int = 10) -> float:
    """Median µs of ``fn()`` by the shared timer (:func:`sepconv.timing.time_call`)."""
    return time_call(fn, warmup=warmup, runs=runs).median_us


def copy_bandwidth_gbs(nbytes: int, runs: int = 30) -> float:
    """A plain copy that reads and writes ``nbytes`` in all (torch's parallel copy): the roofline
    of a memory-bound kernel moving as many bytes, at the same cache level."""
    import torch

    src = torch.rand(max(nbytes // 8, 1024))
    dst = torch.empty_like(src)
    us = median_us(lambda: dst.copy_(src), runs=runs, warmup=5)
    return 2 * src.numel() * 4 / (us * 1e-6) / 1e9


def layers(model: str):
    """Distinct depthwise layers (shape and following pointwise) of a zoo model at 224."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from sepconv.models import get_model
    from tests.compiler.separable_cases import _collect

    spec = get_model(model)
    seen = {}
    for layer in _collect(spec.module.eval(), spec.example_input(0)):
        seen.setdefault(layer, None)
    return list(seen)


def _kernel(module, x, target, func_has: set[str], **lower_kw):
    """The scheduled PrimFuncs of ``module`` whose block names include all of ``func_has``."""
    import tvm

    from sepconv.compiler.build import lower
    from sepconv.compiler.importer import import_module
    from sepconv.schedules import apply_schedules

    mod, _, _ = lower(import_module(module, (x,)), target, **lower_kw)
    mod = apply_schedules(mod, target)
    found = []
    for _, f in mod.functions_items():
        if isinstance(f, tvm.tirx.PrimFunc):
            text = f.script()
            if all(f'T.sblock("{b}")' in text or b in text for b in func_has):
                found.append(f)
    return found


class Kernel:
    """One PrimFunc built alone, with fixed arguments, callable and timeable."""

    def __init__(self, func, target, args: list[np.ndarray]):
        import tvm

        f = func.with_attr("global_symbol", "main")
        self.lib = tvm.compile(tvm.IRModule({"main": f}), target=target).jit()
        self.args = [tvm.runtime.tensor(a) for a in args]
        self.out_shape = [int(s) for s in func.params[-1].shape]
        self.args.append(tvm.runtime.tensor(np.zeros(self.out_shape, "float32")))
        self.bytes = sum(a.numpy().nbytes for a in self.args)

    def __call__(self) -> np.ndarray:
        self.lib["main"](*self.args)
        return self.args[-1].numpy()

    def time_us(self, runs: int) -> float:
        import tvm

        timer = self.lib.time_evaluator("main", tvm.cpu(), number=10, repeat=runs)
        return Timing.from_evaluator(timer, *self.args).median_us


def _params(module):
    """Folded (BN into conv) weights of a dw/pw torch block, as numpy in our operators' layouts."""
    import torch

    convs = [m for m in module if isinstance(m, torch.nn.Conv2d)]
    bns = [m for m in module if isinstance(m, torch.nn.BatchNorm2d)]
    out = []
    for conv, bn in zip(convs, bns):
        scale = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach()
        w = conv.weight.detach() * scale[:, None, None, None]
        b = (bn.bias - bn.running_mean * scale).detach()
        out.append((w.numpy(), b.numpy()))
    return out


def _check(name: str, got: np.ndarray, ref: np.ndarray) -> None:
    from sepconv.compiler.validation import compare

    cmp = compare(name, got, ref)
    if not cmp.passed:
        raise SystemExit(f"{name}: validation FAILED (max abs error {cmp.max_abs_error:.3g})")


def depthwise_row(layer, target, runs: int, fma_peak_gflops: float = 0.0) -> dict:
    import torch

    from tests.compiler.separable_cases import separable_block

    dw_only = type(layer)(**{**asdict(layer), "pointwise_out": None})
    block = separable_block(dw_only, act="relu6")
    x = torch.randn(1, layer.channels, layer.height, layer.width)
    with torch.no_grad():
        ref = block(x).numpy()
    ((w, b),) = _params(block)
    x_nhwc = np.ascontiguousarray(x.numpy().transpose(0, 2, 3, 1))

    ours_f = _kernel(block, x, target, {"sepconv_dw"})[0]
    # our operator's arguments: x (NHWC), w [KH, KW, C], bias [1, 1, 1, C]
    ours = Kernel(
        ours_f,
        target,
        [x_nhwc, np.ascontiguousarray(w[:, 0].transpose(1, 2, 0)), b.reshape(1, 1, 1, -1)],
    )
    _check("ours", ours().transpose(0, 3, 1, 2), ref)

    stock_f = _kernel(block, x, target, {"conv2d"}, sepconv_ops=False)[0]
    stock = Kernel(stock_f, target, [x.numpy(), w, b.reshape(1, -1, 1, 1)])
    _check("stock TVM", stock(), ref)

    with torch.no_grad():
        t_us = median_us(lambda: block(x), runs)
        time.sleep(0.5)
        o_us, s_us = ours.time_us(runs), stock.time_us(runs)
    moved = ours.bytes
    bandwidth = copy_bandwidth_gbs(moved)
    # every output costs K² FMAs, the zero-padded border taps included: the other roofline
    gflops = 2 * layer.kernel**2 * int(np.prod(ours.out_shape)) / (o_us * 1e-6) / 1e9
    return {
        "layer": layer.id.split("-pw")[0],
        "torch_us": t_us,
        "stock_tvm_us": s_us,
        "ours_us": o_us,
        "speedup_vs_torch": t_us / o_us,
        "speedup_vs_stock_tvm": s_us / o_us,
        "moved_mb": moved / 2**20,
        "ours_gbs": moved / (o_us * 1e-6) / 1e9,
        "copy_gbs": bandwidth,
        "fraction_of_copy_bw": moved / (o_us * 1e-6) / 1e9 / bandwidth,
        "gflops": gflops,
        "fraction_of_fma_peak": gflops / fma_peak_gflops if fma_peak_gflops else 0.0,
    }


def fused_row(layer, target, runs: int) -> dict:
    import torch

    from tests.compiler.separable_cases import separable_block

    block = separable_block(layer, act="relu6")
    x = torch.randn(1, layer.channels, layer.height, layer.width)
    with torch.no_grad():
        ref = block(x).numpy()
    (wd, bd), (wp, bp) = _params(block)
    x_nhwc = np.ascontiguousarray(x.numpy().transpose(0, 2, 3, 1))
    wd_hwc = np.ascontiguousarray(wd[:, 0].transpose(1, 2, 0))
    from sepconv.compiler.sepconv_ops import pack_pointwise
    from sepconv.schedules.nhwc_tile import panel_width
    from sepconv.schedules.target_params import cpu_params

    out_channels = wp.shape[0]
    wp_co = pack_pointwise(wp[:, :, 0, 0].T, panel_width(out_channels, cpu_params(target)))

    fused_f = _kernel(block, x, target, {"sepconv_dw", "sepconv_pw"})[0]
    fused = Kernel(fused_f, target, [x_nhwc, wd_hwc, bd, wp_co, bp.reshape(1, 1, 1, -1)])
    _check("fused", fused().transpose(0, 3, 1, 2), ref)

    dw_f = _kernel(block, x, target, {"sepconv_dw"}, fuse_dw_pw=False)
    pw_f = _kernel(block, x, target, {"sepconv_pw"}, fuse_dw_pw=False)
    dw = Kernel(dw_f[0], target, [x_nhwc, wd_hwc, bd.reshape(1, 1, 1, -1)])
    mid = dw()
    pw = Kernel(pw_f[0], target, [mid, wp_co, bp.reshape(1, 1, 1, -1)])
    _check("unfused pair", pw().transpose(0, 3, 1, 2), ref)

    with torch.no_grad():
        t_us = median_us(lambda: block(x), runs)
        time.sleep(0.5)
        f_us = fused.time_us(runs)
        pair_us = dw.time_us(runs) + pw.time_us(runs)
    return {
        "block": layer.id,
        "torch_us": t_us,
        "unfused_pair_us": pair_us,
        "fused_us": f_us,
        "fused_vs_pair": pair_us / f_us,
        "fused_vs_torch": t_us / f_us,
        "intermediate_mb": layer.channels
        * layer.multiplier
        * ((layer.height - 1) // layer.stride + 1)
        * ((layer.width - 1) // layer.stride + 1)
        * 4
        / 2**20,
    }


def print_table(rows: list[dict], title: str) -> None:
    print(f"\n{title}")
    keys = list(rows[0])
    print("  ".join(f"{k:>14s}" if i else f"{k:<24s}" for i, k in enumerate(keys)))
    for r in rows:
        cells = []
        for i, k in enumerate(keys):
            v = r[k]
            cells.append(
                f"{v:<24s}" if i == 0 else (f"{v:14.2f}" if isinstance(v, float) else f"{v!s:>14s}")
            )
        print("  ".join(cells))


def _bars(ax, rows: list[dict], name_key: str, series: list[tuple[str, str]], title: str) -> None:
    names = [r[name_key] for r in rows]
    xs = np.arange(len(names))
    width = 0.8 / len(series)
    for i, (key, label) in enumerate(series):
        offset = (i - (len(series) - 1) / 2) * width
        ax.bar(xs + offset, [r[key] for r in rows], width, label=label)
    ax.set_xticks(xs, names, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("µs (log)")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.legend()


def plot(dw_rows: list[dict], fused_rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(15, 5.5))
    _bars(
        a,
        dw_rows,
        "layer",
        [
            ("torch_us", "torch eager (oneDNN)"),
            ("stock_tvm_us", "stock TVM"),
            ("ours_us", "sepconv"),
        ],
        "MobileNetV2 depthwise layers (+bias+ReLU6), batch 1",
    )
    _bars(
        b,
        fused_rows,
        "block",
        [
            ("torch_us", "torch eager"),
            ("unfused_pair_us", "sepconv dw + pw"),
            ("fused_us", "sepconv fused"),
        ],
        "MobileNetV1 separable blocks (dw→ReLU6→pw), batch 1",
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--limit", type=int, default=0, help="only the first N layers of each model")
    ap.add_argument("--out", type=Path, default=RESULTS / "separable_layers.json")
    args = ap.parse_args(argv)
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    from sepconv.targets import resolve_target

    tspec = resolve_target("host", num_cores=args.threads)
    dram_bw = copy_bandwidth_gbs(512 * 2**20, runs=10)
    limits = measure_limits(args.threads)
    fma_peak = limits.fma_gflops
    print(
        f"target {tspec.key}, {args.threads} threads; 512 MB copy: {dram_bw:.1f} GB/s; "
        f"FMA peak: {fma_peak:.1f} GFLOP/s (loop {limits.fma_loop_gflops:.1f})"
    )
    v2 = list(
        {
            (lay.channels, lay.kernel, lay.stride, lay.height): lay
            for lay in layers("mobilenet_v2")
        }.values()
    )
    v1 = [layer for layer in layers("mobilenet_v1") if layer.pointwise_out]
    if args.limit:
        v2, v1 = v2[: args.limit], v1[: args.limit]
    dw_rows = [depthwise_row(layer, tspec.target, args.runs, fma_peak) for layer in v2]
    print_table(dw_rows, "MobileNetV2 depthwise layers (µs, median)")
    fused_rows = [fused_row(layer, tspec.target, args.runs) for layer in v1]
    print_table(fused_rows, "MobileNetV1 separable blocks (µs, median)")
    med = statistics.median(r["speedup_vs_torch"] for r in dw_rows)
    largest = sorted(dw_rows, key=lambda r: -r["ours_us"])[:3]
    summary = {
        "median_dw_speedup_vs_torch": med,
        "median_dw_speedup_vs_stock_tvm": statistics.median(
            r["speedup_vs_stock_tvm"] for r in dw_rows
        ),
        "largest_layers_fraction_of_copy_bw": [round(r["fraction_of_copy_bw"], 3) for r in largest],
        "median_fused_vs_pair": statistics.median(r["fused_vs_pair"] for r in fused_rows),
        "median_fused_vs_torch": statistics.median(r["fused_vs_torch"] for r in fused_rows),
    }
    print("\nsummary:", json.dumps(summary, indent=1))
    result = {
        "machine": {"cpu": platform.processor() or platform.machine(), "target_key": tspec.key},
        "threads": args.threads,
        "runs": args.runs,
        "dram_copy_bandwidth_gbs": dram_bw,
        "limits": limits.to_json(),
        "depthwise": dw_rows,
        "fused": fused_rows,
        "summary": summary,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    plot(dw_rows, fused_rows, args.out.with_suffix(".png"))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")
    return result


if __name__ == "__main__":
    main()
