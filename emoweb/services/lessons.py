"""Lesson clips: a labelled clip turned into a short video-modelling clip that names the emotion.

The clip is trimmed to the stretch where the emotion shows most, with a little context either side,
optionally slowed down; the caregiver's word and an emoji face sit on a banner while the stretch
plays, and an end card repeats the word. The original sound is kept. Written with moviepy as
H.264 + AAC (through imageio-ffmpeg's ffmpeg); the source's frames are read upright through
`playback` (a phone's portrait clip stored sideways is shown as the phone shows it). A lesson set
joins several clips, each after a title card ("Mum - joy").

"Shows most" is read from a cheap per-moment timeline (one decode): whether the main person's
face is seen (BlazeFace on frames sampled through the clip) and whether the voice is active
(audio energy). It is not an emotion score per frame: the clip's label is the caregiver's.

Fonts are never fetched: the first bold TTF found among `FONT_CANDIDATES` (Debian's DejaVu or
Liberation) is used, else Pillow's built-in scalable font. No colour-emoji font is assumed: the
emoji is drawn as a yellow face whose eyes, brows and mouth follow the emotion.

Files live in `<data_dir>/lessons/<profile id>/`: `clip-<id>.mp4` and `set-<id>_<id>....mp4`, so
deleting a clip or a profile finds every lesson made from it.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from emoweb.errors import EmoWebError
from emoweb.pipeline import media, playback, tracks
from emoweb.pipeline.quality import window_rms

Progress = Callable[[str], None]

STRETCH_SECONDS = 3.0  # the emotion stretch when none is asked for
CONTEXT_SECONDS = 0.5  # shown before and after the stretch, without the word
END_CARD_SECONDS = 1.5
TITLE_CARD_SECONDS = 1.5
MAX_SLOW = 4.0  # slow-down factors run from 1 (real time) to this
TIMELINE_FPS = 2.0  # frames per second sampled for the face timeline
MAX_TIMELINE_FRAMES = 40
GRID_HZ = 20  # the timeline's resolution for choosing the stretch
VOICE_REL = 0.15  # a window is voiced when its RMS reaches this fraction of the loudest window's
BANNER_FRACTION = 0.24  # of the frame height, at the top: at the bottom it covered the mouth of a face seen close
BANNER_RGB = (24, 32, 84)
CARD_RGB = (250, 240, 210)
CARD_TEXT_RGB = (24, 32, 84)
WORD_RGB = (255, 255, 255)
MAX_SET_CLIPS = 7
MAX_SIDE = 1280  # a lesson's longer side: watched on a phone or tablet, a 1080x1920 frame only costs encoding time
MAX_SECONDS = 600.0  # longest source read for the timeline
FONT_CANDIDATES = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Bold.ttf",
    "/usr/share/fonts/truetype/liberation2/LiberationSans-Bold.ttf",
)
# (mouth curve: + smile / - frown, mouth open 0..1, brow tilt: + angry / - worried, eye size)
_FACES = {
    "joy": (1.0, 0.0, 0.0, 1.0), "happy": (1.0, 0.0, 0.0, 1.0),
    "sadness": (-0.8, 0.0, -0.6, 1.0), "sad": (-0.8, 0.0, -0.6, 1.0),
    "anger": (-0.5, 0.0, 0.9, 0.9), "angry": (-0.5, 0.0, 0.9, 0.9),
    "fear": (-0.3, 0.6, -0.9, 1.4), "scared": (-0.3, 0.6, -0.9, 1.4),
    "surprise": (0.0, 1.0, -0.4, 1.5), "disgust": (-0.6, 0.0, 0.5, 0.7),
    "neutral": (0.0, 0.0, 0.0, 1.0),
}
_LESSON_NAME = re.compile(r"(clip|set)-([0-9_]+)(?:-slow[0-9.]+)?\.mp4")


@dataclass
class Stretch:
    """Where the lesson is cut from the source clip (seconds) and why."""

    start: float  # the emotion stretch (the word shows over it)
    end: float
    cut_start: float  # with the context either side
    cut_end: float
    chosen_by: str  # "face and voice" | "face" | "voice" | "nothing found"
    notes: list[str] = field(default_factory=list)


@dataclass
class Part:
    """One labelled clip in a lesson: its media, the word, a title for sets, and the stretch."""

    path: Path
    label: str
    title: str
    stretch: Stretch


@dataclass
class Lesson:
    """A written lesson file. Times are seconds in the lesson video; `overlay` spans per part."""

    path: Path
    duration: float
    fps: float
    overlay: list[tuple[float, float]]
    stretches: list[Stretch]  # per part, in source seconds
    notes: list[str]

    def to_dict(self) -> dict:
        return {"path": str(self.path), "duration": round(self.duration, 3), "fps": self.fps,
                "overlay": [[round(a, 3), round(b, 3)] for a, b in self.overlay],
                "chosen_by": [s.chosen_by for s in self.stretches], "notes": self.notes}


# -- choosing the stretch ----------------------------------------------------------------------


def timeline(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(grid times [T] s, face seen [T] 0/1, voice active [T] 0/1, duration s) from one decode."""
    from emoweb.pipeline import faces  # torch: imported when a lesson is made, not by every service command

    clip = media.decode(path, MAX_TIMELINE_FRAMES, max_seconds=MAX_SECONDS)
    if not clip.has_video:
        raise EmoWebError(f"a lesson needs a video: {media.display_name(path)} is {clip.kind} only")
    duration = clip.full_duration
    grid = np.arange(0.0, duration, 1.0 / GRID_HZ)
    keep = max(1, min(len(clip.frame_times), int(np.ceil(duration * TIMELINE_FPS))))
    index = np.unique(np.linspace(0, len(clip.frame_times) - 1, keep).round().astype(int))
    boxes = faces.detect_and_crop(clip.frames[index]).boxes
    seen = np.asarray([b is not None for b in boxes], np.float32)
    times = np.asarray(clip.frame_times, np.float64)[index]
    nearest = np.abs(grid[:, None] - times[None, :]).argmin(axis=1)
    face = seen[nearest]
    voice = np.zeros_like(grid, np.float32)
    if clip.has_audio:
        win = media.SAMPLE_RATE // GRID_HZ
        rms = window_rms(clip.audio[: len(grid) * win], win)
        rms = np.pad(rms, (0, len(grid) - rms.size))  # silence after the sound ends
        top = float(rms.max())
        if top > tracks.SILENCE_RMS:
            voice = (rms >= VOICE_REL * top).astype(np.float32)
    return grid, face, voice, duration


