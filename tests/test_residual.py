"""The face backbone's own decision kept beside every visual head (issue 18 item 5)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from emoweb.pipeline.batching import to_input
from emoweb.pipeline.features import ClipFeatures
from models import LABEL7, registry
from models.backbones import PROFILES
from models.residual import BACKBONE_LOGITS, BackboneResidual

DIMS = PROFILES["embedded"].dims
FER_ORDER = ("anger", "disgust", "fear", "joy", "sadness", "surprise", "neutral")  # the FER network's own order


def _face(logits_fer_order: list[float], frames: int = 3) -> ClipFeatures:
    f = ClipFeatures(source="face.jpg", sha256="0" * 64, kind="image", profile="embedded", device="cpu", duration=0.0, full_duration=0.0)
    f.visual_features = torch.randn(frames, DIMS["visual"])
    f.visual_logits = torch.tensor([logits_fer_order] * frames)
    f.visual_logit_labels = FER_ORDER
    return f


def _voice() -> ClipFeatures:
    f = ClipFeatures(source="v.wav", sha256="1" * 64, kind="audio", profile="embedded", device="cpu", duration=1.0, full_duration=1.0)
    f.audio_tokens = {"audio": torch.randn(50, DIMS["audio"])}
    return f


def test_to_input_carries_backbone_logits_in_label7_order() -> None:
    x = to_input([_face([0, 0, 0, 0, 0, 9.0, 0]), _voice()], DIMS)  # FER column 5 = surprise
    logits, mask = x.extra[BACKBONE_LOGITS], x.extra_mask[BACKBONE_LOGITS]
    assert logits.shape == (2, 3, 7)
    assert LABEL7[int(logits[0, 0].argmax())] == "surprise"
    assert mask[0].all() and not mask[1].any()


def test_untrained_head_answers_like_the_backbone_and_leaves_other_rows_alone() -> None:
    x = to_input([_face([0, 0, 5.0, 0, 0, 0, 0]), _voice()], DIMS)  # FER column 2 = fear
    residual = BackboneResidual(7)
    head = torch.zeros(2, 7)
    out = residual(head, x)
    assert LABEL7[int(out[0].argmax())] == "fear"
    expected = torch.tensor([0, 0, 5.0, 0, 0, 0, 0]).log_softmax(-1)[[FER_ORDER.index(lab) for lab in LABEL7]]
    assert torch.allclose(out[0], expected, atol=1e-5)  # weight 1, bias 0: exactly the backbone's log-probabilities
    assert torch.equal(out[1], head[1])  # a voice-only row: unchanged


def test_weight_is_positive_and_starts_where_asked() -> None:
    r = BackboneResidual(7, init_weight=5.0)
    assert torch.allclose(r.log_weight.exp(), torch.full((7,), 5.0))
    assert r.param_group()["lr"] > 1e-3  # its own, faster learning rate


@pytest.fixture(scope="module")
def text_backbone():
    from models.backbones import get_backbones

    return get_backbones("embedded", "cpu")


@pytest.mark.parametrize("name", ["emoasst", "merclip", "sem_mbt", "foalnet"])
def test_every_models_visual_decision_reads_the_backbone(name: str, text_backbone) -> None:
    """Same frames, two different backbone decisions: the visual answer moves with the backbone's, and
    the residual's parameters are trained (they are in the model's optimiser groups)."""
    torch.manual_seed(0)
    model = registry.build(name, DIMS).eval()
    model.attach_text_encoder(lambda texts: text_backbone.text(texts).embedding, text_backbone.text_encoder)
    a, b = _face([0] * 7), _face([0] * 7)
    b.visual_features = a.visual_features.clone()
    b.face_crops = a.face_crops = np.full((3, 64, 64, 3), 128, dtype=np.uint8)
    strong = 40.0
    b.visual_logits = torch.tensor([[0, 0, 0, strong, 0, 0, 0]] * 3)  # FER column 3 = joy
    with torch.no_grad():
        pa, pb = model(to_input([a], DIMS)).modality_probs["visual"], model(to_input([b], DIMS)).modality_probs["visual"]
    joy = LABEL7.index("joy")
    assert float(pb[0, joy]) > float(pa[0, joy])
    grouped = {id(p) for g in model.param_groups() for p in g["params"]}
    assert all(id(p) in grouped for p in model.visual_residual.parameters())
    assert not math.isclose(float(pb[0, joy]), float(pa[0, joy]))
