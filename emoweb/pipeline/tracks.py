"""One track of a PyAV container: its packets decoded (corrupt ones skipped and counted), where it
starts and ends, its disposition, and the sound of a clip: every channel at 16 kHz, mixed to mono
without cancelling a channel, the track to analyse chosen among several. Used by `media.decode`.
"""
from __future__ import annotations

from collections.abc import Iterator

import av
import numpy as np

SAMPLE_RATE = 16_000
SILENCE_RMS = 1e-4  # below this (-80 dBFS) a track is silent; quiet real speech sits near 1e-3
ACTIVE_CHANNEL = 0.1  # a channel under a tenth of the loudest one's RMS (-20 dB) carries nothing to mix in
INVERTED_CORR = -0.5  # a channel this anti-correlated with the loudest one is out of phase: inverted, not averaged


class Packets:
    """One stream's decoded frames, packet by packet, skipping packets its decoder rejects.

    A valid container can carry one corrupt stream (damaged upload, bad encoder): `container.decode`
    would raise at the first bad packet and lose the other stream too. Here the bad packets are only
    counted (`skipped`), so good audio next to garbage video still gives an audio result, with a note.
    """

    def __init__(self, container: av.container.InputContainer, stream: av.stream.Stream) -> None:
        self.container, self.stream, self.skipped = container, stream, 0

    def __iter__(self) -> Iterator[av.frame.Frame]:
        for packet in self.container.demux(self.stream):
            try:
                decoded = packet.decode()
            except av.error.InvalidDataError:
                self.skipped += 1
                continue
            yield from decoded


def track_start(stream: av.stream.Stream) -> float | None:
    """The stream's first timestamp in seconds, when the file says."""
    return float(stream.start_time * stream.time_base) if stream.start_time is not None and stream.time_base else None


def track_end(stream: av.stream.Stream) -> float | None:
    """The stream's last timestamp in seconds (first timestamp + declared duration), when the file says."""
    start = track_start(stream)
    return start + float(stream.duration * stream.time_base) if start is not None and stream.duration else None


def is_cover(stream: av.stream.Stream) -> bool:
    """Cover art of an m4a/mp3 (an attached picture): a still shown by players, never the clip's video."""
    return bool(stream.disposition & av.stream.Disposition.attached_pic)


def read_audio(container, stream, max_seconds: float, lead: float) -> tuple[np.ndarray, int]:
    """Every channel at 16 kHz, [C, S], up to `max_seconds` after the clip's origin, with `lead` seconds of
    silence first when the track starts after the video (keeps sound and frames in step); also the number
    of undecodable packets skipped."""
    # interleaved, every channel kept: PyAV lists a bogus extra plane for planar 7.1 (reading it crashes)
    resampler = av.AudioResampler(format="flt", layout=None, rate=SAMPLE_RATE)
    limit = int(max_seconds * SAMPLE_RATE)
    pad = min(limit, int(round(lead * SAMPLE_RATE)))
    chunks: list[np.ndarray] = []  # [samples, C] each
    total = pad
    decoded = Packets(container, stream)
    for frame in decoded:
        for out in resampler.resample(frame):
            chunks.append(out.to_ndarray().reshape(-1, out.layout.nb_channels))
            total += len(chunks[-1])
        if total >= limit:
            break
    else:
        chunks += [out.to_ndarray().reshape(-1, out.layout.nb_channels) for out in resampler.resample(None)]
    if not chunks:
        return np.zeros((1, 0), np.float32), decoded.skipped
    audio = np.concatenate(chunks).T.astype(np.float32)
    if pad and audio.shape[1]:
        audio = np.concatenate([np.zeros((audio.shape[0], pad), np.float32), audio], axis=1)
    return np.clip(audio[:, :limit], -1.0, 1.0), decoded.skipped


def mix_down(channels: np.ndarray) -> tuple[np.ndarray, str | None]:
    """Mono from [C, S] channels without losing what one channel says clearly.

    A plain mean cancels speech recorded in antiphase (a mis-wired microphone: L = speech, R = -speech)
    and halves a voice on one channel only. So only channels within 20 dB of the loudest are mixed, and
    a channel strongly anti-correlated with the loudest is inverted first; the note says so.
    """
    if channels.shape[0] == 1:
        return channels[0], None
    rms = np.sqrt(np.mean(channels.astype(np.float64) ** 2, axis=1))
    loud = int(np.argmax(rms))
    if rms[loud] == 0:
        return channels[0], None
    active = rms >= ACTIVE_CHANNEL * rms[loud]
    corr = channels.astype(np.float64) @ channels[loud] / np.maximum(rms * rms[loud] * channels.shape[1], 1e-20)
    inverted = active & (corr < INVERTED_CORR)
    signs = np.where(inverted, -1.0, 1.0)
    mono = (channels[active] * signs[active, None]).mean(axis=0).astype(np.float32)
    note = None
    if inverted.any():
        note = f"{int(inverted.sum())} of {channels.shape[0]} audio channels out of phase: inverted before mixing to mono"
    return mono, note


def is_default(stream: av.stream.Stream) -> bool:
    return bool(stream.disposition & av.stream.Disposition.default)


def choose_audio(
    container, streams, max_seconds: float, origin: float
) -> tuple[av.stream.Stream, np.ndarray | None, int, list[str]]:
    """The sound to analyse from one or more audio tracks: the default one, else (or when it is silent)
    the first with sound; (the track, its mono 16 kHz samples or None, skipped packets, notes naming it)."""
    ranked = sorted(streams, key=lambda s: not is_default(s))  # stable: file order after the default
    tried = []
    for stream in ranked:
        start = track_start(stream)
        channels, skipped = read_audio(container, stream, max_seconds, 0.0 if start is None else start - origin)
        container.seek(0)
        wav, note = mix_down(channels)
        sound = bool(wav.size) and float(np.sqrt(np.mean(wav**2))) >= SILENCE_RMS
        tried.append((stream, wav, skipped, note, sound))
        if sound or len(streams) == 1:
            break
    stream, wav, skipped, note, sound = next((t for t in tried if t[4]), tried[0])
    notes = [note] if note else []
    if len(streams) > 1:
        has_default = is_default(ranked[0])
        if not sound:
            why = ("the default" if has_default else "the first") + "; every track is silent"
        elif is_default(stream):
            why = "the default"
        else:
            why = "the first with sound; " + ("the default track is silent" if has_default else "none is marked default")
        number = [s.index for s in streams].index(stream.index) + 1
        notes.insert(0, f"{len(streams)} audio tracks: used track {number} ({why})")
    return stream, (wav if wav.size else None), skipped, notes
