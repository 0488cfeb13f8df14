"""A stored clip is worded as the Predict tab words it: the same "how sure", face against voice included.

All four shipped models on one real composite (a smiling face, a sad CREMA-D voice) whose face and voice
the models read differently, stored through the real services in a real SQLite file. The Predict tab's
paths (a clip analysed without a profile: `headline.of_prediction`; stored in a profile: the ingest's
result) and the Label tab's (the stored clip answered again from the database) must give the same words.
"""
from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path

import pytest

from conftest import FACES, VOICES
from emoweb.services import CaregiverService, cachearrays
from emoweb.services.headline import FAIRLY_SURE, NOT_SURE, UNCOMPARED, headline, of_prediction
from emoweb.services.predictions import Predictions
from emoweb.services.store import CaregiverRepository

pytestmark = pytest.mark.slow
MODELS = ("emoasst", "foalnet", "merclip", "sem_mbt")


@pytest.fixture(scope="module")
def split_clip(tmp_path_factory) -> Path:
    """Joy's face with a sad voice: every model answers joy, confidently, but their voice decision is sadness."""
    from emoweb.learning import composite

    return composite.render(FACES["joy"], VOICES["sadness"], tmp_path_factory.mktemp("split") / "joy_face_sad_voice.mp4")


@pytest.fixture(scope="module")
def service(extractor, tmp_path_factory) -> CaregiverService:
    """Every shipped model (the wording needs several), on a fresh data dir, sharing the session's backbones."""
    from emoweb.pipeline.inference import Predictor

    settings = dataclasses.replace(extractor.settings, data_dir=tmp_path_factory.mktemp("emoweb-data"), database_url="",
                                   profile="embedded")
    svc = CaregiverService(settings, Predictor(settings))
    if sorted(svc.ctx.model_names()) != sorted(MODELS):
        pytest.fail(f"the shipped checkpoints lack a model: {svc.ctx.model_names()}")
    yield svc
    svc.close()


@pytest.fixture(scope="module")
def stored(service: CaregiverService, split_clip: Path):
    service.create_profile("family")
    return service.ingest(split_clip, "family")


def _words(head) -> tuple:
    return head.label, head.confidence, head.reason, head.agree, head.models, sorted(head.confident)


def test_face_against_voice_reads_the_same_in_predict_and_label(service, stored, split_clip) -> None:
    """Not sure everywhere: the stored answers alone (the Label tab before) said fairly sure."""
    fresh = of_prediction(stored.outputs, service.predictor.confident_at(list(MODELS)))  # Predict, no profile
    predict_tab = service.headline(stored)  # Predict with a profile: the ingest's result
    again = service.predict(stored.clip.id, "family")  # the Label tab: answered from the database
    label_tab = service.headline(again)
    reupload = service.ingest(split_clip, "family")  # Predict once more: known clip, nothing new stored
    assert not reupload.new

    assert again.outputs is None and again.senses == stored.senses  # read back from clip_senses as stored
    assert _words(fresh) == _words(predict_tab) == _words(label_tab) == _words(service.headline(reupload))
    assert label_tab.label == "joy" and label_tab.confidence == NOT_SURE
    assert label_tab.reason == ("the voice says sadness, the face says joy, so the models' agreement does not settle it "
                                 "(all 4 models agree, 4 of them confident)")
    assert label_tab.mean_prob == pytest.approx(fresh.mean_prob, abs=1e-4)
    # what the Label tab said before, from the combined answers only: the rule is what changed the words
    answers = {m: p.probs for m, p in again.predictions.items() if p.decided}
    assert headline(answers, confident_at=service.predictor.confident_at(list(answers))).confidence == FAIRLY_SURE


def test_a_clip_stored_before_the_senses_were_kept_loads_and_says_what_was_not_checked(service, stored, split_clip) -> None:
    """No clip_senses rows (as every clip stored before migration 0003): the other rules word it, and the reason
    says face and voice were not compared, rather than implying they agree."""
    service.create_profile("old")
    clip = service.ingest(split_clip, "old").clip  # the same content: the stored features are reused
    with sqlite3.connect(service.data_dir / "emoweb.sqlite3") as db:
        assert db.execute("DELETE FROM clip_senses WHERE clip_id = ?", (clip.id,)).rowcount == len(MODELS)
    old = service.predict(clip.id, "old")
    assert old.senses is None and old.to_dict()["senses"] is None
    head = service.headline(old)
    assert (head.label, head.confidence) == ("joy", FAIRLY_SURE)
    assert head.reason == f"all 4 models agree, 4 of them confident; {UNCOMPARED}"

    # its content stored in another profile is copied without re-encoding, and stays "not known" there too
    with sqlite3.connect(service.data_dir / "emoweb.sqlite3") as db:
        db.execute("DELETE FROM clip_senses WHERE clip_id = ?", (stored.clip.id,))
    try:
        service.create_profile("older")
        copied = service.ingest(split_clip, "older")
        assert copied.new and copied.outputs is None and copied.senses is None
        assert _words(service.headline(copied)) == _words(head)
    finally:
        service.repo.put_senses(stored.clip.id, service.backbone, stored.senses)


def test_per_sense_decisions_never_become_cache_keys(service, stored) -> None:
    """The clip's stored features are the cache's parts only (fused, logits, each modality embedding); the rebuild's
    arrays and the scoring read exactly those; the per-sense decisions live in their own table."""
    clip_id, backbone = stored.clip.id, service.backbone
    names = set(service.repo.get_features(clip_id, backbone))
    for model, out in stored.outputs.outputs.items():
        keys = {m for m, z in out.modality_embeddings.items() if bool(z[0].any())}
        assert {p for m, p in map(cachearrays.split_name, names) if m == model} == {cachearrays.FUSED, cachearrays.LOGITS, *keys}
    assert set(service.repo.get_senses(clip_id, backbone)) == set(MODELS)
    assert all({"audio", "visual"} <= set(s) for s in stored.senses.values())

    with service.ctx.sessions() as session, session.begin(), service.ctx.features.lock:  # what a rebuild reads
        repo = CaregiverRepository(session)
        repo.begin_snapshot()
        arrays = service.ctx.features.read(repo, stored.clip.profile_id, backbone, [clip_id]).arrays
        assert arrays.names() == names
        for model in MODELS:
            parts = {p for m, p in map(cachearrays.split_name, names) if m == model}
            keys = set(cachearrays.assemble(model, {clip_id: "joy"}, arrays).keys)
            assert keys == parts - {cachearrays.LOGITS} - cachearrays.NON_EMOTION_KEYS and {"audio", "visual"} <= keys
    score = service.ctx.once(Predictions).score  # answers from the stored features alone, as ingest gave them
    rescored = score(service.repo.get_profile("family"), service.repo.get_features(clip_id, backbone))
    assert {m: p.probs for m, p in rescored.items()} == {m: p.probs for m, p in stored.predictions.items()}
