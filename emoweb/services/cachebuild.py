"""A profile's few-shot cache from stored features: assemble, tune, score, and snapshots.

No database and no media here: inputs are the arrays `put_features` stored at ingest, per model
`<model>.fused`, `<model>.<modality>` (audio, visual, ...: the cache keys) and `<model>.logits`
(the model's base logits over the profile's label set as it was at ingest; label sets only grow,
so those columns are always a prefix of the current set).

What makes a 10,000-clip rebuild fast: `StoredArrays` keeps decoded, normalised keys between rebuilds
(so assembling a cache is slicing), `AffinityMemo` keeps the last leave-one-out affinities (so scoring
500 rows recomputes only new clips' rows and columns), and a snapshot stores clip ids, not keys.
"""
from __future__ import annotations

import itertools
import math
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from models.cache import (
    DEFAULT_ALPHA,
    DEFAULT_BETA,
    FewShotCache,
    logit_spread,
    no_flip_alpha,
    normalise_rows,
    search_hyperparameters,
)

LOGITS = "logits"  # feature suffix of the base logits; every other suffix is a cache key modality
FUSED = "fused"  # the fused embedding: stored for every clip, even one with nothing to recognise
# A caregiver's corrections must never make a model worse (issue 19). Every cache votes by class *mean*
# affinity (`FewShotCache` vote "mean"), so alpha bounds how far it can move one label against another.
# - Too few clips to judge (a label with fewer than JUDGE_MIN_PER_LABEL clips: leave-one-out would score
#   a clip whose label then has no other example): "careful" mode, alpha = no_flip_alpha(SAFE_CONFIDENCE),
#   so the cache can only change answers the model gives with less than SAFE_CONFIDENCE probability.
# - Enough clips: alpha (in units of the base logits' spread, 0 = off) and beta are chosen by leave-one-out
#   on the labelled clips, and the cache is switched on only when it gets at least JUDGE_MARGIN_CLIPS more
#   of them right than the model alone (one clip is within the noise of 14-28 clips). Otherwise the
#   rebuild keeps what was in use before and says so.
# Chosen on 3 CREMA-D training actors no model was trained on (K = 1, 2, 4 clips per label, 3 draws;
# `bench kshot --corpora cremad --split train --speakers 3`), never on the validation speakers that
# `bench kshot` reports (docs/CACHE.md).
SAFE_CONFIDENCE = 0.6
SAFE_BETA = 4.0
JUDGE_MIN_PER_LABEL = 2
JUDGE_MARGIN_CLIPS = 2
ALPHA_SPREADS: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0)
BETAS: tuple[float, ...] = (1.0, 4.0, 16.0)
# Keys that say *what* was said, not how: cached clips that share a sentence would vote for each other's
# label whatever the emotion (the acted corpora's fixed sentences showed it). The text's emotion still
# reaches every answer through the model's base logits.
NON_EMOTION_KEYS = frozenset({"text"})
TUNE_EVAL_ROWS = 500  # above this many examples, tuning scores a seeded subset of held-out rows
LOO_EVAL_ROWS = 500  # ... and the leave-one-out accuracy too (the cache still holds every example)
# With tune="auto", alpha/beta found by cross-validation are reused while the labelled set stays
# within this fraction of the size they were tuned at (and the label set is the same): one more
# correction barely moves them, and tuning is most of a large rebuild's time.
RETUNE_MIN_EXAMPLES = 200
RETUNE_FRACTION = 0.1


def tuning_defaults() -> dict[str, Any]:
    """The rules a rebuild follows (shown in the Models tab): careful mode's confidence and alpha, the
    clips per label needed to judge a cache, the margin it must win by, and the alpha grid it searches."""
    return {"safe_confidence": SAFE_CONFIDENCE, "safe_alpha": no_flip_alpha(SAFE_CONFIDENCE),
            "judge_min_per_label": JUDGE_MIN_PER_LABEL, "judge_margin_clips": JUDGE_MARGIN_CLIPS,
            "alpha_spreads": list(ALPHA_SPREADS), "betas": list(BETAS)}


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


