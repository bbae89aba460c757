"""The model zoo: PyTorch definitions of depthwise-separable CNNs, their names, and counting.

Pure PyTorch, nothing here imports TVM. ``get_model("mobilenet_v1:0.5@160")`` returns a
:class:`ModelSpec` with the module (eval mode, seeded random weights or a local weights file),
its input shape and an example input; ``list_models()`` lists the built-in families with their
parameter and MAC counts. ``zoo_source(name, ...)`` is a zoo model as the compiler takes it:
module, example inputs and the manifest's model record.
"""

from .counting import (
    count_macs,
    count_params,
    separable_block_params,
    separable_conv_macs,
    separable_cost_ratio,
    standard_conv_macs,
    standard_conv_params,
)
from .registry import (
    FAMILIES,
    ModelInfo,
    ModelSpec,
    builtin_equivalent,
    canonical_name,
    get_model,
    list_models,
    parse_name,
    zoo_source,
)
from .weights import calibrate_batchnorm, init_weights, load_weights

__all__ = [
    "FAMILIES",
    "ModelInfo",
    "ModelSpec",
    "builtin_equivalent",
    "calibrate_batchnorm",
    "canonical_name",
    "count_macs",
    "count_params",
    "get_model",
    "init_weights",
    "list_models",
    "load_weights",
    "parse_name",
    "separable_block_params",
    "separable_conv_macs",
    "separable_cost_ratio",
    "standard_conv_macs",
    "standard_conv_params",
    "zoo_source",
]
