"""Composite audio-visual training samples at feature level (a face photo + a speech clip, same label).

The shared data has no real audio-visual clip: faces are photos (visual only) and RAVDESS is speech
(audio + transcript). A fusion model such as MER-CLIP also needs samples with both, so each speech
sample is paired with random face photo(s) of the same label AND the same split (train with train,
dev with dev, val with val), which keeps face identities and speakers disjoint across splits exactly
as `emoweb.learning.training.assign_splits` made them. The pair is built with `emoweb.pipeline.batching.composite`
(the photo's visual features + the clip's audio and transcript features: no backbone is re-run).

Composite rows are *composites*, never recordings: the face and the voice belong to different
people. Their Row has a synthetic ``composite/<face>+<speech>.mp4`` path (so `Row.modality` is
'audiovisual' and class balancing treats them as their own group), the speech clip's speaker, text
and split, and ``source="composite"``. `emoweb.learning.composite` renders the same pairs as mp4 for demos.
"""
from __future__ import annotations

import random
from pathlib import Path

from emoweb.learning.manifests import Row
from emoweb.learning.training import Sample
from emoweb.pipeline.batching import composite, frame_sequence

SOURCE = "composite"


def composite_row(face: Row, speech: Row) -> Row:
    """The Row of a face+speech composite: speech speaker/text/split, 'audiovisual' modality."""
    face_name = face.path.stem if face.path else "face"
    speech_name = speech.path.stem if speech.path else "speech"
    return Row(
        path=Path(SOURCE) / f"{face_name}+{speech_name}.mp4",
        label=speech.label,
        text=speech.text,
        speaker=speech.speaker,
        split=speech.split,
        source=SOURCE,
        manifest=SOURCE,
    )


def composite_samples(samples: list[Sample], per_speech: int = 1, seed: int = 0) -> list[Sample]:
    """For each speech sample, `per_speech` composites with distinct random faces of its label and split.

    A speech sample whose (label, split) has no face photo gets no composite. Deterministic per seed, and per
    clip: the dev rows alone give the same dev composites as all rows (`calibrate` reads only those).
    """
    faces: dict[tuple[str, str], list[Sample]] = {}
    for s in samples:
        if s.row.modality == "visual" and s.features.modalities["visual"]:
            faces.setdefault((s.row.label, s.split), []).append(s)
    out = []
    for s in samples:
        if s.row.modality != "audio" or not s.features.modalities["audio"]:
            continue
        pool = faces.get((s.row.label, s.split))
        if not pool:
            continue
        rng = random.Random(f"{seed}:{s.row.manifest}:{s.row.path}")  # each clip's own draw: a subset of the rows pairs the same
        for face in rng.sample(pool, min(per_speech, len(pool))):
            out.append(Sample(composite_row(face.row, s.row), composite(face.features, s.features), s.split))
    return out


PARTIAL = "partial-expression"  # the manifest name of the built partial-expression clips (balanced in their photos' corpus)
PARTIAL_FRAMES = 16  # the frames the app samples from a clip (Settings.n_frames' default)
PARTIAL_SECONDS = 3.2


def partial_expression_samples(samples: list[Sample], variants: int = 2, seed: int = 0) -> list[Sample]:
    """Silent 16-frame clips of one person: neutral frames, then their expression for 3-8 frames at a
    random point, then neutral again, labelled with the expression; and all-neutral clips alternating
    two of their neutral photos, labelled neutral (so "several frames" never means "not neutral").

    Why: a clip built from one photo shows the same expression in every frame, so a model's attention over
    frames learns nothing (it stays flat). Built only where a person has a neutral photo and another photo
    in the same manifest and split (the web photos name their people; FER2013 does not), `variants` clips per
    expressive photo with different spans and neutral photos. Deterministic per seed."""
    rng = random.Random(seed)
    people: dict[tuple[str, str, str], list[Sample]] = {}
    for s in samples:
        if s.row.modality == "visual" and s.row.speaker and s.features.visual_features is not None:
            people.setdefault((s.row.manifest, s.split, s.row.speaker), []).append(s)
    out = []
    for photos in people.values():
        neutral = [s for s in photos if s.row.label == "neutral"]
        if not neutral or len(photos) < 2:
            continue
        for face in photos:
            for _ in range(variants):
                calm = rng.choice(neutral)
                if face.row.label == "neutral":
                    other = rng.choice([s for s in neutral if s is not face] or [face])
                    parts = [(face if j % 2 == 0 else other, 4) for j in range(PARTIAL_FRAMES // 4)]
                else:
                    span = rng.randint(3, 8)
                    start = rng.randint(2, PARTIAL_FRAMES - span - 2)
                    parts = [(calm, start), (face, span), (calm, PARTIAL_FRAMES - start - span)]
                out.append(Sample(_partial_row(face.row, [p.row for p, _ in parts]),
                                  frame_sequence([(p.features, n) for p, n in parts], PARTIAL_SECONDS), face.split))
    return out


def _partial_row(face: Row, parts: list[Row]) -> Row:
    names = "+".join(dict.fromkeys(p.path.stem for p in parts if p.path))
    return Row(path=Path(PARTIAL) / f"{names}.mp4", label=face.label, text="", speaker=face.speaker, split=face.split,
               source=PARTIAL, manifest=PARTIAL, silent=True, built_from=face.manifest)
