"""Prebuilt CUDA artifacts for a GPU machine that has no TVM compiler: build here, run there.

Why: the GPU machines we are lent (``../shared`` device tool) have PyTorch, Triton and nvcc but no
TVM and no network, and what travels to them is capped at 64 MiB — the full TVM wheel alone is
100 MB. TVM's runtime is 5 MB, and a sepconv artifact needs nothing else (the CUDA kernels are
compiled into it, README "Cross-compiled, one library"). So the ``gpu`` test tier and the GPU
benchmark take their artifacts from a *kit* built on a machine with the full TVM and nvcc:

    python benchmarks/gpu_kit.py build --part core -o .gpukit/core     # here, ~4 min
    # on the GPU machine (the kit and the repository travel together):
    bash benchmarks/gpu_device_run.sh .gpukit/core                      # → $OUT

A kit holds, per entry (model, batch, precision, variant): the artifact compiled for
``--cuda-arch`` (sm_90 by default), and eager PyTorch's fp32 output on the CPU (so TF32 never
enters it) for each of the seeded inputs ``sepconv.compiler.validation.seeded_inputs`` gives for
seeds 0, 1, 2 (batch 32: 0), with a checksum of each input, so the GPU machine checks it
regenerated the same inputs. Weight files shared by several entries (CUDA graph on/off, batch
1/32) are stored once. ``runtime/`` holds TVM's runtime-only package (no ``libtvm_compiler.so``)
and the apache-tvm-ffi wheels for the GPU machine's Python. ``build`` refuses a part that would
push the carried tree over the limit.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CARRY_LIMIT = 64 * 2**20  # the device tool's cap on the tree that travels
INDEX = "index.json"
SEEDS = (0, 1, 2)  # seeded inputs with a reference each (batch 32: the first only)
# The GPU machine's python3 is 3.12 (device tool's KINDS.md); 3.11 is this machine's, for a dry
# run of the device script here.
DEVICE_PYTHONS = ("3.12", "3.11")
FFI_PIN = "apache-tvm-ffi==0.1.14.post1"
RUNTIME_LIBS = ("libtvm_runtime.so", "libtvm_runtime_cuda.so", "libtvm_runtime_extra.so")
# Parts of TVM's Python package a runtime-only import never reaches (C++ headers, sources).
RUNTIME_SKIP = ("3rdparty", "src", "include", "web", "libtvm_compiler.so")


@dataclass
class Entry:
    """One prebuilt artifact: what it is and what the GPU must reproduce."""

    model: str
    batch: int = 1
    precision: str = "fp32"
    variant: str = "cuda-graph"  # cuda-graph | no-cuda-graph | no-triton
    resolution: int | None = None  # None: the model's native resolution

    @property
    def id(self) -> str:
        res = f"-r{self.resolution}" if self.resolution else ""
        return f"{self.model}{res}-b{self.batch}-{self.precision}-{self.variant}"

    def compile_kwargs(self) -> dict:
        return {
            "batch": self.batch,
            "precision": self.precision,
            "cuda_graph": self.variant == "cuda-graph",
            "sepconv_ops": self.variant != "no-triton",
        }

    @property
    def model_ref(self) -> str:
        return f"{self.model}@{self.resolution}" if self.resolution else self.model


# What each part holds, most important first; each fits the carry limit beside the repository
# (fp32 weights: V1 17 MB, V2 14, V3-S 10, V3-L 22, B0 21, ShuffleNetV2 9; fp16 half that).
PARTS: dict[str, list[Entry]] = {
    # The first run on a GPU: every code path once (Triton dw→pw and SE kernels, CUDA graph on
    # and off, batch 32, fp16) on MobileNetV2, the model the benchmark leads with.
    "core": [
        Entry("mobilenet_v2"),
        Entry("mobilenet_v2", variant="no-cuda-graph"),
        Entry("mobilenet_v2", batch=32, variant="no-cuda-graph"),
        Entry("mobilenet_v2", precision="fp16"),
        Entry("mobilenet_v3_small"),
    ],
    "zoo-a": [
        Entry("mobilenet_v3_large"),
        Entry("mobilenet_v3_large", variant="no-cuda-graph"),
        Entry("mobilenet_v3_large", batch=32, variant="no-cuda-graph"),
        Entry("shufflenet_v2"),
    ],
    "zoo-b": [
        Entry("efficientnet_b0"),
        Entry("efficientnet_b0", variant="no-cuda-graph"),
        Entry("efficientnet_b0", batch=32, variant="no-cuda-graph"),
        Entry("efficientnet_b0", precision="fp16"),
    ],
    "zoo-c": [Entry("mobilenet_v1"), Entry("mobilenet_v3_large", precision="fp16")],
    "zoo-d": [
        Entry("mobilenet_v2", variant="no-triton"),
        Entry("efficientnet_b0", variant="no-triton"),
    ],
}


def input_checksum(x) -> str:
    import numpy as np

    return hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest()[:16]


def tree_bytes(root: Path = ROOT) -> int:
    """Bytes of the files git tracks (they always travel with a device run)."""
    out = subprocess.run(
        ["git", "ls-files", "-z"], cwd=root, capture_output=True, check=True
    ).stdout
    return sum((root / p).stat().st_size for p in out.decode().split("\0") if p and
               (root / p).is_file())  # fmt: skip


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


# -- build (a machine with the full TVM and nvcc) ---------------------------------------------


def stage_tvm_runtime(out: Path) -> Path:
    """TVM's Python package without its compiler library, C++ headers and sources (tar.xz)."""
    import tvm

    out.mkdir(parents=True, exist_ok=True)
    pkg = Path(tvm.__file__).parent

    def keep(info: tarfile.TarInfo):
        parts = Path(info.name).parts
        if any(p in RUNTIME_SKIP or p == "__pycache__" for p in parts):
            return None
        if parts[-1].endswith(".so") and parts[-1] not in RUNTIME_LIBS:
            return None
        return info

    tarball = out / "tvm_runtime.tar.xz"
    with tarfile.open(tarball, "w:xz") as tar:
        tar.add(pkg, arcname="tvm", filter=keep)
    return tarball


