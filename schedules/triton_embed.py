"""Triton kernels inside the compiled TVM module, built without a GPU.

TVM 0.27's Triton builder (``tvm.tirx.script.builder.triton.TritonKernel``, used by
``T.call_kernel``) compiles a Triton function to PTX, wraps it in a CUDA module and emits a
``call_packed`` that launches it from TIR. Four things in it stop it working here, each
overridden in :class:`CrossTritonKernel` (a subclass, so the rest of the contract stays TVM's):

1. ``TritonKernel._generate_triton_kernel`` calls ``triton.compiler.compile(source,
   options=...)`` without a target, so Triton asks the active CUDA driver which GPU to build for
   and fails without one. Here the target comes from the TVM target's ``arch``
   (``GPUTarget("cuda", 90, 32)`` for ``sm_90``).
2. ``BaseKernel._create_cuda_module`` (``tirx/script/builder/external_kernel.py``) calls
   ``ffi.Module.create.cuda``, which only exists when ``libtvm_runtime_cuda.so`` loads — it
   links ``libcuda.so.1``, the NVIDIA driver. Here the module comes from TVM's own CUDA codegen
   (``target.build.cuda``) on a stub kernel with the Triton kernel's name, argument types and
   launch parameters, whose source ``tvm_callback_cuda_postproc`` swaps for the Triton binary
   (:mod:`sepconv.targets.cuda_embed` explains the format and the load-time hook).
3. ``compile_to_device_module`` passes constexpr values as ``int64`` kernel arguments and no
   value for the two scratch pointers Triton ≥ 3.3 appends to every kernel (global and profile
   scratch). With Triton 3.9 constexprs are not kernel parameters at all, so any constexpr
   before a runtime argument would shift the arguments. Here the arguments are exactly the
   non-constexpr ones, then a null for each trailing scratch parameter counted in the PTX.
4. Every specialisation of one ``@triton.jit`` function gets the function's name, and
   ``call_kernel`` keeps only the first module with a given name (and its check calls
   ``Module.implements_function``, which raises on a fallback module). Here each
   specialisation is named ``<prefix>_<hash of constexprs, options, arch>`` (Triton's ``repr``
   hook, with the name folded into Triton's cache key) and modules are deduplicated by name.

:func:`launch_primfunc` then writes the host-side TIR function a Relax ``call_tir`` invokes: one
``call_packed`` per launch, exactly what ``T.call_kernel`` emits, marked scheduled so the GPU
rules leave it alone. Its CUDA modules go in the IRModule attribute ``external_mods``, which
``tvm.compile`` imports into the library.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import re
import threading
from dataclasses import dataclass, field

import tvm
import tvm_ffi
from tvm import tirx
from tvm.ir import PointerType, PrimType
from tvm.target import Target

from sepconv.errors import CompileError
from sepconv.targets.cuda_embed import encode, install_compile_hook

log = logging.getLogger(__name__)

_LOCK = threading.RLock()
_KERNELS: dict[str, EmbeddedKernel] = {}  # by kernel name, for this process
_KERNEL_LAUNCH = 2  # tvm::CallingConv::kDeviceKernelLaunch


@dataclass(frozen=True)
class EmbeddedKernel:
    """A compiled Triton specialisation and the CUDA module that carries it."""

    name: str
    module: object  # tvm runtime Module, kind "cuda"
    arch: str
    num_warps: int
    shared: int  # dynamic shared memory bytes
    arg_types: tuple[str, ...]  # the kernel's parameters (runtime arguments, then scratch)
    num_scratch: int
    ptx: str = field(repr=False, default="")

    @property
    def threads(self) -> int:
        return self.num_warps * 32


def gpu_target(target: Target):
    """Triton's ``GPUTarget`` for a TVM CUDA target (``sm_90`` → ``GPUTarget("cuda", 90, 32)``;
    ``sm_90a`` builds the same: Triton picks the ``a`` variant itself on Hopper)."""
    from triton.backends.compiler import GPUTarget

    arch = str(target.attrs.get("arch", "")) if target.attrs is not None else ""
    m = re.fullmatch(r"sm_(\d+)a?", arch)
    if m is None:
        raise CompileError(f"CUDA target has no sm_XX arch ({arch!r}); pass cuda_arch")
    warp = int(target.attrs.get("thread_warp_size", 32))
    return GPUTarget("cuda", int(m.group(1)), warp)


def _entry_params(ptx: str, name: str) -> int:
    m = re.search(r"\.entry\s+" + re.escape(name) + r"\s*\(([^)]*)\)", ptx)
    if m is None:
        raise CompileError(f"no .entry {name} in the PTX Triton produced")
    return len(re.findall(r"\.param\b", m.group(1)))


def _dtype_of(arg) -> str:
    ty = arg.ty
    if isinstance(ty, PointerType):
        return "handle"
    return str(ty.dtype)


def _make_source(jit_fn, name, signature, constexprs, attrs):
    from triton.compiler import ASTSource

    class _NamedSource(ASTSource):
        """Triton's cache key does not include the kernel's name; this one does."""

        def hash(self):
            return hashlib.sha256((super().hash() + "|" + name).encode()).hexdigest()

    return _NamedSource(fn=jit_fn, signature=signature, constexprs=constexprs, attrs=attrs)


def _tvm_triton_kernel_base():
    """TVM's TritonKernel (imports triton; only CUDA builds get here)."""
    from tvm.tirx.script.builder.triton import TritonKernel

    return TritonKernel


