"""ClipFeatures -> ModelInput: the one place that knows both sides (models never import emoweb)."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from emoweb.pipeline.features import ClipFeatures
from models import LABEL7
from models.inputs import ModelInput, pad_sequences
from models.residual import BACKBONE_LOGITS, TEXT_BACKBONE_LOGITS


def to_input(clips: list[ClipFeatures], dims: dict[str, int]) -> ModelInput:
    """Pad a list of clips into one batch; absent modalities become masked rows."""
    audio, audio_mask = pad_sequences([c.audio_tokens.get("audio") for c in clips], dims["audio"])
    visual, visual_mask = pad_sequences([c.visual_features for c in clips], dims["visual"])
    text_tokens, text_mask = pad_sequences([c.text_tokens for c in clips], dims["text_tokens"])
    text = torch.stack([c.text_embedding if c.text_embedding is not None else torch.zeros(dims["text"]) for c in clips])
    present = {
        m: torch.tensor([c.modalities[m] for c in clips], dtype=torch.bool) for m in ("audio", "visual", "text")
    }
    extra, extra_mask = {}, {}
    crops = [None if c.face_crops is None else torch.from_numpy(c.face_crops).float() for c in clips]
    if any(x is not None for x in crops):
        flat, mask = pad_sequences([None if x is None else x.flatten(1) for x in crops], int(next(x for x in crops if x is not None)[0].numel()))
        side = next(x for x in crops if x is not None).shape[1:]
        extra["crops"], extra_mask["crops"] = flat.reshape(len(clips), -1, *side), mask
    backbone = [_label7_logits(c) for c in clips]  # the face backbone's own decision (models/residual.py)
    if any(x is not None for x in backbone):
        extra[BACKBONE_LOGITS], extra_mask[BACKBONE_LOGITS] = pad_sequences(backbone, len(LABEL7))
    text_logits = [None if c.text_logits is None else c.text_logits.unsqueeze(0) for c in clips]  # [1, 7] each
    if any(x is not None for x in text_logits):
        extra[TEXT_BACKBONE_LOGITS], extra_mask[TEXT_BACKBONE_LOGITS] = pad_sequences(text_logits, len(LABEL7))
    mels = [None if c.log_mel is None else torch.from_numpy(c.log_mel).float().T for c in clips]
    if any(m is not None for m in mels):
        extra["log_mel"], extra_mask["log_mel"] = pad_sequences(mels, 80)
    for key in sorted({k for c in clips for k in c.audio_tokens if k != "audio"}):
        tokens = [c.audio_tokens.get(key) for c in clips]
        width = next(t for t in tokens if t is not None).shape[1]
        extra[key], extra_mask[key] = pad_sequences(tokens, width)
    return ModelInput(
        audio, audio_mask, visual, visual_mask, text, text_tokens, text_mask, present, extra, extra_mask,
        frame_times=[c.frame_times for c in clips], audio_times=[c.audio_token_times for c in clips],
        words=[c.text_words for c in clips], texts=[c.transcript for c in clips],
    )


def frame_sequence(parts: list[tuple[ClipFeatures, int]], duration: float) -> ClipFeatures:
    """A silent clip at feature level whose frames are, in order, `n` copies of each part's frames, spread
    evenly over `duration` seconds. Each part must have its visual features (a face photo: one frame).

    Why: a partial-expression training clip (neutral frames of one person, then their expression, then
    neutral again) built from encoded photos, without re-running the backbones; the features of a
    still photo looped as video are the same in every frame, as in `composite`.
    Raises ValueError for a part without visual features or a clip with no frames."""
    if any(p.visual_features is None for p, _ in parts):
        raise ValueError("frame_sequence: every part needs visual features")
    per_frame = [part for part, n in parts for _ in range(n)]
    if not per_frame:
        raise ValueError("frame_sequence: no frames")

    def stack(get):
        """Each frame's value (the part's first frame), stacked; None if any part lacks it."""
        values = [get(p) for p in per_frame]
        if any(v is None for v in values):
            return None
        return torch.cat([v[:1] for v in values]) if isinstance(values[0], torch.Tensor) else np.concatenate([v[:1] for v in values])

    maps = {k: stack(lambda p, k=k: p.visual_maps.get(k)) for k in parts[0][0].visual_maps}
    return replace(
        parts[0][0],
        source="frames:" + "+".join(p.source for p, n in parts if n),
        kind="video", duration=duration, full_duration=duration,
        frame_times=[(j + 0.5) * duration / len(per_frame) for j in range(len(per_frame))],
        frames=None,
        face_boxes=[p.face_boxes[0] if p.face_boxes else None for p in per_frame],
        face_crops=stack(lambda p: p.face_crops),
        face_tracks=[],
        visual_features=stack(lambda p: p.visual_features),
        visual_maps={k: v for k, v in maps.items() if v is not None},
        visual_logits=stack(lambda p: p.visual_logits),
    )


def _label7_logits(c: ClipFeatures) -> torch.Tensor | None:
    """The backbone's per-frame logits [N, 7] in LABEL7 order (None: no logits, or other labels)."""
    if c.visual_logits is None or sorted(c.visual_logit_labels) != sorted(LABEL7):
        return None
    return c.visual_logits[:, [c.visual_logit_labels.index(label) for label in LABEL7]]


def composite(face: ClipFeatures, speech: ClipFeatures) -> ClipFeatures:
    """A composite sample at feature level: the face photo's visual features with the speech clip's audio/text.

    Same as encoding a rendered composite mp4, without re-running the backbones (the features of a
    still photo looped as video are the same in every frame).
    """
    return replace(
        speech,
        source=f"composite:{face.source}+{speech.source}",
        kind="video",
        frame_times=face.frame_times, frames=face.frames, face_boxes=face.face_boxes, face_crops=face.face_crops,
        face_tracks=face.face_tracks,
        visual_features=face.visual_features, visual_maps=face.visual_maps, visual_logits=face.visual_logits,
        visual_logit_labels=face.visual_logit_labels,
    )
