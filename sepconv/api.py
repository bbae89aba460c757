"""Public API: compile, load, validate. Thin: each call hands over to the rooms below."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from sepconv.compiler.artifact import Manifest, read_manifest, record_validation, sha256_file
from sepconv.compiler.runtime import CompiledModel
from sepconv.compiler.runtime import load as _load
from sepconv.compiler.validation import ValidationReport, validate_against
from sepconv.errors import SepconvError

log = logging.getLogger(__name__)

__all__ = ["Artifact", "compile", "load", "validate"]


@dataclass
class Artifact:
    path: Path
    manifest: Manifest

    def load(self, device: str | None = None) -> CompiledModel:
        return _load(self.path, device)


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "model"


def _resolve_model(model, example_input, batch: int, weights, seed: int):
    """→ (module, example inputs tuple, manifest model record)."""
    if isinstance(model, str):
        from sepconv.models import get_model

        spec = get_model(model, batch=batch, weights=weights, seed=seed)
        record = {"name": spec.name, "source": "zoo", "seed": seed, "batch": batch}
        if weights is not None:
            record["weights"] = str(Path(weights).resolve())
            record["weights_sha256"] = sha256_file(Path(weights))
        x = example_input if example_input is not None else spec.example_input(seed)
        return spec.module, (x,) if isinstance(x, torch.Tensor) else tuple(x), record
    if isinstance(model, torch.nn.Module):
        if example_input is None:
            raise SepconvError(
                "compiling an nn.Module needs an example input: "
                "sepconv.compile(module, example_input=torch.randn(1, 3, 224, 224), ...)"
            )
        inputs = (
            (example_input,) if isinstance(example_input, torch.Tensor) else tuple(example_input)
        )
        record = {"name": type(model).__name__, "source": "module", "seed": seed}
        return model, inputs, record
    raise SepconvError(
        f"model must be a zoo name (see `sepconv models`) or a torch.nn.Module, got "
        f"{type(model).__name__}"
    )


def compile(  # noqa: A001 - mirrors tvm.compile / torch.compile
    model: str | torch.nn.Module,
    target: str = "host",
    out: str | os.PathLike | None = None,
    *,
    example_input: torch.Tensor | tuple[torch.Tensor, ...] | None = None,
    batch: int = 1,
    weights: str | os.PathLike | None = None,
    seed: int = 0,
    force: bool = False,
    validate: bool = False,
    mcpu: str | None = None,
    cuda_arch: str | None = None,
    sepconv_ops: bool = True,
    tune_logs: bool | str | os.PathLike | list = True,
    cuda_graph: bool | None = None,
    precision: str = "fp32",
    on_stage: Callable[[str], None] | None = None,
) -> Artifact:
    """Compile a zoo model (by name) or an ``nn.Module`` (with ``example_input``) into an
    artifact directory ``out`` (default ``build/<name>.sepconv``).

    ``sepconv_ops=False`` keeps TVM's own conv2d instead of our depthwise / fused
    depthwise→pointwise operators (to measure their gain or bisect a suspected miscompile).

    ``tune_logs``: tuning records to schedule with — ``True`` the shipped ``tune_logs/<key>/``,
    ``False`` none, a directory the shipped logs plus that one, a list exactly those (``True``
    in it standing for the shipped logs); see :func:`sepconv.compiler.tuning_db.log_dirs`.

    CUDA only: ``cuda_graph`` replays the whole model as one CUDA graph (default: on for batch
    1); ``precision="fp16"`` computes in half precision behind a float32 interface.
    """
    from sepconv.compiler.artifact import versions, write_artifact
    from sepconv.compiler.build import build
    from sepconv.compiler.importer import import_module
    from sepconv.targets import resolve_target

    on_stage = on_stage or (lambda _s: None)
    if batch < 1:
        raise SepconvError(f"batch must be ≥ 1, got {batch}")
    tspec = resolve_target(target, mcpu=mcpu, cuda_arch=cuda_arch)
    module, inputs, record = _resolve_model(model, example_input, batch, weights, seed)
    out = Path(out) if out is not None else Path("build") / _safe_name(record["name"])

    from sepconv.compiler.artifact import artifact_path

    if artifact_path(out).exists() and not force:
        # Fail before minutes of compilation, not after.
        from sepconv.errors import ArtifactError

        raise ArtifactError(
            f"{artifact_path(out)} already exists; choose another output path or pass --force "
            "(force=True) to replace it"
        )
    on_stage("export")
    graph = import_module(module, inputs)
    from sepconv.compiler.tuning_db import database_for_build

    database, log_dirs = database_for_build(tspec.key, tune_logs)
    result = build(
        graph,
        tspec.target,
        database=database,
        on_stage=on_stage,
        sepconv_ops=sepconv_ops,
        cuda_graph=cuda_graph,
        precision=precision,
    )
    on_stage("write artifact")
    manifest = Manifest(
        model=record,
        inputs=graph.inputs,
        outputs=graph.outputs,
        target=tspec.describe(),
        weight_names=list(result.weights),
        build={**result.stats.to_json(), "tune_logs": log_dirs},
        versions=versions(),
    )
    path = write_artifact(
        out,
        manifest,
        lambda p: tspec.export_library(result.executable, p),
        result.weights,
        force=force,
    )
    art = Artifact(path, manifest)
    if validate:
        on_stage("validate")
        _validate(art.load(), module)
        _, art.manifest = read_manifest(path, verify=False)
    return art


def load(path: str | os.PathLike, device: str | None = None) -> CompiledModel:
    """Load an artifact after verifying it (manifest, checksums, architecture)."""
    return _load(path, device)


def _reference_for(compiled: CompiledModel) -> torch.nn.Module:
    record = compiled.manifest.model
    if record.get("source") != "zoo":
        raise SepconvError(
            f"{compiled.path} was compiled from a Python nn.Module ({record.get('name')}); "
            "pass that module: sepconv.validate(model, reference=module)"
        )
    from sepconv.models import get_model

    weights = record.get("weights")
    if weights is not None:
        if not Path(weights).is_file():
            raise SepconvError(
                f"the weights file the artifact was compiled with is gone: {weights}; "
                "pass the reference module explicitly"
            )
        if sha256_file(Path(weights)) != record.get("weights_sha256"):
            raise SepconvError(
                f"{weights} changed since compilation (checksum differs); recompile, or pass "
                "the reference module explicitly"
            )
    batch = compiled.inputs[0].shape[0]
    return get_model(
        record["name"], batch=batch, weights=weights, seed=record.get("seed", 0)
    ).module


def _validate(
    model: CompiledModel | str | os.PathLike,
    reference: torch.nn.Module | str | None = None,
    *,
    seed: int = 0,
    num_inputs: int = 3,
    record: bool = True,
) -> ValidationReport:
    """Compare a compiled model with eager PyTorch on seeded inputs.

    ``model`` is a loaded model or an artifact path. ``reference`` is the eager module, a zoo name,
    or None to rebuild the zoo model the artifact names. The result is written into the manifest.
    """
    compiled = model if isinstance(model, CompiledModel) else _load(model)
    if reference is None:
        reference = _reference_for(compiled)
    elif isinstance(reference, str):
        from sepconv.models import get_model

        reference = get_model(reference, batch=compiled.inputs[0].shape[0], seed=seed).module
    report = validate_against(
        compiled,
        reference,
        model_name=compiled.manifest.model.get("name", "?"),
        seed=seed,
        num_inputs=num_inputs,
    )
    if record:
        record_validation(compiled.path, compiled.manifest, report.to_json())
    return report


validate = _validate  # public name; `compile(validate=True)` shadows it inside compile
