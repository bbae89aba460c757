"""GPU benchmark (issue 4): our Triton kernels and CUDA builds against PyTorch, validate → time.

Needs an NVIDIA GPU, and a CUDA build of PyTorch for the peers (the project pins the CPU build;
on the GPU machine: ``pip install torch==2.13.0 --index-url
https://download.pytorch.org/whl/cu128`` or whichever CUDA wheel matches the driver).

1. **Per layer** — every distinct depthwise layer of MobileNetV2, MobileNetV3-Large and
   EfficientNet-B0 at 224, for each batch and dtype:

   * depthwise (conv + bias + activation): ours (autotuned Triton, and the config the compiler
     embeds without timing) vs torch eager (cuDNN conv with bias, then the activation);
   * fused block (dw → act → pw, where a 1×1 conv follows): our fused kernel vs torch eager's
     separate kernels (cuDNN dw, activation, cuDNN pw) — the target is ≥ 1.7× — and vs our
     own dw kernel followed by torch's pw (what fusion alone saves);

   with achieved GB/s (the kernel's DRAM bytes, from its module's ``bytes_moved``, over its
   time) as a fraction of the copy bandwidth measured in the same run.
2. **Whole models** — MobileNetV2, MobileNetV3-Large, EfficientNet-B0 at 224, batch 1 and 32,
   fp32 and fp16: ours (sepconv CUDA artifact, with and without CUDA graphs, and without the
   Triton kernels) vs torch eager, ``torch.compile`` and ``torch.compile(mode=
   "reduce-overhead")`` (CUDA graphs). Target: batch 1 faster than ``torch.compile``.

Every row is checked against eager PyTorch before it is timed (fp32: max abs error ≤
1e-4·max|ref| + 1e-5; fp16: ≤ 3e-2·max|ref| + 1e-3); a failed check is reported, not timed.
TF32 is off everywhere (``allow_tf32 = False``) so fp32 means fp32. Times are medians of CUDA
event timings (``triton.testing.do_bench``, L2 flushed between runs for layers).

    python benchmarks/gpu_layers.py                       # everything, ~15–30 min on an H100
    python benchmarks/gpu_layers.py --skip-models --batches 1
    → prints tables, writes benchmarks/results/gpu_layers.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
MODELS = ("mobilenet_v2", "mobilenet_v3_large", "efficientnet_b0")
RULES = {"fp32": (1e-4, 1e-5), "fp16": (3e-2, 1e-3)}
NOMINAL_HBM = {"H100": 3.35e12, "H200": 4.8e12, "A100": 2.0e12, "L4": 0.3e12}


def _torch():
    import torch

    if not torch.cuda.is_available():
        sys.exit(
            "this benchmark needs an NVIDIA GPU and a CUDA build of torch (torch.cuda is not "
            "available); see the module docstring"
        )
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    return torch


def bench_us(fn, rep_ms: int = 100) -> float:
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=25, rep=rep_ms, return_mode="median")) * 1e3


def copy_bandwidth(torch, nbytes: int = 1 << 30) -> float:
    """Bytes/s of a device-to-device copy reading and writing ``nbytes`` in all."""
    src = torch.empty(nbytes // 2, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    us = bench_us(lambda: dst.copy_(src), rep_ms=200)
    return nbytes / (us * 1e-6)


def check(got, ref, dtype: str) -> tuple[bool, float]:
    a, b = RULES[dtype]
    err = float((got.float() - ref.float()).abs().max())
    scale = float(ref.float().abs().max())
    return err <= a * scale + b, err / max(scale, 1e-30)


# -- layers -----------------------------------------------------------------------------------


def depthwise_layers(models=MODELS) -> list[dict]:
    """Distinct depthwise layers of the models at 224 (shape, activation and following 1×1)."""
    import torch
    from torch import nn

    from sepconv.models import get_model

    acts = {nn.ReLU: "relu", nn.ReLU6: "relu6", nn.Hardswish: "hswish", nn.SiLU: "silu"}
    seen: dict[tuple, dict] = {}
    for name in models:
        spec = get_model(name)
        model = spec.module.eval()
        order: list[tuple[nn.Module, tuple]] = []

        def hook(mod, inputs, _out, order=order):
            order.append((mod, tuple(inputs[0].shape)))

        hooks = [
            m.register_forward_hook(hook)
            for m in model.modules()
            if isinstance(m, (nn.Conv2d, *acts))
        ]
        with torch.no_grad():
            model(spec.example_input(0))
        for h in hooks:
            h.remove()
        for i, (m, shape) in enumerate(order):
            if not (isinstance(m, nn.Conv2d) and m.groups == m.in_channels == m.out_channels > 1):
                continue
            act = "none"
            rest = order[i + 1 :]
            if rest and type(rest[0][0]) in acts:
                act, rest = acts[type(rest[0][0])], rest[1:]
            pw = None
            oh = (shape[2] + 2 * m.padding[0] - m.kernel_size[0]) // m.stride[0] + 1
            if rest and isinstance(rest[0][0], nn.Conv2d) and rest[0][0].kernel_size == (1, 1):
                nxt, nshape = rest[0]
                if nxt.groups == 1 and nshape[1] == m.out_channels and nshape[2] == oh:
                    pw = nxt.out_channels  # not SE's squeeze conv, which sees a 1×1 map
            key = (m.in_channels, m.kernel_size[0], m.stride[0], shape[2], shape[3], act, pw)
            seen.setdefault(key, {
                "model": name, "c": key[0], "k": key[1], "s": key[2], "h": key[3], "w": key[4],
                "act": act, "pw": pw,
                "id": f"c{key[0]}-k{key[1]}s{key[2]}-{key[3]}x{key[4]}"
                + (f"-pw{pw}" if pw else ""),
            })  # fmt: skip
    return list(seen.values())


def layer_rows(torch, layer: dict, batch: int, dtype: str, bandwidth: float) -> list[dict]:
    import torch.nn.functional as F

    from sepconv.schedules import triton_depthwise as D
    from sepconv.schedules import triton_fused_dw_pw as FD
    from sepconv.schedules.triton_common import torch_activation

    tdt = torch.float16 if dtype == "fp16" else torch.float32
    item = 2 if dtype == "fp16" else 4
    c, k, s, h, w, act, co = (layer[x] for x in ("c", "k", "s", "h", "w", "act", "pw"))
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(batch, c, h, w, device="cuda", generator=gen, dtype=tdt)
    wd = torch.randn(c, 1, k, k, device="cuda", generator=gen, dtype=tdt) * 0.3
    bd = torch.randn(c, device="cuda", generator=gen, dtype=tdt)
    pad = k // 2
    oh, ow = D.out_size(h, k, s, pad, pad, 1), D.out_size(w, k, s, pad, pad, 1)
    rows = []

    def eager_dw():
        return torch_activation(F.conv2d(x, wd, bd, stride=s, padding=pad, groups=c), act)

    ref = eager_dw()
    base = {"layer": layer["id"], "model": layer["model"], "batch": batch, "dtype": dtype}
    nbytes = D.bytes_moved(batch, c, h, w, oh, ow, k, k, itemsize=item)
    cfg = D.pick_config(c, oh, ow, channels_last=False)
    variants = {
        "ours (autotuned)": lambda: D.depthwise_conv2d(x, wd, bd, s, pad, act=act),
        "ours (build config)": lambda: D.depthwise_conv2d(x, wd, bd, s, pad, act=act, config=cfg),
        "torch eager": eager_dw,
    }
    row = {**base, "kind": "depthwise", "bytes": nbytes}
    for name, fn in variants.items():
        ok, rel = check(fn(), ref, dtype)
        us = bench_us(fn) if ok else None
        row[name] = {"us": us, "ok": ok, "rel_err": rel,
                     "GB/s": nbytes / (us * 1e-6) / 1e9 if us else None,
                     "of_copy_bw": nbytes / (us * 1e-6) / bandwidth if us else None}  # fmt: skip
    rows.append(row)
    if co is None:
        return rows
    wp = torch.randn(co, c, 1, 1, device="cuda", generator=gen, dtype=tdt) * (c**-0.5)
    bp = torch.randn(co, device="cuda", generator=gen, dtype=tdt)

    def eager_block():
        return F.conv2d(eager_dw(), wp, bp)

    ref = eager_block()
    fcfg = FD.pick_config(c, co, oh, ow, channels_last=False)
    fused_bytes = FD.bytes_moved(batch, c, co, h, w, oh, ow, k, k, itemsize=item)
    variants = {
        "ours fused (autotuned)": lambda: FD.fused_dw_pw(x, wd, bd, wp, bp, s, pad, act_dw=act),
        "ours fused (build config)": lambda: FD.fused_dw_pw(
            x, wd, bd, wp, bp, s, pad, act_dw=act, config=fcfg
        ),
        "ours dw + torch pw": lambda: F.conv2d(D.depthwise_conv2d(x, wd, bd, s, pad, act=act),
                                               wp, bp),
        "torch eager (separate)": eager_block,
    }  # fmt: skip
    separate = FD.bytes_moved_separate(batch, c, co, h, w, oh, ow, k, k, item)
    row = {**base, "kind": "fused", "co": co, "bytes": fused_bytes, "bytes_separate": separate}
    for name, fn in variants.items():
        ok, rel = check(fn(), ref, dtype)
        us = bench_us(fn) if ok else None
        row[name] = {"us": us, "ok": ok, "rel_err": rel,
                     "GB/s": fused_bytes / (us * 1e-6) / 1e9 if us else None}  # fmt: skip
    t_f, t_e = row["ours fused (autotuned)"]["us"], row["torch eager (separate)"]["us"]
    row["speedup_vs_eager"] = t_e / t_f if t_f and t_e else None
    rows.append(row)
    return rows


# -- whole models -----------------------------------------------------------------------------


VARIANTS = (  # label, kit variant, compile options
    ("sepconv (CUDA graph)", "cuda-graph", {"cuda_graph": True}),
    ("sepconv (no CUDA graph)", "no-cuda-graph", {"cuda_graph": False}),
    ("sepconv without Triton (dlight only)", "no-triton", {"sepconv_ops": False}),
)


def _ours(name: str, batch: int, dtype: str, workdir: Path, kit):
    """(label, artifact path or None, compile seconds or None) per variant: compiled here, or
    the kit's prebuilt artifacts (a GPU machine without TVM's compiler)."""
    import sepconv

    for i, (label, variant, options) in enumerate(VARIANTS):
        if kit is not None:
            entry = kit.find(name, batch=batch, precision=dtype, variant=variant)
            yield label, (kit.artifact(entry) if entry else None), None
            continue
        if variant == "no-triton":
            options = {**options, "cuda_graph": batch == 1}
        t0 = time.perf_counter()
        out = workdir / f"{name}-b{batch}-{dtype}-{i}.sepconv"
        art = sepconv.compile(name, target="cuda", batch=batch, precision=dtype, force=True,
                              out=out, **options)  # fmt: skip
        yield label, art.path, time.perf_counter() - t0


def _reference(torch, name: str, batch: int, dtype: str, kit):
    """The seed-0 input and eager PyTorch fp32's output on the CPU (from the kit when given)."""
    from sepconv.compiler.validation import seeded_inputs
    from sepconv.models import get_model

    if kit is not None:
        e = kit.find(name, batch=batch, precision=dtype, variant=None)
        if e is None:
            return None, None
        from sepconv.compiler.artifact import read_manifest

        _, manifest = read_manifest(kit.artifact(e))  # its input signature; loaded once, later
        _, x, ref = kit.cases(e, manifest.inputs)[0]
        return torch.from_numpy(x), torch.from_numpy(ref)
    spec = get_model(name, batch=batch)
    x_cpu = torch.from_numpy(seeded_inputs([_Spec(spec.input_shape)], 0)[0])
    with torch.no_grad():
        return x_cpu, spec.module.eval()(x_cpu)


