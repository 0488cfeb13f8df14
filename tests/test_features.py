"""The shared feature pipeline on real backbones (embedded profile) and the `inspect` CLI.

Slow: loads Whisper base, MiniLM and the FER mini-Xception once per session (see conftest `extractor`).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import HAPPY_SENTENCE, TORCH_THREADS, write_wav
from emoweb.errors import MediaError
from emoweb.pipeline.features import ClipFeatures

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
STAGES = ("decode", "faces", "visual", "asr", "audio_encoder", "text", "total")


def _words(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split())


@pytest.fixture(scope="module")
def clip_features(extractor, composite_clip: Path) -> tuple[ClipFeatures, int]:
    """One extraction of the composite clip, and how many Whisper encoder passes it cost."""
    whisper = extractor.backbones.whisper  # load before counting
    before = whisper.encoder_passes
    feats = extractor(composite_clip)
    return feats, whisper.encoder_passes - before


def test_transcript(clip_features) -> None:
    feats, _ = clip_features
    assert HAPPY_SENTENCE in _words(feats.transcript), feats.transcript
    assert feats.language == "en"
    assert feats.segments and all(0 <= s["start"] <= s["end"] <= feats.duration + 0.5 for s in feats.segments)


def test_whisper_encoder_passes(clip_features) -> None:
    """Two passes for a 3.5-s clip with speech: the emotion tokens' (a window fitted to the clip) and the
    decoder's (one 30-s window, reused by language detection and decoding: never encoded twice)."""
    _, passes = clip_features
    assert passes == 2


def test_tokens_without_asr_are_the_same(extractor, clip_features, composite_clip: Path) -> None:
    """`transcribe=False` (what training reads) skips ASR only: no transcript, no text features, one encoder
    pass, and the same audio tokens as the app's."""
    from emoweb.pipeline.features import FeatureExtractor

    feats, _ = clip_features
    quiet = FeatureExtractor(extractor.settings, extractor.backbones, transcribe=False)
    whisper = extractor.backbones.whisper
    before = whisper.encoder_passes
    bare = quiet(composite_clip)
    assert whisper.encoder_passes - before == 1
    assert bare.transcript == "" and bare.text_embedding is None and not bare.modalities["text"]
    for key in ("audio", "whisper_layer4"):  # equal up to float rounding (CPU kernels may split work differently)
        assert torch.allclose(bare.audio_tokens[key], feats.audio_tokens[key], atol=1e-4, rtol=1e-4)


def test_fitted_window_covers_long_clips(extractor, tmp_path: Path) -> None:
    """A 70-s clip is encoded in pieces of at most 30 s (30 + 30 + 10, the last one cut to its length):
    tokens for the whole clip at 20 ms, from every layer."""
    rng = np.random.default_rng(0)
    t = np.arange(70 * 16_000) / 16_000
    audio = (0.1 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 0.5 * t)) + 0.01 * rng.standard_normal(t.size)).astype(np.float32)
    whisper = extractor.backbones.whisper
    result = whisper(audio, transcribe=False)
    assert abs(result.tokens.shape[0] - 3500) <= 1 and len(result.layer_tokens) == 6
    assert all(x.shape == result.tokens.shape for x in result.layer_tokens)
    assert np.isfinite(result.tokens.numpy()).all()


def test_faces_found(clip_features) -> None:
    feats, _ = clip_features
    n = len(feats.frame_times)
    assert n == 16
    assert feats.faces_found >= 0.75 * n, feats.face_boxes
    assert feats.face_crops is not None and feats.face_crops.shape[0] == n
    assert not any("no face" in w for w in feats.warnings)


