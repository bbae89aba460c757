import pytest
import torch
import torch.nn as nn

from sepconv.compiler.importer import import_module
from sepconv.errors import ImportFailure, SepconvError


class DataDependent(nn.Module):
    def forward(self, x):
        if x.sum() > 0:
            return x * 2
        return x


class Unsupported(nn.Module):
    def forward(self, x):
        return torch.linalg.qr(x)[0]


def test_untraceable_model_names_the_reason():
    with pytest.raises(ImportFailure, match="data-dependent"):
        import_module(DataDependent(), torch.randn(4, 4))


def test_unsupported_op_is_named():
    with pytest.raises(ImportFailure, match="linalg_qr"):
        import_module(Unsupported(), torch.randn(4, 4))


def test_import_failure_is_a_sepconv_error():
    assert issubclass(ImportFailure, SepconvError)


def test_signature_records_inputs_and_outputs():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    g = import_module(model, torch.randn(2, 3, 8, 8))
    assert [(t.name, t.shape, t.dtype) for t in g.inputs] == [("input", (2, 3, 8, 8), "float32")]
    assert [(t.name, t.shape) for t in g.outputs] == [("output", (2, 5))]
