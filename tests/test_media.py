"""Media ingestion: every container and still-image format we accept, frame sampling, audio, caps, hashes, bad input."""
from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import ffmpeg, write_wav
from emoweb.errors import MediaError
from emoweb.pipeline import media, tracks

CUT = 1.5  # seconds kept from the composite for the container variants

# name -> (suffix, ffmpeg codec arguments)
VIDEO_FORMATS = {
    "mp4": ("mp4", ["-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac"]),
    "webm": ("webm", ["-c:v", "libvpx", "-deadline", "realtime", "-cpu-used", "8", "-b:v", "300k", "-c:a", "libopus"]),
    "mov": ("mov", ["-c:v", "mjpeg", "-c:a", "pcm_s16le"]),
    "mkv": ("mkv", ["-c:v", "libx264", "-preset", "ultrafast", "-c:a", "flac"]),
    "avi": ("avi", ["-c:v", "mpeg4", "-c:a", "libmp3lame"]),
}
AUDIO_FORMATS = {
    "wav": ["-c:a", "pcm_s16le"],
    "flac": ["-c:a", "flac"],
    "mp3": ["-c:a", "libmp3lame"],
    "m4a": ["-c:a", "aac"],
    "ogg": ["-c:a", "libvorbis"],
}
# bad input name -> words the one-line error must contain
BAD_INPUT_ERRORS = {
    "missing": r"not found",
    "zero_bytes": r"empty|0 bytes",
    "text_as_mp4": r"not a media file",
    "text_file": r"not a media file",
    "random_bytes_mp4": r"not a media file|corrupt",
    "no_av_stream": r"no audio or video stream",
    "zero_length": r"zero-length",
    "unsupported_video_codec": r"unsupported codec",
    "unsupported_audio_codec": r"unsupported codec",
}


@pytest.fixture(scope="module")
def variants(composite_clip: Path, happy_speech: Path, tmp_path_factory) -> dict[str, Path]:
    """The composite cut to 1.5 s in every video container, the speech clip in every audio format, and more."""
    d = tmp_path_factory.mktemp("media_variants")
    out: dict[str, Path] = {}
    for name, (suffix, codec) in VIDEO_FORMATS.items():
        out[name] = d / f"clip.{suffix}"
        ffmpeg("-i", composite_clip, "-t", CUT, *codec, out[name])
    for name, codec in AUDIO_FORMATS.items():
        out[f"audio_{name}"] = d / f"speech.{name}"
        ffmpeg("-i", happy_speech, "-vn", *codec, out[f"audio_{name}"])
    out["video_no_audio"] = d / "silent_film.mp4"
    ffmpeg("-i", composite_clip, "-t", CUT, "-an", "-c:v", "copy", out["video_no_audio"])
    out["faststart"] = d / "faststart.mp4"
    ffmpeg("-i", composite_clip, "-c", "copy", "-movflags", "+faststart", out["faststart"])
    return out


@pytest.fixture(scope="module")
def joy_image(joy_face: Path) -> np.ndarray:
    with Image.open(joy_face) as im:
        return np.asarray(im.convert("RGB"))


def _check_frames(clip: media.DecodedClip, n: int, duration: float) -> None:
    assert clip.frames is not None and clip.frames.ndim == 4 and clip.frames.shape[-1] == 3
    assert clip.frames.dtype == np.uint8
    assert len(clip.frames) == len(clip.frame_times) == n
    times = np.array(clip.frame_times)
    assert np.all(np.diff(times) > 0), f"timestamps not increasing: {clip.frame_times}"
    assert times[0] >= 0 and times[-1] <= duration + 1e-3


def _check_audio(clip: media.DecodedClip, seconds: float, tol: float = 0.15) -> None:
    assert clip.audio is not None and clip.audio.ndim == 1 and clip.audio.dtype == np.float32
    assert abs(clip.audio.size / media.SAMPLE_RATE - seconds) < tol, clip.audio.size / media.SAMPLE_RATE
    assert float(np.abs(clip.audio).max()) <= 1.0
    assert float(np.sqrt(np.mean(clip.audio**2))) > 1e-3  # speech, not silence


