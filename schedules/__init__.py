"""Schedule rules: one rule per file, composed into an ordered list per target family.

CPU (LLVM: x86 AVX-512/AVX2, ARM NEON), each rule parameterised by the target's vector width,
register count and core count (:mod:`.target_params`), never copied per target:

=========================  =================================================================
rule                       takes
=========================  =================================================================
``Int8Pointwise``           our int8 pointwise, stem and fused depthwise → pointwise operators
                            on packed weights: the GEMM tensorized on the target's u8·s8 dot
``FusedDepthwisePointwise`` our fused ``sepconv_dw → act → sepconv_pw`` operator (NHWC)
``SepconvDepthwise``        our ``sepconv_dw`` (NHWC depthwise, + epilogue)
``SepconvPointwise``        our ``sepconv_pw`` (NHWC 1×1 GEMM, + epilogue)
``SepconvConv``             our ``sepconv_conv`` (NHWC dense conv: the stem)
``DepthwiseConv2D``         NCHW conv2d with groups == in_channels (``--no-sepconv-ops``)
``Conv2D``                  any other NCHW conv2d: grouped convs, and all convs without our ops
``Dense``                   matmul / linear layers (classifier)
``Reduction``               global average pooling, means, sums, softmax
``Injective``               elementwise, broadcast, reshape, transpose, concat, split
``Fallback``                anything: parallelises what it can, never fails
=========================  =================================================================

Our operators' four rules share one mechanism, the NHWC output register tile of
:mod:`.nhwc_tile`, and recognise the operators by the block names of :mod:`.block_names` (which
``compiler/sepconv_ops.py`` gives them); the NCHW rules serve graphs compiled without our operators.

CUDA: :func:`gpu_rules` (:mod:`.gpu`, TVM's dlight GPU rules) for whatever the Triton kernels
(``triton_*.py``, embedded by :mod:`sepconv.compiler.triton_ops`) do not take.

Use::

    from sepconv.schedules import apply_schedules
    mod = apply_schedules(mod, target)      # after LegalizeOps/FuseOps/FuseTIR, before build

Every rule is a ``tvm.s_tir.dlight.ScheduleRule``, so ``cpu_rules(target)`` also works with
``tvm.s_tir.dlight.ApplyDefaultSchedule``; ``apply_schedules`` adds what that pass lacks: a rule
that raises on one function is logged and skipped (the next rule, finally ``Fallback``, takes
the function), and the result is verified — every PrimFunc must carry ``tirx.is_scheduled``.
"""

from __future__ import annotations

import importlib
import importlib.util

# The rule lists import TVM's scheduling machinery (its compiler library); the Triton kernel
# modules beside them need only Triton and must import where TVM has only its runtime. So the
# package's names are resolved on first use (PEP 562).
_RULE_LIST = "sepconv.schedules.rule_list"  # its __all__ lists the names


def __getattr__(name: str):
    if name.startswith("__"):
        raise AttributeError(name)
    if importlib.util.find_spec(f"{__name__}.{name}") is not None:
        # `from sepconv.schedules import triton_depthwise`: the submodule, without the rules
        return importlib.import_module(f"{__name__}.{name}")
    module = importlib.import_module(_RULE_LIST)
    try:
        return getattr(module, name)
    except AttributeError:
        raise AttributeError(f"module 'sepconv.schedules' has no attribute {name!r}") from None
