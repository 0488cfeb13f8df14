"""MER-CLIP: fusion order, the label encoder's 'Emotion' query and prompts, custom labels, masking,
composite pairs, a composite clip end to end, and the paper profile on random weights."""
from __future__ import annotations

from pathlib import Path

import pytest
from conftest import shipped_checkpoint
import torch
from transformers import BertConfig, BertModel, BertTokenizerFast

from models import LABEL7, registry
from models.backbones.text import TransformerTextEncoder, minilm_dir
from models.inputs import ModelInput, pad_sequences
from models.merclip import MERCLIP

RAVDESS8 = ["neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised"]
SMALL = {"audio": 24, "visual": 12, "text": 32, "text_tokens": 32}


@pytest.fixture(scope="module")
def tokenizer():
    return BertTokenizerFast.from_pretrained(minilm_dir())


def tiny_encoder(tokenizer, width: int = 32, seed: int = 0) -> TransformerTextEncoder:
    """A small randomly initialised BERT with MiniLM's vocabulary: a stand-in label encoder (fast)."""
    torch.manual_seed(seed)
    cfg = BertConfig(hidden_size=width, num_hidden_layers=1, num_attention_heads=2, intermediate_size=2 * width,
                     max_position_embeddings=128)
    return TransformerTextEncoder(BertModel(cfg), tokenizer, max_length=32)


def small_model(tokenizer, **overrides) -> MERCLIP:
    torch.manual_seed(0)
    model = registry.build("merclip", SMALL, dropout=0.0, **overrides).eval()
    model.attach_text_encoder(None, tiny_encoder(tokenizer, SMALL["text_tokens"]))
    return model


def random_input(dims, b=3, present=("audio", "visual", "text"), seed=1, extra_clip_mel=None) -> ModelInput:
    g = torch.Generator().manual_seed(seed)
    audio, am = pad_sequences([torch.randn(20 - 3 * i, dims["audio"], generator=g) for i in range(b)], dims["audio"])
    vis, vm = pad_sequences([torch.randn(4 - i % 2, dims["visual"], generator=g) for i in range(b)], dims["visual"])
    tt, tm = pad_sequences([torch.randn(6 + i, dims["text_tokens"], generator=g) for i in range(b)], dims["text_tokens"])
    pres = {m: torch.full((b,), m in present, dtype=torch.bool) for m in ("audio", "visual", "text")}
    x = ModelInput(
        audio, am, vis, vm, torch.zeros(b, dims["text"]), tt, tm, pres,
        frame_times=[[0.25 * j for j in range(int(n))] for n in vm.sum(1)],
        audio_times=[[0.02 * j for j in range(int(n))] for n in am.sum(1)],
        words=[[f"w{j}" for j in range(int(n))] for n in tm.sum(1)],
    )
    if extra_clip_mel:
        mel, mm = pad_sequences([torch.randn(3 - i % 2, extra_clip_mel, generator=g) for i in range(b)], extra_clip_mel)
        x.extra["clip_mel"], x.extra_mask["clip_mel"] = mel, mm
    return x


def test_fusion_order_changes_the_output(tokenizer):
    model = small_model(tokenizer)
    assert model.decoder.order == ["text", "visual", "audio"]  # language -> vision -> audio (the paper's LVA)
    x = random_input(SMALL)
    lva = model(x)
    other = small_model(tokenizer, fusion_order=["audio", "visual", "text"])
    other.load_state_dict(model.state_dict())  # same weights, only the order differs
    ava = other(x)
    assert not torch.allclose(lva.embedding, ava.embedding, atol=1e-4)
    assert "language -> vision -> audio" in lva.notes[0] and "audio -> vision -> language" in ava.notes[0]
    # a single modality has no order: its decision is identical in both
    assert torch.allclose(lva.modality_probs["audio"], ava.modality_probs["audio"], atol=1e-6)


def test_a_row_with_nothing_present_gets_no_decision(tokenizer):
    """Silence with no video: the learned query alone must not pass for an answer (it said 'sadness' 48%)."""
    model = small_model(tokenizer)
    x = random_input(SMALL, b=2)
    for m in ("audio", "visual", "text"):
        x.present[m][0] = False  # row 0 has nothing; row 1 keeps every modality
    out = model(x)
    assert torch.allclose(out.probs[0], torch.full((len(out.labels),), 1 / len(out.labels)))
    assert out.probs[1].max() > 1 / len(out.labels) + 1e-3
    assert any("no decision" in n for n in out.notes)
    assert not any("no decision" in n for n in model(random_input(SMALL, b=1)).notes)


