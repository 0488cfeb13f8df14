"""Training-time augmentation of the cached audio tokens.

The backbones run once per clip (FeatureStore), so every epoch would otherwise show the heads the
very same token sequences: with ~60 clips per speaker, the Auditory Adapter learns those sequences.
Varying them per step (a random stretch of the clip, a few tokens left out, a little noise) keeps
the emotion and changes the exact sequence - the feature-level cousin of cropping and
noise-adding the waveform, at no backbone cost. Splicing goes one step further against speaker
identity: part of the clip is joined to part of a clip with the same label by another speaker, so
the one thing the joined sequence has throughout is its emotion, not its voice.
"""
from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace

import torch

from emoweb.learning.manifests import Row
from emoweb.pipeline.features import ClipFeatures


@dataclass(frozen=True)
class AudioAugment:
    """`splice`: with this probability, join a random 30-70% of the clip to a stretch of a partner clip
    (same label, another speaker) that fills the rest of its length, in random order; then `crop`:
    keep a random contiguous (1 - crop)..100% of the tokens; `drop`: leave out each token with this
    probability; `noise`: add Gaussian noise of `noise` x the clip's token std. Zero = off."""

    crop: float = 0.0
    drop: float = 0.0
    noise: float = 0.0
    splice: float = 0.0
    min_tokens: int = 4  # never shorten a clip below this (the adapter pools tokens by 8)

    def __post_init__(self) -> None:
        for name in ("crop", "drop"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"audio augmentation {name} must be in [0, 1), got {getattr(self, name)}")
        if not 0.0 <= self.splice <= 1.0:
            raise ValueError(f"audio augmentation splice is a probability in [0, 1], got {self.splice}")
        if self.noise < 0:
            raise ValueError(f"audio augmentation noise must be >= 0, got {self.noise}")

    @property
    def active(self) -> bool:
        return bool(self.crop or self.drop or self.noise or self.splice)

    def to_dict(self) -> dict:
        return asdict(self)

    def __call__(
        self, feats: ClipFeatures, rng: random.Random, generator: torch.Generator, partner: ClipFeatures | None = None
    ) -> ClipFeatures:
        """A copy of `feats` with its audio tokens (and their times) varied; the rest shared. Every token
        sequence on the primary one's time axis (other layers of the same encoder) gets the same cut.
        `partner`: the clip to splice with (see `SplicePartners`); None: no splicing."""
        tokens = feats.audio_tokens.get("audio")
        if not self.active or tokens is None:
            return feats
        if self.splice and partner is not None and _aligned(feats) <= _aligned(partner) and rng.random() < self.splice:
            feats = _spliced(feats, partner, rng)
            tokens = feats.audio_tokens["audio"]
        n = tokens.shape[0]
        keep = torch.arange(n)
        if self.crop and n > self.min_tokens:
            length = max(self.min_tokens, int(n * rng.uniform(1.0 - self.crop, 1.0)))
            start = rng.randint(0, n - length)
            keep = keep[start : start + length]
        if self.drop:
            kept = keep[torch.rand(len(keep), generator=generator) >= self.drop]
            keep = kept if len(kept) >= self.min_tokens else keep
        varied = {}
        for key in sorted(_aligned(feats)):
            out = feats.audio_tokens[key][keep].float()
            if self.noise:
                out = out + self.noise * out.std() * torch.randn(out.shape, generator=generator)
            varied[key] = out.to(feats.audio_tokens[key].dtype)
        times = [feats.audio_token_times[i] for i in keep.tolist()] if len(feats.audio_token_times) == n else feats.audio_token_times
        return replace(feats, audio_tokens={**feats.audio_tokens, **varied}, audio_token_times=times)


def _aligned(feats: ClipFeatures) -> set[str]:
    """The audio token keys as long as the primary "audio" sequence: one encoder's layers, one time axis."""
    n = feats.audio_tokens["audio"].shape[0]
    return {k for k, v in feats.audio_tokens.items() if v.shape[0] == n}


def _stretch(feats: ClipFeatures, fraction: float, rng: random.Random, keys: set[str]) -> tuple[dict[str, torch.Tensor], list[float]]:
    """A random contiguous `fraction` of the clip's token sequences `keys`, with their times starting at 0."""
    n = feats.audio_tokens["audio"].shape[0]
    length = max(1, min(n, round(n * fraction)))
    start = rng.randint(0, n - length)
    times = feats.audio_token_times[start : start + length] if len(feats.audio_token_times) == n else []
    return {k: feats.audio_tokens[k][start : start + length] for k in keys}, [t - times[0] for t in times]


def _spliced(feats: ClipFeatures, partner: ClipFeatures, rng: random.Random) -> ClipFeatures:
    """Part of `feats` joined to part of `partner` (as long as the rest of `feats`), in random order;
    the second part's times continue after the first's."""
    own = rng.uniform(0.3, 0.7)
    rest = (1.0 - own) * feats.audio_tokens["audio"].shape[0] / partner.audio_tokens["audio"].shape[0]
    keys = _aligned(feats)
    parts = [_stretch(feats, own, rng, keys), _stretch(partner, rest, rng, keys)]
    rng.shuffle(parts)
    (first, first_times), (second, second_times) = parts
    step = first_times[1] - first_times[0] if len(first_times) > 1 else 0.02
    offset = (first_times[-1] + step) if first_times else 0.0
    times = first_times + [offset + t for t in second_times] if first_times and second_times else []
    tokens = {k: torch.cat([first[k], second[k].to(first[k].dtype)]) for k in keys}
    return replace(feats, audio_tokens={**feats.audio_tokens, **tokens}, audio_token_times=times)


class SplicePartners:
    """Training clips with audio by label, so each clip can be spliced with one of the same label
    spoken by someone else. No partner for a clip whose speaker is unknown (it could be the same
    person) or whose label nobody else has."""

    def __init__(self, rows_and_features: Iterable[tuple[Row, ClipFeatures]]):
        self._clips = [(row.label, row.speaker, feats) for row, feats in rows_and_features if row.speaker and "audio" in feats.audio_tokens]
        self._others: dict[tuple[str, str], list[ClipFeatures]] = {}

    def pick(self, row: Row, rng: random.Random) -> ClipFeatures | None:
        if not row.speaker:
            return None
        key = (row.label, row.speaker)
        if key not in self._others:
            self._others[key] = [feats for label, speaker, feats in self._clips if label == row.label and speaker != row.speaker]
        others = self._others[key]
        return rng.choice(others) if others else None
