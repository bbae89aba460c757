"""Triple resolution: canonical names, keys and families, host detection, mcpu and cuda arch."""

from __future__ import annotations

import json
import logging
import platform

import pytest
import tvm
from tvm.target import Target

from sepconv import targets
from sepconv.errors import SepconvError, UnknownTargetError

H = targets.host

on_x86 = pytest.mark.skipif(H.host_arch() != "x86_64", reason="needs an x86_64 host")
needs_nvcc = pytest.mark.skipif(
    targets.find_nvcc() is None, reason="nvcc (CUDA toolkit) not installed"
)


@pytest.mark.parametrize(
    "name, canonical",
    [
        ("x86_64-linux-gnu", "x86_64-linux-gnu"),
        ("x86_64", "x86_64-linux-gnu"),
        ("AMD64", "x86_64-linux-gnu"),
        ("x86_64-unknown-linux-gnu", "x86_64-linux-gnu"),
        ("aarch64-linux-gnu", "aarch64-linux-gnu"),
        ("arm64", "aarch64-linux-gnu"),
        (" aarch64 ", "aarch64-linux-gnu"),
        ("cuda", "cuda"),
    ],
)
def test_aliases_canonicalise(name, canonical):
    assert targets.canonical_triple(name) == canonical


def test_host_is_this_machine():
    machine = {"amd64": "x86_64", "arm64": "aarch64"}.get(
        platform.machine().lower(), platform.machine().lower()
    )
    assert targets.host_triple() == f"{machine}-linux-gnu"
    assert targets.canonical_triple("host") == targets.host_triple()
    spec = targets.resolve_target("host")
    assert spec.triple == targets.host_triple() and spec.is_host


@pytest.mark.parametrize(
    "triple, family, key_prefix",
    [("x86_64-linux-gnu", "x86", "x86_64-"), ("aarch64-linux-gnu", "arm", "aarch64-neon"),
     ("cuda", "cuda", "cuda-sm")],
)  # fmt: skip
def test_each_triple_resolves(triple, family, key_prefix):
    spec = targets.resolve_target(triple, cuda_arch="sm_80" if triple == "cuda" else None)
    assert isinstance(spec, targets.TargetSpec)
    assert spec.triple == triple and spec.family == family
    assert spec.key.startswith(key_prefix)
    assert spec.num_cores >= 1
    d = spec.describe()
    json.dumps(d)  # JSON-able
    assert d["triple"] == triple and d["key"] == spec.key and d["family"] == family
    # The recorded target string rebuilds the same target.
    assert str(Target(json.loads(d["tvm_target"]))) == str(spec.target)


def test_unknown_triple_lists_supported_ones():
    with pytest.raises(UnknownTargetError) as err:
        targets.resolve_target("riscv64-linux-gnu")
    for t in targets.SUPPORTED_TRIPLES:
        assert t in str(err.value)
    assert isinstance(err.value, SepconvError)


@pytest.mark.parametrize(
    "name, suggestion",
    [("gpu", "cuda"), ("nvidia", "cuda"), ("x86_64-linux", None), ("aarch64-linux-gn", "aarch64"),
     ("armv7l", "32-bit ARM"), ("sm_90", "cuda_arch"), ("llvm", "host")],
)  # fmt: skip
def test_unknown_triple_suggests(name, suggestion):
    if suggestion is None:  # an accepted alias, not an error
        assert targets.canonical_triple(name) == "x86_64-linux-gnu"
        return
    with pytest.raises(UnknownTargetError, match="did you mean|cuda_arch") as err:
        targets.canonical_triple(name)
    assert suggestion in str(err.value)


# --- x86 -------------------------------------------------------------------------------------


@on_x86
def test_host_features_agree_with_proc_cpuinfo():
    flags = H.cpuinfo_flags()
    assert flags, "/proc/cpuinfo has no flags line"
    spec = targets.resolve_target("x86_64-linux-gnu")
    assert spec.is_host and spec.family == "x86"
    assert spec.mcpu == H.host_cpu_name() and spec.mcpu not in ("", "generic", "native")
    if "avx512f" in flags:
        assert (spec.key, spec.vector_bits) == ("x86_64-avx512", 512)
    elif {"avx2", "fma"} <= flags:
        assert (spec.key, spec.vector_bits) == ("x86_64-avx2", 256)
    else:
        assert spec.vector_bits in (128, 256)
    # Whatever the CPU name implies, the target's vector ISA is exactly what the kernel reports.
    for feat, flag in [("avx", "avx"), ("avx2", "avx2"), ("fma", "fma"), ("avx512f", "avx512f"),
                       ("avx512bw", "avx512bw"), ("avx512vl", "avx512vl"),
                       ("avx512fp16", "avx512_fp16"), ("avx512bf16", "avx512_bf16")]:  # fmt: skip
        assert (feat in spec.features) == (flag in flags), feat
    assert spec.num_cores == targets.physical_cores() <= len(__import__("os").sched_getaffinity(0))


