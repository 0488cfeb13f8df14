"""Attention maps read honestly: each weight relative to an equal share of its row, and one line saying
what a map shows ("weighed all frames about equally" / "focused on 1.2-2.0 s").

Raw softmax weights of a flat map differ only in the fourth decimal (0.0625 vs 0.0628 over 16 frames);
a colour scale stretched to their own range would paint that as a sharp focus. Relative to an equal
share, on a fixed range, a flat map stays flat.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

EQUAL_BAND = 1.5  # a column within this factor of an equal share counts as "about equal"
COLOUR_RANGE = 4.0  # colour scales run from 1/4x to 4x an equal share (log2: -2..2), the same for every map
MAX_RUNS = 3  # focus spans named in a reading
NOUNS = {"frame": "frames", "audio": "moments of the voice", "audio_segment": "parts of the voice", "text": "words",
         "token": "words", "layer": "layers", "bottleneck": "bottleneck tokens", "query": "queries"}
TIME_AXES = ("frame", "audio", "audio_segment", "time")


def relative_to_equal(weights: np.ndarray) -> np.ndarray:
    """[R, C] non-negative weights -> each divided by its row's equal share (row sum / C): 1.0 is an
    equal share, 2.0 twice it. Rows summing to zero read as equal (1.0). Raises ValueError on other shapes."""
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 2 or not w.size:
        raise ValueError(f"attention must be a non-empty [rows, columns] array, got shape {w.shape}")
    w = np.clip(np.nan_to_num(w, nan=0.0), 0.0, None)
    share = w.sum(axis=1, keepdims=True) / w.shape[1]
    return np.divide(w, share, out=np.ones_like(w), where=share > 0)


def colour_values(weights: np.ndarray) -> np.ndarray:
    """log2 of `relative_to_equal`, clipped to the fixed range [-log2 COLOUR_RANGE, +log2 COLOUR_RANGE]:
    0 is an equal share, so a flat map is 0 everywhere."""
    limit = np.log2(COLOUR_RANGE)
    return np.clip(np.log2(np.maximum(relative_to_equal(weights), 1e-9)), -limit, limit)


def _name(tick: Any, seconds: bool) -> str:
    if seconds:
        try:
            return f"{float(tick):.1f}"
        except (TypeError, ValueError):
            pass
    return f"“{tick}”"


def reading(weights: np.ndarray, axis: str, ticks: Sequence[Any] = ()) -> str:
    """One plain line on where a [R, C] map puts its weight over its columns (averaged over rows).
    `axis`: the columns' axis name; `ticks`: one label per column (times in seconds on time axes)."""
    rel = relative_to_equal(weights).mean(axis=0)
    noun = NOUNS.get(axis, axis.replace("_", " ") + "s")
    if rel.max() < EQUAL_BAND:
        return f"weighed all {rel.size} {noun} about equally"
    seconds = axis in TIME_AXES
    ticks = list(ticks)[: rel.size] if len(ticks) >= rel.size else list(range(rel.size))
    runs: list[tuple[int, int]] = []
    for i in np.flatnonzero(rel >= EQUAL_BAND).tolist():
        if runs and runs[-1][1] == i - 1:
            runs[-1] = (runs[-1][0], i)
        else:
            runs.append((i, i))
    runs.sort(key=lambda r: -float(rel[r[0] : r[1] + 1].max()))
    named = []
    for a, b in sorted(runs[:MAX_RUNS]):
        first, last = _name(ticks[a], seconds), _name(ticks[b], seconds)
        named.append(first if a == b else (f"{first}-{last}" if seconds else f"{first} to {last}"))
    text = ", ".join(named) + (" s" if seconds else "")
    more = f" (and {len(runs) - MAX_RUNS} more places)" if len(runs) > MAX_RUNS else ""
    peak = float(rel.max())
    return f"focused on {text}{more}: up to {peak:.1f}× an equal share"
