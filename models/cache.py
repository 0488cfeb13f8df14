"""Training-free few-shot cache shared by all four models (Tip-Adapter, generalised to EmoAsst's joint cache).

Why a cache: a caregiver's corrections are few and arrive one at a time. Retraining on them is
slow and overfits; a key-value cache of labelled embeddings adapts a frozen model instantly and
is rebuilt from stored embeddings in milliseconds, without re-encoding any media.

Maths (per modality ``m``; ``q`` and ``K_m`` L2-normalised, ``V`` one-hot labels [N, C])::

    A_m      = exp(-beta * (1 - q @ K_m^T))                      [B, N], in (exp(-2 beta), 1]
    affinity = mean of A_m over the modalities that BOTH the query row and the example have
    logits   = base_logits + alpha * affinity @ V                [B, C]   (vote "sum", Tip-Adapter)
    logits   = base_logits + alpha * (affinity @ V) / n_c        [B, C]   (vote "mean")

Votes. With ``vote="sum"`` a class gains up to alpha per cached example that looks like the query, so a
class with more examples gains more. With ``vote="mean"`` each class gets its examples' *mean* affinity,
in (0, 1]: the cache moves one class against another by less than ``alpha``, however many clips are
cached, and classes with unequal numbers of examples are on an equal footing (which also makes a
leave-one-out judgement fair: the left-out clip's class is not one example short). That bound is what
makes a cache with very few examples safe: see :func:`no_flip_alpha`.

Missing modalities. An example (or a query row) may lack a modality: pass a row of NaN (or of
zeros) for it, or leave the modality out of the dict entirely. Such rows are recorded in a
boolean mask, never used in a dot product, and the pair's affinity is the mean over the
modalities the two share. A pair that shares none has affinity 0: that example contributes
nothing to that query. So video-only, audio-only and audio+video clips all use one cache.

Scale of ``base_logits``. ``alpha`` is measured in the units of the base logits, so callers must
pass logits whose differences between classes are "a few units" for a clear decision, as CLIP's
zero-shot logits are: ``100 * cos(embedding, label_text)`` (``logit_scale`` = 100), or a trained
head's pre-softmax logits, or ``log(probs)`` (softmax is shift-invariant, so log-probabilities
are valid logits; see :func:`logits_from_probs`). Do NOT pass bare cosines in [-1, 1] or
probabilities: against those, ``alpha`` ~ 1 would swamp the model. ``affinity @ V`` for a class is
roughly "how many of its examples look like this query" (each counts at most 1), so alpha = 1.17
moves a class by 1.17 logits per identical example. How many logits matter depends on the model:
:func:`default_hyperparameters` sets alpha in units of the base logits' own spread
(:func:`logit_spread`), and :func:`search_hyperparameters` fits alpha/beta to labelled data on a
grid around that default.

New labels. :meth:`FewShotCache.add_label` appends a column (e.g. a child's own word for a
feeling). The base model has no logit for it, so :meth:`FewShotCache.logits` accepts base logits
for any subset of the label set, named by ``base_labels``: the caller supplies a score for the new
label when it has one (a zero-shot score of its text embedding); every column not supplied gets
the row mean of the supplied ones, so the new label starts "average" and wins only through the
cache. A class with no cache entries gets only its base score.

Dtypes. Computation is float32; :meth:`FewShotCache.state_dict` stores keys as float16 (half the
blob size; a unit vector loses ~1e-3 relative precision, which renormalisation on load absorbs)
and masks as bool. Values are not stored: they are rebuilt from the example labels.

This module is torch only: it never imports gradio, sqlalchemy or emoweb.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from models.adapter import ProfileAdapter
from models.folds import stratified_folds

DEFAULT_ALPHA = 1.17
DEFAULT_BETA = 1.0
# alpha/beta for a cache whose base model is known only by its logits. Tip-Adapter's alpha range
# (0.1-3) suits CLIP zero-shot logits, whose classes differ by a few units; a trained EmoAsst's
# differ by ~10 (its rows' std over the label set), and there those alphas change no decision.
# So alpha is set in units of the base logits' spread (`logit_spread`): the model's own scale.
# Chosen on the 14 RAVDESS training speakers with EmoAsst cross-validation models (each speaker's
# K=4 clips per class cached, the rest scored; `python -m emoweb bench crossval`): the gain is flat
# over 8-128 spreads x beta 8-32 (+8.6 to +9.4 points; 32 / 16: +8.7); Tip-Adapter's range: +0.0.
ALPHA_PER_SPREAD = 32.0
SPREAD_BETA = 16.0
# The search tries these multiples of both around that default (5 x 5).
SEARCH_FACTORS: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0)
VOTES = ("sum", "mean")
LOO_MAX_EXAMPLES = 200  # up to this many labelled examples the search uses leave-one-out
_CHUNK = 2048  # rows per block in the search and LOO, so 10k examples never need a 10k x 10k matrix at once

Query = Mapping[str, torch.Tensor]
BaseLogits = torch.Tensor | Callable[[dict[str, torch.Tensor]], torch.Tensor]


def logits_from_probs(probs: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Log-probabilities as base logits, for models that only expose probabilities."""
    return probs.float().clamp_min(eps).log()


