"""Target facts the rules are parameterised by: vector width, registers, cores; cross targets."""

from __future__ import annotations

import pytest
import tvm

from sepconv.schedules.target_params import cpu_params


def _t(**attrs):
    return tvm.target.Target({"kind": "llvm", **attrs})


@pytest.mark.parametrize(
    ("attrs", "bits", "regs", "arch"),
    [
        ({"mtriple": "x86_64-linux-gnu", "mcpu": "rocketlake"}, 512, 32, "x86"),
        ({"mtriple": "x86_64-linux-gnu", "mcpu": "znver4"}, 512, 32, "x86"),
        ({"mtriple": "x86_64-linux-gnu", "mcpu": "haswell"}, 256, 16, "x86"),
        ({"mtriple": "x86_64-linux-gnu", "mcpu": "znver3"}, 256, 16, "x86"),
        ({"mtriple": "x86_64-linux-gnu"}, 128, 16, "x86"),
        ({"mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]}, 128, 32, "aarch64"),
        ({"mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72"}, 128, 32, "aarch64"),
    ],
)
def test_vector_width_from_target(attrs, bits, regs, arch):
    p = cpu_params(_t(**attrs))
    assert (p.vector_bits, p.num_vector_regs, p.arch) == (bits, regs, arch)
    assert p.lanes("float32") == bits // 32
    assert p.lanes("float16") == bits // 16
    assert 0 < p.accumulator_regs < regs


def test_num_cores_from_target():
    assert cpu_params(_t(mtriple="x86_64-linux-gnu", **{"num-cores": 6})).num_cores == 6
    assert cpu_params(_t(mtriple="aarch64-linux-gnu")).num_cores >= 1
