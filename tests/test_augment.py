"""Audio token augmentation for training: what each knob does to a clip, and that the original
cached features are never touched."""
from __future__ import annotations

import random

import pytest
import torch

from emoweb.augment import AudioAugment
from emoweb.features import ClipFeatures


def clip(n: int = 50, d: int = 8) -> ClipFeatures:
    f = ClipFeatures(source="x", sha256="0", kind="audio", profile="embedded", device="cpu", duration=1.0, full_duration=1.0)
    f.audio_tokens = {"audio": torch.arange(n, dtype=torch.float32)[:, None].repeat(1, d), "wavlm": torch.ones(3, 4)}
    f.audio_token_times = [0.02 * i for i in range(n)]
    return f


def run(aug: AudioAugment, f: ClipFeatures, seed: int = 0) -> ClipFeatures:
    return aug(f, random.Random(seed), torch.Generator().manual_seed(seed))


def test_crop_keeps_a_contiguous_stretch_with_its_times():
    f = clip()
    lengths = set()
    for seed in range(30):
        out = run(AudioAugment(crop=0.4), f, seed)
        rows = out.audio_tokens["audio"][:, 0].long().tolist()
        assert rows == list(range(rows[0], rows[0] + len(rows)))  # one contiguous stretch
        assert 30 <= len(rows) <= 50 and len(out.audio_token_times) == len(rows)
        assert out.audio_token_times[0] == pytest.approx(0.02 * rows[0])
        lengths.add(len(rows))
    assert len(lengths) > 5  # the stretch varies from step to step
    assert f.audio_tokens["audio"].shape[0] == 50 and len(f.audio_token_times) == 50  # cached clip untouched
    assert out.audio_tokens["wavlm"] is f.audio_tokens["wavlm"]  # other streams shared, not copied


def test_drop_leaves_out_tokens_but_never_below_the_minimum():
    out = run(AudioAugment(drop=0.5), clip(200))
    assert 60 < out.audio_tokens["audio"].shape[0] < 140
    short = run(AudioAugment(drop=0.9, crop=0.5), clip(5))
    assert short.audio_tokens["audio"].shape[0] >= 4


def test_noise_scales_with_the_clips_own_spread():
    f = clip(400)
    out = run(AudioAugment(noise=0.2), f)
    added = out.audio_tokens["audio"] - f.audio_tokens["audio"]
    assert added.std().item() == pytest.approx(0.2 * f.audio_tokens["audio"].std().item(), rel=0.1)


def test_off_is_the_same_clip_and_seeds_repeat():
    f = clip()
    assert run(AudioAugment(), f) is f
    a, b = run(AudioAugment(crop=0.3, drop=0.1, noise=0.1), f, 3), run(AudioAugment(crop=0.3, drop=0.1, noise=0.1), f, 3)
    assert torch.equal(a.audio_tokens["audio"], b.audio_tokens["audio"])


@pytest.mark.parametrize("bad", [dict(crop=1.0), dict(drop=-0.1), dict(noise=-1.0)])
def test_bad_settings_are_refused(bad):
    with pytest.raises(ValueError, match="audio augmentation"):
        AudioAugment(**bad)
