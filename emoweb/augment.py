"""Training-time augmentation of the cached audio tokens.

The backbones run once per clip (FeatureStore), so every epoch would otherwise show the heads the
very same token sequences: with ~60 clips per speaker, the Auditory Adapter learns those sequences.
Varying them per step (a random stretch of the clip, a few tokens left out, a little noise) keeps
the emotion and changes the exact sequence - the feature-level cousin of cropping and
noise-adding the waveform, at no backbone cost.
"""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass, replace

import torch

from emoweb.features import ClipFeatures


@dataclass(frozen=True)
class AudioAugment:
    """`crop`: keep a random contiguous (1 - crop)..100% of the tokens; `drop`: leave out each token
    with this probability; `noise`: add Gaussian noise of `noise` x the clip's token std. Zero = off."""

    crop: float = 0.0
    drop: float = 0.0
    noise: float = 0.0
    min_tokens: int = 4  # never shorten a clip below this (the adapter pools tokens by 8)

    def __post_init__(self) -> None:
        for name in ("crop", "drop"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"audio augmentation {name} must be in [0, 1), got {getattr(self, name)}")
        if self.noise < 0:
            raise ValueError(f"audio augmentation noise must be >= 0, got {self.noise}")

    @property
    def active(self) -> bool:
        return bool(self.crop or self.drop or self.noise)

    def to_dict(self) -> dict:
        return asdict(self)

    def __call__(self, feats: ClipFeatures, rng: random.Random, generator: torch.Generator) -> ClipFeatures:
        """A copy of `feats` with the primary audio tokens (and their times) varied; the rest shared."""
        tokens = feats.audio_tokens.get("audio")
        if not self.active or tokens is None:
            return feats
        n = tokens.shape[0]
        keep = torch.arange(n)
        if self.crop and n > self.min_tokens:
            length = max(self.min_tokens, int(n * rng.uniform(1.0 - self.crop, 1.0)))
            start = rng.randint(0, n - length)
            keep = keep[start : start + length]
        if self.drop:
            kept = keep[torch.rand(len(keep), generator=generator) >= self.drop]
            keep = kept if len(kept) >= self.min_tokens else keep
        out = tokens[keep].float()
        if self.noise:
            out = out + self.noise * out.std() * torch.randn(out.shape, generator=generator)
        times = [feats.audio_token_times[i] for i in keep.tolist()] if len(feats.audio_token_times) == n else feats.audio_token_times
        return replace(feats, audio_tokens={**feats.audio_tokens, "audio": out.to(tokens.dtype)}, audio_token_times=times)
