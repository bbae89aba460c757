"""Shared analysis of TIR PrimFuncs for the CPU schedule rules.

A rule asks one question of a PrimFunc (is this a depthwise convolution? a dense layer?); the
answers come from here so that two rules never disagree on what a function is. Every matcher
returns ``None`` for "not this pattern" rather than raising.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import tvm_ffi
from tvm import ir, s_tir, tirx
from tvm.s_tir.schedule import SBlockRV

log = logging.getLogger(__name__)

SPATIAL = tirx.IterVar.DataPar
REDUCE = tirx.IterVar.CommReduce


def as_int(expr) -> int | None:
    """The value of a constant integer expression, or None when it is symbolic."""
    if isinstance(expr, int):
        return expr
    if isinstance(expr, tirx.IntImm):
        return int(expr.value)
    return None


def loop_extent(sch: s_tir.Schedule, loop) -> int | None:
    return as_int(sch.get(loop).extent)


def root_block(sch: s_tir.Schedule) -> SBlockRV | None:
    """The root block of ``sch.mod["main"]``, or None for a function without one."""
    body = sch.mod["main"].body
    if not isinstance(body, s_tir.SBlockRealize):
        return None
    return sch.get_sblock(body.block.name_hint)


def top_blocks(sch: s_tir.Schedule) -> list[SBlockRV] | None:
    """Blocks directly under the root block (None when the function has no root block)."""
    root = root_block(sch)
    if root is None:
        return None
    return list(sch.get_child_blocks(root))


def iter_kinds(sch: s_tir.Schedule, block: SBlockRV) -> str:
    """``"SSSSRRR"``-style string of the block's iterator kinds (``O`` for anything else)."""
    kinds = {SPATIAL: "S", REDUCE: "R"}
    return "".join(kinds.get(iv.iter_type, "O") for iv in sch.get(block).iter_vars)


def is_spatial_block(sch: s_tir.Schedule, block: SBlockRV) -> bool:
    stmt = sch.get(block)
    return all(iv.iter_type == SPATIAL for iv in stmt.iter_vars) and stmt.init is None


def is_trivially_bound(sch: s_tir.Schedule, block: SBlockRV) -> bool:
    """True when each block iterator is bound to exactly one surrounding loop, in order."""
    realize = sch.get_sref(block)  # noqa: F841  (keeps the sref alive while we look)
    loops = sch.get_loops(block)
    stmt = sch.get(block)
    from tvm.s_tir.dlight.analysis.common_analysis import get_sblockrealize

    values = get_sblockrealize(sch, block).iter_values
    if len(values) != len(stmt.iter_vars) or len(loops) < len(values):
        return False
    loop_vars = [sch.get(lp).loop_var for lp in loops[len(loops) - len(values) :]]
    return all(v.same_as(lv) for v, lv in zip(values, loop_vars))


def _strip_cast(expr):
    while isinstance(expr, tirx.Cast):
        expr = expr.value
    return expr


def _index_vars(indices) -> list | None:
    """The indices as block variables when every index is a bare variable, else None."""
    out = []
    for idx in indices:
        if not isinstance(idx, tirx.Var):
            return None
        out.append(idx)
    return out


def _uses(expr, var) -> bool:
    found = False

    def visit(node):
        nonlocal found
        if node.same_as(var):
            found = True

    tvm_ffi.structural_walk(expr, [(tirx.Var, visit)])
    return found


def _linear(expr, var_list) -> list[int] | None:
    """Integer coefficients of ``expr`` in ``var_list`` plus the constant term, or None."""
    from tvm.sym.pattern import detect_linear_equation

    coeffs = detect_linear_equation(expr, var_list)
    if len(coeffs) != len(var_list) + 1:
        return None
    values = [as_int(c) for c in coeffs]
    if any(v is None for v in values):
        return None
    return values


