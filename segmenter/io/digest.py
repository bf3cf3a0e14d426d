"""Content hashes that identify inputs (models, descriptors, datasets) in caches and provenance."""
from __future__ import annotations

import hashlib
import os


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, read in blocks (model files are tens of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
