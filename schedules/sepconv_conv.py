"""Dense conv in NHWC with HWIO weights (``sepconv_conv``): the stem, and any groups=1 conv.

The same micro-kernel as the pointwise rule, with the K×K window in its reduction.
"""

from __future__ import annotations

from .block_names import CONV
from .separable_op import SeparableOp


class SepconvConv(SeparableOp):
    op = CONV
