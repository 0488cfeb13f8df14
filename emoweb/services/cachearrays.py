"""Stored features as a cache uses them: clips' feature rows (`<model>.<part>`, as `put_features`
stored them at ingest) decoded once into unit key rows and padded base logits (`StoredArrays`), and
one model's labelled examples row-aligned from them (`assemble`). No tuning and no database here.
"""
from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from models.cache import normalise_rows

LOGITS = "logits"  # feature suffix of the base logits; every other suffix is a cache key modality
FUSED = "fused"  # the fused embedding: stored for every clip, even one with nothing to recognise
# Keys that say *what* was said, not how: cached clips that share a sentence would vote for each other's
# label whatever the emotion (the acted corpora's fixed sentences showed it). The text's emotion still
# reaches every answer through the model's base logits.
NON_EMOTION_KEYS = frozenset({"text"})


def logits_name(model: str) -> str:
    return f"{model}.{LOGITS}"


def has_modality(parts: Iterable[str]) -> bool:
    """Whether a model's stored parts hold a modality's key: a clip with no voice, no face and no words
    stores only the fused embedding and the (uniform) logits, and no model can decide on it."""
    return any(part not in (FUSED, LOGITS) for part in parts)


def split_name(name: str) -> tuple[str, str]:
    """'emoasst.fused' -> ('emoasst', 'fused')."""
    model, _, part = name.partition(".")
    return model, part


def pad_logits(padded: np.ndarray, widths: np.ndarray, width: int) -> np.ndarray:
    """[N, width] float32 from rows whose first `widths[i]` columns hold a clip's logits (zeros after):
    a clip ingested before a label was added has fewer columns, and each missing one gets the row's
    mean, as `FewShotCache.expand_base` does."""
    out = np.zeros((len(padded), width), np.float32)
    out[:, : min(width, padded.shape[1])] = padded[:, :width]
    short = widths < width
    if short.any():
        mean = padded.sum(1) / np.maximum(widths, 1)
        out = np.where(np.arange(width)[None, :] < widths[:, None], out, mean[:, None]).astype(np.float32)
    return out


