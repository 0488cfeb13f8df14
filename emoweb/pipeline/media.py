"""Decode any reasonable clip into N sampled frames and 16 kHz mono audio, without holding the whole video.

Video and audio containers go through PyAV (FFmpeg; one track's reading and the sound in `tracks`);
still images through Pillow (EXIF rotation applied).
Every failure becomes one `MediaError` line that names the problem.
"""
from __future__ import annotations

import hashlib
import mimetypes
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from emoweb.errors import MediaError
from emoweb.pipeline.tracks import (
    SAMPLE_RATE,
    Packets,
    choose_audio,
    is_cover,
    is_default,
    track_end,
    track_start,
)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
MAX_FRAME_SIDE = 640  # frames are downscaled on decode: faces and display never need more
MIN_DURATION = 0.05
# A video whose frames end less than this before its declared end is not called truncated: a file that
# declares (almost) no duration, e.g. every frame stamped 0, has degenerate timing, not a cut-off tail.
TRUNCATED_GAP = 0.1
MAX_NAME_CHARS = 120  # longest file name quoted in a message; longer ones keep their start and extension
_JOINERS = {"\u200c", "\u200d"}  # format characters that are part of normal text (scripts, emoji sequences)


@dataclass
class DecodedClip:
    """What a file holds, reduced to what the models use."""

    path: Path
    sha256: str
    kind: str  # "video" | "audio" | "image"
    duration: float  # analysed seconds (after the cap)
    full_duration: float  # seconds in the file
    frames: np.ndarray | None  # [N, H, W, 3] uint8 RGB
    frame_times: list[float]
    audio: np.ndarray | None  # [S] float32 in [-1, 1] at 16 kHz
    warnings: list[str] = field(default_factory=list)

    @property
    def has_video(self) -> bool:
        return self.frames is not None and len(self.frames) > 0

    @property
    def has_audio(self) -> bool:
        return self.audio is not None and self.audio.size > 0


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """Content hash, streamed: identifies a re-upload of the same clip."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


# notes that say what kind of file a clip is (a photo has no sound, a sound file no pictures): information the
# person chose, not a fault (`reanalyse.problems`)
STILL_IMAGE_NOTE = "still image: no audio"
AUDIO_ONLY_NOTE_END = ": audio only"


def _escaped(text: str) -> str:
    """`text` with control and format characters and lone surrogates escaped (\\n, \\x1b, \\u202e, \\udcff)."""
    return "".join(
        ascii(ch)[1:-1] if unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Zl", "Zp") and ch not in _JOINERS else ch
        for ch in text
    )


def display_name(path: str | Path) -> str:
    """A file name as quoted in a one-line message.

    Uploaded names are arbitrary: a newline, carriage return, terminal escape or bidi override in one
    would split the error line or disguise it, so control and format characters are shown escaped
    (\\n, \\x1b, \\u202e), and so are the lone surrogates that stand for bytes that are not UTF-8
    (\\udcff); a name of hundreds of characters is cut, keeping its start and extension.
    """
    name = _escaped(Path(path).name)
    if len(name) > MAX_NAME_CHARS:
        suffix = Path(name).suffix if len(Path(name).suffix) <= 12 else ""
        name = name[: MAX_NAME_CHARS - len(suffix) - 1] + "…" + suffix
    return name


def check_file(path: Path) -> None:
    """Raise MediaError when `path` is missing, not a file or empty (cheap: before anything loads)."""
    if not path.exists():
        folder = path.parent
        missing = "" if folder.is_dir() else f" (its folder {_escaped(str(folder))} does not exist)"
        raise MediaError(f"file not found: {display_name(path)}{missing}")
    if not path.is_file():
        raise MediaError(f"not a file: {display_name(path)}")
    if path.stat().st_size == 0:
        raise MediaError(f"empty file (0 bytes): {display_name(path)}")


def _downscale(img: np.ndarray) -> np.ndarray:
    h, w = img.shape[:2]
    scale = MAX_FRAME_SIDE / max(h, w)
    if scale >= 1:
        return img
    return np.asarray(Image.fromarray(img).resize((max(1, round(w * scale)), max(1, round(h * scale)))))


@contextmanager
def _image_errors(path: Path) -> Iterator[None]:
    """Pillow's failures on `path` as one MediaError line."""
    try:
        yield
    except (UnidentifiedImageError, OSError) as exc:
        raise MediaError(f"not a readable image: {display_name(path)} ({exc.__class__.__name__})") from None


