"""On-disk cache of ClipFeatures, keyed by content hash and profile: the backbones run once per sample.

Training epochs, evaluation and the composite pairs all read from here, so only the heads cost time.
Display-only data (full frames, raw audio) is dropped; face crops are kept small for the CNN models.
Texts with no media (text-only manifest rows: MELD, GoEmotions) are encoded in batches and kept in
256 shard files per profile (by the first two hex digits of the text's hash), not one file per text.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import fields, replace
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from tqdm import tqdm

from emoweb.errors import EmoWebError
from emoweb.learning.manifests import Row
from emoweb.pipeline.features import ClipFeatures, FeatureExtractor, normalise_text, text_sha256
from emoweb.pipeline.media import IMAGE_SUFFIXES

VERSION = 4  # bump when the pipeline's output changes (2: torch Whisper encoder, float32, + layer 4; 3: BlazeFace tracks,
# aligned + CLAHE faces; 4: Whisper window fitted to the clip)
STORED_CROP = 64
_DROP = {"frames", "audio"}
TEXT_BATCH = 256  # texts per text-encoder call
TEXT_STEP_SHARDS = 16  # shards encoded (texts sorted by length: less padding, 1.4x faster) and saved together
TEXT_SOURCE = "manifest text"
TEXT_VERSION = 2  # the text shards' own version (2: + the text backbone's decision): re-encoding texts takes minutes, media hours


def _key_path(root: Path, namespace: str, sha: str) -> Path:
    return root / f"{namespace}-v{VERSION}" / sha[:2] / f"{sha}.pt"


def _text_shard_path(root: Path, profile: str, sha: str) -> Path:
    return root / f"{profile}-v{VERSION}" / f"text-v{TEXT_VERSION}" / f"{sha[:2]}.pt"


def _save_atomic(obj, target: Path) -> None:
    """torch.save to a temporary file beside `target`, then rename: a reader sees the old file or the new."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _to_record(f: ClipFeatures) -> dict:
    rec = {}
    for fld in fields(ClipFeatures):
        if fld.name in _DROP:
            continue
        value = getattr(f, fld.name)
        if fld.name == "face_crops" and value is not None:
            value = torch.nn.functional.interpolate(
                torch.from_numpy(value).permute(0, 3, 1, 2).float(), size=(STORED_CROP, STORED_CROP), mode="area"
            ).round().to(torch.uint8)
        elif isinstance(value, np.ndarray):
            value = torch.from_numpy(value).half()
        elif isinstance(value, torch.Tensor) and value.is_floating_point():
            value = value.half()
        elif isinstance(value, dict):
            value = {k: v.half() if isinstance(v, torch.Tensor) and v.is_floating_point() else v for k, v in value.items()}
        rec[fld.name] = value
    return rec


def _from_record(rec: dict, compact: bool = False) -> ClipFeatures:
    """`compact`: the sequences (audio tokens, log-mel, text tokens, visual maps) stay float16 as stored,
    half the memory: training holds ~40k clips at once, and `to_input` pads them into float32 batches."""
    crops = rec.pop("face_crops", None)
    log_mel = rec.pop("log_mel", None)
    f = ClipFeatures(**rec)
    f.face_crops = None if crops is None else crops.permute(0, 2, 3, 1).numpy()
    wide = (lambda v: v) if compact else (lambda v: v.float())
    f.log_mel = None if log_mel is None else wide(log_mel).numpy()
    for name in ("text_embedding", "text_logits", "visual_features", "visual_logits"):
        value = getattr(f, name)
        if value is not None:
            setattr(f, name, value.float())
    if f.text_tokens is not None:
        f.text_tokens = wide(f.text_tokens)
    f.audio_tokens = {k: wide(v) for k, v in f.audio_tokens.items()}
    f.visual_maps = {k: wide(v) for k, v in f.visual_maps.items()}
    return f


