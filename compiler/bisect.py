"""Find the first compiled function whose output leaves the tolerance (`validate --bisect`).

One debug build, one run, no recompilation per step:

1. Rebuild the artifact's graph through the same path as :func:`sepconv.compiler.build.build`
   (same target, graph passes, schedule rules and tuning records, so a wrong kernel carries
   over) with one change just before codegen: every top-level binding of ``main`` whose value is a
   call (a ``call_tir`` of a fused PrimFunc — one of our operators or TVM's) is also returned.
2. Run it once on the chosen input, and run the reference's ``torch.export`` graph through an FX
   interpreter that records every node's output.
3. Match each compiled intermediate to a reference node. The Relax importer keeps no FX names and
   our passes fold BatchNorm, fuse dw→act→pw and go channels-last, so matching is by value:
   candidates are the reference tensors of the same shape, as they are or NCHW→NHWC permuted;
   the one closest under the validation rule (max |Δ| ≤ 1e-4·max|ref| + 1e-5) is the match.
   A fused function's output is the value after its last fused op (conv + BN + act + residual
   add → the FX ``add``), so most functions find their counterpart; one without any candidate
   of its shape stays *unmatched* and is never judged.
4. The first function (in execution order) whose best candidate is outside the tolerance is the
   divergence. Reported with it: the matched functions that feed it (the points just before it,
   with their errors) and any unmatched functions between those and it (also suspects).
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from sepconv.compiler.patterns import static_shape
from sepconv.compiler.validation import compare, seeded_inputs
from sepconv.errors import SepconvError

if TYPE_CHECKING:
    import tvm

    from sepconv.compiler.runtime import CompiledModel

log = logging.getLogger(__name__)

# (layout name, numpy axes applied to the reference tensor to give the compiled layout)
_LAYOUTS_4D = (("same", None), ("NCHW→NHWC", (0, 2, 3, 1)))

# Our operators as separable.py names their PrimFuncs (FuseOps prefixes "fused_"); longest first.
_OUR_OPS = (
    ("sepconv_dw_pw", "fused dw→pw"),
    ("sepconv_dw", "depthwise"),
    ("sepconv_linear", "linear"),
    ("sepconv_pw", "pointwise"),
    ("sepconv_conv", "dense conv"),
)


@dataclass
class BisectPoint:
    """One compiled function's output and what it matched in the reference."""

    index: int  # position in main's execution order
    var: str  # the Relax variable it binds
    function: str  # the PrimFunc it calls
    op_kind: str  # e.g. "sepconv_dw_pw (fused dw→pw)" or "TVM: matmul_add3"
    origin: str  # "sepconv" (our operator) or "tvm"
    shape: tuple[int, ...]
    status: str  # "ok" | "diverged" | "unmatched"
    tuned: bool = False  # scheduled from a tuning record rather than a rule
    max_abs_error: float | None = None
    tolerance: float | None = None
    reference: str | None = None  # FX node name, e.g. "hardswish"
    reference_op: str | None = None  # e.g. "aten.hardswish.default"
    reference_module: str | None = None  # e.g. "pw.2 (Hardswish)"
    layout: str | None = None  # "same" | "NCHW→NHWC"
    inputs: list[str] = field(default_factory=list)  # vars of the points it reads

    def describe(self) -> str:
        where = f"{self.function} [{self.op_kind}] → {list(self.shape)}"
        if self.status == "unmatched":
            return f"{where}: no reference tensor of this shape (not checked)"
        ref = f"{self.reference} ({self.reference_op}"
        ref += f", {self.reference_module})" if self.reference_module else ")"
        lay = "" if self.layout == "same" else f", {self.layout}"
        return (
            f"{where}: max abs error {self.max_abs_error:.3g} (tolerance {self.tolerance:.3g}) "
            f"vs {ref}{lay}"
        )


