"""Carry the channels-last layout through channel-only data movement.

ConvertLayout turns every conv to NHWC but stops at ``reshape``: it has no layout rule, so a
channel shuffle (``reshape [N, g, C/g, H, W] → permute_dims → reshape [N, C, H, W]``, ShuffleNet)
and everything around it — the ``split`` / ``chunk`` before, the ``concat`` after — run in NCHW
behind a transpose on each side. Each unit then makes a strided NHWC → NCHW → NHWC round trip
(ShuffleNetV2 on AVX2: 2.5 ms of 8.7 in such kernels, at 2–7 GB/s).

This pass follows values that are NCHW views of NHWC values::

    permute_dims(x_nhwc, [0, 3, 1, 2])                     starts a chain (x_nhwc is its image)
    reshape to [N, c1..ck, H, W]                           ⇒ reshape the image to [N, H, W, c1..ck]
    permute_dims of the channel axes only                  ⇒ the same permutation of the image's
    concat / split on a channel axis                       ⇒ on the image's channel axis
    ``v[i]`` of a followed split                           ⇒ of the image's split
    elementwise op with scalar operands (int8's
    per-tensor quantize / dequantize, relu, clip)          ⇒ on the image
    permute_dims(v, [0, 2, 3, 1])                          ⇒ v's image itself: the chain ends

N, H and W must be the same sizes throughout, so every reshape moves channel indices only and
keeps them row-major in both layouts. A followed 4-D value that something else still reads in
NCHW (the graph's output, an op the pass does not know) becomes one transpose of its image; a
5-D one keeps its NCHW binding. Bindings nobody reads are removed.
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from sepconv.compiler.patterns import static_shape

TO_NCHW, TO_NHWC = [0, 3, 1, 2], [0, 2, 3, 1]

# Elementwise ops that keep a followed value followed when every other operand is a scalar.
_ELEMENTWISE = {
    "relax.nn.relu", "relax.clip", "relax.maximum", "relax.minimum", "relax.astype",
    "relax.quantize", "relax.dequantize",
}  # fmt: skip


def _ints(values) -> list[int]:
    return [int(v) for v in values]


def _is_scalar(expr) -> bool:
    shape = static_shape(expr)
    return shape is not None and all(d == 1 for d in shape)


@mutator
class _ChannelsLast(PyExprMutator):
    def __init__(self, mod: tvm.IRModule):
        super().__init__(mod)
        # A followed (NCHW-family) var → its image: [N, H, W, c1..ck] for [N, c1..ck, H, W].
        self.image: dict[relax.Var, relax.Expr] = {}
        # A followed split's var → the image's split (a tuple).
        self.split_image: dict[relax.Var, relax.Expr] = {}

    def visit_var_binding_(self, binding):
        value, var = binding.value, binding.var
        end = self._chain_end(value)
        if end is not None and isinstance(var, relax.DataflowVar):
            self.set_var_remap(var, end)
            return
        if _op_name(value) == "relax.split":
            super().visit_var_binding_(binding)
            split = self._split(value)
            if split is not None:
                self.split_image[var] = split
            return
        new_value = self.visit_expr(value)
        image = self._image(value, new_value)
        if image is None:
            super().visit_var_binding_(binding)
            return
        self.image[var] = image
        shape = static_shape(value)
        if shape is not None and len(shape) == 4:
            # whoever still reads the NCHW value (the graph's output, an op not followed) gets
            # one transpose of the image instead of the chain recomputed in NCHW
            new_value = relax.op.permute_dims(image, TO_NCHW)
        if isinstance(var, relax.DataflowVar):
            self.set_var_remap(var, self.builder_.emit(new_value, var.name))
        else:
            self.set_var_remap(var, self.builder_.emit_output(new_value, var.name))

    def _followed(self, expr) -> bool:
        return isinstance(expr, relax.Var) and expr in self.image

    def _chain_end(self, value):
        """The image that a ``permute_dims(v, [0, 2, 3, 1])`` of a followed 4-D v equals."""
        if _op_name(value) != "relax.permute_dims" or value.attrs.axes is None:
            return None
        src = value.args[0]
        if self._followed(src) and _ints(value.attrs.axes) == TO_NHWC:
            return self.image[src]
        return None

    def _image(self, value, new_value):
        if isinstance(value, relax.TupleGetItem):
            tup = value.tuple_value
            if isinstance(tup, relax.Var) and tup in self.split_image:
                return self.builder_.emit(relax.TupleGetItem(self.split_image[tup], value.index))
            return None
        name = _op_name(value)
        if name is None or not value.args:
            return None
        src = value.args[0]
        if name == "relax.permute_dims":
            return self._permute(value, src, new_value.args[0])
        if name == "relax.concat":
            return self._concat(value)
        if not self._followed(src):
            return None
        if name == "relax.reshape":
            return self._reshape(value, src)
        if name in _ELEMENTWISE and all(_is_scalar(a) for a in new_value.args[1:]):
            args = [self.image[src], *new_value.args[1:]]
            return self.builder_.emit(relax.Call(new_value.op, args, value.attrs))
        return None

    def _permute(self, value, src, new_src):
        if value.attrs.axes is None:
            return None
        axes = _ints(value.attrs.axes)
        if not self._followed(src):
            shape = static_shape(src)
            starts = axes == TO_NCHW and shape is not None and len(shape) == 4
            return new_src if starts else None
        rank = len(axes)
        if axes[0] != 0 or axes[-2:] != [rank - 2, rank - 1]:
            return None  # it moves N, H or W
        channels = [a + 2 for a in axes[1:-2]]  # c_i sits at i + 2 in the image
        return self.builder_.emit(relax.op.permute_dims(self.image[src], [0, 1, 2, *channels]))

    def _reshape(self, value, src):
        old, new = static_shape(src), static_shape(value)
        if old is None or new is None or len(new) < 4:
            return None
        if new[0] != old[0] or new[-2:] != old[-2:]:
            return None  # only channel indices may move
        n, h, w = new[0], new[-2], new[-1]
        return self.builder_.emit(relax.op.reshape(self.image[src], [n, h, w, *new[1:-2]]))

    def _split(self, value):
        src = value.args[0]
        axis = _channel_axis(src, value.attrs.axis)
        if not self._followed(src) or axis is None:
            return None
        sections = value.attrs.indices_or_sections
        sections = int(sections) if isinstance(sections, int | tvm.tirx.IntImm) else _ints(sections)
        return self.builder_.emit(relax.op.split(self.image[src], sections, axis=axis + 2))

    def _concat(self, value):
        fields = value.args[0]
        if not isinstance(fields, relax.Tuple) or not fields.fields:
            return None
        if not all(self._followed(f) for f in fields.fields):
            return None
        axis = _channel_axis(fields.fields[0], value.attrs.axis)
        if axis is None:
            return None
        images = relax.Tuple([self.image[f] for f in fields.fields])
        return self.builder_.emit(relax.op.concat(images, axis=axis + 2))


def _op_name(expr) -> str | None:
    if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op):
        return expr.op.name
    return None


def _channel_axis(expr, axis) -> int | None:
    """``axis`` of an [N, c1..ck, H, W] value as a channel index 1..k, or None."""
    shape = static_shape(expr)
    if shape is None or axis is None:
        return None
    axis = int(axis) % len(shape)
    return axis if 1 <= axis <= len(shape) - 3 else None


def propagate_channels_last(mod: tvm.IRModule, func_name: str = "main") -> tvm.IRModule:
    """``mod`` with NCHW channel-only chains between NHWC values run on the NHWC values."""
    func = mod[func_name]
    mutator = _ChannelsLast(mod)
    body = mutator.visit_expr(func.body)
    out = tvm.IRModule(dict(mod.functions_items()), attrs=mod.attrs)
    out[func_name] = relax.Function(func.params, body, func.ret_ty, func.is_pure, func.attrs)
    return relax.transform.DeadCodeElimination()(out)
