"""A backbone's own decision, kept as a residual path beside a model's head for that sense.

The face backbone's (FER mini-Xception) sits beside every model's visual head; the text backbone's
(MiniLM tuned on emotional text, `models.backbones.text_emotion`) beside MER-SEM-MBT's text decision and
MER-CLIP's text and fused decisions (and is EmoAsst's text decision, `models.emoasst.EmoAsst.text_decision`).

Why: trained on a few thousand photos, a visual head can learn the training set's label mix instead
of the expression and end up below the FER backbone it reads (issue 18: 52-59% vs the backbone's
69% on unseen lab faces). With the backbone's frame-averaged log-probabilities added to the head's
logits, a head that has learnt nothing answers like the backbone, and training only has to learn what
to change: `logits + w * log p_backbone + b`, with a per-class weight `w = exp(log_w)` (positive,
learnt in log units so it can move by orders of magnitude) and bias `b`.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from models.inputs import ModelInput, masked_mean

BACKBONE_LOGITS = "visual_logits"  # ModelInput.extra key: the face backbone's per-frame logits [B, N, C], in the model's label order
TEXT_BACKBONE_LOGITS = "text_logits"  # ModelInput.extra key: the text backbone's logits [B, 1, C], same order
_KEYS = {"visual": BACKBONE_LOGITS, "text": TEXT_BACKBONE_LOGITS}
RESIDUAL_LR = 1e-2  # its own AdamW learning rate: 8 numbers per class, far from the head's scale at the start


def backbone_decision(x: ModelInput, modality: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The `modality` backbone's own decision: (frame-mean log-probabilities [B, C], rows that have them
    [B]), or None when the batch carries none (the paper profile; a text encoder without a classifier)."""
    key = _KEYS[modality]
    logits = x.extra.get(key)
    if logits is None:
        return None
    mask = x.extra_mask[key] & x.present[modality].unsqueeze(1)
    return masked_mean(logits.float().log_softmax(-1), mask), mask.any(1)


class BackboneResidual(nn.Module):
    """`forward(head_logits [B, C], x) -> [B, C]`: the head's logits for `modality` ("visual" or "text")
    plus that backbone's own decision for the rows that have it (other rows unchanged). A profile whose
    backbone gives no logits (the paper profile's CLIP; a text encoder without a tuned classifier) leaves
    the head alone."""

    def __init__(self, n_labels: int, init_weight: float = 1.0, modality: str = "visual"):
        super().__init__()
        self.modality = modality
        self.log_weight = nn.Parameter(torch.full((n_labels,), math.log(init_weight)))
        self.bias = nn.Parameter(torch.zeros(n_labels))

    def forward(self, head_logits: torch.Tensor, x: ModelInput) -> torch.Tensor:
        prior = backbone_decision(x, self.modality)
        if prior is None or prior[0].shape[-1] != head_logits.shape[-1]:
            return head_logits
        logp, rows = prior
        residual = self.log_weight.exp() * logp.to(head_logits) + self.bias
        return head_logits + residual * rows.unsqueeze(1).to(head_logits)

    def param_group(self) -> dict:
        return {"params": list(self.parameters()), "lr": RESIDUAL_LR, "weight_decay": 0.0}