def stage_wheels(out: Path) -> Path:
    """apache-tvm-ffi (compiled) for the GPU machine's Python (and this one's), from PyPI."""
    wheels = out / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    for py in DEVICE_PYTHONS:
        tag = "cp" + py.replace(".", "")
        if any(wheels.glob(f"apache_tvm_ffi-*-{tag}-*.whl")):
            continue
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
             "--python-version", py, "--implementation", "cp",
             "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_24_x86_64",
             "--platform", "manylinux_2_17_x86_64", "-d", str(wheels), FFI_PIN],
            check=True,
        )  # fmt: skip
    return wheels


def build_entry(entry: Entry, kit: Path, cuda_arch: str) -> dict:
    import numpy as np
    import torch

    import sepconv
    from sepconv.compiler.artifact import sha256_file
    from sepconv.compiler.validation import seeded_inputs
    from sepconv.models import get_model

    t0 = time.perf_counter()
    art = sepconv.compile(
        entry.model_ref, target="cuda", cuda_arch=cuda_arch, out=kit / "arts" / entry.id,
        force=True, **entry.compile_kwargs(),
    )  # fmt: skip
    compile_s = time.perf_counter() - t0
    spec = get_model(entry.model_ref, batch=entry.batch)
    seeds = SEEDS if entry.batch == 1 else SEEDS[:1]
    refs, shas = {}, {}
    for seed in seeds:
        (x,) = seeded_inputs(art.manifest.inputs, seed)
        with torch.no_grad():
            refs[f"seed{seed}"] = spec.module.eval()(torch.from_numpy(x)).numpy()
        shas[str(seed)] = input_checksum(x)
    (kit / "refs").mkdir(exist_ok=True)
    np.savez(kit / "refs" / f"{entry.id}.npz", **refs)
    # One copy of each distinct weight file.
    weights = art.path / "weights.safetensors"
    digest = sha256_file(weights)
    pool = kit / "weights"
    pool.mkdir(exist_ok=True)
    if not (pool / f"{digest}.safetensors").exists():
        shutil.move(str(weights), pool / f"{digest}.safetensors")
    else:
        weights.unlink()
    return {
        **asdict(entry),
        "id": entry.id,
        "artifact": f"arts/{entry.id}.sepconv",
        "weights": f"weights/{digest}.safetensors",
        "reference": f"refs/{entry.id}.npz",
        "input_sha": shas,
        "build": {
            k: art.manifest.build.get(k)
            for k in ("triton_ops", "cuda_graph", "cuda_kernels", "precision")
        },  # fmt: skip
        "compile_s": round(compile_s, 1),
    }