def assemble_arrays(labels: Sequence[str], keys: Mapping[str, torch.Tensor], base: torch.Tensor) -> Assembled:
    """Labelled examples given as in-memory arrays (raw keys per modality, base logits), row-aligned as
    `assemble` would align stored ones: for studies that must build caches exactly as the app does."""
    units, masks = {}, {}
    for name, k in keys.items():
        if name not in NON_EMOTION_KEYS:
            units[name], masks[name] = normalise_rows(k)
    ids = list(range(len(labels)))
    return Assembled(ids, list(labels), units, masks, base.float(), 0, np.arange(len(labels), dtype=np.int64))


def make_cache(data: Assembled, label_set: Sequence[str], alpha: float = DEFAULT_ALPHA, beta: float = DEFAULT_BETA,
               vote: str = "mean") -> FewShotCache:
    """The cache of assembled examples: what a rebuild builds and what loading its snapshot rebuilds
    (snapshots written before class-mean votes load with vote "sum")."""
    return FewShotCache(label_set, data.keys, data.masks, data.labels if data.keys else (), alpha=alpha, beta=beta, vote=vote)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a bijection of uint64 that scatters consecutive ids."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _eval_rows(ids: Sequence[int], max_rows: int, seed: int) -> torch.Tensor:
    """Row indices to score: all, or the `max_rows` whose (seeded) hash of the clip id is smallest. Each
    clip's chance depends on itself alone, so a rebuild after a few new clips scores nearly the same
    rows and `AffinityMemo` reuses their affinities; it is still a pseudo-random, label-blind subset."""
    n = len(ids)
    if n <= max_rows:
        return torch.arange(n)
    keyed = _mix(np.asarray(ids, np.int64).astype(np.uint64) ^ _mix(np.full(1, seed, np.uint64)))
    return torch.from_numpy(np.sort(np.argpartition(keyed, max_rows)[:max_rows]))


def own_query(cache: FewShotCache) -> dict[str, torch.Tensor]:
    """The cached examples as a query; missing rows as NaN so they stay missing."""
    return {m: k.masked_fill(~cache.masks[m][:, None], float("nan")) for m, k in cache.keys.items()}


_BLOCK = 1024  # query rows per block: 10,000 examples never need a 10,000 x 10,000 matrix at once


def pairwise_affinity(cache: FewShotCache, rows: torch.Tensor, cols: torch.Tensor | None = None) -> torch.Tensor:
    """[len(rows), len(cols)] affinity of cached examples `rows` to examples `cols` (default: all):
    the same maths as `FewShotCache.affinity` on the cache's own (already unit) keys, with in-place
    steps and no pair-mask matrix, since this is most of a large cold rebuild."""
    n_cols = len(cache) if cols is None else len(cols)
    out = torch.zeros(len(rows), n_cols)
    for start in range(0, len(rows), _BLOCK):
        chunk = rows[start:start + _BLOCK]
        total = out[start:start + len(chunk)]
        count = torch.zeros(len(chunk), n_cols)
        for m, keys in cache.keys.items():  # unit rows, zeros where missing
            mask = cache.masks[m]
            col_keys, col_mask = (keys, mask) if cols is None else (keys[cols], mask[cols])
            row_mask = mask[chunk].float()
            sim = torch.mm(keys[chunk], col_keys.T).sub_(1.0).mul_(cache.beta).exp_()
            if not bool(col_mask.all()):
                sim.mul_(col_mask.float()[None, :])
            if not bool(row_mask.all()):
                sim.mul_(row_mask[:, None])
            total.add_(sim)
            count.addr_(row_mask, col_mask.float())
        total.div_(count.clamp_min_(1.0))
    return out


