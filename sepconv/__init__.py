"""sepconv: a compiler for depthwise-separable CNNs on Apache TVM.

The front door. Names are resolved lazily so that ``import sepconv.models`` (pure PyTorch) does not
pay for importing TVM.
"""

from __future__ import annotations

import importlib
from typing import Any

from sepconv.errors import SepconvError

__version__ = "0.1.0"

_API = {
    "compile": "sepconv.api",
    "load": "sepconv.compiler.runtime",  # needs neither torch nor TVM's compiler
    "validate": "sepconv.api",
    "bisect": "sepconv.api",
    "tune": "sepconv.compiler.tuning",
    "profile": "sepconv.bench.profile",  # per-function profile of an artifact, roofline, peers
    "CompiledModel": "sepconv.compiler.runtime",
    "ValidationReport": "sepconv.compiler.validation",
}

__all__ = ["SepconvError", "__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'sepconv' has no attribute {name!r}")
