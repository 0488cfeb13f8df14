"""EmoAsst: SupCon maths, prompts, masking, the paper profile's shapes, and the shipped checkpoint."""
import math
import random

import pytest
import torch
import torch.nn.functional as F

from models import LABEL7, registry
from models.emoasst import PROMPT_FORMATS, EmoAsst, EmoAsstConfig, emotion_prompt, supcon_loss
from models.inputs import ModelInput, pad_sequences


def test_supcon_matches_hand_computed_value():
    # z0=z2=(1,0) label 0, z1=z3=(0,1) label 1, t=1. Anchor 0: positives {2}; denominator over a != 0:
    # e^0 (z1) + e^1 (z2) + e^0 (z3) = 2 + e, so loss_0 = -(1 - log(2 + e)) = log(2 + e) - 1; same for all.
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    loss = supcon_loss(z, torch.tensor([0, 1, 0, 1]), temperature=1.0)
    assert loss.item() == pytest.approx(math.log(2 + math.e) - 1, abs=1e-6)


def test_supcon_rewards_label_clusters():
    aligned = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    mixed = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    y = torch.tensor([0, 1, 0, 1])
    assert supcon_loss(aligned, y, 0.1) < supcon_loss(mixed, y, 0.1)


def test_prompt_formats_always_name_the_emotion():
    assert len(PROMPT_FORMATS) == 6
    rng = random.Random(0)
    seen = {emotion_prompt("joy", "Ann", "hello there", rng) for _ in range(200)}
    assert len(seen) == 6 and all("joy" in p for p in seen)
    assert all("{" not in emotion_prompt("fear", rng=rng) for _ in range(50))  # no speaker/utterance: no holes
    cues = " ".join(PROMPT_FORMATS)
    assert all(word in cues for word in ("speaking", "say", "face"))


def _random_input(dims, b=3, frames=4, tokens=20, present=("audio", "visual")):
    audio, am = pad_sequences([torch.randn(tokens - i, dims["audio"]) for i in range(b)], dims["audio"])
    vis, vm = pad_sequences([torch.randn(frames, dims["visual"]) for _ in range(b)], dims["visual"])
    tt, tm = pad_sequences([torch.randn(5, dims["text_tokens"]) for _ in range(b)], dims["text_tokens"])
    pres = {m: torch.full((b,), m in present, dtype=torch.bool) for m in ("audio", "visual", "text")}
    return ModelInput(audio, am, vis, vm, torch.zeros(b, dims["text"]), tt, tm, pres,
                      frame_times=[[0.1 * i for i in range(frames)]] * b)


class FixedTextEncoder:
    """Deterministic stand-in for the frozen text encoder in unit tests of the head (not a backbone test)."""

    def __init__(self, dim):
        self.dim = dim

    def __call__(self, texts):
        g = [torch.Generator().manual_seed(hash(t) % (2**31)) for t in texts]
        return F.normalize(torch.stack([torch.randn(self.dim, generator=x) for x in g]), dim=-1)


@pytest.mark.parametrize("dims", [
    {"audio": 512, "visual": 128, "text": 384, "text_tokens": 384},  # embedded
    {"audio": 768, "visual": 512, "text": 512, "text_tokens": 768},  # paper
])
def test_forward_shapes_and_missing_modalities(dims):
    torch.manual_seed(0)
    model = registry.build("emoasst", dims).eval()
    model.attach_text_encoder(FixedTextEncoder(dims["text"]))
    out = model(_random_input(dims))
    assert out.probs.shape == (3, 7) and torch.allclose(out.probs.sum(-1), torch.ones(3))
    assert set(out.modality_probs) == {"audio", "visual"}
    att, axes, ticks = out.attention["vfm_query_to_frame"]
    assert att.shape == (3, model.config.num_queries, 4) and axes == ("query", "frame")
    assert torch.allclose(att.sum(-1), torch.ones_like(att.sum(-1)), atol=1e-5)
    audio_only = model(_random_input(dims, present=("audio",)))
    assert set(audio_only.modality_probs) == {"audio"}
    # audio-only fused decision is exactly the audio decision: nothing is filled in for the face
    assert torch.allclose(audio_only.probs, audio_only.modality_probs["audio"], atol=1e-6)


