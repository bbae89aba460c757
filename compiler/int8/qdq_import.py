"""PT2E's ``quantized_decomposed`` ops as Relax ``quantize`` / ``dequantize``.

TVM 0.27's torch frontend has no converter for them; ``from_exported_program`` takes these
through ``custom_convert_map``. PT2E names the range it clamps to (``quant_min``/``quant_max``);
a range narrower than the dtype's (``reduce_range``) becomes an integer clamp after quantize.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from sepconv.errors import ImportFailure

_DTYPE_RANGE = {"uint8": (0, 255), "int8": (-128, 127), "int32": (-(2**31), 2**31 - 1)}


def _dtype_name(dtype) -> str:
    name = str(dtype).removeprefix("torch.")
    if name not in _DTYPE_RANGE:
        raise ImportFailure(f"quantized dtype {name} is not supported (uint8 and int8 are)")
    return name


def _qparam(importer, value, dtype: str) -> relax.Expr:
    """A scale or zero point: a Python number from the graph, or a tensor it holds."""
    if isinstance(value, int | float):
        return relax.const(np.array(value, dtype=dtype))
    expr = importer.env[value]
    if isinstance(expr, tvm.ir.expr.Constant):
        return relax.const(expr.value.numpy().astype(dtype))
    return importer.block_builder.emit(relax.op.astype(expr, dtype))


def _clamp(importer, q: relax.Expr, lo: int, hi: int, dtype: str) -> relax.Expr:
    full_lo, full_hi = _DTYPE_RANGE[dtype]
    bb = importer.block_builder
    if lo > full_lo:
        q = bb.emit(relax.op.maximum(q, relax.const(np.array(lo, dtype=dtype))))
    if hi < full_hi:
        q = bb.emit(relax.op.minimum(q, relax.const(np.array(hi, dtype=dtype))))
    return q


def _quantize(axis_arg: int | None):
    def convert(node, importer) -> relax.Var:
        x, scale, zp = node.args[:3]
        axis = -1 if axis_arg is None else node.args[axis_arg]
        lo, hi, dtype = node.args[-3:]
        dtype = _dtype_name(dtype)
        q = importer.block_builder.emit(
            relax.op.quantize(
                importer.env[x],
                _qparam(importer, scale, "float32"),
                _qparam(importer, zp, "int32"),
                axis=axis,
                out_dtype=dtype,
            )
        )
        return _clamp(importer, q, int(lo), int(hi), dtype)

    return convert


def _dequantize(axis_arg: int | None):
    def convert(node, importer) -> relax.Var:
        x, scale, zp = node.args[:3]
        axis = -1 if axis_arg is None else node.args[axis_arg]
        out_dtype = str(node.kwargs.get("out_dtype") or "float32").removeprefix("torch.")
        return importer.block_builder.emit(
            relax.op.dequantize(
                importer.env[x],
                _qparam(importer, scale, "float32"),
                _qparam(importer, zp, "int32"),
                axis=axis,
                out_dtype=out_dtype,
            )
        )

    return convert


# Keys are the FX targets' __name__, as the frontend looks them up.
QDQ_CONVERTERS = {
    "quantize_per_tensor.default": _quantize(None),
    "dequantize_per_tensor.default": _dequantize(None),
    "quantize_per_tensor.tensor": _quantize(None),
    "dequantize_per_tensor.tensor": _dequantize(None),
    "quantize_per_channel.default": _quantize(3),
    "dequantize_per_channel.default": _dequantize(3),
}


def is_quantized_program(exported) -> bool:
    """Whether an ExportedProgram carries PT2E quantize/dequantize ops."""
    return any(
        node.op == "call_function" and "quantized_decomposed" in str(node.target)
        for node in exported.graph.nodes
    )
