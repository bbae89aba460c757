"""Static post-training quantization through PT2E (``torchao.quantization.pt2e``).

PT2E is the field's quantization front end for exported graphs: ``prepare_pt2e`` folds BatchNorm
into the convs and places observers, calibration runs the model eagerly, ``convert_pt2e`` leaves
a graph of ``quantize → dequantize`` pairs around each op with int8 weights. That graph is also
the accuracy reference (simulated quantization with the very scales and zero points we compile).

The scheme, from the target:
  weights      int8, symmetric, per output channel; 7-bit (−64…63) on x86 without VNNI (AVX-512
               VNNI or AVX-VNNI), whose ``vpmaddubsw`` sums u8·s8 pairs in s16 (2·255·64
               fits, 2·255·128 does not) — ONNX Runtime's ``reduce_range`` choice there, which
               keeps the per-tensor activations at 8 bits and moves the lost bit to the finer
               per-channel weights
  activations  per tensor, affine; uint8 on x86 (the u8×s8 ``vpmaddubsw``/``vpdpbusd`` operand
               order), int8 on AArch64 (``sdot`` is s8×s8)
  observer     ``histogram`` (minimises the L2 quantization error: robust to outliers) or
               ``minmax``
The ops grouped into one quantized unit (conv → activation, conv → add → ReLU, …) are the
quantizer's annotations (torchao's X86 and ARM inductor quantizers), with two of ours for
squeeze-and-excitation and channel concats (:class:`_SeparableRecipe`, versioned as ``RECIPE``).
"""

from __future__ import annotations

import contextlib
import copy
import io
import warnings
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from sepconv.errors import CompileError

OBSERVERS = ("histogram", "minmax")
# benchmarks/int8_observers.py: histogram's SQNR against fp32 is 0.2–2.1 dB above minmax's on
# every zoo model at 224 (README, "int8")
DEFAULT_OBSERVER = "histogram"
# What we annotate beyond torchao's recipe (_SeparableRecipe). Recorded in the manifest: the
# simulated-quantization reference is rebuilt by the recipe that quantized the artifact, or not
# at all. Raise it whenever the annotation changes.
RECIPE = 2
RECIPES = {
    1: "torchao's inductor quantizer",
    2: "torchao's inductor quantizer; SE gates read the quantized map; channel concats share "
    "one scale",
}


@dataclass(frozen=True)
class QuantScheme:
    activations: str  # "uint8" | "int8"
    observer: str
    # uint8 activations in 0…127: how x86 without VNNI was quantized before 7-bit weights;
    # still read from older artifacts' records, so that their reference rebuilds
    reduce_range: bool = False
    weight_max: int = 127  # symmetric weights in −(weight_max + 1)…weight_max

    @property
    def weights(self) -> str:
        bits = self.weight_max.bit_length() + 1
        return f"int{bits} symmetric per output channel" + ("" if bits == 8 else ", in int8")

    def to_json(self) -> dict:
        return {
            "weights": self.weights,
            "weight_range": [-self.weight_max - 1, self.weight_max],
            "activations": f"{self.activations} affine per tensor",
            "activation_dtype": self.activations,
            "activation_range": [0, 127] if self.reduce_range else None,
            "observer": self.observer,
        }

    @classmethod
    def from_json(cls, record: dict) -> QuantScheme:
        return cls(
            activations=record["activation_dtype"],
            observer=record["observer"],
            reduce_range=record.get("activation_range") is not None,
            weight_max=int(record.get("weight_range", [-128, 127])[1]),
        )


def full_range_dot(isa) -> bool:
    """Whether the target's u8·s8 dot instruction is exact on u8 × s8 (``vpdpbusd``: AVX-512
    VNNI, or AVX-VNNI's 256-bit form); without it x86's ``vpmaddubsw`` sums pairs into s16,
    which full-range operands can saturate. ``isa``: the target's feature names."""
    return "avx512vnni" in isa or "avxvnni" in isa


def scheme_for(
    target_arch: str, observer: str = DEFAULT_OBSERVER, full_range: bool = False
) -> QuantScheme:
    """``full_range``: the target's dot instruction takes u8 × s8 exactly (VNNI); x86 without
    it quantizes the weights to 7 bits (``vpmaddubsw``'s s16 pair sum would saturate)."""
    if observer not in OBSERVERS:
        raise CompileError(f"unknown observer {observer!r}; choose one of {', '.join(OBSERVERS)}")
    if target_arch == "aarch64":
        return QuantScheme(activations="int8", observer=observer)
    return QuantScheme(activations="uint8", observer=observer, weight_max=127 if full_range else 63)


