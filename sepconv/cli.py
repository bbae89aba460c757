"""The ``sepconv`` command: models | compile | validate | run.

Every failure prints one line (``error: …``) and exits non-zero; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from sepconv.errors import SepconvError

EXIT_ERROR = 2
EXIT_VALIDATION_FAILED = 1


class StageProgress:
    """Prints each compile stage as it starts and how long the previous one took."""

    def __init__(self, stream=sys.stderr):
        self.stream = stream
        self.current: str | None = None
        self.t0 = 0.0
        self.start = time.perf_counter()

    def __call__(self, stage: str) -> None:
        self._close()
        self.current, self.t0 = stage, time.perf_counter()
        print(f"  {stage} …", end="", file=self.stream, flush=True)

    def _close(self) -> None:
        if self.current is not None:
            print(f" {time.perf_counter() - self.t0:.1f}s", file=self.stream, flush=True)
            self.current = None

    def done(self) -> float:
        self._close()
        return time.perf_counter() - self.start


def cmd_models(args) -> int:
    from sepconv.models import list_models

    infos = list_models()
    if args.json:
        print(json.dumps([_info_dict(i) for i in infos], indent=2))
        return 0
    print(f"{'name':<22} {'input':>9} {'params':>10} {'MACs':>10}  description")
    for i in infos:
        d = _info_dict(i)
        print(
            f"{d['name']:<22} {d['resolution']:>5}×{d['resolution']:<3} {d['params'] / 1e6:>9.2f}M "
            f"{d['macs'] / 1e6:>9.1f}M  {d.get('description', '')}"
        )
    print(
        "\nknobs: family[:width][@resolution], e.g. mobilenet_v1:0.5@160; "
        "also torchvision:NAME and timm:NAME where those packages import"
    )
    return 0


def _info_dict(info) -> dict:
    from dataclasses import asdict, is_dataclass

    return asdict(info) if is_dataclass(info) else dict(info)


def cmd_compile(args) -> int:
    import sepconv

    progress = StageProgress()
    print(f"compiling {args.model} for {args.target}", file=sys.stderr)
    art = sepconv.compile(
        args.model,
        target=args.target,
        out=args.output,
        batch=args.batch,
        weights=args.weights,
        seed=args.seed,
        force=args.force,
        validate=args.validate,
        mcpu=args.mcpu,
        cuda_arch=args.cuda_arch,
        sepconv_ops=not args.no_sepconv_ops,
        on_stage=progress,
    )
    total = progress.done()
    b = art.manifest.build
    print(f"wrote {art.path} in {total:.1f}s")
    print(
        f"  target {art.manifest.target['triple']} ({art.manifest.target.get('key', '')}); "
        f"{b['tasks_tuned']} of {b['tasks_total']} tasks tuned"
    )
    ops = b.get("sepconv_ops")
    if ops:
        print(
            f"  sepconv ops: {ops['fused_dw_pw']} fused dw→pw, {ops['depthwise']} depthwise, "
            f"{ops['pointwise']} pointwise, {ops['dense']} other convs"
        )
    if art.manifest.validation is not None:
        v = art.manifest.validation
        print(f"  validation: {'PASS' if v['passed'] else 'FAIL'}")
        return 0 if v["passed"] else EXIT_VALIDATION_FAILED
    return 0


def cmd_validate(args) -> int:
    import sepconv

    report = sepconv.validate(
        args.artifact, reference=args.reference, seed=args.seed, num_inputs=args.inputs
    )
    print(report.summary())
    return 0 if report.passed else EXIT_VALIDATION_FAILED


def cmd_run(args) -> int:
    import numpy as np

    import sepconv
    from sepconv.compiler.validation import seeded_inputs

    model = sepconv.load(args.artifact)
    if args.input:
        path = Path(args.input)
        if not path.is_file():
            raise SepconvError(f"input file {path} does not exist")
        try:
            x = np.load(path, allow_pickle=False)
        except ValueError as exc:
            raise SepconvError(f"{path} is not a .npy array: {exc}") from exc
        if x.ndim == len(model.inputs[0].shape) - 1:
            x = x[None]  # a single image without the batch axis
        arrays = [x]
        source = str(path)
    else:
        arrays = seeded_inputs(model.inputs, args.seed)
        source = f"random (seed {args.seed})"
    out = model(*arrays)
    outs = out if isinstance(out, tuple) else (out,)
    print(f"{model!r}\ninput: {source}")
    for spec, o in zip(model.outputs, outs):
        print(f"output {spec.name}: shape {tuple(o.shape)}, dtype {o.dtype}")
    first = outs[0]
    if first.ndim == 2 and first.shape[1] > 1:
        for b, row in enumerate(first[: args.show_batch]):
            top = np.argsort(row)[::-1][:5]
            probs = np.exp(row - row.max())
            probs /= probs.sum()
            ranked = ", ".join(f"{int(c)} ({probs[c]:.3f})" for c in top)
            print(f"top-5 [{b}]: {ranked}")
    t = model.time(*arrays, warmup=args.warmup, runs=args.runs)
    threads = os.environ.get("TVM_NUM_THREADS", "all cores")
    print(
        f"latency: median {t['median_ms']:.3f} ms, p10 {t['p10_ms']:.3f} ms, "
        f"p90 {t['p90_ms']:.3f} ms over {t['runs']} runs (threads: {threads})"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sepconv", description="Compile depthwise-separable CNNs with TVM."
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    m = sub.add_parser("models", help="list the model zoo (name, input size, params, MACs)")
    m.add_argument("--json", action="store_true", help="print JSON instead of a table")
    m.set_defaults(func=cmd_models)

    c = sub.add_parser("compile", help="compile a model into an artifact directory")
    c.add_argument("model", help="zoo name with optional knobs, e.g. mobilenet_v1:0.5@160")
    c.add_argument(
        "--target",
        "-t",
        default="host",
        help="x86_64-linux-gnu | aarch64-linux-gnu | cuda | host (default: host)",
    )
    c.add_argument(
        "--output", "-o", default=None, help="artifact path (default: build/<model>.sepconv)"
    )
    c.add_argument("--batch", "-b", type=int, default=1, help="batch size (default 1)")
    c.add_argument("--weights", help="local weights file (.safetensors or a torch state_dict)")
    c.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    c.add_argument("--force", action="store_true", help="replace an existing artifact")
    c.add_argument(
        "--validate",
        action="store_true",
        help="validate against eager PyTorch after compiling (host targets)",
    )
    c.add_argument("--mcpu", help="LLVM CPU name to compile for instead of the detected one")
    c.add_argument("--cuda-arch", help="CUDA arch for --target cuda, e.g. sm_90")
    c.add_argument(
        "--no-sepconv-ops",
        action="store_true",
        help="keep TVM's conv2d instead of our depthwise / fused dw→pw operators "
        "(measure their gain, bisect a suspected miscompile)",
    )
    c.set_defaults(func=cmd_compile)

    v = sub.add_parser("validate", help="compare a compiled artifact with eager PyTorch")
    v.add_argument("artifact")
    v.add_argument("--reference", help="zoo name to compare with (default: the one compiled)")
    v.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    v.add_argument("--inputs", type=int, default=3, help="how many seeded inputs (default 3)")
    v.set_defaults(func=cmd_validate)

    r = sub.add_parser("run", help="run an artifact once, print top-5 and latency")
    r.add_argument("artifact")
    r.add_argument("--input", "-i", help=".npy file with the input (default: seeded random)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--runs", type=int, default=50, help="timed runs (default 50)")
    r.add_argument("--warmup", type=int, default=10, help="warm-up runs (default 10)")
    r.add_argument("--threads", type=int, help="CPU threads (sets TVM_NUM_THREADS)")
    r.add_argument("--show-batch", type=int, default=1, help="rows of top-5 to print")
    r.set_defaults(func=cmd_run)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if getattr(args, "threads", None):
        os.environ["TVM_NUM_THREADS"] = str(args.threads)
    try:
        return args.func(args)
    except SepconvError as exc:
        if args.debug:
            raise
        print(f"\nerror: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug of ours or TVM's: still one line, traceback on --debug
        if args.debug:
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        print(
            f"\nerror: internal error ({type(exc).__name__}: {first[:300]}); rerun with --debug "
            "for the traceback and report it",
            file=sys.stderr,
        )
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
