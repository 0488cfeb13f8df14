"""A profile's few-shot cache from stored features: assemble, tune, score, and snapshots.

No database and no media here: inputs are the arrays `put_features` stored at ingest, per model
`<model>.fused`, `<model>.<modality>` (audio, visual, ...: the cache keys) and `<model>.logits`
(the model's base logits over the profile's label set as it was at ingest; label sets only grow,
so those columns are always a prefix of the current set).

What makes a 10,000-clip rebuild fast: `StoredArrays` (`cachearrays`) keeps decoded, normalised keys
between rebuilds (so assembling a cache is slicing), `AffinityMemo` (`cacheloo`) keeps the last leave-one-out affinities (so scoring
500 rows recomputes only new clips' rows and columns), and a snapshot stores clip ids, not keys.
"""
from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from emoweb.services.cachearrays import NON_EMOTION_KEYS, Assembled, StoredArrays, assemble
from emoweb.services.cacheloo import AffinityMemo, eval_rows, loo_accuracy, own_query
from models.adapter import ProfileAdapter, fit_adapter
from models.cache import (
    DEFAULT_ALPHA,
    DEFAULT_BETA,
    FewShotCache,
    logit_spread,
    no_flip_alpha,
    normalise_rows,
    search_hyperparameters,
)

# A caregiver's corrections must never make a model worse (issue 19). Every cache votes by class *mean*
# affinity (`FewShotCache` vote "mean"), so alpha bounds how far it can move one label against another.
# - Too few clips to judge (a label with fewer than JUDGE_MIN_PER_LABEL clips: leave-one-out would score
#   a clip whose label then has no other example): "careful" mode, alpha = no_flip_alpha(SAFE_CONFIDENCE),
#   so the cache can only change answers the model gives with less than SAFE_CONFIDENCE probability.
# - Enough clips: the fitted adapter is judged (ADAPTER_* below). With VOTES_MIN_CLIPS labelled clips or
#   more, the cache's votes are a candidate too: alpha (in units of the base logits' spread, 0 = off) and
#   beta chosen by leave-one-out on the labelled clips, switched on only when they get at least
#   JUDGE_MARGIN_CLIPS more of them right than the model alone. Otherwise the rebuild keeps what was in use
#   before and says so.
# Chosen on 3 CREMA-D training actors no model was then trained on (K = 1, 2, 4 clips per label, 3 draws;
# `bench kshot --corpora cremad --split train --speakers 3`); the margin of 3 (was 2) and the adapter's
# rules on the 17 dev speakers of the retrained checkpoints; never on the validation speakers that
# `bench kshot` reports (docs/CACHE.md).
SAFE_CONFIDENCE = 0.6
SAFE_BETA = 4.0
JUDGE_MIN_PER_LABEL = 2
JUDGE_MARGIN_CLIPS = 3
ALPHA_SPREADS: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0)
BETAS: tuple[float, ...] = (1.0, 4.0, 16.0)
TUNE_EVAL_ROWS = 500  # above this many examples, tuning scores a seeded subset of held-out rows
# Below this many labelled clips the cache's tuned votes are not a candidate: their leave-one-out figure is
# the best of a 30-setting grid scored on the same few clips, mostly luck. On the 17 dev speakers (K = 1, 2,
# 4, and 8 on CREMA-D: 6-56 clips) they never beat the fitted adapter on the speaker's other clips, and one
# speaker lost 8 points to them (MER-CLIP, K = 2); without them every mean gain was as high or higher.
VOTES_MIN_CLIPS = 200
# With tune="auto", alpha/beta found by cross-validation are reused while the labelled set stays
# within this fraction of the size they were tuned at (and the label set is the same): one more
# correction barely moves them, and tuning is most of a large rebuild's time.
RETUNE_MIN_EXAMPLES = 200
RETUNE_FRACTION = 0.1
# The fitted adapter (`models.adapter`: a per-profile class bias and a linear probe of one cache key) is
# judged on the same labelled clips, each scored by an adapter fitted without it (leave-one-out up to
# ADAPTER_LOO_MAX clips, else ADAPTER_FOLDS folds). It is switched on when it gets at least as many of them
# right as the model alone (ADAPTER_MARGIN_CLIPS more), is surer of their right labels than the model
# alone (a lower held-out log loss: a tie in clips right is no evidence on 12 clips), and the judged cache
# does not beat it; then it replaces the cache's votes. On the dev speakers the log-loss condition took the
# worst speaker at K = 2 from -6.2 to -2.9 points for 0.5 points of the mean gain, where a margin of 1 clip
# gave up 1-2.5 points and left -4.3 (docs/CACHE.md).
ADAPTER_LOO_MAX = 60
ADAPTER_FOLDS = 10
ADAPTER_MARGIN_CLIPS = 0
ADAPTER_MAX_CLIPS = 500  # above this, fitted and judged on a seeded, label-blind subset (0.06 s, not 1.4 s at 10,000)


