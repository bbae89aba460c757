"""Where quantization error enters a model: each quantized activation against its fp32 value.

PT2E gives two graphs with the same node names: the calibrated float graph (BatchNorm folded,
observers in place) and the converted one, where each observed activation became a
``quantize → dequantize`` pair. Run both on one input; at each quantization point (the float
op whose output is quantized) compare the dequantized activation with the float graph's value
→ SQNR against fp32 at that point, every point on the same input.

Quantization noise adds up along the graph, so the point where the error *grows* most is the
one whose noise-to-signal ratio rises most above that of the points feeding it — in linear
terms, NSR = 10^(−SQNR/10): a layer that takes 30 dB inputs to 3 dB contributes ≈ 0.5, one that
takes 12 dB to 11 dB ≈ 0.016. That point is what a collapsed model's validation names (an
outlier channel that a per-tensor scale crushes shows up in the layer that reads it; a
calibration set whose range misses the data, at the input).

Like ONNX Runtime's ``qdq_loss_debug`` (activations of the QDQ model against the float model's),
but on PT2E's own pair of graphs, so no name matching across exporters is needed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.fx

_QUANTIZE = "quantize_per_tensor"
_DEQUANTIZE = "dequantize_per_tensor"
# ops that ride in a quantized unit after its conv / linear / add (named by the unit's head)
_EPILOGUE_OPS = ("relu", "relu6", "hardtanh", "hardswish", "silu", "sigmoid", "clamp", "add")


@dataclass
class LayerError:
    """One quantization point: a float op's output as the quantized graph carries it."""

    index: int  # execution order among the points
    node: str  # the FX node whose output is quantized
    layer: str  # module path and what the unit computes, e.g. "features.3.conv.0 (Conv2d → ReLU6)"
    shape: tuple
    sqnr_db: float  # dequantized activation vs the float graph's value at this point
    input_sqnr_db: float | None  # the worst of the points feeding it (None: reads the input)
    growth: float  # NSR here − the largest NSR feeding it

    def to_json(self) -> dict:
        return asdict(self)


def _is(node: torch.fx.Node, name: str) -> bool:
    return node.op == "call_function" and name in str(node.target).split(".")


def _is_quantize(node) -> bool:
    return _is(node, _QUANTIZE)


def _target_name(node: torch.fx.Node) -> str:
    return str(getattr(node.target, "__name__", node.target)).split(".")[0]


def _module_of(node: torch.fx.Node) -> tuple[str, str] | None:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return None
    path, cls = list(stack.values())[-1]
    return path, (cls if isinstance(cls, str) else cls.__name__).rsplit(".", 1)[-1]


def _op_name(node: torch.fx.Node) -> str:
    """A conv / activation by its module class (``Conv2d``, ``ReLU6``), an add or mul by its op."""
    name = _target_name(node)
    where = _module_of(node)
    if name in ("add", "mul") or where is None:
        return name
    return where[1]


def _label(src: torch.fx.Node) -> str:
    """The quantized unit ending at ``src``: walk back through its epilogue to the head op."""
    chain, node = [src], src
    while _target_name(node) in _EPILOGUE_OPS:
        floats = [a for a in node.args if isinstance(a, torch.fx.Node) and not _is(a, _DEQUANTIZE)]
        if len(floats) != 1:
            break
        node = floats[0]
        chain.append(node)
    head = chain[-1]
    where = _module_of(head)
    ops = " → ".join(_op_name(n) for n in reversed(chain))
    if src.op == "placeholder":
        return f"input {src.name}"
    return f"{where[0] if where is not None and where[0] else head.name} ({ops})"


class _Recorder(torch.fx.Interpreter):
    """Runs a graph keeping only the named nodes' outputs; observers pass their input through."""

    def __init__(self, module, keep: set[str]):
        super().__init__(module)
        self.keep, self.values = keep, {}

    def run_node(self, n):
        if n.op == "call_module" and n.target.startswith("activation_post_process"):
            out = self.env[n.args[0]]
        else:
            out = super().run_node(n)
        if n.name in self.keep:
            self.values[n.name] = out
        return out


def _sqnr(got: torch.Tensor, ref: torch.Tensor) -> float:
    from sepconv.compiler.int8.accuracy import sqnr_db

    return min(sqnr_db(got.detach().double().numpy(), ref.detach().double().numpy()), 200.0)


def _nsr(db: float) -> float:
    return 10 ** (-db / 10)


def layer_errors(calibrated, converted, inputs) -> list[LayerError]:
    """Every quantization point of ``converted`` on ``inputs`` (torch tensors), in order."""
    points: dict[str, torch.fx.Node] = {}  # src name → its (first) quantize node
    for n in converted.graph.nodes:
        if _is_quantize(n) and isinstance(n.args[0], torch.fx.Node):
            points.setdefault(n.args[0].name, n)
    float_names = {n.name for n in calibrated.graph.nodes}
    points = {k: q for k, q in points.items() if k in float_names}
    with torch.no_grad():
        ref = _Recorder(calibrated, set(points))
        ref.run(*inputs)
        got = _Recorder(converted, {q.name for q in points.values()})
        got.run(*inputs)

    def feeding(src: torch.fx.Node) -> set[str]:
        """The quantization points whose dequantized value ``src`` reads."""
        out, stack, seen = set(), [src], set()
        while stack:
            node = stack.pop()
            for a in node.all_input_nodes:
                if a.name in seen:
                    continue
                seen.add(a.name)
                if _is_quantize(a) and a.args[0].name in points:
                    out.add(a.args[0].name)
                elif a.op != "placeholder" and a.op != "get_attr":
                    stack.append(a)
        return out

    by_name = {n.name: n for n in converted.graph.nodes}
    sqnr: dict[str, float] = {}
    result = []
    for i, (name, q) in enumerate(points.items()):
        _, scale, zero_point = q.args[:3]
        value = (got.values[q.name].to(torch.float64) - float(zero_point)) * float(scale)
        sqnr[name] = _sqnr(value, ref.values[name])
        src = by_name[name]
        upstream = [sqnr[u] for u in feeding(src) if u in sqnr]
        worst_in = min(upstream) if upstream else None
        growth = _nsr(sqnr[name]) - (_nsr(worst_in) if worst_in is not None else 0.0)
        result.append(
            LayerError(
                i, name, _label(src), tuple(value.shape), sqnr[name], worst_in, float(growth)
            )
        )
    return result


def worst_growth(errors: list[LayerError]) -> LayerError | None:
    return max(errors, key=lambda e: e.growth, default=None)


def table(errors: list[LayerError]) -> str:
    """The points as a Markdown table, the one where the error grows most marked."""
    worst = worst_growth(errors)
    lines = [
        "| # | layer | shape | SQNR vs fp32 (dB) | its inputs (dB) | NSR growth |",
        "|---|---|---|---|---|---|",
    ]
    for e in errors:
        mark = " ◀" if e is worst else ""
        inp = "—" if e.input_sqnr_db is None else f"{e.input_sqnr_db:.1f}"
        lines.append(
            f"| {e.index} | {e.layer}{mark} | {'×'.join(map(str, e.shape))} | "
            f"{e.sqnr_db:.1f} | {inp} | {e.growth:.3g} |"
        )
    return "\n".join(lines)


def describe(e: LayerError) -> str:
    inp = (
        "the model input" if e.input_sqnr_db is None else f"{e.input_sqnr_db:.1f} dB at its inputs"
    )
    return f"{e.layer} (node {e.node}): SQNR vs fp32 {inp} → {e.sqnr_db:.1f} dB at its output"
