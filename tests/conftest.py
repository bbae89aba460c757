"""Shared fixtures: one compiled artifact per session."""

from __future__ import annotations

import shutil

import pytest
import torch

from tests.nets import tiny_separable


@pytest.fixture(scope="session")
def tiny_artifact(tmp_path_factory):
    """A compiled TinySeparable for batch 2, 16×16 (session-wide; copy before modifying)."""
    import sepconv

    out = tmp_path_factory.mktemp("art") / "tiny"
    model = tiny_separable()
    art = sepconv.compile(model, target="host", out=out, example_input=torch.randn(2, 3, 16, 16))
    return art.path, model


@pytest.fixture
def artifact_copy(tiny_artifact, tmp_path):
    path, model = tiny_artifact
    dst = tmp_path / path.name
    shutil.copytree(path, dst)
    return dst, model
