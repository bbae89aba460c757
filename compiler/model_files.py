"""Model files: an ``ExportedProgram`` saved with ``torch.export.save`` (``.pt2``) or an ONNX model
(``.onnx``), read, given static input shapes, imported into Relax, and given a reference to
validate against (eager ``ep.module()`` for ``.pt2``, ONNX Runtime for ``.onnx``).

ONNX graphs go through TVM Relax's ONNX frontend (``tvm.relax.frontend.onnx.from_onnx``) and then
:func:`canonicalize_onnx`, which turns what that frontend emits into the form the torch.export
import has, so the separable recognition (:mod:`sepconv.compiler.separable`) applies unchanged:
the frontend lowers ``Clip`` (ReLU6) to ``call_tir`` of TE ``maximum`` / ``minimum`` kernels, which
neither the layout pass nor the patterns can see through; they become ``relax.maximum`` /
``relax.minimum`` again. (``HardSwish`` comes out as ``x · (clip(x + 3, 0, 6) / 6)``, which the
fused pattern matches as an alternative spelling; ``x · Sigmoid(x)`` is SiLU.)
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sepconv.compiler.artifact import TensorInfo, sha256_file
from sepconv.errors import ImportFailure, ModelFileError

log = logging.getLogger(__name__)

SUFFIXES = {".pt2": "pt2", ".onnx": "onnx"}
INPUT_SHAPE_HINT = "pass it, e.g. --input-shape 1,3,224,224 (input_shape=(1, 3, 224, 224))"


def looks_like_file(model: object) -> bool:
    """A path (``os.PathLike``, a string ending in .pt2/.onnx or naming a path), not a zoo name."""
    if isinstance(model, os.PathLike):
        return True
    if not isinstance(model, str) or not model.strip():
        return False
    text = model.strip()
    if Path(text).suffix.lower() in SUFFIXES:
        return True
    if text.partition(":")[0].lower() in ("torchvision", "timm"):
        return False
    return os.sep in text or Path(text).is_file()


def parse_input_shape(text: str | tuple | list | None) -> list[tuple[int, ...]] | None:
    """``"1,3,224,224"`` (or ``"1x3x224x224"``; several inputs separated by ``;``), a tuple of
    ints, or a list of tuples → a list of shapes, one per input."""
    if text is None:
        return None
    if isinstance(text, str):
        parts = [p for p in re.split(r"[;\s]+", text.strip()) if p]
        try:
            shapes = [tuple(int(d) for d in re.split(r"[,x×]", p) if d) for p in parts]
        except ValueError:
            shapes = []
    elif isinstance(text, (tuple, list)) and text and all(isinstance(d, int) for d in text):
        shapes = [tuple(text)]
    elif isinstance(text, (tuple, list)):
        shapes = [tuple(int(d) for d in s) for s in text]
    else:
        shapes = []
    if not shapes or any(not s or any(d < 1 for d in s) for s in shapes):
        raise ModelFileError(
            f"input shape {text!r} is not a list of positive integers; write it like "
            "1,3,224,224 (several inputs: 1,3,224,224;1,10)"
        )
    return shapes


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0][:300] if text else "") or type(exc).__name__


@dataclass
class ModelFile:
    """A loaded model file (or in-memory ExportedProgram / ONNX ModelProto) with static inputs."""

    kind: str  # "pt2" | "onnx"
    name: str
    inputs: list[TensorInfo]
    program: Any = None  # torch.export.ExportedProgram (pt2)
    onnx_model: Any = None  # onnx.ModelProto (onnx)
    path: Path | None = None
    sha256: str | None = None
    input_shape: list[tuple[int, ...]] | None = None  # as given by the user, for the manifest
    _reference: Any = field(default=None, repr=False)

    @property
    def reference_name(self) -> str:
        if self.kind == "onnx":
            import onnxruntime

            return f"ONNX Runtime {onnxruntime.__version__} (CPUExecutionProvider)"
        return "eager PyTorch (ExportedProgram.module())"

    def example_inputs(self, seed: int = 0) -> tuple[torch.Tensor, ...]:
        from sepconv.compiler.validation import seeded_inputs

        return tuple(torch.from_numpy(a) for a in seeded_inputs(self.inputs, seed))

    def reference(self) -> torch.nn.Module:
        """What validation compares with: ``ep.module()`` (.pt2) or ONNX Runtime (.onnx)."""
        if self._reference is None:
            if self.kind == "pt2":
                self._reference = ProgramModule(self.program)
            else:
                self._reference = OnnxRuntimeModule(self.onnx_model, self.name)
            self._reference.sepconv_source = self  # what `sepconv bench` compiles
        return self._reference

    def record(self) -> dict:
        """The manifest's model record: enough to rebuild the reference later."""
        rec: dict = {"name": self.name, "source": "file", "format": self.kind}
        if self.path is not None:
            rec["path"] = str(self.path)
            rec["sha256"] = self.sha256
        if self.input_shape is not None:
            rec["input_shape"] = [list(s) for s in self.input_shape]
        return rec

    def import_graph(self):
        """→ :class:`~sepconv.compiler.importer.ImportedGraph` (weights bound as constants)."""
        if self.kind == "pt2":
            from sepconv.compiler.importer import import_exported

            return import_exported(self.program, self.example_inputs())
        return _import_onnx(self)