def model_rows(torch, name: str, batch: int, dtype: str, workdir: Path, kit=None) -> dict:
    import numpy as np

    import sepconv
    from sepconv.models import get_model

    row = {"model": name, "batch": batch, "dtype": dtype}
    x_cpu, ref = _reference(torch, name, batch, dtype, kit)
    if x_cpu is None:
        row["error"] = "not in the kit"
        return row

    def record(label, out, fn, against=None):
        against = ref if against is None else against
        ok, rel = check(torch.as_tensor(np.asarray(out)).float(), against, dtype)
        row[label] = {"ok": ok, "rel_err": rel, "ms": fn() if ok else None}
        print(f"    {label:<34} {'ok ' if ok else 'BAD'} {row[label]['ms'] or 0:8.3f} ms",
              flush=True)  # fmt: skip

    # ours
    for label, path, compile_s in _ours(name, batch, dtype, workdir, kit):
        if path is None:
            row[label] = {"ok": None, "error": "not in the kit"}
            continue
        try:
            t0 = time.perf_counter()
            compiled = sepconv.load(path)
            load_s = time.perf_counter() - t0
            out = compiled(x_cpu.numpy())
            record(label, out, lambda c=compiled: c.time(x_cpu.numpy(), runs=100)["median_ms"])
        except Exception as exc:  # noqa: BLE001 - report the failure, go on with the rest
            row[label] = {"ok": False, "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
            continue
        row[label]["load_s"] = load_s
        row[label]["compile_s"] = compile_s
        row[label]["triton_ops"] = compiled.manifest.build.get("triton_ops")

    # torch peers on the GPU, checked against eager fp32 on the CPU of the same module (with a
    # kit, this machine's torch built it: its seeded weights may differ from the kit's torch)
    tdt = torch.float16 if dtype == "fp16" else torch.float32
    model = get_model(name, batch=batch).module.eval()
    with torch.no_grad():
        peer_ref = model(x_cpu)
    row["peer_weights_match_kit"] = bool(torch.allclose(peer_ref, ref, rtol=1e-4, atol=1e-5))
    model = model.to("cuda", tdt)
    x = x_cpu.to("cuda", tdt)
    peers = {"torch eager": model}
    try:
        peers["torch.compile"] = torch.compile(model)
        peers["torch.compile (reduce-overhead: CUDA graphs)"] = torch.compile(
            model, mode="reduce-overhead"
        )
    except Exception as exc:  # noqa: BLE001 - report and go on with eager
        row["torch.compile"] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    for label, fn in peers.items():
        try:
            with torch.no_grad():
                for _ in range(3):  # compile / capture
                    out = fn(x)
                torch.cuda.synchronize()

                def run(f=fn):
                    with torch.no_grad():
                        f(x)

                record(label, out.float().cpu(), lambda r=run: bench_us(r, rep_ms=300) / 1e3,
                       against=peer_ref)  # fmt: skip
        except Exception as exc:  # noqa: BLE001
            row[label] = {"ok": False, "error": f"{type(exc).__name__}: {str(exc)[:200]}"}
    ours = row.get("sepconv (CUDA graph)", {}).get("ms") or row.get(
        "sepconv (no CUDA graph)", {}
    ).get("ms")
    peer = row.get("torch.compile", {}).get("ms")
    row["speedup_vs_torch_compile"] = peer / ours if ours and peer else None
    return row


class _Spec:
    def __init__(self, shape):
        self.shape, self.dtype = tuple(shape), "float32"


# -- output ---------------------------------------------------------------------------------


def print_layers(rows: list[dict]) -> None:
    dw = [r for r in rows if r["kind"] == "depthwise"]
    fused = [r for r in rows if r["kind"] == "fused"]
    print(f"\n{'depthwise layer':<28} {'b':>3} {'dt':>4} {'ours µs':>8} {'GB/s':>7} {'%bw':>5} "
          f"{'build µs':>8} {'eager µs':>8} {'×':>5}")  # fmt: skip
    for r in dw:
        o, b, e = r["ours (autotuned)"], r["ours (build config)"], r["torch eager"]
        ratio = e["us"] / o["us"] if o["us"] and e["us"] else float("nan")
        print(f"{r['layer']:<28} {r['batch']:>3} {r['dtype']:>4} {o['us'] or 0:8.1f} "
              f"{o['GB/s'] or 0:7.0f} {100 * (o['of_copy_bw'] or 0):5.0f} {b['us'] or 0:8.1f} "
              f"{e['us'] or 0:8.1f} {ratio:5.2f}")  # fmt: skip
    print(f"\n{'fused dw→pw block':<30} {'b':>3} {'dt':>4} {'fused µs':>8} {'GB/s':>7} "
          f"{'dw+pw µs':>8} {'eager µs':>8} {'× eager':>8}")  # fmt: skip
    for r in fused:
        f, sep, e = (
            r["ours fused (autotuned)"],
            r["ours dw + torch pw"],
            r["torch eager (separate)"],
        )
        print(f"{r['layer']:<30} {r['batch']:>3} {r['dtype']:>4} {f['us'] or 0:8.1f} "
              f"{f['GB/s'] or 0:7.0f} {sep['us'] or 0:8.1f} {e['us'] or 0:8.1f} "
              f"{r['speedup_vs_eager'] or 0:8.2f}")  # fmt: skip


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--dtypes", default="fp32,fp16")
    ap.add_argument("--skip-layers", action="store_true")
    ap.add_argument("--skip-models", action="store_true")
    ap.add_argument("--limit", type=int, default=0, help="only the first N distinct layers")
    ap.add_argument("--out", type=Path, default=RESULTS / "gpu_layers.json")
    ap.add_argument(
        "--kit",
        type=Path,
        default=None,
        help="take our artifacts from this kit (benchmarks/gpu_kit.py) instead of "
        "compiling: a GPU machine with the TVM runtime only",
    )
    ap.add_argument(
        "--deadline-s",
        type=float,
        default=None,
        help="stop starting new rows after this many seconds (results so far kept)",
    )
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    torch = _torch()
    models = [m for m in args.models.split(",") if m]
    batches = [int(b) for b in args.batches.split(",")]
    dtypes = [d for d in args.dtypes.split(",") if d]
    gpu = torch.cuda.get_device_name(0)
    bandwidth = copy_bandwidth(torch)
    nominal = next((v for k, v in NOMINAL_HBM.items() if k in gpu), None)
    print(f"{gpu}: copy bandwidth {bandwidth / 1e9:.0f} GB/s"
          + (f" (nominal {nominal / 1e9:.0f} GB/s)" if nominal else ""))  # fmt: skip
    result = {
        "gpu": gpu,
        "copy_bandwidth_GBps": bandwidth / 1e9,
        "nominal_bandwidth_GBps": nominal / 1e9 if nominal else None,
        "torch": torch.__version__,
        "triton": _version("triton"),
        "host": platform.node(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "kit": str(args.kit) if args.kit else None,
        "models": [],
        "layers": [],
        "skipped": [],
    }
    t_start = time.monotonic()
    kit = None
    if args.kit is not None:
        from benchmarks.gpu_kit import Kit

        kit = Kit(args.kit)

    def past_deadline() -> bool:
        return args.deadline_s is not None and time.monotonic() - t_start > args.deadline_s

    def save() -> None:  # after every row: a run cut short keeps what it measured
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")

    # Whole models first: with prebuilt artifacts they take seconds, layers take minutes.
    if not args.skip_models:
        with tempfile.TemporaryDirectory(prefix="sepconv-gpu-bench-") as tmp:
            for name in models:
                for batch in batches:
                    for dtype in dtypes:
                        if past_deadline():
                            result["skipped"].append(f"{name} b{batch} {dtype}: deadline")
                            continue
                        print(f"\n{name} batch {batch} {dtype}", flush=True)
                        result["models"].append(
                            model_rows(torch, name, batch, dtype, Path(tmp), kit)
                        )
                        save()
    if not args.skip_layers:
        layers = depthwise_layers(models)
        if args.limit:
            layers = layers[: args.limit]
        for batch in batches:
            for dtype in dtypes:
                for layer in layers:
                    if past_deadline():
                        result["skipped"].append(f"{layer['id']} b{batch} {dtype}: deadline")
                        continue
                    result["layers"] += layer_rows(torch, layer, batch, dtype, bandwidth)
                    save()
        print_layers(result["layers"])
    save()
    print(f"\nwrote {args.out}")
    return result


def _version(package: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(package)
    except Exception:  # noqa: BLE001
        return None


if __name__ == "__main__":
    main()