def test_feature_shapes(clip_features) -> None:
    feats, _ = clip_features
    tokens = feats.audio_tokens["audio"]
    assert tokens.ndim == 2 and tokens.shape[1] == 512
    assert abs(tokens.shape[0] - feats.duration / 0.02) <= 2, (tokens.shape, feats.duration)
    assert len(feats.audio_token_times) == tokens.shape[0]
    layer4 = feats.audio_tokens["whisper_layer4"]  # EmoAsst's input: the same pass, one layer down, same time axis
    assert layer4.shape == tokens.shape and not torch.allclose(layer4, tokens)
    assert feats.text_embedding is not None and tuple(feats.text_embedding.shape) == (384,)
    assert feats.text_tokens is not None and feats.text_tokens.shape[1] == 384
    assert tuple(feats.visual_features.shape) == (16, 128)
    assert feats.visual_maps and all(m.shape[0] == 16 and m.ndim == 4 for m in feats.visual_maps.values())
    assert feats.log_mel is not None and feats.log_mel.shape[0] == 80
    for t in (tokens, feats.text_embedding, feats.visual_features):
        assert np.isfinite(t.numpy()).all()
    assert feats.modalities == {"audio": True, "visual": True, "text": True}
    assert feats.untrained_weights is False and feats.profile == "embedded"


def test_smiling_face_reads_as_joy(clip_features) -> None:
    feats, _ = clip_features
    labels = [feats.visual_logit_labels[i] for i in feats.visual_logits.argmax(1).tolist()]
    assert labels.count("joy") > len(labels) / 2, labels


def test_timings_and_summary(clip_features) -> None:
    feats, _ = clip_features
    assert set(STAGES) <= set(feats.timings)
    assert all(v >= 0 for v in feats.timings.values())
    assert feats.timings["total"] == pytest.approx(sum(v for k, v in feats.timings.items() if k != "total"))
    summary = json.loads(json.dumps(feats.to_summary()))  # JSON-friendly: no tensors
    assert summary["audio_tokens"]["audio"] == list(feats.audio_tokens["audio"].shape)
    assert summary["visual_features"] == [16, 128]


def test_backbones_loaded_once(extractor, clip_features) -> None:
    """The extractor uses the process-wide backbones; all three embedded encoders are loaded."""
    loaded = list(extractor.backbones.loaded)
    from models.backbones import get_backbones

    assert extractor.backbones is get_backbones(
        extractor.settings.profile, extractor.settings.device, extractor.settings.asr_beam, extractor.settings.threads
    )
    assert set(loaded) >= {"whisper", "minilm", "fer"}


