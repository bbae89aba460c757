"""Reductions over the innermost axes: global average pooling, sums, means, softmax.

Question this rule answers: *is every block either an elementwise block or a reduction whose
reduced axes are its innermost ones?* (``mean`` over H·W is ``SSSSRR``; softmax is a chain
``max(SR) → exp(SS) → sum(SR) → divide(SS)``.)

* Elementwise producers are inlined; the leading spatial axes (batch·channels for pooling) are
  fused and run ``parallel``; every other block is computed under that loop, so a pooled
  channel is read once and divided in registers.
* A reduced extent that is a multiple of the vector width is summed in ``V`` vector lanes
  (``rfactor``) and the lanes are added at the end; otherwise the loop stays scalar (unrolled)
  — for MobileNet's 7×7 pool that is 49 adds per channel, a few microseconds in total.
* A reduction across the contiguous axis (NHWC global pooling: ``x[n, h, w, c]`` summed over
  h, w) runs the other way round: vectors along the channels, the pixels in the loop, tasks
  owning whole cache lines of channels (:func:`_channels_last`) — or, for a global pool of 14
  rows or more, rows of the map, as its producer wrote them (:func:`_rows`).
* Multi-reduction chains (softmax) are handed to TVM dlight's CPU ``Reduction`` rule, which
  does the same parallel/compute-at structure for them.

``tunable`` is accepted and ignored (the only choice here is the vector width, which the target
fixes), and the tuner measures this rule's schedule alone (``searchable = False``).
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.s_tir.dlight.base import try_inline_contiguous_spatial
from tvm.s_tir.dlight.cpu import Reduction as DlightCpuReduction
from tvm.target import Target

from .base import CpuRule
from .target_params import cpu_params


def _reads_one_tensor(block) -> bool:
    """True when the block reduces a single input (sum/mean/max), not a product of two."""
    names_written = {w.source.name for w in block.writes}
    inputs = {r.source.name for r in block.reads if r.source.name not in names_written}
    return len(inputs) <= 1


def _leading_s(kind: str) -> int:
    return len(kind) - len(kind.lstrip("S"))


def _reduces_across_the_contiguous_axis(sch: s_tir.Schedule, block) -> bool:
    """True when the reduced input's innermost index is a spatial iterator (NHWC pooling: the
    mean over H·W of ``x[n, h, w, c]`` walks ``c``-contiguous rows, one channel per lane)."""
    stmt = sch.get(block)
    spatial = {iv.var for iv in stmt.iter_vars if iv.iter_type == tirx.IterVar.DataPar}
    written = {w.source.name for w in stmt.writes}
    for region in stmt.reads:
        if region.source.name in written:
            continue
        last = region.region[-1]
        return isinstance(last.min, tirx.Var) and last.min in spatial and int(last.extent) == 1
    return False


def _channels_last(sch: s_tir.Schedule, block, after, lanes: int):
    """Vectors along the contiguous (channel) axis, the reduction over pixels outside them:
    every pixel's channels are one contiguous load, where a channel at a time would read one
    float per cache line. Each task owns a whole 64-byte line of channels (two AVX2 vectors)
    so that no line is fetched by two tasks."""
    n_s = sum(1 for iv in sch.get(block).iter_vars if iv.iter_type == tirx.IterVar.DataPar)
    loops = sch.get_loops(block)
    s_loops, r_loops = loops[:n_s], loops[n_s:]
    channels = int(sch.get(s_loops[-1]).extent)
    # whole 64-byte lines, else whole registers, else 256-bit halves (24 channels on AVX-512)
    widths = (64 // 4, 2 * lanes, lanes, lanes // 2)
    width = next((w for w in widths if w >= min(lanes, 8) and channels % w == 0), 0)
    if not width:
        return None
    lanes = min(lanes, width)
    extents = [sch.get(loop).extent for loop in s_loops[:-1]]
    global_pool = all(isinstance(e, tirx.IntImm) and int(e) == 1 for e in extents)
    if global_pool and len(r_loops) == 2 and _split_rows(sch, r_loops[0]):
        return _rows(sch, block, after, width, lanes)
    # The channel loop is split on its own, so that a vector's pixel is the outer loop's (a
    # scalar: a window's padding test stays one branch, not a lane-wise select of gathers).
    *pixels, channel = s_loops
    co, sv = sch.split(channel, [None, width])
    so = sch.fuse(*pixels, co) if pixels else co
    r = sch.fuse(*r_loops) if len(r_loops) > 1 else r_loops[0]
    sch.reorder(so, r, sv)
    _vector_lanes(sch, sv, lanes)
    if int(sch.get(so).extent) > 1:
        sch.parallel(so)
    _epilogue_under(sch, after, so, lanes)
    # after vectorize and parallel, which need the init/update pair still one block
    sch.decompose_reduction(block, r)
    return sch


# Below this many rows the tasks split the channels instead: 7 rows do not share well between
# cores (MobileNet's 7×7 maps: 5.4 against 3.2 µs for 1152 channels, measured in isolation).
MIN_ROWS_TO_SPLIT = 14


def _split_rows(sch: s_tir.Schedule, rows) -> bool:
    extent = sch.get(rows).extent
    return isinstance(extent, tirx.IntImm) and int(extent) >= MIN_ROWS_TO_SPLIT


def _rows(sch: s_tir.Schedule, block, after, width: int, lanes: int):
    """Tasks own rows of the map, each summing its rows into partial sums of its own
    (``rfactor`` over the rows) with a whole line of channels in registers; one short loop then
    adds the rows' partials.

    Split by channels, each core reads every row, and half of each row was written by the other
    core: a pool reads the map its producer has just written, and the producers split rows. In
    isolation too, rows are the faster split from 14×14 up (EfficientNet-B0's pools, 2 threads:
    112²×32 10.7 against 15.8 µs, 28²×240 5.6 against 12.0)."""
    rows = sch.get_loops(block)[-2]
    rf = sch.rfactor(rows, factor_axis=0)
    *spatial, row, pixel = sch.get_loops(rf)
    co, sv = sch.split(spatial[-1], [None, width])
    sch.reorder(row, *spatial[:-1], co, pixel, sv)
    sch.parallel(row)
    _vector_lanes(sch, sv, lanes)
    sch.decompose_reduction(rf, pixel)
    *spatial, row = sch.get_loops(block)
    co, sv = sch.split(spatial[-1], [None, width])
    sch.reorder(co, row, sv)
    _vector_lanes(sch, sv, lanes)
    _epilogue_under(sch, after, co, lanes)
    sch.decompose_reduction(block, row)
    return sch


def _epilogue_under(sch: s_tir.Schedule, after, loop, lanes: int) -> None:
    """The block after the reduction (a mean's divide) under ``loop``, on vectors."""
    if after:
        epi = after[0].block_rv
        sch.reverse_compute_at(epi, loop, preserve_unit_loops=True)
        _vector_lanes(sch, sch.get_loops(epi)[-1], lanes)


def _vector_lanes(sch: s_tir.Schedule, loop, lanes: int) -> None:
    outer, inner = sch.split(loop, [None, lanes])
    sch.unroll(outer)
    sch.vectorize(inner)


class Reduction(CpuRule):
    """Parallel-over-rows reduction with vector partial sums when the row length allows.

    Not searched by the tuner (``searchable``): timed alone, on a map no core has just
    written, MetaSchedule's schedules for EfficientNet-B0's pools beat this rule's, and in the
    model they were 3× slower than its row split (63 against 21 µs for the first pool)."""

    searchable = False

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool):
        if not self.is_target_available(target) or not isinstance(func, tirx.PrimFunc):
            return None
        sch = s_tir.Schedule(func)
        infos = normalize_prim_func(sch)
        if not infos:
            return None
        infos = try_inline_contiguous_spatial(sch, infos)
        if not infos:
            return None
        reds = [bi for bi in infos if not bi.is_injective()]
        if not reds:
            return None
        for bi in reds:
            kind = bi.dom_kind()
            n_s = _leading_s(kind)
            if n_s == 0 or set(kind[n_s:]) != {"R"}:
                return None
        if len(reds) > 1:
            # softmax / layer-norm style chains: dlight's CPU rule knows those
            return DlightCpuReduction().apply(func, target, tunable)
        red = reds[0]
        if not _reads_one_tensor(sch.get(red.block_rv)):
            return None  # a contraction (conv, matmul) is not a plain reduction
        idx = infos.index(red)
        after = infos[idx + 1 :]
        if infos[:idx] or len(after) > 1:
            return None
        lanes = cpu_params(target).lanes("float32")
        block = red.block_rv
        if _reduces_across_the_contiguous_axis(sch, block):
            done = _channels_last(sch, block, after, lanes)
            if done is not None:
                return done  # else (channels no whole vector) the scalar loop below
        loops = sch.get_loops(block)
        kind = red.dom_kind()
        n_s = _leading_s(kind)
        s_loops, r_loops = loops[:n_s], loops[n_s:]
        spatial = sch.fuse(*s_loops) if len(s_loops) > 1 else s_loops[0]
        r = sch.fuse(*r_loops) if len(r_loops) > 1 else r_loops[0]
        r_ext = sch.get(r).extent
        r_ext = int(r_ext) if isinstance(r_ext, tirx.IntImm) else None
        s_ext = sch.get(spatial).extent
        if isinstance(s_ext, tirx.IntImm) and int(s_ext) > 1:
            sch.parallel(spatial)
        if after:
            epi = after[0].block_rv
            sch.reverse_compute_at(epi, spatial, preserve_unit_loops=True)
        if r_ext is not None and r_ext % lanes == 0 and r_ext >= 2 * lanes:
            ro, ri = sch.split(r, [None, lanes])
            out_ndim = len(sch.get(block).writes[0].source.shape)
            rf = sch.rfactor(ri, factor_axis=out_ndim)  # lanes last: contiguous partial sums
            sch.compute_at(rf, spatial, preserve_unit_loops=True)
            rf_loops = sch.get_loops(rf)
            kinds = [iv.iter_type for iv in sch.get(rf).iter_vars]
            n_iter = len(kinds)
            own = rf_loops[-n_iter:]
            # the rf block iterates (lanes, spatial..., ro): lanes first, ro last
            lane_loop, ro_loop = own[0], own[-1]
            sch.reorder(ro_loop, lane_loop)
            sch.vectorize(lane_loop)
            sch.decompose_reduction(rf, ro_loop)
        elif r_ext is not None and r_ext <= 64:
            sch.unroll(r)
        else:
            sch.annotate(r, "pragma_auto_unroll_max_step", 16)
            sch.annotate(r, "pragma_unroll_explicit", 1)
        return sch