@functools.cache
def cross_triton_kernel_class():
    base = _tvm_triton_kernel_base()

    class CrossTritonKernel(base):
        """TVM's ``TritonKernel`` for a target that need not be present (module docstring)."""

        def __init__(self, func, target: Target, prefix: str | None = None):
            super().__init__(func)
            self.target = target
            self.prefix = prefix or func.__name__.lstrip("_")
            self.embedded: EmbeddedKernel | None = None

        def _specialise(self, func, args, kwargs):
            """(kernel name, signature, constexprs, attrs, runtime arguments)."""
            from triton.runtime.jit import type_canonicalisation_dict

            params = func.params
            if len(params) != len(args):
                raise CompileError(
                    f"{func.__name__} takes {len(params)} arguments, got {len(args)}"
                )
            signature, constexprs, attrs, runtime_args = {}, {}, {}, []
            for i, (param, arg) in enumerate(zip(params, args)):
                if param.is_constexpr:
                    value = arg.value if hasattr(arg, "value") else arg
                    constexprs[param.name] = value
                    signature[param.name] = "constexpr"
                    continue
                ty = arg.ty
                if isinstance(ty, PointerType):
                    elem = str(ty.element_type.dtype)
                    signature[param.name] = "*" + type_canonicalisation_dict[elem]
                    attrs[(i,)] = [["tt.divisibility", 16]]  # TVM allocations: 64-byte aligned
                else:
                    signature[param.name] = type_canonicalisation_dict[str(ty.dtype)]
                runtime_args.append(arg)
            key = json.dumps(
                [func.__name__, signature, constexprs, sorted(kwargs.items()),
                 str(gpu_target(self.target))],
                sort_keys=True,
                default=str,
            )  # fmt: skip
            name = f"sepconv_{self.prefix}_{hashlib.sha1(key.encode()).hexdigest()[:12]}"
            return name, signature, constexprs, attrs, runtime_args

        def _generate_triton_kernel(self, func, *args, **kwargs):
            import triton

            name, signature, constexprs, attrs, runtime_args = self._specialise(func, args, kwargs)
            target = gpu_target(self.target)
            old_repr = func._repr
            try:
                func._repr = lambda _spec: name
                src = _make_source(func, name, signature, constexprs, attrs)
                compiled = triton.compiler.compile(src, target=target, options=dict(kwargs))
            except CompileError:
                raise
            except Exception as exc:
                lines = str(exc).strip().splitlines()
                raise CompileError(
                    f"Triton could not compile {func.__name__} for {target}: "
                    f"{type(exc).__name__}: {lines[-1] if lines else ''}"
                ) from exc
            finally:
                func._repr = old_repr
            return compiled, runtime_args

        def compile_to_device_module(self, launch_args, *args, **kwargs):
            kwargs = {"enable_fp_fusion": True, **kwargs}  # Triton's default, stated (no warning)
            name, _, _, _, runtime_args = self._specialise(self.func, args, kwargs)
            with _LOCK:
                kernel = _KERNELS.get(name)
                if kernel is None:
                    compiled, runtime_args = self._generate_triton_kernel(
                        self.func, *args, **kwargs
                    )
                    meta = compiled.metadata
                    if meta.num_ctas != 1 or getattr(meta, "launch_cooperative_grid", False):
                        raise CompileError(f"{name}: clusters/cooperative launches unsupported")
                    if getattr(meta, "global_scratch_size", 0) or getattr(
                        meta, "profile_scratch_size", 0
                    ):
                        raise CompileError(f"{name} needs Triton scratch memory (not provided)")
                    ptx = compiled.asm["ptx"]
                    n_params = _entry_params(ptx, name)
                    arg_types = [_dtype_of(a) for a in runtime_args]
                    n_scratch = n_params - len(arg_types)
                    if n_scratch < 0:
                        raise CompileError(
                            f"{name} has {n_params} parameters but {len(arg_types)} arguments"
                        )
                    arg_types += ["int64"] * n_scratch  # null scratch pointers
                    tags = ["threadIdx.x"] + ["blockIdx.x", "blockIdx.y", "blockIdx.z"][
                        : len(launch_args)
                    ]
                    if meta.shared > 0:
                        tags.append("tirx.use_dyn_shared_memory")
                    arch = str(self.target.attrs["arch"])
                    module = self._create_cuda_module(
                        (compiled.asm["cubin"], ptx), arg_types, tags, name, fmt=arch
                    )
                    kernel = EmbeddedKernel(
                        name=name,
                        module=module,
                        arch=arch,
                        num_warps=meta.num_warps,
                        shared=meta.shared,
                        arg_types=tuple(arg_types),
                        num_scratch=n_scratch,
                        ptx=ptx,
                    )
                    _KERNELS[name] = kernel
            self.embedded = kernel
            launch = [tirx.const(kernel.threads, "int32")] + [
                tirx.const(int(g), "int32") if isinstance(g, int) else g for g in launch_args
            ]
            if kernel.shared > 0:
                launch.append(tirx.const(kernel.shared, "int32"))
            scratch = [tirx.const(0, "int64")] * kernel.num_scratch
            return name, kernel.module, list(runtime_args) + scratch + launch

        def _create_cuda_module(
            self, binary_data, kernel_arg_types, launch_param_tags, kernel_name, fmt="ptx"
        ):
            cubin, ptx = binary_data
            return cuda_module(kernel_name, kernel_arg_types, launch_param_tags, cubin, ptx, fmt)

    return CrossTritonKernel


