"""Model names → seeded, eval-mode PyTorch modules.

Name syntax: ``family[:width][@resolution]``, e.g. ``mobilenet_v1``, ``mobilenet_v1:0.5@160``,
``mobilenet_v3_large:0.75@160``, ``efficientnet_b3``, ``efficientnet_b0@128``,
``shufflenet_v2:0.5@128``. Default knobs are left out of the canonical name
(``mobilenet_v1:1.0@224`` is ``mobilenet_v1``). ``torchvision:NAME[@resolution]`` and
``timm:NAME[@resolution]`` build a model from those libraries where they can be imported.
"""

from __future__ import annotations

import difflib
import functools
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from sepconv.checksum import sha256_file
from sepconv.errors import ModelLoadError, UnknownModelError

from .counting import count_macs, count_params
from .efficientnet import compound_scaling, efficientnet_b
from .mobilenet_v1 import MobileNetV1
from .mobilenet_v2 import MobileNetV2
from .mobilenet_v3 import MobileNetV3
from .shufflenet_v2 import STAGE_CHANNELS, ShuffleNetV2
from .weights import calibrate_batchnorm, init_weights, load_weights


@dataclass(frozen=True)
class Family:
    name: str
    build: Callable[[float, int], nn.Module]  # (width, num_classes) → module
    resolution: int  # default input size
    widths: tuple[float, ...] | None  # allowed width knobs; None: any positive width, (): none
    description: str


def _families() -> dict[str, Family]:
    fams = [
        Family("mobilenet_v1", lambda w, n: MobileNetV1(w, n), 224, None,
               "MobileNetV1 (1704.04861): 13 depthwise-separable blocks, width α, input size ρ"),
        Family("mobilenet_v2", lambda w, n: MobileNetV2(w, n), 224, None,
               "MobileNetV2 (1801.04381): inverted residuals, ReLU6; torchvision layout"),
        Family("mobilenet_v3_large", lambda w, n: MobileNetV3("large", w, n), 224, None,
               "MobileNetV3-Large (1905.02244): SE with hard-sigmoid, hard-swish"),
        Family("mobilenet_v3_small", lambda w, n: MobileNetV3("small", w, n), 224, None,
               "MobileNetV3-Small (1905.02244): SE with hard-sigmoid, hard-swish"),
    ]  # fmt: skip
    for phi in range(8):
        s = compound_scaling(phi)
        fams.append(
            Family(
                f"efficientnet_b{phi}",
                lambda w, n, phi=phi: efficientnet_b(phi, n),
                s.resolution,
                (),
                f"EfficientNet-B{phi} (1905.11946): MBConv+SE, SiLU; compound scaling φ={phi}: "
                f"width {s.width:.3f}, depth {s.depth:.3f}, resolution {s.resolution}",
            )
        )
    fams.append(
        Family("shufflenet_v2", lambda w, n: ShuffleNetV2(w, n), 224, tuple(STAGE_CHANNELS),
               "ShuffleNetV2 (1807.11164): channel split and shuffle (paper layout), 4 widths")
    )  # fmt: skip
    return {f.name: f for f in fams}


FAMILIES = _families()
EXTERNAL = ("torchvision", "timm")
SYNTAX = (
    "family[:width][@resolution], e.g. 'mobilenet_v1:0.5@160', 'efficientnet_b0@128', "
    "'shufflenet_v2:0.5', or torchvision:NAME / timm:NAME"
)
_NAME = re.compile(r"^(?P<family>[^:@]+)(?::(?P<width>[^@]*))?(?:@(?P<res>.*))?$")


@dataclass
class ModelSpec:
    name: str  # canonical name with knobs, e.g. "mobilenet_v1:0.5@160"
    family: str  # e.g. "mobilenet_v1"
    module: nn.Module  # eval mode, weights seeded or loaded
    input_shape: tuple[int, int, int, int]  # (batch, 3, H, W)
    num_classes: int

    def example_input(self, seed: int = 0) -> torch.Tensor:
        """A seeded N(0, 1) float32 tensor of ``input_shape`` (global RNG untouched)."""
        gen = torch.Generator().manual_seed(seed)
        return torch.randn(self.input_shape, generator=gen, dtype=torch.float32)


@dataclass(frozen=True)
class ModelInfo:
    name: str
    family: str
    resolution: int
    params: int
    macs: int  # per image, conv + linear multiply-adds
    description: str


def _known() -> str:
    return ", ".join(FAMILIES)


def _format_width(width: float) -> str:
    short = f"{width:g}"
    return short if float(short) == width else repr(width)


