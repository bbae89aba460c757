"""The on-disk artifact: ``<name>.sepconv/`` with a manifest, the library and the weights.

Contract (DESIGN.md): the manifest carries the format version, model, I/O signature, target,
versions, a SHA-256 of every other file, tuning coverage and the last validation result. Writes are
atomic: everything goes into a hidden temporary directory that is renamed into place, so a failed
compile never leaves half an artifact and an existing one is replaced in one step.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from sepconv.checksum import sha256_file
from sepconv.errors import ArtifactError

FORMAT_NAME = "sepconv-artifact"
FORMAT_VERSION = 1
SUFFIX = ".sepconv"
MANIFEST = "manifest.json"
LIBRARY = "model.so"
WEIGHTS = "weights.safetensors"

# ELF e_machine values of the architectures our triples name.
_ELF_MACHINE = {"x86_64": 62, "aarch64": 183}


@dataclass
class TensorInfo:
    """One input or output of the compiled model: its name, shape and dtype."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    def to_json(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_json(cls, d: dict) -> TensorInfo:
        return cls(d["name"], tuple(d["shape"]), d["dtype"])


@dataclass
class Manifest:
    model: dict  # name, source, seed, weights file (+ sha256) when given
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    target: dict  # triple, tvm_target, key, family
    weight_names: list[str]
    build: dict
    versions: dict
    files: dict[str, str] = field(default_factory=dict)  # file name → sha256
    validation: dict | None = None
    created: str = ""
    format: str = FORMAT_NAME
    format_version: int = FORMAT_VERSION

    def to_json(self) -> dict:
        d = asdict(self)
        d["inputs"] = [t.to_json() for t in self.inputs]
        d["outputs"] = [t.to_json() for t in self.outputs]
        return d

    @classmethod
    def from_json(cls, d: dict) -> Manifest:
        d = dict(d)
        d["inputs"] = [TensorInfo.from_json(t) for t in d["inputs"]]
        d["outputs"] = [TensorInfo.from_json(t) for t in d["outputs"]]
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})

    @property
    def arch(self) -> str:
        """CPU architecture the library's host code is for ("x86_64", "aarch64")."""
        return self.target.get("host_arch") or self.target["triple"].split("-")[0]


def artifact_path(path: str | os.PathLike) -> Path:
    """``build/mbv2`` and ``build/mbv2.sepconv`` name the same artifact."""
    p = Path(path)
    return p if p.name.endswith(SUFFIX) else p.with_name(p.name + SUFFIX)


