"""Text as a modality: the shared text corpora read as text-only rows, their features cached in shards."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from emoweb.errors import EmoWebError
from emoweb.learning.manifests import read_manifest, read_manifests

MELD = "text/meld"
GOEMOTIONS = "text/goemotions_ekman"


def test_meld_rows_are_text_only_with_split_from_file_and_dialogue_as_speaker(shared_data: Path):
    train = read_manifest(shared_data / MELD / "train_sent_emo.csv")
    dev = read_manifest(shared_data / MELD / "dev_sent_emo.csv")
    assert (len(train), len(dev)) == (9989, 1109)
    assert {r.split for r in train} == {"train"} and {r.split for r in dev} == {"val"}
    assert all(r.path is None and r.modality == "text" and r.text for r in train + dev)
    row = next(r for r in dev if r.text.startswith("You had no right to tell me"))
    assert (row.label, row.speaker, row.manifest) == ("anger", "meld_dialogue5", "meld/dev_sent_emo.csv")
    assert sum(r.label == "disgust" for r in dev) == 22
    assert len({r.speaker for r in dev}) == 114  # dialogues: a dev split by speaker keeps a conversation together


def test_goemotions_keeps_only_one_label_rows_named_by_labels_txt(shared_data: Path):
    train = read_manifest(shared_data / GOEMOTIONS / "train.tsv")
    valid = read_manifest(shared_data / GOEMOTIONS / "valid.tsv")
    assert (len(train), len(valid)) == (39555, 4946)  # of 43,410 and 5,426: the multi-label rows are left out
    assert {r.split for r in train} == {"train"} and {r.split for r in valid} == {"val"}
    by_id = {r.speaker: r for r in valid}
    assert by_id["efg7lsu"].label == "fear" and by_id["efg7lsu"].text == "i have bought this but not played. i'm scared. hold me."
    assert "ee84bjg" not in by_id  # labels "3,4"
    assert {r.label for r in valid} == {"anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise"}


def _goemotions(folder: Path, lines: list[str], labels: str | None = "anger\njoy\n") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if labels is not None:
        (folder / "labels.txt").write_text(labels)
    path = folder / "valid.tsv"
    path.write_text("text\tlabel\tid\n" + "".join(f"{line}\n" for line in lines))
    return path


def test_goemotions_tsv_faults_are_one_clear_error(tmp_path: Path):
    with pytest.raises(EmoWebError, match="labels.txt not found"):
        read_manifest(_goemotions(tmp_path / "a", ["so glad\t1\tx1"], labels=None))
    with pytest.raises(EmoWebError, match=r"valid.tsv line 3: label id '7' is not one of the 2"):
        read_manifest(_goemotions(tmp_path / "b", ["so glad\t1\tx1", "what\t7\tx2"]))
    rows = read_manifest(_goemotions(tmp_path / "c", ['"quoted" start\t1\tx1', "two\t0,1\tx2"]))
    assert [(r.text, r.label, r.speaker, r.split) for r in rows] == [('"quoted" start', "joy", "x1", "val")]


@pytest.fixture
def text_manifest(tmp_path: Path) -> Path:
    path = tmp_path / "texts.csv"
    path.write_text("path,label,text,split\n,joy,I am so happy to see you!,val\n,anger,Get out of here now.,val\n"
                    ",joy,I am so happy to see you!,val\n,sadness,,val\n")
    return path


def test_text_rows_get_text_features_cached_in_shards(extractor, text_manifest: Path, tmp_path: Path):
    from emoweb.pipeline.featstore import FeatureStore

    rows = read_manifests(str(text_manifest))
    store = FeatureStore(extractor, tmp_path / "cache")
    pairs, skipped = store.encode_rows(rows)
    assert skipped == ["text-only row with no text"]
    assert [r.text for r, _ in pairs] == ["I am so happy to see you!", "Get out of here now.", "I am so happy to see you!"]
    feats = pairs[1][1]
    assert feats.kind == "text" and feats.modalities == {"audio": False, "visual": False, "text": True}
    assert feats.transcript == "Get out of here now." and feats.text_words[1:4] == ["get", "out", "of"]
    typed = extractor.from_text("Get out of here now.")
    assert torch.allclose(feats.text_embedding, typed.text_embedding, atol=2e-3)
    assert feats.text_tokens.shape == typed.text_tokens.shape
    assert pairs[0][1] is not pairs[2][1]  # one object per row
    shards = sorted((tmp_path / "cache").rglob("*.pt"))
    assert len(shards) == 2 and not list((tmp_path / "cache").rglob("*.tmp"))  # one shard per distinct text here
    stamps = {p: p.stat().st_mtime_ns for p in shards}
    shards[0].unlink()  # an interrupted run: only the missing shard is encoded and written again
    again, _ = FeatureStore(extractor, tmp_path / "cache").encode_rows(rows)
    assert shards[0].is_file() and shards[1].stat().st_mtime_ns == stamps[shards[1]]
    assert all(torch.allclose(a.text_embedding, b.text_embedding, atol=2e-3) for (_, a), (_, b) in zip(pairs, again))


def test_many_texts_share_a_bounded_number_of_files(extractor, tmp_path: Path):
    from emoweb.pipeline.featstore import FeatureStore

    texts = [f"message number {i} made me feel fine" for i in range(300)]
    got = FeatureStore(extractor, tmp_path).get_texts(texts)
    assert set(got) == set(texts) and all(got[t].transcript == t for t in texts)
    files = list(tmp_path.rglob("*.pt"))
    assert len(files) <= 256 and len(files) == len({got[t].sha256[:2] for t in texts})


def test_typed_words_and_the_transcript_go_through_one_text_path(extractor, composite_clip: Path) -> None:
    feats = extractor(composite_clip)
    assert feats.transcript and feats.segments
    alone = extractor.from_text(feats.transcript)
    assert torch.equal(alone.text_embedding, feats.text_embedding) and alone.text_words == feats.text_words
    assert alone.kind == "text" and alone.modalities == {"audio": False, "visual": False, "text": True}

    fixed = extractor.with_text(feats, "  I lost my favourite toy and I miss it so much.  ")
    assert fixed.transcript == "I lost my favourite toy and I miss it so much." and fixed.segments == []
    assert torch.equal(fixed.text_embedding, extractor.from_text(fixed.transcript).text_embedding)
    assert fixed.audio_tokens is feats.audio_tokens and fixed.visual_features is feats.visual_features  # reused
    assert set(fixed.timings) == {"text", "total"} and fixed.warnings[-1] == "words typed by a person"
    assert feats.transcript == extractor.with_text(feats, feats.transcript).transcript  # unchanged: the same features

    removed = extractor.with_text(fixed, "")
    assert removed.modalities == {"audio": True, "visual": True, "text": False} and removed.text_embedding is None
    assert removed.warnings.count("words typed by a person") == 0  # the stale note gives way
    assert removed.warnings[-1] == "transcript removed by a person: text models skipped"
    with pytest.raises(EmoWebError, match="no text given"):
        extractor.with_text(alone, " ")
    with pytest.raises(EmoWebError, match="no text given"):
        extractor.from_text(" \n ")


def _checkpoints(tmp_path: Path, monkeypatch) -> Path:
    """The checkpoint root the CLI is pointed at (and a temp feature cache)."""
    from test_services import make_checkpoint_root

    root = make_checkpoint_root(tmp_path / "checkpoints")
    monkeypatch.setenv("EMOWEB_CHECKPOINT_ROOT", str(root))
    monkeypatch.setenv("EMOWEB_FEATURE_CACHE", str(tmp_path / "features"))
    return root


@pytest.mark.slow
def test_predict_text_answers_from_the_words_only(tmp_path: Path, monkeypatch, capsys) -> None:
    import json

    from emoweb import cli
    from emoweb.services.headline import headline
    from test_services import card_confidence_levels

    root = _checkpoints(tmp_path, monkeypatch)
    assert cli.main(["predict", "--text", "I am so happy to see you!", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    clip, models = result["clip"], result["models"]
    assert clip["kind"] == "text" and clip["source"] == "typed text" and clip["transcript"]["text"] == "I am so happy to see you!"
    assert clip["modalities"] == {"audio": False, "visual": False, "text": True}
    readers = {m: o for m, o in models.items() if o["modality_probs"]}
    assert readers and all(set(o["modality_probs"]) == {"text"} and o["label"] for o in readers.values())
    for m, o in models.items():  # a model that reads no text has no answer (uniform probabilities are not one)
        if m not in readers:
            assert o["label"] is None and max(o["probs"].values()) - min(o["probs"].values()) < 1e-3, m
    expected = headline({m: o["probs"] for m, o in readers.items()}, untrained=clip["untrained_weights"],
                        confident_at=card_confidence_levels(root))
    assert result["headline"]["label"] == expected.label and result["headline"]["models"] == len(readers)
    assert cli.main(["predict", "--text", "I am so happy to see you!"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"typed text: {expected.label}, {expected.confidence}: ")
    assert out.rstrip().endswith("Foal-Net -> no decision (nothing here that it reads)")  # it reads faces and voices only
    assert cli.main(["predict", "--text", " \t"]) == 2 and "--text is empty" in capsys.readouterr().err


@pytest.mark.slow
def test_predict_clip_with_text_replaces_its_transcript(joy_face: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    import json

    from emoweb import cli

    _checkpoints(tmp_path, monkeypatch)
    assert cli.main(["predict", str(joy_face), "--text", "This is disgusting.", "--json"]) == 0
    clip = json.loads(capsys.readouterr().out)["clip"]
    assert clip["kind"] == "image" and clip["transcript"]["text"] == "This is disgusting."
    assert clip["modalities"] == {"audio": False, "visual": True, "text": True}
    assert "words typed by a person" in clip["warnings"]


@pytest.mark.slow
def test_eval_scores_text_only_rows_as_predict_text_answers_them(text_manifest: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    import json

    from emoweb import cli
    from emoweb.pipeline.inference import Predictor

    _checkpoints(tmp_path, monkeypatch)
    assert cli.main(["eval", str(text_manifest), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 3 and result["skipped"] == ["text-only row with no text"]
    predictor = Predictor()
    rows = [r for r in read_manifests(str(text_manifest)) if r.text]
    for name, report in result["reports"].items():
        labels = report["labels"]
        expected, undecided = [[0] * len(labels) for _ in labels], 0
        for row in rows:
            prediction = predictor.predict_text(row.text, name)
            if prediction.model_decided(name):
                expected[labels.index(row.label)][labels.index(prediction.outputs[name].label)] += 1
            else:  # a model that reads no text: each row an error, not its uniform guess
                undecided += 1
        assert report["n"] == 3 and report["confusion"] == expected, name
        assert report["n_pred_outside_labels"] == undecided and undecided in (0, 3), name


@pytest.mark.slow
def test_api_predict_words_types_or_corrects_the_words(request, tmp_path_factory, composite_clip: Path) -> None:
    """Through gradio_client: /predict_words answers from a text alone in a fresh session; after /predict it
    reads the corrected words with the clip's voice and face (only the text encoder runs), and the clip's
    own words again give back the first answer."""
    from gradio_client import Client, handle_file

    from ui_helpers import PREDICT_TIMEOUT_S, job_result, shared_app

    app = shared_app(request, tmp_path_factory)
    client = Client(app.url, verbose=False, download_files=False)
    alone = job_result(client.submit("I am so happy to see you!", api_name="/predict_words"), PREDICT_TIMEOUT_S)
    assert len(alone) == 18 and "Words (typed):** “I am so happy to see you!”" in alone[0], alone[0]
    assert alone[11]["clip"]["kind"] == "text" and alone[11]["clip"]["modalities"]["text"]
    assert not alone[17]["visible"]  # no face to choose

    out = job_result(client.submit(handle_file(str(composite_clip)), None, None, "(don't save)", api_name="/predict"),
                     PREDICT_TIMEOUT_S)
    heard = out[11]["clip"]["transcript"]["text"]
    assert len(out) == 19 and out[18] == heard and heard  # the Words box holds what was heard
    # no profile: not kept, and the page says how long its own copy stays (Gradio's sweep), not "nothing saved"
    assert "**Profile:** none chosen, so the clip is not kept: the copy this page plays is deleted within 1.5 hours" in out[0]
    fixed = job_result(client.submit("I lost my favourite toy.", api_name="/predict_words"), PREDICT_TIMEOUT_S)
    clip = fixed[11]["clip"]
    assert clip["transcript"]["text"] == "I lost my favourite toy." and clip["kind"] == "video"
    assert clip["modalities"] == {"audio": True, "visual": True, "text": True}
    assert set(clip["timings"]) == {"text", "total"}  # no decoding, no Whisper, no faces
    assert "Words (typed):** “I lost my favourite toy.”" in fixed[0] and "Not saved" in fixed[0]
    # the person's own words are information, not "something missing or unreliable"
    assert "words typed by a person" in fixed[16] and "typed" not in fixed[15]["value"]
    back = job_result(client.submit(heard, api_name="/predict_words"), 120)
    assert back[0] == out[0] and back[11] == out[11]
    with pytest.raises(Exception, match="no text given"):
        job_result(Client(app.url, verbose=False, download_files=False).submit(" ", api_name="/predict_words"), 120)


@pytest.mark.slow
def test_bench_generalise_scores_a_guess_from_nothing_as_no_answer(text_manifest: Path, tmp_path: Path, monkeypatch) -> None:
    """`bench generalise` scores text rows as `eval` does: a model that reads no text (Foal-Net) answers
    none of them (each an error, its ECE over no rows), not the argmax of its uniform guess; a model that
    reads text answers every one."""
    from emoweb.config import get_settings
    from emoweb.learning.generalise import generalise_text, score
    from emoweb.learning.studies import acted_speech_store
    from emoweb.pipeline.inference import Predictor

    _checkpoints(tmp_path, monkeypatch)
    predictor = Predictor()
    items, _ = acted_speech_store(predictor, get_settings()).encode_rows(read_manifests(str(text_manifest)))
    reports = {name: score(predictor.model(name)[0], items, predictor.backbones.dims) for name in ("foalnet", "emoasst")}
    none, read = reports["foalnet"]["fused"], reports["emoasst"]["fused"]
    assert none["answered"] == 0.0 and none["accuracy"] == 0.0 and none["n_pred_outside_labels"] == 3 and none["ece"] is None
    assert read["answered"] == 1.0 and read["n_pred_outside_labels"] == 0 and read["ece"] is not None
    text = generalise_text({"corpora": {"typed": {"n": 3, **reports}}, "mean": {}})
    assert "| foalnet | no answer: reads none of these inputs | 0.0 |" in text and "| emoasst | answer |" in text
