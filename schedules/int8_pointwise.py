"""int8 pointwise 1×1 conv (``sepconv_pw`` over u8 × s8 packed weights) and dense conv on the
target's dot instruction: ``acc[P, O] += x[P, 4] · W[O/L, 4, L]`` per intrinsic call.

The tile is the fp32 pointwise micro-kernel's (:mod:`.nhwc_tile`: P pixels × k vectors of L
output channels, accumulators in registers for the whole reduction), with the reduction split
by 4 and the innermost (L lanes × 4 channels) tensorized into one ``vpmaddubsw + vpmaddwd``
(AVX2, AVX-512) or ``vpdpbusd`` (VNNI) — :mod:`.int8_intrinsics`. Roofline: AVX2 does 16 u8·s8
MACs per ``vpmaddubsw`` against 8 fp32 MACs per FMA, so compute-bound layers can reach 2× the
fp32 kernel (VNNI 4×); the 8-bit maps move 4× fewer bytes.

Padded panels (output channels no panel divides, zero-padded by the lowering) tile all packed
channels; the epilogue stores the real ones, its channel-tile loop peeled by
:func:`.nhwc_tile.partition_padded_tiles` so that only the last tile is predicated.

Dense convs (``sepconv_conv``: the stem) take the same tile: their reduction is KH window rows of
KW·C contiguous input bytes, padded to blocks of 4 (``compiler/int8/ops.conv_packed``), so the
dot reads 4 bytes of a padded input row where a pointwise conv reads 4 channels of a pixel; the
padded rows (``sepconv_pad``, a real buffer in the same function) are copied first, in parallel.
A 3×3 stem on 3 channels otherwise has no channel axis for the dot and ran as int32 vector
multiplies.

The fused depthwise → pointwise operator (``sepconv_dw → sepconv_dw_act → sepconv_pw``: the int8
lowering's ``sepconv_qdwpw``) takes the same GEMM tile; its depthwise half is tiled as
``sepconv_dw`` is and computed inside each row task for the pixels that task's GEMM reads (the
task never splits a row's channels, which would recompute them), or — where the weights outweigh
the map, each task owning a weight panel — once, whole, in parallel before the GEMM.

Declines (None) unless the weights are packed ``[O/L, C/4, L, 4]`` int8 and the target has the
matching dot (the lowering packs only then), so the fp32 rules never see these functions.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.target import Target

from .base import CpuRule
from .block_names import CONV, DW, DW_ACT, PAD, PW
from .int8_intrinsics import dot_intrinsic
from .nhwc_tile import (
    choose_tile,
    gemm_dims,
    named_blocks,
    out_dims,
    output_epilogue,
    parallel_rows,
    partition_padded_tiles,
    tile_output,
    vectorize_tail,
)
from .sepconv_dw import SepconvDepthwise
from .target_params import cpu_params, target_features

_BEFORE = {  # the blocks an operator's function may have in front of it
    CONV: [[PAD]],  # the padded window rows
    PW: [[], [DW, DW_ACT], [PAD, DW, DW_ACT]],  # alone, or the fused depthwise unit's
}


def _packed_weights(sch, block):
    for region in sch.get(block).reads:
        buf = region.source
        if len(buf.shape) == 4 and str(buf.dtype) == "int8" and int(buf.shape[3]) == 4:
            return buf
    return None


class Int8Pointwise(CpuRule):
    max_k = 4

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool):
        if not self.is_target_available(target) or not isinstance(func, tirx.PrimFunc):
            return None
        sch = s_tir.Schedule(func)
        blocks = named_blocks(sch)
        if blocks is None or (PW in blocks) == (CONV in blocks):
            return None
        op = PW if PW in blocks else CONV
        names = list(blocks)
        before = names[: names.index(op)]
        if before not in _BEFORE[op]:
            return None
        fused = DW in before
        main = blocks[op]
        weights = _packed_weights(sch, main)
        dot = dot_intrinsic(target_features(target))
        if weights is None or dot is None or int(weights.shape[2]) != dot.lanes:
            return None
        epilogue = output_epilogue(sch, main, [blocks[n] for n in names[len(before) + 1 :]])
        params = cpu_params(target)
        tile = choose_tile(*out_dims(sch, main), params, self.max_k)
        if tile.vec != dot.lanes:
            return None
        if fused and PAD in blocks:
            sch.compute_inline(blocks[PAD])
        n, h, w, o, *outer_red, rc = sch.get_loops(main)
        wo, wi = sch.split(w, [None, tile.p])
        oo, ok, ov = sch.split(o, [None, tile.k, tile.vec])
        ro, ri = sch.split(rc, [None, 4])
        if not outer_red and _weights_outweigh_the_map(sch, main, epilogue, tile, params):
            if fused:  # the whole depthwise map first (7×7 or 14×14: ≤ 100 KB), in parallel
                _tile_depthwise(sch, blocks[DW], blocks[DW_ACT], params, parallel=True)
            sch.reorder(oo, n, h, wo, ro, wi, ok, ov, ri)
            sch.reverse_compute_at(epilogue, wo, preserve_unit_loops=True)
            vectorize_tail(sch, epilogue, tile)
            sch.parallel(sch.fuse(oo, n, h))
        else:
            sch.reorder(n, h, wo, oo, *outer_red, ro, wi, ok, ov, ri)
            sch.reverse_compute_at(epilogue, oo, preserve_unit_loops=True)
            vectorize_tail(sch, epilogue, tile)
            # fused: each task owns whole rows of channels, or it would recompute the row's
            # depthwise output once per part
            row = parallel_rows(sch, n, h, wo, oo, params, split_channels=not fused)
            channel_tiles = sch.get_loops(main)[-6 - len(outer_red)]  # oo, unless parallel
            if sch.get(channel_tiles).kind != tirx.ForKind.PARALLEL:
                partition_padded_tiles(sch, main, epilogue, channel_tiles)
            if fused:  # the depthwise pixels this task's GEMM reads, computed in the task
                sch.compute_at(blocks[DW_ACT], row, preserve_unit_loops=True)
                sch.compute_at(blocks[DW], row, preserve_unit_loops=True)
                _tile_depthwise(sch, blocks[DW], blocks[DW_ACT], params, parallel=False)
        init = sch.decompose_reduction(main, (outer_red or [ro])[0])
        vectorize_tail(sch, init, tile)
        sch.tensorize(ov, dot.name)
        sch.unroll(wi)
        sch.unroll(ok)
        if op == CONV:
            _schedule_padded_rows(sch, blocks[PAD])
        return sch


def _weights_outweigh_the_map(sch, main, epilogue, tile, params) -> bool:
    """Whether each task should own a panel of output channels and run every pixel against it
    (the fp32 GEMM's ``channels_outer``): a pointwise conv whose weights (C·O bytes) outweigh
    its input map (M·C: late layers, 7×7 maps with 512–1024 channels), so that a panel is read
    from memory once instead of once per row. Not for padded panels (their last channel tile is
    peeled, outside the parallel loop) or too few panels to share among the cores."""
    pixels, _, channels = gemm_dims(sch, main)
    unpadded = int(sch.get(epilogue).writes[0].source.shape[-1]) == channels
    panels = channels // tile.channels
    return unpadded and channels > pixels and panels >= params.num_cores


def _tile_depthwise(sch, dw, act, params, parallel: bool) -> None:
    """The fused operator's depthwise half, tiled as ``sepconv_dw`` is (the 8-bit map, its
    requantization from the accumulators)."""
    tile = choose_tile(*out_dims(sch, dw), params, SepconvDepthwise.max_k)
    tile_output(sch, dw, act, tile, params, parallel=parallel)


def _schedule_padded_rows(sch: s_tir.Schedule, block) -> None:
    """The dense conv's padded input rows (flat, ``[N, H', W'·C]``): rows in parallel, and the
    byte loop split at the padding by TVM's LoopPartition, so that each row's interior is one
    unconditional contiguous copy (which LLVM vectorizes)."""
    *rows, byte = sch.get_loops(block)
    sch.parallel(sch.fuse(*rows) if len(rows) > 1 else rows[0])
    sch.annotate(byte, "pragma_loop_partition_hint", 1)
