"""Temperature scaling (Guo et al., 2017): one number per model that makes its confidence honest.

A model trained to separate classes says 95% when it is right 70% of the time. Dividing its logits by
a temperature T > 1 fitted on held-out data (minimum negative log-likelihood) keeps every answer and
its ranking and lowers the confidence to match how often it is right. The temperature sits in the
checkpoint's card; `registry.load` attaches it as a forward hook, so every caller (app, cache, eval)
sees the same calibrated output.
"""
from __future__ import annotations

import torch
from torch import nn

from models.output import ModelOutput


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None) -> float:
    """T minimising the (row-weighted) mean NLL of softmax(logits / T); logits [N, C], targets [N] ids.
    `weights` [N]: e.g. 1 / rows of the row's corpus, so every corpus counts the same. Searched on a
    log grid (0.05-20), then refined: a one-dimensional convex problem needs no optimiser state."""
    logits, targets = logits.detach().float(), targets.long()
    w = torch.ones(len(targets)) if weights is None else weights.float()

    def nll(t: float) -> float:
        loss = nn.functional.cross_entropy(logits / t, targets, reduction="none")
        return float((loss * w).sum() / w.sum())

    grid = torch.logspace(-1.3, 1.3, 53).tolist()
    best = min(grid, key=nll)
    fine = torch.linspace(best / 1.1, best * 1.1, 41).tolist()
    return round(min(fine, key=nll), 4)


def temperature_hook(temperature: float):
    """A forward hook that divides a model's logits (and rescales its probabilities) by `temperature`.
    Per-modality probabilities are left as they are: they show each sense's own decision."""

    def hook(_module: nn.Module, _inputs, out: ModelOutput) -> ModelOutput:
        if out.logits is not None and temperature != 1.0:
            out.logits = out.logits / temperature
            out.probs = out.logits.softmax(-1)
        return out

    return hook
