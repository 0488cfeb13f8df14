"""The batch every model reads: padded per-modality sequences with masks (torch only).

A missing modality is an all-False row in `present[...]`: models mask it out, never fill it with noise.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class ModelInput:
    """Padded batch of B clips. Sequences are [B, L, D] with a bool mask [B, L] (True = real)."""

    audio: torch.Tensor  # [B, T, Da] primary audio encoder tokens
    audio_mask: torch.Tensor  # [B, T]
    visual: torch.Tensor  # [B, N, Dv] per-frame features
    visual_mask: torch.Tensor  # [B, N]
    text: torch.Tensor  # [B, Dt] transcript sentence embedding (zeros when absent)
    text_tokens: torch.Tensor  # [B, L, Dt]
    text_mask: torch.Tensor  # [B, L]
    present: dict[str, torch.Tensor]  # {"audio"|"visual"|"text": [B] bool}
    extra: dict[str, torch.Tensor] = field(default_factory=dict)  # profile-specific: crops, log-mel, wavlm, ...
    extra_mask: dict[str, torch.Tensor] = field(default_factory=dict)
    frame_times: list[list[float]] = field(default_factory=list)
    audio_times: list[list[float]] = field(default_factory=list)
    words: list[list[str]] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)  # transcripts (for models that re-encode text)

    @property
    def batch_size(self) -> int:
        return self.audio.shape[0]

    def to(self, device: str | torch.device) -> "ModelInput":
        move = lambda d: {k: v.to(device) for k, v in d.items()}  # noqa: E731
        return ModelInput(
            self.audio.to(device), self.audio_mask.to(device), self.visual.to(device), self.visual_mask.to(device),
            self.text.to(device), self.text_tokens.to(device), self.text_mask.to(device), move(self.present),
            move(self.extra), move(self.extra_mask), self.frame_times, self.audio_times, self.words, self.texts,
        )


def pad_sequences(items: list[torch.Tensor | None], dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack [L_i, D] tensors (None = absent) into [B, L, D] + mask; an all-absent batch gets L = 1."""
    length = max([x.shape[0] for x in items if x is not None] + [1])
    out = torch.zeros(len(items), length, dim)
    mask = torch.zeros(len(items), length, dtype=torch.bool)
    for i, x in enumerate(items):
        if x is not None and x.shape[0]:
            out[i, : x.shape[0]] = x
            mask[i, : x.shape[0]] = True
    return out, mask


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over real positions only (padding never leaks into the pooled vector)."""
    m = mask.unsqueeze(-1).to(x.dtype)
    return (x * m).sum(1) / m.sum(1).clamp(min=1.0)
