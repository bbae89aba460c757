"""Dense and grouped NCHW convolution (pointwise 1×1, the 3×3 stem, ShuffleNet's grouped convs).

Question this rule answers: *is the function one NCHW conv2d (groups < in_channels, so not
depthwise) with only elementwise work around it?* If so, it register-tiles the output:

* **pointwise** (1×1, stride 1, no padding) is a GEMM ``out[F, H·W] = W[F, C] · in[C, H·W]``;
  ``y`` and ``x`` are fused into one contiguous ``hw`` axis (block and buffer layouts are
  rewritten so the vector loads stay contiguous) — the rest of the rule treats a conv with a
  kernel or a stride the same way on its ``x`` axis;
* two register tilings, picked by which axis divides into whole vectors:

  - **spatial-vector**: accumulators ``Tf`` output channels × ``Tx`` vectors of ``V`` pixels;
    each step broadcasts one weight and loads ``Tx`` input vectors. Used when ``H·W`` (or
    ``W``) is a multiple of ``V`` (MobileNet's 112², 56², 28² layers).
  - **channel-vector**: accumulators ``Th`` pixels × ``k`` vectors of ``V`` output channels;
    each step broadcasts one input pixel and loads ``k`` weight vectors from a copy of the
    weights packed ``[C·KH·KW, Tfv]`` per parallel task. Used when ``H·W`` has no such multiple
    (14², 7², where a spatial vector would run with masked or scalar tails) and ``F`` has.

* the reduction (``C``, ``KH``, ``KW``) runs outside the register tile, so the tile stays in
  registers across the whole reduction (an accumulator buffer in ``local`` scope, fully unrolled
  and vectorised, which LLVM promotes to registers);
* the fused epilogue (bias add, BatchNorm, ReLU6/h-swish/SiLU, residual add) is inlined into one
  block that is computed per tile straight from the accumulators: the conv output makes one trip
  to memory;
* padding is inlined into the loads; the outer tile loops are fused and run ``parallel``.

Tile sizes come from the target (``V = vector_bits / 32``, accumulator budget from the register
count), so one rule serves AVX-512, AVX2 and NEON. ``tunable=True`` samples the tile sizes with
``sample_categorical`` over divisors (the heuristic's choice is the default decision), so the
rule doubles as a MetaSchedule design space.
"""

from __future__ import annotations

from dataclasses import dataclass

from tvm import s_tir, tirx
from tvm.target import Target

from .analysis import Conv2DInfo, divisors, inline_all, match_conv2d_nchw, vectorize_last
from .base import CpuRule
from .injective import schedule_spatial_block
from .target_params import CpuParams, cpu_params

# Accumulator scope: "global" (None) keeps tiles under 1 KiB on the stack; TVM allocates any
# "local" buffer through TVMBackendAllocWorkspace, a heap call per parallel task.
ACC_SCOPE: str | None = None


@dataclass
class ConvTiles:
    variant: str  # "spatial" or "channel"
    vec: int  # vector lanes V
    tile_f: int  # spatial variant: output channels per tile (scalars); channel: lanes * k
    tile_s: int  # spatial variant: pixels per tile (Tx * V); channel: pixels per tile (Th)
    par_split: int = 1  # channel variant: split of the spatial axis into parallel chunks


def _best(cands, key):
    return max(cands, key=key) if cands else None