def versions() -> dict:
    import torch
    import tvm

    import sepconv

    return {
        "sepconv": sepconv.__version__,
        "tvm": tvm.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_json_atomic(path: Path, data: dict) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; a manifest is not a secret
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=False)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_artifact(
    out: str | os.PathLike,
    manifest: Manifest,
    export_library,  # callable(path) that writes the compiled library
    weights: dict[str, np.ndarray],
    *,
    force: bool = False,
) -> Path:
    from safetensors.numpy import save_file

    out = artifact_path(out)
    if out.exists() and not force:
        raise ArtifactError(
            f"{out} already exists; choose another output path or pass --force (force=True) to "
            "replace it"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        export_library(str(tmp / LIBRARY))
        save_file({k: np.ascontiguousarray(v) for k, v in weights.items()}, str(tmp / WEIGHTS))
        os.chmod(tmp / WEIGHTS, 0o666 & ~_umask())
        manifest.weight_names = list(weights)
        manifest.files = {name: sha256_file(tmp / name) for name in (LIBRARY, WEIGHTS)}
        manifest.created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        manifest.versions = manifest.versions or versions()
        _write_json_atomic(tmp / MANIFEST, manifest.to_json())
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.rename(out, old)
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _elf_machine(path: Path) -> int | None:
    with open(path, "rb") as f:
        head = f.read(20)
    if len(head) < 20 or head[:4] != b"\x7fELF":
        return None
    order = "little" if head[5] == 1 else "big"
    return int.from_bytes(head[18:20], order)


def read_manifest(path: str | os.PathLike, *, verify: bool = True) -> tuple[Path, Manifest]:
    """Read and check an artifact. Raises ArtifactError with what is wrong and what to do."""
    given = Path(path)
    root = given if given.is_dir() else artifact_path(given)
    if not root.is_dir():
        raise ArtifactError(f"no artifact at {given}: compile one with `sepconv compile`")
    mpath = root / MANIFEST
    if not mpath.is_file():
        raise ArtifactError(
            f"{root} is not a sepconv artifact (no {MANIFEST}); compile one with `sepconv compile`"
        )
    try:
        raw = json.loads(mpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{mpath} is corrupted ({exc}); recompile the model") from exc
    if not isinstance(raw, dict) or raw.get("format") != FORMAT_NAME:
        raise ArtifactError(f"{root} is not a sepconv artifact (foreign {MANIFEST}); recompile it")
    version = raw.get("format_version")
    if version != FORMAT_VERSION:
        raise ArtifactError(
            f"{root} has artifact format version {version!r}; this sepconv reads version "
            f"{FORMAT_VERSION}. Recompile the model with this sepconv, or use the sepconv "
            "version that wrote it"
        )
    try:
        manifest = Manifest.from_json(raw)
    except (KeyError, TypeError) as exc:
        raise ArtifactError(f"{mpath} is missing field {exc}; recompile the model") from exc
    if verify:
        verify_files(root, manifest)
    return root, manifest


def verify_files(root: Path, manifest: Manifest) -> None:
    for name in (LIBRARY, WEIGHTS):
        if name not in manifest.files:
            raise ArtifactError(f"{root}/{MANIFEST} lists no checksum for {name}; recompile")
    for name, digest in manifest.files.items():
        f = root / name
        if not f.is_file():
            raise ArtifactError(f"{root} is incomplete: {name} is missing; recompile the model")
        if sha256_file(f) != digest:
            raise ArtifactError(
                f"{root}/{name} does not match its checksum in {MANIFEST}: the file was corrupted "
                "or modified after compilation; recompile the model"
            )
    machine = _elf_machine(root / LIBRARY)
    expected = _ELF_MACHINE.get(manifest.arch)
    if machine is None or (expected is not None and machine != expected):
        raise ArtifactError(
            f"{root}/{LIBRARY} is not a {manifest.arch} shared library (ELF machine {machine}); "
            "the artifact is foreign or damaged; recompile the model"
        )


def check_runs_here(root: Path, manifest: Manifest) -> None:
    """Refuse a library built for another architecture, or for CPU features this machine lacks
    (it would die on its first such instruction with SIGILL), saying where it can run."""
    from sepconv.targets.host import host_arch, missing_isa_features

    here = host_arch()
    if manifest.arch != here:
        raise ArtifactError(
            f"{root} was compiled for {manifest.target['triple']} ({manifest.arch}) and cannot run "
            f"on this {here} machine. Copy it to a {manifest.arch} machine with sepconv installed "
            "and load it there, or run it on such a device through TVM RPC "
            "(`sepconv device serve` on the device)"
        )
    # Artifacts before the full ISA was recorded carry the schedule-relevant features only.
    isa = manifest.target.get("isa") or manifest.target.get("features") or []
    missing = missing_isa_features(isa)
    if missing:
        mcpu = manifest.target.get("mcpu") or "?"
        raise ArtifactError(
            f"{root} was compiled for a CPU with {', '.join(missing)} (mcpu={mcpu}), which this "
            f"CPU lacks: running it would stop at the first such instruction (SIGILL). Recompile "
            "it for this machine (`sepconv compile` without --mcpu, or --mcpu x86-64-v3 for any "
            "AVX2 CPU), or run it on a machine that has those features (`sepconv device serve` "
            "there, then --device rpc://HOST:9090)"
        )


def record_validation(root: Path, manifest: Manifest, result: dict) -> None:
    manifest.validation = result
    _write_json_atomic(root / MANIFEST, manifest.to_json())