def _decode_image(path: Path, sha: str) -> DecodedClip:
    with _image_errors(path), Image.open(path) as im:
        im = ImageOps.exif_transpose(im).convert("RGB")
        frame = _downscale(np.asarray(im))
    # say what is missing, as the container path does for a video without sound
    return DecodedClip(path, sha, "image", 0.0, 0.0, frame[None], [0.0], None, [STILL_IMAGE_NOTE])


def upright(frame: av.VideoFrame, stream: av.stream.Stream, max_side: int | None = None) -> np.ndarray:
    """[H, W, 3] uint8 RGB as the frame is meant to be shown: phones store portrait video as landscape
    pixels plus a rotation (display-matrix side data, counter-clockwise degrees; older files a clockwise
    `rotate` tag). Analysis and the lesson writer both read frames through here, so a clip is never turned
    one way for the models and another way for the caregiver. `max_side`: the longer side is scaled down
    to at most this many pixels while converting (FFmpeg's scaler: a tenth of the time of scaling after);
    None: full resolution."""
    ccw = frame.rotation
    if not ccw:
        tag = next((v for k, v in stream.metadata.items() if k.lower() == "rotate"), "0")
        try:
            ccw = -round(float(tag))
        except ValueError:
            ccw = 0
    turns = round(ccw / 90) % 4
    scale = 1.0 if max_side is None else min(1.0, max_side / max(frame.width, frame.height))
    if scale < 1.0:
        arr = frame.reformat(width=max(2, round(frame.width * scale)), height=max(2, round(frame.height * scale)), format="rgb24",
                             interpolation="AREA").to_ndarray()
    else:
        arr = frame.to_ndarray(format="rgb24")
    return np.ascontiguousarray(np.rot90(arr, turns)) if turns else arr


def _sample_times(duration: float, n: int) -> list[float]:
    """Centres of n equal slices of the clip: uniform coverage, never the very first/last frame."""
    return [duration * (i + 0.5) / n for i in range(n)]


def _read_frames(
    container, stream, times: list[float], origin: float
) -> tuple[list[np.ndarray], list[float], int]:
    """One sequential pass, keeping only the frame at or after each target time (seconds from `origin`,
    the clip's first timestamp); also the number of undecodable packets skipped."""
    stream.thread_type = "AUTO"
    frames: list[np.ndarray] = []
    stamps: list[float] = []
    last = None
    i = 0
    decoded = Packets(container, stream)
    for frame in decoded:
        t = float(frame.time) - origin if frame.time is not None else (len(stamps) and stamps[-1])
        last = (frame, t)
        while i < len(times) and t + 1e-6 >= times[i]:
            frames.append(upright(frame, stream, MAX_FRAME_SIDE))
            stamps.append(round(t, 3))
            i += 1
        if i >= len(times):
            break
    if last is not None and i < len(times):
        # the stream ended: its last frame stays on screen for about one frame interval, so it stands for
        # targets that close (short clips, low frame rates); later targets are missing (truncated file)
        interval = 1.0 / float(stream.average_rate) if stream.average_rate else 0.1
        while i < len(times) and times[i] <= last[1] + 1.5 * interval:
            frames.append(upright(last[0], stream, MAX_FRAME_SIDE))
            stamps.append(round(last[1], 3))
            i += 1
    if not frames and last is not None:  # a one-frame or very short video: use what there is
        frames.append(upright(last[0], stream, MAX_FRAME_SIDE))
        stamps.append(round(last[1], 3))
    return frames, stamps, decoded.skipped


