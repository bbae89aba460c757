"""Dense layers: ``out[.., m, n] = Σ_k A[.., m, k] · B[.., k, n]`` (classifier, SE FCs, matmul).

Question this rule answers: *is the function one matmul-like reduction (spatial iterators
``…, m, n`` and one reduction ``k``) with elementwise work around it?*

* When ``n`` is the contiguous axis of the weight ``B[k, n]`` (what the PyTorch importer produces
  for ``nn.Linear``: the weight is transposed once, as a constant), the output is tiled as
  ``Tm`` rows × ``Tn`` vectors along ``n``; each step broadcasts one ``A[m, k]`` and loads
  ``Tn`` weight vectors, and the reduction over ``k`` runs outside the register tile.
* When the weight is ``B[n, k]`` (``k`` contiguous), vectors run along ``k``: partial sums of
  ``V`` lanes per output (``rfactor``), reduced once at the end.
* The epilogue (bias add, activation) is computed per tile; tiles of ``n`` run ``parallel``.

With batch 1 these layers are matrix-vector products and bound by reading the weights once;
the schedule streams each weight row exactly once. ``tunable=True`` samples the ``n`` tile.
"""

from __future__ import annotations

from tvm import ir, s_tir, tirx
from tvm.target import Target

from .analysis import as_int, divisors, inline_all, is_spatial_block, top_blocks
from .base import CpuRule
from .target_params import cpu_params


def _strip(expr):
    while isinstance(expr, tirx.Cast):
        expr = expr.value
    return expr


def _match(sch: s_tir.Schedule):
    """(block, producers, consumers, b_is_kn) for a matmul-like function, else None."""
    blocks = top_blocks(sch)
    if not blocks:
        return None
    reds = [b for b in blocks if not is_spatial_block(sch, b)]
    if len(reds) != 1:
        return None
    block = reds[0]
    if any(len(sch.get_child_blocks(b)) for b in blocks):
        return None
    stmt = sch.get(block)
    kinds = [iv.iter_type for iv in stmt.iter_vars]
    if kinds.count(tirx.IterVar.CommReduce) != 1 or kinds[-1] != tirx.IterVar.CommReduce:
        return None
    if len(kinds) < 3 or any(as_int(iv.dom.extent) is None for iv in stmt.iter_vars):
        return None
    body = stmt.body
    if not isinstance(body, tirx.BufferStore) or not isinstance(body.value, tirx.Add):
        return None
    acc, prod = _strip(body.value.a), _strip(body.value.b)
    if isinstance(acc, tirx.Mul):
        acc, prod = prod, acc
    if not isinstance(prod, tirx.Mul) or not isinstance(acc, ir.TensorLoad):
        return None
    loads = [_strip(prod.a), _strip(prod.b)]
    if not all(isinstance(ld, ir.TensorLoad) for ld in loads):
        return None
    ivars = [iv.var for iv in stmt.iter_vars]
    m, n, k = ivars[-3], ivars[-2], ivars[-1]
    if not all(isinstance(i, tirx.Var) for i in body.indices):
        return None
    if not body.indices or not body.indices[-1].same_as(n):
        return None

    def last2(ld):
        idx = ld.indices
        if len(idx) < 2 or not all(isinstance(i, (tirx.Var, tirx.IntImm)) for i in idx):
            return None
        return idx[-2], idx[-1]

    b_is_kn = None
    for ld in loads:
        pair = last2(ld)
        if pair is None:
            return None
        a2, a1 = pair
        if a2.same_as(k) and a1.same_as(n):
            b_is_kn = True
        elif a2.same_as(n) and a1.same_as(k):
            b_is_kn = False
        elif not (a1.same_as(k) and (a2.same_as(m) or isinstance(a2, tirx.IntImm))):
            return None
    if b_is_kn is None:
        return None
    pos = blocks.index(block)
    return block, blocks[:pos], blocks[pos + 1 :], b_is_kn


