"""A per-profile adapter fitted on a caregiver's labelled clips (Tip-Adapter-F's idea: fit, not only cache).

Why: one person's voice or face shifts a model's logits the same way on most of their clips (a
speaker who sounds sad to the model whatever they feel). A cache of their clips corrects that only
through nearest neighbours; a fitted correction learns it from all of them at once. The adapter is

    logits = base_logits + bias + unit(key) @ weight          [B, C]

with `bias` [C] a per-profile class bias and `weight` [D, C] a linear map of one cache key (the
"probe"), both fitted by L2-penalised multinomial log-likelihood on the labelled clips (convex; L-BFGS,
milliseconds on CPU for tens of clips). The penalty keeps both at zero unless the clips show a shift.
Each label's clips weigh the same in total (the mean of each label's mean log-likelihood): unequal
numbers of labelled clips do not become a prior, and a clip left out to judge the fit does not tilt
the bias against its own label (with 2 clips per label, an unweighted fit without one of them does;
on the dev speakers the weighting lifted the K = 2 gain from +2.3 to +5.0 points, mean of four models).

Labels without a labelled clip: the softmax of the fit runs over the labels that have clips only, and
the bias of every other label is set to the mean of theirs, so a label nobody labelled is neither
favoured nor penalised (it still has the model's own score).

Judging it: :func:`fit_adapter` also scores every labelled clip by an adapter fitted without it (all
folds fitted together as one batched problem), so a caller can switch it on only when it does not
lower accuracy on the clips it was not fitted on. Those fits are kept (`HeldOut`): a labelled clip is
answered by the fit that did not see it, never by one that learnt its label.

This module is torch only: it never imports gradio, sqlalchemy or emoweb.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from models.folds import stratified_folds

# L2 weight of the bias and the probe, per labelled clip's mean log-likelihood. Chosen on the dev speakers
# of RAVDESS and CREMA-D (held out of training, never the validation ones): 0.01 against 0.001-0.1, all
# four models, K = 2 and 4 clips per label (docs/CACHE.md).
ADAPTER_L2 = 0.01
LBFGS_STEPS = 60


@dataclass
class HeldOut:
    """The adapters fitted without each fold of the labelled clips: what answers a labelled clip, so that
    its answer never comes from a fit that saw its own label (and equals the judgement's held-out answer).

    Attributes:
        fold: [N] long, the fold of each labelled clip (row-aligned with the cache); -1 for a clip that
            no fit saw (`fit_adapter`'s `rows`), which the full fit answers.
        bias: [F, C]; weight: [F, D, C] or None (a bias only).
    """

    fold: torch.Tensor
    bias: torch.Tensor
    weight: torch.Tensor | None = None


@dataclass
class ProfileAdapter:
    """Fitted class bias and probe (see the module docstring).

    Attributes:
        bias: [C] float32 over the label set at fit time (later labels get the mean bias).
        key: the cache modality the probe reads, or None for a bias only.
        weight: [D, C] float32, or None with `key` None.
        held_out: the fits without each fold of the labelled clips, if they were kept (`without`).
    """

    bias: torch.Tensor
    key: str | None = None
    weight: torch.Tensor | None = None
    held_out: HeldOut | None = None

    def logits(self, base_logits: torch.Tensor, query: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """[B, C] base logits (C >= the fitted labels: later columns get the mean bias, no probe) plus the
        adapter. A query row without the probe's key (missing, NaN or zero) gets the bias only."""
        c_fit, c_all = self.bias.shape[0], base_logits.shape[1]
        if c_all < c_fit:
            raise ValueError(f"{c_all} base columns for an adapter fitted on {c_fit} labels")
        bias = torch.cat([self.bias, self.bias.mean().expand(c_all - c_fit)]).to(base_logits.device)
        out = base_logits + bias
        q = query.get(self.key) if self.key is not None else None
        if q is None or self.weight is None:
            return out
        q = q if q.dim() == 2 else q[None]
        x = unit_rows(q.to(base_logits.device))
        return out + F.pad(x @ self.weight.to(x.device), (0, c_all - c_fit))

    def without(self, rows: list[int]) -> ProfileAdapter | None:
        """The adapter fitted without the labelled clips at `rows`, to answer them: their fold's fit when they
        all lie in one fold, else None (no fit without them is known: answer as the model alone)."""
        if not rows:
            return self
        if self.held_out is None:
            return None
        folds = {int(self.held_out.fold[r]) for r in rows} - {-1}  # -1: no fit saw the row
        if not folds:
            return ProfileAdapter(self.bias, self.key, self.weight)
        if len(folds) != 1:
            return None
        f = folds.pop()
        weight = self.held_out.weight
        return ProfileAdapter(self.held_out.bias[f], self.key, None if weight is None else weight[f])

    def state_dict(self) -> dict[str, torch.Tensor]:
        """`adapter.bias`, `adapter.weight` (with a probe) and the held-out fits (`adapter.fold`,
        `adapter.fold_bias`, `adapter.fold_weight`); float32 and long. The key name is the caller's to store."""
        parts = {"bias": self.bias, "weight": self.weight}
        if self.held_out is not None:
            parts.update(fold=self.held_out.fold, fold_bias=self.held_out.bias, fold_weight=self.held_out.weight)
        return {f"adapter.{name}": t.detach().cpu() for name, t in parts.items() if t is not None}

    @classmethod
    def from_state(cls, state: Mapping[str, torch.Tensor], key: str | None) -> ProfileAdapter | None:
        """Inverse of :meth:`state_dict`; None when `state` holds no adapter."""
        if "adapter.bias" not in state:
            return None
        part = {name[len("adapter."):]: torch.as_tensor(t) for name, t in state.items() if name.startswith("adapter.")}
        held = None
        if "fold" in part:
            held = HeldOut(part["fold"].long(), part["fold_bias"].float(),
                           part["fold_weight"].float() if "fold_weight" in part else None)
        weight = part.get("weight")
        return cls(part["bias"].float(), key if weight is not None else None,
                   None if weight is None else weight.float(), held)


def unit_rows(x: torch.Tensor) -> torch.Tensor:
    """Float32 unit rows; a row with NaN/inf or all zeros (a missing modality) becomes zeros."""
    x = torch.nan_to_num(x.float(), nan=0.0, posinf=0.0, neginf=0.0)
    norm = x.norm(dim=1, keepdim=True)
    return torch.where(norm > 0, x / norm.clamp_min(1e-12), torch.zeros_like(x))


def _fit(base: torch.Tensor, y: torch.Tensor, x: torch.Tensor | None, train: torch.Tensor,
         l2: float) -> tuple[torch.Tensor, torch.Tensor | None]:
    """F independent fits at once: `train` [F, N] says which rows each fit sees. Returns bias [F, C] and
    weight [F, D, C] (or None without `x`). Each fit's softmax covers the labels its rows have."""
    n_fits, n = train.shape
    c = base.shape[1]
    present = (train.float() @ F.one_hot(y, c).float()) > 0  # [F, C]
    hide = torch.where(present, 0.0, -1e4)[:, None, :]  # labels without a clip take no part in the fit
    with torch.enable_grad():
        bias = torch.zeros(n_fits, c, requires_grad=True)
        weight = torch.zeros(n_fits, x.shape[1], c, requires_grad=True) if x is not None else None
        params = [bias] + ([weight] if weight is not None else [])
        opt = torch.optim.LBFGS(params, lr=1.0, max_iter=LBFGS_STEPS, line_search_fn="strong_wolfe")
        # each label's clips weigh the same in total, so leaving one clip out does not tilt the bias against its label
        per_label = train.float() @ F.one_hot(y, c).float()  # [F, C] clips of each label in each fit
        rows = train.float() / per_label[:, y].clamp_min(1.0) / present.sum(1, keepdim=True).clamp_min(1)
        target = y[None, :, None].expand(n_fits, n, 1)

        def closure() -> torch.Tensor:
            opt.zero_grad()
            z = base[None] + bias[:, None, :] + hide
            if weight is not None:
                z = z + torch.einsum("nd,fdc->fnc", x, weight)
            nll = -(z.log_softmax(-1).gather(-1, target).squeeze(-1) * rows).sum(1)
            loss = nll + l2 * bias.pow(2).sum(1)
            if weight is not None:
                loss = loss + l2 * weight.pow(2).sum((1, 2))
            total = loss.sum()
            total.backward()
            return total

        opt.step(closure)
    b = bias.detach()
    mean_present = (b * present).sum(1, keepdim=True) / present.sum(1, keepdim=True).clamp_min(1)
    return torch.where(present, b, mean_present), (weight.detach() if weight is not None else None)


def fit_adapter(base: torch.Tensor, y: torch.Tensor, keys: torch.Tensor | None = None, key: str | None = None,
                folds: int | None = None, l2: float = ADAPTER_L2, seed: int = 0,
                rows: torch.Tensor | None = None) -> tuple[ProfileAdapter, torch.Tensor]:
    """The adapter fitted on the labelled clips, with its fits without each fold (`ProfileAdapter.held_out`),
    and held-out logits [R, C]: each fitted clip's logits from the fit without its fold. Compare their
    accuracy with `base[rows]`'s to judge whether the adapter helps clips it has not seen.

    `base` [N, C] logits, `y` [N] label indices (long), `keys` [N, D] the probe's key rows (None: a bias
    only; NaN or zero rows: missing), named `key`. `folds`: None for leave-one-out, else that many
    stratified folds (seeded). `rows`: fit (and judge) on these rows only, to bound the cost for
    thousands of clips; the others get fold -1 (no fit saw them: the full fit answers them). All fits
    are solved together as one batched problem. Raises ValueError on mismatched shapes."""
    x = _inputs(base, y, keys)
    n = len(y)
    rows = torch.arange(n) if rows is None else rows
    base_r, y_r, x_r = base[rows].float(), y[rows], None if x is None else x[rows]
    m = len(rows)
    fold_r = torch.arange(m) if folds is None or folds >= m else stratified_folds(y_r, folds, seed)
    n_folds = int(fold_r.max()) + 1 if m else 0
    train = torch.cat([torch.ones(1, m, dtype=torch.bool), fold_r[None, :] != torch.arange(n_folds)[:, None]])  # all, then per fold
    bias, weight = _fit(base_r, y_r, x_r, train, l2)
    fold = torch.full((n,), -1, dtype=torch.long)
    fold[rows] = fold_r
    held = HeldOut(fold, bias[1:], None if weight is None else weight[1:])
    logits = base_r + held.bias[fold_r]
    if x_r is not None and held.weight is not None:
        logits = logits + torch.einsum("nd,ndc->nc", x_r, held.weight[fold_r])
    adapter = ProfileAdapter(bias[0], key if weight is not None else None, None if weight is None else weight[0], held)
    return adapter, logits


def _inputs(base: torch.Tensor, y: torch.Tensor, keys: torch.Tensor | None) -> torch.Tensor | None:
    if base.dim() != 2 or y.shape != (base.shape[0],):
        raise ValueError(f"base logits {tuple(base.shape)} and labels {tuple(y.shape)} do not match")
    if keys is None:
        return None
    if keys.dim() != 2 or keys.shape[0] != base.shape[0]:
        raise ValueError(f"probe keys {tuple(keys.shape)} do not match {base.shape[0]} labelled clips")
    return unit_rows(keys)
