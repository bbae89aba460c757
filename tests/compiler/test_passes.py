import numpy as np
import torch
import torch.nn as nn

from sepconv.compiler.importer import import_module
from sepconv.compiler.passes import count_ops, fold_batch_norm, lift_constants
from tests.nets import randomize_bn, tiny_separable


def _run_relax(mod, weights, x):
    import tvm
    from tvm import relax

    ex = tvm.compile(mod, target=tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu"}))
    vm = relax.VirtualMachine(ex, tvm.cpu())
    out = vm["main"](tvm.runtime.tensor(x), *[tvm.runtime.tensor(w) for w in weights.values()])
    return (out[0] if not hasattr(out, "numpy") else out).numpy()


def test_batchnorm_folds_into_conv_with_and_without_bias():
    model = tiny_separable()
    x = torch.randn(1, 3, 16, 16)
    graph = import_module(model, x)
    assert count_ops(graph.mod, "relax.nn.batch_norm") == 3
    folded = fold_batch_norm(graph.mod)
    assert count_ops(folded, "relax.nn.batch_norm") == 0
    # Folded into the weights, not decomposed into a chain of elementwise ops.
    for op in ("relax.subtract", "relax.sqrt", "relax.rsqrt"):
        assert count_ops(folded, op) == 0, op
    mod, weights = lift_constants(folded)
    ref = model(x).detach().numpy()
    got = _run_relax(mod, weights, x.numpy())
    assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max() + 1e-5


def test_batchnorm_without_conv_is_decomposed_not_dropped():
    model = randomize_bn(nn.Sequential(nn.BatchNorm2d(4), nn.ReLU()))
    x = torch.randn(1, 4, 5, 5)
    folded = fold_batch_norm(import_module(model, x).mod)
    assert count_ops(folded, "relax.nn.batch_norm") == 0
    mod, weights = lift_constants(folded)
    ref = model(x).detach().numpy()
    assert np.abs(_run_relax(mod, weights, x.numpy()) - ref).max() < 1e-5


def test_lift_constants_moves_every_weight_out_and_keeps_scalars():
    model = tiny_separable()
    graph = import_module(model, torch.randn(1, 3, 16, 16))
    mod, weights = lift_constants(fold_batch_norm(graph.mod))
    main = mod["main"]
    assert int(main.attrs["num_input"]) == 1
    assert len(main.params) == 1 + len(weights)
    n_weights = sum(int(np.prod(w.shape)) for w in weights.values())
    # conv weights (+ folded biases) and the linear layer: all the model's numbers are lifted
    n_model = sum(p.numel() for n, p in model.named_parameters() if "weight" in n and p.dim() > 1)
    assert n_weights >= n_model
    remaining = []

    def visit(e):
        import tvm

        value = getattr(e, "value", None)
        if (
            isinstance(e, tvm.ir.expr.Constant)
            and hasattr(value, "numpy")
            and value.numpy().size > 1
        ):
            remaining.append(e)

    import tvm

    tvm.relax.analysis.post_order_visit(main, visit)
    assert remaining == []


def test_fold_constants_does_layout_ops_in_numpy_and_skips_what_does_not_fold(monkeypatch):
    import tvm
    import tvm_ffi
    from tvm import relax

    from sepconv.compiler import passes

    w = np.arange(24, dtype="float32").reshape(2, 3, 4)

    def module(add_constants: bool):
        bb = relax.BlockBuilder()
        x = relax.Var("x", relax.TensorType((4, 3, 2), "float32"))
        with bb.function("main", [x]):
            with bb.dataflow():
                t = bb.emit(relax.op.permute_dims(relax.const(w), [2, 1, 0]))
                outs = [
                    bb.emit(relax.op.add(x, t)),
                    bb.emit(relax.op.reshape(relax.const(w), (4, 6))),
                ]
                if add_constants:  # not a layout op: FoldConstant's to fold
                    outs.append(bb.emit(relax.op.add(relax.const(w[0]), relax.const(w[1]))))
                out = bb.emit_output(relax.Tuple(outs))
            bb.emit_func_output(out)
        return bb.get()

    calls = []
    real = relax.transform.FoldConstant
    monkeypatch.setattr(relax.transform, "FoldConstant", lambda: calls.append(1) or real())
    xv = np.ones((4, 3, 2), "float32")
    for add_constants in (False, True):
        calls.clear()
        folded = passes.fold_constants(module(add_constants))
        assert calls == ([1] if add_constants else [])  # layout ops alone: numpy, no FoldConstant
        for op in ("relax.permute_dims", "relax.reshape"):
            assert count_ops(folded, op) == 0, op
        assert count_ops(folded, "relax.add") == 1  # x + the folded transpose
        ex = tvm.compile(folded, target=tvm.target.Target({"kind": "llvm"}))
        got = [
            t.numpy() for t in relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(xv))
        ]
        np.testing.assert_array_equal(got[0], xv + w.transpose(2, 1, 0))
        np.testing.assert_array_equal(got[1], w.reshape(4, 6))
        if add_constants:
            np.testing.assert_array_equal(got[2], w[0] + w[1])
    calls.clear()
    again = passes.fold_constants(folded)  # nothing left on constants only
    assert calls == [] and tvm_ffi.structural_equal(again["main"], folded["main"])


def test_fast_sigmoid_expression_is_accurate_and_calls_no_expf():
    """The sigmoid our operators' SiLU epilogues use (int8 ones especially): within 2e-7 of
    torch's on [-100, 100], inf-free at the clamps, and vector code without a scalar expf."""
    import tvm
    from tvm import s_tir, te

    from sepconv.compiler.passes import fast_sigmoid_expr

    n = 200_001
    x = te.placeholder((n,), "float32", "x")
    y = te.compute((n,), lambda i: fast_sigmoid_expr(x[i]), name="y")
    sch = s_tir.Schedule(te.create_prim_func([x, y]))
    (loop,) = sch.get_loops(sch.get_sblock("y"))
    sch.vectorize(sch.split(loop, [None, 8])[1])
    from sepconv.targets import resolve_target

    lib = tvm.compile(sch.mod, target=resolve_target("host").target)  # runs here: host code
    xs = np.concatenate([np.linspace(-100, 100, n - 2), [-1e30, 1e30]]).astype(np.float32)
    out = tvm.runtime.tensor(np.zeros(n, np.float32))
    lib["main"](tvm.runtime.tensor(xs), out)
    got = out.numpy()
    assert np.all(np.isfinite(got)) and 0 <= got[-2] < 1e-37 and got[-1] == 1.0
    assert np.abs(got - torch.sigmoid(torch.from_numpy(xs)).numpy()).max() < 2e-7
    assert "expf" not in lib.mod.inspect_source("asm")
