"""Input checks shared by the repository: each failure is an `Invalid` with a one-line message."""
from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from pathlib import PurePosixPath

from .errors import Invalid
from .schema import KINDS, SOURCES

_SHA256 = re.compile(r"[0-9a-f]{64}")


def name(value: str, what: str) -> str:
    """A stripped, non-empty name (profile, label, model, ...)."""
    value = (value or "").strip()
    if not value:
        raise Invalid(f"{what} is empty")
    return value


def label_set(labels: Iterable[str]) -> list[str]:
    """Stripped, non-empty, distinct labels, in the given order."""
    result = [name(label, "label") for label in labels]
    if len(set(result)) != len(result):
        raise Invalid(f"label set has duplicates: {result}")
    return result


def sha256(value: str) -> str:
    value = (value or "").strip().lower()
    if not _SHA256.fullmatch(value):
        raise Invalid(f"not a sha256 hex digest: {value[:80]!r}")
    return value


def media_path(value: str) -> str:
    """A relative path inside the data dir: defence in depth, the app generates these paths."""
    path = PurePosixPath(value or "")
    if not path.parts or path.is_absolute() or ".." in path.parts or "\\" in str(path):
        raise Invalid(f"media path must be relative to the data dir: {value!r}")
    return str(path)


def choice(value: str, allowed: tuple[str, ...], what: str) -> str:
    if value not in allowed:
        raise Invalid(f"{what} must be one of {', '.join(allowed)}, not {value!r}")
    return value


def kind(value: str) -> str:
    return choice(value, KINDS, "clip kind")


def source(value: str) -> str:
    return choice(value, SOURCES, "clip source")


def probs(values: Mapping[str, float]) -> dict[str, float]:
    """Non-empty {label: finite probability}, as plain floats (JSON-serialisable)."""
    result = {name(label, "label"): float(p) for label, p in values.items()}
    if not result:
        raise Invalid("prediction has no probabilities")
    if not all(math.isfinite(p) for p in result.values()):
        raise Invalid(f"prediction has non-finite probabilities: {result}")
    return result