# --- good inputs ------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", sorted(VIDEO_FORMATS))
def test_video_containers(variants, fmt: str) -> None:
    clip = media.decode(variants[fmt], n_frames=8)
    assert clip.kind == "video" and clip.has_video and clip.has_audio
    assert abs(clip.duration - CUT) < 0.15, clip.duration
    _check_frames(clip, 8, clip.duration)
    assert clip.frames.shape[1:3] == (256, 256)
    _check_audio(clip, CUT)
    assert not clip.warnings


def test_composite_defaults(composite_clip: Path) -> None:
    """Default sampling: 16 frames spread over the whole clip, audio 16 kHz mono for its full length."""
    clip = media.decode(composite_clip)
    assert clip.kind == "video" and 3.0 < clip.duration < 4.0
    _check_frames(clip, 16, clip.duration)
    times = np.array(clip.frame_times)
    assert times[0] < 0.3 and times[-1] > clip.duration - 0.4  # uniform coverage, start to end
    steps = np.diff(times)
    assert steps.max() < 2.5 * steps.min() + 0.05
    _check_audio(clip, clip.duration, tol=0.2)
    assert clip.full_duration == pytest.approx(clip.duration, abs=0.2)


@pytest.mark.parametrize("fmt", sorted(AUDIO_FORMATS))
def test_audio_only(variants, happy_speech: Path, fmt: str) -> None:
    reference = media.decode(happy_speech)
    clip = media.decode(variants[f"audio_{fmt}"])
    assert clip.kind == "audio" and not clip.has_video and clip.frames is None and clip.frame_times == []
    _check_audio(clip, reference.audio.size / media.SAMPLE_RATE, tol=0.1)  # codecs pad a little (mp3, aac)
    assert any("video" in w for w in clip.warnings)  # says the visual modality is missing


def test_audio_is_16k_mono_from_any_rate(tmp_path: Path) -> None:
    """A 44.1 kHz stereo file comes out as 16 kHz mono with the same length and pitch."""
    src = tmp_path / "stereo44k.wav"
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100:duration=1", "-ac", "2", src)
    clip = media.decode(src)
    assert clip.audio.size == pytest.approx(media.SAMPLE_RATE, abs=200)
    spectrum = np.abs(np.fft.rfft(clip.audio[:16000]))
    assert abs(np.argmax(spectrum) * media.SAMPLE_RATE / 16000 - 440) < 5


