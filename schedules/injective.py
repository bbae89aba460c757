"""Elementwise, broadcast and data-movement functions (add, multiply, h-swish, reshape,
transpose / channel shuffle, concat, split, pad, layout transforms).

Question this rule answers: *are all blocks spatial (no reduction)?* If so:

* every block that can be is inlined into its consumer, so a chain of elementwise ops makes one
  pass over memory;
* each remaining block's loops are fused into one; the innermost ``V`` elements become a vector
  when the innermost axis divides into whole vectors (so a vector never straddles a row, which
  keeps broadcast and transpose reads simple), and the rest runs ``parallel`` in chunks big
  enough to amortise a thread wake-up (small functions stay on one thread).

These are memory-bound: the schedule's job is to touch every byte once with wide loads and use
all cores on large tensors. ``tunable`` is accepted and ignored.
"""

from __future__ import annotations

import math

from tvm import s_tir, tirx
from tvm.target import Target

from .analysis import as_int, inline_all, is_spatial_block, top_blocks
from .base import CpuRule
from .target_params import CpuParams, cpu_params

# Below this many elements a function runs on one thread: waking the pool costs more (~µs).
PARALLEL_MIN_ELEMENTS = 16384


def schedule_spatial_block(sch: s_tir.Schedule, block, params: CpuParams) -> None:
    """Fuse, vectorise the innermost whole vectors, parallelise the rest (in place)."""
    loops = sch.get_loops(block)
    if not loops:
        return
    extents = [as_int(sch.get(lp).extent) for lp in loops]
    dtype = sch.get(block).writes[0].source.dtype if sch.get(block).writes else "float32"
    lanes = params.lanes(dtype)
    inner_ext = extents[-1]
    vec = 0
    if inner_ext is not None:
        vec = lanes
        while vec > 1 and inner_ext % vec:
            vec //= 2
        if vec < 4 and inner_ext >= 4:
            vec = 0
    total = math.prod(extents) if None not in extents else None
    if vec > 1:
        fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
        outer, inner = sch.split(fused, [None, vec])
        sch.vectorize(inner)
    elif len(loops) > 1 and inner_ext is not None:
        # A scalar innermost loop stays its own loop: its index then has a known range, and
        # the arithmetic of reshapes and channel shuffles (x // 116, x % 116 for x < 58)
        # simplifies away; fused into the outer loops it stays div/mod per element.
        outer = sch.fuse(*loops[:-1]) if len(loops) > 2 else loops[0]
    else:
        outer = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    if total is None or total >= PARALLEL_MIN_ELEMENTS:
        n_outer = as_int(sch.get(outer).extent)
        tasks = 4 * params.num_cores
        if n_outer is not None and n_outer > tasks and n_outer % tasks == 0:
            outer, _ = sch.split(outer, [tasks, None])
        sch.parallel(outer)


class Injective(CpuRule):
    """Inline elementwise chains; fuse, vectorise and parallelise what is left."""

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool):
        if not self.is_target_available(target) or not isinstance(func, tirx.PrimFunc):
            return None
        sch = s_tir.Schedule(func)
        blocks = top_blocks(sch)
        if not blocks:
            return None
        for b in blocks:
            if not is_spatial_block(sch, b) or len(sch.get_child_blocks(b)) > 0:
                return None
        params = cpu_params(target)
        left = inline_all(sch, blocks)
        if not left:
            return None
        for b in left:
            schedule_spatial_block(sch, b, params)
        return sch