# how a cache's settings were set (`hyper["tuning"]`), in words (the Label and Models tabs, `cache rebuild`)
TUNING_WORDS = {"cv": "chosen on your labelled clips", "reused": "kept from the last rebuild",
                "default": "defaults", "careful": "careful mode: too few clips to judge",
                "adapter_only": f"not used below {VOTES_MIN_CLIPS} labelled clips: only the fitted adapter is judged"}


def too_few_to_judge() -> str:
    """Why a rebuild measured nothing, in words: the rule `build` judges by (JUDGE_MIN_PER_LABEL clips of
    each label labelled, and at least two labels); the Label tab's table, chart and outcome all say it."""
    return f"too few labelled clips to measure (needs {JUDGE_MIN_PER_LABEL} of every label used, and two labels)"


def still_needed(n_per_label: Mapping[str, int]) -> str:
    """What a caregiver still has to label before a rebuild can be judged (`too_few_to_judge`), in words:
    "1 more clip of neutral", "a clip of a second label", or "" when nothing is missing."""
    short = [f"{JUDGE_MIN_PER_LABEL - n} more clip{'s' if JUDGE_MIN_PER_LABEL - n > 1 else ''} of {label}"
             for label, n in sorted(n_per_label.items()) if n < JUDGE_MIN_PER_LABEL]
    if len([n for n in n_per_label.values() if n]) < 2:
        short.append(f"{JUDGE_MIN_PER_LABEL} clips of a second label")
    return ", ".join(short)


def accuracy_text(judged: bool, before: float | None, after: float | None, arrow: str = "→") -> str:
    """Leave-one-out accuracy on the labelled clips, model alone `arrow` with the cache ("50.0% → 75.0%"),
    or, when the rebuild was not judged (its numbers then mean nothing), `too_few_to_judge`."""
    if not judged or before is None or after is None:
        return too_few_to_judge()
    return f"{100 * before:.1f}% {arrow} {100 * after:.1f}%"


def tuning_defaults() -> dict[str, Any]:
    """The rules a rebuild follows (shown in the Models tab): careful mode's confidence and alpha, the
    clips per label needed to judge a cache, the margin it must win by, the alpha grid it searches, the
    clips below which only the fitted adapter is judged, and the fitted adapter's margin."""
    return {"safe_confidence": SAFE_CONFIDENCE, "safe_alpha": no_flip_alpha(SAFE_CONFIDENCE),
            "judge_min_per_label": JUDGE_MIN_PER_LABEL, "judge_margin_clips": JUDGE_MARGIN_CLIPS,
            "alpha_spreads": list(ALPHA_SPREADS), "betas": list(BETAS), "votes_min_clips": VOTES_MIN_CLIPS,
            "adapter_margin_clips": ADAPTER_MARGIN_CLIPS}


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
               vote: str = "mean", adapter: ProfileAdapter | None = None) -> FewShotCache:
    """The cache of assembled examples: what a rebuild builds and what loading its snapshot rebuilds
    (snapshots written before class-mean votes load with vote "sum")."""
    return FewShotCache(label_set, data.keys, data.masks, data.labels if data.keys else (), alpha=alpha, beta=beta,
                        vote=vote, adapter=adapter)


def probe_key(data: Assembled) -> str | None:
    """The cache key the adapter's probe reads: the one most labelled clips have, the model's own fused
    embedding first on a tie (one key: on the dev speakers, all keys together did no better)."""
    if not data.keys:
        return None
    order = sorted(data.keys, key=lambda m: (-int(data.masks[m].sum()), m != "fused"))
    return order[0]