@on_x86
@pytest.mark.parametrize("mcpu", [None, "x86-64-v3", "skylake-avx512", "x86-64-v4"])
def test_cpuinfo_and_llvm_agree_on_what_the_host_lacks(mcpu, monkeypatch):
    """With TVM's runtime alone (no LLVM) load() reads /proc/cpuinfo instead: same verdict."""
    isa = targets.resolve_target("x86_64-linux-gnu", mcpu=mcpu).isa
    assert {"avx2", "fma", "sse4.2"} <= set(isa) or mcpu is None
    by_llvm = H.missing_isa_features(isa)
    monkeypatch.setattr(H, "host_cpu_features", lambda: {})
    assert H.missing_isa_features(isa) == by_llvm
    assert (mcpu is None) <= (by_llvm == [])  # the host's own code always runs here


def test_cpuinfo_holds_a_feature_set_when_every_member_is_listed(monkeypatch):
    """LLVM reports avx10.1 where CPUID enumerates AVX10; Linux lists no flag for it, only the
    AVX-512 flags it stands for — a runtime-only load must not refuse the host's own code."""
    spr = {"avx2", "fma", "avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw",
           "avx512ifma", "avx512vbmi", "avx512_vbmi2", "avx512_vnni", "avx512_bitalg",
           "avx512_vpopcntdq", "avx512_bf16", "avx512_fp16"}  # fmt: skip
    monkeypatch.setattr(H, "host_cpu_features", lambda: {})
    monkeypatch.setattr(H, "cpuinfo_flags", lambda: frozenset(spr))
    assert H.missing_isa_features(["avx10.1", "avx512fp16", "fma"]) == []
    assert H.missing_isa_features(["avx10.2", "amx-int8"]) == ["amx-int8", "avx10.2"]
    monkeypatch.setattr(H, "cpuinfo_flags", lambda: frozenset(spr - {"avx512_fp16"}))
    assert H.missing_isa_features(["avx10.1", "avx512f"]) == ["avx10.1"]


@on_x86
def test_host_target_is_corrected_to_the_real_feature_set():
    """The CPU name alone is not trusted: the target's features equal LLVM's host features."""
    spec = targets.resolve_target("host")
    from tvm.target import codegen

    enabled = set(codegen.llvm_get_cpu_features(spec.target))
    for name, on in H.host_cpu_features().items():
        assert (name in enabled) == on, name


@pytest.mark.parametrize(
    "mcpu, key, bits",
    [("x86-64-v3", "x86_64-avx2", 256), ("haswell", "x86_64-avx2", 256),
     ("skylake-avx512", "x86_64-avx512", 512), ("znver4", "x86_64-avx512", 512),
     ("x86-64-v4", "x86_64-avx512", 512), ("sandybridge", "x86_64-avx", 256),
     ("x86-64", "x86_64-sse", 128)],
)  # fmt: skip
def test_mcpu_override_sets_key_from_its_features(mcpu, key, bits):
    spec = targets.resolve_target("x86_64-linux-gnu", mcpu=mcpu)
    assert (spec.key, spec.vector_bits, spec.mcpu) == (key, bits, mcpu)
    assert spec.target.attrs["mcpu"] == mcpu
    assert "mattr" not in spec.target.attrs  # an explicit CPU gets no host corrections


@on_x86
def test_is_host_follows_the_cpu_features():
    flags = H.cpuinfo_flags()
    assert targets.resolve_target("x86_64", mcpu="x86-64").is_host
    assert targets.resolve_target("x86_64", mcpu="x86-64-v4").is_host == ("avx512f" in flags)
    assert targets.resolve_target("x86_64", mcpu="native").mcpu == H.host_cpu_name()


