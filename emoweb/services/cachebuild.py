"""A profile's few-shot cache from stored features: assemble, tune, score, and (de)serialise snapshots.

No database and no media here: inputs are the arrays `put_features` stored at ingest, per model
`<model>.fused`, `<model>.<modality>` (audio, visual, ...: the cache keys) and `<model>.logits`
(the model's base logits over the profile's label set as it was at ingest; label sets only grow,
so those columns are always a prefix of the current set).
"""
from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from models.cache import DEFAULT_ALPHA, DEFAULT_BETA, FewShotCache, search_hyperparameters

LOGITS = "logits"  # feature suffix of the base logits; every other suffix is a cache key modality
MIN_TUNE_EXAMPLES = 4  # fewer labelled clips than this: keep the default alpha/beta
TUNE_EVAL_ROWS = 500  # above this many examples, tuning scores a seeded subset of held-out rows
LOO_EVAL_ROWS = 500  # ... and the leave-one-out accuracy too (the cache still holds every example)
# With tune="auto", alpha/beta found by cross-validation are reused while the labelled set stays
# within this fraction of the size they were tuned at (and the label set is the same): one more
# correction barely moves them, and tuning is most of a large rebuild's time.
RETUNE_MIN_EXAMPLES = 200
RETUNE_FRACTION = 0.1


def logits_name(model: str) -> str:
    return f"{model}.{LOGITS}"


def split_name(name: str) -> tuple[str, str]:
    """'emoasst.fused' -> ('emoasst', 'fused')."""
    model, _, part = name.partition(".")
    return model, part


def stack_logits(rows: Sequence[np.ndarray], width: int) -> np.ndarray:
    """[N, width] float32 from rows of possibly fewer columns (clips ingested before a label was
    added): a missing column gets the row mean, as `FewShotCache.expand_base` does."""
    rows = [np.asarray(r, np.float32).reshape(-1) for r in rows]
    if rows and all(r.shape[0] == width for r in rows):
        return np.stack(rows)
    out = np.empty((len(rows), width), np.float32)
    for i, r in enumerate(rows):
        out[i, : r.shape[0]] = r[:width]
        if r.shape[0] < width:
            out[i, r.shape[0]:] = r.mean() if r.size else 0.0
    return out


@dataclass
class Assembled:
    """One model's labelled examples, row-aligned."""

    clip_ids: list[int]
    labels: list[str]
    keys: dict[str, torch.Tensor]  # modality -> [N, D], NaN rows where a clip lacks the modality
    base: torch.Tensor  # [N, C] base logits over label_set[:C]
    skipped: int  # labelled clips without stored features for this model


def assemble(
    model: str, clip_labels: Mapping[int, str], features: Mapping[str, Mapping[int, np.ndarray]]
) -> Assembled:
    """Row-align a model's stored features with the labelled clips (`features`: name -> clip -> array)."""
    base_by_clip = features.get(logits_name(model), {})
    ids = sorted(c for c in clip_labels if c in base_by_clip)
    skipped = len(clip_labels) - len(ids)
    width = max((base_by_clip[c].size for c in ids), default=0)
    base = torch.from_numpy(stack_logits([base_by_clip[c] for c in ids], width)) if ids else torch.zeros(0, 0)
    keys: dict[str, torch.Tensor] = {}
    for name, by_clip in features.items():
        owner, part = split_name(name)
        if owner != model or part == LOGITS or not by_clip:
            continue
        dim = next(iter(by_clip.values())).size
        matrix = np.full((len(ids), dim), np.nan, np.float32)
        for row, clip_id in enumerate(ids):
            value = by_clip.get(clip_id)
            if value is not None and value.size == dim:
                matrix[row] = value.reshape(-1)
        keys[part] = torch.from_numpy(matrix)
    return Assembled(ids, [clip_labels[c] for c in ids], keys, base, skipped)


def _eval_rows(n: int, max_rows: int, seed: int) -> torch.Tensor:
    if n <= max_rows:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:max_rows].sort().values


def own_query(cache: FewShotCache) -> dict[str, torch.Tensor]:
    """The cached examples as a query; missing rows as NaN so they stay missing."""
    return {m: k.masked_fill(~cache.masks[m][:, None], float("nan")) for m, k in cache.keys.items()}


@torch.no_grad()
def loo_accuracy(cache: FewShotCache, base: torch.Tensor, max_rows: int = LOO_EVAL_ROWS, seed: int = 0) -> dict:
    """Accuracy on the cached examples: base alone ("before") vs. base + cache with each example's own
    entry removed ("after"). Above `max_rows` examples, a seeded subset of rows is scored (the cache
    still holds every example), so 10,000 examples never need a 10,000 x 10,000 affinity.
    Same maths as `FewShotCache.affinity`, with in-place steps (this is most of a large rebuild)."""
    n = len(cache)
    if n == 0:
        return {"n": 0, "scored": 0, "before": None, "after": None}
    base = cache.expand_base(base)
    index = {label: i for i, label in enumerate(cache.labels)}
    y = torch.tensor([index[label] for label in cache.example_labels])
    rows = _eval_rows(n, max_rows, seed)
    values = cache.values
    correct_before = correct_after = 0
    for start in range(0, len(rows), 1024):
        chunk = rows[start:start + 1024]
        total = torch.zeros(len(chunk), n)
        count = torch.zeros(len(chunk), n)
        for m, keys in cache.keys.items():  # unit rows, zeros where missing
            pair = (cache.masks[m][chunk, None] & cache.masks[m][None, :]).float()
            sim = keys[chunk] @ keys.T
            total.add_(sim.sub_(1.0).mul_(cache.beta).exp_().mul_(pair))
            count.add_(pair)
        aff = total.div_(count.clamp_min_(1.0))
        aff[torch.arange(len(chunk)), chunk] = 0.0  # an example never votes for itself
        after = base[chunk] + cache.alpha * (aff @ values)
        correct_before += int((base[chunk].argmax(1) == y[chunk]).sum())
        correct_after += int((after.argmax(1) == y[chunk]).sum())
    return {"n": n, "scored": len(rows), "before": correct_before / len(rows), "after": correct_after / len(rows)}


