"""Foal-Net: hard negatives, the alignment loss, label-matching pairs, missing modalities, closed-set
labels, a composite clip end to end, and the paper profile on random weights."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from models import LABEL7, registry
from models.foalnet import FoalNet, alignment_loss, sample_hard_negatives
from models.inputs import ModelInput, pad_sequences

SMALL = {"audio": 24, "visual": 12, "text": 16, "text_tokens": 16}


def small_model(**overrides) -> FoalNet:
    torch.manual_seed(0)
    kw = {"width": 32, "heads": 4, "dropout": 0.0, "attn_dropout": 0.0, **overrides}
    return registry.build("foalnet", SMALL, **kw).eval()


def make_input(dims, present: list[tuple[bool, bool]], seed=1, audio_key="audio", audio_dim=None) -> ModelInput:
    """One row per (has_audio, has_visual); absent modalities are all-False masks over zeros."""
    g = torch.Generator().manual_seed(seed)
    da = audio_dim or dims["audio"]
    b = len(present)
    audio, am = pad_sequences([torch.randn(22 - 3 * (i % 5), da, generator=g) if a else None for i, (a, _) in enumerate(present)], da)
    vis, vm = pad_sequences([torch.randn(1 + i % 3, dims["visual"], generator=g) if v else None for i, (_, v) in enumerate(present)], dims["visual"])
    tt, tm = pad_sequences([None] * b, dims["text_tokens"])
    pres = {
        "audio": torch.tensor([a for a, _ in present]), "visual": torch.tensor([v for _, v in present]),
        "text": torch.zeros(b, dtype=torch.bool),
    }
    x = ModelInput(
        torch.zeros(b, 1, dims["audio"]) if audio_key != "audio" else audio, am if audio_key == "audio" else torch.zeros(b, 1, dtype=torch.bool),
        vis, vm, torch.zeros(b, dims["text"]), tt, tm, pres,
        frame_times=[[0.25 * j for j in range(int(n))] for n in vm.sum(1)],
        audio_times=[[0.02 * j for j in range(int(n))] for n in am.sum(1)],
    )
    if audio_key != "audio":
        x.extra[audio_key], x.extra_mask[audio_key] = audio, am
    return x


def test_hard_negatives_never_share_the_anchor_label():
    g = torch.Generator().manual_seed(0)
    for trial in range(50):
        a_labels = torch.randint(0, 3, (8,), generator=g)
        c_labels = torch.randint(0, 3, (10,), generator=g)
        sim = torch.randn(8, 10, generator=g) * 5
        sim[:, c_labels == a_labels[0]] += 100.0  # the most similar candidates share anchor 0's label
        idx = sample_hard_negatives(sim, a_labels, c_labels, generator=g)
        for i, j in enumerate(idx.tolist()):
            if j < 0:
                assert bool((c_labels == a_labels[i]).all())  # only when no other label exists
            else:
                assert c_labels[j] != a_labels[i]
    # sampled by similarity: the most similar different-label candidate wins almost always
    sim = torch.tensor([[0.0, 9.0, 1.0, 20.0]]) / 0.07
    picks = [int(sample_hard_negatives(sim, torch.tensor([1]), torch.tensor([0, 2, 2, 1]))) for _ in range(20)]
    assert set(picks) == {1}  # index 3 is more similar but has the anchor's label
    # none possible -> -1
    assert sample_hard_negatives(torch.zeros(1, 2), torch.tensor([4]), torch.tensor([4, 4])).tolist() == [-1]


def test_model_hard_negative_pairs_have_different_labels():
    model = small_model().train()
    present = [(True, True)] * 6 + [(True, False)] * 3 + [(False, True)] * 3
    x = make_input(SMALL, present)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2])
    enc = model.encode(x)
    for _ in range(20):
        ia, iv, targets, n_pos = model.matching_pairs(enc, y)
        assert n_pos == 6 and bool((targets[:n_pos] == 1).all()) and bool((targets[n_pos:] == 0).all())
        assert torch.equal(y[ia] == y[iv], targets.bool())  # positives agree, every negative disagrees
        assert int((targets == 0).sum()) == 12  # two hard negatives per positive


def test_alignment_loss_falls_when_same_label_embeddings_are_pulled_together():
    """Hand-made: 3 emotions, 2 audios and 2 videos each; video embeddings start elsewhere and move
    step by step onto the audio direction of their own emotion."""
    torch.manual_seed(0)
    dirs = F.normalize(torch.randn(3, 16), dim=-1)  # one direction per emotion
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    z_a = F.normalize(dirs[y] + 0.1 * torch.randn(6, 16), dim=-1)
    start = F.normalize(torch.randn(6, 16), dim=-1)  # unrelated to the labels
    losses = []
    for t in torch.linspace(0, 1, 6):
        z_v = F.normalize((1 - t) * start + t * dirs[y], dim=-1)
        losses.append(float(alignment_loss(z_a, z_v, y, y, 0.07)))
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
    assert losses[-1] < 0.5 * losses[0]
    # every same-label pair is positive: the two audios of an emotion score alike against its videos
    pos = y[:, None] == y[None, :]
    assert int(pos.sum()) == 12
    # different-label pairs pulled together instead make it worse
    z_bad = F.normalize(dirs[(y + 1) % 3], dim=-1)
    assert float(alignment_loss(z_a, z_bad, y, y, 0.07)) > losses[0]


def test_label_matching_head_sees_positive_and_negative_pairs_in_every_batch():
    model = small_model().train()
    seen = []
    model.label_matching.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].shape[0]))
    g = torch.Generator().manual_seed(3)
    kinds = [(True, True), (True, False), (False, True)]
    for batch in range(8):
        present = [kinds[int(i)] for i in torch.randint(0, 3, (12,), generator=g)]
        present[0] = (True, True)  # training batches hold composites (class-balanced epochs)
        y = torch.randint(0, 7, (12,), generator=g)
        y[1] = (y[0] + 1) % 7  # and more than one emotion
        loss = model.training_loss(make_input(SMALL, present, seed=batch), y)
        parts = model.last_losses
        assert parts["match_pos"] > 0 and parts["match_neg"] > 0, parts
        assert seen[-1] == parts["match_pos"] + parts["match_neg"]
        assert parts["align"] > 0 and parts["match"] > 0 and parts["cls"] > 0 and torch.isfinite(loss)
    assert len(seen) == 8
    # a batch with no audio-visual row: same-label (audio, image) rows become the positives
    present = [(True, False)] * 4 + [(False, True)] * 4
    model.training_loss(make_input(SMALL, present), torch.tensor([0, 1, 2, 3, 0, 1, 2, 3]))
    assert model.last_losses["match_pos"] == 4 and model.last_losses["match_neg"] > 0


def test_all_three_losses_train_together_and_ablation_switches_them_off():
    model = small_model().train()
    present = [(True, True)] * 8 + [(True, False)] * 2 + [(False, True)] * 2
    x = make_input(SMALL, present)
    y = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3])
    loss = model.training_loss(x, y)
    loss.backward()
    assert model.label_matching.head.weight.grad is not None and model.classifier.weight.grad is not None
    assert all(model.modality_heads[m][1].weight.grad is not None for m in ("audio", "visual"))
    opt = torch.optim.AdamW(model.param_groups())
    first = float(loss.detach())
    for _ in range(25):
        loss = model.training_loss(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < first
    cls_only = small_model(align_weight=0.0, match_weight=0.0).train()
    cls_only.training_loss(x, y).backward()
    assert cls_only.label_matching.head.weight.grad is None
    assert cls_only.last_losses["align"] == 0 and cls_only.last_losses["match"] == 0
    assert model.param_groups()[0]["lr"] == 1e-4


def test_missing_modalities_are_masked_and_reported():
    model = small_model()
    present = [(True, True), (True, False), (False, True), (False, False)]
    x = make_input(SMALL, present)
    out = model(x)
    assert out.probs.shape == (4, 7) and torch.allclose(out.probs.sum(-1), torch.ones(4), atol=1e-5)
    assert torch.allclose(out.probs[1], out.modality_probs["audio"][1], atol=1e-6)  # audio head
    assert torch.allclose(out.probs[2], out.modality_probs["visual"][2], atol=1e-6)  # video head
    assert torch.allclose(out.probs[3], torch.full((7,), 1 / 7))
    assert torch.allclose(out.embedding[0].norm(), torch.tensor(1.0), atol=1e-5)
    assert torch.all(out.embedding[1:] == 0)  # no fused key without both: the cache uses modality keys
    assert torch.all(out.modality_embeddings["visual"][1] == 0) and torch.all(out.modality_embeddings["audio"][2] == 0)
    notes = " | ".join(out.notes)
    assert "rows [1]: audio only" in notes and "rows [2]: image/video only" in notes and "rows [0]: audio-visual" in notes

    a2v, axes, ticks = out.attention["audio_to_video"]
    assert axes == ("layer", "audio_token", "frame") and a2v.shape[:2] == (4, 2)
    assert torch.all(a2v[1:] == 0)
    t = int((x.audio_mask[0].sum() + 3) // 4)  # audio tokens average-pooled by 4
    assert torch.allclose(a2v[0, :, :t].sum(-1), torch.ones(2, t), atol=1e-5)
    assert ticks["frame"] == x.frame_times and ticks["audio_token"][0] == x.audio_times[0][::4]  # pooled tokens' start times
    v2a, axes2, _ = out.attention["video_to_audio"]
    assert axes2 == ("layer", "frame", "audio_token") and v2a.shape[2] == x.visual.shape[1]

    # padding and the absent modality's values never matter (not even NaN)
    y = make_input(SMALL, present)
    y.audio[~y.audio_mask] = float("nan")
    y.visual[~y.visual_mask] = 1e6
    out2 = model(y)
    assert torch.allclose(out.probs, out2.probs, atol=1e-6) and torch.allclose(out.embedding, out2.embedding, atol=1e-6)

    single = model(make_input(SMALL, [(True, False)]))
    assert single.notes[0].startswith("audio only") and set(single.modality_probs) == {"audio"}


def test_closed_set_labels():
    model = small_model()
    x = make_input(SMALL, [(True, True)])
    full = model(x)
    sub = model(x, ["sadness", "joy"])
    assert sub.labels == ["sadness", "joy"] and sub.probs.shape == (1, 2)
    assert torch.allclose(sub.logits[0], full.logits[0, [LABEL7.index("sadness"), LABEL7.index("joy")]])
    mixed = model(x, ["joy", "calm"])
    assert mixed.labels == ["joy"] and any("not scored: calm" in n for n in mixed.notes)
    other = model(x, ["calm", "bored"])
    assert other.labels == list(LABEL7) and any("closed-set" in n for n in other.notes)


def test_paper_profile_on_random_weights():
    """Paper dims: wav2vec 2.0 tokens 768 (x.audio), WavLM 768 (x.extra['wavlm']), CLIP frames 512."""
    from models.backbones import PaperBackbones

    dims = PaperBackbones.dims
    assert dims["audio"] == 768 and dims["visual"] == 512
    torch.manual_seed(0)
    model = registry.build("foalnet", dims, audio_source="wavlm").eval()
    assert model.config.visual_dim == 512 and model.config.width == 512 and model.config.heads == 4
    x = make_input(dims, [(True, True), (True, True)], audio_key="wavlm", audio_dim=768)
    with torch.no_grad():
        out = model(x)
    assert out.probs.shape == (2, 7) and torch.allclose(out.probs.sum(-1), torch.ones(2), atol=1e-5)
    assert out.embedding.shape == (2, 1024) and torch.allclose(out.embedding.norm(dim=-1), torch.ones(2), atol=1e-5)
    a2v, _, ticks = out.attention["audio_to_video"]
    assert a2v.shape == (2, 2, 6, 2) and ticks["audio_token"][0][:3] == [0.0, 0.08, 0.16]
    model.train()
    assert torch.isfinite(model.training_loss(x, torch.tensor([0, 3])))
    with pytest.raises(ValueError, match="WavLM"):
        model(make_input(dims, [(True, True)]))


def test_composite_clip_end_to_end(composite_clip, extractor):
    loaded = registry.load("foalnet", "embedded")
    if loaded is None:
        pytest.skip("no shipped Foal-Net checkpoint for the embedded profile")
    from emoweb.pipeline.batching import to_input

    model, card = loaded
    feats = extractor(composite_clip)
    bb = extractor.backbones
    model.attach_text_encoder(lambda t: bb.text(t).embedding, bb.text_encoder)
    x = to_input([feats], bb.dims)
    with torch.no_grad():
        out = model(x, list(LABEL7))
    assert out.probs.shape == (1, 7) and abs(float(out.probs.sum()) - 1) < 1e-5
    assert set(out.modality_probs) == {"audio", "visual"} and out.notes[0].startswith("audio-visual")
    a2v, axes, ticks = out.attention["audio_to_video"]
    assert axes == ("layer", "audio_token", "frame") and a2v.shape[-1] == len(feats.frame_times)
    assert ticks["frame"] == [feats.frame_times] and ticks["audio_token"][0] == feats.audio_token_times[::4][: a2v.shape[2]]
    assert abs(float(out.embedding.norm()) - 1) < 1e-4
    assert {"alignment_cosine", "label_match_probability"} == set(out.similarity["audio_video"])
    weights, _ = registry.checkpoint_paths("foalnet", "embedded")
    assert weights.stat().st_size < 10 * 2**20
    assert card["labels"] == list(LABEL7) and {"val", "dev"} <= set(card["metrics"])
    assert card["config"]["align_weight"] > 0 and card["config"]["match_weight"] > 0
    assert out.label == "joy"  # a smiling face + a happy voice
