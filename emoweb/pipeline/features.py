"""ClipFeatures: everything the four models need from one clip, computed once and shared.

decode -> faces -> Whisper (transcript + audio tokens, one encoder pass) -> text encoder -> visual
encoder. Missing modalities are normal: a clip with no speech (or only untrusted ASR output) has no
transcript, an image has no audio, a clip where no face is found has no visual input (whole frames
are not a face). Each stage's time is recorded.

Text has one path whatever its origin: a clip's transcript, a typed text (`from_texts`) and a person's
correction of a transcript (`with_text`) all go through `_set_text`.
"""
from __future__ import annotations

import hashlib
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from emoweb.config import Settings, get_settings
from emoweb.errors import EmoWebError
from emoweb.pipeline import faces, media, quality, tracks
from emoweb.safetext import clean
from models.backbones import AsrResult, Backbones, get_backbones

MIN_AUDIO_SECONDS = 0.3  # shorter audio carries no usable speech or prosody

Progress = Callable[[str], None]
QUOTE_CHARS = 60  # of an untrusted transcript shown in a note
TEXT_KIND = "text"  # ClipFeatures.kind of a text with no media
TYPED_NOTE = "words typed by a person"  # information, not a problem: the words are the person's own
# the start of every note about the transcript: a corrected transcript makes them stale
_TEXT_NOTES = ("transcript left out as unreliable", "no speech found by voice-activity detection: text models skipped",
               "no speech recognised", "text longer than", TYPED_NOTE, "transcript removed")


# A voice decision on sound the voice-activity detector finds no speech in is a guess from nothing: skipped.
# About the voice only (the words' own note follows), so typed words do not take it away
NO_SPEECH_NOTE = "no speech found by voice-activity detection: audio models skipped"


def transcript_notes(asr: AsrResult) -> list[str]:
    """What a person should know about the transcript: text left out as untrusted, and why there is none."""
    notes = []
    for seg in asr.dropped:
        text = seg["text"] if len(seg["text"]) <= QUOTE_CHARS else seg["text"][: QUOTE_CHARS - 1] + "…"
        notes.append(f"transcript left out as unreliable ({seg['reason']}): {text!r}")
    if not asr.text:
        notes.append("no speech recognised: text models skipped")
    return notes


def normalise_text(text: str) -> str:
    """Text from outside as the text encoder reads it: storable (`safetext.clean`), stripped."""
    return clean(text).strip()


def text_sha256(text: str) -> str:
    """The key of a text with no media (its UTF-8 bytes' SHA-256, hex)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass
class ClipFeatures:
    """One clip's shared features (tensors on CPU). `to_summary()` gives shapes, not tensors."""

    source: str
    sha256: str
    kind: str
    profile: str
    device: str
    duration: float
    full_duration: float
    frame_times: list[float] = field(default_factory=list)
    frames: np.ndarray | None = None  # [N, H, W, 3] uint8 (display)
    face_boxes: list[tuple[int, int, int, int] | None] = field(default_factory=list)
    face_crops: np.ndarray | None = None  # [N, S, S, 3] uint8, the main person's; None: no face found
    face_tracks: list[dict] = field(default_factory=list)  # every person seen, main first (faces.FaceResult.tracks)
    person: int = 1  # whose face the crops and visual features are (1 = the main person; numbering of face_tracks)
    transcript: str = ""
    segments: list[dict] = field(default_factory=list)
    language: str | None = None
    audio: np.ndarray | None = None  # [S] 16 kHz mono (kept for spectrogram models)
    log_mel: np.ndarray | None = None  # [80, T] at 10 ms
    audio_tokens: dict[str, torch.Tensor] = field(default_factory=dict)  # "audio" = primary encoder [T, D]
    audio_token_times: list[float] = field(default_factory=list)
    text_embedding: torch.Tensor | None = None  # [D]
    text_tokens: torch.Tensor | None = None  # [L, D]
    text_words: list[str] = field(default_factory=list)
    text_logits: torch.Tensor | None = None  # [7] the text backbone's own decision, LABEL7 order (None: none)
    visual_features: torch.Tensor | None = None  # [N, D]
    visual_maps: dict[str, torch.Tensor] = field(default_factory=dict)
    visual_logits: torch.Tensor | None = None  # [N, 7]
    visual_logit_labels: tuple[str, ...] = ()
    untrained_weights: bool = False
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def faces_found(self) -> int:
        return sum(b is not None for b in self.face_boxes)

    @property
    def modalities(self) -> dict[str, bool]:
        """Which inputs the models can use."""
        return {
            "audio": "audio" in self.audio_tokens,
            "visual": self.visual_features is not None,
            "text": bool(self.transcript.strip()),
        }

    def to_summary(self) -> dict:
        """JSON-friendly description: shapes and values a person can read, never raw tensors."""

        def shape(x) -> list[int] | None:
            return None if x is None else list(x.shape)

        return {
            "source": self.source,
            "sha256": self.sha256,
            "kind": self.kind,
            "profile": self.profile,
            "device": self.device,
            "untrained_weights": self.untrained_weights,
            "duration": self.duration,
            "full_duration": self.full_duration,
            "modalities": self.modalities,
            "frames": {"count": len(self.frame_times), "times": self.frame_times, "shape": shape(self.frames)},
            "faces": {"found": self.faces_found, "boxes": self.face_boxes, "tracks": self.face_tracks, "person": self.person},
            "transcript": {"text": self.transcript, "language": self.language, "segments": self.segments},
            "audio_tokens": {k: shape(v) for k, v in self.audio_tokens.items()},
            "text_embedding": shape(self.text_embedding),
            "text_tokens": shape(self.text_tokens),
            "visual_features": shape(self.visual_features),
            "visual_maps": {k: shape(v) for k, v in self.visual_maps.items()},
            "warnings": self.warnings,
            "timings": {k: round(v, 4) for k, v in self.timings.items()},
        }


