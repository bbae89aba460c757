"""What to compile: a zoo name, a model file, or a module, resolved to what the importer takes.

One function, shared by ``sepconv.compile`` and tuning, so that both read a model argument the
same way and write the same manifest record: the zoo half is :func:`sepconv.models.zoo_source`,
the model-file half (``.pt2`` / ``.onnx`` / ``ExportedProgram`` / ``onnx.ModelProto``)
:mod:`sepconv.compiler.model_files`.
"""

from __future__ import annotations

import torch

from sepconv.errors import SepconvError


def resolve_model(model, example_input, batch: int, weights, seed: int, input_shape=None):
    """→ (module or ModelFile, example inputs tuple, manifest model record)."""
    from sepconv.compiler.model_files import as_model_file

    if input_shape is None and example_input is not None and not isinstance(model, torch.nn.Module):
        xs = (example_input,) if isinstance(example_input, torch.Tensor) else example_input
        input_shape = [tuple(x.shape) for x in xs]
    mf = as_model_file(model, input_shape)
    if mf is not None:
        if weights is not None or batch != 1:
            raise SepconvError(
                f"{mf.name}: a model file carries its own weights and batch; drop weights/--batch "
                "(set the batch through input_shape / --input-shape, e.g. 8,3,224,224)"
            )
        return mf, mf.example_inputs(seed), {**mf.record(), "seed": seed}
    if isinstance(model, str):
        from sepconv.models import zoo_source

        return zoo_source(
            model, batch=batch, weights=weights, seed=seed, example_input=example_input
        )
    if isinstance(model, torch.nn.Module):
        if example_input is None:
            raise SepconvError(
                "compiling an nn.Module needs an example input: "
                "sepconv.compile(module, example_input=torch.randn(1, 3, 224, 224), ...)"
            )
        inputs = (
            (example_input,) if isinstance(example_input, torch.Tensor) else tuple(example_input)
        )
        record = {"name": type(model).__name__, "source": "module", "seed": seed}
        return model, inputs, record
    raise SepconvError(
        f"model must be a zoo name (see `sepconv models`), a .pt2 / .onnx file, a torch.nn.Module, "
        f"an ExportedProgram or an onnx.ModelProto, got {type(model).__name__}"
    )


__all__ = ["resolve_model"]