def logit_spread(base_logits: torch.Tensor) -> float:
    """Median over rows of the std of the logits across the label set: how far apart a model's classes
    typically are, in its own units. 1.0 when that is not measurable (no rows, one class, constant)."""
    if base_logits.dim() != 2 or base_logits.shape[0] == 0 or base_logits.shape[1] < 2:
        return 1.0
    spread = float(base_logits.float().std(dim=1).median())
    return spread if math.isfinite(spread) and spread > 1e-6 else 1.0


def default_hyperparameters(base_logits: torch.Tensor) -> tuple[float, float]:
    """alpha/beta for base logits of this scale, before (or without) a search on labelled data."""
    return ALPHA_PER_SPREAD * logit_spread(base_logits), SPREAD_BETA


def search_grid(base_logits: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The alpha and beta values `search_hyperparameters` tries by default: multiples of the default."""
    alpha, beta = default_hyperparameters(base_logits)
    return tuple(alpha * f for f in SEARCH_FACTORS), tuple(beta * f for f in SEARCH_FACTORS)


def no_flip_alpha(confidence: float) -> float:
    """The largest alpha of a ``vote="mean"`` cache that can never change an answer the base model gives
    with top-1 probability >= `confidence` (0.5 < confidence < 1), whatever the cache holds.

    Why: mean votes lie in [0, 1], so the cache raises one class against another by less than alpha;
    overturning the top-1 class needs alpha above its logit margin over the runner-up, and
    p1 >= c implies p2 <= 1 - c, so that margin is at least log(c / (1 - c)). Raises ValueError outside (0.5, 1)."""
    if not 0.5 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0.5, 1), not {confidence}")
    return math.log(confidence / (1.0 - confidence))


def normalise_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 unit rows and a presence mask; NaN/inf or all-zero rows are 'missing' and become zeros."""
    if x.dim() != 2:
        raise ValueError(f"expected a [rows, dim] tensor, got shape {tuple(x.shape)}")
    x = x.float()
    norm = x.norm(dim=1)  # NaN/inf anywhere in a row makes its norm non-finite: one pass finds missing rows
    present = torch.isfinite(norm) & (norm > 0)
    scale = torch.where(present, 1.0 / norm, torch.zeros((), dtype=x.dtype, device=x.device))
    if bool(present.all()):
        return x * scale[:, None], present
    x = torch.where(present[:, None], x, torch.zeros((), dtype=x.dtype, device=x.device))
    x = x * scale[:, None]
    return x, present


class FewShotCache:
    """Keys per modality, one label per example, one-hot values; see the module docstring for the maths.

    Attributes:
        labels: the label set; its order defines the logit columns.
        example_labels: the label of each cached example (row i of every key matrix).
        keys: modality name -> float32 [N, D_m] unit rows (zeros where missing).
        masks: modality name -> bool [N], True where the example has that modality.
        alpha, beta: residual weight of the cache and sharpness of the affinity.
    """

    def __init__(
        self,
        labels: Sequence[str],
        keys: dict[str, torch.Tensor] | None = None,
        masks: dict[str, torch.Tensor] | None = None,
        example_labels: Sequence[str] = (),
        alpha: float = DEFAULT_ALPHA,
        beta: float = DEFAULT_BETA,
        vote: str = "sum",
        adapter: ProfileAdapter | None = None,
    ) -> None:
        """Low-level constructor for already-normalised keys; use :meth:`build` for raw embeddings.
        `vote`: "sum" or "mean" (module docstring); raises ValueError for anything else. `adapter`: a
        fitted per-profile correction (`models.adapter`) added to the base logits before the votes."""
        if vote not in VOTES:
            raise ValueError(f"vote must be one of {VOTES}, not {vote!r}")
        self.vote = vote
        self.labels: list[str] = []
        self._index: dict[str, int] = {}
        for name in labels:
            self.add_label(name)
        self.keys: dict[str, torch.Tensor] = dict(keys or {})
        self.masks: dict[str, torch.Tensor] = dict(masks or {})
        self.example_labels: list[str] = list(example_labels)
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.adapter = adapter
        for name in dict.fromkeys(self.example_labels):  # distinct, in order of first appearance
            self.add_label(name)
        self._label_idx = torch.tensor([self._index[n] for n in self.example_labels], dtype=torch.long)
        self._check()

    # ------------------------------------------------------------------ construction
    @classmethod
    def build(
        cls,
        keys: Mapping[str, torch.Tensor],
        labels: Sequence[str],
        label_set: Sequence[str],
        alpha: float = DEFAULT_ALPHA,
        beta: float = DEFAULT_BETA,
        vote: str = "sum",
    ) -> FewShotCache:
        """Build from raw embeddings: ``keys[m]`` is [N, D_m]; a NaN (or zero) row means "no such modality".

        Labels of examples that are not in ``label_set`` are appended to it in order of first
        appearance, so a label seen only in corrections needs no separate step.
        """
        n = len(labels)
        norm_keys: dict[str, torch.Tensor] = {}
        masks: dict[str, torch.Tensor] = {}
        for name, k in keys.items():
            if k.shape[0] != n:
                raise ValueError(f"modality {name!r} has {k.shape[0]} rows for {n} labels")
            norm_keys[name], masks[name] = normalise_rows(k.detach())
        return cls(label_set, norm_keys, masks, labels, alpha=alpha, beta=beta, vote=vote)

    def _check(self) -> None:
        n = len(self.example_labels)
        if set(self.keys) != set(self.masks):
            raise ValueError("keys and masks must name the same modalities")
        for name, k in self.keys.items():
            if k.dim() != 2 or k.shape[0] != n or self.masks[name].shape != (n,):
                raise ValueError(f"modality {name!r}: keys {tuple(k.shape)} / mask do not match {n} examples")

    def add_label(self, name: str) -> int:
        """Add a column for a label never seen before (no-op if known); returns its column index."""
        if name not in self._index:
            self._index[name] = len(self.labels)
            self.labels.append(name)
        return self._index[name]

    def add(self, keys: Mapping[str, torch.Tensor], labels: Sequence[str]) -> None:
        """Append labelled examples (one new correction) without rebuilding; unknown labels become columns."""
        extra = FewShotCache.build(keys, labels, self.labels, self.alpha, self.beta, self.vote)
        n_old, n_new = len(self), len(labels)
        for name in set(self.keys) | set(extra.keys):
            old_k, old_m = self.keys.get(name), self.masks.get(name)
            new_k, new_m = extra.keys.get(name), extra.masks.get(name)
            dim = (old_k if old_k is not None else new_k).shape[1]
            if old_k is None:
                old_k, old_m = torch.zeros(n_old, dim), torch.zeros(n_old, dtype=torch.bool)
            if new_k is None:
                new_k, new_m = torch.zeros(n_new, dim), torch.zeros(n_new, dtype=torch.bool)
            if old_k.shape[1] != new_k.shape[1]:
                raise ValueError(f"modality {name!r}: dimension {new_k.shape[1]} != cached {old_k.shape[1]}")
            self.keys[name] = torch.cat([old_k, new_k.to(old_k.device)])
            self.masks[name] = torch.cat([old_m, new_m.to(old_m.device)])
        for name in extra.labels:
            self.add_label(name)
        self.example_labels.extend(labels)
        self._label_idx = torch.tensor([self._index[n] for n in self.example_labels], dtype=torch.long)

    def without(self, rows: Sequence[int]) -> FewShotCache:
        """A copy without the examples at `rows` (same labels, alpha, beta and vote): e.g. to answer for a clip
        that is itself cached without its own entry voting. A fitted adapter becomes its fit without those
        rows (`ProfileAdapter.without`), or none when that fit is not known."""
        drop = set(rows)
        keep = torch.tensor([i for i in range(len(self)) if i not in drop], dtype=torch.long)
        return FewShotCache(
            self.labels, {m: k[keep.to(k.device)] for m, k in self.keys.items()},
            {m: v[keep.to(v.device)] for m, v in self.masks.items()}, [self.example_labels[i] for i in keep.tolist()],
            alpha=self.alpha, beta=self.beta, vote=self.vote,
            adapter=self.adapter.without(sorted(drop)) if self.adapter is not None else None,
        )

    def to(self, device: torch.device | str) -> FewShotCache:
        """Move keys to a device once, instead of copying them on every query."""
        self.keys = {m: k.to(device) for m, k in self.keys.items()}
        self.masks = {m: k.to(device) for m, k in self.masks.items()}
        return self

    def __len__(self) -> int:
        return len(self.example_labels)

    @property
    def adjusts(self) -> bool:
        """Whether this cache changes any answer: votes with alpha > 0 or a fitted adapter."""
        return (self.alpha > 0 and len(self) > 0) or self.adapter is not None

    @property
    def modalities(self) -> list[str]:
        return list(self.keys)

    @property
    def values(self) -> torch.Tensor:
        """One-hot [N, C] float32 over the current label set (recomputed, so new columns are always in)."""
        return F.one_hot(self._label_idx, len(self.labels)).float() if len(self) else torch.zeros(0, len(self.labels))

    def held_out_counts(self, rows: torch.Tensor) -> torch.Tensor:
        """[len(rows), C] examples of each class without the example at each of `rows`: what a "mean" vote
        divides by when that example is left out (leave-one-out)."""
        counts = self.values.sum(0)[None].repeat(len(rows), 1)
        counts[torch.arange(len(rows)), self._label_idx[rows]] -= 1.0
        return counts.clamp_min_(1.0)

    def class_votes(self, affinity: torch.Tensor) -> torch.Tensor:
        """[B, N] affinities -> [B, C] votes per class: their sum, or their mean over the class's examples."""
        votes = affinity @ self.values.to(affinity.device)
        if self.vote == "mean":
            votes = votes / self.values.sum(0).clamp_min(1.0).to(votes.device)
        return votes

    # ------------------------------------------------------------------ inference
    def _similarities(self, query: Query) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per shared modality: cosine [B, N] and pair mask [B, N] (both modalities present)."""
        sims, pairs = [], []
        for name, q in query.items():
            if name not in self.keys:
                continue
            k = self.keys[name]
            if q.dim() == 1:
                q = q[None]
            if q.shape[1] != k.shape[1]:
                raise ValueError(f"modality {name!r}: query dim {q.shape[1]} != cache dim {k.shape[1]}")
            qn, qmask = normalise_rows(q.to(k.device))
            sims.append(qn @ k.T)
            pairs.append(qmask[:, None] & self.masks[name][None, :])
        return sims, pairs

    def _batch_size(self, query: Query) -> int:
        if not query:
            raise ValueError("empty query: give at least one modality")
        sizes = {(q.shape[0] if q.dim() == 2 else 1) for q in query.values()}
        if len(sizes) != 1:
            raise ValueError(f"query modalities have different batch sizes: {sorted(sizes)}")
        return sizes.pop()

    def affinity(self, query: Query) -> torch.Tensor:
        """[B, N] joint affinity: per-modality exp(-beta (1 - cos)), averaged over modalities both sides have."""
        b = self._batch_size(query)
        device = next(iter(self.keys.values())).device if self.keys else torch.device("cpu")
        sims, pairs = self._similarities(query)
        if not sims:
            return torch.zeros(b, len(self), device=device)
        total = torch.zeros_like(sims[0])
        count = torch.zeros_like(sims[0])
        for s, p in zip(sims, pairs):
            pf = p.float()
            total += torch.exp(-self.beta * (1.0 - s)) * pf
            count += pf
        return total / count.clamp_min(1.0)

    def expand_base(self, base_logits: torch.Tensor, base_labels: Sequence[str] | None = None) -> torch.Tensor:
        """Base logits [B, C'] for ``base_labels`` -> [B, C] over ``self.labels``; missing columns get the row mean.

        ``base_labels=None`` means the first C' labels of the label set (the model's own labels,
        with labels added later at the end), so a model's usual [B, 7] output works unchanged.
        """
        if base_logits.dim() == 1:
            base_logits = base_logits[None]
        base_logits = base_logits.float()
        c_all, c_given = len(self.labels), base_logits.shape[1]
        if base_labels is None:
            if c_given > c_all:
                raise ValueError(f"{c_given} base columns for a label set of {c_all}")
            cols = list(range(c_given))
        else:
            if len(base_labels) != c_given:
                raise ValueError(f"{len(base_labels)} base labels for {c_given} base columns")
            unknown = [n for n in base_labels if n not in self._index]
            if unknown:
                raise ValueError(f"labels {unknown} are not in the cache label set: call add_label first")
            cols = [self._index[n] for n in base_labels]
        if cols == list(range(c_all)):
            return base_logits
        out = base_logits.mean(dim=1, keepdim=True).expand(-1, c_all).clone()
        out[:, cols] = base_logits
        return out

    def logits(
        self, base_logits: torch.Tensor, query: Query, base_labels: Sequence[str] | None = None
    ) -> torch.Tensor:
        """[B, C] = base (expanded to the label set, see :meth:`expand_base`) + the adapter, when fitted
        + alpha * affinity @ values.

        ``base_logits`` must be at logit scale (CLIP: 100 * cosine; see the module docstring).
        """
        base = self.expand_base(base_logits, base_labels)
        if self.adapter is not None:
            base = self.adapter.logits(base, query)
        if not len(self):
            return base
        aff = self.affinity(query)
        return base + self.alpha * self.class_votes(aff).to(base.device)

    def probs(self, base_logits: torch.Tensor, query: Query, base_labels: Sequence[str] | None = None) -> torch.Tensor:
        """Softmax of :meth:`logits`: what the UI shows, over ``self.labels``."""
        return self.logits(base_logits, query, base_labels).softmax(dim=-1)

    def nearest(self, query: Query, k: int = 5) -> list[list[tuple[int, str, float]]]:
        """For each query row, up to k (example index, label, similarity) by decreasing similarity.

        Similarity is the cosine averaged over the modalities both sides have (in [-1, 1], easier to
        read in the UI than the affinity); examples sharing no modality with the row are skipped.
        """
        b = self._batch_size(query)
        sims, pairs = self._similarities(query)
        if not sims or not len(self) or k <= 0:
            return [[] for _ in range(b)]
        total = torch.zeros_like(sims[0])
        count = torch.zeros_like(sims[0])
        for s, p in zip(sims, pairs):
            total += s * p
            count += p.float()
        mean = torch.where(count > 0, total / count.clamp_min(1.0), torch.full_like(total, float("-inf")))
        top = torch.topk(mean, min(k, len(self)), dim=1)
        out: list[list[tuple[int, str, float]]] = []
        for vals, idx in zip(top.values.tolist(), top.indices.tolist()):
            out.append([(i, self.example_labels[i], v) for v, i in zip(vals, idx) if v != float("-inf")])
        return out

    # ------------------------------------------------------------------ evaluation / tuning
    def _own_query(self) -> dict[str, torch.Tensor]:
        """The cached examples as a query (missing rows as NaN so they stay missing)."""
        return {m: k.masked_fill(~self.masks[m][:, None], float("nan")) for m, k in self.keys.items()}

    def leave_one_out_accuracy(self, base_logits: torch.Tensor, base_labels: Sequence[str] | None = None) -> dict:
        """Accuracy on the cached examples: base alone ("before") vs. base + cache without the example itself ("after").

        ``base_logits`` [N, C'] are the model's logits for the cached examples, row-aligned. This is
        what the "Rebuild cache" button reports. Duplicated clips would leak through each other.
        """
        n = len(self)
        if n == 0:
            return {"n": 0, "before": None, "after": None}
        base = self.expand_base(base_logits, base_labels)
        if base.shape[0] != n:
            raise ValueError(f"{base.shape[0]} base rows for {n} cached examples")
        own, values = self._own_query(), self.values
        cache_logits = []
        for start in range(0, n, _CHUNK):  # row blocks: 10k examples never need a 10k x 10k matrix at once
            stop = min(start + _CHUNK, n)
            aff = self.affinity({m: q[start:stop] for m, q in own.items()})
            rows = torch.arange(stop - start, device=aff.device)
            aff[rows, rows + start] = 0.0  # mask the diagonal: an example never votes for itself
            votes = aff @ values.to(aff.device)
            if self.vote == "mean":  # each row's own class has one example fewer without it
                votes = votes / self.held_out_counts(torch.arange(start, stop)).to(aff.device)
            cache_logits.append(votes)
        after = base + self.alpha * torch.cat(cache_logits).to(base.device)
        y = self._label_idx.to(base.device)
        return {
            "n": n,
            "before": float((base.argmax(1) == y).float().mean()),
            "after": float((after.argmax(1) == y).float().mean()),
        }

    def tune(
        self,
        base_logits: BaseLogits,
        base_labels: Sequence[str] | None = None,
        alphas: Sequence[float] | None = None,
        betas: Sequence[float] | None = None,
        folds: int | None = None,
        seed: int = 0,
    ) -> SearchResult:
        """Pick alpha/beta by cross-validation on the cache's own examples and set them; returns the result."""
        res = search_hyperparameters(
            self._own_query(), self.example_labels, base_logits, alphas, betas, folds,
            label_set=self.labels, base_labels=base_labels, seed=seed, vote=self.vote,
        )
        self.alpha, self.beta = res.alpha, res.beta
        return res

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict:
        """Plain tensors and lists: keys float16 (``keys.<modality>``), masks bool (``mask.<modality>``)."""
        state: dict = {
            "labels": list(self.labels),
            "example_labels": list(self.example_labels),
            "alpha": self.alpha,
            "beta": self.beta,
            "vote": self.vote,
            "adapter_key": self.adapter.key if self.adapter is not None else None,
        }
        if self.adapter is not None:
            state.update(self.adapter.state_dict())
        for m, k in self.keys.items():
            state[f"keys.{m}"] = k.detach().to("cpu", torch.float16).contiguous()
            state[f"mask.{m}"] = self.masks[m].detach().to("cpu", torch.bool).contiguous()
        return state

    @classmethod
    def from_state(cls, state: Mapping) -> FewShotCache:
        """Inverse of :meth:`state_dict`; keys come back as renormalised float32."""
        keys, masks = {}, {}
        for name, value in state.items():
            if name.startswith("keys."):
                m = name[len("keys."):]
                k, present = normalise_rows(value)
                mask = state[f"mask.{m}"].to(torch.bool) & present
                keys[m], masks[m] = k * mask[:, None], mask
        return cls(
            state["labels"], keys, masks, state["example_labels"],
            alpha=float(state["alpha"]), beta=float(state["beta"]), vote=str(state.get("vote", "sum")),
            adapter=ProfileAdapter.from_state(state, state.get("adapter_key")),
        )


@dataclass(frozen=True)
class SearchResult:
    """Outcome of :func:`search_hyperparameters`; accuracies are on held-out folds of the labelled set."""

    alpha: float
    beta: float
    accuracy: float  # CV accuracy of base + cache at (alpha, beta), on the scored held-out rows
    base_accuracy: float  # the same rows scored by the base logits alone
    folds: int  # number of folds used (== n for leave-one-out)


def search_hyperparameters(
    keys: Query,
    labels: Sequence[str],
    base_logits: BaseLogits,
    alphas: Sequence[float] | None = None,
    betas: Sequence[float] | None = None,
    folds: int | None = None,
    label_set: Sequence[str] | None = None,
    base_labels: Sequence[str] | None = None,
    seed: int = 0,
    max_eval: int | None = 2000,
    vote: str = "sum",
) -> SearchResult:
    """Choose alpha and beta by k-fold cross-validation on the labelled set only.

    Each held-out example is scored by a cache built from the other folds only (a pair mask on one
    N x N affinity matrix, which is exactly the same as rebuilding per fold, but vectorised).
    ``folds=None``: leave-one-out up to LOO_MAX_EXAMPLES examples, otherwise 5 folds (stratified).
    ``label_set`` orders the columns (default: the sorted distinct labels); ``base_labels`` names
    the base columns as in :meth:`FewShotCache.expand_base`.
    ``alphas``/``betas`` default to `search_grid` of the base logits (multiples of the default).
    ``base_logits``: [N, C'] logits of the labelled examples, or a callable mapping the keys dict
    to them (called once: a training-free base model does not depend on the folds). Evaluation
    data is never passed here, so it cannot influence the choice. Ties in accuracy are broken by
    the mean held-out log-likelihood of the true label, then by the smaller alpha. `vote` as in
    :class:`FewShotCache` (a "mean" vote divides by the examples of each class in the other folds). Above
    ``max_eval`` examples only that many held-out rows (seeded) are scored, to bound the cost.
    """
    labels = list(labels)
    n = len(labels)
    logits_in = base_logits(dict(keys)) if callable(base_logits) else base_logits
    if n < 2:
        return SearchResult(*default_hyperparameters(logits_in.detach()), float("nan"), float("nan"), 0)
    cache = FewShotCache.build(keys, labels, label_set if label_set is not None else sorted(set(labels)), vote=vote)
    base = cache.expand_base(logits_in.detach(), base_labels)
    if base.shape[0] != n:
        raise ValueError(f"{base.shape[0]} base rows for {n} labelled examples")
    y = cache._label_idx
    values = cache.values
    k = n if folds is None and n <= LOO_MAX_EXAMPLES else min(folds or 5, n)
    fold = torch.arange(n) if k == n else stratified_folds(y, k, seed)
    own = cache._own_query()
    # which held-out rows are scored: all of them, or a seeded random subset of max_eval for big sets
    # (the cache still holds every training-fold example; only the accuracy estimate is subsampled)
    if max_eval is not None and n > max_eval:
        eval_rows = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 1))[:max_eval].sort().values
    else:
        eval_rows = torch.arange(n)
    grid = search_grid(base)
    a_list = [float(x) for x in (alphas if alphas is not None else grid[0])]
    b_list = [float(x) for x in (betas if betas is not None else grid[1])]
    a = torch.tensor(a_list, dtype=torch.float32)
    correct = torch.zeros(len(b_list), len(a))
    loglik = torch.zeros(len(b_list), len(a))
    for start in range(0, len(eval_rows), _CHUNK):
        rows = eval_rows[start:start + _CHUNK]
        sims, pairs = cache._similarities({m: q[rows] for m, q in own.items()})
        train = fold[rows, None] != fold[None, :]  # [b, N]: only other folds may vote
        # "mean" votes: divide by the examples of each class in the other folds, per scored row
        per_class = (train.float() @ values).clamp_min(1.0) if vote == "mean" else None
        pairs = [p & train for p in pairs]
        count = torch.stack([p.float() for p in pairs]).sum(0).clamp_min(1.0)
        weights = [p.float() / count for p in pairs]  # averaging over shared modalities, folded in once
        shifted = [s_m - 1.0 for s_m in sims]  # cos - 1 <= 0
        base_r, y_r = base[rows], y[rows]
        for i, beta in enumerate(b_list):
            aff = torch.zeros_like(count)
            for d, w in zip(shifted, weights):
                aff.addcmul_(torch.mul(d, beta).exp_(), w)
            cache_logits = aff @ values  # [b, C]
            if per_class is not None:
                cache_logits = cache_logits / per_class
            scored = base_r[None] + a[:, None, None] * cache_logits[None]  # [A, b, C]
            correct[i] += (scored.argmax(-1) == y_r[None]).float().sum(1)
            loglik[i] += scored.log_softmax(-1).gather(-1, y_r[None, :, None].expand(len(a), -1, 1)).squeeze(-1).sum(1)
    # lexicographic choice: accuracy, then log-likelihood, then smaller alpha (grid order)
    best, best_key = (0, 0), None
    for i in range(len(b_list)):
        for j in range(len(a)):
            key = (float(correct[i, j]), float(loglik[i, j]), -a_list[j])
            if best_key is None or key > best_key:
                best, best_key = (i, j), key
    i, j = best
    return SearchResult(
        alpha=a_list[j], beta=b_list[i], accuracy=float(correct[i, j]) / len(eval_rows),
        base_accuracy=float((base[eval_rows].argmax(1) == y[eval_rows]).float().mean()), folds=k,
    )