def test_emotion_query_and_label_prompts_come_from_the_label_encoder(tokenizer):
    model = small_model(tokenizer)
    enc = model.label_encoder
    # the initial query is exactly LE([CLS] V1..V8 emotion [SEP]) with the learnable context
    ids = enc.tokenize(["Emotion"])["input_ids"][0]
    words = enc.word_embeddings(ids)
    embeds = torch.cat([words[:1], model.emotion_query.ctx, words[1:]]).unsqueeze(0)
    expected = enc.encode_embeds(embeds, torch.ones(1, embeds.shape[1], dtype=torch.bool))
    assert torch.allclose(model.initial_query()[0], expected, atol=1e-6)
    assert model.emotion_query.ctx.shape == (8, SMALL["text_tokens"])

    before_q = model.initial_query().clone()
    before_l = model.label_embeddings(list(LABEL7)).clone()
    emotion_id = enc.tokenizer.convert_tokens_to_ids("emotion")
    joy_id = enc.tokenizer.convert_tokens_to_ids("joy")
    with torch.no_grad():  # (a random direction: a constant shift would vanish in BERT's embedding LayerNorm)
        g = torch.Generator().manual_seed(0)
        for i in (emotion_id, joy_id):
            enc.word_embeddings.weight[i] += torch.randn(enc.dim, generator=g)
    model.eval()  # drops cached prompt embeddings
    assert not torch.allclose(model.initial_query(), before_q, atol=1e-4)
    after_l = model.label_embeddings(list(LABEL7))
    changed = [not torch.allclose(a, b, atol=1e-5) for a, b in zip(after_l, before_l)]
    assert changed == [lab == "joy" for lab in LABEL7]  # only the label whose word embedding moved
    # the learnable context is a parameter that training moves (LE frozen: gradients reach the context only)
    model.train()
    loss = model.training_loss(random_input(SMALL), torch.tensor([0, 1, 2]))
    loss.backward()
    assert model.label_prompts.ctx.grad is not None and model.emotion_query.ctx.grad is not None
    assert all(p.grad is None for p in enc.parameters())
    assert not any(k.startswith("label_encoder") for k in model.state_dict())  # never saved


def test_custom_label_set_is_scored_without_retraining(tokenizer):
    model = small_model(tokenizer)
    x = random_input(SMALL)
    out = model(x, RAVDESS8)
    assert out.probs.shape == (3, 8) and out.labels == RAVDESS8
    assert torch.allclose(out.probs.sum(-1), torch.ones(3), atol=1e-5)
    assert all(p.shape == (3, 8) for p in out.modality_probs.values())
    phrases = ["a state of deep sorrow", "feeling delighted and content"]
    assert model(x, phrases).probs.shape == (3, 2)
    # the same label scores the same whatever else is in the set (labels are embedded independently)
    seven = model(x, list(LABEL7))
    assert torch.allclose(seven.logits[:, LABEL7.index("disgust")], out.logits[:, RAVDESS8.index("disgust")], atol=1e-4)