def build_kit(part: str, out: Path, cuda_arch: str = "sm_90") -> dict:
    entries = PARTS[part]
    out.mkdir(parents=True, exist_ok=True)
    stage_tvm_runtime(out / "runtime")
    stage_wheels(out / "runtime")
    runtime_bytes = dir_bytes(out / "runtime")
    index = {"part": part, "cuda_arch": cuda_arch, "built": time.strftime("%Y-%m-%d %H:%M"),
             "entries": []}  # fmt: skip
    for entry in entries:
        print(f"  {entry.id} …", flush=True)
        index["entries"].append(build_entry(entry, out, cuda_arch))
        (out / INDEX).write_text(json.dumps(index, indent=1) + "\n")
    total = tree_bytes() + dir_bytes(out)
    index["bytes"] = {"kit": dir_bytes(out), "runtime": runtime_bytes, "with_tree": total}
    (out / INDEX).write_text(json.dumps(index, indent=1) + "\n")
    mib = total / 2**20
    print(f"wrote {out}: {len(entries)} artifacts, {dir_bytes(out) / 2**20:.1f} MiB "
          f"({mib:.1f} MiB with the tracked tree; limit {CARRY_LIMIT / 2**20:.0f})")  # fmt: skip
    if total > CARRY_LIMIT:
        raise SystemExit(
            f"kit part {part!r} makes the carried tree {mib:.1f} MiB, over the "
            f"{CARRY_LIMIT / 2**20:.0f} MiB limit: move entries to another part in PARTS"
        )
    return index


# -- use (either machine) ---------------------------------------------------------------------


class Kit:
    """A built kit: ``find(model, batch=, precision=, variant=)`` → its artifact and reference."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        index = self.root / INDEX
        if not index.is_file():
            raise FileNotFoundError(f"{index} not found: build the kit first (gpu_kit.py build)")
        self.index = json.loads(index.read_text())
        for e in self.index["entries"]:
            self._place_weights(e)

    @classmethod
    def from_env(cls) -> Kit | None:
        root = os.environ.get("SEPCONV_GPU_KIT")
        return cls(root) if root else None

    def _place_weights(self, e: dict) -> None:
        dst = self.root / e["artifact"] / "weights.safetensors"
        if not dst.exists():
            os.link(self.root / e["weights"], dst)

    @property
    def entries(self) -> list[dict]:
        return self.index["entries"]

    def find(self, model: str, batch: int = 1, precision: str = "fp32",
             variant: str | None = "cuda-graph") -> dict | None:  # fmt: skip
        """The entry of ``model`` at its native resolution (``variant=None``: any variant)."""
        for e in self.entries:
            if (e["model"], e["batch"], e["precision"]) == (model, batch, precision) and (
                variant is None or e["variant"] == variant
            ) and not e.get("resolution"):  # fmt: skip
                return e
        return None

    def artifact(self, e: dict) -> Path:
        return self.root / e["artifact"]

    def cases(self, e: dict, inputs):
        """``[(seed, input, reference output)]`` for an entry whose artifact takes ``inputs``
        (``compiled.inputs``): the seeded inputs the kit's references were
        computed on. Raises if this machine's generator gives a different input (the comparison
        would mean nothing)."""
        import numpy as np

        from sepconv.compiler.validation import seeded_inputs

        refs = np.load(self.root / e["reference"])
        out = []
        for seed, sha in sorted(e["input_sha"].items()):
            (x,) = seeded_inputs(inputs, int(seed))
            if input_checksum(x) != sha:
                raise RuntimeError(
                    f"{e['id']}: seeded input {seed} differs from the one the kit's reference was "
                    "computed on (another torch random generator); rebuild the kit"
                )
            out.append((int(seed), x, refs[f"seed{seed}"]))
        return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="compile a part of the kit here (full TVM + nvcc)")
    b.add_argument("--part", choices=sorted(PARTS), default="core")
    b.add_argument("--cuda-arch", default="sm_90")
    b.add_argument("-o", "--out", type=Path, required=True)
    sub.add_parser("parts", help="list the parts and their entries")
    args = ap.parse_args(argv)
    if args.cmd == "parts":
        for name, entries in PARTS.items():
            print(f"{name}: " + ", ".join(e.id for e in entries))
        return
    build_kit(args.part, args.out, args.cuda_arch)


if __name__ == "__main__":
    main()
