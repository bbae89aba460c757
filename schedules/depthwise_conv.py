"""Depthwise NCHW convolution (groups == in_channels, any channel multiplier, any K×K, stride).

Question this rule answers: *is the function one NCHW conv2d whose every output channel reads a
single input channel?* If so:

* output tile = ``Ty`` rows × ``L`` columns of one channel, ``L`` along ``x`` in vectors of ``V``
  lanes (the whole row when it is short), accumulators in registers;
* the ``KH×KW`` window is fully unrolled inside the tile: each step is a broadcast weight times
  a vector of the padded input row;
* padding is computed per tile into a small row buffer (``Ty·s + KH − 1`` rows) instead of
  materialising the whole padded tensor; for stride 2 that buffer is stored **deinterleaved**
  (even columns, then odd columns), so every input vector load is contiguous instead of a
  stride-2 gather;
* the fused epilogue (bias, activation) is applied per tile straight from the accumulators;
* ``parallel`` over (batch, channel, row-tiles).

Why this is memory-bound work: a 3×3 depthwise layer does 9 multiply-adds per output and moves
≈ 8 bytes per output (read one input, write one output), ≈ 2.25 FLOP/byte; the rule aims at
touching each input and output byte once. NCHW keeps the vector along ``x``, which wastes lanes
when ``W`` is small (7, 14); a blocked NCHWc layout (a later change) fixes that.

``tunable=True`` samples ``Ty`` (rows per tile) around the heuristic.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.target import Target

from .analysis import Conv2DInfo, divisors, inline_all, match_conv2d_nchw, vectorize_last
from .base import CpuRule
from .target_params import CpuParams, cpu_params


def _row_tile(info: Conv2DInfo, params: CpuParams) -> tuple[int, int, int]:
    """(vector lanes, rows per tile, columns per tile).

    The vector is the widest power of two (up to the register width) that divides the output
    width, so that no vector is ragged: ragged (non-power-of-two) vectors are split by LLVM into
    scalar inserts, several times slower. The accumulator tile stays under 1 KiB, so it lives
    on the stack (and in registers) rather than in a heap workspace per task.
    """
    lanes = params.lanes("float32")
    ow, oh = info.out_w, info.out_h
    vec = lanes
    while ow % vec:
        vec //= 2
    cols = max(d for d in divisors(ow) if d % vec == 0 and d <= 8 * vec)
    n_vec = cols // vec
    rows = 1
    for r in (2, 1):
        if oh % r == 0 and r * n_vec <= params.accumulator_regs and r * cols * 4 < 1024:
            rows = r
            break
    return vec, rows, cols


class DepthwiseConv2D(CpuRule):
    """Row-tiled, vectorised NCHW depthwise convolution with padding per tile."""

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool):
        if not self.is_target_available(target) or not isinstance(func, tirx.PrimFunc):
            return None
        sch = s_tir.Schedule(func)
        info = match_conv2d_nchw(sch)
        if info is None or not info.is_depthwise:
            return None
        params = cpu_params(target)
        conv = info.block
        # padding producers stay (computed per tile); copies are inlined
        pads = [b for b in info.producers if _is_pad(sch, b)]
        if inline_all(sch, [b for b in info.producers if b not in pads]):
            return None
        if len(pads) > 1:
            return None
        epilogue = _prepare_epilogue(sch, info)
        if epilogue is None:
            return None
        lanes, rows, cols = _row_tile(info, params)
        if tunable:
            cands = sorted({rows, *(d for d in divisors(info.out_h) if d <= 4)})
            if len(cands) > 1:
                rows = sch.sample_categorical(
                    cands, [1.0 / len(cands)] * len(cands), decision=cands.index(rows)
                )
        n, c, y, x, rc, ry, rx = sch.get_loops(conv)
        yo, yi = sch.split(y, [None, rows])
        if cols % lanes == 0 and cols > lanes:
            xo, xi_o, xi_i = sch.split(x, [None, cols // lanes, lanes])
            x_inner = [xi_o, xi_i]
        else:
            xo, xi_i = sch.split(x, [None, cols])
            x_inner = [xi_i]
        sch.reorder(n, c, yo, xo, rc, ry, rx, yi, *x_inner)
        # one parallel task per channel plane: its padding is computed once, in cache
        par = sch.fuse(n, c)
        sch.parallel(par)
        sch.reverse_compute_at(epilogue, xo, preserve_unit_loops=True)
        for lp in (ry, rx, yi, *x_inner[:-1]):
            sch.unroll(lp)
        sch.vectorize(x_inner[-1])
        init = sch.decompose_reduction(conv, rc)
        vectorize_last(sch, init, lanes, max_whole=4)
        vectorize_last(sch, epilogue, lanes, max_whole=4)
        if pads:
            pad = pads[0]
            padded_w = int(sch.get(pad).writes[0].source.shape[3])
            if info.stride[1] == 2 and padded_w % 2 == 0:
                # deinterleave columns (w -> [w % 2, w // 2]) so that the stride-2 input
                # vectors of the window become contiguous loads
                sch.transform_layout(
                    pad, ("write", 0), lambda n_, c_, h, w: (n_, c_, h, w % 2, w // 2)
                )
                sch.transform_block_layout(pad, lambda n_, c_, h, w: (n_, c_, h, w % 2, w // 2))
            sch.compute_at(pad, par, preserve_unit_loops=True)
            vectorize_last(sch, pad, lanes, max_whole=4)
        return sch


def _is_pad(sch, block) -> bool:
    from .analysis import _has_if_then_else

    return _has_if_then_else(sch.get(block).body)


def _prepare_epilogue(sch, info: Conv2DInfo):
    consumers = list(info.consumers)
    if not consumers:
        return sch.cache_write(info.block, 0, "global")
    *middle, last = consumers
    if inline_all(sch, middle):
        return None
    stmt = sch.get(last)
    expect = [info.batch, info.out_channels, info.out_h, info.out_w]
    doms = [int(iv.dom.extent) for iv in stmt.iter_vars]
    if len(stmt.writes) != 1 or doms != expect or len(sch.get_loops(last)) != 4:
        return None
    if [int(s) for s in stmt.writes[0].source.shape] != expect:
        return None
    return last
