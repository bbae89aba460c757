"""The u8 × s8 → s32 dot-product tensor intrinsics the int8 rules tensorize with.

One intrinsic: ``C[L] += Σ_k u8 A[k] · s8 B[L, k]`` for k < 4 — four input channels of one
pixel (broadcast as one 32-bit word) against L output channels' packed weights. Per ISA:
  avx2        L = 8:  ``vpmaddubsw`` (u8·s8 pairs → s16, saturating) + ``vpmaddwd`` by 1 → s32.
              Exact only while a pair's sum fits in s16: 2·255·64 = 32640 does, 2·255·128 does
              not — so x86 without VNNI quantizes the weights to 7 bits, −64…63 (as ONNX
              Runtime's ``reduce_range`` does there; ``compiler/int8/ptq.py``).
  avx512bw    L = 16: the same pair, 512-bit
  avx512vnni  L = 16: ``vpdpbusd`` (no s16 step: the full u8 range)
  avxvnni     L = 8:  ``vpdpbusd`` on 256 bits, VEX-encoded (Alder Lake and later cores without
              AVX-512: the Atom-class N100 boxes sold for edge inference among them) — AVX2
              registers, VNNI's single step
TVM ships the two AVX-512 ones (``tvm.s_tir.tensor_intrin.x86``) but no AVX2 int8 dot, and
importing its package costs ≈25 s (FACTS); one factory here makes all four, by lanes and
instruction.
"""

from __future__ import annotations

from dataclasses import dataclass

from tvm.script import tirx as T

_PAIR = {  # lanes → (u8·s8 pairs → s16, s16 pairs → s32)
    8: ("llvm.x86.avx2.pmadd.ub.sw", "llvm.x86.avx2.pmadd.wd"),
    16: ("llvm.x86.avx512.pmaddubs.w.512", "llvm.x86.avx512.pmaddw.d.512"),
}
# LLVM names the 256-bit VEX (AVX-VNNI) and EVEX (AVX512-VL) forms by one intrinsic and encodes
# it by the target's features
_VNNI = {16: "llvm.x86.avx512.vpdpbusd.512", 8: "llvm.x86.avx512.vpdpbusd.256"}


def _desc(lanes: int):
    @T.prim_func(s_tir=True)
    def desc(
        A: T.Buffer((4,), "uint8", offset_factor=1),
        B: T.Buffer((lanes, 4), "int8", offset_factor=1),
        C: T.Buffer((lanes,), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:4], B[0:lanes, 0:4])
            T.writes(C[0:lanes])
            for i in T.serial(0, lanes):
                for k in T.serial(0, 4):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")

    return desc


def _broadcast_word(A, lanes: int):
    """The 4 input bytes as one 32-bit word in every lane. One expression, not named values:
    TVMScript makes each assignment a local buffer, which under a parallel loop became a
    workspace allocated and freed per task (three per kernel, seen in the stem's assembly)."""
    word = T.reinterpret(A.vload([0], "uint8x4"), dtype="int32")
    return T.reinterpret(T.broadcast(word, lanes), dtype=f"uint8x{4 * lanes}")


def dot_accumulate(kind: str, lanes: int, acc, words, weights):
    """``acc + Σ_k u8 words[·, k] · s8 weights[·, k]`` on the instruction of ``kind`` (int32×L
    ``acc``, 4·L bytes each of ``words`` and ``weights``): the one expression the tensor
    intrinsic and the machine's int8 peak loop (``sepconv.bench.limits``) both emit."""
    if kind == "vnni":
        # LLVM 22 declares vpdpbusd on <64 x i8> operands: <16 x i32> ones, as TVM's own
        # VNNI intrinsic passes them, fail LLVM's verifier (seen with a first version of
        # this factory written the same way)
        return T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id(_VNNI[lanes]), acc, words, weights, dtype=f"int32x{lanes}"
        )
    to_s16, to_s32 = _PAIR[lanes]
    return acc + T.call_llvm_pure_intrin(
        T.llvm_lookup_intrinsic_id(to_s32),
        T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id(to_s16), words, weights, dtype=f"int16x{2 * lanes}"
        ),
        T.broadcast(T.int16(1), 2 * lanes),
        dtype=f"int32x{lanes}",
    )


def _impl(kind: str, lanes: int):
    @T.prim_func(s_tir=True)
    def impl(
        A: T.Buffer((4,), "uint8", offset_factor=1),
        B: T.Buffer((lanes, 4), "int8", offset_factor=1),
        C: T.Buffer((lanes,), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:4], B[0:lanes, 0:4])
            T.writes(C[0:lanes])
            C[T.ramp(T.int32(0), 1, lanes)] = dot_accumulate(
                kind,
                lanes,
                C.vload([0], dtype=f"int32x{lanes}"),
                _broadcast_word(A, lanes),
                B.vload([0, 0], dtype=f"int8x{4 * lanes}"),
            )

    return impl


@dataclass(frozen=True)
class DotIntrinsic:
    name: str
    lanes: int
    kind: str  # "vnni" | "pairs" (dot_accumulate)

    @property
    def full_range(self) -> bool:
        """u8 activations may use 0…255: no s16 saturation step (VNNI only)."""
        return self.kind == "vnni"


def dot_intrinsic(features) -> DotIntrinsic | None:
    """The u8·s8 dot a target's features allow (registered on first use); None: no such dot."""
    features = set(features)
    if "avx512vnni" in features:
        lanes, kind = 16, "vnni"
    elif "avxvnni" in features:
        lanes, kind = 8, "vnni"
    elif "avx512bw" in features:
        lanes, kind = 16, "pairs"
    elif "avx2" in features:
        lanes, kind = 8, "pairs"
    else:
        return None
    name = f"sepconv_dot_{lanes}x4_{kind}"
    if name not in _REGISTERED:
        from tvm.s_tir import TensorIntrin

        TensorIntrin.register(name, _desc(lanes), _impl(kind, lanes), override=True)
        _REGISTERED.add(name)
    return DotIntrinsic(name, lanes, kind)


_REGISTERED: set[str] = set()
