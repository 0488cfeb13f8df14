"""Stratified fold assignment, shared by the cache's alpha/beta search and the fitted adapter's judgement.
Torch only: never imports gradio, sqlalchemy or emoweb."""
from __future__ import annotations

import torch


def stratified_folds(label_idx: torch.Tensor, folds: int, seed: int) -> torch.Tensor:
    """[N] fold of each example: shuffle (seeded), then deal each class's examples round-robin over the folds,
    so every fold holds about the same share of every class."""
    n = label_idx.shape[0]
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g)
    order = perm[torch.argsort(label_idx[perm], stable=True)]  # grouped by class, shuffled within
    ids = torch.empty(n, dtype=torch.long)
    ids[order] = torch.arange(n) % folds
    return ids
