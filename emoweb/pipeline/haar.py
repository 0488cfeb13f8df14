"""OpenCV's Haar cascade face detector: the baseline `python -m emoweb bench faces` measures BlazeFace against.

Not used for predictions: on the shared validation face photos BlazeFace finds every face Haar finds
(README, "Face detection"), so Haar adds no recall as a fallback. Haar needs some context around a face,
so tight face crops are retried on a copy padded with its own border.
"""
from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

PAD_RETRY = 0.35  # border added (fraction of the side) for the tight-crop retry
DETECT_SIDE = 320  # detection runs on frames downscaled to this side: Haar needs no more


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
    """Largest face (x, y, w, h in frame pixels) in an RGB frame, retrying on a padded copy for tight crops."""
    scale = min(1.0, DETECT_SIDE / max(frame.shape[:2]))
    small = cv2.resize(frame, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else frame
    gray = cv2.equalizeHist(cv2.cvtColor(small, cv2.COLOR_RGB2GRAY))
    box = _largest(gray)
    if box is None:
        pad = int(PAD_RETRY * max(gray.shape[:2]))
        found = _largest(cv2.copyMakeBorder(gray, pad, pad, pad, pad, cv2.BORDER_REPLICATE))
        if found is None:
            return None
        x, y, w, h = found
        x0, y0 = max(0, x - pad), max(0, y - pad)
        x1, y1 = min(gray.shape[1], x + w - pad), min(gray.shape[0], y + h - pad)
        if x1 <= x0 or y1 <= y0:
            return None
        box = (x0, y0, x1 - x0, y1 - y0)
    return tuple(int(round(v / scale)) for v in box)  # type: ignore[return-value]