def _timeline(container, streams) -> tuple[float, float]:
    """(origin, seconds): the first timestamp of the chosen streams and the clip's length from it.

    Webcam and conference recorders start their clocks at 30-60 s, edit lists shift a track, a codec's
    priming samples start it below 0: every time in the clip is counted from `origin`. A header's
    duration cannot be trusted then (Matroska's is the end time, MPEG-TS's the span), so such files and
    files with no declared duration (browser MediaRecorder webm) are measured from their packets.
    """
    origin = min((t for t in map(track_start, streams) if t is not None), default=0.0)
    ends = [t for t in map(track_end, streams) if t is not None]
    if len(ends) == len(streams):
        return origin, max(ends) - origin
    if origin == 0 and container.duration:
        return origin, container.duration / av.time_base
    end = None
    for packet in container.demux(*streams):
        if packet.pts is not None and packet.time_base is not None:
            t = float((packet.pts + (packet.duration or 0)) * packet.time_base)
            end = t if end is None else max(end, t)
    container.seek(0)
    return origin, max(0.0, end - origin) if end is not None else 0.0


TEXT_DEMUXERS = frozenset({"tty"})  # ffmpeg plays a text file (.txt, .nfo, .ans) as ANSI-art video: not a clip


def _open(path: Path) -> av.container.InputContainer:
    try:
        container = av.open(str(path), metadata_errors="ignore")
    except av.error.InvalidDataError:
        raise MediaError(f"not a media file or corrupt container: {display_name(path)}") from None
    except av.error.FFmpegError as exc:
        raise MediaError(f"cannot open {display_name(path)}: {exc.strerror or exc.__class__.__name__}") from None
    if container.format.name in TEXT_DEMUXERS:
        container.close()
        raise MediaError(f"not a media file (a text file): {display_name(path)}")
    return container


def with_duration(src: str | Path, dst: str | Path) -> Path:
    """`src` when its container declares how long it is, else a copy at `dst` that does: its audio and
    video packets muxed again, not re-encoded (the same pictures and sound, written with a duration and
    an index). A browser's MediaRecorder writes webm with neither, so a player shows "Infinity" for its
    length and cannot seek; ffmpeg's muxer writes both when the file is closed. `dst` is written whole
    (a temporary name, then renamed) and reused while it is newer than `src`. Raises MediaError when
    `src` cannot be read (its one line, as `decode` words it)."""
    src, dst = Path(src), Path(dst)
    if dst.is_file() and dst.stat().st_mtime >= src.stat().st_mtime:
        return dst
    with _open(src) as container:
        if container.duration:
            return src
        part = dst.with_name(f".{dst.stem}.part{dst.suffix}")
        streams = [s for s in container.streams if s.type in ("audio", "video")]
        try:
            with av.open(str(part), "w") as out:
                copies = {s.index: out.add_stream_from_template(s) for s in streams}
                for packet in container.demux(*streams):
                    if packet.dts is None:  # the demuxer's end-of-stream marker
                        continue
                    packet.stream = copies[packet.stream.index]
                    out.mux(packet)
        except av.error.FFmpegError as exc:
            part.unlink(missing_ok=True)
            raise MediaError(f"cannot read {display_name(src)}: {exc.strerror or exc.__class__.__name__}") from None
    part.replace(dst)
    return dst


def check_media(path: str | Path) -> None:
    """Raise the MediaError `decode` would for a file it cannot even open: missing, empty, a text
    file, not a media container, no audio or video track it has a decoder for, not an image Pillow
    reads. Reads only the header (milliseconds), so every entry point that takes a file calls it
    before the backbones and models load; a file that passes can still fail later in `decode` (a
    corrupt stream, no decodable audio or video)."""
    path = Path(path)
    check_file(path)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        with _image_errors(path), Image.open(path):
            return
    container = _open(path)
    try:
        _streams(container, path)
    finally:
        container.close()