def parse_name(name: str) -> tuple[str, float | None, int | None]:
    """Split ``family[:width][@resolution]`` and check the knobs; no model is built.

    ``torchvision:NAME`` / ``timm:NAME`` come back as family ``"torchvision:NAME"`` with no
    width. Raises ``UnknownModelError`` for an unknown family or malformed knobs.
    """
    if not isinstance(name, str) or not name.strip():
        raise UnknownModelError(f"model name must be a non-empty string; syntax: {SYNTAX}")
    text = name.strip()
    source, sep, rest = text.partition(":")
    if sep and source.lower() in EXTERNAL:
        ext, _, res_text = rest.partition("@")
        if not ext:
            raise UnknownModelError(f"{name!r}: no model named after '{source}:'")
        return f"{source.lower()}:{ext}", None, _parse_resolution(name, res_text or None)
    m = _NAME.match(text)
    if m is None:
        raise UnknownModelError(f"cannot parse model name {name!r}; syntax: {SYNTAX}")
    family = m["family"].lower()
    if family not in FAMILIES:
        raise UnknownModelError(
            f"unknown model {family!r} in {name!r}. Known families: {_known()}; "
            f"also torchvision:NAME and timm:NAME. Syntax: {SYNTAX}"
        )
    width = _parse_width(name, FAMILIES[family], m["width"])
    return family, width, _parse_resolution(name, m["res"])


def _parse_width(name: str, fam: Family, text: str | None) -> float | None:
    if text is None:
        return None
    try:
        width = float(text)
    except ValueError:
        width = math.nan
    if not math.isfinite(width) or width <= 0:
        raise UnknownModelError(
            f"{name!r}: width knob {text!r} is not a positive number (e.g. {fam.name}:0.5)"
        )
    if fam.widths == ():
        raise UnknownModelError(
            f"{name!r}: {fam.name} has no width knob; drop ':{text}'. EfficientNet widths come "
            "from the compound coefficient φ: pick efficientnet_b0 … efficientnet_b7 instead"
        )
    if fam.widths is not None and width not in fam.widths:
        allowed = ", ".join(_format_width(w) for w in fam.widths)
        raise UnknownModelError(f"{name!r}: {fam.name} comes in widths {allowed}, not {text}")
    return width


def _parse_resolution(name: str, text: str | None) -> int | None:
    if text is None:
        return None
    if not re.fullmatch(r"\d+", text) or int(text) <= 0:
        raise UnknownModelError(
            f"{name!r}: resolution {text!r} is not a positive integer (e.g. '@160')"
        )
    return int(text)


def canonical_name(family: str, width: float | None, resolution: int | None) -> str:
    """The shortest name for these knobs: defaults (width 1, family resolution) left out."""
    name = family
    fam = FAMILIES.get(family)
    if width is not None and width != 1.0:
        name += f":{_format_width(width)}"
    if resolution is not None and (fam is None or resolution != fam.resolution):
        name += f"@{resolution}"
    return name


def get_model(
    name: str,
    batch: int = 1,
    weights: str | os.PathLike | None = None,
    seed: int = 0,
    num_classes: int = 1000,
) -> ModelSpec:
    """Build the named model in eval mode, with seeded random weights or a local weights file.

    ``weights`` is a ``.safetensors`` file or a PyTorch state_dict file (read with
    ``weights_only=True``); it must fit the model exactly. Nothing is downloaded.
    """
    if not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be a positive integer, got {batch!r}")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    family, width, resolution = parse_name(name)
    if family not in FAMILIES:
        return _external(family, resolution, batch, weights, seed, num_classes)
    fam = FAMILIES[family]
    resolution = resolution or fam.resolution
    with torch.device("meta"):
        module = fam.build(1.0 if width is None else width, num_classes)
    module = module.to_empty(device="cpu")
    shape = (batch, 3, resolution, resolution)
    if weights is not None:
        load_weights(module, weights)
    else:
        init_weights(module, shape, seed)
    module.eval()
    return ModelSpec(canonical_name(family, width, resolution), family, module, shape, num_classes)


