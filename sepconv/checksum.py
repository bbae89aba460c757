"""File checksums: the one SHA-256 of a file that artifacts, model files and weights are keyed by.

Bottom layer (standard library only), so that the zoo (weights files), the compiler (model files)
and the artifact format (its library and weights) share it without importing one another.
"""

from __future__ import annotations

import hashlib
import os


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of the file at ``path``, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


__all__ = ["sha256_file"]
