"""Public API: compile, load, validate. Thin: each call hands over to the rooms below."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from sepconv.checksum import sha256_file
from sepconv.compiler.artifact import Manifest, read_manifest, record_validation
from sepconv.compiler.bisect import BisectReport
from sepconv.compiler.model_source import resolve_model
from sepconv.compiler.runtime import CompiledModel
from sepconv.compiler.runtime import load as _load
from sepconv.compiler.validation import ValidationReport, validate_against
from sepconv.errors import SepconvError

log = logging.getLogger(__name__)

__all__ = ["Artifact", "bisect", "compile", "load", "validate"]


@dataclass
class Artifact:
    path: Path
    manifest: Manifest

    def load(self, device: str | None = None) -> CompiledModel:
        return _load(self.path, device)


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "model"


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
    records_from_other_cpus: bool = False,
    cuda_graph: bool | None = None,
    precision: str = "fp32",
    on_stage: Callable[[str], None] | None = None,
    input_shape: str | tuple[int, ...] | list[tuple[int, ...]] | None = None,
    calibration=None,
    observer: str = "histogram",
) -> Artifact:
    """Compile a zoo model (by name), an ``nn.Module`` (with ``example_input``), a model file
    (``.pt2`` from ``torch.export.save``, ``.onnx``) or an ``ExportedProgram`` /
    ``onnx.ModelProto`` into an artifact directory ``out`` (default ``build/<name>.sepconv``).

    ``input_shape`` (e.g. ``(1, 3, 224, 224)``, one per input) fixes a model file's dynamic
    dimensions; the manifest records the file's path and SHA-256 so ``validate`` can rebuild the
    reference (eager ``ep.module()`` for ``.pt2``, ONNX Runtime for ``.onnx``).

    ``sepconv_ops=False`` keeps TVM's own conv2d instead of our depthwise / fused
    depthwise→pointwise operators (to measure their gain or bisect a suspected miscompile).

    ``tune_logs``: tuning records to schedule with — ``True`` the shipped ``tune_logs/<key>/``,
    ``False`` none, a directory the shipped logs plus that one, a list exactly those (``True``
    in it standing for the shipped logs); see :func:`sepconv.compiler.tuning.database.log_dirs`.
    Only the records measured on the CPU the build is for (LLVM's ``mcpu``: the host's, or
    ``mcpu``) are used; the manifest names the functions that have records from other CPUs
    only (``build.tuned_on_other_cpus``), and ``records_from_other_cpus=True`` uses those too.

    CUDA only: ``cuda_graph`` replays the whole model as one CUDA graph (default: on for batch
    1); ``precision="fp16"`` computes in half precision behind a float32 interface.

    CPU: ``precision="int8"`` quantizes after training (PT2E, :mod:`sepconv.compiler.int8`) on
    ``calibration`` data — a folder of ``.npy`` inputs, one ``.npy``/``.npz`` batch, arrays or an
    iterable of them; None uses seeded random inputs, which say nothing about accuracy on real
    data — with ``observer`` ``"histogram"`` (default) or ``"minmax"``. A PT2E-quantized
    ``ExportedProgram`` / ``.pt2`` compiles to int8 as it is, with its own scales.
    """
    from sepconv.compiler.artifact import versions, write_artifact
    from sepconv.compiler.build import build
    from sepconv.compiler.importer import import_module
    from sepconv.targets import resolve_target

    on_stage = on_stage or (lambda _s: None)
    if batch < 1:
        raise SepconvError(f"batch must be ≥ 1, got {batch}")
    tspec = resolve_target(target, mcpu=mcpu, cuda_arch=cuda_arch)
    module, inputs, record = resolve_model(model, example_input, batch, weights, seed, input_shape)
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
    quantized_ref = None
    if precision == "int8":
        graph, quantized_ref = _quantized_graph(
            module, inputs, record, tspec, calibration, observer, seed, on_stage
        )
    else:
        if calibration is not None:
            raise SepconvError("calibration data is for precision='int8' (--precision int8)")
        graph = import_module(module, inputs)
    from sepconv.compiler.tuning.database import database_for_build, record_cpu

    cpu = None if records_from_other_cpus else record_cpu(tspec.target)
    database, log_dirs = database_for_build(tspec.key, tune_logs, cpu=cpu)
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
        if quantized_ref is not None:
            _validate(art.load(), module, quantized_reference=quantized_ref)
        else:
            _validate(art.load(), module)
        _, art.manifest = read_manifest(path, verify=False)
    return art


def _quantized_graph(module, inputs, record, tspec, calibration, observer, seed, on_stage):
    """int8: a PT2E-quantized program as it is, anything else quantized here → (graph, the
    simulated-quantization reference or None when the program is its own reference)."""
    from sepconv.compiler.importer import import_exported, import_module
    from sepconv.compiler.int8.ptq import full_range_dot, quantize_model
    from sepconv.compiler.int8.qdq_import import is_quantized_program
    from sepconv.compiler.model_files import ModelFile

    source = module
    if isinstance(module, ModelFile):
        if module.kind != "pt2":
            raise SepconvError(
                f"{module.name}: int8 from an ONNX file is not supported; quantize the PyTorch "
                "model (a zoo name, an nn.Module or a .pt2 file)"
            )
        if is_quantized_program(module.program):
            if calibration is not None:
                raise SepconvError(
                    f"{module.name} is already quantized (PT2E); drop the calibration data"
                )
            return import_module(module, inputs), None
        source = module.program
    if tspec.target.kind.name != "llvm":
        raise SepconvError(f"int8 compiles for CPU targets (x86_64, aarch64), not {tspec.triple}")
    on_stage("calibrate and quantize")
    reference, quant = quantize_model(
        source, inputs, calibration=calibration, target_arch=tspec.host_arch, observer=observer,
        seed=seed, full_range=full_range_dot(tspec.isa),
    )  # fmt: skip
    if quant["calibration"]["kind"] == "random":
        log.warning(
            "int8 without calibration data: calibrated on %d seeded random inputs; accuracy on "
            "real inputs needs representative data (--calibration DATA)",
            quant["samples"],
        )
    record["quantization"] = quant
    return import_exported(reference.graphs.exported, inputs), reference


def load(path: str | os.PathLike, device: str | None = None) -> CompiledModel:
    """Load an artifact after verifying it (manifest, checksums, architecture). ``device``:
    ``cpu``/``cuda`` here (default: the artifact's), or ``rpc://HOST:PORT[/KEY]`` /
    ``tracker://HOST:PORT/KEY`` to upload and run it on a remote device."""
    return _load(path, device)


def _reference_for(compiled: CompiledModel) -> torch.nn.Module:
    record = compiled.manifest.model
    if record.get("source") == "file":
        from sepconv.compiler.model_files import reference_from_record

        return reference_from_record(record).reference()
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
    bisect: bool = False,
    quantized_reference=None,
    min_sqnr_db: float | None = None,
    layers: bool = False,
) -> ValidationReport:
    """Compare a compiled model with eager PyTorch on seeded inputs.

    ``model`` is a loaded model or an artifact path. ``reference`` is the eager module, a zoo name,
    or None to rebuild the zoo model the artifact names. The result is written into the manifest.
    ``bisect=True`` also locates the first compiled function whose output leaves the tolerance
    (``report.bisect``, a :class:`~sepconv.compiler.bisect.BisectReport`; see :func:`bisect`);
    for int8, the per-operator check in full (an
    :class:`~sepconv.compiler.int8.operator_check.OperatorCheck`: every operator's row).

    An int8 artifact is compared with the simulated quantization (rebuilt from the recorded
    calibration, or ``quantized_reference``) and with fp32 (``min_sqnr_db`` overrides the fp32
    SQNR floor): an :class:`~sepconv.compiler.int8.accuracy.Int8ValidationReport`. When the
    fp32 rule fails, or with ``layers=True``, it also measures every quantized activation against
    fp32 (``report.layers``) and names the layer where the error grows most.
    """
    compiled = model if isinstance(model, CompiledModel) else _load(model)
    if compiled.manifest.build.get("precision") == "int8":
        report = _validate_int8(
            compiled, reference, quantized_reference, seed, num_inputs, min_sqnr_db, layers
        )
        if bisect:  # int8's bisection: each operator on the reference's inputs, in order
            report.bisect = report.operator_check
        if record:
            record_validation(compiled.path, compiled.manifest, report.to_json())
        return report
    if layers or min_sqnr_db is not None:
        raise SepconvError(
            "layers and min_sqnr_db (--layers, --min-sqnr-db) are for int8 artifacts; this one "
            f"is {compiled.manifest.build.get('precision', 'fp32')}"
        )
    from sepconv.compiler.model_files import as_model_file

    shapes = [tuple(t.shape) for t in compiled.inputs]
    if reference is not None and not isinstance(reference, torch.nn.Module):
        mf = as_model_file(reference, shapes)  # a .pt2 / .onnx path, ExportedProgram, ModelProto
        reference = mf.reference() if mf is not None else reference
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
    source = getattr(reference, "sepconv_source", None)
    if source is not None:
        report.reference = source.reference_name
    if record:
        record_validation(compiled.path, compiled.manifest, report.to_json())
    if bisect:
        from sepconv.compiler.bisect import bisect as run_bisect

        report.bisect = run_bisect(
            compiled, reference, model_name=report.model, seed=seed, num_inputs=num_inputs
        )
    return report