class ProgramModule(torch.nn.Module):
    """``ep.module()`` as the reference: the unlifted module refuses ``.eval()``/``.train()``
    (an exported program has its mode baked in), which validation calls."""

    def __init__(self, program):
        super().__init__()
        object.__setattr__(self, "_graph_module", program.module())  # not a registered child
        object.__setattr__(self, "program", program)  # what int8 quantizes again (ptq)

    def forward(self, *xs: torch.Tensor):
        return self._graph_module(*xs)


class OnnxRuntimeModule(torch.nn.Module):
    """ONNX Runtime behind the ``nn.Module`` call interface: the reference for ``.onnx`` models."""

    def __init__(self, model, name: str = "onnx"):
        super().__init__()
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise ModelFileError(
                f"validating the ONNX model {name} needs ONNX Runtime as the reference, which is "
                "not installed: pip install onnxruntime"
            ) from exc
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(
            model.SerializeToString(), opts, providers=["CPUExecutionProvider"]
        )
        self.input_names = [i.name for i in self.session.get_inputs()]

    def forward(self, *xs: torch.Tensor):
        feeds = {n: x.detach().cpu().numpy() for n, x in zip(self.input_names, xs)}
        outs = [torch.from_numpy(np.asarray(o)) for o in self.session.run(None, feeds)]
        return outs[0] if len(outs) == 1 else tuple(outs)


def _static_inputs(
    name: str, declared: list[tuple[str, list[int | None], str]], shapes
) -> list[TensorInfo]:
    """Declared (name, dims with None for dynamic, dtype) + user shapes → static TensorInfos."""
    if shapes is not None and len(shapes) != len(declared):
        raise ModelFileError(
            f"{name} has {len(declared)} input(s) "
            f"({', '.join(n for n, _, _ in declared)}) but {len(shapes)} input shape(s) were "
            "given: give one shape per input, separated by ';'"
        )
    out = []
    for i, (iname, dims, dtype) in enumerate(declared):
        if shapes is None:
            if any(d is None for d in dims):
                shown = ",".join("?" if d is None else str(d) for d in dims)
                raise ModelFileError(
                    f"input {iname!r} of {name} has dynamic dimensions ({shown}); a static "
                    f"input shape is needed to compile it: {INPUT_SHAPE_HINT}"
                )
            out.append(TensorInfo(iname, tuple(dims), dtype))
            continue
        shape = shapes[i]
        fixed = [(k, d) for k, d in enumerate(dims) if d is not None]
        if len(shape) != len(dims) or any(shape[k] != d for k, d in fixed):
            shown = ",".join("?" if d is None else str(d) for d in dims)
            raise ModelFileError(
                f"input shape {','.join(map(str, shape))} does not fit input {iname!r} of {name}, "
                f"declared ({shown}): keep its rank and its static dimensions"
            )
        out.append(TensorInfo(iname, tuple(shape), dtype))
    return out


# ---- .pt2 -----------------------------------------------------------------------------------


def _pt2_declared(ep) -> list[tuple[str, list[int | None], str]]:
    user = set(ep.graph_signature.user_inputs)
    declared = []
    for node in ep.graph.nodes:
        if node.op != "placeholder" or node.name not in user:
            continue
        val = node.meta.get("val")
        if not isinstance(val, torch.Tensor):
            raise ModelFileError(
                f"input {node.name!r} of the ExportedProgram is not a tensor ({type(val).__name__})"
                "; sepconv compiles models whose inputs are tensors"
            )
        dims = [d if isinstance(d, int) else None for d in val.shape]
        declared.append((node.name, dims, str(val.dtype).removeprefix("torch.")))
    return declared


def from_exported_program(
    ep, input_shape=None, *, name: str = "exported_program", path: Path | None = None
) -> ModelFile:
    shapes = parse_input_shape(input_shape)
    declared = _pt2_declared(ep)
    inputs = _static_inputs(name, declared, shapes)
    if any(d is None for _, dims, _ in declared for d in dims):
        # Dynamic dimensions: specialise by exporting the program's module at the given shape.
        from sepconv.compiler.importer import export_program

        mf = ModelFile("pt2", name, inputs, program=ep)
        ep = export_program(ProgramModule(ep), mf.example_inputs())
    return ModelFile("pt2", name, inputs, program=ep, path=path, input_shape=shapes)


