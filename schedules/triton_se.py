"""Triton squeeze-and-excitation: pool → FC → act → FC → gate → scale in two launches.

    y[n, c, p] = x[n, c, p] · gate(W2 · act(W1 · mean_p(x[n, :, p]) + b1) + b2)[c]

1. ``se_pool_kernel`` (grid N × ⌈C/BLOCK_C⌉): the per-channel mean over H×W, fp32, into a
   small (N, C) buffer.
2. ``se_excite_scale_kernel`` (grid N × ⌈C/BLOCK_C⌉ × ⌈HW/BLOCK_HW⌉): every program recomputes
   the squeezed vector ``s = act(W1 · pooled[n] + b1)`` (CR values, a few thousand FLOPs), its
   channels' gates ``gate(W2[c, :] · s + b2[c])``, and scales its tile of x.

The global pool must see all of x before any gate exists, so one launch cannot do it without a
grid-wide barrier; two is the minimum for a grid that fills the GPU. Eager PyTorch uses six
(mean, conv, act, conv, gate, mul) and writes every intermediate to memory.

**Bytes moved** (fp32, N×C×HW)::

    read x twice (pool, scale) 2·N·C·HW·4, write y N·C·HW·4, pooled 2·N·C·4,
    W1/W2 (2·C·CR·4) once from DRAM — re-read by each program from L2

**Roofline**: ~1 FLOP per element of x (one add, one multiply) against 12 bytes: 0.08
FLOP/byte, purely bandwidth-bound; ideal time 3·N·C·HW·4 / 3.35 TB/s on an H100 (the 3rd pass
is the price of not fusing the scale into the next pointwise conv). The redundant FC work is
⌈C/BLOCK_C⌉·⌈HW/BLOCK_HW⌉·2·C·CR FLOPs per image, served from L2.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .triton_common import act_code, activation, keep_layout, layout_configs, next_pow2

POOL_CONFIGS = [
    triton.Config({"BLOCK_C": 8, "BLOCK_HW": 128, "LAYOUT_NHWC": False}, num_warps=4),
    triton.Config({"BLOCK_C": 16, "BLOCK_HW": 64, "LAYOUT_NHWC": False}, num_warps=4),
    triton.Config({"BLOCK_C": 4, "BLOCK_HW": 256, "LAYOUT_NHWC": False}, num_warps=4),
    triton.Config({"BLOCK_C": 64, "BLOCK_HW": 16, "LAYOUT_NHWC": True}, num_warps=4),
    triton.Config({"BLOCK_C": 128, "BLOCK_HW": 8, "LAYOUT_NHWC": True}, num_warps=4),
]

SCALE_CONFIGS = [
    triton.Config({"BLOCK_C": 8, "BLOCK_HW": 128, "BLOCK_K": 32, "LAYOUT_NHWC": False},
                  num_warps=4),
    triton.Config({"BLOCK_C": 16, "BLOCK_HW": 256, "BLOCK_K": 32, "LAYOUT_NHWC": False},
                  num_warps=8),
    triton.Config({"BLOCK_C": 32, "BLOCK_HW": 64, "BLOCK_K": 32, "LAYOUT_NHWC": False},
                  num_warps=4),
    triton.Config({"BLOCK_C": 64, "BLOCK_HW": 32, "BLOCK_K": 32, "LAYOUT_NHWC": True},
                  num_warps=4),
    triton.Config({"BLOCK_C": 128, "BLOCK_HW": 16, "BLOCK_K": 32, "LAYOUT_NHWC": True},
                  num_warps=8),
]  # fmt: skip


@triton.jit
def se_pool_kernel(
    x_ptr, pooled_ptr, C, HW,
    CHANNELS_LAST: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr,
):  # fmt: skip
    """pooled[n, c] = mean over HW of x[n, c, :] (fp32); grid (N, ⌈C/BLOCK_C⌉)."""
    n = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < C
    x_img = x_ptr + n * C * HW
    acc = tl.zeros((BLOCK_HW, BLOCK_C), dtype=tl.float32)
    for p0 in range(0, HW, BLOCK_HW):
        p = p0 + tl.arange(0, BLOCK_HW)
        if CHANNELS_LAST:
            offs = p[:, None] * C + c[None, :]
        else:
            offs = p[:, None] + c[None, :] * HW
        acc += tl.load(x_img + offs, mask=(p < HW)[:, None] & c_ok[None, :], other=0.0).to(
            tl.float32
        )
    tl.store(pooled_ptr + n * C + c, tl.sum(acc, axis=0) / HW, mask=c_ok)


@triton.jit
def se_excite_scale_kernel(
    x_ptr, pooled_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, y_ptr, C, CR, HW,
    ACT: tl.constexpr, GATE: tl.constexpr, CHANNELS_LAST: tl.constexpr,
    BLOCK_CR: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """y = x · gate(W2·act(W1·pooled + b1) + b2); W1 (CR, C), W2 (C, CR);
    grid (N, ⌈C/BLOCK_C⌉, ⌈HW/BLOCK_HW⌉); BLOCK_CR ≥ CR."""
    n = tl.program_id(0).to(tl.int64)
    pid_c = tl.program_id(1)
    pid_p = tl.program_id(2)
    r = tl.arange(0, BLOCK_CR)
    r_ok = r < CR
    # squeeze: s = act(W1 · pooled[n] + b1), CR values
    s = tl.zeros((BLOCK_CR,), dtype=tl.float32)
    for k0 in range(0, C, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_ok = k < C
        pk = tl.load(pooled_ptr + n * C + k, mask=k_ok, other=0.0)
        w1 = tl.load(
            w1_ptr + r[:, None] * C + k[None, :], mask=r_ok[:, None] & k_ok[None, :], other=0.0
        ).to(tl.float32)
        s += tl.sum(w1 * pk[None, :], axis=1)
    s = activation(s + tl.load(b1_ptr + r, mask=r_ok, other=0.0).to(tl.float32), ACT)
    s = tl.where(r_ok, s, 0.0)
    # excite: this program's channels' gates
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < C
    w2 = tl.load(
        w2_ptr + c[:, None] * CR + r[None, :], mask=c_ok[:, None] & r_ok[None, :], other=0.0
    ).to(tl.float32)
    g = tl.sum(w2 * s[None, :], axis=1) + tl.load(b2_ptr + c, mask=c_ok, other=0.0).to(tl.float32)
    g = activation(g, GATE)
    # scale this program's tile
    p = pid_p * BLOCK_HW + tl.arange(0, BLOCK_HW)
    if CHANNELS_LAST:
        offs = n * C * HW + p[:, None] * C + c[None, :]
    else:
        offs = n * C * HW + p[:, None] + c[None, :] * HW
    ok = (p < HW)[:, None] & c_ok[None, :]
    xv = tl.load(x_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    tl.store(y_ptr + offs, (xv * g[None, :]).to(y_ptr.dtype.element_ty), mask=ok)


se_pool_autotuned = triton.autotune(
    configs=POOL_CONFIGS, key=["C", "HW", "CHANNELS_LAST"],
    prune_configs_by={"early_config_prune": keep_layout},
)(se_pool_kernel)  # fmt: skip

se_excite_scale_autotuned = triton.autotune(
    configs=SCALE_CONFIGS, key=["C", "CR", "HW", "CHANNELS_LAST"],
    prune_configs_by={"early_config_prune": keep_layout},
)(se_excite_scale_kernel)  # fmt: skip


def pool_grid(n: int, c: int, meta: dict) -> tuple[int, int]:
    return (n, triton.cdiv(c, meta["BLOCK_C"]))


def scale_grid(n: int, c: int, hw: int, meta: dict) -> tuple[int, int, int]:
    return (n, triton.cdiv(c, meta["BLOCK_C"]), triton.cdiv(hw, meta["BLOCK_HW"]))


def pick_configs(c: int, hw: int, channels_last: bool) -> tuple[triton.Config, triton.Config]:
    """(pool config, scale config) for this shape without timing: small maps take the configs
    with short spatial tiles."""

    def pick(configs):
        configs = layout_configs(configs, channels_last)
        fits = [cfg for cfg in configs if cfg.kwargs["BLOCK_HW"] <= max(16, 2 * hw)]
        return fits[0] if fits else min(configs, key=lambda cfg: cfg.kwargs["BLOCK_HW"])

    return pick(POOL_CONFIGS), pick(SCALE_CONFIGS)


def squeeze_excite(
    x,
    w1,
    b1,
    w2,
    b2,
    act: str | int = "relu",
    gate: str | int = "sigmoid",
    configs: tuple[triton.Config, triton.Config] | None = None,
):
    """SE on a torch tensor ``x`` (N, C, H, W), contiguous or channels-last; ``w1`` (CR, C[, 1,
    1]), ``w2`` (C, CR[, 1, 1]). ``configs=None`` autotunes (GPU); a (pool, scale) pair of
    ``triton.Config`` runs those."""
    import torch

    n, c, h, w = x.shape
    hw = h * w
    cr = int(w1.shape[0])
    channels_last = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    if not channels_last:
        x = x.contiguous()
    y = torch.empty_like(x)
    pooled = torch.empty((n, c), device=x.device, dtype=torch.float32)
    w1 = w1.reshape(cr, c).contiguous()
    w2 = w2.reshape(c, cr).contiguous()
    meta = dict(ACT=act_code(act), GATE=act_code(gate), CHANNELS_LAST=channels_last)
    if configs is None:
        se_pool_autotuned[lambda m: pool_grid(n, c, m)](
            x, pooled, c, hw, CHANNELS_LAST=channels_last
        )
        se_excite_scale_autotuned[lambda m: scale_grid(n, c, hw, m)](
            x, pooled, w1, b1, w2, b2, y, c, cr, hw, **meta, BLOCK_CR=next_pow2(cr)
        )
        return y
    pool_cfg, scale_cfg = (
        {k: v for k, v in cfg.kwargs.items() if k != "LAYOUT_NHWC"} for cfg in configs
    )
    se_pool_kernel[pool_grid(n, c, pool_cfg)](
        x, pooled, c, hw, CHANNELS_LAST=channels_last, **pool_cfg,
        num_warps=configs[0].num_warps, num_stages=configs[0].num_stages,
    )  # fmt: skip
    se_excite_scale_kernel[scale_grid(n, c, hw, scale_cfg)](
        x, pooled, w1, b1, w2, b2, y, c, cr, hw, **meta, BLOCK_CR=next_pow2(cr), **scale_cfg,
        num_warps=configs[1].num_warps, num_stages=configs[1].num_stages,
    )  # fmt: skip
    return y


def bytes_moved(n, c, hw, cr, itemsize=4) -> int:
    """DRAM bytes of the two launches (module docstring)."""
    return itemsize * (3 * n * c * hw) + 4 * 2 * n * c + itemsize * 2 * c * (cr + 1)


__all__ = [
    "POOL_CONFIGS",
    "SCALE_CONFIGS",
    "bytes_moved",
    "pick_configs",
    "pool_grid",
    "scale_grid",
    "se_excite_scale_autotuned",
    "se_excite_scale_kernel",
    "se_pool_autotuned",
    "se_pool_kernel",
    "squeeze_excite",
]
