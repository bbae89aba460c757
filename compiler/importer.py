"""PyTorch → TVM Relax, through ``torch.export`` (Relay does not exist in TVM ≥ 0.20).

The importer's only job is to turn an ``nn.Module`` and an example input into a Relax IRModule
whose ``main`` takes the input tensor(s) and nothing else: every weight and BatchNorm statistic is
bound as a constant so that the graph passes can fold them (BatchNorm into conv weights, weight
layout changes) before the constants are lifted out again as the artifact's weights.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import warnings
from dataclasses import dataclass

import torch

from sepconv.compiler.artifact import TensorInfo
from sepconv.errors import ImportFailure

log = logging.getLogger(__name__)


@dataclass
class ImportedGraph:
    mod: object  # tvm.IRModule with main(inputs...) and weights bound as constants
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]


def _torch_dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _first_lines(text: str, n: int = 3) -> str:
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    return " ".join(lines[:n])


def export_program(module: torch.nn.Module, example_inputs: tuple[torch.Tensor, ...]):
    """``torch.export`` with its failures turned into an ImportFailure that names the reason."""
    module = module.eval()
    # torch.export prints the failing graph to stderr before raising; the exception says enough.
    sink = io.StringIO()
    try:
        with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stderr(sink):
            warnings.simplefilter("ignore")
            return torch.export.export(module, example_inputs)
    except Exception as exc:  # torch raises a zoo of types here
        reason = _first_lines(exc)
        hint = (
            "the model has data-dependent control flow (an `if` or loop on tensor values); "
            "rewrite it with torch.where / torch.cond or make the branch static"
            if "data-dependent" in reason or "GuardOnDataDependent" in type(exc).__name__
            else "make the model traceable by torch.export (see the PyTorch export docs)"
        )
        raise ImportFailure(
            f"torch.export could not trace {type(module).__name__}: {type(exc).__name__}: "
            f"{reason[:400]} — fix: {hint}"
        ) from exc


def to_relax(exported) -> object:
    """ExportedProgram → Relax IRModule with params bound as constants."""
    from tvm.relax.frontend.torch import from_exported_program

    from sepconv.compiler.int8.qdq_import import QDQ_CONVERTERS, is_quantized_program

    # A PT2E-quantized graph carries quantize/dequantize ops the frontend has no converter for.
    custom = QDQ_CONVERTERS if is_quantized_program(exported) else None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return from_exported_program(
                exported, keep_params_as_input=False, custom_convert_map=custom
            )
    except AssertionError as exc:
        match = re.search(r"Unsupported function types \[(.*?)\]", str(exc))
        if match:
            ops = match.group(1).replace("'", "")
            raise ImportFailure(
                f"TVM's Relax importer does not support the PyTorch op(s) {ops}; replace them in "
                "the model with supported ops (conv, linear, pooling, elementwise, reshape, ...)"
            ) from exc
        raise ImportFailure(f"TVM's Relax importer failed: {_first_lines(exc)}") from exc
    except Exception as exc:
        raise ImportFailure(
            f"TVM's Relax importer failed: {type(exc).__name__}: {_first_lines(exc)}"
        ) from exc


def import_module(
    module: torch.nn.Module, example_inputs: torch.Tensor | tuple[torch.Tensor, ...]
) -> ImportedGraph:
    """An ``nn.Module`` (or a loaded model file: :class:`~sepconv.compiler.model_files.ModelFile`,
    whose own inputs are used) → ImportedGraph."""
    from sepconv.compiler.model_files import ModelFile

    if isinstance(module, ModelFile):
        return module.import_graph()
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    if not all(isinstance(t, torch.Tensor) for t in example_inputs):
        raise ImportFailure("example inputs must be torch tensors")
    outputs = _eager_outputs(module.eval(), example_inputs)
    exported = export_program(module, tuple(example_inputs))
    return _graph(to_relax(exported), example_inputs, outputs)


def import_exported(exported, example_inputs: tuple[torch.Tensor, ...]) -> ImportedGraph:
    """An ``ExportedProgram`` (e.g. from a ``.pt2`` file) with static inputs → ImportedGraph."""
    outputs = _eager_outputs(exported.module(), example_inputs)
    return _graph(to_relax(exported), example_inputs, outputs)


def _eager_outputs(fn, example_inputs) -> tuple[torch.Tensor, ...]:
    """The eager outputs (their shapes and dtypes become the artifact's output signature)."""
    with torch.no_grad():
        outputs = fn(*example_inputs)
    if isinstance(outputs, torch.Tensor):
        outputs = (outputs,)
    if not all(isinstance(t, torch.Tensor) for t in outputs):
        raise ImportFailure(
            f"the model must return a tensor or a tuple of tensors, got {type(outputs).__name__}"
        )
    return outputs


def _graph(mod, example_inputs, outputs) -> ImportedGraph:
    inputs = [
        TensorInfo(
            f"input{i}" if len(example_inputs) > 1 else "input",
            tuple(t.shape),
            _torch_dtype_name(t.dtype),
        )
        for i, t in enumerate(example_inputs)
    ]
    outs = [
        TensorInfo(
            f"output{i}" if len(outputs) > 1 else "output",
            tuple(t.shape),
            _torch_dtype_name(t.dtype),
        )
        for i, t in enumerate(outputs)
    ]
    return ImportedGraph(mod=mod, inputs=inputs, outputs=outs)