@dataclass
class BisectReport:
    model: str
    seed: int  # the seed of the input bisected (the worst of those validation uses)
    points: list[BisectPoint]
    first_divergence: BisectPoint | None
    before: list[BisectPoint]  # matched points that feed the divergence (inputs to it)
    unchecked: list[BisectPoint]  # unmatched points between those and the divergence
    output_max_abs_error: float  # artifact vs reference on that input, first output
    output_passed: bool
    rebuild_max_abs_diff: float  # debug rebuild vs the artifact itself, first output
    reproduces: bool
    rule: str = "max_abs_error <= 1e-4 * max|reference| + 1e-5, per intermediate"
    notes: list[str] = field(default_factory=list)

    @property
    def diverged(self) -> bool:
        return self.first_divergence is not None

    @property
    def matched(self) -> int:
        return sum(p.status != "unmatched" for p in self.points)

    def to_json(self) -> dict:
        d = asdict(self)
        d["diverged"] = self.diverged
        d["matched"] = self.matched
        return d

    def summary(self) -> str:
        n = len(self.points)
        lines = [
            f"bisect {self.model} (input seed {self.seed}): {self.matched} of {n} compiled "
            f"functions matched a reference tensor ({self.rule})"
        ]
        d = self.first_divergence
        if d is None:
            lines.append("  no divergence: every matched intermediate is within tolerance")
        else:
            lines.append(f"  FIRST DIVERGENCE at #{d.index} {d.var} = {d.describe()}")
            lines.append(
                f"    {'our operator' if d.origin == 'sepconv' else 'a TVM operator'}, scheduled "
                f"by {'a tuning record' if d.tuned else 'a schedule rule'}"
            )
            if self.before:
                lines.append("  just before it (its inputs, in tolerance):")
                lines += [f"    #{p.index} {p.var} = {p.describe()}" for p in self.before]
            else:
                lines.append("  just before it: only the model's inputs and weights")
            if self.unchecked:
                lines.append("  unchecked functions in between (also suspects):")
                lines += [f"    #{p.index} {p.var} = {p.describe()}" for p in self.unchecked]
        lines.append(
            f"  model output: max abs error {self.output_max_abs_error:.3g} "
            f"({'ok' if self.output_passed else 'FAIL'}); debug rebuild vs artifact "
            f"{self.rebuild_max_abs_diff:.3g} ({'same' if self.reproduces else 'DIFFERENT'})"
        )
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)

    def table(self) -> str:
        """Every point, one line each (the CLI's --verbose view)."""
        rows = []
        for p in self.points:
            err = "-" if p.max_abs_error is None else f"{p.max_abs_error:.2e}"
            tol = "-" if p.tolerance is None else f"{p.tolerance:.2e}"
            rows.append(
                f"  {p.index:>3} {p.status:<9} {err:>9} {tol:>9}  {p.function:<48} "
                f"{p.reference or '':<24} {list(p.shape)}"
            )
        head = f"  {'#':>3} {'status':<9} {'error':>9} {'tol':>9}  {'function':<48} "
        return "\n".join([head + f"{'reference':<24} shape", *rows])


# ---------------------------------------------------------------------------------------------
# Compiled side: expose every intermediate of main


@dataclass
class _Tap:
    var: str
    function: str
    shape: tuple[int, ...]
    inputs: list[str]


def _callee_name(call) -> str | None:
    from tvm import relax

    if not isinstance(call, relax.Call):
        return None
    op = call.op
    if isinstance(op, relax.GlobalVar):
        return op.name_hint
    name = getattr(op, "name", "")
    if name in ("relax.call_tir", "relax.call_tir_inplace", "relax.call_dps_packed"):
        callee = call.args[0]
        return getattr(callee, "name_hint", None) or getattr(callee, "global_symbol", None)
    return name or None


def _call_args(call) -> list:
    from tvm import relax

    name = getattr(call.op, "name", "")
    if name.startswith("relax.call_tir") or name == "relax.call_dps_packed":
        args = call.args[1]
        return list(args.fields) if isinstance(args, relax.Tuple) else [args]
    return list(call.args)


