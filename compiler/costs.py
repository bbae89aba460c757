"""What each fused function costs: multiply-adds and the bytes it must move.

Computed at build time from the fused, not yet scheduled PrimFuncs (scheduling changes the loops,
not the work) and stored in the manifest (``build.functions``), so that ``sepconv profile`` can
put each function on a roofline without recompiling.

* **MACs**: the multiply-accumulate reductions (``acc = acc + a * b``: convolutions, matmuls),
  the counting rule of :mod:`sepconv.models` (other arithmetic — bias, activations, pooling sums —
  is not counted). ``mac_blocks`` lists them one per reduction in order, so a fused dw→pw
  function has two entries: what a peer runs as two nodes.
* **bytes**: every parameter buffer (inputs, weights, outputs) read or written once — the
  compulsory traffic. Intermediates inside a fused function are not counted: that is the traffic
  fusion saves.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import tvm
from tvm import tirx

from sepconv.schedules.block_names import USEFUL_CHANNELS, USEFUL_MACS


@dataclass
class FunctionCost:
    macs: int = 0
    bytes: int = 0
    calls: int = 0  # call sites in ``main``
    mac_blocks: list[int] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "calls": self.calls, "macs": self.macs, "bytes": self.bytes,
            "mac_blocks": self.mac_blocks,
        }  # fmt: skip


def _int(expr) -> int | None:
    try:
        return int(expr)
    except (TypeError, ValueError):
        return None


def _strip_cast(expr):
    while isinstance(expr, tirx.Cast):
        expr = expr.value
    return expr


def _is_multiply_add(value) -> bool:
    value = _strip_cast(value)
    if not isinstance(value, tirx.Add):
        return False
    return any(isinstance(_strip_cast(side), tirx.Mul) for side in (value.a, value.b))


def _blocks(stmt, out: list) -> None:
    """Every SBlock under ``stmt`` (TVM 0.27 exposes no TIR statement visitor to Python)."""
    if isinstance(stmt, tirx.SeqStmt):
        for s in stmt.seq:
            _blocks(s, out)
        return
    block = getattr(stmt, "block", None)  # SBlockRealize
    if block is not None:
        out.append(block)
        _blocks(block.body, out)
        return
    if isinstance(stmt, tirx.IfThenElse):
        _blocks(stmt.then_case, out)
        if stmt.else_case is not None:
            _blocks(stmt.else_case, out)
        return
    body = getattr(stmt, "body", None)  # For, AttrStmt, SBlock, …
    if isinstance(body, tirx.Stmt):
        _blocks(body, out)


def _buffer_bytes(buf) -> int:
    n = 1
    for dim in buf.shape:
        d = _int(dim)
        if d is None:
            return 0
        n *= d
    dtype = tvm.DataType(str(buf.dtype))
    return n * max(1, dtype.bits * dtype.lanes // 8)


def primfunc_cost(func: tirx.PrimFunc) -> FunctionCost:
    """MACs and compulsory bytes of one (unscheduled) PrimFunc."""
    cost = FunctionCost()
    blocks: list = []
    _blocks(func.body, blocks)
    for block in blocks:
        reduces = any(int(iv.iter_type) == tirx.IterVar.CommReduce for iv in block.iter_vars)
        if not reduces or not isinstance(block.body, tirx.BufferStore):
            continue
        if not _is_multiply_add(block.body.value):
            continue
        n = 1
        for iv in block.iter_vars:
            extent = _int(iv.dom.extent)
            if extent is None:
                n = 0
                break
            n *= extent
        useful = block.annotations.get(USEFUL_CHANNELS)
        if n and USEFUL_MACS in block.annotations:  # a padded reduction: the real MACs
            n = int(block.annotations[USEFUL_MACS])
        elif n and useful is not None:  # a GEMM on padded channels: count the real ones
            spatial = [iv for iv in block.iter_vars if int(iv.iter_type) == tirx.IterVar.DataPar]
            n = n * int(useful) // int(spatial[-1].dom.extent)
        if n:
            cost.mac_blocks.append(n)
    cost.macs = sum(cost.mac_blocks)
    # TVM 0.27: a PrimFunc's parameters are its buffers (scalars have no shape)
    cost.bytes = sum(_buffer_bytes(p) for p in func.params if hasattr(p, "shape"))
    return cost


def function_costs(mod: tvm.IRModule) -> dict[str, FunctionCost]:
    """Cost of every PrimFunc in a fused module, with how many times ``main`` calls it."""
    costs = {
        gv.name_hint: primfunc_cost(f)
        for gv, f in mod.functions_items()
        if isinstance(f, tirx.PrimFunc)
    }
    if "main" in [gv.name_hint for gv in mod.get_global_vars()]:
        from tvm import relax

        def visit(expr) -> None:
            if isinstance(expr, relax.Call) and expr.args:
                callee = expr.args[0]
                if isinstance(callee, tvm.ir.GlobalVar) and callee.name_hint in costs:
                    costs[callee.name_hint].calls += 1

        main = mod["main"]
        if isinstance(main, relax.Function):
            relax.analysis.post_order_visit(main.body, visit)
    return costs
