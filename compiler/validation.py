"""Numerical validation of a compiled model against eager PyTorch on the same seeded inputs.

Tolerance (fp32): max |compiled − eager| ≤ 1e-4 · max|eager| + 1e-5, per output. The error is also
reported relative to the output's scale (max abs error / max|eager|); element-wise relative error
is meaningless near zero and is not used. For classifier outputs the top-1 class is compared too,
skipping inputs whose eager top-2 margin is inside the tolerance (a tie either answer satisfies).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from sepconv.errors import SepconvError

REL_TOL = 1e-4
ABS_TOL = 1e-5


@dataclass
class OutputComparison:
    name: str
    max_abs_error: float
    max_rel_error: float  # max abs error / max |reference|
    reference_max_abs: float
    tolerance: float
    passed: bool


@dataclass
class ValidationReport:
    model: str
    passed: bool
    outputs: list[OutputComparison]
    num_inputs: int
    seed: int
    top1_checked: int = 0
    top1_agree: int = 0
    top1_ambiguous: int = 0
    rule: str = f"max_abs_error <= {REL_TOL:g} * max|reference| + {ABS_TOL:g}"
    notes: list[str] = field(default_factory=list)
    reference: str = "eager PyTorch"  # what the compiled model was compared with
    bisect: Any = field(default=None, repr=False)  # a compiler.bisect.BisectReport when asked

    def to_json(self) -> dict:
        d = asdict(self)
        d.pop("bisect")
        if self.bisect is not None:
            d["bisect"] = self.bisect.to_json()
        return d

    def summary(self) -> str:
        lines = [
            f"{'PASS' if self.passed else 'FAIL'}  {self.model} vs {self.reference}  ({self.rule})"
        ]
        for o in self.outputs:
            lines.append(
                f"  {o.name}: max abs error {o.max_abs_error:.3g}, max rel error "
                f"{o.max_rel_error:.3g} (tolerance {o.tolerance:.3g}) "
                f"{'ok' if o.passed else 'FAIL'}"
            )
        if self.top1_checked:
            lines.append(
                f"  top-1 agreement: {self.top1_agree}/{self.top1_checked}"
                + (f" ({self.top1_ambiguous} ties skipped)" if self.top1_ambiguous else "")
            )
        return "\n".join(lines)


def compare(name: str, got: np.ndarray, ref: np.ndarray) -> OutputComparison:
    if got.shape != ref.shape:
        return OutputComparison(name, float("inf"), float("inf"), 0.0, 0.0, False)
    ref64, got64 = ref.astype(np.float64), got.astype(np.float64)
    scale = float(np.max(np.abs(ref64))) if ref.size else 0.0
    err = float(np.max(np.abs(got64 - ref64))) if ref.size else 0.0
    if not np.all(np.isfinite(got64)):
        err = float("inf")
    tol = REL_TOL * scale + ABS_TOL
    rel = err / scale if scale > 0 else err
    return OutputComparison(name, err, rel, scale, tol, bool(err <= tol))


def _top1(got: np.ndarray, ref: np.ndarray, tol: float) -> tuple[int, int, int]:
    """(checked, agree, ambiguous) over the rows of a [batch, classes] output."""
    checked = agree = ambiguous = 0
    for g, r in zip(got.reshape(got.shape[0], -1), ref.reshape(ref.shape[0], -1)):
        top2 = np.sort(r)[-2:] if r.size > 1 else np.array([0.0, 1.0])
        if top2[1] - top2[0] <= 2 * tol:
            ambiguous += 1
            continue
        checked += 1
        agree += int(np.argmax(g) == np.argmax(r))
    return checked, agree, ambiguous


def seeded_inputs(specs, seed: int) -> list[np.ndarray]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for spec in specs:
        dtype = getattr(torch, spec.dtype)
        if dtype.is_floating_point:
            out.append(torch.randn(*spec.shape, generator=gen, dtype=dtype).numpy())
        else:
            out.append(torch.randint(0, 10, tuple(spec.shape), generator=gen, dtype=dtype).numpy())
    return out


def validate_against(
    compiled, reference: torch.nn.Module, *, model_name: str, seed: int = 0, num_inputs: int = 3
) -> ValidationReport:
    """Run ``compiled`` and eager ``reference`` on ``num_inputs`` seeded inputs and compare."""
    reference = reference.eval()
    worst: dict[str, OutputComparison] = {}
    checked = agree = ambiguous = 0
    for i in range(num_inputs):
        arrays = seeded_inputs(compiled.inputs, seed + i)
        with torch.no_grad():
            ref = reference(*[torch.from_numpy(a) for a in arrays])
        refs = [ref] if isinstance(ref, torch.Tensor) else list(ref)
        got = compiled(*arrays)
        gots = [got] if isinstance(got, np.ndarray) else list(got)
        if len(gots) != len(refs):
            raise SepconvError(
                f"the compiled model returns {len(gots)} outputs but the reference returns "
                f"{len(refs)}: is this the model the artifact was compiled from?"
            )
        for spec, g, r in zip(compiled.outputs, gots, refs):
            r = r.numpy()
            cmp = compare(spec.name, g, r)
            if spec.name not in worst or cmp.max_abs_error > worst[spec.name].max_abs_error:
                worst[spec.name] = cmp
            if r.ndim == 2 and r.shape[1] > 1:
                c, a, amb = _top1(g, r, cmp.tolerance)
                checked, agree, ambiguous = checked + c, agree + a, ambiguous + amb
    outputs = list(worst.values())
    passed = all(o.passed for o in outputs) and agree == checked
    return ValidationReport(
        model=model_name,
        passed=passed,
        outputs=outputs,
        num_inputs=num_inputs,
        seed=seed,
        top1_checked=checked,
        top1_agree=agree,
        top1_ambiguous=ambiguous,
    )
