"""Backbone profiles behind one interface: every model is written against `Backbones`, not an encoder.

`get_backbones(profile, device)` returns the process-wide instance (lazy: each encoder loads on first
use). Profiles are a registry (name -> class), as in open_clip's factory.
"""
from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass, field

import numpy as np
import torch

from models import LABEL7
from models.backbones.text import TextEncoding, TransformerTextEncoder, load_bert, load_minilm
from models.backbones.whisper import AsrResult, WhisperBackbone


@dataclass
class VisualEncoding:
    """Per-frame features, 2-D maps at two depths (for SEM), and the FER logits where the profile has them."""

    features: torch.Tensor  # [N, D]
    maps: dict[str, torch.Tensor] = field(default_factory=dict)  # {"block2": [N,C,H,W], "block4": ...}
    logits: torch.Tensor | None = None  # [N, 7] in FER order mapped to label7 names (see `logit_labels`)
    logit_labels: tuple[str, ...] = ()


def resolve_device(device: str = "auto") -> str:
    """'auto' -> cuda when present, else cpu. RuntimeError (one line) for 'cuda' where torch finds no CUDA
    GPU, before any weights load: otherwise the first tensor moved there fails deep inside torch."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not re.fullmatch(r"cpu|mps|cuda(:\d+)?", device):
        raise RuntimeError(f"device {device!r}: not a device (auto, cpu, cuda, cuda:N or mps)")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r}: torch finds no CUDA GPU on this machine (use auto or cpu)")
    return device


class Backbones:
    """One profile's encoders, loaded lazily and once; `dims` tells models their input widths."""

    name = ""
    untrained = False
    dims: dict[str, int] = {}

    def __init__(self, device: str = "auto", asr_beam: int = 1, threads: int = 0):
        self.device = resolve_device(device)
        self.asr_beam = asr_beam
        self.threads = threads
        self._lock = threading.Lock()
        self._loaded: dict[str, object] = {}

    def _get(self, key: str, factory):
        with self._lock:
            if key not in self._loaded:
                self._loaded[key] = factory()
            return self._loaded[key]

    @property
    def loaded(self) -> list[str]:
        return sorted(self._loaded)

    @property
    def whisper(self) -> WhisperBackbone:
        return self._get("whisper", lambda: WhisperBackbone(self.device, self.asr_beam, self.threads))

    def transcribe(self, audio: np.ndarray, transcribe: bool = True) -> AsrResult:
        """Whisper encoder tokens (a window fitted to the clip) and, unless `transcribe` is False, the
        transcript (a 30-s window of speech, only when there is speech)."""
        return self.whisper(audio, transcribe=transcribe)

    def audio_tokens(self, audio: np.ndarray, asr: AsrResult) -> dict[str, torch.Tensor]:
        """{encoder name: [T, D]}; key "audio" is the profile's primary audio encoder."""
        raise NotImplementedError

    @property
    def text_encoder(self) -> TransformerTextEncoder:
        raise NotImplementedError

    def text(self, texts: list[str]) -> TextEncoding:
        return self.text_encoder(texts)

    def text_emotion(self, texts: list[str]) -> torch.Tensor | None:
        """The text backbone's own emotion logits [B, 7] in LABEL7 order, or None when the profile has no
        tuned text classifier."""
        return None

    def visual(self, crops: np.ndarray) -> VisualEncoding:
        raise NotImplementedError


