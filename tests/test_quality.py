"""Capture quality: exposure notes and the level normalisation of very quiet speech (issue 17, kind 5)."""
from __future__ import annotations

import numpy as np

from emoweb.pipeline import quality

RATE = 16_000


def _speech_like(level: float) -> np.ndarray:
    """1 s of pause (which must not count as quiet), then 2 s of a tone at `level` RMS."""
    t = np.arange(2 * RATE) / RATE
    tone = level * np.sqrt(2) * np.sin(2 * np.pi * 200 * t)
    return np.concatenate([np.zeros(RATE), tone]).astype(np.float32)


def test_exposure_notes() -> None:
    rng = np.random.default_rng(0)
    lit = rng.integers(60, 200, (4, 64, 64, 3)).astype(np.uint8)
    assert quality.exposure_note(lit) is None
    dark = np.clip(lit * 0.05 + rng.normal(0, 3, lit.shape), 0, 255).astype(np.uint8)
    assert "too dark" in quality.exposure_note(dark)
    washed = np.clip(lit * 0.2 + 220, 0, 255).astype(np.uint8)
    assert "too bright" in quality.exposure_note(washed)


def test_quiet_speech_is_raised_normal_speech_kept() -> None:
    normal = _speech_like(0.02)  # -34 dBFS, about the RAVDESS actors' level
    same, note = quality.normalise_level(normal, RATE)
    assert same is normal and note is None
    quiet = _speech_like(0.0005)  # -66 dBFS
    louder, note = quality.normalise_level(quiet, RATE)
    assert note and "very quiet audio (-66 dBFS)" in note
    assert abs(quality.speech_dbfs(louder, RATE) - quality.TARGET_DBFS) < 1.0
    assert np.abs(louder).max() < 1.0
