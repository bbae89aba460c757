"""Pointwise 1×1 conv in NHWC (``sepconv_pw``): ``out[M, O] = in[M, C] · W[C, O]``, a GEMM
over the M = N·H·W pixels, its weights packed in panels of B output channels.

The tile is a GEMM micro-kernel (:func:`.nhwc_tile.tile_gemm`): per step of ``c``, P pixel
broadcasts × k vectors of one panel, P·k FMAs on accumulators that stay in registers for the
whole reduction. Late layers (7×7, 14×14 maps, weights larger than the input) run each panel
against every pixel tile; early ones stream the weights past each pixel tile. Compute-bound for
wide layers (C, O ≥ 96), memory-bound for the narrow projections of MobileNetV2 (C·O small).
"""

from __future__ import annotations

from .block_names import PW
from .separable_op import SeparableOp


class SepconvPointwise(SeparableOp):
    op = PW
    gemm = True