def choose(grid: np.ndarray, face: np.ndarray, voice: np.ndarray, duration: float,
           seconds: float = STRETCH_SECONDS, context: float = CONTEXT_SECONDS) -> Stretch:
    """The `seconds`-long window with the most face + voice (the earliest of equals), widened by
    `context` either side within the clip. A clip shorter than `seconds` is used whole.
    Raises EmoWebError for a length that is not a positive number of seconds."""
    if not 0 < seconds < float("inf"):
        raise EmoWebError(f"the stretch must last a positive number of seconds, got {seconds:g}")
    length = min(seconds, duration)
    n = max(1, int(round(length * GRID_HZ)))
    score = face + voice
    sums = np.convolve(score, np.ones(n), "valid") if len(score) >= n else np.asarray([score.sum()])
    best = int(np.argmax(sums))
    start = min(best / GRID_HZ, max(0.0, duration - length))
    notes = []
    has_face, has_voice = bool(face.any()), bool(voice.any())
    chosen_by = {(True, True): "face and voice", (True, False): "face", (False, True): "voice"}.get((has_face, has_voice), "nothing found")
    if not has_face:
        notes.append("no face found in the clip: " + ("the voice chose the stretch" if has_voice else "neither face nor voice found, the stretch is the start of the clip"))
    elif not has_voice:
        notes.append("no voice found in the clip: the face alone chose the stretch")
    return Stretch(start, start + length, max(0.0, start - context), min(duration, start + length + context), chosen_by, notes)


# -- drawing -----------------------------------------------------------------------------------


@lru_cache(maxsize=16)
def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """A bold TTF from the OS at `size` px, else Pillow's built-in font (never downloaded)."""
    for candidate in FONT_CANDIDATES:
        if Path(candidate).is_file():
            return ImageFont.truetype(candidate, size)
    return ImageFont.load_default(size)