@dataclass
class Conv2DInfo:
    """An NCHW 2-D convolution found in a PrimFunc (dense, grouped or depthwise)."""

    block: SBlockRV
    """The reduction ``out[n, f, y, x] += data[n, c, y*s + ry*d, x*s + rx*d] * w[f, c, ry, rx]``."""
    batch: int
    out_channels: int
    out_h: int
    out_w: int
    in_channels: int
    channels_per_group: int
    kernel_h: int
    kernel_w: int
    stride: tuple[int, int]
    dilation: tuple[int, int]
    data_index: int
    """Position of the data buffer in the block's reads (the weight is the other one)."""
    weight_index: int
    producers: list[SBlockRV] = field(default_factory=list)
    """Spatial blocks before the convolution (padding, a copy), to be inlined or computed at."""
    consumers: list[SBlockRV] = field(default_factory=list)
    """Spatial blocks after it (bias add, BatchNorm scale, activation, residual add)."""
    padded: bool = False
    """Whether a producer pads the input (its body is an ``if_then_else``)."""

    @property
    def groups(self) -> int:
        return self.in_channels // self.channels_per_group

    @property
    def out_channels_per_group(self) -> int:
        return self.out_channels // self.groups

    @property
    def is_depthwise(self) -> bool:
        return self.channels_per_group == 1 and self.groups == self.in_channels

    @property
    def is_pointwise(self) -> bool:
        """A 1×1 stride-1 convolution without padding: a GEMM over the flattened H·W axis."""
        return (
            self.kernel_h == 1 and self.kernel_w == 1 and self.stride == (1, 1) and not self.padded
        )

    @property
    def macs(self) -> int:
        return (
            self.batch
            * self.out_channels
            * self.out_h
            * self.out_w
            * self.channels_per_group
            * self.kernel_h
            * self.kernel_w
        )


def _has_if_then_else(stmt) -> bool:
    found = False

    def visit_call(node):
        nonlocal found
        if getattr(node.op, "name", "").endswith("if_then_else"):
            found = True

    def visit_select(node):
        nonlocal found
        found = True

    tvm_ffi.structural_walk(stmt, [(ir.Call, visit_call), (tirx.Select, visit_select)])
    return found


def match_conv2d_nchw(sch: s_tir.Schedule) -> Conv2DInfo | None:
    """Find the one NCHW conv2d reduction in the function, with its spatial producers/consumers.

    Declines (None) functions with more than one reduction block, symbolic shapes, non-NCHW
    layouts, or anything but spatial blocks around the convolution.
    """
    try:
        return _match_conv2d_nchw(sch)
    except Exception as exc:  # analysis must never take a build down
        log.debug("conv2d analysis failed: %s", exc)
        return None