def _validate_int8(
    compiled, reference, quantized_reference, seed, num_inputs, min_sqnr_db=None, layers=False
):
    """int8: against simulated quantization (the PT2E program) and, when there is one, fp32."""
    from sepconv.compiler.int8.accuracy import validate_int8
    from sepconv.compiler.int8.ptq import quantized_reference as rebuild
    from sepconv.compiler.model_files import as_model_file
    from sepconv.compiler.validation import seeded_inputs

    shapes = [tuple(t.shape) for t in compiled.inputs]
    quant = compiled.manifest.model.get("quantization")
    if reference is not None and not isinstance(reference, torch.nn.Module):
        mf = as_model_file(reference, shapes)
        if mf is not None:
            reference = mf.reference()
        else:
            from sepconv.models import get_model

            reference = get_model(reference, batch=shapes[0][0], seed=seed).module
    if quant is None:  # a PT2E-quantized program: it is its own simulated-quantization reference
        qref = quantized_reference or reference or _reference_for(compiled)
        fref = None
    else:
        fref = reference if reference is not None else _reference_for(compiled)
        if quantized_reference is None:
            inputs = tuple(torch.from_numpy(a) for a in seeded_inputs(compiled.inputs, seed))
            quantized_reference = rebuild(quant, fref, inputs)
        qref = quantized_reference
    from sepconv.compiler.int8.accuracy import MIN_SQNR_DB

    return validate_int8(
        compiled, qref, fref, model_name=compiled.manifest.model.get("name", "?"), seed=seed,
        num_inputs=num_inputs, min_sqnr_db=MIN_SQNR_DB if min_sqnr_db is None else min_sqnr_db,
        layers=layers,
    )  # fmt: skip


validate = _validate  # public name; `compile(validate=True)` shadows it inside compile


def bisect(
    model: CompiledModel | str | os.PathLike,
    reference: torch.nn.Module | str | None = None,
    *,
    seed: int = 0,
    num_inputs: int = 3,
) -> BisectReport:
    """Find the first compiled function whose output disagrees with the eager reference.

    Same arguments as :func:`validate` (whose manifest record it leaves alone). The artifact is
    rebuilt once, with its manifest's target, options and tuning logs, returning every
    intermediate; they are matched to the outputs of the reference's ``torch.export`` graph.
    Returns a :class:`~sepconv.compiler.bisect.BisectReport` (``first_divergence`` is None when
    every matched intermediate agrees).
    """
    return _validate(
        model, reference, seed=seed, num_inputs=num_inputs, record=False, bisect=True
    ).bisect