CLIP_TYPES = ("video", "audio", "image")  # the MIME families a clip can be
TRANSPORT_STREAMS = {".mts", ".m2ts"}  # camcorder video that `mimetypes` calls "model/vnd.mts"
SYSTEM_FILES = {"thumbs.db", "desktop.ini"}  # what Windows leaves in a folder of photos and videos


def folder_clips(folder: Path) -> tuple[list[Path], list[str]]:
    """The files of `folder` that may be clips, sorted, and the names of the other entries: subfolders
    (as "name/": not searched, so a folder is never walked into a whole photo library), hidden files
    (".DS_Store", "._clip.mp4"), SYSTEM_FILES, and files whose name says they are something else
    (`mimetypes`: .txt, .pdf, .json, .csv), and a file whose name says nothing (no or an unknown extension:
    README, LICENSE, notes) but whose first bytes are plain text. Any other such file is kept: its content
    decides (`check_media`).

    Why: a parent's phone folder holds notes and thumbnails beside the clips; they are not clips that
    failed, and listing them as errors hides the clips that really did."""
    clips, skipped = [], []
    for path in sorted(folder.iterdir()):
        if path.is_dir():
            skipped.append(f"{path.name}/")
            continue
        kind, _ = mimetypes.guess_type(path.name, strict=False)
        other = kind is not None and kind.split("/")[0] not in CLIP_TYPES and path.suffix.lower() not in TRANSPORT_STREAMS
        if path.name.startswith(".") or path.name.lower() in SYSTEM_FILES or other or (kind is None and _plain_text(path)):
            skipped.append(path.name)
        else:
            clips.append(path)
    return clips, skipped


def _plain_text(path: Path, probe: int = 4096) -> bool:
    """Whether the file starts as text (UTF-8, no NUL byte): a note, never a clip (media starts with binary
    headers). An unreadable file is no text: `check_media` says why."""
    try:
        with open(path, "rb") as f:
            head = f.read(probe)
    except OSError:
        return False
    if not head or b"\0" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:  # a multi-byte character cut at the probe's end is still text
        return exc.start >= len(head) - 3
    return True


def decode(path: str | Path, n_frames: int = 16, max_seconds: float = 60.0) -> DecodedClip:
    """Decode `path`: up to `n_frames` uniformly sampled frames and mono 16 kHz audio, capped at `max_seconds`."""
    path = Path(path)
    check_file(path)
    sha = file_sha256(path)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return _decode_image(path, sha)
    container = _open(path)
    try:
        return _decode_container(container, path, sha, n_frames, max_seconds)
    except av.error.FFmpegError as exc:
        raise MediaError(f"corrupt or truncated media: {display_name(path)} ({exc.strerror or exc.__class__.__name__})") from None
    finally:
        container.close()


def _declared(stream: av.stream.Stream, origin: float, span: float) -> float:
    """Where the stream says it ends on the clip's timeline (capped at the analysed span): a track that
    starts or ends at another time than the clip is not truncated."""
    end = track_end(stream)
    return span if end is None else min(span, end - origin)


def _streams(container, path: Path) -> tuple[list, av.stream.Stream | None, list, list[str]]:
    """(video tracks that are not cover pictures, the one to analyse or None, decodable audio tracks,
    the kinds of track without a decoder); MediaError when there is nothing to decode."""
    pictures = [s for s in container.streams.video if not is_cover(s)]
    video = next((s for s in sorted(pictures, key=lambda s: not is_default(s)) if s.codec_context is not None), None)
    audios = [s for s in container.streams.audio if s.codec_context is not None]
    # a stream FFmpeg can demux but has no decoder for has no codec context
    unsupported = sorted({s.type for s in (*pictures, *container.streams.audio) if s.codec_context is None})
    if video is None and not audios:
        if unsupported:
            raise MediaError(f"unsupported codec: no decoder for the {' or '.join(unsupported)} stream in {display_name(path)}")
        raise MediaError(f"no audio or video stream in {display_name(path)}")
    return pictures, video, audios, unsupported