@pytest.mark.parametrize("suffix", ["jpg", "png", "webp"])
def test_images(joy_image: np.ndarray, tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"face.{suffix}"
    Image.fromarray(joy_image).save(path, **({} if suffix == "png" else {"quality": 95}))
    clip = media.decode(path)
    assert clip.kind == "image" and clip.has_video and not clip.has_audio
    assert clip.frames.shape == (1, *joy_image.shape) and clip.frame_times == [0.0]
    assert np.abs(clip.frames[0].astype(int) - joy_image).mean() < 8  # lossy codecs differ a little


def test_exif_rotation_applied(tmp_path: Path) -> None:
    """Phones store portrait photos landscape plus an EXIF Orientation tag: decode must rotate them upright."""
    stored = np.full((100, 200, 3), 255, np.uint8)  # landscape, as stored
    stored[:20, :20] = (255, 0, 0)  # red marker in the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    path = tmp_path / "portrait.jpg"
    Image.fromarray(stored).save(path, exif=exif, quality=95)
    frame = media.decode(path).frames[0]
    assert frame.shape[:2] == (200, 100)  # now portrait
    top_right = frame[:20, -20:].reshape(-1, 3).mean(0)
    assert top_right[0] > 200 and top_right[1] < 60 and top_right[2] < 60  # the marker moved with the rotation


def test_large_frames_downscaled(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    Image.new("RGB", (1920, 1080), (10, 200, 30)).save(path)
    frame = media.decode(path).frames[0]
    assert max(frame.shape[:2]) == media.MAX_FRAME_SIDE and frame.shape[1] > frame.shape[0]


def test_length_cap_is_reported(composite_clip: Path) -> None:
    clip = media.decode(composite_clip, n_frames=4, max_seconds=1.0)
    assert clip.duration <= 1.0 + 1e-3 and clip.full_duration > 3.0
    assert clip.audio.size <= media.SAMPLE_RATE
    assert max(clip.frame_times) <= 1.0
    assert any("1 s" in w and "analysed" in w for w in clip.warnings), clip.warnings


def test_no_cap_warning_when_short(composite_clip: Path) -> None:
    assert not media.decode(composite_clip, max_seconds=60).warnings


def test_video_without_audio_is_not_an_error(variants) -> None:
    clip = media.decode(variants["video_no_audio"], n_frames=6)
    assert clip.kind == "video" and not clip.has_audio and clip.audio is None
    _check_frames(clip, 6, clip.duration)
    assert any("audio" in w for w in clip.warnings), clip.warnings


def test_content_hash_stable(composite_clip: Path, tmp_path: Path) -> None:
    expected = hashlib.sha256(composite_clip.read_bytes()).hexdigest()
    copy = shutil.copy(composite_clip, tmp_path / "renamed.mov")
    assert media.decode(composite_clip).sha256 == expected
    assert media.decode(composite_clip, n_frames=3, max_seconds=1).sha256 == expected  # settings do not matter
    assert media.file_sha256(Path(copy)) == expected  # the name does not matter
    other = write_wav(tmp_path / "other.wav", np.zeros(1600))
    assert media.file_sha256(other) != expected


# --- bad inputs -------------------------------------------------------------------------------------


def test_bad_input_catalogue_complete(bad_inputs) -> None:
    assert set(bad_inputs) == set(BAD_INPUT_ERRORS)


@pytest.mark.parametrize("name", sorted(BAD_INPUT_ERRORS))
def test_bad_input_one_line_error(bad_inputs, name: str) -> None:
    path = bad_inputs[name]
    with pytest.raises(MediaError) as info:
        media.decode(path)
    message = str(info.value)
    assert "\n" not in message and message.strip() == message and message
    assert re.search(BAD_INPUT_ERRORS[name], message, re.I), message
    assert path.name in message  # says which file


@pytest.mark.parametrize("source", ["composite", "faststart"])
@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9])
def test_truncated_mp4(variants, composite_clip: Path, tmp_path: Path, source: str, fraction: float) -> None:
    """A cut-off upload: either a one-line MediaError or a valid partial result, never another exception.

    The composite has its index (moov) at the end, so any cut loses it; the faststart copy keeps the
    index first, so a cut leaves decodable leading packets.
    """
    src = composite_clip if source == "composite" else variants["faststart"]
    data = src.read_bytes()
    path = tmp_path / f"cut_{int(fraction * 100)}.mp4"
    path.write_bytes(data[: int(len(data) * fraction)])
    try:
        clip = media.decode(path, n_frames=8)
    except MediaError as exc:
        assert "\n" not in str(exc) and path.name in str(exc)
        return
    assert clip.kind in ("video", "audio")
    assert clip.has_video or clip.has_audio
    if clip.has_video:
        assert len(clip.frames) == len(clip.frame_times) >= 1
        assert np.all(np.diff(clip.frame_times) >= 0)
    if clip.has_audio:
        assert np.isfinite(clip.audio).all() and np.abs(clip.audio).max() <= 1.0


def test_truncated_faststart_keeps_leading_part(variants, tmp_path: Path) -> None:
    """With the index first, 90% of the file still decodes to frames (the tail is just missing)."""
    data = variants["faststart"].read_bytes()
    path = tmp_path / "cut.mp4"
    path.write_bytes(data[: int(len(data) * 0.9)])
    clip = media.decode(path, n_frames=8)
    assert clip.has_video and len(clip.frames) >= 1
    assert clip.duration < clip.full_duration  # what was decoded, not what the header promised
    assert any("truncated" in w for w in clip.warnings), clip.warnings  # never silently