@dataclass
class Built:
    """A model's new cache and what to store with it."""

    model: str
    cache: FewShotCache
    clip_ids: list[int]
    hyper: dict[str, Any]
    metrics: dict[str, Any]


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
) -> Built:
    """Build the cache, choose alpha/beta, and measure leave-one-out accuracy.

    `tune`: True: cross-validation on the labelled clips (leave-one-out up to 200 examples, else
    5 folds) when there are enough of them; "auto": the same, unless the `previous` snapshot's
    hyper-parameters are still `reusable`; False: the defaults.
    """
    t0 = time.perf_counter()
    cache = FewShotCache.build(data.keys, data.labels, label_set) if data.keys else FewShotCache(label_set)
    t1 = time.perf_counter()
    tuning, cv, tuned_n = "default", None, None
    enough = len(data.labels) >= MIN_TUNE_EXAMPLES and len(set(data.labels)) >= 2
    if tune == "auto" and enough and cache.keys and reusable(previous, len(cache), cache.labels):
        cache.alpha, cache.beta = float(previous["alpha"]), float(previous["beta"])  # type: ignore[index]
        tuning, tuned_n = "reused", int(previous["tuned_n"])  # type: ignore[index]
    elif tune and enough and cache.keys:
        result = search_hyperparameters(
            own_query(cache), cache.example_labels, data.base, label_set=cache.labels, seed=seed,
            max_eval=TUNE_EVAL_ROWS,
        )
        cache.alpha, cache.beta, tuning, cv, tuned_n = result.alpha, result.beta, "cv", result.accuracy, len(cache)
    t2 = time.perf_counter()
    metrics = loo_accuracy(cache, data.base, seed=seed) if cache.keys else {"n": 0, "scored": 0, "before": None, "after": None}
    t3 = time.perf_counter()
    metrics.update(
        cv_accuracy=None if cv is None or math.isnan(cv) else cv,
        skipped=data.skipped,
        seconds=round(t3 - t0, 4),
        timings={"build": round(t1 - t0, 4), "tune": round(t2 - t1, 4), "loo": round(t3 - t2, 4)},
    )
    hyper = {"alpha": cache.alpha, "beta": cache.beta, "tuning": tuning, "tuned_n": tuned_n, "label_set": list(cache.labels)}
    return Built(model, cache, list(data.clip_ids) if cache.keys else [], hyper, metrics)


def payload(built: Built) -> dict[str, np.ndarray]:
    """The snapshot's arrays: keys (float16) and masks per modality, and the clip id of each row."""
    state = built.cache.state_dict()
    arrays = {k: v.numpy() for k, v in state.items() if isinstance(v, torch.Tensor)}
    arrays["clip_ids"] = np.asarray(built.clip_ids, np.int64)
    return arrays


def from_snapshot(arrays: Mapping[str, np.ndarray], example_labels: Sequence[str], hyper: Mapping[str, Any]) -> tuple[FewShotCache, list[int]]:
    """Inverse of `payload` (+ the snapshot's labels and hyper-parameters)."""
    state: dict[str, Any] = {
        "labels": list(hyper.get("label_set") or dict.fromkeys(example_labels)),
        "example_labels": list(example_labels),
        "alpha": float(hyper.get("alpha", DEFAULT_ALPHA)),
        "beta": float(hyper.get("beta", DEFAULT_BETA)),
    }
    for name, value in arrays.items():
        if name.startswith(("keys.", "mask.")):
            state[name] = torch.from_numpy(np.asarray(value))
    clip_ids = [int(c) for c in arrays.get("clip_ids", np.zeros(0, np.int64))]
    return FewShotCache.from_state(state), clip_ids


def n_per_label(labels: Sequence[str]) -> dict[str, int]:
    return dict(Counter(labels))


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
    if cache is None or not len(cache):
        return list(base_labels), base, [[] for _ in range(base.shape[0])]
    query = {m: q if q.dim() == 2 else q[None] for m, q in query.items() if m in cache.keys}
    if not query:
        return list(base_labels), base, [[] for _ in range(base.shape[0])]
    logits = cache.logits(base, query, base_labels=list(base_labels))
    nearest = [
        [{"clip_id": clip_ids[i] if i < len(clip_ids) else None, "label": label, "similarity": round(sim, 4)} for i, label, sim in row]
        for row in cache.nearest(query, k)
    ]
    return list(cache.labels), logits, nearest