def test_audio_backbone_key_is_the_frozen_encoders_mean_token():
    """The extra cache key: unit mean of the real audio tokens (padding excluded), a zero row for a clip
    without audio, and no key at all when the config turns it off or no clip has audio."""
    from dataclasses import replace

    from models.inputs import masked_mean

    dims = {"audio": 32, "visual": 16, "text": 24, "text_tokens": 24}
    torch.manual_seed(0)
    model = EmoAsst(EmoAsstConfig(visual_dim=16, audio_dim=32, text_dim=24, heads=2, num_queries=2)).eval()
    model.attach_text_encoder(FixedTextEncoder(24))
    x = _random_input(dims)
    x.present["audio"][1] = False
    key = model(x).modality_embeddings["audio_backbone"]
    expected = F.normalize(masked_mean(x.audio, x.audio_mask), dim=-1)
    assert torch.allclose(key[[0, 2]], expected[[0, 2]], atol=1e-6) and torch.all(key[1] == 0)
    assert "audio_backbone" not in model(_random_input(dims, present=("visual",))).modality_embeddings
    model.config = replace(model.config, audio_backbone_key=False)
    assert "audio_backbone" not in model(x).modality_embeddings


def test_auditory_adapter_reads_the_configured_audio_tokens():
    """`audio_source`: the adapter reads that extra token sequence (e.g. Whisper's 4th layer) instead of
    the primary one; the cache's backbone key stays the primary encoder's; an absent key is named."""
    from dataclasses import replace

    dims = {"audio": 32, "visual": 16, "text": 24, "text_tokens": 24}
    torch.manual_seed(0)
    model = EmoAsst(EmoAsstConfig(visual_dim=16, audio_dim=32, text_dim=24, heads=2, num_queries=2)).eval()
    model.attach_text_encoder(FixedTextEncoder(24))
    x = _random_input(dims, present=("audio",))
    x.extra["layer4"], x.extra_mask["layer4"] = torch.randn_like(x.audio), x.audio_mask.clone()
    primary = model(x)
    model.config = replace(model.config, audio_source="layer4")
    other = model(x)
    assert not torch.allclose(primary.modality_probs["audio"], other.modality_probs["audio"])
    assert torch.equal(primary.modality_embeddings["audio_backbone"], other.modality_embeddings["audio_backbone"])
    x.extra["layer4"] = x.audio
    assert torch.allclose(model(x).modality_probs["audio"], primary.modality_probs["audio"], atol=1e-6)
    del x.extra["layer4"]
    with pytest.raises(ValueError, match="'layer4', which this backbone profile does not provide"):
        model(x)


def test_training_step_reduces_loss():
    dims = {"audio": 32, "visual": 16, "text": 24, "text_tokens": 24}
    torch.manual_seed(0)
    model = EmoAsst(EmoAsstConfig(visual_dim=16, audio_dim=32, text_dim=24, heads=2, num_queries=2, dropout=0.0))
    model.attach_text_encoder(FixedTextEncoder(24))

    class R:
        speaker, text = "", ""

    x = _random_input(dims, b=8, tokens=10)
    y = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    opt = torch.optim.AdamW(model.param_groups(), weight_decay=0.01)
    first = None
    for _ in range(30):
        loss = model.training_loss(x, y, [R()] * 8)
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
    assert loss.item() < first


def test_shipped_checkpoint_has_card():
    loaded = registry.load("emoasst", "embedded")
    if loaded is None:
        pytest.skip("no shipped EmoAsst checkpoint for the embedded profile")
    model, card = loaded
    assert card["labels"] == list(LABEL7)
    assert "val" in card["metrics"] and card["seed"] is not None
    assert ("dev" in card["metrics"]) == (card["training"].get("dev_fraction", 0.15) > 0)  # a dev split was held out
    assert all(p.dtype == torch.float32 for p in model.parameters())