@pytest.mark.parametrize("seconds", [0.5, 1.0])
def test_short_clip_still_gives_n_frames(composite_clip: Path, tmp_path: Path, seconds: float) -> None:
    """Fewer source frames near the end than targets: the last frame stands in; always N frames, in order."""
    path = tmp_path / "short.mp4"
    ffmpeg("-i", composite_clip, "-t", seconds, "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac", path)
    clip = media.decode(path, n_frames=16)
    assert len(clip.frames) == len(clip.frame_times) == 16
    assert np.all(np.diff(clip.frame_times) >= 0) and clip.frame_times[-1] <= clip.duration
    assert not clip.warnings


def test_recording_without_duration_header(composite_clip: Path, tmp_path: Path) -> None:
    """Browser MediaRecorder webm has no duration in its header: frames must still cover the whole clip."""
    path = tmp_path / "recorded.webm"
    ffmpeg("-i", composite_clip, "-c:v", "libvpx", "-deadline", "realtime", "-cpu-used", "8", "-c:a", "libopus",
           "-f", "webm", "-live", "1", path)
    import av

    with av.open(str(path)) as c:
        assert c.duration is None  # the case under test
    clip = media.decode(path, n_frames=8)
    assert 3.0 < clip.duration < 4.0
    _check_frames(clip, 8, clip.duration)
    assert clip.frame_times[-1] > 2.5


def test_unsupported_video_codec_with_decodable_audio(tmp_path: Path, happy_speech: Path) -> None:
    """An undecodable video stream next to good audio: the audio is used and the result says why there is no video."""
    avi = tmp_path / "mixed.avi"
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x64:rate=10:duration=1", "-i", happy_speech,
           "-t", "1", "-c:v", "mjpeg", "-c:a", "pcm_s16le", avi)
    patched = tmp_path / "mixed_unknown.avi"
    patched.write_bytes(avi.read_bytes().replace(b"MJPG", b"ZQZQ"))
    clip = media.decode(patched)
    assert clip.kind == "audio" and clip.has_audio
    assert any("video" in w and "not supported" in w for w in clip.warnings), clip.warnings


def test_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(MediaError, match="not a file"):
        media.decode(tmp_path)


def test_frames_all_stamped_zero_are_not_called_truncated(tmp_path: Path) -> None:
    """Degenerate timing (every frame at t=0, a file that declares no length) decodes with no note
    claiming the upload was cut off; a real cut-off tail still gets one (`test_truncated_faststart_...`)."""
    from badinputs import _write_video

    frames = [np.full((64, 64, 3), 40 * i, np.uint8) for i in range(6)]
    clip = media.decode(_write_video(tmp_path / "zero_fps.mp4", frames, [0.0] * len(frames)), n_frames=8)
    assert clip.has_video and len(clip.frames) >= 1
    assert not any("truncated" in w for w in clip.warnings), clip.warnings


# issue 17: clips as phones, webcams and voice memos really write them

H264_ARGS = ("-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p")


