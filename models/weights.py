"""Seeded random weights and weight files.

No pretrained weights are downloaded, ever. Random weights still have to give *numerically sane*
outputs through 50+ blocks, and BatchNorm must carry non-trivial statistics so that the
compiler's BatchNorm folding is exercised and its numerical checks compare O(1) numbers:

1. convolutions: kaiming-normal, fan_out (torchvision's choice); conv biases (only the SE
   1×1 convs have them) N(0, 0.1²); Linear weights N(0, 1/fan_in) so logits are O(1), biases
   N(0, 0.1²);
2. BatchNorm γ ~ U(0.5, 1.5), β ~ N(0, 0.1²); the last BatchNorm of every residual branch
   (modules with ``use_residual``) has its γ scaled by ``RESIDUAL_GAIN`` = 0.2, so a residual
   block starts close to the identity (as trained residual nets and "zero-init residual"
   schemes do) and small differences between inputs are not amplified stage after stage;
3. BatchNorm running statistics are *calibrated*: one forward pass of a seeded N(0, 1) batch
   with every BatchNorm in training mode and cumulative averaging, so each running mean and
   variance becomes the per-channel statistic of what that layer really sees (means far from 0,
   variances from 1e-5 to 10: non-trivial values to fold). The batch holds at least two
   224×224 images' worth of pixels (2…64 images), so the 1/32-resolution last stages still
   see enough samples per channel.

Why calibrate: with fixed random running stats (mean ~0, var ~1) BatchNorm does not normalise,
activations grow or shrink geometrically with depth and EfficientNet-B7 overflows. Measured
with calibration (4 inputs × 3 seeds): max |logit| ≈ 1…4 for every family at its default size,
≤ 12 even at 32×32, where the last stages are 1×1.

All randomness comes from one ``torch.Generator`` seeded by the caller; the global RNG is
untouched. Same seed, same machine → bit-identical weights. Across machines the calibrated
statistics can differ in the last bits (the calibration forward's float reduction order depends
on the CPU kernels), which does not matter to anything that compares a compiled model against
the eager module it was built from.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from torch import nn

from sepconv.errors import ModelLoadError

# Calibration sees at least this many pixels (two 224×224 images) and 2…64 images.
CALIBRATION_PIXELS = 2 * 224 * 224
CALIBRATION_BATCH = (2, 64)
RESIDUAL_GAIN = 0.2


@torch.no_grad()
def init_weights(module: nn.Module, input_shape: tuple[int, ...], seed: int = 0) -> None:
    """Fill every parameter and buffer of ``module`` deterministically from ``seed``.

    ``module`` may hold uninitialised memory (built on the meta device, then ``to_empty``);
    everything it holds is overwritten. Conv2d, Linear and BatchNorm2d are the only layers with
    state in the zoo; any other stateful layer is refused rather than left uninitialised.
    """
    gen = torch.Generator().manual_seed(seed)
    bns: list[nn.modules.batchnorm._BatchNorm] = []
    for name, m in module.named_modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu", generator=gen)
            if m.bias is not None:
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))
        elif isinstance(m, nn.Linear):
            m.weight.copy_(torch.randn(m.weight.shape, generator=gen) / math.sqrt(m.in_features))
            if m.bias is not None:
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))
        elif isinstance(m, nn.BatchNorm2d):
            m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=gen))
            m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))
            bns.append(m)
        elif any(True for _ in m.parameters(recurse=False)) or any(
            True for _ in m.buffers(recurse=False)
        ):
            raise TypeError(f"init_weights does not know how to initialise {name} ({type(m)})")
    for m in module.modules():
        if getattr(m, "use_residual", False):
            last_bn = [b for b in m.modules() if isinstance(b, nn.modules.batchnorm._BatchNorm)][-1]
            last_bn.weight.mul_(RESIDUAL_GAIN)
    _calibrate(module, bns, input_shape, gen)


@torch.no_grad()
def calibrate_batchnorm(module: nn.Module, input_shape: tuple[int, ...], seed: int = 0) -> None:
    """Set every BatchNorm's running statistics from one seeded batch (step 3 above) only.

    For models built elsewhere (torchvision, timm) whose own init leaves running stats at 0/1.
    """
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    _calibrate(module, bns, input_shape, torch.Generator().manual_seed(seed))


def _calibrate(
    module: nn.Module,
    bns: list[nn.modules.batchnorm._BatchNorm],
    input_shape: tuple[int, ...],
    gen: torch.Generator,
) -> None:
    if not bns:
        return
    x = torch.randn((calibration_batch(input_shape), *input_shape[1:]), generator=gen)
    saved = [(bn.momentum, bn.training) for bn in bns]
    module.eval()
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average: after one batch, the batch's own statistics
        bn.train()
    try:
        module(x)
    finally:
        for bn, (momentum, training) in zip(bns, saved, strict=True):
            bn.momentum = momentum
            bn.train(training)
    for bn in bns:
        bn.num_batches_tracked.zero_()


def calibration_batch(input_shape: tuple[int, ...]) -> int:
    """Images in the calibration batch: enough pixels that the 7×7-or-smaller last stages still
    give every BatchNorm a few hundred samples per channel."""
    lo, hi = CALIBRATION_BATCH
    return max(lo, min(hi, math.ceil(CALIBRATION_PIXELS / math.prod(input_shape[2:]))))


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a ``.safetensors`` file, or a PyTorch state_dict file with ``weights_only=True``."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"weights file {str(path)!r} does not exist or is not a file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - every reader failure means the same to the user
        kind = "safetensors" if path.suffix == ".safetensors" else "PyTorch (weights_only=True)"
        raise ModelLoadError(
            f"cannot read {str(path)!r} as a {kind} weights file: {exc}. Save weights with "
            "safetensors.torch.save_file(model.state_dict(), 'w.safetensors') or "
            "torch.save(model.state_dict(), 'w.pt')."
        ) from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # a training checkpoint that wraps the state_dict
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise ModelLoadError(
            f"{str(path)!r} does not hold a state_dict (a mapping of names to tensors)"
        )
    return state


def load_weights(module: nn.Module, path: str | os.PathLike, max_listed: int = 5) -> None:
    """Load a weights file into ``module``, refusing any missing, unexpected or misshapen key.

    BatchNorm ``num_batches_tracked`` counters may be absent (older files lack them); they do
    not affect inference and are set to zero.
    """
    state = read_state_dict(path)
    expected = module.state_dict()
    optional = {k for k in expected if k.endswith("num_batches_tracked")}
    missing = [k for k in expected if k not in state and k not in optional]
    unexpected = [k for k in state if k not in expected]
    misshapen = [
        f"{k} (file {tuple(state[k].shape)}, model {tuple(v.shape)})"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = []
    for label, keys in (
        ("missing", missing),
        ("unexpected", unexpected),
        ("wrong shape", misshapen),
    ):
        if keys:
            more = f" and {len(keys) - max_listed} more" if len(keys) > max_listed else ""
            problems.append(f"{len(keys)} {label}: {', '.join(keys[:max_listed])}{more}")
    if problems:
        raise ModelLoadError(
            f"weights in {str(path)!r} do not fit the model: {'; '.join(problems)}. Check the "
            "model name's width knob and num_classes against the file."
        )
    with torch.no_grad():
        for k, v in expected.items():
            if k in state:
                v.copy_(state[k])
            else:
                v.zero_()