def expose_intermediates(mod: tvm.IRModule, taps: list[_Tap]) -> tvm.IRModule:
    """``main`` returns ``(original result, every call binding's tensor…)``; fills ``taps``.

    Only main changes: the PrimFuncs (scheduled, possibly wrong) are those the artifact has.
    """
    from tvm import relax

    main = mod["main"]
    body = main.body
    if not isinstance(body, relax.SeqExpr):
        raise SepconvError("bisect: main has no binding blocks to expose (unexpected IR)")
    blocks = []
    exposed: list = []
    names: dict = {}
    used: set[str] = set()
    for block in body.blocks:
        bindings = list(block.bindings)
        escapes = []
        for b in block.bindings:
            if not isinstance(b, relax.VarBinding):
                continue
            fname = _callee_name(b.value)
            shape = static_shape(b.var)
            if fname is None or shape is None:
                continue
            name = b.var.name
            if name in used:  # Relax names need not be unique; the printer adds _1, _2 …
                name = next(
                    f"{name}_{i}" for i in range(1, len(used) + 2) if f"{name}_{i}" not in used
                )
            used.add(name)
            inputs = [names[a] for a in _call_args(b.value) if a in names]
            names[b.var] = name
            taps.append(_Tap(name, fname, shape, inputs))
            if isinstance(b.var, relax.DataflowVar):
                out = relax.Var(f"{name}_bisect", b.var.ty)
                escapes.append(relax.VarBinding(out, b.var))
                exposed.append(out)
            else:
                exposed.append(b.var)
        if isinstance(block, relax.DataflowBlock):
            blocks.append(relax.DataflowBlock(bindings + escapes))
        else:
            blocks.append(relax.BindingBlock(bindings + escapes))
    if not exposed:
        raise SepconvError("bisect: main calls no functions; there is nothing to compare")
    result = relax.Tuple([body.body, *exposed])
    out_var = relax.Var("bisect_outputs", result.ty)
    blocks.append(relax.BindingBlock([relax.VarBinding(out_var, result)]))
    new_main = relax.Function(
        list(main.params), relax.SeqExpr(blocks, out_var), result.ty, main.is_pure, main.attrs
    )
    out = mod.clone()
    out["main"] = new_main
    return out


def _op_kind(function: str) -> tuple[str, str]:
    for key, what in _OUR_OPS:
        if key in function:
            return f"{key} ({what})", "sepconv"
    stripped = re.sub(r"^fused_", "", function)
    return f"TVM: {stripped}", "tvm"


# ---------------------------------------------------------------------------------------------
# Reference side: every FX node's output


@dataclass
class _RefTensor:
    order: int
    name: str
    op: str
    module: str | None
    value: np.ndarray


def _module_of(node) -> str | None:
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return None
    path, cls = list(stack.values())[-1]
    cls = str(cls).rsplit(".", 1)[-1]
    return f"{path} ({cls})" if path else cls


def reference_tensors(exported, inputs: list[torch.Tensor]) -> list[_RefTensor]:
    """Run the ``torch.export`` graph and record every input and op output (floating tensors)."""
    recorded: list[_RefTensor] = []

    class Recorder(torch.fx.Interpreter):
        def run_node(self, node):
            out = super().run_node(node)
            if (
                node.op in ("placeholder", "call_function")
                and isinstance(out, torch.Tensor)
                and out.is_floating_point()
            ):
                value = out.detach().to(torch.float32).contiguous().numpy().copy()
                recorded.append(
                    _RefTensor(len(recorded), node.name, str(node.target), _module_of(node), value)
                )
            return out

    with torch.no_grad():
        Recorder(exported.module()).run(*inputs)
    return recorded


