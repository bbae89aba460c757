"""A wrong kernel on purpose, for the bisect tests: a schedule rule that perturbs one PrimFunc.

``plant(monkeypatch, pick)`` puts :class:`PlantedFault` first in the CPU rule list. For every
function ``pick(func)`` accepts, it starts the reduction of one block from 0.5 instead of 0 (so
the function adds 0.5 to that block's result) and hands the perturbed function to the real rules,
which schedule it as usual: the fault goes through the normal build path, in the artifact and in
the bisect's debug rebuild alike.
"""

from __future__ import annotations

from collections.abc import Callable

import tvm_ffi
from tvm import s_tir, tirx


def block_names(func: tirx.PrimFunc) -> list[str]:
    names: list[str] = []

    def visit(block):
        names.append(block.name_hint)
        return block

    tvm_ffi.structural_map(func, [(s_tir.SBlock, visit)])
    return names


def block_channels(func: tirx.PrimFunc, block: str) -> int | None:
    """The innermost extent of the buffer ``block`` writes (its channels, in NHWC)."""
    found: list[int] = []

    def visit(b):
        if b.name_hint == block and b.writes:
            found.append(int(b.writes[0].source.shape[-1]))
        return b

    tvm_ffi.structural_map(func, [(s_tir.SBlock, visit)])
    return found[0] if found else None


def perturb_reduction(func: tirx.PrimFunc, block: str, offset: float = 0.5) -> tirx.PrimFunc:
    """``block``'s reduction starts from ``offset`` instead of its init value."""
    hits = []

    def named(name: str) -> bool:  # "*_red": any block whose name ends in "_red"
        return name.endswith(block[1:]) if block.startswith("*") else name == block

    def visit(b):
        if not named(b.name_hint) or not isinstance(b.init, tirx.BufferStore):
            return b
        hits.append(b.name_hint)
        init = b.init
        store = tirx.BufferStore(
            init.buffer, tirx.const(offset, init.buffer.dtype), list(init.indices)
        )
        return s_tir.SBlock(
            b.iter_vars, b.reads, b.writes, b.name_hint, b.body, store,
            b.alloc_buffers, b.match_buffers, b.annotations,
        )  # fmt: skip

    out = tvm_ffi.structural_map(func, [(s_tir.SBlock, visit)])
    assert hits, f"no reduction block {block!r} in the function"
    return out


class PlantedFault:
    """Test-only schedule rule: perturbs the functions ``pick`` accepts, then defers to
    ``rules`` (the real list) to schedule the wrong function."""

    name = "PlantedFault"

    def __init__(self, pick: Callable[[tirx.PrimFunc], bool], block: str, rules: list):
        self.pick, self.block, self.rules = pick, block, rules
        self.planted = 0

    def apply(self, func, target, tunable):
        if not isinstance(func, tirx.PrimFunc) or not self.pick(func):
            return None
        bad = perturb_reduction(func, self.block)
        for rule in self.rules:
            sch = rule.apply(bad, target, tunable)
            if sch is not None:
                self.planted += 1
                return sch[0] if isinstance(sch, (list, tuple)) else sch
        return None


def plant(monkeypatch, pick: Callable[[tirx.PrimFunc], bool], block: str) -> PlantedFault:
    """Make every CPU build in this test use the faulty rule first."""
    from sepconv.schedules import rule_list

    real = rule_list.cpu_rules
    fault = PlantedFault(pick, block, real())
    monkeypatch.setattr(rule_list, "cpu_rules", lambda target=None: [fault, *real(target)])
    return fault