def _load_pt2(path: Path):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.export.load(str(path))
    except Exception as exc:  # torch raises RuntimeError, KeyError, zipfile errors, …
        raise ModelFileError(
            f"{path} is not a readable ExportedProgram ({type(exc).__name__}: "
            f"{_first_line(exc)}); a .pt2 file must come from torch.export.save(torch.export."
            "export(model, (x,)), path) — re-save it (a truncated copy cannot be read either)"
        ) from exc


# ---- .onnx ----------------------------------------------------------------------------------


def _onnx_declared(model) -> list[tuple[str, list[int | None], str]]:
    from onnx import helper

    inits = {t.name for t in model.graph.initializer}
    declared = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                for d in tt.shape.dim]  # fmt: skip
        if not tt.HasField("shape"):
            dims = [None]
        dtype = str(np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type)))
        declared.append((vi.name, dims, dtype))
    return declared


def from_onnx_model(
    model, input_shape=None, *, name: str = "onnx_model", path: Path | None = None
) -> ModelFile:
    import onnx

    try:
        onnx.checker.check_model(model)
    except Exception as exc:  # onnx.checker.ValidationError and friends
        where = path or name
        raise ModelFileError(
            f"{where} is not a valid ONNX model ({_first_line(exc)}); re-export it (e.g. "
            "torch.onnx.export) — a truncated copy fails this way too"
        ) from exc
    shapes = parse_input_shape(input_shape)
    inputs = _static_inputs(name, _onnx_declared(model), shapes)
    return ModelFile("onnx", name, inputs, onnx_model=model, path=path, input_shape=shapes)


def _load_onnx(path: Path):
    try:
        import onnx
    except ImportError as exc:
        raise ModelFileError(
            f"reading {path} needs the onnx package: pip install onnx onnxruntime"
        ) from exc
    try:
        return onnx.load(str(path))
    except Exception as exc:  # google.protobuf DecodeError, OSError for external data
        raise ModelFileError(
            f"{path} is not a readable ONNX model ({type(exc).__name__}: {_first_line(exc)}); "
            "re-export it (a truncated copy cannot be read either)"
        ) from exc


def _import_onnx(mf: ModelFile):
    from tvm.relax.frontend.onnx import from_onnx

    from sepconv.compiler.importer import ImportedGraph

    shape_dict = {t.name: list(t.shape) for t in mf.inputs}
    dtype_dict = {t.name: t.dtype for t in mf.inputs}
    sink = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink):
            warnings.simplefilter("ignore")
            mod = from_onnx(
                mf.onnx_model, shape_dict=shape_dict, dtype_dict=dtype_dict,
                keep_params_in_input=False,
            )  # fmt: skip
    except Exception as exc:  # tvm.error.OpNotImplemented, ValueError, TVMError, …
        text = str(exc)
        m = re.search(r"operators are not supported for frontend ONNX: ([^\n]*)", text)
        if m:
            raise ImportFailure(
                f"TVM's ONNX importer does not support the ONNX op(s) {m[1].strip()} in "
                f"{mf.path or mf.name}; fix: replace them in the model, or save the PyTorch "
                "model with torch.export.save and compile the .pt2 instead"
            ) from exc
        raise ImportFailure(
            f"TVM's ONNX importer failed on {mf.path or mf.name}: {type(exc).__name__}: "
            f"{_first_line(exc)}"
        ) from exc
    mod = canonicalize_onnx(mod)
    ret = mod["main"].ret_ty
    from tvm import relax

    rets = list(ret.fields) if isinstance(ret, relax.TupleType) else [ret]
    names = [o.name for o in mf.onnx_model.graph.output]
    outputs = []
    for i, r in enumerate(rets):
        if not isinstance(r, relax.TensorType) or r.shape is None:
            raise ImportFailure(
                f"output {i} of {mf.path or mf.name} has no static shape after import "
                f"({r}); sepconv compiles models with static output shapes"
            )
        oname = names[i] if i < len(names) else f"output{i}"
        outputs.append(TensorInfo(oname, tuple(int(d) for d in r.shape.values), str(r.dtype)))
    return ImportedGraph(mod=mod, inputs=list(mf.inputs), outputs=outputs)


def _te_minmax_kind(func, x, c) -> str | None:
    """``"maximum"`` / ``"minimum"`` if ``func`` is exactly TE's ``topi.maximum`` / ``minimum`` of
    tensors shaped like ``x`` and ``c`` (what the ONNX frontend's ``Clip`` emits), else None."""
    import tvm_ffi
    from tvm import te, tirx, topi

    def ph(expr, name):
        sinfo = expr.ty
        return te.placeholder(
            [tirx.IntImm("int64", int(d)) for d in sinfo.shape.values], sinfo.dtype, name
        )

    def bare(f):
        return tirx.PrimFunc(f.params, f.body)

    for kind, op in (("maximum", topi.maximum), ("minimum", topi.minimum)):
        a, b = ph(x, "A"), ph(c, "B")
        ref = te.create_prim_func([a, b, op(a, b)])
        if tvm_ffi.structural_equal(bare(func), bare(ref)):
            return kind
    return None


