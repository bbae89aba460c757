"""Calibration data → the model's input tuples, checked before anything is quantized.

DATA is one of:
  - a folder of ``.npy`` files, one input (or one batch of inputs) per file, read in name order;
  - one ``.npy`` file: a batch ``[S, *input]`` or one input ``[*input]``;
  - one ``.npz`` file: its arrays in name order, each as a ``.npy`` file would be;
  - (API) an array, a list of arrays, or any iterable of arrays / tuples of arrays.
A batch is split along its first axis into samples of the model's batch size. Without DATA,
seeded random normal inputs are used — which says nothing about accuracy on real data, and the
compile output says so.

Every sample must match the model's input shape and be finite; float64 is accepted and cast.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sepconv.errors import CalibrationError

RANDOM_SAMPLES = 16


@dataclass
class Calibration:
    samples: list[tuple[np.ndarray, ...]]
    source: dict  # for the manifest: kind, path and sha256 (files), count, seed (random)

    def tensors(self):
        for sample in self.samples:
            yield tuple(torch.from_numpy(a) for a in sample)


def _check(array, index: int, shapes, dtypes, where: str) -> list[tuple[np.ndarray, ...]]:
    """One array (a sample or a batch of samples) → samples for a one-input model."""
    arr = np.asarray(array)
    if arr.dtype == object or not np.issubdtype(arr.dtype, np.number):
        raise CalibrationError(f"{where}: calibration data must be numeric, got dtype {arr.dtype}")
    shape, dtype = tuple(shapes[index]), np.dtype(dtypes[index])
    if np.issubdtype(dtype, np.floating):
        if not np.issubdtype(arr.dtype, np.floating):
            raise CalibrationError(
                f"{where}: the model takes {dtype} input, got {arr.dtype} — convert it to float "
                "(and normalise it as the model expects)"
            )
        if not np.all(np.isfinite(arr)):
            raise CalibrationError(f"{where}: calibration data contains NaN or infinity")
    arr = arr.astype(dtype, copy=False)
    if arr.shape == shape:
        return [arr]
    per = shape[0]
    if arr.ndim == len(shape) and arr.shape[1:] == shape[1:] and arr.shape[0] % per == 0:
        return [np.ascontiguousarray(arr[i : i + per]) for i in range(0, arr.shape[0], per)]
    if arr.ndim == len(shape) - 1 and per == 1 and arr.shape == shape[1:]:
        return [arr[None]]
    raise CalibrationError(
        f"{where}: calibration array of shape {list(arr.shape)} does not fit the model's input "
        f"{list(shape)} (give samples of that shape, or a batch "
        f"[S, {', '.join(map(str, shape[1:]))}])"
    )


def _samples_from(items: Iterable, shapes, dtypes, where: str) -> list[tuple[np.ndarray, ...]]:
    out: list[tuple[np.ndarray, ...]] = []
    for i, item in enumerate(items):
        if isinstance(item, torch.Tensor):
            item = item.detach().cpu().numpy()
        if isinstance(item, (tuple, list)) and len(shapes) > 1:
            if len(item) != len(shapes):
                raise CalibrationError(
                    f"{where}[{i}]: {len(item)} arrays for a model with {len(shapes)} inputs"
                )
            per_input = [
                _check(np.asarray(a), k, shapes, dtypes, f"{where}[{i}][{k}]")
                for k, a in enumerate(item)
            ]
            out.extend(zip(*per_input))
        else:
            if len(shapes) > 1:
                raise CalibrationError(
                    f"{where}[{i}]: the model has {len(shapes)} inputs; give a tuple per sample"
                )
            out.extend((a,) for a in _check(item, 0, shapes, dtypes, f"{where}[{i}]"))
    return out


def _sha256_files(paths) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(Path(p).name.encode())
        h.update(Path(p).read_bytes())
    return h.hexdigest()


def _load_npy(path: Path):
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise CalibrationError(f"{path}: cannot read it as a numpy file ({exc})") from exc


def _from_path(path: Path, shapes, dtypes) -> Calibration:
    if not path.exists():
        raise CalibrationError(f"{path}: no such calibration file or folder")
    if path.is_dir():
        files = sorted(path.glob("*.npy"))
        if not files:
            raise CalibrationError(f"{path}: no .npy files in the calibration folder")
        arrays = (_load_npy(f) for f in files)
        samples = _samples_from(arrays, shapes, dtypes, str(path))
        digest = _sha256_files(files)
    elif path.suffix == ".npy":
        arr = _load_npy(path)
        samples = _samples_from([arr], shapes, dtypes, str(path))
        digest = _sha256_files([path])
    elif path.suffix == ".npz":
        with _load_npy(path) as z:
            if not z.files:
                raise CalibrationError(f"{path}: the .npz file holds no arrays")
            samples = _samples_from([z[k] for k in sorted(z.files)], shapes, dtypes, str(path))
        digest = _sha256_files([path])
    else:
        raise CalibrationError(
            f"{path}: calibration data must be a folder of .npy files, a .npy or a .npz file"
        )
    source = {"kind": "files", "path": str(path.resolve()), "sha256": digest}
    return Calibration(samples, source)


def random_calibration(shapes, dtypes, count: int = RANDOM_SAMPLES, seed: int = 0) -> Calibration:
    gen = torch.Generator().manual_seed(seed + 1_000_003)  # not the validation inputs' seeds
    samples = [
        tuple(torch.randn(*s, generator=gen).numpy().astype(d) for s, d in zip(shapes, dtypes))
        for _ in range(count)
    ]
    return Calibration(samples, {"kind": "random", "seed": seed, "count": count})


def load_calibration(data, shapes, dtypes, seed: int = 0) -> Calibration:
    """Any accepted DATA (see the module doc) → checked samples; None → seeded random inputs."""
    if data is None:
        cal = random_calibration(shapes, dtypes, seed=seed)
    elif isinstance(data, str | os.PathLike):
        cal = _from_path(Path(data), shapes, dtypes)
    elif isinstance(data, np.ndarray | torch.Tensor):
        cal = Calibration(_samples_from([data], shapes, dtypes, "calibration"), {"kind": "arrays"})
    else:
        try:
            items = iter(data)
        except TypeError:
            raise CalibrationError(
                f"calibration data must be a path, an array or an iterable of arrays, not "
                f"{type(data).__name__}"
            ) from None
        cal = Calibration(_samples_from(items, shapes, dtypes, "calibration"), {"kind": "arrays"})
    if not cal.samples:
        raise CalibrationError("the calibration data holds no samples")
    cal.source["samples"] = len(cal.samples)
    return cal


def replay_calibration(source: dict, shapes, dtypes) -> Calibration:
    """The calibration a manifest records, read again (to rebuild the quantized reference)."""
    kind = source.get("kind")
    if kind == "random":
        return random_calibration(shapes, dtypes, source["count"], source.get("seed", 0))
    if kind == "files":
        cal = _from_path(Path(source["path"]), shapes, dtypes)
        if cal.source["sha256"] != source.get("sha256"):
            raise CalibrationError(
                f"{source['path']} changed since the model was quantized (checksum differs); "
                "recompile, or validate against a reference you pass"
            )
        return cal
    raise CalibrationError(
        "the artifact was calibrated on in-memory arrays, which cannot be read again; "
        "validate when compiling (validate=True) or pass the quantized reference"
    )