def _match(point: BisectPoint, got: np.ndarray, by_shape: dict) -> None:
    """Fill ``point`` with its closest reference tensor (sets status, error, reference)."""
    best = None
    for layout, axes in _LAYOUTS_4D if got.ndim == 4 else (("same", None),):
        ref_shape = got.shape if axes is None else tuple(got.shape[axes.index(i)] for i in range(4))
        for ref in by_shape.get(ref_shape, ()):
            value = ref.value if axes is None else ref.value.transpose(axes)
            cmp = compare(point.var, got, value)
            score = cmp.max_abs_error / cmp.tolerance if cmp.tolerance > 0 else cmp.max_abs_error
            if best is None or score < best[0]:
                best = (score, cmp, ref, layout)
    if best is None:
        point.status = "unmatched"
        return
    _, cmp, ref, layout = best
    point.status = "ok" if cmp.passed else "diverged"
    point.max_abs_error, point.tolerance = cmp.max_abs_error, cmp.tolerance
    point.reference, point.reference_op, point.reference_module = ref.name, ref.op, ref.module
    point.layout = layout


def match_points(
    taps: list[_Tap],
    values: list[np.ndarray],
    refs: list[_RefTensor],
    tuned: set[str] = frozenset(),
) -> list[BisectPoint]:
    by_shape: dict[tuple, list[_RefTensor]] = {}
    for ref in refs:
        by_shape.setdefault(tuple(ref.value.shape), []).append(ref)
    points = []
    for i, (tap, got) in enumerate(zip(taps, values)):
        kind, origin = _op_kind(tap.function)
        point = BisectPoint(
            index=i,
            var=tap.var,
            function=tap.function,
            op_kind=kind,
            origin=origin,
            shape=tap.shape,
            status="unmatched",
            tuned=tap.function in tuned,
            inputs=list(tap.inputs),
        )
        _match(point, got, by_shape)
        points.append(point)
    return points


def first_divergence(
    points: list[BisectPoint],
) -> tuple[BisectPoint | None, list[BisectPoint], list[BisectPoint]]:
    """(divergence, matched points just before it, unmatched points between) — or (None, [], [])."""
    by_var = {p.var: p for p in points}
    for p in points:
        if p.status != "diverged":
            continue
        before, unchecked, seen = [], [], set()
        stack = list(p.inputs)
        while stack:
            var = stack.pop()
            if var in seen or var not in by_var:
                continue
            seen.add(var)
            q = by_var[var]
            if q.status == "unmatched":
                unchecked.append(q)
                stack.extend(q.inputs)
            else:
                before.append(q)
        return p, sorted(before, key=lambda q: q.index), sorted(unchecked, key=lambda q: q.index)
    return None, [], []


# ---------------------------------------------------------------------------------------------
# The whole bisect


def _worst_input(compiled, reference, seed: int, num_inputs: int):
    """The seeded input (of those validation uses) with the largest output error, scaled."""
    worst = None
    for i in range(num_inputs):
        arrays = seeded_inputs(compiled.inputs, seed + i)
        with torch.no_grad():
            ref = reference(*[torch.from_numpy(a) for a in arrays])
        ref = ref if isinstance(ref, torch.Tensor) else ref[0]
        got = compiled(*arrays)
        got = got if isinstance(got, np.ndarray) else got[0]
        cmp = compare("output", got, ref.numpy())
        score = cmp.max_abs_error / cmp.tolerance if cmp.tolerance > 0 else cmp.max_abs_error
        if worst is None or score > worst[0]:
            worst = (score, seed + i, arrays, got, cmp)
    return worst[1:]


def _rebuild_options(manifest) -> dict:
    build = manifest.build
    return {
        "sepconv_ops": build.get("sepconv_ops") is not None or build.get("triton_ops") is not None,
        "precision": build.get("precision", "fp32"),
        "cuda_graph": False,  # debug outputs are read once; no graph capture needed
    }


def _flatten(value) -> list[np.ndarray]:
    if hasattr(value, "numpy"):
        return [value.numpy()]
    out = []
    for v in value:
        out += _flatten(v)
    return out