def canonicalize_onnx(mod):
    """Rewrite the ONNX frontend's ``call_tir`` max/min kernels (its ``Clip``) into Relax's
    ``maximum`` / ``minimum`` with a scalar constant, as torch.export's import spells ReLU6."""
    import tvm
    from tvm import relax

    mod = relax.transform.FoldConstant()(mod)  # the clip bounds are computed from constants
    call_tir = tvm.ir.Op.get("relax.call_tir")

    @relax.expr_functor.mutator
    class _Rewrite(relax.PyExprMutator):
        def visit_call_(self, call):  # noqa: N802 - TVM's visitor name
            call = super().visit_call_(call)
            if not (call.op.same_as(call_tir) and isinstance(call.args[0], relax.GlobalVar)):
                return call
            func = mod[call.args[0]]
            args = list(call.args[1].fields)
            if not isinstance(func, tvm.tirx.PrimFunc) or len(args) != 2:
                return call
            x, c = args
            if not isinstance(c, tvm.ir.expr.Constant) or c.ty.ndim != 0:
                return call
            if x.ty.shape is None or c.ty.dtype != x.ty.dtype:
                return call
            kind = _te_minmax_kind(func, x, c)
            if kind is None:
                return call
            scalar = c.value.numpy().item()
            dtype = x.ty.dtype
            op = relax.op.maximum if kind == "maximum" else relax.op.minimum
            return op(x, relax.const(scalar, dtype))

    out = tvm.IRModule(dict(mod.functions_items()), attrs=mod.attrs)
    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function):
            out[gv] = _Rewrite().visit_expr(func)
    out = relax.transform.DeadCodeElimination()(out)
    return relax.transform.FoldConstant()(out)


# ---- entry points ---------------------------------------------------------------------------


def load_model_file(path: str | os.PathLike, input_shape=None) -> ModelFile:
    """Read a ``.pt2`` or ``.onnx`` file; ``input_shape`` fixes its dynamic dimensions."""
    p = Path(path).expanduser()
    kind = SUFFIXES.get(p.suffix.lower())
    if not p.is_file():
        raise ModelFileError(
            f"model file {p} does not exist"
            + ("" if kind else "; a model is a zoo name (see `sepconv models`) or a .pt2 / .onnx")
        )
    if kind is None:
        with p.open("rb") as f:
            head = f.read(4)
        kind = "pt2" if head.startswith(b"PK") else None
        if kind is None:
            raise ModelFileError(
                f"{p}: sepconv reads .pt2 files (torch.export.save) and .onnx files; name the file "
                "with its suffix, or pass a zoo name (see `sepconv models`)"
            )
    p = p.resolve()
    digest = sha256_file(p)
    if kind == "pt2":
        mf = from_exported_program(_load_pt2(p), input_shape, name=p.stem, path=p)
    else:
        mf = from_onnx_model(_load_onnx(p), input_shape, name=p.stem, path=p)
    mf.sha256 = digest
    log.info("model file %s (%s, sha256 %s): inputs %s", p, kind, digest[:12], mf.inputs)
    return mf


def as_model_file(model, input_shape=None) -> ModelFile | None:
    """A ModelFile for a path, an ExportedProgram or an onnx.ModelProto; None for anything else."""
    if isinstance(model, ModelFile):
        return model
    if looks_like_file(model):
        return load_model_file(model, input_shape)
    if isinstance(model, torch.export.ExportedProgram):
        return from_exported_program(model, input_shape)
    if type(model).__name__ == "ModelProto" and hasattr(model, "graph"):
        return from_onnx_model(model, input_shape)
    return None


def reference_from_record(record: dict) -> ModelFile:
    """Reload the file a manifest's model record names, refusing a changed or missing file."""
    path = record.get("path")
    if not path:
        raise ModelFileError(
            f"the artifact was compiled from an in-memory {record.get('format')} model "
            f"({record.get('name')}); pass it: sepconv.validate(model, reference=...)"
        )
    p = Path(path)
    if not p.is_file():
        raise ModelFileError(
            f"the model file the artifact was compiled from is gone: {p}; restore it, or pass a "
            "reference explicitly (--reference FILE)"
        )
    if sha256_file(p) != record.get("sha256"):
        raise ModelFileError(
            f"{p} changed since compilation (checksum differs); recompile from it, or pass the "
            "reference explicitly (--reference FILE)"
        )
    return load_model_file(p, record.get("input_shape"))
