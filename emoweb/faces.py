"""Find and crop the main face in each sampled frame (OpenCV Haar cascade).

Haar needs some context around a face, so tightly cropped face photos (the usual case in
face datasets) fail on the raw frame; we retry on a frame padded with its own border before
falling back to the whole frame, which is flagged so the UI can say "no face found".
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

CROP_SIZE = 160  # RGB crop side kept per frame; each backbone resizes to its own input
MARGIN = 0.15  # context added around the detected box
PAD_RETRY = 0.35  # border added (fraction of the side) for the tight-crop retry
DETECT_SIDE = 320  # detection runs on frames downscaled to this side: Haar needs no more
BOX_REUSE_SECONDS = 1.0  # a detected box stands for sampled frames up to this far away in time


@dataclass
class FaceResult:
    """Per sampled frame: box (x, y, w, h in frame pixels) or None, and an RGB crop."""

    boxes: list[tuple[int, int, int, int] | None]
    crops: np.ndarray  # [N, CROP_SIZE, CROP_SIZE, 3] uint8

    @property
    def found(self) -> list[bool]:
        return [b is not None for b in self.boxes]


@lru_cache(maxsize=1)
def _cascade() -> cv2.CascadeClassifier:
    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
    if cascade.empty():
        raise RuntimeError("OpenCV Haar cascade missing: install opencv-python-headless 4.x")
    return cascade


def _largest(gray: np.ndarray) -> tuple[int, int, int, int] | None:
    side = min(gray.shape[:2])
    faces = _cascade().detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(max(24, side // 8),) * 2)
    if len(faces) == 0:
        return None
    x, y, w, h = max(faces, key=lambda f: f[2] * f[3])
    return int(x), int(y), int(w), int(h)


def detect_box(frame: np.ndarray) -> tuple[int, int, int, int] | None:
    """Largest face in an RGB frame, retrying on a padded copy for tight crops."""
    scale = min(1.0, DETECT_SIDE / max(frame.shape[:2]))
    box = _detect_gray(cv2.resize(frame, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else frame)
    if box is None:
        return None
    return tuple(int(round(v / scale)) for v in box)  # type: ignore[return-value]


def _detect_gray(frame: np.ndarray) -> tuple[int, int, int, int] | None:
    gray = cv2.equalizeHist(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY))
    box = _largest(gray)
    if box is not None:
        return box
    pad = int(PAD_RETRY * max(gray.shape[:2]))
    padded = cv2.copyMakeBorder(gray, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    box = _largest(padded)
    if box is None:
        return None
    x, y, w, h = box
    x0, y0 = max(0, x - pad), max(0, y - pad)
    x1, y1 = min(gray.shape[1], x + w - pad), min(gray.shape[0], y + h - pad)
    return (x0, y0, x1 - x0, y1 - y0) if x1 > x0 and y1 > y0 else None


def _crop(frame: np.ndarray, box: tuple[int, int, int, int] | None) -> np.ndarray:
    h, w = frame.shape[:2]
    if box is None:  # whole frame, centred square
        side = min(h, w)
        y0, x0 = (h - side) // 2, (w - side) // 2
        region = frame[y0 : y0 + side, x0 : x0 + side]
    else:
        x, y, bw, bh = box
        side = int(max(bw, bh) * (1 + 2 * MARGIN))
        cx, cy = x + bw // 2, y + bh // 2
        x0, y0 = max(0, cx - side // 2), max(0, cy - side // 2)
        region = frame[y0 : min(h, y0 + side), x0 : min(w, x0 + side)]
    return cv2.resize(region, (CROP_SIZE, CROP_SIZE), interpolation=cv2.INTER_AREA)


def detection_stride(frame_times: list[float]) -> int:
    """Detect on every k-th sampled frame so that a reused box is never more than ~1 s old.

    4-s clip, 16 samples 0.25 s apart -> every 4th frame; a 60-s clip (3.75 s apart) -> every frame.
    """
    if len(frame_times) < 2:
        return 1
    spacing = (frame_times[-1] - frame_times[0]) / (len(frame_times) - 1)
    return max(1, int(BOX_REUSE_SECONDS / spacing)) if spacing > 0 else 1


def detect_and_crop(frames: np.ndarray, stride: int = 1) -> FaceResult:
    """Detect the main face in each frame; frames without one give the whole frame (flagged by a None box).

    Detection runs on every `stride`-th sampled frame (faces move little between neighbouring samples);
    the frames in between take the nearest detected frame's box.
    """
    probed = {i: detect_box(frames[i]) for i in range(0, len(frames), stride)}
    boxes = [probed[min(probed, key=lambda j: (abs(j - i), j))] for i in range(len(frames))]
    crops = np.stack([_crop(f, b) for f, b in zip(frames, boxes)]) if len(frames) else np.zeros(
        (0, CROP_SIZE, CROP_SIZE, 3), np.uint8
    )
    return FaceResult(boxes, crops)