def judge_adapter(data: Assembled, cache: FewShotCache, seed: int = 0,
                  memo: AffinityMemo | None = None) -> tuple[ProfileAdapter, dict[str, Any]]:
    """The adapter fitted on the labelled clips (a label-blind subset of ADAPTER_MAX_CLIPS above that), and
    its held-out judgement on them: clips right, and the mean log loss of their labels, by the model alone
    and by an adapter fitted without each clip (`models.adapter.fit_adapter`). With a `memo`, the last fit is reused when its clips (their stored
    arrays' tokens), their labels and the label set are the same: a fit is a tenth of a second, most of a
    warm 10,000-clip rebuild, and a correction outside the fitted subset changes none of it."""
    rows = eval_rows(data.clip_ids, ADAPTER_MAX_CLIPS, seed)
    key = probe_key(data)
    tokens = data.tokens[rows.numpy()]
    inputs = (tuple(data.labels[i] for i in rows.tolist()), tuple(cache.labels), key, seed)
    hit = memo.adapter if memo is not None else None  # read once: another rebuild may replace it
    if hit is not None and np.array_equal(hit[0], tokens) and hit[1] == inputs:
        adapter, fold_rows, judged = hit[2]
    else:
        y = torch.tensor([cache.labels.index(label) for label in data.labels], dtype=torch.long)
        base = cache.expand_base(data.base)
        x = data.keys[key] if key is not None else None
        n = len(rows)
        adapter, held = fit_adapter(base, y, x, key, folds=None if n <= ADAPTER_LOO_MAX else ADAPTER_FOLDS, seed=seed, rows=rows)
        right = {"before": int((base[rows].argmax(1) == y[rows]).sum()), "after": int((held.argmax(1) == y[rows]).sum()),
                 "log_loss_before": round(float(F.cross_entropy(base[rows], y[rows])), 6),
                 "log_loss_after": round(float(F.cross_entropy(held, y[rows])), 6)}
        fold_rows, judged = adapter.held_out.fold[rows], {"n": n, **right, "key": key}
        if memo is not None:
            memo.adapter = (tokens, inputs, (adapter, fold_rows, judged))
    fold = torch.full((len(data.labels),), -1, dtype=torch.long)  # the fitted clips' rows in this rebuild
    fold[rows] = fold_rows
    return replace(adapter, held_out=replace(adapter.held_out, fold=fold)), dict(judged)


def adapter_refusal(judged: Mapping[str, Any]) -> str | None:
    """Why a judged adapter (`judge_adapter`'s judgement) may not be switched on, None when it may:
    "fewer right" (not at least ADAPTER_MARGIN_CLIPS more of the labelled clips right than the model
    alone), "less sure" (as many right, but a higher log loss on them); each clip scored by a fit without it."""
    if judged["after"] - judged["before"] < ADAPTER_MARGIN_CLIPS:
        return "fewer right"
    return "less sure" if judged["log_loss_after"] > judged["log_loss_before"] else None


def adapter_passes(judged: Mapping[str, Any]) -> bool:
    """Whether a judged adapter may be switched on (`adapter_refusal` finds no reason against it)."""
    return adapter_refusal(judged) is None


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
    if tune and judged and len(cache) < VOTES_MIN_CLIPS:
        cache.alpha, tuning = 0.0, "adapter_only"  # leave-one-out then scores the model alone
    elif tune == "auto" and judged and reusable(previous, len(cache), cache.labels):
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
    method = "careful"
    if judged:
        gained = round((metrics["after"] - metrics["before"]) * metrics["scored"])
        active = cache.alpha > 0 and gained >= JUDGE_MARGIN_CLIPS
        if not active:  # kept off: the snapshot answers as the model alone (alpha 0), its metrics say why
            cache.alpha = 0.0
        method = "cache" if active else "off"
        if tune:
            t4 = time.perf_counter()
            adapter, judged_adapter = judge_adapter(data, cache, seed, memo)
            metrics["timings"]["adapter"] = round(time.perf_counter() - t4, 4)
            metrics["adapter"] = judged_adapter
            adapter_gain = (judged_adapter["after"] - judged_adapter["before"]) / judged_adapter["n"]
            # the cache's leave-one-out gain is the best of its alpha/beta grid, the adapter's is not chosen:
            # the cache must win by the same margin it needs to be switched on at all
            cache_lead = (metrics["after"] - metrics["before"] - adapter_gain) * metrics["scored"] if active else 0.0
            if adapter_passes(judged_adapter) and cache_lead < JUDGE_MARGIN_CLIPS:
                cache.adapter, cache.alpha, active, method = adapter, 0.0, True, "adapter"
                metrics.update(scored=judged_adapter["n"],
                               before=judged_adapter["before"] / judged_adapter["n"], after=judged_adapter["after"] / judged_adapter["n"])
        metrics["seconds"] = round(time.perf_counter() - t0, 4)
    else:
        active = bool(cache.keys)  # careful mode: safe by construction (`no_flip_alpha`)
    hyper = {"alpha": cache.alpha, "beta": cache.beta, "vote": cache.vote, "tuning": tuning, "tuned_n": tuned_n,
             "label_set": list(cache.labels), "active": active, "judged": judged, "method": method,
             "adapter_key": cache.adapter.key if cache.adapter is not None else None}
    return Built(model, cache, list(data.clip_ids) if cache.keys else [], hyper, metrics)


