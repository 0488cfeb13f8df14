"""numpy arrays <-> bytes, without pickle, so blobs read back from the database are safe to load."""
from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

import numpy as np

from .errors import Invalid


def check_array(array: np.ndarray) -> np.ndarray:
    """A C-contiguous numeric array, or `Invalid` (object arrays would need pickle)."""
    array = np.asarray(array)
    if array.dtype.hasobject or array.dtype.kind not in "biufc":
        raise Invalid(f"cannot store an array of dtype {array.dtype}: numeric arrays only")
    return np.ascontiguousarray(array)


def to_blob(array: np.ndarray) -> tuple[bytes, str, list[int]]:
    """Raw bytes, dtype string (with byte order, e.g. '<f2') and shape of `array`."""
    array = check_array(array)
    return array.tobytes(), array.dtype.str, list(array.shape)


def from_blob(data: bytes, dtype: str, shape: list[int]) -> np.ndarray:
    """Inverse of `to_blob`; returns a writable copy (np.frombuffer views are read-only)."""
    return np.frombuffer(data, dtype=np.dtype(dtype)).reshape(shape).copy()


def pack(arrays: Mapping[str, np.ndarray]) -> bytes:
    """Several named arrays in one .npz blob (e.g. the per-modality keys of a cache)."""
    checked: dict[str, Any] = {name: check_array(a) for name, a in arrays.items()}
    buffer = io.BytesIO()
    np.savez(buffer, **checked)
    return buffer.getvalue()


def unpack(blob: bytes) -> dict[str, np.ndarray]:
    """Inverse of `pack`; `allow_pickle=False` so a tampered blob cannot run code."""
    with np.load(io.BytesIO(blob), allow_pickle=False) as npz:
        return {name: npz[name] for name in npz.files}
