"""Seeded random weights (deterministic, numerically sane) and weight files."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from sepconv.errors import ModelLoadError
from sepconv.models import get_model, init_weights

SMALL = "mobilenet_v2:0.35@64"


def same_state(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_same_seed_same_weights_other_seed_other_weights():
    a, b = get_model(SMALL, seed=3), get_model(SMALL, seed=3)
    assert same_state(a.module, b.module)
    x = a.example_input()
    with torch.no_grad():
        assert torch.equal(a.module(x), b.module(x))
    assert not same_state(a.module, get_model(SMALL, seed=4).module)


def test_weights_do_not_depend_on_batch():
    """``sepconv.validate`` rebuilds the reference with the artifact's batch size."""
    assert same_state(get_model(SMALL, batch=1).module, get_model(SMALL, batch=8).module)


def digest(module: nn.Module) -> str:
    h = hashlib.sha256()
    for key, tensor in module.state_dict().items():
        h.update(key.encode())
        h.update(tensor.contiguous().numpy().tobytes())
    return h.hexdigest()


def test_same_weights_in_a_fresh_process():
    """A compiled artifact is validated in another process against a rebuilt reference."""
    code = (
        "from sepconv.models import get_model; from tests.models.test_zoo_weights import digest; "
        f"print(digest(get_model({SMALL!r}, seed=5).module))"
    )
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == digest(get_model(SMALL, seed=5).module)


def test_global_rng_untouched():
    torch.manual_seed(123)
    state = torch.get_rng_state()
    spec = get_model(SMALL)
    spec.example_input()
    assert torch.equal(torch.get_rng_state(), state)


def test_batchnorm_state_is_non_trivial():
    spec = get_model("efficientnet_b0@64")
    bns = [m for m in spec.module.modules() if isinstance(m, nn.BatchNorm2d)]
    mean = torch.cat([b.running_mean for b in bns])
    var = torch.cat([b.running_var for b in bns])
    gamma = torch.cat([b.weight for b in bns])
    beta = torch.cat([b.bias for b in bns])
    assert mean.abs().mean() > 1e-2 and var.std() > 1e-2
    assert not torch.allclose(var, torch.ones_like(var), atol=0.1)
    assert gamma.std() > 0.1 and beta.abs().mean() > 1e-2
    assert all(int(b.num_batches_tracked) == 0 for b in bns)


@pytest.mark.parametrize(
    "name",
    [
        "mobilenet_v1:0.25@64",
        "mobilenet_v2:0.5@32",
        "mobilenet_v3_large:0.5@64",
        "mobilenet_v3_small@32",
        "efficientnet_b0@64",
        "efficientnet_b7@64",
        "shufflenet_v2:0.5@64",
    ],
)
def test_logits_sane(name):
    spec = get_model(name, batch=4, seed=1)
    with torch.no_grad():
        y = spec.module(spec.example_input())
    assert torch.isfinite(y).all()
    assert 0.1 < y.abs().max() < 1e3
    assert y.std() > 1e-2  # not collapsed to one output
    assert not torch.allclose(y[0], y[1])  # different inputs, different outputs


def test_init_refuses_unknown_stateful_layers():
    with pytest.raises(TypeError, match="LayerNorm"):
        init_weights(nn.Sequential(nn.Conv2d(3, 4, 1), nn.LayerNorm(4)), (1, 3, 4, 4))


# ---- weight files ----


@pytest.fixture(scope="module")
def source():
    return get_model(SMALL, seed=7, num_classes=10)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt", ".pth", ".bin"])
def test_round_trip(tmp_path, source, suffix):
    path = tmp_path / f"w{suffix}"
    state = source.module.state_dict()
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    loaded = get_model(SMALL, seed=99, num_classes=10, weights=path)
    assert same_state(loaded.module, source.module)
    x = source.example_input()
    with torch.no_grad():
        assert torch.equal(loaded.module(x), source.module(x))
    assert not loaded.module.training


def test_checkpoint_wrapper_and_missing_counters(tmp_path, source):
    state = {
        k: v for k, v in source.module.state_dict().items() if not k.endswith("num_batches_tracked")
    }
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "ckpt.pt")
    loaded = get_model(SMALL, num_classes=10, weights=str(tmp_path / "ckpt.pt"))
    x = source.example_input()
    with torch.no_grad():
        assert torch.equal(loaded.module(x), source.module(x))


def test_mismatched_width_names_keys_and_shapes(tmp_path, source):
    path = tmp_path / "w.safetensors"
    save_file(source.module.state_dict(), str(path))
    with pytest.raises(ModelLoadError) as err:
        get_model("mobilenet_v2:0.5@64", num_classes=10, weights=path)
    text = str(err.value)
    assert (
        "wrong shape: features.2.conv.2.weight (file (8, 48, 1, 1), model (16, 48, 1, 1))" in text
    )
    assert "and 182 more" in text and "width knob" in text


def test_mismatched_num_classes(tmp_path, source):
    path = tmp_path / "w.pt"
    torch.save(source.module.state_dict(), path)
    with pytest.raises(ModelLoadError, match=r"classifier\.1\.weight.*num_classes"):
        get_model(SMALL, weights=path)  # 1000 classes vs the file's 10


def test_missing_and_unexpected_keys(tmp_path, source):
    state = dict(source.module.state_dict())
    del state["classifier.1.bias"]
    state["extra.weight"] = torch.zeros(3)
    torch.save(state, tmp_path / "w.pt")
    with pytest.raises(ModelLoadError) as err:
        get_model(SMALL, num_classes=10, weights=tmp_path / "w.pt")
    assert "1 missing: classifier.1.bias" in str(err.value)
    assert "1 unexpected: extra.weight" in str(err.value)


def test_bad_files(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        get_model(SMALL, weights=tmp_path / "nope.safetensors")
    with pytest.raises(ModelLoadError, match="does not exist or is not a file"):
        get_model(SMALL, weights=tmp_path)
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelLoadError, match="as a safetensors weights file"):
        get_model(SMALL, weights=tmp_path / "junk.safetensors")
    (tmp_path / "junk.pt").write_bytes(b"not a pickle")
    with pytest.raises(ModelLoadError, match=r"PyTorch \(weights_only=True\)"):
        get_model(SMALL, weights=tmp_path / "junk.pt")
    torch.save({"a": 1}, tmp_path / "notstate.pt")
    with pytest.raises(ModelLoadError, match="does not hold a state_dict"):
        get_model(SMALL, weights=tmp_path / "notstate.pt")
    torch.save(nn.Linear(2, 2), tmp_path / "module.pt")  # a pickled module: refused unread
    with pytest.raises(ModelLoadError, match="weights_only"):
        get_model(SMALL, weights=tmp_path / "module.pt")