def outcome(hyper: Mapping[str, Any], metrics: Mapping[str, Any], kept_previous: bool = False) -> str:
    """What a rebuild did to one model, in a caregiver's words (the Label tab and `cache rebuild`). Points
    are the difference of the rounded percentages shown beside them, so the line adds up."""
    n, before, after = metrics.get("n") or 0, metrics.get("before"), metrics.get("after")
    if not n:
        return "no cache: no labelled clip yet that this model can read (label a few, then rebuild)"
    if not hyper.get("judged"):
        return (f"careful mode: {too_few_to_judge()}; it only changes answers the model is less than "
                f"{100 * SAFE_CONFIDENCE:.0f}% sure of")
    pct_before, pct_after = round(100 * before), round(100 * after)
    change = f"{pct_before}% → {pct_after}% right on your {n} labelled clips"
    if hyper.get("active") and hyper.get("method") == "adapter":
        gain = f"{pct_after - pct_before:+d} points" if pct_after != pct_before else "as many right, and surer of their labels"
        return f"fitted adapter on: {gain} ({change}, each judged by an adapter fitted without it)"
    if hyper.get("active"):
        return f"cache on: {pct_after - pct_before:+d} points ({change})"
    kept = "the cache you had stays in use" if kept_previous else "answers come from the model alone"
    fitted = metrics.get("adapter")
    if not fitted:
        return f"kept off: it would not make answers better ({change}); {kept}"
    fb, fa = round(100 * fitted["before"] / fitted["n"]), round(100 * fitted["after"] / fitted["n"])
    # the fitted adapter was judged: say what it would have done (alone, when the votes were no candidate)
    said = (f"a fitted adapter: {fb}% → {fa}% right on your {fitted['n']} labelled clips, each judged by a fit without it"
            if hyper.get("tuning") == "adapter_only" else f"{change}; a fitted adapter: {fb}% → {fa}%, judged without each clip")
    if "log_loss_after" in fitted and adapter_refusal(fitted) == "less sure":
        return (f"kept off: not yet clearly better ({said}, but less sure of their right labels overall: too few "
                f"clips to trust the gain); {kept}")
    return f"kept off: it would not make answers better ({said}); {kept}"


def payload(built: Built) -> dict[str, np.ndarray]:
    """The snapshot's arrays: the clip id of each row, nothing else. A clip's stored features never
    change, so the snapshot refers to them (`from_features`) instead of copying 4 bytes x width x
    modalities per example (23 MB at 10,000 clips, most of a large rebuild's time to write), and a
    deleted clip's embedding cannot linger in any snapshot."""
    arrays = {"clip_ids": np.asarray(built.clip_ids, np.int64)}
    if built.cache.adapter is not None:  # fitted weights: a few thousand floats, stored, not refitted on load
        arrays.update({name: t.numpy() for name, t in built.cache.adapter.state_dict().items()})
    return arrays


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
    adapter = ProfileAdapter.from_state({n: torch.from_numpy(np.asarray(a)) for n, a in arrays.items() if n.startswith("adapter.")},
                                        hyper.get("adapter_key"))
    cache = make_cache(data, _snapshot_labels(example_labels, hyper), alpha, beta, str(hyper.get("vote", "sum")), adapter)
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
