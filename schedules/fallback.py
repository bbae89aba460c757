"""The last rule: accepts ANY PrimFunc and never raises, so nothing reaches codegen unscheduled.

What it does, each step kept only if TVM accepts it (every primitive is tried on its own and a
refusal just skips that step):

1. inline whatever blocks can be inlined (elementwise producers and consumers);
2. for each remaining block, fuse its leading spatial loops and run them ``parallel`` (the
   reduction loops, if any, stay serial inside), and vectorise the innermost spatial loop of
   spatial blocks when it divides into whole vectors;
3. if the function cannot even be analysed (opaque blocks, symbolic shapes), mark the outermost
   loop of each top-level loop nest ``parallel`` when TVM proves that legal.

If all of that fails it still returns a Schedule of the unchanged function: correct code, just
not fast, and ``apply_schedules`` logs which function that was.
"""

from __future__ import annotations

import logging

from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.target import Target

from .analysis import inline_all, top_blocks
from .base import CpuRule
from .injective import schedule_spatial_block
from .target_params import cpu_params

log = logging.getLogger(__name__)


def _try(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except Exception:  # noqa: BLE001 - a refused primitive is skipped, not fatal
        return None


class Fallback(CpuRule):
    """Parallelise the outer spatial loops of anything; never declines, never raises."""

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool):
        if not isinstance(func, tirx.PrimFunc):
            return None
        try:
            sch = self._structured(func, target)
            if sch is not None:
                return sch
        except Exception as exc:  # noqa: BLE001
            log.debug("fallback: structured schedule failed (%s); using loop-level one", exc)
        try:
            return self._loops_only(func)
        except Exception as exc:  # noqa: BLE001
            log.debug("fallback: loop-level schedule failed (%s); leaving function as is", exc)
        return s_tir.Schedule(func)

    def _structured(self, func: tirx.PrimFunc, target: Target):
        sch = s_tir.Schedule(func)
        infos = normalize_prim_func(sch)
        if infos is None:
            return None
        params = cpu_params(target)
        blocks = [bi.block_rv for bi in infos]
        remaining = set(id(b) for b in inline_all(sch, blocks))
        infos = [bi for bi in infos if id(bi.block_rv) in remaining]
        for bi in infos:
            kind = bi.dom_kind()
            if bi.is_injective():
                work = sch.copy()
                try:
                    schedule_spatial_block(work, bi.block_rv, params)
                except Exception:  # noqa: BLE001
                    continue
                sch = work
                continue
            loops = sch.get_loops(bi.block_rv)
            n_s = len(kind) - len(kind.lstrip("S"))
            if n_s == 0 or len(loops) != len(kind):
                continue
            outer = _try(sch.fuse, *loops[:n_s]) if n_s > 1 else loops[0]
            if outer is not None:
                _try(sch.parallel, outer)
        return sch

    def _loops_only(self, func: tirx.PrimFunc):
        sch = s_tir.Schedule(func)
        blocks = top_blocks(sch) or []
        seen = set()
        for b in blocks:
            loops = _try(sch.get_loops, b) or []
            if not loops:
                continue
            outer = loops[0]
            key = str(sch.get(outer).loop_var)
            if key in seen:
                continue
            seen.add(key)
            _try(sch.parallel, outer)
        return sch
