"""Shared fixtures: the committed samples, the whole corpora, one composite clip and one feature extractor per session.

Tests read real media from `tests/data/` (two face photos, four CREMA-D voices; licences in
tests/data/README.md), so a fresh clone runs them. Only tests that read a whole corpus take `shared_data`
(../shared/data) and skip without it, saying so. Test clips are *composites* (a face photo + a voice of the
same label), rendered once into a session temp dir. `make_bad_inputs` builds every kind of input the app
must refuse with one clear line.
"""
from __future__ import annotations

import os
import random
import subprocess
import wave
from collections.abc import Iterator
from pathlib import Path

import pytest

# Two cores shared with other jobs on CI: spinning OpenMP workers make torch many times slower.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
NEEDS_CORPUS = "needs ../shared/data (whole corpus)"  # the skip reason pytest's summary shows
SAMPLES = Path(__file__).resolve().parent / "data"
# label7 -> a face photo (tight crops, like the corpus's): a broad smile; another person, neutral
FACES = {"joy": SAMPLES / "faces" / "joy_eileen_collins.jpg", "neutral": SAMPLES / "faces" / "neutral_grace_hopper.jpg"}
JOY_FACE, OTHER_FACE = FACES["joy"], FACES["neutral"]
FACE_PHOTOS = tuple(FACES.values())
# one CREMA-D speaker saying one sentence: label7 -> clip
VOICES = {label: SAMPLES / "speech" / f"1005_MTI_{code}_XX.opus"
          for label, code in (("joy", "HAP"), ("sadness", "SAD"), ("anger", "ANG"), ("fear", "FEA"))}
HAPPY_SPEECH = VOICES["joy"]  # "Maybe tomorrow it will be cold.", 3.5 s
HAPPY_SENTENCE = "maybe tomorrow it will be cold"
TORCH_THREADS = 2


def plotly_text(text: str) -> str:
    """A plotly title as a person reads it: its lines joined (the figures break them for phones), bold and
    HTML entities gone."""
    import html
    import re

    return html.unescape(re.sub(r"</?b>", "", (text or "").replace("<br>", " ")))


def ffmpeg_exe() -> str:
    """The ffmpeg binary bundled with imageio-ffmpeg (a runtime dependency)."""
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def ffmpeg(*args: str | Path) -> None:
    """Run the bundled ffmpeg quietly; raise with its stderr on failure."""
    cmd = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-nostdin", "-y", "-threads", "1", *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"ffmpeg failed: {' '.join(cmd)}\n{proc.stderr}")


@pytest.fixture(scope="session", autouse=True)
def _private_dirs(tmp_path_factory) -> Iterator[None]:
    """The app's data dir and feature cache in the session's temp dir unless the run sets them: a test run
    never writes into someone's ~/.emoweb (real clips of a child) or ~/.cache/emoweb."""
    with pytest.MonkeyPatch.context() as mp:
        home = tmp_path_factory.mktemp("emoweb_home")
        for name, folder in (("EMOWEB_DATA_DIR", "data"), ("EMOWEB_FEATURE_CACHE", "features")):
            if not os.environ.get(name):
                mp.setenv(name, str(home / folder))
        yield


SHIPPED_CHECKPOINTS = Path(__file__).resolve().parents[1] / "models" / "checkpoints"


def _checkpoint_stamps() -> dict[Path, tuple[int, int]]:
    return {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(SHIPPED_CHECKPOINTS.rglob("*")) if p.is_file()}


@pytest.fixture(autouse=True)
def _shipped_checkpoints_untouched() -> Iterator[None]:
    """A test that trains or calibrates must write into its own folder (`--out`, `--checkpoints`): one that
    forgot overwrote the shipped MER-SEM-MBT checkpoint once. Fails the test that changed a shipped file."""
    before = _checkpoint_stamps()
    yield
    after = _checkpoint_stamps()
    changed = sorted(str(p.relative_to(SHIPPED_CHECKPOINTS)) for p in before.keys() | after.keys() if before.get(p) != after.get(p))
    assert not changed, f"this test wrote into the shipped checkpoints: {', '.join(changed)}"