def _speech_samples(dims, speakers=8, per_label=3, split="train"):
    """Audio-only rows of two labels over several speakers, tokens shifted by label (learnable)."""
    from pathlib import Path

    from emoweb.learning.manifests import Row
    from emoweb.pipeline.features import ClipFeatures

    g = torch.Generator().manual_seed(0)
    out = []
    for s in range(speakers):
        for k, label in enumerate(("joy", "anger")):
            for i in range(per_label):
                f = ClipFeatures(source="x", sha256="0", kind="audio", profile="embedded", device="cpu", duration=1.0, full_duration=1.0)
                f.audio_tokens = {"audio": torch.randn(12, dims["audio"], generator=g) + (2 * k - 1)}
                out.append((Row(Path(f"a{s}_{label}_{i}.flac"), label, "", f"{split}_actor_{s}", split, "speech.csv", "speech/speech.csv"), f))
    return out


def test_splits_keep_speakers_apart_and_dev_can_be_switched_off():
    from emoweb.learning.training import assign_splits

    dims = {"audio": 16}
    rows = _speech_samples(dims) + _speech_samples(dims, speakers=2, split="val")
    with_dev = assign_splits(rows, seed=0, dev_fraction=0.5)
    by_speaker = {}
    for s in with_dev:
        by_speaker.setdefault(s.row.speaker, set()).add(s.split)
    assert all(len(v) == 1 for v in by_speaker.values())  # a speaker is in one split only
    assert {"train", "dev", "val"} == set().union(*by_speaker.values())
    without = assign_splits(rows, seed=0, dev_fraction=0.0)
    assert {s.split for s in without} == {"train", "val"}
    assert [s.split == "val" for s in without] == [s.split == "val" for s in with_dev]  # val never moves


def test_data_card_keeps_two_manifests_of_the_same_name_apart(tmp_path):
    """The card counts per manifest: speech/manifest.csv and faces/manifest.csv are not merged."""
    from emoweb.learning.manifests import read_manifests
    from emoweb.learning.training import Sample, data_card

    for folder, label in (("speech", "joy"), ("faces", "anger")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "manifest.csv").write_text(f"path,label,text\n,{label},hello\n,{label},hi\n")
    rows = read_manifests(f"{tmp_path / 'speech' / 'manifest.csv'},{tmp_path / 'faces' / 'manifest.csv'}")
    card = data_card([Sample(r, None, "train") for r in rows])
    assert card == {"speech/manifest.csv:train": {"joy": 2}, "faces/manifest.csv:train": {"anger": 2}}


def test_a_manifest_that_is_not_valid_utf8_is_read_with_the_bad_bytes_replaced(tmp_path):
    """A manifest saved by a spreadsheet: a byte-order mark, Latin-1 bytes in the text column."""
    from emoweb.learning.manifests import read_manifest

    (tmp_path / "m.csv").write_bytes(b"\xef\xbb\xbfpath,label,text\r\n,joy,caf\xe9 \xff\r\n")
    (row,) = read_manifest(tmp_path / "m.csv")
    assert (row.path, row.label, row.text) == (None, "joy", "caf\ufffd \ufffd")


def test_training_keeps_the_moving_average_of_the_weights():
    """`ema_decay`: the kept weights are the average (they differ from plain training on the same seed,
    which follows the same steps); without a dev split every epoch runs and the last is kept."""
    from emoweb.learning.training import assign_splits, train

    dims = {"audio": 32, "visual": 8, "text": 16, "text_tokens": 16}
    samples = assign_splits(_speech_samples(dims), seed=0, dev_fraction=0.0)
    runs = {}
    for decay in (0.0, 0.9):
        torch.manual_seed(0)
        cfg = EmoAsstConfig(visual_dim=8, audio_dim=32, text_dim=16, heads=2, num_queries=2, audio_pool=2, labels=["joy", "anger"])
        model = EmoAsst(cfg)
        model.attach_text_encoder(FixedTextEncoder(16))
        result = train(model, samples, dims, ["joy", "anger"], model.param_groups(), epochs=3, batch_size=8, seed=0, ema_decay=decay)
        assert result.best_epoch == 3 and len(result.history) == 3 and "dev_uar" not in result.history[0]
        runs[decay] = {k: v.clone() for k, v in model.state_dict().items()}
    audio = [k for k in runs[0.0] if k.startswith("auditory_adapter.")]
    assert audio and any(not torch.equal(runs[0.0][k], runs[0.9][k]) for k in audio)
    assert all(torch.isfinite(v).all() for v in runs[0.9].values() if v.is_floating_point())


