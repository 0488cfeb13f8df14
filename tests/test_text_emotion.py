"""The text backbone's own emotion decision: the shipped tuned MiniLM, its features, its residual, its tuning."""
from __future__ import annotations

import json

import pytest
import torch

from emoweb.learning.manifests import Row
from emoweb.config import TextTuningRecipe
from emoweb.learning.text_tuning import split_rows, tune
from emoweb.learning.training import split_of
from emoweb.pipeline.batching import to_input
from emoweb.pipeline.features import ClipFeatures
from models import LABEL7
from models.backbones import PROFILES
from models.backbones.text_emotion import WEIGHTS, TextEmotionClassifier, load_text_emotion
from models.residual import TEXT_BACKBONE_LOGITS, BackboneResidual

DIMS = PROFILES["embedded"].dims
SAID = {  # plain sentences a parent might hear, each with one obvious feeling
    "I'm so happy, this is the best day of my life!": "joy",
    "Get out of my room right now, I hate you!": "anger",
    "I miss her so much, I can't stop crying.": "sadness",
    "What? No way, you're getting married?!": "surprise",
    "Please don't leave me alone in the dark, I'm scared.": "fear",
    "The bus leaves at nine from platform two.": "neutral",
}


@pytest.fixture(scope="module")
def shipped() -> TextEmotionClassifier:
    model = load_text_emotion()
    assert model is not None, f"the shipped weights {WEIGHTS} are missing"
    return model


def test_shipped_classifier_reads_the_feeling_in_plain_sentences(shipped: TextEmotionClassifier) -> None:
    with torch.no_grad():
        said = [shipped.labels[i] for i in shipped(list(SAID)).argmax(-1).tolist()]
    assert said == list(SAID.values())
    card = json.loads(WEIGHTS.with_suffix(".json").read_text())
    assert card["command"].startswith("python -m emoweb tune-text")


def test_missing_weights_mean_no_decision_and_a_wrong_file_is_refused(tmp_path) -> None:
    assert load_text_emotion(tmp_path / "none.safetensors") is None
    model = TextEmotionClassifier(LABEL7, tuned_layers=1)
    model.save(tmp_path / "one.safetensors")
    with torch.no_grad():
        before = model(["a sentence"])
        after = load_text_emotion(tmp_path / "one.safetensors")(["a sentence"])
    assert torch.allclose(before, after, atol=5e-2)  # float16 on disk
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(tmp_path / "one.safetensors"))
    tensors.pop("classifier.bias")
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata={"labels": json.dumps(list(LABEL7)), "tuned_layers": "1"})
    with pytest.raises(ValueError, match="classifier.bias"):
        load_text_emotion(tmp_path / "bad.safetensors")


def test_text_features_carry_the_decision_into_the_models_input(extractor) -> None:
    angry, typed = extractor.from_texts(["Get out of my room right now, I hate you!", "I'm so happy, this is the best day of my life!"])
    assert angry.text_logits.shape == (7,) and LABEL7[int(angry.text_logits.argmax())] == "anger"
    retyped = extractor.with_text(angry, "I'm so happy, this is the best day of my life!")
    assert torch.allclose(retyped.text_logits, typed.text_logits, atol=1e-4)  # typed and corrected words: one path
    voice = ClipFeatures(source="v.wav", sha256="1" * 64, kind="audio", profile="embedded", device="cpu", duration=1.0, full_duration=1.0)
    voice.audio_tokens = {"audio": torch.randn(50, DIMS["audio"])}
    x = to_input([angry, voice], DIMS)
    logits, mask = x.extra[TEXT_BACKBONE_LOGITS], x.extra_mask[TEXT_BACKBONE_LOGITS]
    assert logits.shape == (2, 1, 7) and mask.tolist() == [[True], [False]]
    residual = BackboneResidual(7, modality="text")  # a text head that learnt nothing answers like the backbone
    out = residual(torch.zeros(2, 7), x)
    assert torch.allclose(out[0], angry.text_logits.log_softmax(-1), atol=1e-5)
    assert torch.equal(out[1], torch.zeros(7))  # no words: unchanged


def _rows(n: int, manifest: str) -> list[Row]:
    said = list(SAID.items())
    return [Row(None, said[i % len(said)][1], said[i % len(said)][0] + f" ({i})", f"talk{i}", "train", manifest.split("/")[-1], manifest)
            for i in range(n)]


def test_tuning_keeps_the_models_dev_rows_out_and_learns(tmp_path) -> None:
    rows = _rows(60, "meld/train_sent_emo.csv") + [Row(None, "joy", "held back", "s", "val", "dev_sent_emo.csv", "meld/dev_sent_emo.csv")]
    recipe = TextTuningRecipe(tuned_layers=1, epochs=3, lr=1e-3, head_lr=1e-2, batch_size=8, rows_per_manifest=40)
    train, dev = split_rows(rows, recipe)
    assert len(train) == 40 and all(split_of(r, recipe.seed, recipe.dev_fraction) == "train" for r in train)
    assert dev and all(split_of(r, recipe.seed, recipe.dev_fraction) == "dev" for r in dev)
    assert not any(r.split == "val" for r in train + dev)
    model, card = tune(rows, recipe, progress=lambda line: None)
    assert card["rows"] == {"train": 40, "dev": len(dev)}
    assert card["dev"][-1]["meld/train_sent_emo.csv"]["accuracy"] > 1 / 7  # six repeated sentences: learnt beyond chance
    with pytest.raises(ValueError, match="no text training rows"):
        tune([], recipe, progress=lambda line: None)


@pytest.mark.parametrize("name", ["sem_mbt", "merclip", "emoasst"])
def test_text_decision_reads_the_text_backbone(name: str) -> None:
    """Same words, two different backbone decisions: the model's text answer (and MER-CLIP's fused
    answer, the only sense here) moves with the backbone's, and a residual's parameters are in the
    model's optimiser groups."""
    from models import registry
    from models.backbones.text import load_minilm

    torch.manual_seed(0)
    model = registry.build(name, DIMS).eval()
    if name != "sem_mbt":  # their label prompts go through the frozen MiniLM
        minilm = load_minilm()
        model.attach_text_encoder(lambda texts: minilm(texts).embedding, minilm)

    def said(joy: float) -> ClipFeatures:
        f = ClipFeatures(source="t", sha256="2" * 64, kind="text", profile="embedded", device="cpu", duration=0.0, full_duration=0.0)
        f.transcript, f.text_embedding = "words", torch.ones(DIMS["text"]) / DIMS["text"] ** 0.5
        f.text_tokens, f.text_words = torch.zeros(1, DIMS["text_tokens"]), ["words"]
        f.text_logits = torch.tensor([0.0, 0, 0, joy, 0, 0, 0])
        return f

    with torch.no_grad():
        outs = [model(to_input([said(v)], DIMS)) for v in (0.0, 8.0)]
    joy = LABEL7.index("joy")
    flat, joyful = (o.modality_probs["text"][0] for o in outs)
    assert float(joyful[joy]) > float(flat[joy]) + 0.2
    if name == "merclip":
        assert float(outs[1].probs[0, joy]) > float(outs[0].probs[0, joy]) + 0.2
    if name == "emoasst":  # nothing learnt on text: the decision is the backbone's own
        assert torch.allclose(joyful.log(), said(8.0).text_logits.log_softmax(-1), atol=1e-4)
        return
    grouped = {id(p) for g in model.param_groups() for p in g["params"]}
    assert all(id(p) in grouped for p in model.text_residual.parameters())