def needs_corpus(path: Path) -> Path:
    """`path` if it exists; otherwise skip the test: it reads a corpus that is not in the repository."""
    if not path.exists():
        pytest.skip(f"{NEEDS_CORPUS}: {path} is absent")
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The whole corpora (../shared/data), for tests that read a corpus or its manifests; skips without it."""
    return needs_corpus(SHARED_DATA)


@pytest.fixture(scope="session")
def joy_face() -> Path:
    return JOY_FACE


@pytest.fixture(scope="session")
def happy_speech() -> Path:
    return HAPPY_SPEECH


@pytest.fixture(scope="session")
def composite_clip(joy_face: Path, happy_speech: Path, tmp_path_factory) -> Path:
    """One H.264/AAC composite mp4 (~3.5 s): a smiling face + a CREMA-D 'happy' voice saying the sentence above."""
    from emoweb.learning import composite

    out = tmp_path_factory.mktemp("composite") / "joy_cold.mp4"
    return composite.render(joy_face, happy_speech, out)


@pytest.fixture(scope="session")
def extractor():
    """FeatureExtractor on the default (embedded) profile, 2 torch threads; backbones load lazily, once."""
    import torch

    from emoweb.config import get_settings
    from emoweb.pipeline.features import FeatureExtractor

    torch.set_num_threads(TORCH_THREADS)
    settings = get_settings()
    if not settings.threads:
        import dataclasses

        settings = dataclasses.replace(settings, threads=TORCH_THREADS)
    return FeatureExtractor(settings)


def write_wav(path: Path, samples, rate: int = 16_000) -> Path:
    """Mono 16-bit wav from float samples in [-1, 1]."""
    import numpy as np

    pcm = (np.clip(np.asarray(samples, dtype=np.float32), -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return path


def make_bad_inputs(directory: Path) -> dict[str, Path]:
    """Inputs that must each fail with one `MediaError` line naming the problem (name -> path).

    Self-contained (the media is synthesised with the bundled ffmpeg, no shared data needed):
    missing, zero_bytes, text_as_mp4, random_bytes_mp4, no_av_stream (subtitle-only mp4),
    zero_length (wav header, no samples), unsupported_video_codec (avi whose FourCC no decoder knows),
    unsupported_audio_codec (wav with an unknown format tag).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}

    out["missing"] = directory / "does_not_exist.mp4"

    out["zero_bytes"] = directory / "zero_bytes.mp4"
    out["zero_bytes"].write_bytes(b"")

    out["text_as_mp4"] = directory / "notes.mp4"
    out["text_as_mp4"].write_text("this is a text file, not a video\n" * 20, encoding="utf-8")

    out["text_file"] = directory / "notes.txt"  # ffmpeg's tty demuxer would play it as ANSI-art video
    out["text_file"].write_text("# My notes\n\nThe clip from Tuesday: she smiled at the dog.\n" * 20, encoding="utf-8")

    out["random_bytes_mp4"] = directory / "random.mp4"
    out["random_bytes_mp4"].write_bytes(random.Random(0).randbytes(64 * 1024))

    srt = directory / "subs.srt"
    srt.write_text("1\n00:00:00,000 --> 00:00:01,000\nhello\n", encoding="utf-8")
    out["no_av_stream"] = directory / "subtitles_only.mp4"
    ffmpeg("-i", srt, "-c:s", "mov_text", out["no_av_stream"])

    out["zero_length"] = write_wav(directory / "zero_length.wav", [])

    avi = directory / "mjpeg.avi"
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x64:rate=10:duration=1", "-c:v", "mjpeg", avi)
    data = avi.read_bytes()
    assert b"MJPG" in data
    out["unsupported_video_codec"] = directory / "unknown_fourcc.avi"
    out["unsupported_video_codec"].write_bytes(data.replace(b"MJPG", b"ZQZQ"))
    avi.unlink()

    tone = write_wav(directory / "tone.wav", [0.1] * 8000)
    data = bytearray(tone.read_bytes())
    fmt = data.find(b"fmt ") + 8  # WAVEFORMATEX.wFormatTag follows the chunk id and size
    data[fmt : fmt + 2] = b"\x99\x99"
    out["unsupported_audio_codec"] = directory / "unknown_format.wav"
    out["unsupported_audio_codec"].write_bytes(bytes(data))
    tone.unlink()
    return out


@pytest.fixture(scope="session")
def bad_inputs(tmp_path_factory) -> dict[str, Path]:
    return make_bad_inputs(tmp_path_factory.mktemp("bad_inputs"))


def shipped_checkpoint(name: str, max_mib: float):
    """The shipped embedded checkpoint of `name` and its card, after the checks every model's card
    must pass (small file, label7, val and dev metrics, composite training pairs); skips if absent."""
    from models import LABEL7, registry

    loaded = registry.load(name, "embedded")
    if loaded is None:
        pytest.skip(f"no shipped {name} checkpoint for the embedded profile")
    model, card = loaded
    weights, _ = registry.checkpoint_paths(name, "embedded")
    assert weights.stat().st_size < max_mib * 2**20
    assert card["labels"] == list(LABEL7) and {"val", "dev"} <= set(card["metrics"])
    assert any(k.startswith("composite:") for k in card["data"]["counts"])
    return model, card
