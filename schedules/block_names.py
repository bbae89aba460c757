"""The block names that identify our operators: the contract between the operators and their rules.

``compiler/sepconv_ops.py`` names the TE blocks it creates with these; the rules here
(``sepconv_dw.py``, ``sepconv_pw.py``, ``sepconv_conv.py``, ``fused_dw_pw.py``) recognise our
operators by them, even after FuseOps has merged epilogues (bias, activation, residual add) into
the same PrimFunc. They live with the rules, the lower room, so that the compiler imports them and
not the other way round.
"""

from __future__ import annotations

PAD = "sepconv_pad"
"""Zero padding in front of a depthwise or dense conv (inlined by the rules)."""
DW = "sepconv_dw"
"""NHWC depthwise conv."""
DW_ACT = "sepconv_dw_act"
"""The fused operator's depthwise bias + activation, between ``DW`` and ``PW``."""
PW = "sepconv_pw"
"""NHWC pointwise (1×1) conv: a GEMM over the channel axis."""
PW_CROP = "sepconv_pw_crop"
"""The real output channels of a pointwise GEMM computed on channels padded to whole vectors
(:func:`sepconv.schedules.nhwc_tile.padded_channels`); inlined into the epilogue by the rules."""
CONV = "sepconv_conv"
"""NHWC dense conv (the stem)."""
USEFUL_CHANNELS = "sepconv_useful_channels"
"""Block annotation on a padded ``PW``: its real output channels (costs count those MACs)."""
USEFUL_MACS = "sepconv_useful_macs"
"""Block annotation: the real MACs of a block whose reduction is padded (costs count those)."""

__all__ = ["CONV", "DW", "DW_ACT", "PAD", "PW", "PW_CROP", "USEFUL_CHANNELS", "USEFUL_MACS"]
