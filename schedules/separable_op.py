"""The rule shape shared by our single-operator functions (``sepconv_dw``, ``sepconv_pw``,
``sepconv_conv``); each operator's rule is a one-line subclass in its own file.

All three share the NHWC output tile of :mod:`.nhwc_tile` and differ only in their reduction:

==================  =========================  ============================================
operator            reduction inside the tile  why it is fast
==================  =========================  ============================================
``sepconv_dw``      kh × kw (unrolled)         channels in the lanes: every tap is a full
                                               vector FMA for any stride, no gathers
``sepconv_pw``      c                          a GEMM micro-kernel over the flattened
                                               pixels: P pixel broadcasts × k vectors of
                                               a packed weight panel per step
``sepconv_conv``    kh × kw × c                the stem: the same micro-kernel over HWIO
==================  =========================  ============================================

Padding is inlined into the loads (its condition depends on the pixel, not the lane, so the
vector loads stay whole). ``tunable=True`` samples the tile (P pixels × k vectors) among all
tiles that fit the target's registers — the operator's MetaSchedule design space.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.target import Target

from .base import CpuRule
from .block_names import CONV, DW, PAD, PW
from .nhwc_tile import (
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


class SeparableOp(CpuRule):
    """Schedules a PrimFunc whose main block is our operator ``op`` (+ pad, + epilogue)."""

    op: str = ""
    max_k: int = 8  # vectors of channels per tile
    gemm: bool = False  # a 1×1 reduction over channels: tiled as a GEMM over flattened pixels

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool):
        if not self.is_target_available(target) or not isinstance(func, tirx.PrimFunc):
            return None
        sch = s_tir.Schedule(func)
        blocks = named_blocks(sch)
        if blocks is None or self.op not in blocks:
            return None
        if any(name in blocks for name in (DW, PW, CONV) if name != self.op):
            return None  # two of our operators in one function: the fused rule's job
        names = list(blocks)
        main = blocks[self.op]
        before = names[: names.index(self.op)]
        if any(name != PAD for name in before):
            return None
        if PAD in blocks:
            sch.compute_inline(blocks[PAD])
        epilogue = output_epilogue(
            sch, main, [blocks[n] for n in names[names.index(self.op) + 1 :]]
        )
        params = cpu_params(target)
        if self.gemm:
            tile = choose_gemm_tile(*gemm_dims(sch, main), params)
            if tunable:
                tile = sample_tile(sch, gemm_tile_candidates(*gemm_dims(sch, main), params), tile)
            tile_gemm(sch, main, epilogue, tile, params)
            return sch
        out_w, channels = out_dims(sch, main)
        tile = choose_tile(out_w, channels, params, self.max_k)
        if tunable:
            tile = sample_tile(sch, tile_candidates(out_w, channels, params, self.max_k), tile)
        tile_output(sch, main, epilogue, tile, params)
        return sch