def test_training_with_audio_augmentation_sees_varied_tokens(capsys):
    """`augment` changes what the adapter trains on (same seed, different weights) and nothing else.
    Progress goes to stderr: stdout stays free for the JSON of `bench crossval --json`."""
    from emoweb.learning.augment import AudioAugment
    from emoweb.learning.training import assign_splits, train

    dims = {"audio": 32, "visual": 8, "text": 16, "text_tokens": 16}
    samples = assign_splits(_speech_samples(dims), seed=0, dev_fraction=0.0)
    cached = [s.features.audio_tokens["audio"].clone() for s in samples]
    runs = {}
    variants = (("plain", None), ("augmented", AudioAugment(crop=0.3, drop=0.1, noise=0.2)), ("spliced", AudioAugment(splice=1.0)))
    for name, augment in variants:
        torch.manual_seed(0)
        cfg = EmoAsstConfig(visual_dim=8, audio_dim=32, text_dim=16, heads=2, num_queries=2, audio_pool=2, labels=["joy", "anger"])
        model = EmoAsst(cfg)
        model.attach_text_encoder(FixedTextEncoder(16))
        train(model, samples, dims, ["joy", "anger"], model.param_groups(), epochs=2, batch_size=8, seed=0, augment=augment)
        runs[name] = model.state_dict()
    audio = [k for k in runs["plain"] if k.startswith("auditory_adapter.")]
    assert all(any(not torch.equal(runs["plain"][k], runs[name][k]) for k in audio) for name in ("augmented", "spliced"))
    assert all(torch.equal(c, s.features.audio_tokens["audio"]) for c, s in zip(cached, samples))  # cache untouched
    out = capsys.readouterr()
    assert out.out == "" and "epoch 2: loss" in out.err