def test_masked_tokens_are_removed_from_attention(tokenizer):
    model = small_model(tokenizer)
    x = random_input(SMALL, b=3)
    x.present["visual"][1] = False  # row 1 has no face at all
    x.visual_mask[1] = False
    out = model(x)
    att, axes, ticks = out.attention["cmd_query_to_audio_token"]
    assert axes == ("layer", "audio_token") and att.shape[:2] == (3, 3)
    pooled_mask = torch.stack([torch.arange(att.shape[-1]) < (int(n) + 4) // 5 for n in x.audio_mask.sum(1)])
    assert torch.all(att[~pooled_mask.unsqueeze(1).expand_as(att)] == 0)  # padding gets zero weight
    assert torch.all(att[pooled_mask.unsqueeze(1).expand_as(att)] > 0)
    assert torch.allclose(att.sum(-1), torch.ones(3, 3), atol=1e-5)
    frame = out.attention["cmd_query_to_frame"][0]
    assert torch.all(frame[1] == 0) and torch.allclose(frame[0].sum(-1), torch.ones(3), atol=1e-5)
    assert ticks["audio_token"] == [t[::5] for t in x.audio_times]  # 100-ms tokens (5 x 20 ms pooled)

    # whatever the masked tokens hold (even NaN / huge), nothing changes
    y = random_input(SMALL, b=3)
    y.present["visual"][1] = False
    y.visual_mask[1] = False
    y.audio[~y.audio_mask] = float("nan")
    y.visual[~y.visual_mask] = 1e6
    y.text_tokens[~y.text_mask] = -1e6
    y.visual[1] = float("nan")  # the absent face row
    out2 = model(y)
    assert torch.allclose(out.probs, out2.probs, atol=1e-6)
    assert torch.allclose(out.embedding, out2.embedding, atol=1e-6)

    # an image-only row gives the same answer as its visual-only decision (absent modalities skipped)
    v = random_input(SMALL, present=("visual",))
    vo = model(v)
    assert set(vo.modality_probs) == {"visual"}
    assert torch.allclose(vo.probs, vo.modality_probs["visual"], atol=1e-6)


def test_training_reduces_loss_and_multilabel_bce(tokenizer):
    model = small_model(tokenizer)
    model.train()
    x = random_input(SMALL, b=6)
    y = torch.tensor([0, 1, 2, 3, 4, 5])
    opt = torch.optim.AdamW(model.param_groups())
    losses = []
    for _ in range(15):
        loss = model.training_loss(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    ml = small_model(tokenizer, multi_label=True).train()
    target = torch.zeros(6, 7)
    target[0, [0, 3]] = 1
    assert ml.training_loss(x, target).item() > 0
    out = ml.eval()(x)
    assert set(out.similarity["label_sigmoid"]) == set(LABEL7)


def test_composite_pairs_keep_label_and_split():
    from emoweb.learning.manifests import Row
    from emoweb.learning.pairs import composite_samples
    from emoweb.learning.training import Sample
    from emoweb.pipeline.features import ClipFeatures

    def feats(kind, audio=False, visual=False):
        f = ClipFeatures(source=kind, sha256="0", kind=kind, profile="embedded", device="cpu", duration=1.0, full_duration=1.0)
        if audio:
            f.audio_tokens = {"audio": torch.randn(5, 4)}
            f.transcript = "kids are talking by the door"
        if visual:
            f.visual_features = torch.randn(1, 3)
            f.frame_times = [0.0]
        return f

    samples = []
    for split in ("train", "dev", "val"):
        for label in ("joy", "fear"):
            for i in range(3):
                samples.append(Sample(Row(Path(f"{label}/{split}_{i}.jpg"), label, "", f"face{split}{i}", split, "faces.csv", "faces/faces.csv"), feats("image", visual=True), split))
        samples.append(Sample(Row(Path(f"{split}_joy.flac"), "joy", "kids", f"actor_{split}", split, "ravdess.csv", "ravdess/ravdess.csv"), feats("audio", audio=True), split))
    samples.append(Sample(Row(Path("lonely.flac"), "anger", "", "actor_x", "train", "ravdess.csv", "ravdess/ravdess.csv"), feats("audio", audio=True), "train"))
    comps = composite_samples(samples, per_speech=2, seed=0)
    assert len(comps) == 6  # 2 per joy speech clip; anger has no face photo: no composite
    for c in comps:
        face_split = c.row.path.stem.split("+")[0].split("_")[0]
        assert c.split == c.row.split == face_split and c.row.label == "joy"
        assert c.row.modality == "audiovisual" and c.row.source == "composite"
        assert c.row.speaker == f"actor_{c.split}" and c.features.modalities == {"audio": True, "visual": True, "text": True}
    assert composite_samples(samples, per_speech=2, seed=0)[0].row == comps[0].row  # deterministic


def test_paper_profile_on_random_weights(tokenizer):
    """Paper dims (CLIP frames 512, BERT tokens 768, CLIP log-mel segments 512), random weights."""
    from models.backbones import PaperBackbones

    dims = PaperBackbones.dims
    torch.manual_seed(0)
    model = registry.build("merclip", dims, audio_source="clip_mel").eval()
    assert model.config.text_token_dim == 768 and model.config.visual_dim == 512
    model.attach_text_encoder(None, tiny_encoder(tokenizer, 768))
    x = random_input(dims, b=2, extra_clip_mel=512)
    out = model(x)
    assert out.probs.shape == (2, 7) and torch.allclose(out.probs.sum(-1), torch.ones(2), atol=1e-5)
    att, axes, ticks = out.attention["cmd_query_to_audio_segment"]
    assert axes == ("layer", "audio_segment") and att.shape == (2, 3, 3)
    assert ticks["audio_segment"] == [[0.0, 2.0, 4.0], [0.0, 2.0]]
    assert out.embedding.shape == (2, 768) and torch.allclose(out.embedding.norm(dim=-1), torch.ones(2), atol=1e-5)
    with pytest.raises(ValueError):
        model.attach_text_encoder(None, tiny_encoder(tokenizer, 32))


def test_composite_clip_end_to_end(composite_clip, extractor):
    from emoweb.pipeline.batching import to_input

    feats = extractor(composite_clip)
    bb = extractor.backbones
    loaded = registry.load("merclip", bb.name)
    model = loaded[0] if loaded else registry.build("merclip", bb.dims).eval()
    model.attach_text_encoder(lambda t: bb.text(t).embedding, bb.text_encoder)
    x = to_input([feats], bb.dims)
    with torch.no_grad():
        out = model(x, RAVDESS8)
    assert out.probs.shape == (1, 8) and abs(float(out.probs.sum()) - 1) < 1e-5
    assert {"audio", "visual", "text"} <= set(out.modality_probs)
    frame, axes, ticks = out.attention["cmd_query_to_frame"]
    assert axes == ("layer", "frame") and frame.shape == (1, 3, len(feats.frame_times))
    assert ticks["frame"] == [feats.frame_times]
    words = out.attention["cmd_query_to_word"]
    assert words[2]["word"] == [feats.text_words] and "tomorrow" in feats.text_words
    audio, _, audio_ticks = out.attention["cmd_query_to_audio_token"]
    assert audio.shape[-1] == len(audio_ticks["audio_token"][0]) == (len(feats.audio_token_times) + 4) // 5
    if loaded:  # the shipped model: a smiling face + a happy voice
        with torch.no_grad():
            assert model(x).label == "joy"


def test_shipped_checkpoint_has_card_and_is_small():
    shipped_checkpoint("merclip", max_mib=15)
