"""Another person's answer (issue 18): a clip with two faces, the second person chosen; only the faces and the
visual encoder run again, on that person's crops, and the voice and words are reused and flagged."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import JOY_FACE, OTHER_FACE, ffmpeg
from emoweb.errors import EmoWebError
from emoweb.pipeline import faces, media
from test_faces import H264_ARGS, _photo, _scene


@pytest.fixture(scope="module")
def two_people(happy_speech: Path, tmp_path_factory) -> Path:
    """A 4-s clip: a smiling face on the left, a neutral one on the right, a happy voice."""
    left, right = _photo(JOY_FACE), _photo(OTHER_FACE)
    folder = tmp_path_factory.mktemp("two_people")
    for i in range(16):
        Image.fromarray(_scene(640, 360, [(left, 40 + i, 80, 190), (right, 400 - i, 100, 130)])).save(folder / f"{i:03d}.png")
    out = folder / "two.mp4"
    ffmpeg("-framerate", "4", "-i", folder / "%03d.png", "-i", happy_speech, *H264_ARGS, "-c:a", "aac", out)
    return out


def _refuse(*_args, **_kwargs):
    raise AssertionError("must not run again for another person")


def test_second_person_features_come_from_their_crops(extractor, two_people: Path, monkeypatch) -> None:
    feats = extractor(two_people)
    assert [(t["position"], t["frames"]) for t in feats.face_tracks] == [("on the left", 16), ("on the right", 16)]
    assert feats.modalities == {"audio": True, "visual": True, "text": True}, feats.warnings
    monkeypatch.setattr(media, "decode", _refuse)
    monkeypatch.setattr(extractor.backbones, "transcribe", _refuse)
    monkeypatch.setattr(extractor.backbones, "audio_tokens", _refuse)

    other = extractor.with_person(feats, 2)
    theirs = extractor.backbones.visual(faces.detect_and_crop(feats.frames, 2).crops).features.cpu()
    assert other.person == 2 and feats.person == 1
    assert torch.allclose(other.visual_features, theirs)
    assert (other.visual_features - feats.visual_features).abs().max() > 0.1  # not the main person's
    assert all(b is not None and b[0] > 320 for b in other.face_boxes), other.face_boxes  # the right face's crops
    assert not np.array_equal(other.face_crops, feats.face_crops)
    assert other.audio_tokens is feats.audio_tokens and other.transcript == feats.transcript
    assert other.text_embedding is feats.text_embedding
    assert set(other.timings) == {"faces", "visual", "total"}
    notes = [w for w in other.warnings if w.startswith("2 people seen")]
    assert notes == ["2 people seen; this answer is about the person on the right, seen in 16/16 frames, chosen instead "
                     "of the main person (also seen: the person on the left (16/16)); the voice and the words may "
                     "belong to someone else"], other.warnings
    assert other.to_summary()["faces"]["person"] == 2

    back = extractor.with_person(other, 1)  # back to the main person: the first analysis's features and note
    assert torch.allclose(back.visual_features, feats.visual_features) and back.warnings == feats.warnings
    with pytest.raises(EmoWebError, match=r"person 3 not seen: this clip shows 2 people \(1 to 2\)"):
        extractor.with_person(feats, 3)


def test_second_person_answer_uses_their_face_and_the_clips_voice(extractor, two_people: Path) -> None:
    """Predictor.predict_person: every model answers about the chosen face with the clip's voice and words
    (the same tensors; fusion models may still let the face change what their audio path says)."""
    from emoweb.pipeline.inference import Predictor

    predictor = Predictor(extractor.settings)
    predictor.extractor = extractor
    names = predictor.required_models("all")
    feats = extractor(two_people)
    main = predictor.run_models(feats, names)
    other = predictor.predict_person(feats, 2)
    assert other.features.person == 2 and list(other.outputs) == names
    assert other.features.audio_tokens is feats.audio_tokens and other.features.text_tokens is feats.text_tokens
    for name in names:
        a, b = main.outputs[name].modality_probs, other.outputs[name].modality_probs
        assert "visual" in b, (name, list(b))
        assert not torch.allclose(a["visual"], b["visual"], atol=1e-4), name


@pytest.mark.slow
def test_api_predict_person(request, tmp_path_factory, two_people: Path) -> None:
    """Through gradio_client: /predict offers the two people (its appended last output), /predict_person
    answers about the one on the right in the same session and says the voice may be someone else's."""
    from gradio_client import Client, handle_file

    from ui_helpers import PREDICT_TIMEOUT_S, job_result, shared_app

    app = shared_app(request, tmp_path_factory)
    client = Client(app.url, verbose=False, download_files=False)
    assert "/predict_person" in client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    out = job_result(client.submit(handle_file(str(two_people)), None, None, "(don't save)", api_name="/predict"),
                     PREDICT_TIMEOUT_S)
    assert len(out) == 19, len(out)  # the 17 outputs documented before, the person selector, the words heard
    selector = out[17]
    assert selector["visible"] and selector["value"] == 1, selector
    assert [c[0] for c in selector["choices"]] == ["the person on the left (16/16 frames), the main person",
                                                   "the person on the right (16/16 frames)"], selector
    assert out[11]["clip"]["faces"]["person"] == 1

    other = job_result(client.submit(2, api_name="/predict_person"), PREDICT_TIMEOUT_S)
    assert len(other) == 18 and other[17]["value"] == 2
    summary, raw = other[0], other[11]
    assert "the person on the right" in summary and "may belong to someone else" in summary, summary
    assert raw["clip"]["faces"]["person"] == 2 and raw["clip"]["transcript"]["text"] == out[11]["clip"]["transcript"]["text"]
    assert all(box[0] > 320 for box in raw["clip"]["faces"]["boxes"]), raw["clip"]["faces"]["boxes"]
    assert set(raw["clip"]["timings"]) == {"faces", "visual", "total"}  # no decoding, no Whisper
    visual = {m: v["modality_probs"]["visual"] for m, v in raw["models"].items()}
    assert visual != {m: v["modality_probs"]["visual"] for m, v in out[11]["models"].items()}

    back = job_result(client.submit(1, api_name="/predict_person"), 120)  # the main person again: the first answer
    assert back[0] == out[0] and back[11] == out[11] and back[17]["value"] == 1

    # someone not seen, and another session (nothing analysed there): refused by the selector's own choices
    with pytest.raises(Exception, match=r"Value: 3 .* is not in the list of choices: \[1, 2\]"):
        job_result(client.submit(3, api_name="/predict_person"), 120)
    fresh = Client(app.url, verbose=False, download_files=False)
    with pytest.raises(Exception, match=r"Value: 2 .* is not in the list of choices: \[\]"):
        job_result(fresh.submit(2, api_name="/predict_person"), 120)
