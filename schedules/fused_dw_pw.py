"""Fused depthwise → pointwise (``sepconv_dw`` → ``sepconv_dw_act`` → ``sepconv_pw``).

The point of fusing: the depthwise output (``N·OH·OW·C`` floats — 4.8 MB for MobileNetV2's first
expanded block) is never written to memory in full. Each parallel task owns one output row:

    parallel over output rows (n, h)
      depthwise row  [OW, C]   register-tiled like ``sepconv_dw``, bias + activation applied
                               straight from the accumulators into a row buffer (OW·C·4 bytes:
                               ≤ 56 KB at 224, so it stays in L1/L2)
      pointwise row  [OW, O]   the GEMM micro-kernel of ``sepconv_pw`` reading that buffer
      epilogue                 bias, activation, residual add from the accumulators

Both halves use :func:`.nhwc_tile.tile_output`, the mechanism every operator rule shares.

Late blocks are the exception: on a 7×7 or 14×14 map with 512–1024 channels the pointwise
weights (1–4 MB) outweigh the row, and a row at a time would stream all of them from memory
once per row. There the depthwise output is made whole (≤ 400 KB) and the pointwise runs as the
GEMM of ``sepconv_pw`` with weight panels outermost (:class:`.nhwc_tile.GemmTile`), each panel
read from memory once. ``tunable=True`` samples both tiles, and the two structures.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.target import Target

from .base import CpuRule
from .block_names import DW, DW_ACT, PAD, PW
from .nhwc_tile import (
    GemmTile,
    choose_gemm_tile,
    choose_tile,
    gemm_dims,
    gemm_tile_candidates,
    named_blocks,
    out_dims,
    output_epilogue,
    sample_tile,
    tile_candidates,
    tile_gemm,
    tile_output,
)
from .target_params import cpu_params


class FusedDepthwisePointwise(CpuRule):
    """One output row per task: a depthwise row into cache, then the pointwise GEMM on it."""

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool):
        if not self.is_target_available(target) or not isinstance(func, tirx.PrimFunc):
            return None
        sch = s_tir.Schedule(func)
        blocks = named_blocks(sch)
        if blocks is None or not all(b in blocks for b in (DW, DW_ACT, PW)):
            return None
        names = list(blocks)
        if names[: names.index(PW) + 1] != [n for n in (PAD, DW, DW_ACT, PW) if n in blocks]:
            return None
        params = cpu_params(target)
        if PAD in blocks:
            sch.compute_inline(blocks[PAD])
        dw, act, pw = blocks[DW], blocks[DW_ACT], blocks[PW]
        epilogue = output_epilogue(sch, pw, [blocks[n] for n in names[names.index(PW) + 1 :]])

        gemm = choose_gemm_tile(*gemm_dims(sch, pw), params)
        pw_tile = gemm if gemm.channels_outer else choose_tile(*out_dims(sch, pw), params)
        dw_tile = choose_tile(*out_dims(sch, dw), params, max_k=4)
        if tunable:
            panels_outer = [
                t for t in gemm_tile_candidates(*gemm_dims(sch, pw), params) if t.channels_outer
            ]
            pw_tile = sample_tile(
                sch, tile_candidates(*out_dims(sch, pw), params) + panels_outer, pw_tile
            )
            dw_tile = sample_tile(
                sch, tile_candidates(*out_dims(sch, dw), params, max_k=4), dw_tile
            )
        if isinstance(pw_tile, GemmTile):
            # few pixels, many weights: every pixel tile runs against one weight panel at a
            # time, so the depthwise output is made whole first (a 14×14×512 map: 400 KB)
            tile_gemm(sch, pw, epilogue, pw_tile, params)
            tile_output(sch, dw, act, dw_tile, params)
            return sch
        row = tile_output(sch, pw, epilogue, pw_tile, params, split_channels=False)
        if row is None:
            return None
        sch.compute_at(act, row, preserve_unit_loops=True)
        sch.compute_at(dw, row, preserve_unit_loops=True)
        tile_output(sch, dw, act, dw_tile, params, parallel=False)
        return sch