def _decode(dtypes: Sequence[str], data: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """Stored flat arrays as one float32 matrix, zero-padded to the widest, and each one's width."""
    if len(set(dtypes)) == 1 and len({len(d) for d in data}) == 1:  # the usual case: one buffer, one copy
        matrix = np.frombuffer(bytearray().join(data), np.dtype(dtypes[0])).reshape(len(data), -1)
        return matrix.astype(np.float32, copy=False), np.full(len(data), matrix.shape[1], np.int64)
    arrays = [np.frombuffer(d, np.dtype(t)) for t, d in zip(dtypes, data)]
    widths = np.asarray([a.size for a in arrays], np.int64)
    matrix = np.zeros((len(arrays), int(widths.max())), np.float32)
    for i, array in enumerate(arrays):
        matrix[i, : array.size] = array
    return matrix, widths


def _span(rows: np.ndarray) -> slice | np.ndarray:
    """`rows` as a slice when they are consecutive (usual: rows are added in clip id order), so reading
    or writing them is a view instead of a gather or scatter of every key."""
    if len(rows) and rows[-1] - rows[0] == len(rows) - 1 and bool((np.diff(rows) == 1).all()):
        return slice(int(rows[0]), int(rows[-1]) + 1)
    return rows


class StoredArrays:
    """Clips' stored features as a cache uses them, one row per clip: each key modality as unit rows and
    a presence mask (normalised once, when read, rather than on every rebuild), base logits as stored
    (zero-padded to the widest, with each row's width). Rows are only ever added and never written
    again, so a cache may hold views of them. Each row gets a token that no other arrays get in this
    process, which is what `AffinityMemo` names rows by."""

    _tokens = itertools.count(1)

    def __init__(self) -> None:
        self.row_of: dict[int, int] = {}  # clip id -> row
        self.rows = 0
        self.tokens = np.zeros(0, np.int64)  # row -> token; its length is the capacity
        self.units: dict[str, torch.Tensor] = {}  # key feature name -> [capacity, D] unit rows, zeros where absent
        self.present: dict[str, torch.Tensor] = {}  # key feature name -> [capacity] bool
        self.logits: dict[str, np.ndarray] = {}  # logits feature name -> [capacity, widest] float32
        self.widths: dict[str, np.ndarray] = {}  # logits feature name -> [capacity] its width, 0 where absent

    def add(self, blobs: Iterable[tuple[str, int, str, bytes]]) -> None:
        """Append clips from stored feature rows (name, clip id, dtype, raw bytes), skipping clips held
        already. Decoded a name at a time (one buffer per name, not 40,000 small arrays). A key whose
        width differs from the first one seen for its name is treated as absent, as a NaN row is."""
        by_name: dict[str, tuple[list[int], list[str], list[bytes]]] = {}
        for name, clip_id, dtype, data in blobs:
            group = by_name.get(name)
            if group is None:
                group = by_name[name] = ([], [], [])
            group[0].append(clip_id)
            group[1].append(dtype)
            group[2].append(data)
        clips = sorted({c for ids, _, _ in by_name.values() for c in ids} - self.row_of.keys())
        if not clips:
            return
        start, stop = self.rows, self.rows + len(clips)
        if stop > len(self.tokens):  # room for a quarter more: the next new clips need no copy
            self._grow(stop + stop // 4 + 64)
        self.rows = stop
        self.tokens[start:stop] = self.new_tokens(len(clips))
        self.row_of.update(zip(clips, range(start, stop)))
        for name, (ids, dtypes, data) in by_name.items():
            rows = np.fromiter((self.row_of[c] for c in ids), np.int64, len(ids))
            new = rows >= start
            if not new.all():
                rows, dtypes, data = rows[new], [t for t, n in zip(dtypes, new) if n], [d for d, n in zip(data, new) if n]
            if not len(rows):
                continue
            matrix, widths = _decode(dtypes, data)
            if split_name(name)[1] == LOGITS:
                self._add_logits(name, _span(rows), matrix, widths)
                continue
            if name not in self.units:
                self.units[name] = torch.zeros(len(self.tokens), int(widths[0]))
                self.present[name] = torch.zeros(len(self.tokens), dtype=torch.bool)
            dim = self.units[name].shape[1]
            fits = widths == dim
            if not (fits.all() and matrix.shape[1] == dim):
                keys = np.full((len(rows), dim), np.nan, np.float32)
                if fits.any():
                    keys[fits] = matrix[fits, :dim]
                matrix = keys
            index = _span(rows)
            index = index if isinstance(index, slice) else torch.from_numpy(index)
            self.units[name][index], self.present[name][index] = normalise_rows(torch.from_numpy(matrix))

    @classmethod
    def new_tokens(cls, n: int) -> np.ndarray:
        """`n` tokens no arrays in this process got before, increasing."""
        return np.fromiter((next(cls._tokens) for _ in range(n)), np.int64, n)

    def _add_logits(self, name: str, rows: np.ndarray, matrix: np.ndarray, widths: np.ndarray) -> None:
        if name not in self.logits:
            self.logits[name] = np.zeros((len(self.tokens), matrix.shape[1]), np.float32)
            self.widths[name] = np.zeros(len(self.tokens), np.int64)
        elif matrix.shape[1] > self.logits[name].shape[1]:  # a label was added since: widen, zero-padded
            self.logits[name] = np.pad(self.logits[name], ((0, 0), (0, matrix.shape[1] - self.logits[name].shape[1])))
        self.logits[name][rows, : matrix.shape[1]] = matrix
        self.widths[name][rows] = widths

    def _grow(self, capacity: int) -> None:
        """More rows: new arrays, so views that caches hold of the old ones stay as they were."""
        more = capacity - len(self.tokens)
        self.tokens = np.concatenate([self.tokens, np.zeros(more, np.int64)])
        for name, unit in self.units.items():
            self.units[name] = torch.cat([unit, torch.zeros(more, unit.shape[1])])
            self.present[name] = torch.cat([self.present[name], torch.zeros(more, dtype=torch.bool)])
        for name, logits in self.logits.items():
            self.logits[name] = np.concatenate([logits, np.zeros((more, logits.shape[1]), np.float32)])
            self.widths[name] = np.concatenate([self.widths[name], np.zeros(more, np.int64)])

    def without(self, clip_ids: set[int]) -> StoredArrays:
        """A copy without the rows of `clip_ids` (deleted clips); the other rows keep their tokens, so
        leave-one-out memos still name them."""
        clip_of = {r: c for c, r in self.row_of.items()}
        keep = np.asarray([r for r in range(self.rows) if clip_of[r] not in clip_ids], np.int64)
        index = torch.from_numpy(keep)
        out = StoredArrays()
        out.rows, out.tokens = len(keep), self.tokens[keep]
        out.row_of = {clip_of[int(r)]: i for i, r in enumerate(keep)}
        out.units = {n: u.index_select(0, index) for n, u in self.units.items()}
        out.present = {n: p.index_select(0, index) for n, p in self.present.items()}
        out.logits = {n: v[keep] for n, v in self.logits.items()}
        out.widths = {n: w[keep] for n, w in self.widths.items()}
        return out

    def names(self) -> set[str]:
        """Feature names some held clip has."""
        return set(self.units) | set(self.logits)

    def rows_of(self, clip_ids: Sequence[int]) -> slice | np.ndarray:
        """Row numbers of held clips (see `_span`)."""
        return _span(np.fromiter((self.row_of[c] for c in clip_ids), np.int64, len(clip_ids)))


@dataclass
class Assembled:
    """One model's labelled examples, row-aligned."""

    clip_ids: list[int]
    labels: list[str]
    keys: dict[str, torch.Tensor]  # modality -> [N, D] unit rows, zeros where a clip lacks the modality
    masks: dict[str, torch.Tensor]  # modality -> [N] bool, True where the clip has it
    base: torch.Tensor  # [N, C] base logits over label_set[:C]
    skipped: int  # labelled clips without stored features for this model
    tokens: np.ndarray  # [N] int64: `StoredArrays.tokens` of the rows


def assemble(model: str, clip_labels: Mapping[int, str], stored: StoredArrays) -> Assembled:
    """Row-align a model's stored features with the labelled clips, in clip id order. `stored` may hold
    other clips too: only those in `clip_labels` are used, so a snapshot re-assembled from its clip
    ids gives exactly the cache that was built."""
    name = logits_name(model)
    widths = stored.widths.get(name)
    held = sorted(c for c in clip_labels if c in stored.row_of) if widths is not None else []
    rows = stored.rows_of(held)
    has = widths[rows] > 0 if held else np.zeros(0, bool)
    if not has.all():  # clips without this model's features
        rows = np.arange(stored.rows)[rows][has]
        held = [c for c, h in zip(held, has) if h]
    if not held:
        return Assembled([], [], {}, {}, torch.zeros(0, 0), len(clip_labels), np.zeros(0, np.int64))
    base = torch.from_numpy(pad_logits(stored.logits[name][rows], widths[rows], int(widths[rows].max())))
    index = rows if isinstance(rows, slice) else torch.from_numpy(rows)
    keys, masks = {}, {}
    for feature, unit in stored.units.items():
        owner, part = split_name(feature)
        mask = stored.present[feature][index] if owner == model and part not in NON_EMOTION_KEYS else None
        if mask is not None and bool(mask.any()):  # a modality no labelled clip has is left out
            keys[part], masks[part] = unit[index], mask
    return Assembled(held, [clip_labels[c] for c in held], keys, masks, base, len(clip_labels) - len(held), stored.tokens[rows])
