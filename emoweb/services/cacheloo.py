"""Leave-one-out scoring of a few-shot cache: how many labelled clips it gets right without their own
entry. Pairwise affinities come in blocks (10,000 examples never need one 10,000 x 10,000 matrix), a
seeded, label-blind subset of rows is scored above LOO_EVAL_ROWS, and `AffinityMemo` keeps the last
scoring's affinities so a warm rebuild computes only new clips' rows and columns.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from models.cache import FewShotCache

LOO_EVAL_ROWS = 500  # ... and the leave-one-out accuracy too (the cache still holds every example)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a bijection of uint64 that scatters consecutive ids."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def eval_rows(ids: Sequence[int], max_rows: int, seed: int) -> torch.Tensor:
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
        # the last fitted adapter of this (profile, model): (tokens of its clips, their labels with the label
        # set, key and seed, the result), see `cachebuild.judge_adapter`; kept in the memo file (`memofile`)
        self.adapter: tuple[np.ndarray, tuple, Any] | None = None

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
    rows = eval_rows(list(range(n)) if clip_ids is None else clip_ids, max_rows, seed)
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
