"""MER-SEM-MBT: the semantic enhancement module, the bottleneck as the only audio<->visual path,
attentive decision fusion under masking, the closed label set, the checkpoint, a composite clip end
to end and the paper profile (ResNet18) on random weights."""
from __future__ import annotations

import pytest
from conftest import shipped_checkpoint
import torch

from models import LABEL7, registry
from models.inputs import ModelInput, pad_sequences
from models.sem_mbt import MERSEMMBT, SemanticEnhancementModule, segment_sequence, segment_steps

EMBEDDED = {"audio": 512, "visual": 128, "text": 384, "text_tokens": 384}
SMALL = {"audio_channels": [4, 8, 8, 16], "token_channels": [8, 8, 8, 8], "dropout": 0.0, "mbt_layers": 1}  # fast: tests check wiring, not accuracy
RAVDESS8 = ["neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised"]


def small_model(dims=EMBEDDED, **overrides) -> MERSEMMBT:
    torch.manual_seed(0)
    return registry.build("sem_mbt", dims, **{**SMALL, **overrides}).eval()


def make_input(dims=EMBEDDED, b=3, crop=64, frames=(1, 3, 2), mel=(350, 200, 120), present=("audio", "visual", "text"), seed=1):
    g = torch.Generator().manual_seed(seed)
    side = crop * crop * 3
    crops, cm = pad_sequences([torch.rand(frames[i % len(frames)], side, generator=g) * 255 for i in range(b)], side)
    log_mel, mm = pad_sequences([torch.randn(mel[i % len(mel)], 80, generator=g) for i in range(b)], 80)
    nv = cm.sum(1).tolist()
    pres = {m: torch.full((b,), m in present, dtype=torch.bool) for m in ("audio", "visual", "text")}
    return ModelInput(
        torch.zeros(b, 1, dims["audio"]), torch.zeros(b, 1, dtype=torch.bool), torch.zeros(b, cm.shape[1], dims["visual"]), cm,
        torch.nn.functional.normalize(torch.randn(b, dims["text"], generator=g), dim=-1), torch.zeros(b, 1, dims["text_tokens"]),
        torch.zeros(b, 1, dtype=torch.bool), pres,
        extra={"crops": crops.reshape(b, -1, crop, crop, 3), "log_mel": log_mel}, extra_mask={"crops": cm, "log_mel": mm},
        frame_times=[[0.5 * j for j in range(int(n))] for n in nv],
    )


def test_sem_keeps_the_feature_map_shape_and_attention_rows_sum_to_one():
    torch.manual_seed(0)
    sem = SemanticEnhancementModule(32, 384, text_tokens=8, dim=64)
    fmap, text = torch.randn(5, 32, 15, 15), torch.randn(5, 384)
    present = torch.tensor([True, True, False, True, True])
    out, attn, spatial = sem(fmap, text, present)
    assert out.shape == fmap.shape and spatial.shape == (5, 15, 15)
    assert attn.shape == (5, 15 * 15, 8)  # query positions x sentence slices
    assert torch.allclose(attn.sum(-1), torch.ones(5, 225), atol=1e-5)
    assert torch.equal(out[2], fmap[2])  # no transcript: identity
    assert not torch.allclose(out[0], fmap[0])
    # the text steers the map: another sentence, another enhancement
    out2, _, _ = sem(fmap, torch.randn(5, 384), present)
    assert not torch.allclose(out[0], out2[0])
    # odd widths are padded into the slices (paper profile: 512 or 768)
    assert SemanticEnhancementModule(128, 500, text_tokens=8)(torch.randn(2, 128, 4, 4), torch.randn(2, 500))[0].shape == (2, 128, 4, 4)


def test_log_mel_is_cut_into_960ms_segments():
    mel, mask = pad_sequences([torch.randn(n, 80) for n in (350, 100, 10)] + [None], 80)
    segs, seg_mask = segment_sequence(mel, mask)
    assert segs.shape == (4, 4, 96, 80)
    assert seg_mask.sum(1).tolist() == [4, 1, 1, 0]  # 3 full + a 62-frame tail; the 4-frame tail dropped; min 1
    assert torch.equal(segs[0, 1], mel[0, 96:192])
    assert torch.all(segs[0, 3, 350 - 288 :] == mel[0, :350].min())  # padded with the row's silence level