def emoji(label: str, size: int) -> Image.Image:
    """An RGBA emoji face for `label` (an unknown label gets a neutral face), `size` px square."""
    curve, open_, brow, eye = _FACES.get(label.strip().lower(), _FACES["neutral"])
    im = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    d = ImageDraw.Draw(im)
    s = size / 100
    d.ellipse((2 * s, 2 * s, 98 * s, 98 * s), fill=(255, 205, 40, 255), outline=(120, 80, 0, 255), width=max(1, int(3 * s)))
    ink = (60, 35, 0, 255)
    for cx in (33, 67):
        r = 6 * eye
        d.ellipse(((cx - r) * s, (40 - r) * s, (cx + r) * s, (40 + r) * s), fill=ink)
        inner = 1 if cx < 50 else -1  # the brow end nearer the nose goes down when angry, up when worried
        d.line(((cx - 10) * s, (26 - brow * 5 * inner) * s, (cx + 10) * s, (26 + brow * 5 * inner) * s), fill=ink, width=max(1, int(4 * s)))
    if open_ > 0:
        h = 8 + 12 * open_
        d.ellipse((40 * s, (70 - h / 2) * s, 60 * s, (70 + h / 2) * s), fill=ink)
    else:
        bend = 14 * curve
        d.line([(x * s, (70 + bend * (1 - ((x - 50) / 22) ** 2)) * s) for x in range(28, 73, 4)], fill=ink, width=max(1, int(5 * s)), joint="curve")
    return im