def _decode_container(container, path: Path, sha: str, n_frames: int, max_seconds: float) -> DecodedClip:
    pictures, video, audios, unsupported = _streams(container, path)
    warnings: list[str] = []
    origin, full = _timeline(container, [s for s in (video, *audios) if s is not None])
    if full > max_seconds:
        warnings.append(f"clip is {full:.1f} s long: only the first {max_seconds:.0f} s were analysed")
    span = min(full, max_seconds) if full > 0 else max_seconds

    if video is not None and len(pictures) > 1:
        warnings.append(f"{len(pictures)} video tracks: used track {pictures.index(video) + 1}"
                        + (" (the default)" if is_default(video) else ""))
    frames = stamps = None
    if video is not None:
        got, got_t, skipped = _read_frames(container, video, _sample_times(span, n_frames), origin)
        if got:
            frames, stamps = np.stack(_same_size(got)), got_t
            if skipped:
                warnings.append(f"corrupt video stream: {skipped} undecodable packets skipped")
        else:
            warnings.append("the video stream has no decodable frames" + (" (corrupt)" if skipped else ""))
        container.seek(0)
    wav = None
    if audios:
        track, wav, skipped, notes = choose_audio(container, audios, max_seconds, origin)
        warnings += notes
        if wav is None:
            warnings.append("the audio stream has no decodable samples" + (" (corrupt)" if skipped else ""))
        elif skipped:
            warnings.append(f"corrupt audio stream: {skipped} undecodable packets skipped")
    if frames is None and wav is None:
        if full < MIN_DURATION:
            raise MediaError(f"zero-length clip: {display_name(path)}")
        raise MediaError(f"no decodable audio or video in {display_name(path)} (corrupt or unsupported codec)")
    audio_seconds = 0.0 if wav is None else wav.size / SAMPLE_RATE
    video_seconds = min(span, full) if full > 0 else 0.0
    if frames is not None and len(frames) < n_frames:  # fewer frames than targets
        video_seconds = stamps[-1]
        shown = 1.0 / float(video.average_rate) if video.average_rate else 0.0  # how long the last frame shows
        if _declared(video, origin, span) - video_seconds - shown > TRUNCATED_GAP:  # ended well before its end
            warnings.append(f"truncated or corrupt video: only {video_seconds:.1f} s of {span:.1f} s could be decoded")
    if wav is not None and audio_seconds < _declared(track, origin, span) - 0.5:
        warnings.append(f"truncated or corrupt audio: only {audio_seconds:.1f} s of {span:.1f} s could be decoded")
    duration = max(audio_seconds, video_seconds)
    if duration < MIN_DURATION and frames is None:
        raise MediaError(f"zero-length clip: {display_name(path)}")
    if frames is None and video is None:
        if "video" in unsupported:
            warnings.append("video codec not supported: audio only")
        else:
            warnings.append(("only a cover picture, no video track" if len(pictures) < len(container.streams.video)
                             else "no video track") + AUDIO_ONLY_NOTE_END)
    if wav is None and not audios:
        warnings.append("audio codec not supported: video only" if "audio" in unsupported else "no audio track: video only")
    kind = "video" if frames is not None else "audio"
    return DecodedClip(path, sha, kind, round(duration, 3), round(full, 3), frames, stamps or [], wav, warnings)


def _same_size(frames: list[np.ndarray]) -> list[np.ndarray]:
    """Variable-resolution streams exist; stacking needs one size."""
    h, w = frames[0].shape[:2]
    return [f if f.shape[:2] == (h, w) else np.asarray(Image.fromarray(f).resize((w, h))) for f in frames]