def test_train_cli_refuses_a_bad_augmentation_in_one_line(capsys):
    from emoweb.cli import main

    assert main(["train", "emoasst", "--data", "none.csv", "--audio-crop", "1.5"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "audio augmentation crop" in err[0]


def test_train_cli_refuses_audio_tokens_the_backbones_do_not_give(capsys, tmp_path, monkeypatch):
    """One line, and no checkpoint written: the embedded backbones give no WavLM tokens."""
    from conftest import VOICES
    from emoweb.cli import main

    monkeypatch.setenv("EMOWEB_FEATURE_CACHE", str(tmp_path / "features"))
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label,speaker\n" + "".join(f"{p},{label},s{i}\n" for i, (label, p) in enumerate(VOICES.items())))
    out = tmp_path / "ck"
    assert main(["train", "emoasst", "--data", str(manifest), "--audio-source", "wavlm", "--out", str(out)]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert "--audio-source wavlm: 4 clips have no such audio tokens" in err[-1]
    assert not out.exists()


@pytest.mark.slow
def test_eval_cli_scores_real_speech_with_the_apps_cache(shared_data, tmp_path, monkeypatch, capsys):
    """`eval --cache K` on real RAVDESS clips: the report fields, the skipped row and why, and a cache
    built by the app's rebuild (alpha at the checkpoint's logit scale, not Tip-Adapter's 0.1-3)."""
    import csv
    import json

    from emoweb import cli

    if registry.load("emoasst", "embedded") is None:
        pytest.skip("no shipped EmoAsst checkpoint for the embedded profile")
    monkeypatch.setenv("EMOWEB_FEATURE_CACHE", str(tmp_path / "features"))
    ravdess = shared_data / "speech" / "ravdess"
    with open(ravdess / "manifest.csv", newline="") as f:
        source = list(csv.DictReader(f))
    rows, taken = [], {}
    for r in source:  # train: actor 1, 2 clips per label; val: actor 15, 1 clip per label
        want = {"1": 2, "15": 1}.get(r["actor"], 0)
        if taken.get((r["actor"], r["label7"]), 0) < want:
            taken[(r["actor"], r["label7"])] = taken.get((r["actor"], r["label7"]), 0) + 1
            rows.append({"path": str(ravdess / r["path"]), "label": r["label7"], "speaker": f"actor{r['actor']}", "split": r["split"]})
    rows.append({"path": "missing.flac", "label": "joy", "speaker": "actor15", "split": "val"})
    manifest = tmp_path / "small.csv"
    with open(manifest, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "label", "speaker", "split"])
        writer.writeheader()
        writer.writerows(rows)
    assert cli.main(["eval", str(manifest), "--models", "emoasst", "--cache", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    report = result["reports"]["emoasst"]
    assert result["n"] == report["n"] == 7
    assert len(result["skipped"]) == 1 and "missing.flac" in result["skipped"][0]
    assert set(report) >= {"accuracy", "weighted_f1", "uar", "per_class_recall", "confusion"}
    assert sum(map(sum, report["confusion"])) == 7 and 0.0 <= report["accuracy"] <= 1.0
    cache = result["cache"]["emoasst"]
    # 2 clips per label: judged, and with 14 clips (under VOTES_MIN_CLIPS) the cache's votes are off: only
    # the fitted adapter is judged
    from emoweb.services.cachebuild import VOTES_MIN_CLIPS
    assert cache["size"] == 14 < VOTES_MIN_CLIPS and cache["alpha"] == 0.0


@pytest.mark.slow
def test_eval_cli_scores_composites_of_speech_and_faces(shared_data, tmp_path, monkeypatch, capsys):
    """`eval --composites`: each val speech clip with a val face photo of its label, scored on the fused
    path; labels without a face photo get no composite, and a manifest without faces is refused."""
    import csv
    import json

    from emoweb import cli

    if registry.load("emoasst", "embedded") is None:
        pytest.skip("no shipped EmoAsst checkpoint for the embedded profile")
    monkeypatch.setenv("EMOWEB_FEATURE_CACHE", str(tmp_path / "features"))
    speech_rows, face_rows = [], []
    with open(shared_data / "speech" / "ravdess" / "manifest.csv", newline="") as f:
        for r in csv.DictReader(f):  # actor 15: one clip of each of 3 labels
            if r["actor"] == "15" and r["label7"] in ("joy", "anger", "fear") and r["label7"] not in [x["label"] for x in speech_rows]:
                speech_rows.append({"path": str(shared_data / "speech" / "ravdess" / r["path"]), "label": r["label7"],
                                    "speaker": "actor15", "split": "val"})
    with open(shared_data / "faces" / "facial_expressions" / "manifest.csv", newline="") as f:
        for r in csv.DictReader(f):  # val faces of two of those labels, none for fear
            if r["split"] == "val" and r["label7"] in ("joy", "anger") and sum(x["label"] == r["label7"] for x in face_rows) < 2:
                face_rows.append({"path": str(shared_data / "faces" / "facial_expressions" / r["path"]), "label": r["label7"],
                                  "speaker": r["source_name"], "split": "val"})
    manifests = []
    for name, rows in (("speech.csv", speech_rows), ("faces.csv", face_rows)):
        manifests.append(tmp_path / name)
        with open(manifests[-1], "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["path", "label", "speaker", "split"])
            writer.writeheader()
            writer.writerows(rows)
    assert len(speech_rows) == 3 and len(face_rows) == 4
    both = ",".join(map(str, manifests))
    assert cli.main(["eval", both, "--models", "emoasst", "--composites", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    report = result["reports"]["emoasst"]
    assert result["composites"] and result["n"] == report["n"] == 2  # joy and anger; fear has no face
    assert report["support"]["joy"] == report["support"]["anger"] == 1 and report["support"]["fear"] == 0
    assert cli.main(["eval", str(manifests[0]), "--models", "emoasst", "--composites"]) != 0
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip() and "clip/s]" not in line]  # progress bars aside
    assert len(err) == 1 and "no composites" in err[0] and "speech.csv" in err[0]
