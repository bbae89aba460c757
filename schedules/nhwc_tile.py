"""The one mechanism behind our separable operators' rules: an NHWC output register tile.

Every operator of :mod:`sepconv.compiler.sepconv_ops` writes ``out[n, h, w, o]`` with the channel
axis innermost, so every rule (depthwise, pointwise, dense conv, fused depthwise→pointwise) tiles
its output the same way and differs only in the reduction it runs inside the tile:

    parallel (n, h[, w-tiles])            one output row per task
      for w-tile, o-tile                  P pixels × k vectors of V channels
        for reduction (kh, kw | c)        outside the register tile: accumulators stay put
          for p < P, j < k: vector FMA    P·k accumulators in registers, V lanes each
        epilogue (bias, activation, residual) straight from the accumulators

Pointwise convs are GEMMs and use :func:`tile_gemm`, the same tile over the flattened pixels (so
P need not divide the row) with the weight panels or the pixel tiles outermost.

``V`` comes from the target (16 fp32 lanes on AVX-512, 8 on AVX2, 4 on NEON) and ``P·k`` from its
register count, so the same code serves every CPU target. Blocks are recognised by the names our
operators give them (``sepconv_dw``, ``sepconv_pw`` …), which survive FuseOps/FuseTIR.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tvm import s_tir
from tvm.s_tir.schedule import SBlockRV

from .analysis import as_int, divisors, inline_all, top_blocks
from .injective import schedule_spatial_block
from .target_params import CpuParams

# Pixels per tile the heuristic may choose; 7 divides every MobileNet/EfficientNet width at 224.
PIXEL_TILES = (8, 7, 6, 5, 4, 3, 2, 1)
# A broadcast epilogue's reduction (squeeze-and-excitation's expansion FC before the gate ×
# map) with at least this many MACs is split over the cores too. Serial, MobileNetV3-Large's
# 240 → 960 FC (0.9 MB of weights) left the other core idle for ~30 µs a call, and woke it for
# the gate's product after (Zen 4 VM: 52 → 35 µs a call in the model). Timed alone there,
# parallel was faster from V3-Small's 144 → 576 (83 k MACs: 5.4 → 4.7 µs warm) up, slower at
# its 20 k-MAC FC (2.4 → 3.0 µs) and even at B0's 55 k-MAC ones.
PARALLEL_REDUCTION_MACS = 1 << 16
# TVM puts a buffer under 1 KiB on the stack, where LLVM promotes it to registers; a larger
# accumulator tile goes to a heap workspace and every FMA becomes a load + store.
MAX_TILE_BYTES = 1023


def _fits(p: int, k: int, vec: int, params: CpuParams) -> bool:
    return p * k <= params.accumulator_regs and p * k * vec * 4 <= MAX_TILE_BYTES


@dataclass(frozen=True)
class OutputTile:
    vec: int  # channel lanes per vector (a power of two dividing the channel count)
    k: int  # vectors of channels per tile
    p: int  # pixels (along w) per tile

    @property
    def channels(self) -> int:
        return self.vec * self.k


def vector_lanes(channels: int, params: CpuParams) -> int:
    """Widest power-of-two vector (≤ the register) that divides ``channels``: no ragged tails."""
    vec = params.lanes("float32")
    while vec > 1 and channels % vec:
        vec //= 2
    return vec


def choose_tile(out_w: int, channels: int, params: CpuParams, max_k: int = 8) -> OutputTile:
    """Largest P·k accumulator tile that fits the registers, P dividing the row, k the channels.

    Ties prefer more pixels (P): each weight vector loaded is then reused across more pixels.
    """
    vec = vector_lanes(channels, params)
    best = OutputTile(vec, 1, 1)
    for p in (d for d in PIXEL_TILES if out_w % d == 0):
        for k in divisors(channels // vec):
            if k > max_k or not _fits(p, k, vec, params):
                continue
            if (p * k, p) > (best.p * best.k, best.p):
                best = OutputTile(vec, k, p)
    return best


def tile_candidates(out_w: int, channels: int, params: CpuParams, max_k: int = 8):
    """Every tile that fits the registers: the design space the tunable rules sample from."""
    vec = vector_lanes(channels, params)
    return [
        OutputTile(vec, k, p)
        for p in PIXEL_TILES
        if out_w % p == 0
        for k in divisors(channels // vec)
        if k <= max_k and _fits(p, k, vec, params)
    ]


# A GEMM tile runs over the flattened pixels, so its P need not divide the row; the tail tile
# is predicated.
GEMM_PIXEL_TILES = tuple(range(12, 0, -1))
# Bytes of one weight panel's reduction block kept in L1 (half of a 32 KiB L1d: the pixels'
# inputs need the other half).
L1_PANEL_BYTES = 16 * 1024


def padded_channels(channels: int, params: CpuParams) -> int:
    """The output channels a pointwise GEMM computes: ``channels`` when a vector of at least
    256 bits (or the whole register) divides them, else rounded up to two whole registers.

    ShuffleNet's 58 and 116 channels would otherwise run on 2- and 4-lane vectors (a quarter and
    a half of AVX2); zero weight columns cost 10 % more FMAs at full width instead, and only the
    real channels are stored (the last panel's epilogue is predicated)."""
    full = params.lanes("float32")
    if vector_lanes(channels, params) >= min(full, 8):
        return channels
    return -(-channels // (2 * full)) * 2 * full


def panel_width(channels: int, params: CpuParams) -> int:
    """Output channels per packed pointwise weight panel (:func:`sepconv_ops.pack_pointwise`):
    two vectors, the width of the GEMM micro-kernels CPU BLAS libraries use (6 × 16 floats on
    AVX2, MLAS's 12 × 32 on AVX-512), when two divide ``channels``; else one vector."""
    vec = vector_lanes(channels, params)
    return 2 * vec if channels % (2 * vec) == 0 else vec


@dataclass(frozen=True)
class GemmTile(OutputTile):
    """A pointwise GEMM tile over the flattened pixels, and its loop order.

    ``channels_outer``: each task owns a panel of output channels and runs every pixel tile
    against it, so the panel's weights are read from memory once and then from L1/L2 — the
    order when the weights outweigh the input (late layers: 7×7 and 14×14 maps with 512–1280
    channels). Otherwise each task owns a pixel tile and streams the (smaller) weights past it.
    ``reduction_block``: input channels per pass over a panel (0: all of them), so that one
    block of a panel stays in L1 while every pixel tile uses it.
    """

    channels_outer: bool = False
    reduction_block: int = 0


def choose_gemm_tile(pixels: int, in_channels: int, channels: int, params: CpuParams) -> GemmTile:
    """The micro-kernel of :func:`panel_width` (k = panel / V) with as many pixels as the
    accumulator registers hold; channels outer when the weights (C·O) outweigh the input (M·C)."""
    vec = vector_lanes(channels, params)
    k = panel_width(channels, params) // vec
    p = next(p for p in GEMM_PIXEL_TILES if _fits(p, k, vec, params))
    if pixels < p:  # a matrix-vector product (classifier, SE): independent chains along O
        p = pixels
        k = max(d for d in divisors(channels // vec) if d <= 8 and _fits(p, d, vec, params))
    outer = channels > pixels
    return GemmTile(vec, k, p, outer, _reduction_block(in_channels, k * vec) if outer else 0)


def gemm_tile_candidates(pixels: int, in_channels: int, channels: int, params: CpuParams):
    """Every GEMM tile that fits the registers, in both loop orders (the tunable space)."""
    vec = vector_lanes(channels, params)
    return [
        GemmTile(vec, k, p, outer, _reduction_block(in_channels, k * vec) if outer else 0)
        for outer in (False, True)
        for p in GEMM_PIXEL_TILES
        for k in divisors(channels // vec)
        if k <= 8 and _fits(p, k, vec, params)
    ]


def _reduction_block(in_channels: int, tile_channels: int) -> int:
    """Largest divisor of the input channels whose panel block fits L1 (0 if all of them do)."""
    limit = L1_PANEL_BYTES // (4 * tile_channels)
    if in_channels <= limit:
        return 0
    return max(d for d in divisors(in_channels) if d <= limit)


def gemm_dims(sch: s_tir.Schedule, block: SBlockRV) -> tuple[int, int, int]:
    """(pixels M, input channels C, output channels O) of a pointwise block ``[N, H, W, O]``
    or a linear layer's ``[M, O]``."""
    *rows, channels = _out_shape(sch, block)
    reduction = [iv for iv in sch.get(block).iter_vars if iv.iter_type == 2]
    return math.prod(rows), int(reduction[0].dom.extent), channels


def tile_gemm(
    sch: s_tir.Schedule,
    block: SBlockRV,
    epilogue: SBlockRV,
    tile: GemmTile,
    params: CpuParams,
):
    """Register-tile a pointwise ``block`` (loops n, h, w, o, c) as a GEMM over M = N·H·W pixels.

    The block, its output buffer and its epilogue are re-indexed by the flattened pixel, so a
    tile of P pixels may span rows (P = 6 on AVX2 although 7 and 14 are the row widths) and the
    epilogue covers exactly the tile. Returns the parallel loop.
    """
    if not _covers_block_pixels(sch, epilogue, block):
        return tile_output(sch, block, epilogue, tile, params)
    if len(_out_shape(sch, block)) == 4:
        n_, h_, w_, _ = _out_shape(sch, block)

        def pixel(n, h, w):
            return n * h_ * w_ + h * w_ + w

        sch.transform_layout(block, ("write", 0), lambda n, h, w, o: (pixel(n, h, w), o))
        sch.transform_block_layout(block, lambda n, h, w, o, c: (pixel(n, h, w), o, c))
        sch.transform_block_layout(epilogue, lambda n, h, w, o: (pixel(n, h, w), o))
    m, o, c = sch.get_loops(block)[-3:]
    mo, mi = sch.split(m, [None, tile.p])
    oo, ok, ov = sch.split(o, [None, tile.k, tile.vec])
    if tile.channels_outer and tile.reduction_block:
        co, ci = sch.split(c, [None, tile.reduction_block])
        sch.reorder(oo, co, mo, ci, mi, ok, ov)
        at, red = oo, co
    elif tile.channels_outer:
        sch.reorder(oo, mo, c, mi, ok, ov)
        at, red = mo, c
    else:
        sch.reorder(mo, oo, c, mi, ok, ov)
        at, red = oo, c
    sch.unroll(mi)
    sch.unroll(ok)
    if tile.vec > 1:
        sch.vectorize(ov)
    sch.reverse_compute_at(epilogue, at, preserve_unit_loops=True)
    vectorize_tail(sch, epilogue, tile)
    outer = oo if tile.channels_outer else mo
    sch.parallel(outer)
    init = sch.decompose_reduction(block, red)
    vectorize_tail(sch, init, tile)
    return outer


def named_blocks(sch: s_tir.Schedule) -> dict[str, SBlockRV] | None:
    """Top-level blocks by name; None when the function has nested blocks (not ours)."""
    blocks = top_blocks(sch)
    if blocks is None:
        return None
    return {sch.get(b).name_hint: b for b in blocks}


def sample_tile(sch: s_tir.Schedule, cands: list[OutputTile], default: OutputTile):
    """Pick a tile: the default, or with ``sch`` in tuning mode a sampled one (as ints)."""
    if default not in cands:
        cands = [default, *cands]
    index = cands.index(default)
    pick = sch.sample_categorical(
        list(range(len(cands))), [1.0 / len(cands)] * len(cands), decision=index
    )
    return cands[int(sch.get(pick))]


def output_epilogue(sch: s_tir.Schedule, main: SBlockRV, after: list[SBlockRV]) -> SBlockRV:
    """Inline the elementwise blocks after ``main`` into the last one, which writes the output.

    Without any, a cache-write stage becomes the epilogue, so the reduction still accumulates in
    a tile-sized buffer rather than in the output tensor.
    """
    if not after:
        return sch.cache_write(main, 0, "global")
    *middle, last = after
    left = inline_all(sch, middle)
    if left:
        left = inline_all(sch, left, reverse=True)
    if left:
        raise ValueError(f"epilogue blocks could not be inlined: {left}")
    return last


def tile_output(
    sch: s_tir.Schedule,
    block: SBlockRV,
    epilogue: SBlockRV | None,
    tile: OutputTile,
    params: CpuParams,
    parallel: bool = True,
    unroll_reduction: bool = True,
    split_channels: bool = True,
):
    """Register-tile ``block`` (loops n, h, w, o, *reduction) as the module docstring draws it.

    Returns the parallel loop so that a caller can compute a producer there (the fused rule
    computes one depthwise row per task, and passes ``split_channels=False`` so that a task
    never holds only part of a row's channels — that would recompute the row per part).
    """
    if epilogue is not None and not _covers_block_pixels(sch, epilogue, block):
        # a broadcast epilogue (squeeze-and-excitation's gate × feature map): the small
        # reduction runs once, the large elementwise product is parallelised on its own
        split = _reduction_macs(sch, block) >= PARALLEL_REDUCTION_MACS
        tile_output(sch, block, None, tile, params, parallel=split)
        schedule_spatial_block(sch, epilogue, params)
        return None
    n_red = sum(1 for iv in sch.get(block).iter_vars if iv.iter_type == 2)  # CommReduce
    n, h, w, o, *red = sch.get_loops(block)[-(4 + n_red) :]
    wo, wi = sch.split(w, [None, tile.p])
    oo, ok, ov = sch.split(o, [None, tile.k, tile.vec])
    sch.reorder(n, h, wo, oo, *red, wi, ok, ov)
    for lp in (wi, ok):
        sch.unroll(lp)
    if unroll_reduction:
        for lp in red:
            if (as_int(sch.get(lp).extent) or 99) <= 7:
                sch.unroll(lp)
    if tile.vec > 1:
        sch.vectorize(ov)
    if epilogue is not None:
        sch.reverse_compute_at(epilogue, oo, preserve_unit_loops=True)
        vectorize_tail(sch, epilogue, tile)
    row = parallel_rows(sch, n, h, wo, oo, params, split_channels) if parallel else h
    if red:
        # after parallel: the init/update pair is not a "complete" block that parallel accepts
        init = sch.decompose_reduction(block, red[0])
        vectorize_tail(sch, init, tile)
    return row


def parallel_rows(sch, n, h, wo, oo, params: CpuParams, split_channels: bool = True):
    """Fuse n, h (and, while there are fewer than 4 tasks per core — 7×7 maps have only 7
    rows —, the pixel tiles, then the channel tiles) into the parallel loop."""
    row = sch.fuse(n, h)
    for more in (wo, oo) if split_channels else (wo,):
        if (as_int(sch.get(row).extent) or 1) >= 4 * params.num_cores:
            break
        row = sch.fuse(row, more)
    sch.parallel(row)
    return row


def _reduction_macs(sch: s_tir.Schedule, block: SBlockRV) -> int:
    """Multiply-adds of a reduction block: its iteration domain's size."""
    return math.prod(as_int(iv.dom.extent) or 1 for iv in sch.get(block).iter_vars)


def _out_shape(sch: s_tir.Schedule, block: SBlockRV) -> list[int]:
    return [int(x) for x in sch.get(block).writes[0].source.shape]


def out_dims(sch: s_tir.Schedule, block: SBlockRV) -> tuple[int, int]:
    """An NHWC block's output width and channels: what its register tile is chosen from."""
    _, _, out_w, channels = _out_shape(sch, block)
    return out_w, channels


def _covers_block_pixels(sch: s_tir.Schedule, epilogue: SBlockRV, block: SBlockRV) -> bool:
    """The epilogue writes the block's pixels and its channels or a prefix of them (the real
    channels of a padded GEMM, :data:`.block_names.PW_CROP`) — not a broadcast of it."""
    out, ours = _out_shape(sch, epilogue), _out_shape(sch, block)
    return out[:-1] == ours[:-1] and out[-1] <= ours[-1]


def partition_padded_tiles(sch: s_tir.Schedule, block: SBlockRV, epilogue: SBlockRV, loop) -> None:
    """A padded GEMM's epilogue stores only the real channels, so its loop over channel tiles
    carries a predicate — and TVM scalarizes every tile's vectorized epilogue for it. The hint
    has TVM's LoopPartition peel the last tile: the whole ones run unpredicated vectors
    (``tests/compiler/test_tvm_compat.py`` checks both halves of that)."""
    if _out_shape(sch, epilogue)[-1] < _out_shape(sch, block)[-1]:
        sch.annotate(loop, "pragma_loop_partition_hint", 1)


def vectorize_tail(sch: s_tir.Schedule, block: SBlockRV, tile: OutputTile) -> None:
    """The block's last loop covers a P × k·V tile: split it into k vectors of V lanes."""
    loops = sch.get_loops(block)
    pix, ch = loops[-2], loops[-1]
    extent = as_int(sch.get(ch).extent)
    if extent == tile.channels and tile.vec > 1:
        ko, kv = sch.split(ch, [None, tile.vec])
        sch.unroll(ko)
        sch.vectorize(kv)
    if as_int(sch.get(pix).extent) == tile.p:
        sch.unroll(pix)
