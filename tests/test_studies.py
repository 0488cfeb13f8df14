"""The caregiver K-shot study scores caches built by the app's own rebuild code."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from emoweb.learning.studies import _speaker_trials

LABELS = ["anger", "calm", "joy"]


def _speaker(per_class: int = 12, seed: int = 0) -> tuple[torch.Tensor, dict[str, torch.Tensor], list[str]]:
    """One synthetic speaker: audio keys cluster by class; base logits at EmoAsst's scale (100 x cosine)
    are noisy, so the base model is often wrong and only a cache of this speaker's clips can fix it."""
    g = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(len(LABELS), 48, generator=g), dim=-1)
    y = torch.arange(len(LABELS)).repeat_interleave(per_class)
    keys = centres[y] + 0.03 * torch.randn(len(y), 48, generator=g)
    logits = 100 * (0.05 * torch.randn(len(y), len(LABELS), generator=g))
    logits[torch.arange(len(y)), y] += 3.0
    return logits, {"audio": keys}, [LABELS[i] for i in y]


def test_kshot_trials_use_the_apps_cache_at_the_models_logit_scale(monkeypatch) -> None:
    from emoweb.services import cachebuild

    logits, keys, labels = _speaker()
    for k in (2, 8):  # 6 and 24 cached clips: the fitted adapter, judged without each clip
        trial = _speaker_trials("emoasst", logits, keys, labels, LABELS, k, seeds=3)
        assert trial["without_cache"] < 0.75
        assert trial["with_cache"] > trial["without_cache"] + 0.2
    monkeypatch.setattr(cachebuild, "ADAPTER_MARGIN_CLIPS", 10**6)  # the adapter never passes: the cache alone,
    monkeypatch.setattr(cachebuild, "VOTES_MIN_CLIPS", 0)  # its votes a candidate on these few clips (the app's: 200)
    for k in (2, 8):
        trial = _speaker_trials("emoasst", logits, keys, labels, LABELS, k, seeds=3)
        assert trial["adapter"] == 0.0 and trial["with_cache"] > trial["without_cache"] + 0.2
        assert trial["alpha"] > 10  # in the logits' units, not Tip-Adapter's 0.1-3


def test_fixed_hyperparameters_are_in_units_of_the_logit_spread() -> None:
    logits, keys, labels = _speaker(seed=1)
    off = _speaker_trials("emoasst", logits, keys, labels, LABELS, 4, seeds=2, fixed=(0.0, 16.0))
    assert off["with_cache"] == off["without_cache"]  # alpha 0: the cache changes nothing
    on = _speaker_trials("emoasst", logits, keys, labels, LABELS, 4, seeds=2, fixed=(32.0, 16.0))
    assert on["with_cache"] > on["without_cache"] + 0.2


def test_crossval_trains_with_the_augmentation_the_card_records() -> None:
    from emoweb.learning.augment import AudioAugment
    from emoweb.learning.studies import card_augment

    assert card_augment(None) == AudioAugment() and card_augment({"training": {}}) == AudioAugment()
    recorded = {"training": {"audio_augment": {"crop": 0.3, "drop": 0.1, "noise": 0.0, "splice": 0.5, "min_tokens": 4}}}
    assert card_augment(recorded) == AudioAugment(crop=0.3, drop=0.1, splice=0.5)
    older = {"training": {"audio_augment": {"crop": 0.3, "drop": 0.1, "noise": 0.0, "min_tokens": 4}}}  # before splicing
    assert card_augment(older) == AudioAugment(crop=0.3, drop=0.1)


def test_crossval_reads_the_audio_tokens_the_card_records() -> None:
    from emoweb.learning.studies import card_audio_source

    assert card_audio_source(None) == {} and card_audio_source({"config": {}}) == {}  # older cards: the default
    assert card_audio_source({"config": {"audio_source": "whisper_layer4"}}) == {"audio_source": "whisper_layer4"}


def test_kshot_speakers_of_a_split_are_the_ones_training_assigned(tmp_path) -> None:
    """`bench kshot --split dev` scores the speakers `train` held out for early stopping: dev and train
    speakers never overlap, the manifest's val rows stay val, and every row lands in one split."""
    import csv

    from emoweb.learning.studies import split_rows
    from emoweb.learning.training import split_of

    manifest = tmp_path / "m.csv"
    with manifest.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "speaker", "split"])
        for i in range(60):
            w.writerow([f"s{i}.wav", "joy", f"speaker{i}", "val" if i < 10 else "train"])
    rows = {s: split_rows(manifest, ["joy"], s) for s in ("train", "dev", "val")}
    speakers = {s: {r.speaker for r in rs} for s, rs in rows.items()}
    assert len(speakers["val"]) == 10 and speakers["val"] == {f"speaker{i}" for i in range(10)}
    assert 2 <= len(speakers["dev"]) <= 15 and not speakers["dev"] & speakers["train"]
    assert sum(map(len, rows.values())) == 60
    assert all(split_of(r) == "dev" for r in rows["dev"])
    assert split_rows(manifest, ["anger"], "val") == []