def test_encoder_tokens_are_cut_into_960ms_segments_padded_with_zeros():
    tokens, mask = pad_sequences([torch.randn(n, 512) + 5 for n in (120, 60, 10)], 512)  # 20-ms Whisper tokens
    model = small_model(audio_source="whisper_layer4")
    frames, min_frames = segment_steps(model.config)
    assert (frames, min_frames) == (48, 12)  # 960 ms and 250 ms of 20-ms tokens
    segs, seg_mask = segment_sequence(tokens, mask, frames, min_frames, pad_with_floor=False)
    assert segs.shape == (3, 3, 48, 512) and seg_mask.sum(1).tolist() == [3, 2, 1]  # 2 x 48 + a 24-token tail; 48 + 12
    assert torch.equal(segs[0, 1], tokens[0, 48:96]) and torch.all(segs[0, 2, 24:] == 0)


def test_audio_decision_reads_the_named_encoder_tokens():
    """With audio_source an encoder key, the audio decision comes from those tokens (not the log-mel);
    an input without them gets no audio decision and a note saying why."""
    model = small_model(audio_source="whisper_layer4")
    x = make_input(present=("audio",))
    x.extra["whisper_layer4"], x.extra_mask["whisper_layer4"] = pad_sequences([torch.randn(n, 512) for n in (110, 70, 30)], 512)
    x.extra["whisper_layer4"].requires_grad_(True)
    x.extra["log_mel"].requires_grad_(True)
    out = model(x)
    axis = out.attention["mbt_bottleneck_to_audio_segment"]
    assert axis[0].shape == (3, 4, 3) and axis[2]["audio_segment"] == [[0.0, 0.96, 1.92], [0.0, 0.96], [0.0]]
    grad_tokens, grad_mel = torch.autograd.grad(out.probs[:, 0].sum(), [x.extra["whisper_layer4"], x.extra["log_mel"]], allow_unused=True)
    assert grad_mel is None and grad_tokens.abs().sum() > 0
    assert torch.all(grad_tokens[1, 70:] == 0)  # padding takes no part
    del x.extra["whisper_layer4"]
    out = model(x)
    assert "audio" not in out.modality_probs and "no 'whisper_layer4' audio tokens" in out.notes[0]


def _visual_grad_from_audio(model: MERSEMMBT) -> torch.Tensor | None:
    x = make_input()
    x.extra["log_mel"].requires_grad_(True)
    mixed = model.encode(x)["logits"]["visual"]  # the paper's visual decision, on the mixed streams
    (grad,) = torch.autograd.grad(mixed.softmax(-1).pow(2).sum(), x.extra["log_mel"], allow_unused=True)
    return grad


def test_the_bottleneck_is_the_only_path_from_audio_to_visual():
    with_bottleneck = _visual_grad_from_audio(small_model())
    assert with_bottleneck is not None and with_bottleneck.abs().sum() > 0
    for zeroed in (small_model(bottleneck_tokens=0), small_model(use_mbt=False)):
        assert zeroed.mbt.bottleneck is None
        grad = _visual_grad_from_audio(zeroed)
        assert grad is None or torch.all(grad == 0)
    # SEM never mixes modalities either: with SEM on and no bottleneck, still no path
    assert small_model(bottleneck_tokens=0, use_sem=True).config.use_sem


def test_bottleneck_tokens_are_initialised_small_and_attend_over_time():
    model = small_model()
    assert model.mbt.bottleneck.shape == (4, 64) and model.mbt.bottleneck.std() < 0.05
    x = make_input()
    out = model(x)
    att, axes, ticks = out.attention["mbt_bottleneck_to_audio_segment"]
    assert axes == ("bottleneck", "audio_segment") and att.shape == (3, 4, 4)
    assert ticks["audio_segment"] == [[0.0, 0.96, 1.92, 2.88], [0.0, 0.96], [0.0]]
    assert torch.allclose(att.sum(-1), torch.ones(3, 4), atol=1e-5)
    assert torch.all(att[1, :, 2:] == 0)  # padding gets no weight
    frame, axes, ticks = out.attention["mbt_bottleneck_to_frame"]
    assert axes == ("bottleneck", "frame") and frame.shape == (3, 4, 3) and ticks["frame"] == x.frame_times
    spatial, axes, _ = out.attention["sem_visual_block2_map"]
    assert axes == ("row", "col") and spatial.shape == (3, 15, 15)
    to_sentence, axes, _ = out.attention["sem_visual_block4_to_sentence"]
    assert axes == ("position", "sentence_slice") and to_sentence.shape == (3, 16, 8)
    assert torch.allclose(to_sentence.sum(-1), torch.ones(3, 16), atol=1e-5)