class FeatureStore:
    """`get(row)` returns cached features or computes and stores them (atomic write)."""

    def __init__(self, extractor: FeatureExtractor, root: Path, compact: bool = False):
        self.extractor = extractor
        self.root = root
        self.compact = compact
        self._sha: dict[Path, str] = {}

    def _sha_of(self, path: Path) -> str:
        if path not in self._sha:
            from emoweb.pipeline.media import file_sha256

            self._sha[path] = file_sha256(path)
        return self._sha[path]

    def get(self, path: Path) -> ClipFeatures:
        # an image has no audio, so its features are the same with or without ASR: one entry serves both
        with_text = self.extractor.transcribe or path.suffix.lower() in IMAGE_SUFFIXES
        namespace = self.extractor.backbones.name + ("" if with_text else "-noasr")
        target = _key_path(self.root, namespace, self._sha_of(path))
        if target.is_file():
            return _from_record(torch.load(target, weights_only=False), self.compact)
        feats = self.extractor(path)
        _save_atomic(_to_record(feats), target)
        return _from_record(_to_record(feats))

    def get_texts(self, texts: Iterable[str], desc: str = "text features") -> dict[str, ClipFeatures]:
        """Features of texts with no media (`FeatureExtractor.from_texts`), keyed by the normalised text
        (`normalise_text`). Cached texts are read from their shard; the others are encoded TEXT_BATCH at a
        time, TEXT_STEP_SHARDS shards per step, and a step's shards are rewritten atomically as soon as it is
        done, so an interrupted run resumes where it stopped. Raises EmoWebError for an empty text."""
        wanted = {normalise_text(t) for t in texts}
        by_shard: dict[Path, dict[str, str]] = {}
        for text in wanted:
            sha = text_sha256(text)
            by_shard.setdefault(_text_shard_path(self.root, self.extractor.backbones.name, sha), {})[sha] = text
        out: dict[str, ClipFeatures] = {}
        todo: dict[Path, dict] = {}  # shard -> its records, for the shards with texts to encode
        for shard, shas in sorted(by_shard.items()):
            records = torch.load(shard, weights_only=False) if shard.is_file() else {}
            out.update({text: _from_record(dict(records[sha]), self.compact) for sha, text in shas.items() if sha in records})
            if any(sha not in records for sha in shas):
                todo[shard] = records
        shards = list(todo)
        n_new = len(wanted) - len(out)
        with tqdm(total=n_new, desc=desc, unit="text", disable=n_new < TEXT_BATCH) as bar:
            for start in range(0, len(shards), TEXT_STEP_SHARDS):
                step = shards[start : start + TEXT_STEP_SHARDS]
                new = sorted((t for shard in step for sha, t in by_shard[shard].items() if sha not in todo[shard]), key=len)
                for i in range(0, len(new), TEXT_BATCH):
                    for feats in self.extractor.from_texts(new[i : i + TEXT_BATCH], TEXT_SOURCE):
                        record = _to_record(feats)
                        todo[_text_shard_path(self.root, self.extractor.backbones.name, feats.sha256)][feats.sha256] = record
                        out[feats.transcript] = _from_record(dict(record), self.compact)
                    bar.update(len(new[i : i + TEXT_BATCH]))
                for shard in step:
                    _save_atomic(todo.pop(shard), shard)  # written: its records need not stay in memory
        return out

    def encode_rows(self, rows: Iterable[Row], desc: str = "features") -> tuple[list[tuple[Row, ClipFeatures]], list[str]]:
        """Features for every row with a file or, for a text-only row, a text (`get_texts`); returns
        (pairs in row order, skipped reasons)."""
        out, skipped = [], []
        rows = list(rows)
        texts = self.get_texts([r.text for r in rows if r.path is None and normalise_text(r.text)], desc=f"{desc} (text)")
        for row in tqdm(rows, desc=desc, unit="clip", disable=all(r.path is None for r in rows)):
            if row.path is None:
                text = normalise_text(row.text)
                if text:  # a copy per row: rows with the same words do not share one mutable object
                    out.append((row, replace(texts[text])))
                else:
                    skipped.append("text-only row with no text")
                continue
            if not row.path.is_file():  # a manifest naming a file that is not there: skip it, say so
                skipped.append(f"{row.path.name}: file not found ({row.path})")
                continue
            try:
                out.append((row, self.get(row.path)))
            except (EmoWebError, OSError) as exc:
                skipped.append(f"{row.path.name}: {exc}")
        return out, skipped
