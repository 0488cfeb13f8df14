"""Composite audio-visual clips: a face photo and a speech clip of the same label, muxed into an mp4.

No real audio-visual recording exists in the shared data, so training pairs and demo/test clips are
*composites*: the face and the voice belong to different people. They are always called composite,
never recordings. Pairs respect the team split: a train face only meets train speech, a validation
face only validation speech (identities and speakers stay disjoint across splits).
"""
from __future__ import annotations

import csv
import math
import random
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageOps

from emoweb.pipeline import media

FPS = 25
SIZE = 256  # composite frame side: the face photo with a border, so the face detector sees context


@dataclass(frozen=True)
class CompositePair:
    """One face photo + one speech clip that share a label and a split."""

    face: Path
    speech: Path
    label: str
    split: str
    text: str


def read_rows(manifest: Path) -> list[dict]:
    with open(manifest, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def make_pairs(faces_manifest: Path, speech_manifest: Path, per_speech: int = 1, seed: int = 0) -> list[CompositePair]:
    """Pair each speech clip with `per_speech` random face photos of its label from the same split."""
    rng = random.Random(seed)
    faces: dict[tuple[str, str], list[Path]] = {}
    for row in read_rows(faces_manifest):
        faces.setdefault((row["label7"], row["split"]), []).append(faces_manifest.parent / row["path"])
    pairs = []
    for row in read_rows(speech_manifest):
        pool = faces.get((row["label7"], row["split"]))
        if not pool:
            continue
        for face in rng.sample(pool, min(per_speech, len(pool))):
            pairs.append(CompositePair(face, speech_manifest.parent / row["path"], row["label7"], row["split"], row["text"]))
    return pairs


def _frames(face: Path, n: int) -> list[np.ndarray]:
    """The photo on a neutral border with light motion (slow zoom and sway), so frames differ as in video."""
    with Image.open(face) as im:
        img = ImageOps.exif_transpose(im).convert("RGB")
    img.thumbnail((SIZE * 3 // 5, SIZE * 3 // 5))
    out = []
    for i in range(n):
        t = i / FPS
        scale = 1.0 + 0.04 * math.sin(2 * math.pi * t / 3.0)
        face_img = img.resize((max(1, int(img.width * scale)), max(1, int(img.height * scale))))
        canvas = Image.new("RGB", (SIZE, SIZE), (118, 118, 118))
        dx = int(6 * math.sin(2 * math.pi * t / 2.0))
        canvas.paste(face_img, ((SIZE - face_img.width) // 2 + dx, (SIZE - face_img.height) // 2))
        out.append(np.asarray(canvas))
    return out


def render(face: Path, speech: Path | None, out: Path, seconds: float | None = None) -> Path:
    """Write an H.264/AAC mp4: the face with light motion, the speech clip as its sound track (if any)."""
    audio = media.decode(speech).audio if speech is not None else None
    if seconds is None:
        seconds = audio.size / media.SAMPLE_RATE if audio is not None else 3.0
    out.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(out), "w") as container:
        vs = container.add_stream("libx264", rate=FPS)
        vs.width = vs.height = SIZE
        vs.pix_fmt = "yuv420p"
        vs.options = {"preset": "ultrafast", "crf": "23"}
        astream = container.add_stream("aac", rate=media.SAMPLE_RATE, layout="mono") if audio is not None else None
        for arr in _frames(face, max(1, round(seconds * FPS))):
            for packet in vs.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                container.mux(packet)
        for packet in vs.encode():
            container.mux(packet)
        if astream is not None:
            _write_audio(container, astream, audio[: int(seconds * media.SAMPLE_RATE)])
    return out


def _write_audio(container, stream, audio: np.ndarray, chunk: int = 1024) -> None:
    for i in range(0, audio.size, chunk):
        frame = av.AudioFrame.from_ndarray(audio[None, i : i + chunk].astype(np.float32), format="fltp", layout="mono")
        frame.sample_rate = media.SAMPLE_RATE
        frame.pts = i
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