def _quantizer(scheme: QuantScheme):
    from torchao.quantization.pt2e.observer import (
        HistogramObserver,
        MinMaxObserver,
        PerChannelMinMaxObserver,
    )
    from torchao.quantization.pt2e.quantizer import QuantizationSpec
    from torchao.quantization.pt2e.quantizer.arm_inductor_quantizer import ArmInductorQuantizer
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        QuantizationConfig,
        X86InductorQuantizer,
    )

    signed = scheme.activations == "int8"
    observer = HistogramObserver if scheme.observer == "histogram" else MinMaxObserver
    eps = {"eps": 2**-12}
    act = QuantizationSpec(
        dtype=torch.int8 if signed else torch.uint8,
        quant_min=-128 if signed else 0,
        quant_max=127 if signed or scheme.reduce_range else 255,
        qscheme=torch.per_tensor_affine,
        is_dynamic=False,
        observer_or_fake_quant_ctr=observer.with_args(**eps),
    )
    weight = QuantizationSpec(
        dtype=torch.int8,
        quant_min=-scheme.weight_max - 1,
        quant_max=scheme.weight_max,
        qscheme=torch.per_channel_symmetric,
        ch_axis=0,
        is_dynamic=False,
        observer_or_fake_quant_ctr=PerChannelMinMaxObserver.with_args(**eps),
    )
    base = ArmInductorQuantizer if signed else X86InductorQuantizer
    quantizer = type(f"Sepconv{base.__name__}", (_SeparableRecipe, base), {})()
    quantizer.set_global(QuantizationConfig(act, act, weight, None, False))
    return quantizer


def se_gated_map(node: torch.fx.Node) -> torch.fx.Node | None:
    """x when ``node`` is ``x · g`` (either order), x a [N, C, H, W] map and g its [N, C, 1, 1]
    channel gate; else None."""
    if node.op != "call_function" or node.target is not torch.ops.aten.mul.Tensor:
        return None
    if len(node.args) != 2 or not all(isinstance(a, torch.fx.Node) for a in node.args):
        return None
    for x, g in (node.args, node.args[::-1]):
        xv, gv = x.meta.get("val"), g.meta.get("val")
        if xv is not None and gv is not None and xv.dim() == 4:
            if tuple(gv.shape) == (xv.shape[0], xv.shape[1], 1, 1) and xv.shape[2:] != (1, 1):
                return x
    return None


def channel_concat_inputs(node: torch.fx.Node) -> list[torch.fx.Node] | None:
    """The inputs of ``cat([a, b, …], dim=1)`` over 4-D maps, else None."""
    if node.op != "call_function" or node.target is not torch.ops.aten.cat.default:
        return None
    inputs = node.args[0]
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    if not all(isinstance(a, torch.fx.Node) for a in inputs) or len(inputs) < 2:
        return None
    vals = [a.meta.get("val") for a in inputs]
    if any(v is None or v.dim() != 4 for v in vals) or dim % 4 != 1:
        return None
    return list(inputs)


class _SeparableRecipe:
    """Mixin for torchao's inductor quantizers: what separable CNNs need beyond their recipe
    (``RECIPE`` names it in the manifest, so a reference is rebuilt by the same one).

    - **SE gates read the quantized map.** torchao annotates a mul only when both operands
      have one shape, so squeeze-and-excitation's multiply read the float output of the conv
      before it — which the pool beside it reads quantized — and a compiler had to compute that
      conv twice, once in float. Observing the edge with the activation spec makes PT2E share
      the producer's observer: the multiply reads the very 8-bit map the pool reads and becomes
      one integer operator (``lowering``: QuantizedGatePattern). The gate ([N, C, 1, 1]) stays
      float.
    - **Channel concats are 8-bit, one scale.** torchao leaves ``cat`` unannotated unless its
      inputs already are, so ShuffleNetV2's branch output stayed float through concat, channel
      shuffle and split — and so did the pointwise conv producing it. Every input and the
      output share one observer (as TFLite's int8 concat requires), so the conv becomes an
      integer unit, concat and shuffle move 8-bit values without rescaling them, and each half
      of the split is requantized once, to the scale its consumer reads.
    """

    def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
        from torchao.quantization.pt2e.quantizer import (
            QuantizationAnnotation,
            SharedQuantizationSpec,
        )

        model = super().annotate(model)
        act = self.global_config.input_activation
        key = "quantization_annotation"
        for node in model.graph.nodes:
            x = se_gated_map(node)
            if x is not None:
                annotation = node.meta.get(key)
                if annotation is None:
                    node.meta[key] = QuantizationAnnotation(
                        input_qspec_map={x: act}, _annotated=True
                    )
                else:
                    annotation.input_qspec_map.setdefault(x, act)
                continue
            inputs = channel_concat_inputs(node)
            annotation = node.meta.get(key)
            if inputs is None or (annotation is not None and annotation.input_qspec_map):
                continue
            shared = SharedQuantizationSpec((inputs[0], node))
            node.meta[key] = QuantizationAnnotation(
                input_qspec_map={a: (act if i == 0 else shared) for i, a in enumerate(inputs)},
                output_qspec=shared,
                _annotated=True,
            )
        return model


@contextlib.contextmanager
def _quiet():
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