class EmbeddedBackbones(Backbones):
    """Offline, CPU-friendly, shipped with the install: Whisper base, MiniLM, FER mini-Xception."""

    name = "embedded"
    dims = {"audio": 512, "text": 384, "text_tokens": 384, "visual": 128}

    # Whisper's 4th of 6 layers keeps more of the tone of voice than its last, which is tuned for words:
    # EmoAsst's Auditory Adapter reads it (as the paper reads wav2vec 2.0's 9th of 12 layers). On held-out
    # training speakers it beat the last layer in 4 of 5 folds, +4.2 mean UAR (README, "Auditory Adapter input").
    emotion_layer = 4

    def audio_tokens(self, audio: np.ndarray, asr: AsrResult) -> dict[str, torch.Tensor]:
        return {"audio": asr.tokens, f"whisper_layer{self.emotion_layer}": asr.layer_tokens[self.emotion_layer - 1]}

    @property
    def text_encoder(self) -> TransformerTextEncoder:
        return self._get("minilm", lambda: load_minilm().to(self.device))

    @torch.no_grad()
    def text_emotion(self, texts: list[str]) -> torch.Tensor | None:
        from models.backbones.text_emotion import load_text_emotion

        model = self._get("minilm_emotion", lambda: (m.to(self.device) if (m := load_text_emotion()) else None))
        if model is None:
            return None
        return model(texts)[:, [model.labels.index(label) for label in LABEL7]]

    @property
    def fer(self):
        from models.backbones.fer_xception import load_mini_xception

        return self._get("fer", lambda: load_mini_xception().to(self.device))

    @torch.no_grad()
    def visual(self, crops: np.ndarray) -> VisualEncoding:
        from models.backbones.fer_xception import FER_LABEL7, preprocess

        out = self.fer(preprocess(crops, equalise=True).to(self.device))  # CLAHE: exposure-normalised faces
        return VisualEncoding(out.features, dict(out.maps), out.logits, FER_LABEL7)


class PaperBackbones(Backbones):
    """As published. Sources from `EMOWEB_PAPER_<NAME>` (local dir or hub id); none -> random init."""

    name = "paper"
    dims = {"audio": 768, "text": 512, "text_tokens": 768, "visual": 512}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.sources = {k: os.environ.get(f"EMOWEB_PAPER_{k.upper()}") or None for k in ("clip", "wav2vec2", "wavlm", "bert", "resnet18")}
        self.untrained = not any(self.sources.values())

    @property
    def clip(self):
        from models.backbones.paper import ClipTowers

        return self._get("clip", lambda: ClipTowers(self.sources["clip"]).to(self.device))

    def audio_tokens(self, audio: np.ndarray, asr: AsrResult) -> dict[str, torch.Tensor]:
        from models.backbones.paper import load_wav2vec2, load_wavlm, speech_tokens

        w2v = self._get("wav2vec2", lambda: load_wav2vec2(self.sources["wav2vec2"]).to(self.device))
        wavlm = self._get("wavlm", lambda: load_wavlm(self.sources["wavlm"]).to(self.device))
        mel = self.clip.images(self.clip.mel_images(self.whisper.log_mel(audio)))
        return {"audio": speech_tokens(w2v, audio), "wavlm": speech_tokens(wavlm, audio), "clip_mel": mel}

    @property
    def text_encoder(self):
        return self._get("bert", lambda: load_bert(self.sources["bert"]).to(self.device))

    def text(self, texts: list[str]) -> TextEncoding:
        """CLIP text tower for sentence embeddings; BERT token states for the models that attend over words."""
        enc = self.text_encoder(texts)
        enc.embedding = self.clip.texts(texts)
        return enc

    @torch.no_grad()
    def visual(self, crops: np.ndarray) -> VisualEncoding:
        from models.backbones.paper import ResNet18Maps

        resnet = self._get("resnet18", lambda: ResNet18Maps(self.sources["resnet18"]).to(self.device))
        return VisualEncoding(self.clip.images(crops), resnet(crops))


PROFILES: dict[str, type[Backbones]] = {"embedded": EmbeddedBackbones, "paper": PaperBackbones}
_INSTANCES: dict[tuple, Backbones] = {}
_INSTANCES_LOCK = threading.Lock()


def get_backbones(profile: str = "embedded", device: str = "auto", asr_beam: int = 1, threads: int = 0) -> Backbones:
    """The process-wide backbones of a profile (created once; encoders load on first use)."""
    if profile not in PROFILES:
        raise ValueError(f"unknown backbone profile {profile!r}; choose one of {sorted(PROFILES)}")
    key = (profile, resolve_device(device), asr_beam, threads)
    with _INSTANCES_LOCK:
        if key not in _INSTANCES:
            _INSTANCES[key] = PROFILES[profile](device, asr_beam, threads)
        return _INSTANCES[key]
