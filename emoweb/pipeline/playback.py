"""A video track's frames by time, upright (optionally scaled down): what a writer (the lesson clips) plays.

Why not the ffmpeg command line (moviepy's reader): it turns a phone's portrait clip by the display
matrix but moviepy misses that matrix on FFmpeg 7 and scales the upright frames back to the stored
landscape size (a squashed face), and it ignores the older `rotate` tag that analysis honours. Frames
here go through `media.upright`, the same turn the analysis applies.
"""
from __future__ import annotations

from pathlib import Path

import av
import numpy as np

from emoweb.errors import MediaError
from emoweb.pipeline import media
from emoweb.pipeline.tracks import is_cover, is_default, track_end, track_start

DEFAULT_FPS = 25.0  # when the file declares no frame rate
SEEK_AHEAD = 2.0  # seconds: a later frame than this is reached by seeking, not by decoding through
EPS = 1e-5  # a frame stamped this little after `t` is the frame at `t` (float rounding)


class UprightVideo:
    """Sequential-friendly random access to the frames of `path`'s video track.

    `frame(t)` is the frame on screen at `t` seconds from the clip's first timestamp: [H, W, 3] uint8 RGB,
    upright (display rotation applied), its longer side at most `max_side` (None: full resolution). `size`
    is (width, height) as returned, `fps` the declared rate,
    `duration` seconds, `has_audio` whether there is a decodable sound track. Raises MediaError for a file without a decodable video track."""

    def __init__(self, path: Path, max_side: int | None = None) -> None:
        media.check_file(path)
        self._max_side = max_side
        self._container = av.open(str(path), metadata_errors="ignore")
        pictures = [s for s in self._container.streams.video if not is_cover(s) and s.codec_context is not None]
        if not pictures:
            self._container.close()
            raise MediaError(f"no video track to play in {media.display_name(path)}")
        self._stream = sorted(pictures, key=lambda s: not is_default(s))[0]
        self._stream.thread_type = "AUTO"
        sounds = [s for s in self._container.streams.audio if s.codec_context is not None]
        self.has_audio = bool(sounds)
        rate = self._stream.average_rate or self._stream.guessed_rate
        self.fps = float(rate) if rate else DEFAULT_FPS
        # times count from the clip's first timestamp over picture and sound, as in `media.decode`
        self._origin = min((t for t in map(track_start, [self._stream, *sounds]) if t is not None), default=0.0)
        self._frames = None
        self._now: tuple[float, np.ndarray] | None = None  # (time, upright pixels) on screen
        self._next: av.VideoFrame | None = None  # decoded, not yet on screen
        self._seek(0.0)
        if self._now is None:
            self.close()
            raise MediaError(f"the video track of {media.display_name(path)} has no decodable frames")
        end = track_end(self._stream)
        declared = end - self._origin if end is not None else (self._container.duration or 0) / av.time_base
        self.duration = max(float(declared), self._now[0] + 1.0 / self.fps)
        self.size = (self._now[1].shape[1], self._now[1].shape[0])

    def _time(self, frame: av.VideoFrame) -> float:
        return float(frame.time) - self._origin if frame.time is not None else self._now[0] + 1.0 / self.fps

    def _show(self, frame: av.VideoFrame) -> None:
        self._now = (self._time(frame), media.upright(frame, self._stream, self._max_side))

    def _seek(self, t: float) -> None:
        """Decode from the keyframe at or before `t`; the first frame after it is on screen."""
        self._container.seek(int((t + self._origin) / self._stream.time_base), stream=self._stream, backward=True)
        self._frames = self._container.decode(self._stream)
        self._next = next(self._frames, None)
        if self._next is not None:
            self._show(self._next)
            self._next = next(self._frames, None)

    def frame(self, t: float) -> np.ndarray:
        """The frame on screen at `t` s (the first frame before the track starts, the last after it ends)."""
        if self._now is None or t < self._now[0] - EPS or t > self._now[0] + SEEK_AHEAD:
            self._seek(max(0.0, t))
        while self._next is not None and self._time(self._next) <= t + EPS:
            frame, self._next = self._next, None
            # skip the pixels of frames that are passed over: only the one on screen is turned
            upcoming = next(self._frames, None)
            if upcoming is None or self._time(upcoming) > t + EPS:
                self._show(frame)
            else:
                self._now = (self._time(frame), self._now[1])
            self._next = upcoming
        return self._now[1]

    def close(self) -> None:
        self._container.close()
