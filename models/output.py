"""The one result type every model returns, so the UI, the cache and the CLI need no per-model code."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

Attention = tuple[torch.Tensor, tuple[str, ...], dict[str, list]]
"""(weights, axis names, axis ticks): e.g. (tensor[M, T], ("query", "frame"), {"frame": [0.0, 0.25, ...]})."""


@dataclass
class ModelOutput:
    """Probabilities over `labels` plus everything needed to explain the decision."""

    probs: torch.Tensor  # [B, C], rows sum to 1
    labels: list[str]
    embedding: torch.Tensor  # [B, D], L2-normalised: the few-shot cache key
    logits: torch.Tensor | None = None  # [B, C] base logits the few-shot cache adds to (CLIP scale)
    modality_probs: dict[str, torch.Tensor] = field(default_factory=dict)  # {"audio"|"visual"|"text": [B, C]}
    modality_embeddings: dict[str, torch.Tensor] = field(default_factory=dict)  # per-modality cache keys
    attention: dict[str, Attention] = field(default_factory=dict)
    similarity: dict[str, dict[str, float]] = field(default_factory=dict)  # name -> {item: similarity}
    notes: list[str] = field(default_factory=list)
    raw_logits: torch.Tensor | None = None  # [B, C] the logits before the card's calibration (None: none applied)

    @property
    def label(self) -> str:
        """Top-1 label of the first item."""
        return self.labels[int(self.probs[0].argmax())]