class Dense(CpuRule):
    """Vectorised matmul / GEMV with the bias and activation fused."""

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool):
        if not self.is_target_available(target) or not isinstance(func, tirx.PrimFunc):
            return None
        sch = s_tir.Schedule(func)
        found = _match(sch)
        if found is None:
            return None
        if found[1]:
            # inline producers (e.g. a transpose of the weight) first: the access pattern the
            # schedule must serve is the one left after inlining
            if inline_all(sch, found[1]):
                return None
            found = _match(sch)
            if found is None or found[1]:
                return None
        block, _, consumers, b_is_kn = found
        if consumers and inline_all(sch, consumers[:-1]):
            return None
        params = cpu_params(target)
        lanes = params.lanes("float32")
        loops = sch.get_loops(block)
        if len(loops) != len(sch.get(block).iter_vars):
            return None
        *batch, m, n, k = loops
        n_ext = int(sch.get(n).extent)
        m_ext = int(sch.get(m).extent)
        epilogue = consumers[-1] if consumers else None
        if epilogue is not None:
            stmt = sch.get(epilogue)
            if len(stmt.writes) != 1 or not is_spatial_block(sch, epilogue):
                return None
        if b_is_kn:
            vec = lanes
            while n_ext % vec:
                vec //= 2
            n_vecs = max(1, min(4, params.accumulator_regs // max(1, min(m_ext, 4))))
            n_tile_vecs = max(d for d in divisors(n_ext // vec) if d <= n_vecs)
            if tunable:
                cands = [d for d in divisors(n_ext // vec) if d <= 8]
                if len(cands) > 1:
                    n_tile_vecs = sch.sample_categorical(
                        cands, [1.0 / len(cands)] * len(cands), decision=cands.index(n_tile_vecs)
                    )
            tile_m = max(d for d in divisors(m_ext) if d <= 4)
            mo, mi = sch.split(m, [None, tile_m])
            no, ni_o, ni_i = sch.split(n, [None, n_tile_vecs, vec])
            sch.reorder(*batch, mo, no, k, mi, ni_o, ni_i)
            par = sch.fuse(*batch, mo, no)
            sch.parallel(par)
            if epilogue is None:
                epilogue = sch.cache_write(block, 0, "global")
            sch.reverse_compute_at(epilogue, par, preserve_unit_loops=True)
            sch.unroll(mi)
            sch.unroll(ni_o)
            if vec > 1:
                sch.vectorize(ni_i)
            init = sch.decompose_reduction(block, k)
            for b in (init, epilogue):
                lp = sch.get_loops(b)[-1]
                ext = int(sch.get(lp).extent)
                if ext % vec == 0 and ext >= vec > 1:
                    _, inner = sch.split(lp, [None, vec])
                    sch.vectorize(inner)
            return sch
        # B[n, k]: vector partial sums along k
        k_ext = int(sch.get(k).extent)
        vec = lanes
        while k_ext % vec:
            vec //= 2
        par = sch.fuse(*batch, m, n)
        sch.parallel(par)
        if epilogue is not None:
            sch.reverse_compute_at(epilogue, par, preserve_unit_loops=True)
        if vec > 1:
            ko, ki = sch.split(k, [None, vec])
            rf = sch.rfactor(ki, factor_axis=len(batch) + 2)
            # rfactor leaves the partial sums in a serial loop nest of their own: move them
            # under the parallel output loop (the partial-sum buffer shrinks to one vector)
            sch.compute_at(rf, par, preserve_unit_loops=True)
            # compute_at re-creates the loops in block-iterator order (ki, ..., ko): put the
            # reduction ko outside and the lanes ki innermost
            rf_loops = sch.get_loops(rf)
            n_iter = len(sch.get(rf).iter_vars)
            ki_loop, ko_loop = rf_loops[-n_iter], rf_loops[-1]
            sch.reorder(ko_loop, ki_loop)
            sch.vectorize(ki_loop)
            sch.decompose_reduction(rf, ko_loop)
        return sch
