"""Depthwise conv in NHWC (``sepconv_dw``): channels in the lanes, every tap a full vector FMA.

Roofline: 2·K² FLOP per output for ≈ 8 bytes moved (one input read, one output written, in
the best case), ≈ 2.25 FLOP/byte for 3×3 — memory-bound on every CPU; the rule's aim is to touch
each byte once (padding inlined, epilogue from registers) and to keep every load a whole vector,
which NHWC gives for stride 1 and 2 alike.
"""

from __future__ import annotations

from .block_names import DW
from .separable_op import SeparableOp


class SepconvDepthwise(SeparableOp):
    op = DW
    max_k = 4  # few taps: leave registers for the input vectors
