"""Pointwise 1×1 conv in NHWC (``sepconv_pw``): ``out[P, O] = in[P, C] · W[C, O]``, a GEMM.

The tile is a GEMM micro-kernel: per step of ``c``, P pixel broadcasts × k weight vectors, P·k
FMAs on accumulators that stay in registers for the whole reduction. Compute-bound for wide
layers (C, O ≥ 96), memory-bound for the narrow projections of MobileNetV2 (C·O small).
"""

from __future__ import annotations

from .block_names import PW
from .separable_op import SeparableOp


class SepconvPointwise(SeparableOp):
    op = PW