def test_fusion_weights_sum_to_one_and_shift_to_the_present_modality():
    model = small_model()
    with torch.no_grad():
        model.fusion.modality_bias.copy_(torch.tensor([0.3, 0.0, -0.2]))
    x = make_input()
    full = model(x)
    alpha, axes, ticks = full.attention["fusion_weights"]
    assert axes == ("modality",) and ticks["modality"] == ["audio", "visual", "text"]
    assert torch.allclose(alpha.sum(-1), torch.ones(3), atol=1e-6) and torch.all(alpha > 0)
    assert abs(sum(full.similarity["fusion_weights"].values()) - 1) < 1e-3

    x.present["text"][:] = False  # no transcript: its weight moves to audio and visual
    no_text = model(x).attention["fusion_weights"][0]
    assert torch.all(no_text[:, 2] == 0) and torch.allclose(no_text.sum(-1), torch.ones(3), atol=1e-6)
    assert torch.all(no_text[:, 0] > alpha[:, 0]) and torch.all(no_text[:, 1] > alpha[:, 1])

    x.present["audio"][:] = False  # a face alone: all weight on the visual decision
    face = model(x)
    assert torch.allclose(face.attention["fusion_weights"][0], torch.tensor([[0.0, 1.0, 0.0]] * 3))
    assert torch.allclose(face.probs, face.modality_probs["visual"], atol=1e-6)
    assert set(face.modality_probs) == {"visual"} and "mbt_bottleneck_to_audio_segment" not in face.attention

    audio_only = model(make_input(present=("audio",)))
    assert torch.allclose(audio_only.probs, audio_only.modality_probs["audio"], atol=1e-6)
    nothing = model(make_input(present=()))
    assert torch.allclose(nothing.probs, torch.full((3, 7), 1 / 7)) and torch.all(nothing.attention["fusion_weights"][0] == 0)