def _words(draw_size: tuple[int, int], background: tuple[int, ...], text: str, label: str, text_rgb: tuple[int, int, int]) -> np.ndarray:
    """[H, W, 4] uint8: the emoji then `text`, centred, on `background` (RGBA)."""
    w, h = draw_size
    im = Image.new("RGBA", (w, h), background)
    d = ImageDraw.Draw(im)
    size = max(8, int(h * 0.62))
    face = emoji(label, size)
    f = font(size)
    while size > 8 and d.textlength(text, font=f) + size * 1.3 > w * 0.92:
        size = int(size * 0.9)
        f, face = font(size), emoji(label, size)
    total = size * 1.3 + d.textlength(text, font=f)
    x = int((w - total) / 2)
    im.alpha_composite(face, (x, (h - size) // 2))
    d.text((x + size * 1.3, h / 2), text, font=f, fill=text_rgb, anchor="lm")
    return np.asarray(im)


def banner(width: int, height: int, label: str) -> np.ndarray:
    """[H, W, 3] uint8 the word banner for a `width` x `height` frame (its top `BANNER_FRACTION`)."""
    bh = max(12, int(round(height * BANNER_FRACTION)))
    return _words((width, bh), BANNER_RGB + (255,), label, label, WORD_RGB)[..., :3]


def card(width: int, height: int, text: str, label: str) -> np.ndarray:
    """[H, W, 3] uint8 a full card: the emoji and `text` on a plain background."""
    rows = _words((width, max(12, height // 3)), CARD_RGB + (255,), text, label, CARD_TEXT_RGB)[..., :3]
    out = np.empty((height, width, 3), np.uint8)
    out[:] = CARD_RGB
    top = (height - rows.shape[0]) // 2
    out[top : top + rows.shape[0]] = rows
    return out


# -- writing -----------------------------------------------------------------------------------


def _half_frame(t: float, fps: float) -> float:
    """`t` moved to half a frame before its nearest frame: a frame is then inside or outside a span
    without depending on float rounding at the edge."""
    return max(0.0, (round(t * fps) - 0.5) / fps)


def _part(source, part: Part, slow: float, fps: float, title: bool, end_card: bool):
    """The moviepy clips of one part (title card?, trimmed clip with its banner, end card?) and the
    banner's (start, end) within the part, counting the title card."""
    from moviepy import ImageClip, vfx

    s = part.stretch
    body = source.subclipped(s.cut_start, s.cut_end)
    if slow != 1.0:
        body = body.with_effects([vfx.MultiplySpeed(1.0 / slow)])
    w, h = body.size
    lead = TITLE_CARD_SECONDS if title else 0.0
    start = _half_frame(lead + (s.start - s.cut_start) * slow, fps) - lead
    end = _half_frame(lead + (s.end - s.cut_start) * slow, fps) - lead
    strip = banner(w, h, part.label)

    def painted(get_frame, t: float) -> np.ndarray:  # the opaque banner written into the frames it covers
        frame = get_frame(t)
        if start <= t < end:
            frame = frame.copy()
            frame[: strip.shape[0]] = strip
        return frame

    clips = [body.transform(painted, apply_to=[])]  # not a moviepy composite: that blend was 60 % of a render
    if title:
        clips.insert(0, ImageClip(card(w, h, part.title, part.label)).with_duration(TITLE_CARD_SECONDS))
    if end_card:
        clips.append(ImageClip(card(w, h, part.label, part.label)).with_duration(END_CARD_SECONDS))
    return clips, (lead + start, lead + end)


def frame_size(sizes: Sequence[tuple[int, int]], max_side: int = MAX_SIDE) -> tuple[int, int]:
    """(width, height) of a lesson of clips of these upright sizes: the largest clip of the orientation most
    of them have (a tie: landscape), its longer side at most `max_side`, both sides even (H.264's 4:2:0).
    Why: a set mixing portrait and landscape phone clips was as wide as the widest and as tall as the
    tallest (1920x1920, minutes to encode); now the odd one out is fitted in with black bars."""
    portrait = 2 * sum(h > w for w, h in sizes) > len(sizes)
    w, h = max((s for s in sizes if (s[1] > s[0]) == portrait), key=lambda s: s[0] * s[1])
    scale = min(1.0, max_side / max(w, h))
    return max(2, round(w * scale / 2) * 2), max(2, round(h * scale / 2) * 2)


def fitted(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """[H, W, 3] `frame` scaled to fit `size` (width, height) with its aspect kept, centred on black."""
    w, h = size
    fh, fw = frame.shape[:2]
    if (fw, fh) == (w, h):
        return frame
    scale = min(w / fw, h / fh)
    sw, sh = max(1, round(fw * scale)), max(1, round(fh * scale))
    out = np.zeros((h, w, 3), dtype=np.uint8)
    left, top = (w - sw) // 2, (h - sh) // 2
    out[top:top + sh, left:left + sw] = np.asarray(Image.fromarray(frame).resize((sw, sh), Image.Resampling.BILINEAR))
    return out


def _source(part: Part, reader: playback.UprightVideo, size: tuple[int, int], opened: list):
    """A moviepy clip of the part's file as a phone shows it: frames upright (`media.upright`, as the
    analysis sees them), fitted to the lesson's frame `size`, with the file's sound, long enough for the
    part's cut (the last frame stays when the sound outlasts the pictures, silence when the pictures outlast
    the sound). The sound file it opens is appended to `opened` for the caller to close."""
    from moviepy import AudioFileClip, CompositeAudioClip, VideoClip

    clip = VideoClip(lambda t: fitted(reader.frame(t), size), duration=max(reader.duration, part.stretch.cut_end)).with_fps(reader.fps)
    if reader.has_audio:
        sound = AudioFileClip(str(part.path))
        opened.append(sound)
        # ffmpeg states the sound's length to the centisecond (3.10 s for 3.103 s): never cut past it
        clip = clip.with_audio(CompositeAudioClip([sound]).with_duration(clip.duration))
    return clip


def render(parts: Sequence[Part], out: Path, slow: float = 1.0, titles: bool = False, progress: Progress | None = None) -> Lesson:
    """Write the lesson of `parts` to `out` (H.264 + AAC mp4), atomically: a failure leaves no file.
    One part: the trimmed clip then an end card; with `titles`, each part after its title card and
    one end card per part. `slow` in [1, MAX_SLOW] stretches the clip (sound included)."""
    from moviepy import concatenate_videoclips

    if not 1.0 <= slow <= MAX_SLOW:
        raise EmoWebError(f"slow-down must be between 1 and {MAX_SLOW:g}, got {slow:g}")
    if not parts:
        raise EmoWebError("a lesson needs at least one labelled video clip")
    out.parent.mkdir(parents=True, exist_ok=True)
    opened: list = []  # frame readers and sound files
    try:
        readers = []
        for p in parts:
            readers.append(playback.UprightVideo(p.path, MAX_SIDE))
            opened.append(readers[-1])
        size = frame_size([r.size for r in readers])
        sources = [_source(p, r, size, opened) for p, r in zip(parts, readers)]
        fps = float(sources[0].fps or 25.0)
        pieces, overlay, t = [], [], 0.0
        for source, part in zip(sources, parts):
            clips, (a, b) = _part(source, part, slow, fps, titles, end_card=True)
            overlay.append((t + a, t + b))
            pieces += clips
            t += sum(c.duration for c in clips)
        video = concatenate_videoclips(pieces, method="chain")  # every piece is `size`
        if progress:
            progress("render")
        # the video and moviepy's sound track are written in a private folder (0700) that goes when the
        # writing ends, however it ends (an interrupt included): a copy of the child's voice never stays
        # beside the lessons, readable by others, where deleting the clip would not find it
        with tempfile.TemporaryDirectory(prefix=".lesson-", dir=out.parent) as work:
            fd, tmp = tempfile.mkstemp(suffix=".mp4", dir=work)  # 0600: ffmpeg writes into it, keeping that
            os.close(fd)
            video.write_videofile(
                tmp, fps=fps, codec="libx264", audio_codec="aac", preset="ultrafast", threads=2, logger=None,
                temp_audiofile_path=work, ffmpeg_params=["-pix_fmt", "yuv420p", "-crf", "23"],
            )
            os.replace(tmp, out)
        duration = video.duration
        video.close()
    finally:
        for o in opened:
            o.close()
    notes = [f"{p.title}: {n}" if titles else n for p in parts for n in p.stretch.notes]
    return Lesson(out, float(duration), fps, overlay, [p.stretch for p in parts], notes)


# -- where lessons live ------------------------------------------------------------------------


def folder(data_dir: Path, profile_id: int) -> Path:
    return data_dir / "lessons" / str(int(profile_id))


def _slowed(slow: float) -> str:
    """The name's mark of a slowed lesson ('-slow2'), so it never replaces the real-speed one."""
    return "" if slow == 1.0 else f"-slow{slow:g}"


def clip_file(data_dir: Path, profile_id: int, clip_id: int, slow: float = 1.0) -> Path:
    return folder(data_dir, profile_id) / f"clip-{int(clip_id)}{_slowed(slow)}.mp4"


def set_file(data_dir: Path, profile_id: int, clip_ids: Sequence[int], slow: float = 1.0) -> Path:
    return folder(data_dir, profile_id) / f"set-{'_'.join(str(int(c)) for c in clip_ids)}{_slowed(slow)}.mp4"


def clip_ids(path: Path) -> set[int]:
    """The clips a lesson file was made from (by its name); none for a file that is not a lesson."""
    m = _LESSON_NAME.fullmatch(path.name)
    return {int(x) for x in m.group(2).split("_") if x} if m else set()


def listed(data_dir: Path, profile_id: int) -> list[Path]:
    """The profile's lesson files, newest first."""
    where = folder(data_dir, profile_id)
    found = [p for p in where.glob("*.mp4") if clip_ids(p)] if where.is_dir() else []
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def forget_clip(data_dir: Path, profile_id: int, clip_id: int) -> set[str]:
    """Delete every lesson made from the clip (its own and the sets holding it); the sha256s of the
    files deleted, so copies handed to the browser can be found too."""
    return _delete([p for p in listed(data_dir, profile_id) if clip_id in clip_ids(p)])


def forget_profile(data_dir: Path, profile_id: int) -> set[str]:
    """Delete the profile's lesson folder (lessons and any half-written temp files); the deleted
    lessons' sha256s."""
    hashes = _delete(listed(data_dir, profile_id))
    shutil.rmtree(folder(data_dir, profile_id), ignore_errors=True)
    return hashes


def _delete(paths: Sequence[Path]) -> set[str]:
    hashes = set()
    for p in paths:
        try:
            hashes.add(media.file_sha256(p))
        except OSError:
            pass
        p.unlink(missing_ok=True)
    return hashes