@pytest.fixture(scope="module")
def portrait_png(joy_face: Path, tmp_path_factory) -> Path:
    """The smiling face upright on a 240x320 (portrait) grey canvas."""
    img = Image.open(joy_face).convert("RGB")
    img.thumbnail((150, 200))
    canvas = Image.new("RGB", (240, 320), (118, 118, 118))
    canvas.paste(img, ((240 - img.width) // 2, (320 - img.height) // 2))
    path = tmp_path_factory.mktemp("portrait") / "upright.png"
    canvas.save(path)
    return path


def _still_clip(png: Path, out: Path, *extra: str) -> Path:
    ffmpeg("-loop", "1", "-framerate", "5", "-i", png, "-t", "1", *H264_ARGS, *extra, out)
    return out


@pytest.mark.parametrize("ccw", [90, 180, 270])
def test_display_matrix_rotation_gives_upright_frames(portrait_png: Path, tmp_path: Path, ccw: int) -> None:
    """Pixels stored turned clockwise by `ccw` degrees plus a display matrix turning them back decode as
    the upright clip does (a wrong turn differs by tens of grey levels)."""
    upright = media.decode(_still_clip(portrait_png, tmp_path / "upright.mp4"), n_frames=4)
    with Image.open(portrait_png) as im:
        im.rotate(-ccw, expand=True).save(tmp_path / "stored.png")
    stored = _still_clip(tmp_path / "stored.png", tmp_path / "stored.mp4")
    tagged = tmp_path / "tagged.mp4"
    ffmpeg("-display_rotation:v:0", str(ccw), "-i", stored, "-c", "copy", tagged)
    clip = media.decode(tagged, n_frames=4)
    assert clip.frames.shape == upright.frames.shape == (4, 320, 240, 3)
    assert np.abs(clip.frames.astype(int) - upright.frames).mean() < 3
    assert clip.warnings == ["no audio track: video only"]


def test_legacy_rotate_tag_gives_upright_frames(portrait_png: Path, tmp_path: Path) -> None:
    """Older files carry a clockwise `rotate` tag (kept by Matroska) instead of a display matrix."""
    upright = media.decode(_still_clip(portrait_png, tmp_path / "upright.mp4"), n_frames=4)
    with Image.open(portrait_png) as im:
        im.rotate(90, expand=True).save(tmp_path / "stored.png")  # the phone's sensor: head to the left
    tagged = _still_clip(tmp_path / "stored.png", tmp_path / "tagged.mkv", "-metadata:s:v:0", "rotate=90")
    clip = media.decode(tagged, n_frames=4)
    assert clip.frames.shape == (4, 320, 240, 3)
    assert np.abs(clip.frames.astype(int) - upright.frames).mean() < 3


def test_silent_default_track_gives_way_to_the_one_with_sound(composite_clip: Path, tmp_path: Path) -> None:
    """The first track is marked default but silent: the second, with the voice, is used and named."""
    two = tmp_path / "two.mp4"
    ffmpeg("-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono", "-i", composite_clip, "-map", "1:v", "-map", "0:a",
           "-map", "1:a", "-c:v", "copy", "-c:a", "aac", "-shortest", "-disposition:a:0", "default",
           "-disposition:a:1", "0", two)
    clip = media.decode(two)
    assert clip.has_audio and float(np.sqrt(np.mean(clip.audio**2))) > 1e-3
    assert "2 audio tracks: used track 2 (the first with sound; the default track is silent)" in clip.warnings


def test_cover_art_is_not_the_video(happy_speech: Path, portrait_png: Path, tmp_path: Path) -> None:
    mp3 = tmp_path / "memo.mp3"
    ffmpeg("-i", happy_speech, "-i", portrait_png, "-map", "0:a", "-map", "1:v", "-c:a", "libmp3lame", "-c:v", "mjpeg",
           "-disposition:v:0", "attached_pic", mp3)
    clip = media.decode(mp3)
    assert clip.kind == "audio" and clip.frames is None and clip.has_audio
    assert "only a cover picture, no video track: audio only" in clip.warnings


def test_downmix_keeps_speech_clear_in_each_channel() -> None:
    """Antiphase channels are inverted, not averaged to silence; a voice on one channel keeps its level;
    ordinary stereo is the mean."""
    t = np.arange(16_000) / 16_000
    voice = (0.3 * np.sin(2 * np.pi * 220 * t) * np.sin(2 * np.pi * 3 * t)).astype(np.float32)
    mono, note = tracks.mix_down(np.stack([voice, -voice]))
    assert np.allclose(mono, voice, atol=1e-6) and note and "out of phase" in note
    mono, note = tracks.mix_down(np.stack([np.zeros_like(voice), voice]))
    assert np.allclose(mono, voice, atol=1e-6) and note is None
    other = np.roll(voice, 4000)
    mono, note = tracks.mix_down(np.stack([voice, other]))
    assert np.allclose(mono, (voice + other) / 2, atol=1e-6) and note is None


def test_audio_starting_after_the_video_keeps_its_place(composite_clip: Path, tmp_path: Path) -> None:
    """An edit list starts the sound 1 s after the pictures: 1 s of silence first, no truncation note."""
    shifted = tmp_path / "shifted.mp4"
    ffmpeg("-i", composite_clip, "-itsoffset", "1", "-i", composite_clip, "-map", "0:v", "-map", "1:a", "-c", "copy", shifted)
    plain, late = media.decode(composite_clip), media.decode(shifted)
    onset = [int(np.argmax(np.abs(c.audio) > 0.01)) / media.SAMPLE_RATE for c in (plain, late)]
    assert abs(onset[1] - onset[0] - 1.0) < 0.05, onset
    assert late.duration == pytest.approx(plain.duration + 1.0, abs=0.1)
    assert not late.warnings


@pytest.mark.parametrize("suffix,offset", [("mkv", 45.0), ("ts", None)])
def test_clock_not_starting_at_zero(composite_clip: Path, tmp_path: Path, suffix: str, offset: float | None) -> None:
    """A recorder whose clock starts at 45 s, and MPEG-TS (starts at 1.4 s): times count from the first
    timestamp, the length is the clip's own."""
    moved = tmp_path / f"moved.{suffix}"
    ffmpeg("-i", composite_clip, "-c", "copy", *(("-output_ts_offset", offset) if offset else ()), moved)
    plain, clip = media.decode(composite_clip), media.decode(moved)
    assert clip.duration == pytest.approx(plain.duration, abs=0.15)
    _check_frames(clip, 16, clip.duration)
    assert clip.frame_times[-1] > 0.8 * clip.duration
    assert not clip.warnings


def test_negative_start_from_a_cut_without_reencoding(composite_clip: Path, tmp_path: Path) -> None:
    """A clip cut with `-ss 1.3 -c copy` starts on the keyframe before the cut: its first packets have
    negative timestamps (pre-roll that an edit list hides). The clip is what comes after the cut."""
    import av

    cut = tmp_path / "cut.mp4"
    ffmpeg("-ss", "1.3", "-i", composite_clip, "-c", "copy", cut)
    with av.open(str(cut)) as c:
        first = next(p for p in c.demux(video=0) if p.pts is not None)
        assert float(first.pts * first.time_base) < -0.5, "the cut has no pre-roll: no negative start to test"
    plain, clip = media.decode(composite_clip), media.decode(cut)
    assert clip.duration == pytest.approx(plain.duration - 1.3, abs=0.15)
    _check_frames(clip, 16, clip.duration)
    assert min(clip.frame_times) >= 0 and clip.frame_times[-1] > 0.8 * clip.duration
    assert not clip.warnings


def test_a_recording_that_declares_no_length_is_shown_from_a_copy_that_does(composite_clip: Path, tmp_path: Path) -> None:
    """A browser's MediaRecorder webm declares no duration (a player shows "Infinity" and cannot seek;
    ffmpeg's `-live 1` writes the same kind of file): the copy shown has the clip's 2 s, the same packets
    (not re-encoded) and the same analysis; it is reused, and a file that declares its length is its own copy."""
    import av

    recording = tmp_path / "sample.webm"
    ffmpeg("-i", composite_clip, "-t", "2", "-c:v", "libvpx", "-c:a", "libopus", "-live", "1", "-f", "webm", recording)
    with av.open(str(recording)) as c:
        assert c.duration is None
    (tmp_path / "shown").mkdir()
    copy = media.with_duration(recording, tmp_path / "shown" / "sample-seekable.webm")
    assert copy == tmp_path / "shown" / "sample-seekable.webm"
    with av.open(str(copy)) as c, av.open(str(recording)) as r:
        assert c.duration / 1e6 == pytest.approx(2.0, abs=0.1)
        assert sum(1 for _ in c.demux(video=0)) == sum(1 for _ in r.demux(video=0))
    assert [f.name for f in copy.parent.iterdir()] == ["sample-seekable.webm"]  # no part file left
    first, again = media.decode(recording), media.decode(copy)
    assert again.frame_times == pytest.approx(first.frame_times, abs=0.05)  # within a frame: sampled from the same length
    assert again.duration == pytest.approx(first.duration, abs=0.05)
    mtime = copy.stat().st_mtime_ns
    assert media.with_duration(recording, copy) == copy and copy.stat().st_mtime_ns == mtime
    assert media.with_duration(composite_clip, tmp_path / "x.mp4") == composite_clip and not (tmp_path / "x.mp4").exists()
