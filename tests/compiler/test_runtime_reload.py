"""An artifact rebuilt in place and loaded again in the same process runs the new code.

``dlopen`` hands back the library already loaded under a path; before the runtime loaded each
library under a name made from its checksum (``runtime._content_named``), a model rebuilt with
``force=True`` over another one ran the old one's code with the new one's weights.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

import sepconv
from sepconv.compiler import runtime
from sepconv.compiler.artifact import LIBRARY, read_manifest
from tests.nets import randomize_bn, tiny_separable

X = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def other_net() -> nn.Module:
    """Not tiny_separable: other layers, other weight count, other output size."""
    torch.manual_seed(1)
    return randomize_bn(
        nn.Sequential(
            nn.Conv2d(3, 16, 3, 1, 1),
            nn.BatchNorm2d(16),
            nn.ReLU6(),
            nn.Conv2d(16, 16, 5, 2, 2, groups=16),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(16, 7),
        )
    )


def test_a_model_rebuilt_in_place_runs_its_own_code(tmp_path):
    out = tmp_path / "same"
    loaded = []
    for model in (tiny_separable(), other_net(), tiny_separable(seed=3)):
        art = sepconv.compile(model, out=out, example_input=X, force=True, tune_logs=False)
        compiled = sepconv.load(art.path)
        loaded.append(compiled)  # keep every library loaded, as a long-running process does
        with torch.no_grad():
            ref = model(X).numpy()
        got = compiled(X.numpy())
        assert got.shape == ref.shape
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
    # the first model, still loaded, still runs its own code
    with torch.no_grad():
        np.testing.assert_allclose(loaded[0](X.numpy()), tiny_separable()(X).numpy(), atol=1e-4)


def test_the_library_is_loaded_under_its_checksum(tmp_path):
    art = sepconv.compile(tiny_separable(), out=tmp_path / "a", example_input=X, tune_logs=False)
    root, manifest = read_manifest(art.path)
    named = runtime._content_named(root / LIBRARY, manifest)
    assert named != root / LIBRARY and named.name.startswith(manifest.files[LIBRARY][:32])
    assert named.read_bytes() == (root / LIBRARY).read_bytes()
    assert runtime._content_named(root / LIBRARY, manifest) == named  # same content, same name
    manifest.files = {}  # no checksum recorded: the library's own path
    assert runtime._content_named(root / LIBRARY, manifest) == root / LIBRARY