def cuda_module(
    name: str, arg_types: list[str], launch_tags: list[str], cubin, ptx: str, arch: str
):
    """A TVM CUDA module (fallback kind without a driver) whose only kernel is ``name``, built
    by TVM's CUDA codegen from a stub with that signature; its code is the encoded binary."""
    params = [
        tirx.Var(f"a{i}", PointerType(PrimType("uint8")) if t == "handle" else t)
        for i, t in enumerate(arg_types)
    ]
    stub = tirx.PrimFunc(params, tirx.Evaluate(tirx.const(0, "int32"))).with_attrs(
        {
            "global_symbol": name,
            "calling_conv": _KERNEL_LAUNCH,
            "tirx.kernel_launch_params": list(launch_tags),
            "tirx.noalias": True,
        }
    )
    code = encode(name, arch, bytes(cubin) if cubin is not None else None, ptx)
    install_compile_hook()  # a GPU machine compiles the "source" right away
    build = tvm_ffi.get_global_func("target.build.cuda")
    hook = "tvm_callback_cuda_postproc"
    with _LOCK:
        previous = tvm_ffi.get_global_func(hook, allow_missing=True)
        tvm_ffi.register_global_func(hook, lambda _code, _target: code, override=True)
        try:
            target = Target({"kind": "cuda", "arch": arch})
            module = build(tvm.IRModule({name: stub}), target)
        finally:
            if previous is not None:
                tvm_ffi.register_global_func(hook, previous, override=True)
            else:
                tvm_ffi.registry.remove_global_func(hook)
    return module


@dataclass
class Launch:
    """One kernel launch: the Triton function, its arguments in order (TIR expressions for
    pointers and scalars, Python values for constexprs), its grid and compile options."""

    fn: object  # triton JITFunction
    args: list
    grid: tuple[int, ...]
    options: dict = field(default_factory=dict)  # num_warps, num_stages
    prefix: str | None = None


def launch_primfunc(
    buffers: list[tirx.Buffer], launches: list[Launch], target: Target
) -> tuple[tirx.PrimFunc, list]:
    """The host TIR function ``(*buffers)`` that runs ``launches`` in order on the current CUDA
    stream, and the CUDA modules (one per distinct kernel) that must travel with it."""
    cls = cross_triton_kernel_class()
    stmts, modules = [], []
    for launch in launches:
        kernel = cls(launch.fn, target, launch.prefix)
        name, module, call_args = kernel.compile_to_device_module(
            list(launch.grid), *launch.args, **launch.options
        )
        stmts.append(tirx.Evaluate(tirx.call_packed(name, *call_args)))
        modules.append(module)
    body = stmts[0] if len(stmts) == 1 else tirx.SeqStmt(stmts)
    # op_pattern 8 (kOpaque): FuseOps must not merge a kernel launch with its neighbours.
    func = tirx.PrimFunc(list(buffers), body).with_attrs(
        {
            "tirx.is_scheduled": True,
            "tirx.noalias": True,
            "op_pattern": 8,
            "sepconv.kernel_launcher": True,  # schedules.gpu.HOST_ONLY_ATTR
        }
    )
    return func, modules


def attach_modules(mod: tvm.IRModule, modules: list) -> tvm.IRModule:
    """Add CUDA modules to ``mod``'s ``external_mods`` (each module once)."""
    merged = list(mod.attrs["external_mods"]) if mod.attrs and "external_mods" in mod.attrs else []
    for m in modules:
        if not any(m.same_as(e) for e in merged):
            merged.append(m)
    return mod.with_attr("external_mods", merged)


def embedded_kernels() -> dict[str, EmbeddedKernel]:
    """The kernels compiled in this process, by name (tests and diagnostics)."""
    with _LOCK:
        return dict(_KERNELS)


__all__ = [
    "EmbeddedKernel",
    "Launch",
    "attach_modules",
    "cross_triton_kernel_class",
    "cuda_module",
    "embedded_kernels",
    "gpu_target",
    "launch_primfunc",
]