def _match_conv2d_nchw(sch: s_tir.Schedule) -> Conv2DInfo | None:
    blocks = top_blocks(sch)
    if not blocks:
        return None
    reductions = [b for b in blocks if not is_spatial_block(sch, b)]
    if len(reductions) != 1:
        return None
    block = reductions[0]
    pos = blocks.index(block)
    for b in blocks:
        if b is not block and not is_spatial_block(sch, b):
            return None
        if len(sch.get_child_blocks(b)) > 0:
            return None
    stmt = sch.get(block)
    if iter_kinds(sch, block) != "SSSSRRR" or stmt.init is None:
        return None
    if len(stmt.writes) != 1 or len(stmt.reads) not in (2, 3):
        return None
    body = stmt.body
    if not isinstance(body, tirx.BufferStore):
        return None
    out_buf = body.buffer
    if len(out_buf.shape) != 4:
        return None
    n, f, y, x, rc, ry, rx = (iv.var for iv in stmt.iter_vars)
    extents = [as_int(iv.dom.extent) for iv in stmt.iter_vars]
    if any(e is None for e in extents):
        return None
    if _index_vars(body.indices) is None or [str(v) for v in body.indices] != [
        str(v) for v in (n, f, y, x)
    ]:
        return None
    value = body.value
    if not isinstance(value, tirx.Add):
        return None
    acc, prod = _strip_cast(value.a), _strip_cast(value.b)
    if isinstance(prod, ir.TensorLoad) and isinstance(acc, tirx.Mul):
        acc, prod = prod, acc
    if not (isinstance(acc, ir.TensorLoad) and acc.source.same_as(out_buf)):
        return None
    if not isinstance(prod, tirx.Mul):
        return None
    loads = [_strip_cast(prod.a), _strip_cast(prod.b)]
    if not all(isinstance(ld, ir.TensorLoad) and len(ld.indices) == 4 for ld in loads):
        return None
    # The weight is indexed exactly [f, rc, ry, rx]; the data by the other.
    weight = data = None
    for ld in loads:
        vars_ = _index_vars(ld.indices)
        if (
            vars_ is not None
            and [v.same_as(w) for v, w in zip(vars_, (f, rc, ry, rx))] == [True] * 4
        ):
            weight = ld
        else:
            data = ld
    if weight is None or data is None:
        return None
    d_n, d_c, d_y, d_x = data.indices
    if not (isinstance(d_n, tirx.Var) and d_n.same_as(n)):
        return None
    lin_y = _linear(d_y, [y, ry])
    lin_x = _linear(d_x, [x, rx])
    if lin_y is None or lin_x is None or lin_y[2] != 0 or lin_x[2] != 0:
        return None
    if _uses(d_c, y) or _uses(d_c, x) or _uses(d_y, x) or _uses(d_x, y):
        return None
    in_channels = as_int(data.source.shape[1])
    w_shape = [as_int(s) for s in weight.source.shape]
    if in_channels is None or any(s is None for s in w_shape):
        return None
    out_channels, cpg, kh, kw = w_shape
    if extents[1] != out_channels or extents[4] != cpg or (extents[5], extents[6]) != (kh, kw):
        return None
    if in_channels % cpg or out_channels % (in_channels // cpg):
        return None
    read_bufs = [r.source for r in stmt.reads]
    data_index = next(i for i, b in enumerate(read_bufs) if b.same_as(data.source))
    weight_index = next(i for i, b in enumerate(read_bufs) if b.same_as(weight.source))
    producers = blocks[:pos]
    consumers = blocks[pos + 1 :]
    padded = any(_has_if_then_else(sch.get(b).body) for b in producers)
    return Conv2DInfo(
        block=block,
        batch=extents[0],
        out_channels=out_channels,
        out_h=extents[2],
        out_w=extents[3],
        in_channels=in_channels,
        channels_per_group=cpg,
        kernel_h=kh,
        kernel_w=kw,
        stride=(lin_y[0], lin_x[0]),
        dilation=(lin_y[1], lin_x[1]),
        data_index=data_index,
        weight_index=weight_index,
        producers=producers,
        consumers=consumers,
        padded=padded,
    )


def inline_all(sch: s_tir.Schedule, blocks: list[SBlockRV], reverse: bool = False) -> list:
    """Inline as many of ``blocks`` as possible (compute_inline, or reverse when asked).

    Returns the blocks that could not be inlined.
    """
    left = list(blocks)
    progress = True
    while progress and left:
        progress = False
        for b in list(left):
            try:
                if reverse:
                    sch.reverse_compute_inline(b)
                else:
                    sch.compute_inline(b)
            except Exception:  # noqa: BLE001 - a block that cannot be inlined stays
                continue
            left.remove(b)
            progress = True
    return left


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def vectorize_last(sch: s_tir.Schedule, block: SBlockRV, lanes: int, max_whole: int = 2):
    """Vectorise the block's innermost loop: split by ``lanes`` when it divides, else the whole
    loop when it is at most ``max_whole`` vectors long (LLVM splits it), else leave it scalar."""
    loop = sch.get_loops(block)[-1]
    extent = int(sch.get(loop).extent)
    if extent % lanes == 0 and extent > lanes:
        _, inner = sch.split(loop, [None, lanes])
        sch.vectorize(inner)
    elif 1 < extent <= max_whole * lanes:
        sch.vectorize(loop)