def _stages(timings: dict[str, float], progress: Progress | None):
    """A `stage(name)` context manager that reports the stage and adds its seconds to `timings`."""

    @contextmanager
    def stage(name: str):
        if progress:
            progress(name)
        t0 = time.perf_counter()
        yield
        timings[name] = timings.get(name, 0.0) + time.perf_counter() - t0

    return stage


class FeatureExtractor:
    """Runs the shared pipeline with one profile's backbones (loaded once per process)."""

    def __init__(self, settings: Settings | None = None, backbones: Backbones | None = None, transcribe: bool = True):
        """`transcribe=False`: no ASR (no transcript, no text features), for corpora whose text is given
        or carries no emotion (acted sentences); the audio tokens are the same either way."""
        self.settings = settings or get_settings()
        self.transcribe = transcribe
        if self.settings.threads:
            torch.set_num_threads(self.settings.threads)
        self.backbones = backbones or get_backbones(
            self.settings.profile, self.settings.device, self.settings.asr_beam, self.settings.threads
        )

    def __call__(self, path: str | Path, progress: Progress | None = None) -> ClipFeatures:
        timings: dict[str, float] = {}
        stage = _stages(timings, progress)
        with stage("decode"):
            clip = media.decode(path, self.settings.n_frames, self.settings.max_seconds)
        bb = self.backbones
        feats = ClipFeatures(
            source=Path(path).name, sha256=clip.sha256, kind=clip.kind, profile=bb.name, device=bb.device,
            duration=clip.duration, full_duration=clip.full_duration, frame_times=clip.frame_times,
            frames=clip.frames, warnings=list(clip.warnings), untrained_weights=bb.untrained, timings=timings,
        )
        if clip.has_video:
            with stage("faces"):
                found = faces.detect_and_crop(clip.frames)
            feats.face_boxes, feats.face_crops, feats.face_tracks = found.boxes, found.crops, found.tracks
            if found.note:
                feats.warnings.append(found.note)
            self._visual(found, feats, stage)
        self._audio(clip, feats, stage)
        if feats.transcript:
            with stage("text"):
                self._set_text([feats])
        timings["total"] = sum(v for k, v in timings.items() if k != "total")
        return feats

    def from_texts(self, texts: list[str], source: str = "typed text") -> list[ClipFeatures]:
        """Features of texts with no media (kind 'text': transcript = the text, text embedding [D] and token
        states [L, D] from the profile's text encoder; no audio, no face), encoded in one batch of
        len(texts). Each text is cleaned (`safetext.clean`) and stripped; raises EmoWebError for an empty
        one (a guess from no words is not an answer)."""
        texts = [normalise_text(t) for t in texts]
        if not all(texts):
            raise EmoWebError("no text given: type at least one word")
        bb = self.backbones
        t0 = time.perf_counter()
        out = [
            ClipFeatures(source=source, sha256=text_sha256(t), kind=TEXT_KIND, profile=bb.name, device=bb.device,
                         duration=0.0, full_duration=0.0, transcript=t, untrained_weights=bb.untrained)
            for t in texts
        ]
        self._set_text(out)
        seconds = (time.perf_counter() - t0) / max(1, len(out))
        for f in out:
            f.timings = {"text": seconds, "total": seconds}
        return out

    def from_text(self, text: str, source: str = "typed text") -> ClipFeatures:
        """`from_texts` of one text."""
        return self.from_texts([text], source)[0]

    def with_text(self, feats: ClipFeatures, text: str, progress: Progress | None = None) -> ClipFeatures:
        """The same clip's features with `text` (typed, or a person's correction) as its transcript: only the
        text encoder runs again; audio, faces and visual features are reused. The speech recogniser's notes
        and timed segments give way to a note that the words were typed; an empty `text` removes the words
        (text models skipped). The new timings hold only the text stage. Raises EmoWebError for an empty
        `text` when `feats` is a text with no media (nothing would be left to answer from)."""
        text = normalise_text(text)
        if text == feats.transcript:
            return feats
        if not text and feats.kind == TEXT_KIND:
            raise EmoWebError("no text given: type at least one word")
        timings: dict[str, float] = {}
        kept = [w for w in feats.warnings if not w.startswith(_TEXT_NOTES)]
        note = TYPED_NOTE if text else "transcript removed by a person: text models skipped"
        out = replace(feats, transcript=text, segments=[], text_embedding=None, text_tokens=None, text_words=[], text_logits=None,
                      warnings=kept + ([note] if feats.kind != TEXT_KIND else []), timings=timings)
        if text:
            with _stages(timings, progress)("text"):
                self._set_text([out])
        timings["total"] = sum(timings.values())
        return out

    def _set_text(self, feats: list[ClipFeatures]) -> None:
        """Encode each one's transcript (one batch) and set its text embedding, token states and words, and
        the text backbone's own decision where the profile has one."""
        encoder = self.backbones.text_encoder
        texts = [f.transcript for f in feats]
        enc, logits = self.backbones.text(texts), self.backbones.text_emotion(texts)
        for i, f in enumerate(feats):
            m = enc.mask[i]
            f.text_embedding, f.text_tokens, f.text_words = enc.embedding[i].cpu(), enc.tokens[i][m].cpu(), enc.words[i]
            f.text_logits = None if logits is None else logits[i].cpu()
            if len(f.text_words) >= encoder.max_length:
                f.warnings.append(f"text longer than {encoder.max_length} tokens: only its start is read")

    def with_person(self, feats: ClipFeatures, person: int, progress: Progress | None = None) -> ClipFeatures:
        """The same clip's features with `person`'s face (numbering of `feats.face_tracks`; 1 = the main
        person) as the visual input: faces found again on the kept frames and that track's crops encoded;
        audio, transcript and text features are reused, not recomputed (no decoding, no Whisper). The new
        timings hold only the faces and visual stages. Raises EmoWebError when the clip has no frames or
        `person` is not one of those seen."""
        if feats.frames is None or not feats.face_tracks:
            raise EmoWebError(f"no face to choose in {feats.source}: {'no frames' if feats.frames is None else 'no face found'}")
        if person == feats.person:
            return feats
        timings: dict[str, float] = {}
        stage = _stages(timings, progress)
        with stage("faces"):
            found = faces.detect_and_crop(feats.frames, person)
        # the notes about the face used before (who, its exposure) give way to the chosen person's
        stale = {faces.people_note(feats.face_tracks, feats.person),
                 None if feats.face_crops is None else quality.exposure_note(feats.face_crops)}
        out = replace(
            feats, face_boxes=found.boxes, face_crops=found.crops, face_tracks=found.tracks, person=person,
            visual_features=None, visual_maps={}, visual_logits=None, visual_logit_labels=(),
            warnings=[w for w in feats.warnings if w not in stale] + [n for n in (found.note,) if n], timings=timings,
        )
        self._visual(found, out, stage)
        timings["total"] = sum(timings.values())
        return out

    def _visual(self, found: faces.FaceResult, feats: ClipFeatures, stage) -> None:
        if not found.found:  # a guess from a frame without a face is not a visual decision
            feats.warnings.append(quality.exposure_note(feats.frames) or "no face found: visual models skipped")
            return
        # a face that is mostly sensor noise (or washed out) still gets a confident answer: not evidence
        exposure = quality.exposure_note(found.crops)
        if exposure:
            feats.warnings.append(exposure)
            return
        with stage("visual"):
            vis = self.backbones.visual(found.crops)
        feats.visual_features, feats.visual_maps = vis.features.cpu(), {k: v.cpu() for k, v in vis.maps.items()}
        feats.visual_logits = None if vis.logits is None else vis.logits.cpu()
        feats.visual_logit_labels = vis.logit_labels

    def _audio(self, clip: media.DecodedClip, feats: ClipFeatures, stage) -> None:
        if not clip.has_audio:
            return
        audio = clip.audio
        if audio.size < MIN_AUDIO_SECONDS * media.SAMPLE_RATE:
            feats.warnings.append(f"audio shorter than {MIN_AUDIO_SECONDS} s: audio models skipped")
            return
        if float(np.sqrt(np.mean(audio**2))) < tracks.SILENCE_RMS:
            feats.warnings.append("the audio track is silent: audio and text models skipped")
            return
        audio, quiet = quality.normalise_level(audio, media.SAMPLE_RATE)
        with stage("asr"):
            asr = self.backbones.transcribe(audio, self.transcribe)
        if self.transcribe and not asr.speech_seconds:  # room noise, music, breath: every model only ever heard speech
            feats.warnings += [NO_SPEECH_NOTE, *transcript_notes(asr)]
            return
        if quiet:
            feats.warnings.append(quiet)
        feats.audio, feats.log_mel = audio, asr.log_mel
        feats.transcript, feats.segments, feats.language = asr.text, asr.segments, asr.language
        if self.transcribe:  # without ASR (acted corpora) there is no transcript to speak of
            feats.warnings += transcript_notes(asr)
        with stage("audio_encoder"):
            tokens = self.backbones.audio_tokens(audio, asr)
        feats.audio_tokens = {k: v.float().cpu() for k, v in tokens.items()}
        feats.audio_token_times = asr.token_times