def bisect(
    compiled: CompiledModel,
    reference: torch.nn.Module,
    *,
    model_name: str,
    seed: int = 0,
    num_inputs: int = 3,
) -> BisectReport:
    """Locate the first compiled function whose output disagrees with the reference.

    ``compiled`` is a loaded :class:`~sepconv.compiler.runtime.CompiledModel`; ``reference`` the
    eager module it was compiled from. The artifact is rebuilt once with every intermediate as an
    output, with the target, graph options and tuning logs its manifest records.
    """
    import tvm
    from tvm import relax

    from sepconv.compiler.build import build
    from sepconv.compiler.importer import ImportedGraph, export_program, to_relax
    from sepconv.compiler.tuning.database import database_for_build

    if not isinstance(reference, torch.nn.Module):
        raise SepconvError(
            f"bisect needs the eager reference as a torch.nn.Module, got "
            f"{type(reference).__name__}: pass the module the artifact was compiled from"
        )
    source = getattr(reference, "sepconv_source", None)
    if getattr(source, "kind", None) == "onnx":
        raise SepconvError(
            f"bisect matches intermediates against a torch.export graph, and {source.name} is an "
            "ONNX model (its reference is ONNX Runtime, whose intermediates are not exposed): "
            "bisect the PyTorch module or a .pt2 export of it instead"
        )
    if not compiled.inputs:
        raise SepconvError(f"{compiled.path} has no inputs in its manifest; recompile it")
    reference = reference.eval()
    input_seed, arrays, artifact_out, out_cmp = _worst_input(compiled, reference, seed, num_inputs)
    tensors = [torch.from_numpy(a) for a in arrays]
    exported = export_program(reference, tuple(tensors))
    refs = reference_tensors(exported, tensors)
    graph = ImportedGraph(mod=to_relax(exported), inputs=compiled.inputs, outputs=compiled.outputs)

    manifest = compiled.manifest
    target = tvm.target.Target(manifest.target["tvm_target"])
    dirs = manifest.build.get("tune_logs") or []
    database, _ = database_for_build(manifest.target["key"], list(dirs)) if dirs else (None, [])
    taps: list[_Tap] = []
    result = build(
        graph,
        target,
        database=database,
        before_codegen=lambda mod: expose_intermediates(mod, taps),
        **_rebuild_options(manifest),
    )
    dev = compiled._dev
    vm = relax.VirtualMachine(result.executable, dev)
    params = [tvm.runtime.tensor(w, dev) for w in result.weights.values()]
    outs = vm["main"](*[tvm.runtime.tensor(a, dev) for a in arrays], *params)
    head, values = _flatten(outs[0]), [o.numpy() for o in list(outs)[1:]]

    points = match_points(taps, values, refs, tuned=set(result.stats.tuned))
    div, before, unchecked = first_divergence(points)
    rebuild_diff = compare("rebuild", head[0], artifact_out)
    notes = []
    if not rebuild_diff.passed:
        notes.append(
            "the debug rebuild does not reproduce the artifact's output (the schedule rules or "
            "tuning logs changed since it was compiled?): the bisect describes the rebuild; "
            "recompile the artifact to bisect what it runs today"
        )
    if div is None and not out_cmp.passed:
        notes.append(
            "the model output fails but no matched intermediate does: the fault is in a "
            "function without a reference counterpart (see the unmatched points)"
        )
    unmatched = [p.function for p in points if p.status == "unmatched"]
    if unmatched:
        notes.append(f"{len(unmatched)} function(s) had no reference tensor of their shape")
    report = BisectReport(
        model=model_name,
        seed=input_seed,
        points=points,
        first_divergence=div,
        before=before,
        unchecked=unchecked,
        output_max_abs_error=out_cmp.max_abs_error,
        output_passed=out_cmp.passed,
        rebuild_max_abs_diff=rebuild_diff.max_abs_error,
        reproduces=rebuild_diff.passed,
        notes=notes,
    )
    log.info(
        "bisect: %d points, %d matched, divergence at %s",
        len(points),
        report.matched,
        div.function if div else None,
    )
    return report