def test_silence_gives_warning_and_no_transcript(extractor, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = write_wav(tmp_path / "silence.wav", rng.normal(0, 2e-5, 32_000))  # 2 s of near-silence (about -94 dBFS)
    feats = extractor(path)
    assert feats.kind == "audio" and feats.transcript == "" and feats.text_embedding is None
    assert feats.modalities["text"] is False and feats.modalities["visual"] is False
    assert any("silent" in w or "speech" in w for w in feats.warnings), feats.warnings


def test_cli_predict_on_silence_names_no_label(tmp_path: Path, capsys) -> None:
    """Nothing to recognise: every model answers with no label and uniform probabilities, not a guess."""
    from emoweb.cli import main

    path = write_wav(tmp_path / "silence.wav", np.zeros(32_000))
    assert main(["predict", str(path), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["models"] and not any(summary["clip"]["modalities"].values())
    for name, answer in summary["models"].items():
        assert answer["label"] is None, name
        assert max(answer["probs"].values()) - min(answer["probs"].values()) < 1e-3, (name, answer["probs"])


@pytest.mark.parametrize("text, no_speech, logprob, reason", [
    ("Kids are talking by the door.", 0.16, -0.53, None),  # the RAVDESS sentence, as decoded
    ("No, no, no, no!", 0.2, -0.4, None),  # a child's real refusal is not a loop
    ("... ... ...", 0.14, -0.95, "punctuation only"),  # 40 s of room tone, decoded today
    ("♪ ♪", 0.3, -0.8, "punctuation only"),
    ("4-0-0-0-0-0-0-0-0-0-0-0-0-0-0-0-0-0-0-0-0-0-0-0-0-0-0-0-0-0-0-0-0", 0.97, -0.06, "repeated tokens"),
    ("I'm sorry, I'm sorry, I'm sorry, I'm sorry, I'm sorry, I'm sorry,", 0.7, -0.14, "repeated tokens"),  # music
    ("you you you you you you you you", 0.3, -0.5, "repeated tokens"),  # too short for zlib to tell
    ("Thank you very much.", 0.74, -1.14, "no-speech probability 0.74"),  # music, decoded without the test
])
def test_untrusted_asr_output_never_counts_as_text(text, no_speech, logprob, reason) -> None:
    from models.backbones.whisper import untrusted

    found = untrusted(text, no_speech, logprob)
    assert found == reason if reason is None else reason in found


def test_a_phrase_said_again_and_again_is_speech(extractor, happy_speech: Path, tmp_path: Path) -> None:
    """Echolalia: the same sentence five times over is kept (repetition is judged per segment)."""
    from emoweb.pipeline import media

    audio = media.decode(happy_speech).audio
    feats = extractor(write_wav(tmp_path / "again.wav", np.concatenate([audio] * 5)))
    assert _words(feats.transcript).count(HAPPY_SENTENCE) >= 4, (feats.transcript, feats.warnings)
    assert not any("unreliable" in w for w in feats.warnings), feats.warnings


def test_speech_times_are_where_the_speech_is(extractor, happy_speech: Path, tmp_path: Path) -> None:
    """A sentence after 1.5 s of a quiet room (a phone started before anyone spoke): its segment starts
    after the quiet part and ends within the clip (Whisper alone said 0.0 and past the end)."""
    from emoweb.pipeline import media

    audio = media.decode(happy_speech).audio
    rng = np.random.default_rng(3)
    quiet = rng.normal(0, 3e-4, 24_000).astype(np.float32)  # 1.5 s at about -70 dBFS
    feats = extractor(write_wav(tmp_path / "late.wav", np.concatenate([quiet, audio])))
    assert HAPPY_SENTENCE in _words(feats.transcript), feats.transcript
    assert feats.segments and all(1.2 <= s["start"] <= s["end"] <= feats.duration for s in feats.segments), (feats.segments, feats.duration)


def test_no_speech_skips_the_voice_even_after_typed_words(extractor, tmp_path: Path) -> None:
    """Room noise without speech: no voice decision and no words, each said in its own note; words typed
    afterwards replace the words' note only, and the voice stays skipped and said to be."""
    from emoweb.pipeline.features import NO_SPEECH_NOTE

    rng = np.random.default_rng(5)
    feats = extractor(write_wav(tmp_path / "room.wav", rng.normal(0, 3e-4, 48_000)))  # 3 s at about -70 dBFS
    assert feats.modalities == {"audio": False, "visual": False, "text": False}
    assert NO_SPEECH_NOTE in feats.warnings and "no speech recognised: text models skipped" in feats.warnings
    typed = extractor.with_text(feats, "I am so happy to see you!")
    assert typed.modalities == {"audio": False, "visual": False, "text": True}
    assert NO_SPEECH_NOTE in typed.warnings and "no speech recognised: text models skipped" not in typed.warnings


def test_image_gives_visual_only(extractor, joy_face: Path) -> None:
    feats = extractor(joy_face)
    assert feats.kind == "image"
    assert feats.modalities == {"audio": False, "visual": True, "text": False}
    assert tuple(feats.visual_features.shape) == (1, 128)
    assert feats.faces_found == 1
    assert not feats.audio_tokens and feats.transcript == ""


def test_bad_input_raises_media_error(extractor, bad_inputs) -> None:
    for name, path in bad_inputs.items():
        with pytest.raises(MediaError):
            extractor(path)


# --- CLI ----------------------------------------------------------------------------------------------


def _cli(*args: str | Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", EMOWEB_THREADS=str(TORCH_THREADS), PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-m", "emoweb", "inspect", *map(str, args)],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=300,
    )


@pytest.fixture(scope="module")
def speech_wav(happy_speech: Path, tmp_path_factory) -> Path:
    from emoweb.pipeline import media

    return write_wav(tmp_path_factory.mktemp("cli") / "speech.wav", media.decode(happy_speech).audio)


@pytest.mark.parametrize("kind", ["video", "audio", "image"])
def test_cli_inspect(kind: str, composite_clip: Path, speech_wav: Path, joy_face: Path) -> None:
    path = {"video": composite_clip, "audio": speech_wav, "image": joy_face}[kind]
    proc = _cli(path, "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    keys = {"source", "sha256", "kind", "profile", "device", "duration", "modalities", "frames", "faces",
            "transcript", "audio_tokens", "text_embedding", "visual_features", "warnings", "timings"}
    assert keys <= set(out), keys - set(out)
    assert out["kind"] == kind and out["profile"] == "embedded" and out["source"] == path.name
    if kind == "image":
        assert out["modalities"] == {"audio": False, "visual": True, "text": False}
        assert out["frames"]["count"] == 1 and out["faces"]["found"] == 1
    else:
        assert HAPPY_SENTENCE in _words(out["transcript"]["text"])
        assert out["audio_tokens"]["audio"][1] == 512 and out["text_embedding"] == [384]
        assert "asr" in out["timings"] and "total" in out["timings"]
    if kind == "video":
        assert out["frames"]["count"] == 16 and out["faces"]["found"] >= 12
        assert out["visual_features"] == [16, 128]
    if kind == "audio":
        assert out["visual_features"] is None and out["modalities"]["visual"] is False


# each CLI run pays the torch/transformers import (~5 s on 2 cores): a representative few run as
# processes; all bad inputs go through `main()` in-process below
@pytest.mark.parametrize("name", ["missing", "random_bytes_mp4", "unsupported_video_codec"])
def test_cli_bad_input_process(bad_inputs, name: str) -> None:
    proc = _cli(bad_inputs[name], "--json")
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    assert "Traceback" not in proc.stderr and bad_inputs[name].name in lines[0]
    assert proc.stdout == ""


def test_cli_bad_inputs_in_process(bad_inputs, capsys) -> None:
    from emoweb.cli import main

    for name, path in bad_inputs.items():
        assert main(["inspect", str(path), "--json"]) != 0, name
        captured = capsys.readouterr()
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:"), (name, captured.err)
        assert captured.out == ""


# --- bench extract (in-process: reuses the session's loaded backbones) ---------------------------------


def test_bench_extract_json(extractor, shared_data, capsys) -> None:
    from emoweb.cli.bench import BENCH_SPEECH
    from emoweb.cli import main

    # 2.5 s holds the whole sentence; a cut mid-word makes Whisper fall back through its temperatures (slow)
    assert main(["bench", "extract", "--seconds", "2.5", "--repeat", "1", "--threads", str(TORCH_THREADS),
                 "--device", "cpu", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert "ravdess" in BENCH_SPEECH and "kids are talking by the door" in _words(out["transcript"])  # the bench's own clip
    assert set(STAGES) <= set(out["warm_median"]) and set(STAGES) <= set(out["cold"])
    assert out["clip_seconds"] == pytest.approx(2.5, abs=0.1)
    assert out["machine"]["threads"] == TORCH_THREADS and out["machine"]["device"] == "cpu"
    assert {"cpu", "torch", "ctranslate2"} <= set(out["machine"])
    assert len(out["warm_wall_s"]) == 1


def test_bench_extract_without_shared_data(monkeypatch, tmp_path: Path, capsys) -> None:
    import emoweb.config
    from emoweb.cli import main

    monkeypatch.setattr(emoweb.config, "SHARED_DATA", tmp_path / "absent")
    assert main(["bench", "extract", "--repeat", "1"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "shared data" in err[0]
