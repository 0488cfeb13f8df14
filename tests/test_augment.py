"""Audio token augmentation for training: what each knob does to a clip, and that the original
cached features are never touched."""
from __future__ import annotations

import random

import pytest
import torch

from emoweb.learning.augment import AudioAugment, SplicePartners
from emoweb.learning.manifests import Row
from emoweb.pipeline.features import ClipFeatures


def clip(n: int = 50, d: int = 8, first: int = 0) -> ClipFeatures:
    """Token i holds the value first + i in every dimension, so an output row tells where it came from."""
    f = ClipFeatures(source="x", sha256="0", kind="audio", profile="embedded", device="cpu", duration=1.0, full_duration=1.0)
    f.audio_tokens = {"audio": torch.arange(first, first + n, dtype=torch.float32)[:, None].repeat(1, d), "wavlm": torch.ones(3, 4)}
    f.audio_token_times = [0.02 * i for i in range(n)]
    return f


def run(aug: AudioAugment, f: ClipFeatures, seed: int = 0, partner: ClipFeatures | None = None) -> ClipFeatures:
    return aug(f, random.Random(seed), torch.Generator().manual_seed(seed), partner)


def row(label: str, speaker: str) -> Row:
    return Row(None, label, "", speaker, "train", "m.csv", "d/m.csv")


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


def test_layers_of_the_same_encoder_get_the_same_cut():
    """EmoAsst reads Whisper's 4th layer: it must be cut exactly like the last-layer "audio" tokens."""
    f = clip()
    f.audio_tokens["whisper_layer4"] = f.audio_tokens["audio"] + 1000
    for seed in range(10):
        out = run(AudioAugment(crop=0.4, drop=0.2), f, seed)
        assert torch.equal(out.audio_tokens["whisper_layer4"], out.audio_tokens["audio"] + 1000)
        assert out.audio_tokens["audio"].shape[0] < 50
        assert out.audio_tokens["wavlm"] is f.audio_tokens["wavlm"]  # another time axis: left alone
    partner = clip(first=500)
    partner.audio_tokens["whisper_layer4"] = partner.audio_tokens["audio"] + 1000
    out = run(AudioAugment(splice=1.0), f, 0, partner)
    assert torch.equal(out.audio_tokens["whisper_layer4"], out.audio_tokens["audio"] + 1000)
    assert (out.audio_tokens["audio"][:, 0] >= 500).any() and (out.audio_tokens["audio"][:, 0] < 500).any()


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


def test_splice_joins_a_stretch_of_the_clip_to_a_stretch_of_the_partner():
    own, partner = clip(100), clip(80, first=1000)
    shares = set()
    for seed in range(30):
        out = run(AudioAugment(splice=1.0), own, seed, partner)
        values = out.audio_tokens["audio"][:, 0].long().tolist()
        mine, theirs = [v for v in values if v < 1000], [v for v in values if v >= 1000]
        assert mine and theirs and abs(len(values) - 100) <= 1  # about as long as the clip itself
        for run_ in (mine, theirs):  # each part is one contiguous stretch, in order
            assert run_ == list(range(run_[0], run_[0] + len(run_)))
        assert values in (mine + theirs, theirs + mine)  # two blocks, either order
        assert 30 <= len(mine) <= 70
        times = out.audio_token_times
        assert len(times) == len(values) and all(b > a for a, b in zip(times, times[1:]))
        shares.add((values[0] < 1000, len(mine)))
    assert len({first for first, _ in shares}) == 2 and len(shares) > 10  # order and share vary
    assert own.audio_tokens["audio"].shape[0] == 100 and partner.audio_tokens["audio"].shape[0] == 80  # untouched


def test_splice_needs_a_partner_and_follows_its_probability():
    f = clip()
    alone = run(AudioAugment(splice=1.0), f)
    assert torch.equal(alone.audio_tokens["audio"], f.audio_tokens["audio"])
    partner = clip(50, first=1000)
    spliced = sum(bool((run(AudioAugment(splice=0.5), f, seed, partner).audio_tokens["audio"] >= 1000).any()) for seed in range(200))
    assert 70 < spliced < 130


def test_splice_partners_share_the_label_never_the_speaker():
    a1, a2, b1, c1 = clip(first=1), clip(first=2), clip(first=3), clip(first=4)
    partners = SplicePartners([(row("joy", "a"), a1), (row("joy", "a"), a2), (row("joy", "b"), b1), (row("fear", "c"), c1),
                               (row("joy", ""), clip(first=5))])
    rng = random.Random(0)
    assert {id(partners.pick(row("joy", "a"), rng)) for _ in range(20)} == {id(b1)}  # not a's own, not the unknown speaker
    assert {id(partners.pick(row("joy", "b"), rng)) for _ in range(40)} == {id(a1), id(a2)}
    assert partners.pick(row("fear", "c"), rng) is None  # nobody else has the label
    assert partners.pick(row("joy", ""), rng) is None  # unknown speaker: could be anyone


@pytest.mark.parametrize("bad", [dict(crop=1.0), dict(drop=-0.1), dict(noise=-1.0), dict(splice=1.5)])
def test_bad_settings_are_refused(bad):
    with pytest.raises(ValueError, match="audio augmentation"):
        AudioAugment(**bad)
