"""Each compiled operator of an int8 model against the simulated quantization, on the reference's
own inputs (teacher forcing).

A whole-model comparison cannot tell a compiler fault from a rounding tie: where the reference's
float arithmetic puts a value a hair off ``k + ½`` and our exact integer arithmetic puts it on the
tie, the two round one step apart, and that step feeds every later layer (squeeze-and-excitation
gates spread one pooled channel over a whole map). So each operator is checked on its own:

1. The reference (PT2E's converted graph) runs once; every ``quantize_per_tensor`` node keeps its
   8-bit output and the value a rounding tie allows instead: where ``x · (1/s)`` (float32, as
   torch computes it) sits within TIE_EPS of ``k + ½``, the other rounding; where the node
   requantizes an earlier tensor (``quantize(dequantize(q'))``, views between), q''s other
   rounding carried through — the compiled model may hold q' only inside a fused function.
2. The compiled model runs under the VM's instrument hook. After each call, every 8-bit tensor
   the call wrote is matched to the reference tensor of the same shape (NCHW, or NHWC for our
   channels-last maps) that it agrees with most; once matched it is overwritten with the
   reference's values, so the next operator reads exactly what the reference's next op read.
3. An operator passes when ≥ 99.9 % of its output is exact or the value a tie allows, and the
   rest is within one step. The model's own output, computed from forced inputs, must match
   the reference's to float noise.

A tensor that matches nothing (a layout op the reference does in float, or a broken operator) is
reported as unchecked and not forced; a broken one then shows in the operators after it and in
the final output. Like TVM's debug executor compared layer by layer, but on PT2E's graph, with no
name matching: the values say which tensor is which.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.fx

from sepconv.compiler.int8.layer_error import _is, _is_quantize
from sepconv.compiler.int8.lowering import is_integer_function

TIE_EPS = 1e-3  # how near ½ (in steps) the reference's rounded value is a tie
# … for a quantize written by one of our float functions (not an integer operator): its float
# input is then computed twice in fp32, by us and by the reference, in different orders, and
# forcing cannot align it (it is not an 8-bit tensor). ShuffleNetV2's last 1×1 conv, whose
# output PT2E leaves float into the mean pool, put two of 1024 pooled values 0.4 and 0.7 % of a
# step from a tie (AVX2 code, 7-bit weights)
FLOAT_FED_TIE_EPS = 2e-2
MIN_MATCH = 0.5  # fraction exact-or-tie for a tensor to be taken as the reference's
MIN_EXACT = 0.999  # the rule: ≥ 99.9 % of elements exact (ties count as exact)
EXACT_REL = 1e-5  # float outputs: |Δ| ≤ EXACT_REL · max|ref| is float noise


@dataclass
class OperatorResult:
    function: str  # the compiled function that wrote the tensor
    shape: tuple
    reference: str | None  # the quantize node it matched, None: unchecked
    exact: float = 0.0  # fraction bit-exact
    ties: float = 0.0  # fraction that is the value a reference rounding tie allows instead
    max_steps: int = 0  # the most steps off where no tie explains it
    passed: bool = True

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class OperatorCheck:
    operators: list[OperatorResult] = field(default_factory=list)
    output_exact: float = 0.0  # the model's outputs from forced inputs vs the reference's
    reason: str | None = None  # why no check ran (then ``passed`` is None)

    @property
    def checked(self) -> list[OperatorResult]:
        return [o for o in self.operators if o.reference is not None]

    @property
    def unchecked(self) -> list[OperatorResult]:
        return [o for o in self.operators if o.reference is None]

    @property
    def failed(self) -> list[OperatorResult]:
        return [o for o in self.checked if not o.passed]

    @property
    def passed(self) -> bool | None:
        if self.reason is not None:
            return None
        return bool(self.checked) and not self.failed and self.output_exact >= MIN_EXACT

    def summary(self) -> str:
        if self.reason is not None:
            return f"operator check not run: {self.reason}"
        checked = self.checked
        ties = sum(o.ties > 0 for o in checked)
        text = (
            f"{len(checked)} operator outputs on the reference's inputs: "
            f"{len(checked) - len(self.failed)} within 1 step and ≥ {100 * MIN_EXACT:g} % exact"
            f" ({ties} with rounding ties), model output {100 * self.output_exact:.2f} % exact"
        )
        unchecked = [o.function for o in self.unchecked]
        if unchecked:
            text += f"; {len(unchecked)} unchecked (no reference tensor): {', '.join(unchecked)}"
        for o in self.failed[:3]:
            text += (
                f"; FAIL {o.function} {list(o.shape)} vs {o.reference}: {100 * o.exact:.2f} % "
                f"exact, {100 * o.ties:.2f} % ties, {o.max_steps} steps"
            )
        return text

    def table(self) -> str:
        """Every 8-bit tensor a compiled function wrote, in execution order (Markdown)."""
        lines = [
            "| # | function | shape | reference tensor | exact | ties | steps | |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for i, o in enumerate(self.operators):
            verdict = "–" if o.reference is None else "ok" if o.passed else "FAIL"
            lines.append(
                f"| {i} | `{o.function}` | {'×'.join(map(str, o.shape))} | "
                f"{o.reference or 'none (unchecked)'} | {100 * o.exact:.2f} % | "
                f"{100 * o.ties:.2f} % | {o.max_steps} | {verdict} |"
            )
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {
            "passed": self.passed,
            "reason": self.reason,
            "output_exact": self.output_exact,
            "operators": [o.to_json() for o in self.operators],
        }


@dataclass
class _Quantized:
    name: str
    q: np.ndarray  # the 8-bit output, NCHW
    alt: np.ndarray  # the value a rounding tie also allows (== q where there is none)
    alt_float: np.ndarray  # the same within FLOAT_FED_TIE_EPS: for our float functions


def graph_module(reference) -> torch.fx.GraphModule | None:
    """The FX graph of a simulated-quantization reference (ours, an ExportedProgram — bare or
    as a .pt2's reference module — or a GraphModule); None for anything else."""
    program = getattr(reference, "program", None)  # model_files.ProgramModule
    if isinstance(program, torch.export.ExportedProgram):
        return program.module()
    module = getattr(reference, "module", reference)
    if callable(module) and not isinstance(module, torch.nn.Module):
        module = module()  # ExportedProgram.module
    return module if isinstance(module, torch.fx.GraphModule) else None


# ops that move values without changing them, between a dequantize and the next quantize
_VIEWS = ("flatten", "reshape", "view", "dropout", "clone", "squeeze", "unsqueeze", "contiguous")


class _QuantizeRecorder(torch.fx.Interpreter):
    """Runs the reference keeping each quantize node's output and the value a tie allows
    instead: the other rounding of its own tie, or — for a requantization (quantize of
    dequantize of an earlier quantize, through views only) — the earlier tie's other rounding
    carried through, which can be two steps at the new scale (our compiled model may hold the
    earlier tensor only inside a fused function, where it cannot be forced)."""

    def __init__(self, module):
        # values kept: a requantization re-runs the dequantize and views before it
        super().__init__(module, garbage_collect_values=False)
        self.found: list[_Quantized] = []
        self._alt: dict[str, torch.Tensor] = {}  # quantize node → its alt, as a torch tensor

    def run_node(self, n):
        out = super().run_node(n)
        if _is_quantize(n) and isinstance(out, torch.Tensor):
            carried = self._carried_alt(n)
            alts = self._own_alts(n, out, (TIE_EPS, FLOAT_FED_TIE_EPS))
            if carried is not None:
                alts = [torch.where(carried != out, carried, alt) for alt in alts]
            self._alt[n.name] = alts[0]
            self.found.append(_Quantized(n.name, out.numpy().copy(),
                                         *(a.numpy().copy() for a in alts)))  # fmt: skip
        return out

    def _own_alts(self, n, out: torch.Tensor, windows) -> list[torch.Tensor]:
        """``out`` with the other rounding where ``x · (1/s)`` is within each window of a tie."""
        args, _ = self.fetch_args_kwargs_from_env(n)
        x, scale, zero_point, lo, hi = args[:5]
        # what torch's quantize_per_tensor rounds: x · (1/s), both float32
        v = x.float() * torch.tensor(1.0 / float(scale), dtype=torch.float32)
        low = torch.floor(v)
        off_tie = ((v - low) - 0.5).abs()

        def q(k):
            return torch.clamp(k + int(zero_point), int(lo), int(hi)).to(out.dtype)

        other = torch.where(q(low) == out, q(low + 1), q(low))
        return [torch.where(off_tie <= eps, other, out) for eps in windows]

    def _carried_alt(self, n) -> torch.Tensor | None:
        chain, x = [], n.args[0]
        while isinstance(x, torch.fx.Node) and any(_is(x, view) for view in _VIEWS):
            chain.append(x)
            x = x.args[0]
        if not (isinstance(x, torch.fx.Node) and _is(x, "dequantize_per_tensor")):
            return None
        source = x.args[0]
        if not isinstance(source, torch.fx.Node) or source.name not in self._alt:
            return None
        value = self._alt[source.name]
        for node in [x, *reversed(chain), n]:
            args, kwargs = self.fetch_args_kwargs_from_env(node)
            value = node.target(value, *args[1:], **kwargs)
        return value


def _nhwc(a: np.ndarray) -> np.ndarray:
    return a.transpose(0, 2, 3, 1)


def _layouts(a: np.ndarray, shape: tuple) -> list:
    """How the compiled tensor may hold the reference's NCHW ``a``, as functions of an array:
    as is, with unit axes added or dropped ([N, C] as [N, 1, 1, C]), or NHWC."""
    out = []
    if a.shape == shape:
        out.append(lambda v: v)
    elif tuple(d for d in a.shape if d != 1) == tuple(d for d in shape if d != 1):
        out.append(lambda v: v.reshape(shape))
    if a.ndim == 4 and _nhwc(a).shape == shape:
        out.append(_nhwc)
    return out


def _compare(got: np.ndarray, ref: _Quantized, held, float_fed: bool) -> tuple[float, float, int]:
    """(fraction exact, fraction that is the value a reference tie allows instead, most steps
    off elsewhere) of ``got`` against ``ref`` held as ``held`` (one of :func:`_layouts`);
    ``float_fed``: written by a float function of ours (:data:`FLOAT_FED_TIE_EPS`)."""
    q, alt = held(ref.q), held(ref.alt_float if float_fed else ref.alt)
    d = np.abs(got.astype(np.int32) - q.astype(np.int32))
    tie = (d != 0) & (got == alt)
    exact = float(np.mean(d == 0))
    ties = float(np.mean(tie))
    rest = d[~tie]
    return exact, ties, int(rest.max()) if rest.size else 0


def check_operators(compiled, reference, arrays: list[np.ndarray]) -> OperatorCheck:
    """Run ``compiled`` on ``arrays`` with every 8-bit tensor forced to ``reference``'s (module
    doc); one :class:`OperatorResult` per tensor a compiled function wrote."""
    import tvm
    from tvm.runtime.vm import VMInstrumentReturnKind

    gm = graph_module(reference)
    if gm is None:
        return OperatorCheck(reason="the reference is not a PT2E graph")
    if compiled.is_remote:
        return OperatorCheck(reason="the model runs on a remote device")
    recorder = _QuantizeRecorder(gm)
    with torch.no_grad():
        ref_out = recorder.run(*[torch.from_numpy(a) for a in arrays])
    by_shape: dict[int, list[_Quantized]] = {}
    for r in recorder.found:
        by_shape.setdefault(r.q.size, []).append(r)
    check = OperatorCheck()
    no_op = int(VMInstrumentReturnKind.NO_OP)
    before_call: dict[int, np.ndarray] = {}

    def eight_bit(args):
        return [(i, a) for i, a in enumerate(args) if str(getattr(a, "dtype", "")) in
                ("uint8", "int8")]  # fmt: skip

    def hook(func, symbol, before, ret, *args):
        if symbol.startswith("vm."):
            return no_op
        if before:
            before_call.clear()
            before_call.update({i: a.numpy() for i, a in eight_bit(args)})
            return no_op
        for i, a in eight_bit(args):
            got = a.numpy()
            # destination-passing style: the last argument is written; others only if changed
            if i != len(args) - 1 and np.array_equal(before_call.get(i), got):
                continue
            best = None
            for ref in by_shape.get(got.size, []):
                for held in _layouts(ref.q, got.shape):
                    exact, ties, steps = _compare(got, ref, held, not is_integer_function(symbol))
                    if best is None or exact + ties > best[0] + best[1]:
                        best = (exact, ties, steps, ref, held)
            result = OperatorResult(symbol, tuple(got.shape), None)
            if best is not None and best[0] + best[1] >= MIN_MATCH:
                exact, ties, steps, ref, held = best
                result = OperatorResult(
                    symbol, result.shape, ref.name, exact, ties, steps,
                    passed=steps <= 1 and exact + ties >= MIN_EXACT,
                )  # fmt: skip
                # the next operator reads the reference's tensor
                a.copyfrom(np.ascontiguousarray(held(ref.q)))
            check.operators.append(result)
        return no_op

    vm = compiled._vm
    vm.set_instrument(hook)
    try:
        out = vm["main"](*[tvm.runtime.tensor(a, compiled._dev) for a in arrays],
                         *compiled._params)  # fmt: skip
    finally:
        vm.set_instrument(None)
    gots = [out.numpy()] if hasattr(out, "numpy") else [o.numpy() for o in out]
    refs = [ref_out] if isinstance(ref_out, torch.Tensor) else list(ref_out)
    fractions = []
    for g, r in zip(gots, refs):
        r = r.detach().numpy()
        tol = EXACT_REL * float(np.max(np.abs(r))) if r.size else 0.0
        fractions.append(float(np.mean(np.abs(g.astype(np.float64) - r) <= tol)) if r.size else 1.0)
    check.output_exact = min(fractions) if fractions and len(gots) == len(refs) else 0.0
    return check
