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
    assert {"val", "dev"} <= set(card["metrics"]) and card["seed"] is not None
    assert all(p.dtype == torch.float32 for p in model.parameters())