def test_outputs_cache_embedding_and_closed_label_set():
    model = small_model()
    x = make_input()
    x.present["text"][1] = False
    out = model(x)
    assert out.labels == list(LABEL7) and torch.allclose(out.probs.sum(-1), torch.ones(3), atol=1e-5)
    assert torch.allclose(out.logits.softmax(-1), out.probs, atol=1e-5)  # log-probabilities (cache scale)
    assert out.embedding.shape == (3, 192) and torch.allclose(out.embedding.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.all(out.modality_embeddings["text"][1] == 0)  # missing for the cache: a zero row
    # asked for other labels: the known ones are scored (renormalised), the rest named in the notes
    ravdess = model(x, RAVDESS8)
    assert ravdess.labels == ["neutral", "disgust"] and "cannot score" in ravdess.notes[0] and "calm" in ravdess.notes[0]
    subset = model(x, ["sadness", "joy"])
    expected = out.probs[:, [LABEL7.index("sadness"), LABEL7.index("joy")]]
    assert torch.allclose(subset.probs, expected / expected.sum(-1, keepdim=True), atol=1e-5)
    assert model(x, ["a child's own word"]).labels == list(LABEL7)


def test_each_senses_shown_decision_is_its_own():
    """On a clip with face and voice, the voice decision shown is what the voice says alone (the same clip
    without its face), although the fused answer reads streams the bottleneck has mixed."""
    model = small_model()
    x = make_input(present=("audio", "visual"))
    with torch.no_grad():
        both = model(x)
        mixed = model.encode(x)["logits"]
        for sense, other in (("audio", "visual"), ("visual", "audio")):
            y = make_input(present=(sense,))
            alone = model(y).modality_probs[sense]
            assert torch.allclose(both.modality_probs[sense], alone, atol=1e-5)
            assert not torch.allclose(mixed[sense].softmax(-1), alone, atol=1e-3)  # the bottleneck did mix them


def test_masked_frames_and_absent_rows_do_not_leak():
    model = small_model()
    x = make_input()
    out = model(x)
    y = make_input()
    y.extra["crops"][~y.extra_mask["crops"]] = 255.0  # padded frames hold garbage
    y.extra["log_mel"][~y.extra_mask["log_mel"]] = 1e4
    assert torch.allclose(model(y).probs, out.probs, atol=1e-5)


def test_training_reduces_loss_and_checkpoint_leaves_out_the_frozen_cnn(tmp_path):
    model = small_model().train()
    x = make_input(b=6, frames=(1, 2), mel=(200, 150))
    x.present["text"][::2] = False
    y = torch.tensor([0, 1, 2, 3, 4, 5])
    opt = torch.optim.AdamW(model.param_groups())
    frozen = {k: v.clone() for k, v in model.visual_cnn.state_dict().items()}
    losses = []
    for _ in range(12):
        loss = model.training_loss(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert all(torch.equal(v, model.visual_cnn.state_dict()[k]) for k, v in frozen.items())  # BN stats too
    state = model.state_dict()
    assert not any("visual_cnn" in k or "label_counts" in k for k in state)
    registry.save(model.eval(), "sem_mbt", "embedded", {"labels": list(LABEL7)}, tmp_path)
    loaded, card = registry.load("sem_mbt", "embedded", tmp_path)
    assert card["config"]["visual_backbone"] == "mini_xception" and card["config"]["audio_channels"] == [4, 8, 8, 16]
    assert torch.allclose(loaded(x).probs, model(x).probs, atol=2e-2)  # fp16 weights


def test_paper_profile_resnet18_on_random_weights():
    """Paper dims (ResNet18 512-d maps, 512-d sentence embedding), ResNet18 randomly initialised."""
    from models.backbones import PaperBackbones

    dims = PaperBackbones.dims
    model = small_model(dims)
    assert model.config.visual_backbone == "resnet18" and model.visual_cnn.untrained
    assert model.visual_cnn.channels == (128, 512)
    x = make_input(dims, b=2, crop=96, frames=(2, 1), mel=(200, 120))
    out = model(x)
    assert out.probs.shape == (2, 7) and torch.allclose(out.probs.sum(-1), torch.ones(2), atol=1e-5)
    assert out.attention["sem_visual_conv3_x_map"][0].shape == (2, 14, 14)  # 112-px input, conv3_x
    assert out.attention["sem_visual_conv5_x_to_sentence"][0].shape == (2, 16, 8)
    assert any("untrained weights" in n for n in out.notes)
    assert not any("visual_cnn" in k for k in model.state_dict())


def test_composite_clip_end_to_end(composite_clip, extractor):
    from emoweb.pipeline.batching import to_input

    loaded = registry.load("sem_mbt", "embedded")
    if loaded is None:
        pytest.skip("no shipped MER-SEM-MBT checkpoint for the embedded profile")
    model = loaded[0]
    feats = extractor(composite_clip)
    bb = extractor.backbones
    model.attach_text_encoder(lambda t: bb.text(t).embedding, bb.text_encoder)
    x = to_input([feats], bb.dims)
    with torch.no_grad():
        out = model(x)
    assert out.probs.shape == (1, 7) and abs(float(out.probs.sum()) - 1) < 1e-5
    assert set(out.modality_probs) == {"audio", "visual", "text"}
    alpha = out.attention["fusion_weights"][0]
    assert torch.all(alpha > 0) and abs(float(alpha.sum()) - 1) < 1e-5
    frame, axes, ticks = out.attention["mbt_bottleneck_to_frame"]
    assert frame.shape == (1, 4, len(feats.frame_times)) and ticks["frame"] == [feats.frame_times]
    segs = out.attention["mbt_bottleneck_to_audio_segment"][0]
    frames, min_frames = segment_steps(model.config)  # 960-ms segments, a tail of >= 250 ms kept
    source = model.config.audio_source
    n = feats.log_mel.shape[1] if source == "log_mel" else len(feats.audio_tokens[source])
    assert segs.shape[-1] == n // frames + (n % frames >= min_frames)
    assert out.attention["sem_visual_block2_map"][0].shape == (1, 15, 15)
    assert out.label == "joy"  # a smiling face + a happy voice


def test_shipped_checkpoint_has_card_and_is_small():
    shipped_checkpoint("sem_mbt", max_mib=10)