def test_unknown_mcpu_is_refused_with_suggestions():
    with pytest.raises(UnknownTargetError, match="skylake-avx512"):
        targets.resolve_target("x86_64-linux-gnu", mcpu="skylake-avx51")
    with pytest.raises(UnknownTargetError, match="cortex-a72"):
        targets.resolve_target("aarch64-linux-gnu", mcpu="cortex-a27")


def test_num_cores_override_and_validation():
    assert (
        targets.resolve_target("x86_64", mcpu="x86-64-v3", num_cores=8).target.attrs["num-cores"]
        == 8
    )
    with pytest.raises(UnknownTargetError, match="num_cores"):
        targets.resolve_target("host", num_cores=0)


# --- aarch64 ---------------------------------------------------------------------------------


def test_aarch64_defaults_and_mcpu():
    spec = targets.resolve_target("aarch64-linux-gnu")
    assert (spec.key, spec.family, spec.vector_bits) == ("aarch64-neon", "arm", 128)
    assert spec.target.attrs["mtriple"] == "aarch64-linux-gnu"
    assert "+neon" in list(spec.target.attrs["mattr"]) or H.host_arch() == "aarch64"
    assert "neon" in spec.features
    assert spec.is_host == (H.host_arch() == "aarch64")
    if H.host_arch() != "aarch64":
        assert spec.num_cores == 4 and spec.mcpu == "generic"
    a72 = targets.resolve_target("arm64", mcpu="cortex-a72")
    assert a72.mcpu == "cortex-a72" and a72.key == "aarch64-neon"
    if H.host_arch() != "aarch64":
        with pytest.raises(UnknownTargetError, match="this machine"):
            targets.resolve_target("aarch64", mcpu="native")


# --- cuda ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, arch",
    [("sm_90", "sm_90"), ("90", "sm_90"), ("9.0", "sm_90"), ("sm90", "sm_90"),
     ("compute_80", "sm_80"), ("8.6", "sm_86"), ("12.0", "sm_120"), ("sm_90a", "sm_90a")],
)  # fmt: skip
def test_cuda_arch_spellings(text, arch):
    assert targets.parse_cuda_arch(text) == arch


@pytest.mark.parametrize("bad", ["sm_", "hopper", "9", "sm_80a", "9.0.1"])
def test_cuda_arch_garbage_is_refused(bad):
    with pytest.raises(UnknownTargetError):
        targets.parse_cuda_arch(bad)


def test_cuda_target_shape():
    spec = targets.resolve_target("cuda", cuda_arch="9.0")
    assert (spec.key, spec.family, spec.vector_bits, spec.cuda_arch) == (
        "cuda-sm90", "cuda", 0, "sm_90",
    )  # fmt: skip
    assert spec.target.kind.name == "cuda" and spec.target.attrs["arch"] == "sm_90"
    host = spec.target.host
    assert host is not None and host.kind.name == "llvm"
    assert host.attrs["mtriple"] == "x86_64-linux-gnu" and host.attrs["mcpu"]
    assert spec.host_arch == "x86_64" and spec.describe()["host_arch"] == "x86_64"


@pytest.mark.skipif(H.gpu_compute_capability() is not None, reason="a GPU is present")
def test_cuda_without_gpu_defaults_to_sm90_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="sepconv.targets.triple"):
        spec = targets.resolve_target("cuda")
    assert spec.cuda_arch == "sm_90" and spec.key == "cuda-sm90" and not spec.is_host
    assert "--cuda-arch" in caplog.text
    # Without the GPU the host code must not assume this machine's CPU.
    assert spec.target.host.attrs["mcpu"] == "x86-64-v2"


@needs_nvcc
def test_cuda_arch_nvcc_cannot_build_lists_the_ones_it_can():
    with pytest.raises(UnknownTargetError) as err:
        targets.resolve_target(
            "cuda", cuda_arch="sm_35"
        )  # Kepler: dropped by every current toolkit
    msg = str(err.value)
    assert "sm_35" in msg and "sm_90" in msg and "--cuda-arch" in msg


def test_cuda_arch_only_for_cuda():
    with pytest.raises(UnknownTargetError, match="cuda"):
        targets.resolve_target("x86_64-linux-gnu", cuda_arch="sm_90")


def test_targets_are_json_dicts_not_strings():
    """The trap every target here avoids: TVM 0.27 rejects target strings."""
    with pytest.raises(Exception):  # noqa: B017 - TVM raises its own error types
        tvm.target.Target("llvm -mcpu=native")
