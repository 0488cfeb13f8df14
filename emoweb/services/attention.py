"""Attention maps read honestly: each weight relative to an equal share of its row, and one line saying
what a map shows ("weighed all frames about equally" / "focused on 1.2-2.0 s"); a plain title for each
map and what its axes index, with their units, in a parent's words (never the model's variable names).

Raw softmax weights of a flat map differ only in the fourth decimal (0.0625 vs 0.0628 over 16 frames);
a colour scale stretched to their own range would paint that as a sharp focus. Relative to an equal
share, on a fixed range, a flat map stays flat.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

EQUAL_BAND = 1.5  # a column within this factor of an equal share counts as "about equal"
COLOUR_RANGE = 4.0  # colour scales run from 1/4x to 4x an equal share (log2: -2..2), the same for every map
MAX_RUNS = 3  # focus spans named in a reading
NOUNS = {"frame": "frames", "audio": "moments of the voice", "audio_token": "moments of the voice",
         "audio_segment": "parts of the voice", "text": "words", "token": "words", "word": "words", "layer": "layers",
         "bottleneck": "shared summary slots", "query": "queries", "row": "rows of the face picture",
         "col": "columns of the face picture", "position": "places in the face picture",
         "sentence_slice": "parts of the words' meaning"}


@dataclass(frozen=True)
class Axis:
    """What one axis of a map indexes, in plain words, and the unit of its ticks: "s" (seconds from the
    clip's start), "px" (pixels of the square face picture the model saw: MER-SEM-MBT's face CNN input,
    48 px embedded, 112 px paper) or None (a count or a name: words, layers)."""

    title: str
    unit: str | None = None


AXES: dict[str, Axis] = {
    "frame": Axis("moment of the video (frame time)", "s"),
    "audio": Axis("moment of the voice", "s"),
    "audio_token": Axis("moment of the voice", "s"),
    "audio_segment": Axis("part of the voice (its start)", "s"),
    "time": Axis("time", "s"),
    "text": Axis("word heard"), "token": Axis("word heard"), "word": Axis("word heard"),
    "row": Axis("height in the face picture (from the top)", "px"),
    "col": Axis("place across the face picture (from the left)", "px"),
    "position": Axis("place in the face picture (from the top, from the left)", "px"),
    "sentence_slice": Axis("part of the words' meaning (a slice of the sentence summary)"),
    "layer": Axis("model layer (1 = first)"),
    "query": Axis("model's internal question"),
    "bottleneck": Axis("shared summary slot (where face and voice meet)"),
}
# What a map shows, by what its columns index
LOOKED_AT = {"frame": "Which moments of the video this model looked at most",
             "audio": "Which moments of the voice this model listened to most",
             "audio_token": "Which moments of the voice this model listened to most",
             "audio_segment": "Which parts of the voice this model listened to most",
             "text": "Which words this model read most closely", "token": "Which words this model read most closely",
             "word": "Which words this model read most closely",
             "col": "Which parts of the face picture this model looked at most",
             "sentence_slice": "Which parts of the words' meaning each place of the face picture drew on"}


def axis_of(name: str) -> Axis:
    """The plain description of axis `name` (an unknown one: its name in words, no unit)."""
    return AXES.get(name) or Axis(name.replace("_", " "))


def axis_label(name: str) -> str:
    """An axis title with its unit: "moment of the video (frame time), s"."""
    axis = axis_of(name)
    return axis.title + (f", {axis.unit}" if axis.unit else "")


# a text encoder's own marks at the ends of the words, in words a parent reads (they take attention like words)
SPECIAL_TOKENS = {"[CLS]": "(start)", "[SEP]": "(end)", "<s>": "(start)", "</s>": "(end)", "[PAD]": "(padding)"}


def _word(value: Any) -> str:
    return SPECIAL_TOKENS.get(str(value), str(value))


def tick_text(value: Any, axis: str) -> str:
    """One tick of `axis` as shown: a number with the axis's unit ("1.20 s", "12 px"); a word as it is.
    The unit comes from the axis, never from the value's type (a pixel position is no time)."""
    unit = axis_of(axis).unit
    if unit:
        try:
            number = float(value)
        except (TypeError, ValueError):
            return str(value)
        return f"{number:.2f} s" if unit == "s" else f"{number:g} {unit}"
    return _word(value)


def map_titles(maps: Sequence[tuple[str, Sequence[str]]]) -> list[str]:
    """A plain title for each (model's display name, (row axis, column axis)) map: what it shows, by what
    its columns index. Maps of one model with the same title (the same picture looked at, at two depths
    of the model) are told apart in order: "earlier" and "later" (more: "stage 1", "stage 2", ...)."""
    base = [f"{model}: {LOOKED_AT.get(axes[-1]) or 'Where this model looked: ' + axis_of(axes[-1]).title}"
            for model, axes in maps]
    out = []
    for i, title in enumerate(base):
        same = [j for j, t in enumerate(base) if t == title]
        if len(same) == 1:
            out.append(title)
        elif len(same) == 2:
            out.append(f"{title} ({'earlier' if same.index(i) == 0 else 'later'} stage)")
        else:
            out.append(f"{title} (stage {same.index(i) + 1})")
    return out


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


def _name(tick: Any, unit: str | None) -> str:
    if unit:
        try:
            return f"{float(tick):.1f}"
        except (TypeError, ValueError):
            pass
    return f"“{_word(tick)}”"


def reading(weights: np.ndarray, axis: str, ticks: Sequence[Any] = ()) -> str:
    """One plain line on where a [R, C] map puts its weight over its columns (averaged over rows).
    `axis`: the columns' axis name; `ticks`: one label per column in the axis's unit (`AXES`: seconds on time
    axes, pixels on the face picture); without them, columns are named by their number and no unit."""
    rel = relative_to_equal(weights).mean(axis=0)
    noun = NOUNS.get(axis, axis.replace("_", " ") + "s")
    if rel.size == 1:
        return f"had only one of the {noun} to weigh"  # a photo's one frame: nothing to compare, nothing to count
    if rel.max() < EQUAL_BAND:
        return f"weighed all {rel.size} {noun} about equally"
    given = len(ticks) >= rel.size
    ticks = list(ticks)[: rel.size] if given else list(range(1, rel.size + 1))
    unit = axis_of(axis).unit if given else None
    runs: list[tuple[int, int]] = []
    for i in np.flatnonzero(rel >= EQUAL_BAND).tolist():
        if runs and runs[-1][1] == i - 1:
            runs[-1] = (runs[-1][0], i)
        else:
            runs.append((i, i))
    runs.sort(key=lambda r: -float(rel[r[0] : r[1] + 1].max()))
    named = []
    for a, b in sorted(runs[:MAX_RUNS]):
        first, last = _name(ticks[a], unit), _name(ticks[b], unit)
        named.append(first if a == b else (f"{first}-{last}" if unit else f"{first} to {last}"))
    text = ", ".join(named) + (f" {unit}" if unit else "")
    more = f" (and {len(runs) - MAX_RUNS} more places)" if len(runs) > MAX_RUNS else ""
    peak = float(rel.max())
    return f"focused on {text}{more}: up to {peak:.1f}× an equal share"