@dataclass
class QuantizedGraphs:
    """One PT2E quantization: the program we compile, and the pair of graphs behind it."""

    exported: torch.export.ExportedProgram  # the quantized program (importer and reference)
    samples: int  # calibration inputs seen
    calibrated: torch.fx.GraphModule  # float graph, BatchNorm folded, observers calibrated
    converted: torch.fx.GraphModule  # convert_pt2e's graph: same node names as ``calibrated``


def quantize_graphs(
    module,  # torch.nn.Module | torch.export.ExportedProgram
    example_inputs: tuple[torch.Tensor, ...],
    calibration: Iterable[tuple[torch.Tensor, ...]],
    scheme: QuantScheme,
) -> QuantizedGraphs:
    """Calibrated PT2E quantization, keeping the float graph it was calibrated on (a copy:
    ``convert_pt2e`` rewrites the prepared graph in place)."""
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from sepconv.compiler.importer import export_program

    if isinstance(module, torch.export.ExportedProgram):  # an fp32 .pt2: already exported
        graph = module.module()
    else:
        graph = export_program(module, example_inputs).module()
    with _quiet():
        prepared = prepare_pt2e(graph, _quantizer(scheme))
    samples = 0
    with torch.no_grad():
        for inputs in calibration:
            prepared(*inputs)
            samples += 1
    if samples == 0:
        raise CompileError("calibration gave no inputs")
    with _quiet():
        calibrated = copy.deepcopy(prepared)
        converted = convert_pt2e(prepared)
        move_exported_model_to_eval(converted)
        exported = torch.export.export(converted, tuple(example_inputs))
    return QuantizedGraphs(exported, samples, calibrated, converted)


def quantize_module(module, example_inputs, calibration, scheme: QuantScheme):
    """Calibrated PT2E quantization → ``(exported, samples)``: the program (what the importer
    and the reference both run) and how many calibration inputs were seen."""
    q = quantize_graphs(module, example_inputs, calibration, scheme)
    return q.exported, q.samples


def _signature(inputs) -> tuple[list, list]:
    return [tuple(t.shape) for t in inputs], [str(t.dtype).removeprefix("torch.") for t in inputs]


def quantize_model(
    module: torch.nn.Module,
    inputs: tuple[torch.Tensor, ...],
    *,
    calibration=None,
    target_arch: str = "x86_64",
    observer: str = DEFAULT_OBSERVER,
    seed: int = 0,
    full_range: bool = False,
):
    """Calibrate and quantize → ``(reference, record)``: the :class:`SimulatedQuantization`
    (its ``graphs.exported`` is the program to compile) and the record (scheme, observer,
    calibration source and sample count, tool) goes into the manifest and is enough for
    :func:`quantized_reference` to rebuild the same program."""
    import torchao

    from sepconv.compiler.int8.calibration import load_calibration

    shapes, dtypes = _signature(inputs)
    cal = load_calibration(calibration, shapes, dtypes, seed=seed)
    scheme = scheme_for(target_arch, observer, full_range)
    graphs = quantize_graphs(module, inputs, cal.tensors(), scheme)
    record = {
        **scheme.to_json(),
        "calibration": cal.source,
        "samples": graphs.samples,
        "tool": f"torchao {torchao.__version__} PT2E",
        "recipe": RECIPE,
    }
    return SimulatedQuantization(graphs), record


class SimulatedQuantization:
    """The simulated-quantization reference of an int8 artifact: calling it runs PT2E's program
    eagerly; :meth:`layer_errors` says where quantization error enters on one input."""

    def __init__(self, graphs: QuantizedGraphs):
        self.graphs = graphs
        self.module = graphs.exported.module()

    def __call__(self, *inputs):
        return self.module(*inputs)

    def layer_errors(self, *inputs):
        from sepconv.compiler.int8.layer_error import layer_errors

        return layer_errors(self.graphs.calibrated, self.graphs.converted, inputs)


def quantized_reference(record: dict, module: torch.nn.Module, inputs) -> SimulatedQuantization:
    """The simulated-quantization reference of an artifact quantized with ``record``: the same
    module, calibration and scheme give the same scales and zero points."""
    from sepconv.compiler.int8.calibration import replay_calibration
    from sepconv.errors import ArtifactError

    recipe = int(record.get("recipe", 1))
    if recipe != RECIPE:
        raise ArtifactError(
            f"this artifact was quantized by recipe {recipe} ({RECIPES.get(recipe, '?')}); this "
            f"sepconv quantizes by recipe {RECIPE} ({RECIPES[RECIPE]}), so the reference it "
            "would rebuild is not the artifact's: recompile it with this sepconv"
        )
    shapes, dtypes = _signature(inputs)
    cal = replay_calibration(record["calibration"], shapes, dtypes)
    module = getattr(module, "program", module)  # a .pt2 reference: its ExportedProgram
    graphs = quantize_graphs(module, inputs, cal.tensors(), QuantScheme.from_json(record))
    return SimulatedQuantization(graphs)
