"""Calibration data → the model's input samples: every accepted form, every refusal, and the
replay a later ``validate`` relies on (which must notice a changed file)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sepconv.compiler.int8.calibration import (
    load_calibration,
    random_calibration,
    replay_calibration,
)
from sepconv.errors import CalibrationError, SepconvError

SHAPE = (1, 3, 8, 8)
SHAPES, DTYPES = [SHAPE], ["float32"]


def _rand(*shape, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _load(data, shapes=SHAPES, dtypes=DTYPES):
    return load_calibration(data, shapes, dtypes)


def test_calibration_error_is_a_sepconv_error():
    assert issubclass(CalibrationError, SepconvError)


def test_folder_of_npy_files_read_in_name_order(tmp_path):
    """One sample per file, a batch per file, or a sample without its batch axis: all split
    into samples of the model's batch size, in the files' name order."""
    a, batch, bare = _rand(*SHAPE, seed=1), _rand(4, 3, 8, 8, seed=2), _rand(3, 8, 8, seed=3)
    np.save(tmp_path / "b_batch.npy", batch)
    np.save(tmp_path / "a_one.npy", a)
    np.save(tmp_path / "c_bare.npy", bare)
    (tmp_path / "notes.txt").write_text("not calibration data\n")  # ignored
    cal = _load(tmp_path)
    assert len(cal.samples) == 6 and all(s[0].shape == SHAPE for s in cal.samples)
    np.testing.assert_array_equal(cal.samples[0][0], a)
    np.testing.assert_array_equal(cal.samples[1][0], batch[:1])
    np.testing.assert_array_equal(cal.samples[4][0], batch[3:])
    np.testing.assert_array_equal(cal.samples[5][0], bare[None])
    src = cal.source
    assert src["kind"] == "files" and src["samples"] == 6
    assert src["path"] == str(tmp_path.resolve()) and len(src["sha256"]) == 64
    tensors = list(cal.tensors())
    assert len(tensors) == 6 and isinstance(tensors[0][0], torch.Tensor)


def test_one_npy_batch_split_by_the_model_batch(tmp_path):
    batch = _rand(6, 3, 8, 8)
    np.save(tmp_path / "cal.npy", batch)
    assert len(_load(tmp_path / "cal.npy").samples) == 6
    two = _load(str(tmp_path / "cal.npy"), shapes=[(2, 3, 8, 8)])  # a str path too
    assert len(two.samples) == 3 and two.samples[1][0].shape == (2, 3, 8, 8)
    np.testing.assert_array_equal(two.samples[1][0], batch[2:4])
    with pytest.raises(CalibrationError, match=r"shape \[6, 3, 8, 8\].*\[4, 3, 8, 8\]"):
        _load(tmp_path / "cal.npy", shapes=[(4, 3, 8, 8)])  # 6 is not a multiple of 4


def test_npz_arrays_in_name_order(tmp_path):
    x1, x0 = _rand(2, 3, 8, 8, seed=1), _rand(*SHAPE, seed=0)
    np.savez(tmp_path / "cal.npz", second=x1, first=x0)
    cal = _load(tmp_path / "cal.npz")
    assert len(cal.samples) == 3 and cal.source["kind"] == "files"
    np.testing.assert_array_equal(cal.samples[0][0], x0)
    np.testing.assert_array_equal(cal.samples[2][0], x1[1:])


def test_arrays_tensors_and_iterables():
    batch = _rand(5, 3, 8, 8)
    assert len(_load(batch).samples) == 5
    assert len(_load(torch.from_numpy(batch)).samples) == 5
    assert len(_load([batch[:2], batch[2:]]).samples) == 5
    gen = (torch.from_numpy(batch[i : i + 1]) for i in range(5))
    cal = _load(gen)
    assert len(cal.samples) == 5 and cal.source == {"kind": "arrays", "samples": 5}
    np.testing.assert_array_equal(cal.samples[3][0], batch[3:4])


def test_float64_is_cast_to_the_models_dtype():
    cal = _load(_rand(2, 3, 8, 8, dtype=np.float64))
    assert all(s[0].dtype == np.float32 for s in cal.samples)


def test_a_model_with_two_inputs_takes_a_tuple_per_sample():
    shapes, dtypes = [SHAPE, (1, 4)], ["float32", "float32"]
    cal = load_calibration(
        [(_rand(*SHAPE), _rand(1, 4)), (_rand(2, 3, 8, 8), _rand(2, 4))], shapes, dtypes
    )
    assert len(cal.samples) == 3 and [a.shape for a in cal.samples[2]] == [SHAPE, (1, 4)]
    with pytest.raises(CalibrationError, match="1 arrays for a model with 2 inputs"):
        load_calibration([(_rand(*SHAPE),)], shapes, dtypes)
    with pytest.raises(CalibrationError, match="2 inputs; give a tuple per sample"):
        load_calibration([_rand(*SHAPE)], shapes, dtypes)


def test_wrong_shape_names_both_shapes(tmp_path):
    np.save(tmp_path / "cal.npy", _rand(2, 3, 9, 9))
    with pytest.raises(CalibrationError, match=r"\[2, 3, 9, 9\].*\[1, 3, 8, 8\].*\[S, 3, 8, 8\]"):
        _load(tmp_path / "cal.npy")
    with pytest.raises(CalibrationError, match=r"\[3, 8\]"):
        _load(_rand(3, 8))


def test_integer_data_for_a_float_model_is_refused(tmp_path):
    np.save(tmp_path / "img.npy", np.zeros(SHAPE, np.uint8))
    with pytest.raises(CalibrationError, match="float32 input, got uint8.*normalise"):
        _load(tmp_path / "img.npy")
    with pytest.raises(CalibrationError, match="numeric"):
        _load([np.array(["a", "b"])])


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_values_are_refused(bad):
    x = _rand(*SHAPE)
    x[0, 1, 2, 3] = bad
    with pytest.raises(CalibrationError, match="NaN or infinity"):
        _load(x)


def test_missing_empty_and_unknown_sources(tmp_path):
    with pytest.raises(CalibrationError, match="no such calibration file or folder"):
        _load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CalibrationError, match="no .npy files"):
        _load(tmp_path / "empty")
    (tmp_path / "data.csv").write_text("1,2,3\n")
    with pytest.raises(CalibrationError, match=r"a folder of \.npy files, a \.npy or a \.npz"):
        _load(tmp_path / "data.csv")
    np.savez(tmp_path / "none.npz")
    with pytest.raises(CalibrationError, match="holds no arrays"):
        _load(tmp_path / "none.npz")
    with pytest.raises(CalibrationError, match="holds no samples"):
        _load([])
    with pytest.raises(CalibrationError, match="not int"):
        _load(3)


@pytest.mark.parametrize("name", ["missing.npy", "missing.npz", "corrupt.npy"])
def test_missing_or_unreadable_npy_is_a_calibration_error(tmp_path, name):
    if name.startswith("corrupt"):
        (tmp_path / name).write_bytes(b"not a numpy file")
    with pytest.raises(CalibrationError, match=name):
        _load(tmp_path / name)


def test_no_data_means_seeded_random_inputs():
    cal = _load(None)
    assert cal.source["kind"] == "random" and len(cal.samples) == cal.source["count"]
    again = load_calibration(None, SHAPES, DTYPES)
    np.testing.assert_array_equal(cal.samples[0][0], again.samples[0][0])
    other = load_calibration(None, SHAPES, DTYPES, seed=1)
    assert not np.array_equal(cal.samples[0][0], other.samples[0][0])
    from sepconv.compiler.artifact import TensorInfo
    from sepconv.compiler.validation import seeded_inputs

    # not the inputs validation draws: calibrating on them would flatter the report
    (val,) = seeded_inputs([TensorInfo("x", SHAPE, "float32")], 0)
    assert not np.allclose(cal.samples[0][0], val)


def test_replay_reads_the_same_samples_and_notices_a_changed_file(tmp_path):
    for i in range(3):
        np.save(tmp_path / f"{i}.npy", _rand(*SHAPE, seed=i))
    cal = _load(tmp_path)
    again = replay_calibration(cal.source, SHAPES, DTYPES)
    assert len(again.samples) == 3
    for s, t in zip(cal.samples, again.samples):
        np.testing.assert_array_equal(s[0], t[0])
    np.save(tmp_path / "1.npy", _rand(*SHAPE, seed=7))
    with pytest.raises(CalibrationError, match="changed since the model was quantized"):
        replay_calibration(cal.source, SHAPES, DTYPES)
    np.save(tmp_path / "1.npy", _rand(*SHAPE, seed=1))
    assert len(replay_calibration(cal.source, SHAPES, DTYPES).samples) == 3  # restored
    np.save(tmp_path / "3.npy", _rand(*SHAPE, seed=3))  # a file added
    with pytest.raises(CalibrationError, match="changed since"):
        replay_calibration(cal.source, SHAPES, DTYPES)


def test_replay_of_random_and_in_memory_calibration():
    rnd = random_calibration(SHAPES, DTYPES, count=4, seed=3)
    again = replay_calibration(rnd.source, SHAPES, DTYPES)
    assert len(again.samples) == 4
    np.testing.assert_array_equal(rnd.samples[2][0], again.samples[2][0])
    with pytest.raises(CalibrationError, match="in-memory arrays, which cannot be read again"):
        replay_calibration(_load(_rand(*SHAPE)).source, SHAPES, DTYPES)