def zoo_source(
    name: str,
    *,
    batch: int = 1,
    weights: str | os.PathLike | None = None,
    seed: int = 0,
    example_input: torch.Tensor | tuple[torch.Tensor, ...] | None = None,
) -> tuple[nn.Module, tuple[torch.Tensor, ...], dict]:
    """A zoo model as the compiler takes it: (module, example inputs, the manifest's model record).

    The record names the model, batch and seed, and a weights file by its absolute path and
    SHA-256, so that validation can rebuild the same module (and tell when the file changed).
    The example input is the model's seeded one unless ``example_input`` is given.
    """
    spec = get_model(name, batch=batch, weights=weights, seed=seed)
    record = {"name": spec.name, "source": "zoo", "seed": seed, "batch": batch}
    if weights is not None:
        record["weights"] = str(Path(weights).resolve())
        record["weights_sha256"] = sha256_file(Path(weights))
    x = example_input if example_input is not None else spec.example_input(seed)
    return spec.module, (x,) if isinstance(x, torch.Tensor) else tuple(x), record


@functools.cache
def _model_infos() -> tuple[ModelInfo, ...]:
    infos = []
    for fam in FAMILIES.values():
        with torch.device("meta"):
            module = fam.build(1.0, 1000).eval()
        infos.append(
            ModelInfo(
                fam.name,
                fam.name,
                fam.resolution,
                count_params(module),
                count_macs(module, (1, 3, fam.resolution, fam.resolution)),
                fam.description,
            )
        )
    return tuple(infos)


def list_models() -> list[ModelInfo]:
    """One entry per built-in family at default knobs, with its parameter and MAC counts."""
    return list(_model_infos())


# ---- torchvision: / timm: -------------------------------------------------------------------


def builtin_equivalent(source: str, model: str) -> str | None:
    """The built-in zoo name closest to a torchvision/timm model name, if there is one."""
    model = model.lower()
    if m := re.fullmatch(r"(?:tf_)?efficientnet_(b[0-7])", model):
        return f"efficientnet_{m[1]}"
    if m := re.fullmatch(r"shufflenet_v2_x(\d)_(\d)", model):
        return canonical_name("shufflenet_v2", float(f"{m[1]}.{m[2]}"), None)
    if m := re.fullmatch(r"mobilenet_?v([123])(?:_(large|small))?_?(\d{3})?", model):
        family = f"mobilenet_v{m[1]}" + (f"_{m[2]}" if m[2] else "")
        if family in FAMILIES:
            return canonical_name(family, int(m[3]) / 100 if m[3] else None, None)
    return None


def _external(
    family: str,
    resolution: int | None,
    batch: int,
    weights: str | os.PathLike | None,
    seed: int,
    num_classes: int,
) -> ModelSpec:
    source, _, model = family.partition(":")
    try:
        if source == "torchvision":
            import torchvision

            build = functools.partial(torchvision.models.get_model, model, weights=None)
        else:
            import timm

            build = functools.partial(timm.create_model, model, pretrained=False)
    except Exception as exc:  # noqa: BLE001 - ImportError, or OSError from missing CUDA libs
        near = builtin_equivalent(source, model)
        suggestion = (
            f"use the built-in '{near}' instead" if near else f"use a built-in model: {_known()}"
        )
        raise ModelLoadError(
            f"'{family}' needs {source}, which cannot be imported here "
            f"({type(exc).__name__}: {exc}). The {source} wheels on the package index are built "
            "against the CUDA build of torch (they link libtorch_cuda.so"
            + ("; timm imports torchvision" if source == "timm" else "")
            + "), so they do not work with the CPU-only torch build sepconv installs. Install a "
            f"full torch with a matching {source} to use '{source}:' names, or {suggestion}."
        ) from exc
    known = torchvision.models.list_models() if source == "torchvision" else timm.list_models()
    if model.partition(".")[0] not in known:  # timm names may carry a ".tag"
        close = difflib.get_close_matches(model, known, n=6, cutoff=0.6)
        raise UnknownModelError(
            f"{source} has no model {model!r}; "
            + (f"close matches: {', '.join(close)}" if close else f"see {source}'s model list")
            + f" (name it as {source}:NAME[@resolution])"
        )
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            module = build(num_classes=num_classes)
    except Exception as exc:  # noqa: BLE001 - the libraries raise ValueError/RuntimeError/KeyError
        raise UnknownModelError(f"{source} cannot build {model!r}: {exc}") from exc
    name = family if resolution is None else f"{family}@{resolution}"
    if resolution is None:
        cfg = getattr(module, "pretrained_cfg", None) or {}
        resolution = int(cfg.get("input_size", (3, 224, 224))[-1])
    shape = (batch, 3, resolution, resolution)
    if weights is not None:
        load_weights(module, weights)
    else:
        calibrate_batchnorm(module, shape, seed)
    module.eval()
    return ModelSpec(name, family, module, shape, num_classes)