def choose_tiles(info: Conv2DInfo, params: CpuParams, fuse_hw: bool) -> ConvTiles:
    """Heuristic register tiles; measured on AVX-512 over MobileNetV2's layers (see README)."""
    lanes = params.lanes("float32")
    budget = params.accumulator_regs
    spatial = info.out_h * info.out_w if fuse_hw else info.out_w
    f_total = info.out_channels
    fg = info.out_channels_per_group
    cores = params.num_cores

    # spatial-vector: whole vectors along the pixels, when the input loads are plain vectors too
    contiguous = info.stride[1] == 1 and not info.padded
    if spatial % lanes == 0 and (contiguous or fg % lanes):
        best = None
        for tx in (1, 2, 3, 4):
            if spatial % (tx * lanes):
                continue
            for tf in divisors(f_total):
                if tf > 16 or tf * tx > min(budget, 24):
                    continue
                score = (tf * tx, tx)
                if best is None or score > best[0]:
                    best = (score, tf, tx)
        if best is not None:
            return ConvTiles("spatial", lanes, best[1], best[2] * lanes)
    # channel-vector: whole vectors along the output channels (within one group)
    if fg % lanes == 0:
        best = None
        for k in (1, 2, 3, 4):
            if fg % (k * lanes):
                continue
            for th in divisors(spatial):
                if th > 16 or th * k > budget:
                    continue
                tasks = f_total // (k * lanes)
                balance = 1.0 if tasks % cores == 0 or tasks >= 8 * cores else 0.8
                score = (balance * min(th * k, 21), th >= 4, k)
                if best is None or score > best[0]:
                    best = (score, k, th)
        if best is not None:
            k, th = best[1], best[2]
            tasks = f_total // (k * lanes)
            par = 1
            if tasks < 2 * cores:
                for p in (2, 4):
                    if (spatial // th) % p == 0 and tasks * p >= 2 * cores:
                        par = p
                        break
            return ConvTiles("channel", lanes, k * lanes, th, par)
    # neither divides: spatial-vector over the largest divisor of the pixel axis ≤ 2 vectors
    ls = [d for d in divisors(spatial) if d <= 2 * lanes]
    tile_s = max(ls)
    n_vec = -(-tile_s // lanes)
    tfs = [d for d in divisors(f_total) if d <= 16 and d * n_vec <= budget]
    return ConvTiles("spatial", lanes, max(tfs), tile_s)


def _prepare(sch: s_tir.Schedule, info: Conv2DInfo):
    """Inline copies and the epilogue chain.

    Returns ``(epilogue, pad, broadcast)``: the one block that writes the conv's result, the
    padding block kept to be computed per parallel task (None when the "padding" is a plain copy
    that inlines away), and the block of a broadcast tail (None if there is none).
    ``(None, None, None)`` declines.
    """
    conv = info.block
    from .analysis import _has_if_then_else

    pads = [b for b in info.producers if _has_if_then_else(sch.get(b).body)]
    if len(pads) > 1 or inline_all(sch, [b for b in info.producers if b not in pads]):
        return None, None, None
    pad = pads[0] if pads else None
    expect = [info.batch, info.out_channels, info.out_h, info.out_w]

    def same_domain(block) -> bool:
        stmt = sch.get(block)
        doms = [int(iv.dom.extent) for iv in stmt.iter_vars]
        shape = [int(s) for s in stmt.writes[0].source.shape] if len(stmt.writes) == 1 else []
        return doms == expect and shape == expect and len(sch.get_loops(block)) == 4

    consumers = list(info.consumers)
    # consumers over the conv's own domain form its epilogue; a tail over a larger domain
    # (SE: ``x * gate`` broadcasts the gate over H×W) is inlined into one block that is
    # scheduled as elementwise work after the convolution
    n_same = 0
    while n_same < len(consumers) and same_domain(consumers[n_same]):
        n_same += 1
    own, tail = consumers[:n_same], consumers[n_same:]
    broadcast = None
    if tail:
        left = inline_all(sch, tail[:-1])
        if left:
            return None, None, None
        broadcast = tail[-1]
    if not own:
        return sch.cache_write(conv, 0, "global"), pad, broadcast
    if inline_all(sch, own[:-1]):
        return None, None, None
    return own[-1], pad, broadcast


class Conv2D(CpuRule):
    """Register-tiled NCHW conv2d (not depthwise) with its elementwise epilogue fused."""

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool):
        if not self.is_target_available(target) or not isinstance(func, tirx.PrimFunc):
            return None
        sch = s_tir.Schedule(func)
        info = match_conv2d_nchw(sch)
        if info is None or info.is_depthwise or info.batch < 1:
            return None
        if str(sch.get(info.block).writes[0].source.dtype) not in ("float32", "float16"):
            return None
        params = cpu_params(target)
        epilogue, pad, broadcast = _prepare(sch, info)
        if epilogue is None:
            return None
        fuse_hw = info.is_pointwise
        tiles = choose_tiles(info, params, fuse_hw)
        if tiles.variant == "channel":
            par = schedule_channel_vector(sch, info, epilogue, tiles, fuse_hw, tunable)
        else:
            par = schedule_spatial_vector(sch, info, epilogue, tiles, fuse_hw, tunable, params)
        if pad is not None:
            # pad only the rows this task reads, in cache, instead of testing bounds per load
            sch.compute_at(pad, par, preserve_unit_loops=True)
            vectorize_last(sch, pad, params.lanes("float32"))
        if broadcast is not None:
            schedule_spatial_block(sch, broadcast, params)
        return sch


def _flatten_hw(sch, info: Conv2DInfo, epilogue, channel_last: bool):
    """Rewrite conv and epilogue to iterate one fused ``hw`` axis (1×1 stride-1 convs)."""
    w = info.out_w
    conv = info.block
    if channel_last:
        sch.transform_layout(conv, ("write", 0), lambda n, f, y, x: (n, y * w + x, f))
        sch.transform_block_layout(conv, lambda n, f, y, x, rc, ry, rx: (n, y * w + x, f, rc))
        sch.transform_block_layout(epilogue, lambda n, f, y, x: (n, y * w + x, f))
    else:
        sch.transform_layout(conv, ("write", 0), lambda n, f, y, x: (n, f, y * w + x))
        sch.transform_block_layout(conv, lambda n, f, y, x, rc, ry, rx: (n, f, y * w + x, rc))
        sch.transform_block_layout(epilogue, lambda n, f, y, x: (n, f, y * w + x))


def _tile(sch, tunable: bool, candidates: list[int], chosen: int):
    """A tile factor for ``split``: the heuristic's int, or (tunable) a ``sample_categorical``
    random variable over ``candidates`` whose default decision is the heuristic's choice."""
    if chosen not in candidates:
        candidates = sorted({*candidates, chosen})
    if not tunable or len(candidates) < 2:
        return chosen
    probs = [1.0 / len(candidates)] * len(candidates)
    return sch.sample_categorical(candidates, probs, decision=candidates.index(chosen))


def schedule_spatial_vector(
    sch, info: Conv2DInfo, epilogue, tiles: ConvTiles, fuse_hw, tunable, params: CpuParams
):
    conv = info.block
    lanes = tiles.vec
    if fuse_hw:
        _flatten_hw(sch, info, epilogue, channel_last=False)
        n, f, s, rc = sch.get_loops(conv)
        outer_spatial, red = [n], [rc]
        s_extent = info.out_h * info.out_w
    else:
        n, f, y, s, rc, ry, rx = sch.get_loops(conv)
        outer_spatial, red = [n, y], [rc, ry, rx]
        s_extent = info.out_w
    tile_f = _tile(sch, tunable, [d for d in divisors(info.out_channels) if d <= 16], tiles.tile_f)
    fo, fi = sch.split(f, [None, tile_f])
    if tiles.tile_s % lanes == 0:
        n_vec = _tile(
            sch,
            tunable,
            [t for t in (1, 2, 3, 4) if s_extent % (t * lanes) == 0],
            tiles.tile_s // lanes,
        )
        so, si_o, si_i = sch.split(s, [None, n_vec, lanes])
        inner = [si_o, si_i]
    else:
        so, si_i = sch.split(s, [None, tiles.tile_s])
        inner = [si_i]
    sch.reorder(*outer_spatial, so, fo, *red, fi, *inner)
    par = sch.fuse(*outer_spatial, so, fo)
    sch.parallel(par)
    if ACC_SCOPE:
        sch.set_scope(conv, 0, ACC_SCOPE)
    sch.reverse_compute_at(epilogue, par, preserve_unit_loops=True)
    sch.unroll(fi)
    for lp in inner[:-1]:
        sch.unroll(lp)
    sch.vectorize(inner[-1])
    init = sch.decompose_reduction(conv, red[0])
    vectorize_last(sch, init, lanes)
    vectorize_last(sch, epilogue, lanes)
    return par


def schedule_channel_vector(sch, info: Conv2DInfo, epilogue, tiles: ConvTiles, fuse_hw, tunable):
    conv = info.block
    lanes = tiles.vec
    if fuse_hw:
        _flatten_hw(sch, info, epilogue, channel_last=True)
        n, s, f, rc = sch.get_loops(conv)
        outer_spatial, red = [n], [rc]
        s_extent = info.out_h * info.out_w
    else:
        # make the accumulator [n, y, x, f] so that the f vector is contiguous in it
        sch.transform_layout(conv, ("write", 0), lambda n, f, y, x: (n, y, x, f))
        n, f, y, s, rc, ry, rx = sch.get_loops(conv)
        outer_spatial, red = [n, y], [rc, ry, rx]
        s_extent = info.out_w
    fg = info.out_channels_per_group
    k_vec = _tile(
        sch, tunable, [k for k in (1, 2, 3, 4) if fg % (k * lanes) == 0], tiles.tile_f // lanes
    )
    tile_s = _tile(sch, tunable, [d for d in divisors(s_extent) if d <= 16], tiles.tile_s)
    # the parallel split of the pixel axis must divide whatever tile_s is sampled
    par_split = tiles.par_split
    if tunable:
        par_split = 1
    fo, fi_o, fi_i = sch.split(f, [None, k_vec, lanes])
    sp, so, si = sch.split(s, [par_split, None, tile_s])
    sch.reorder(*outer_spatial, sp, fo, so, *red, si, fi_o, fi_i)
    par = sch.fuse(*outer_spatial, sp, fo)
    sch.parallel(par)
    if ACC_SCOPE:
        sch.set_scope(conv, 0, ACC_SCOPE)
    sch.reverse_compute_at(epilogue, so, preserve_unit_loops=True)
    sch.unroll(si)
    sch.unroll(fi_o)
    sch.vectorize(fi_i)
    # pack this task's weights [Tfv, C, KH, KW] -> [C, KH, KW, Tfv] once per parallel task
    wcache = sch.cache_read(conv, info.weight_index, "global")
    sch.transform_layout(wcache, ("write", 0), lambda f, c, kh, kw: (c, kh, kw, f))
    sch.compute_at(wcache, par, preserve_unit_loops=True)
    # copy with the reduction axes outside: each read line is reused for all Tfv rows while
    # the writes stay contiguous (the other order makes every write a new cache line)
    w_loops = sch.get_loops(wcache)[-4:]
    sch.reorder(*w_loops[1:], w_loops[0])
    init = sch.decompose_reduction(conv, red[0])
    sch.vectorize(sch.get_loops(init)[-1])
    return par
