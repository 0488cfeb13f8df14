"""Capture quality: is the picture lit well enough to trust, is the voice loud enough for the encoder.

Phone clips are filmed in dark rooms and against windows, voice memos from across a room. The visual
models answer as confidently on a face that is mostly sensor noise as on a well-lit one, so a picture
outside the usable brightness range is not passed off as evidence; a very quiet voice is only a level
problem, so it is brought up to speech level. Both leave a note in the result.
"""
from __future__ import annotations

import numpy as np

DARK = 0.10  # mean brightness (0-1) of what the visual models see: below it the face is mostly noise
BRIGHT = 0.90  # above it the face is washed out
WINDOW = 0.05  # seconds per loudness window
QUIET_DBFS = -50.0  # speech whose loud windows stay under this is level-normalised (normal speech: -40..-20)
TARGET_DBFS = -30.0  # the loud windows' level after normalising
MAX_GAIN_DB = 60.0


def brightness(images: np.ndarray) -> float:
    """Mean luma (Rec. 601) of [N, H, W, 3] uint8 RGB images, 0 (black) to 1 (white)."""
    rgb = images.reshape(-1, 3).astype(np.float32)
    return float((rgb @ np.array([0.299, 0.587, 0.114], np.float32)).mean() / 255.0)


def exposure_note(images: np.ndarray) -> str | None:
    """Why the picture cannot be trusted, or None when its exposure is usable."""
    level = brightness(images)
    if level < DARK:
        return f"picture too dark to trust (brightness {level:.0%}): visual models skipped"
    if level > BRIGHT:
        return f"picture too bright to trust (brightness {level:.0%}): visual models skipped"
    return None


def window_rms(audio: np.ndarray, n: int) -> np.ndarray:
    """[ceil(S / n)] RMS of consecutive `n`-sample windows of [S] audio, the last one zero-padded."""
    windows = np.pad(audio.astype(np.float64), (0, -audio.size % n)).reshape(-1, n)
    return np.sqrt(np.mean(windows**2, axis=1))


def speech_dbfs(audio: np.ndarray, rate: int) -> float:
    """Level of the loud part of a recording: the 90th percentile of 50-ms RMS windows, in dBFS.

    The whole-clip RMS would call a normal voice quiet when most of the clip is pause."""
    rms = window_rms(audio, max(1, int(WINDOW * rate)))
    return float(20 * np.log10(max(np.percentile(rms, 90), 1e-10)))


def normalise_level(audio: np.ndarray, rate: int) -> tuple[np.ndarray, str | None]:
    """[S] float audio brought to speech level when it is very quiet (gain capped, peaks kept under
    full scale); the note says by how much. Audio at a normal level comes back unchanged."""
    level = speech_dbfs(audio, rate)
    if level >= QUIET_DBFS:
        return audio, None
    peak = float(np.abs(audio).max())
    gain_db = min(TARGET_DBFS - level, MAX_GAIN_DB, 20 * np.log10(0.99 / peak) if peak > 0 else MAX_GAIN_DB)
    louder = (audio * 10 ** (gain_db / 20)).astype(np.float32)
    return louder, f"very quiet audio ({level:.0f} dBFS): level raised by {gain_db:.0f} dB for the audio models"