def _positions(old: np.ndarray, new: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each token of `new`: its index in `old` and whether it is there at all."""
    if not len(old):
        return np.zeros(len(new), np.int64), np.zeros(len(new), bool)
    order = np.argsort(old, kind="stable")
    at = order[np.searchsorted(old, new, sorter=order).clip(0, len(old) - 1)]
    return at, old[at] == new


def _merge(kept: torch.Tensor, added: torch.Tensor, kept_at: np.ndarray, added_at: np.ndarray, dim: int) -> torch.Tensor:
    """`kept` and `added` slices along `dim` put at their positions `kept_at` / `added_at` (together a
    permutation of 0..n-1): a concatenation, then a gather only when the two interleave (new clips
    usually have the highest ids, so they come last)."""
    merged = torch.cat([kept, added], dim) if added.shape[dim] else kept
    if len(added_at) and len(kept_at) and kept_at.max() > added_at.min():
        merged = merged.index_select(dim, torch.from_numpy(np.argsort(np.concatenate([kept_at, added_at]))))
    return merged


class AffinityMemo:
    """The affinities the last leave-one-out scoring of a (profile, model) computed: scored rows x every
    example, rows and columns named by tokens of their stored arrays. A warm rebuild recomputes only
    rows and columns whose token is new (a new or re-read clip); same tokens, modalities and beta give
    the same numbers, so reusing them changes no result. Costs 4 bytes x scored rows x examples.
    No lock: the state is one tuple, read once and replaced whole, so two rebuilds at once each get
    a consistent state and the last one's stays."""

    def __init__(self) -> None:
        # (beta and the modalities with their widths, row tokens, column tokens, affinities)
        self._state: tuple[tuple, np.ndarray, np.ndarray, torch.Tensor] | None = None

    @property
    def state(self) -> tuple[tuple, np.ndarray, np.ndarray, torch.Tensor] | None:
        """(signature, row tokens, column tokens, affinities) of the last scoring, or None."""
        return self._state

    def restore(self, state: tuple[tuple, np.ndarray, np.ndarray, torch.Tensor]) -> None:
        """Take over a `state` written by another process, its tokens renamed to this process's rows."""
        self._state = state

    def forget(self, tokens: np.ndarray) -> None:
        """Drop the rows and columns of `tokens` (deleted clips): the others stay valid."""
        state = self._state
        if state is None:
            return
        signature, row_tokens, col_tokens, aff = state
        rows, cols = ~np.isin(row_tokens, tokens), ~np.isin(col_tokens, tokens)
        if rows.all() and cols.all():
            return
        aff = aff[torch.from_numpy(rows)][:, torch.from_numpy(cols)]
        self._state = (signature, row_tokens[rows], col_tokens[cols], aff)

    def affinity(self, cache: FewShotCache, rows: torch.Tensor, tokens: np.ndarray) -> torch.Tensor:
        """`pairwise_affinity(cache, rows)`, from the memo where it can. Never written in place."""
        signature = (cache.beta, tuple((m, k.shape[1]) for m, k in cache.keys.items()))
        row_tokens = tokens[rows.numpy()]
        state = self._state
        if state is None or state[0] != signature:
            aff = pairwise_affinity(cache, rows)
        else:
            _, old_row_tokens, old_col_tokens, old = state
            if np.array_equal(row_tokens, old_row_tokens) and np.array_equal(tokens, old_col_tokens):
                return old
            old_rows, kept_rows = _positions(old_row_tokens, row_tokens)
            old_cols, kept_cols = _positions(old_col_tokens, tokens)
            keep_r, new_r = np.flatnonzero(kept_rows), np.flatnonzero(~kept_rows)
            keep_c, new_c = np.flatnonzero(kept_cols), np.flatnonzero(~kept_cols)
            block = old  # kept rows x kept columns, then x every column
            if not np.array_equal(old_rows[keep_r], np.arange(len(old_row_tokens))):
                block = block.index_select(0, torch.from_numpy(old_rows[keep_r]))
            if not np.array_equal(old_cols[keep_c], np.arange(len(old_col_tokens))):
                block = block.index_select(1, torch.from_numpy(old_cols[keep_c]))
            added = pairwise_affinity(cache, rows[torch.from_numpy(keep_r)], torch.from_numpy(new_c))
            block = _merge(block, added, keep_c, new_c, 1)
            aff = _merge(block, pairwise_affinity(cache, rows[torch.from_numpy(new_r)]), keep_r, new_r, 0)
        self._state = (signature, row_tokens, tokens.copy(), aff)
        return aff


@torch.no_grad()
def loo_accuracy(
    cache: FewShotCache,
    base: torch.Tensor,
    max_rows: int = LOO_EVAL_ROWS,
    seed: int = 0,
    clip_ids: Sequence[int] | None = None,
    tokens: np.ndarray | None = None,
    memo: AffinityMemo | None = None,
) -> dict:
    """Accuracy on the cached examples: base alone ("before") vs. base + cache with each example's own
    entry removed ("after"). Above `max_rows` examples, a seeded subset of rows is scored (chosen by
    `clip_ids`, default the row numbers; the cache still holds every example), so 10,000 examples never
    need a 10,000 x 10,000 affinity. With `tokens` (one per row) and a `memo`, affinities computed by
    the previous call for the same stored arrays are reused."""
    n = len(cache)
    if n == 0:
        return {"n": 0, "scored": 0, "before": None, "after": None}
    base = cache.expand_base(base)
    index = {label: i for i, label in enumerate(cache.labels)}
    y = torch.tensor([index[label] for label in cache.example_labels])
    rows = _eval_rows(list(range(n)) if clip_ids is None else clip_ids, max_rows, seed)
    aff = memo.affinity(cache, rows, tokens) if memo is not None and tokens is not None else pairwise_affinity(cache, rows)
    # values are one-hot: aff @ values sums each label's columns (index_add_: half the time of the matmul)
    votes = torch.zeros(len(rows), len(cache.labels)).index_add_(1, y, aff)
    votes[torch.arange(len(rows)), y[rows]] -= aff[torch.arange(len(rows)), rows]  # an example never votes for itself
    if cache.vote == "mean":  # each class's mean over its examples, the row's own class one example short
        votes /= cache.held_out_counts(rows)
    after = base[rows] + cache.alpha * votes
    before = int((base[rows].argmax(1) == y[rows]).sum())
    correct = int((after.argmax(1) == y[rows]).sum())
    return {"n": n, "scored": len(rows), "before": before / len(rows), "after": correct / len(rows)}


@dataclass
class Built:
    """A model's new cache and what to store with it."""

    model: str
    cache: FewShotCache
    clip_ids: list[int]
    hyper: dict[str, Any]
    metrics: dict[str, Any]
    keep_previous: bool = False  # kept off, and the profile's cache in use before stays in use


def reusable(previous: Mapping[str, Any] | None, n: int, label_set: Sequence[str]) -> bool:
    """Whether a previous snapshot's tuned alpha/beta still fit `n` examples over `label_set`."""
    if not previous or previous.get("tuning") not in ("cv", "reused") or n < RETUNE_MIN_EXAMPLES:
        return False
    tuned_n = int(previous.get("tuned_n") or 0)
    return list(previous.get("label_set") or []) == list(label_set) and abs(n - tuned_n) <= RETUNE_FRACTION * tuned_n


@torch.no_grad()
def build(
    model: str,
    data: Assembled,
    label_set: Sequence[str],
    tune: bool | str = "auto",
    previous: Mapping[str, Any] | None = None,
    seed: int = 0,
    memo: AffinityMemo | None = None,
) -> Built:
    """Build the cache, choose alpha/beta, measure leave-one-out accuracy, and decide whether it may be
    used (`hyper["active"]`; see the rules above SAFE_CONFIDENCE).

    `tune`: True: alpha/beta by leave-one-out on the labelled clips (5 folds above 200) when every label
    has JUDGE_MIN_PER_LABEL clips; "auto": the same, unless the `previous` snapshot's are still
    `reusable`; False: careful mode's settings, still judged when there are enough clips. `memo`: see
    `loo_accuracy`.
    """
    t0 = time.perf_counter()
    cache = make_cache(data, label_set, no_flip_alpha(SAFE_CONFIDENCE), SAFE_BETA)
    t1 = time.perf_counter()
    counts = Counter(data.labels)
    judged = len(counts) >= 2 and min(counts.values()) >= JUDGE_MIN_PER_LABEL and bool(cache.keys)
    tuning, cv, tuned_n = ("default" if judged else "careful"), None, None
    if tune == "auto" and judged and reusable(previous, len(cache), cache.labels):
        cache.alpha, cache.beta = float(previous["alpha"]), float(previous["beta"])  # type: ignore[index]
        tuning, tuned_n = "reused", int(previous["tuned_n"])  # type: ignore[index]
    elif tune and judged:
        spread = logit_spread(data.base)
        result = search_hyperparameters(
            own_query(cache), cache.example_labels, data.base, alphas=[a * spread for a in ALPHA_SPREADS],
            betas=BETAS, label_set=cache.labels, seed=seed, max_eval=TUNE_EVAL_ROWS, vote=cache.vote,
        )
        cache.alpha, cache.beta, tuning, cv, tuned_n = result.alpha, result.beta, "cv", result.accuracy, len(cache)
    t2 = time.perf_counter()
    if cache.keys:
        metrics = loo_accuracy(cache, data.base, seed=seed, clip_ids=data.clip_ids, tokens=data.tokens, memo=memo)
    else:
        metrics = {"n": 0, "scored": 0, "before": None, "after": None}
    t3 = time.perf_counter()
    metrics.update(
        cv_accuracy=None if cv is None or math.isnan(cv) else cv,
        skipped=data.skipped,
        seconds=round(t3 - t0, 4),
        timings={"build": round(t1 - t0, 4), "tune": round(t2 - t1, 4), "loo": round(t3 - t2, 4)},
    )
    if judged:
        gained = round((metrics["after"] - metrics["before"]) * metrics["scored"])
        active = cache.alpha > 0 and gained >= JUDGE_MARGIN_CLIPS
        if not active:  # kept off: the snapshot answers as the model alone (alpha 0), its metrics say why
            cache.alpha = 0.0
    else:
        active = bool(cache.keys)  # careful mode: safe by construction (`no_flip_alpha`)
    hyper = {"alpha": cache.alpha, "beta": cache.beta, "vote": cache.vote, "tuning": tuning, "tuned_n": tuned_n,
             "label_set": list(cache.labels), "active": active, "judged": judged}
    return Built(model, cache, list(data.clip_ids) if cache.keys else [], hyper, metrics)


def outcome(hyper: Mapping[str, Any], metrics: Mapping[str, Any], kept_previous: bool = False) -> str:
    """What a rebuild did to one model, in a caregiver's words (the Label tab and `cache rebuild`)."""
    n, before, after = metrics.get("n") or 0, metrics.get("before"), metrics.get("after")
    if not n:
        return "no cache: no labelled clip has what this model reads"
    if not hyper.get("judged"):
        return (f"careful mode: too few labelled clips to measure (needs {JUDGE_MIN_PER_LABEL} of every label); "
                f"it only changes answers the model is less than {100 * SAFE_CONFIDENCE:.0f}% sure of")
    change = f"{100 * before:.0f}% → {100 * after:.0f}% right on your {n} labelled clips"
    if hyper.get("active"):
        return f"cache on: {100 * (after - before):+.0f} points ({change})"
    kept = "the cache you had stays in use" if kept_previous else "answers come from the model alone"
    return f"kept off: it would not make answers better ({change}); {kept}"


def payload(built: Built) -> dict[str, np.ndarray]:
    """The snapshot's arrays: the clip id of each row, nothing else. A clip's stored features never
    change, so the snapshot refers to them (`from_features`) instead of copying 4 bytes x width x
    modalities per example (23 MB at 10,000 clips, most of a large rebuild's time to write), and a
    deleted clip's embedding cannot linger in any snapshot."""
    return {"clip_ids": np.asarray(built.clip_ids, np.int64)}


def holds_keys(arrays: Mapping[str, np.ndarray]) -> bool:
    """Whether a snapshot payload carries its own keys (written before snapshots referred to features)."""
    return any(name.startswith("keys.") for name in arrays)


def _snapshot_labels(example_labels: Sequence[str], hyper: Mapping[str, Any]) -> list[str]:
    return list(hyper.get("label_set") or dict.fromkeys(example_labels))


def from_features(
    model: str,
    arrays: Mapping[str, np.ndarray],
    example_labels: Sequence[str],
    hyper: Mapping[str, Any],
    stored: StoredArrays,
) -> tuple[FewShotCache, list[int]]:
    """A snapshot's cache from the stored features of its clips (`payload`): the same rows, labels and
    alpha/beta as when it was built. A clip deleted since (its snapshots are replaced in the same
    transaction, but another process may still hold an old id) is left out."""
    clip_ids = [int(c) for c in arrays.get("clip_ids", np.zeros(0, np.int64))]
    data = assemble(model, dict(zip(clip_ids, example_labels)), stored)
    alpha, beta = float(hyper.get("alpha", DEFAULT_ALPHA)), float(hyper.get("beta", DEFAULT_BETA))
    cache = make_cache(data, _snapshot_labels(example_labels, hyper), alpha, beta, str(hyper.get("vote", "sum")))
    return cache, list(data.clip_ids) if cache.keys else []


def from_snapshot(arrays: Mapping[str, np.ndarray], example_labels: Sequence[str], hyper: Mapping[str, Any]) -> tuple[FewShotCache, list[int]]:
    """A snapshot that `holds_keys` (float16 keys and masks per modality): still readable."""
    state: dict[str, Any] = {
        "labels": _snapshot_labels(example_labels, hyper),
        "example_labels": list(example_labels),
        "alpha": float(hyper.get("alpha", DEFAULT_ALPHA)),
        "beta": float(hyper.get("beta", DEFAULT_BETA)),
        "vote": str(hyper.get("vote", "sum")),
    }
    for name, value in arrays.items():
        if name.startswith(("keys.", "mask.")):
            state[name] = torch.from_numpy(np.asarray(value))
    clip_ids = [int(c) for c in arrays.get("clip_ids", np.zeros(0, np.int64))]
    return FewShotCache.from_state(state), clip_ids


def n_per_label(labels: Sequence[str]) -> dict[str, int]:
    return dict(Counter(labels))



def without_clip(cache: FewShotCache | None, clip_ids: Sequence[int], clip_id: int | None) -> tuple[FewShotCache | None, list[int]]:
    """The cache and its row clip ids without the rows of `clip_id`: a stored clip's answer "with the
    cache" must come from the other labelled clips, never from its own entry (which would only echo
    its label back). The cache itself is not changed."""
    clip_ids = list(clip_ids)
    if cache is None or clip_id is None or clip_id not in clip_ids:
        return cache, clip_ids
    own = [i for i, c in enumerate(clip_ids) if c == clip_id]
    return cache.without(own), [c for c in clip_ids if c != clip_id]


@torch.no_grad()
def score(
    base: torch.Tensor,
    base_labels: Sequence[str],
    query: Mapping[str, torch.Tensor],
    cache: FewShotCache | None,
    clip_ids: Sequence[int] = (),
    k: int = 5,
) -> tuple[list[str], torch.Tensor, list[list[dict]]]:
    """Logits [B, C] over the returned labels: the base logits plus the cache when it has entries;
    with the nearest labelled clips per row ({clip_id, label, similarity}).
    The cache must already know every label in `base_labels` (see `FewShotCache.add_label`)."""
    base = (base if base.dim() == 2 else base[None]).float()
    if cache is None:
        return list(base_labels), base, [[] for _ in range(base.shape[0])]
    if not len(cache):  # e.g. a clip's own entry was the only one: every label of the profile still gets a column
        return list(cache.labels), cache.expand_base(base, list(base_labels)), [[] for _ in range(base.shape[0])]
    query = {m: q if q.dim() == 2 else q[None] for m, q in query.items() if m in cache.keys}
    if not query:
        return list(base_labels), base, [[] for _ in range(base.shape[0])]
    logits = cache.logits(base, query, base_labels=list(base_labels))
    nearest = [
        [{"clip_id": clip_ids[i] if i < len(clip_ids) else None, "label": label, "similarity": round(sim, 4)} for i, label, sim in row]
        for row in cache.nearest(query, k)
    ]
    return list(cache.labels), logits, nearest
