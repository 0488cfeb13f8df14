"""On-disk cache of ClipFeatures, keyed by content hash and profile: the backbones run once per sample.

Training epochs, evaluation and the composite pairs all read from here, so only the heads cost time.
Display-only data (full frames, raw audio) is dropped; face crops are kept small for the CNN models.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import fields
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from tqdm import tqdm

from emoweb.errors import EmoWebError
from emoweb.features import ClipFeatures, FeatureExtractor
from emoweb.manifests import Row
from emoweb.media import IMAGE_SUFFIXES

VERSION = 4  # bump when the pipeline's output changes (2: torch Whisper encoder, float32, + layer 4; 3: BlazeFace tracks,
# aligned + CLAHE faces; 4: Whisper window fitted to the clip)
STORED_CROP = 64
_DROP = {"frames", "audio"}


def _key_path(root: Path, namespace: str, sha: str) -> Path:
    return root / f"{namespace}-v{VERSION}" / sha[:2] / f"{sha}.pt"


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


def _from_record(rec: dict) -> ClipFeatures:
    crops = rec.pop("face_crops", None)
    log_mel = rec.pop("log_mel", None)
    f = ClipFeatures(**rec)
    f.face_crops = None if crops is None else crops.permute(0, 2, 3, 1).numpy()
    f.log_mel = None if log_mel is None else log_mel.float().numpy()
    for name in ("text_embedding", "text_tokens", "visual_features", "visual_logits"):
        value = getattr(f, name)
        if value is not None:
            setattr(f, name, value.float())
    f.audio_tokens = {k: v.float() for k, v in f.audio_tokens.items()}
    f.visual_maps = {k: v.float() for k, v in f.visual_maps.items()}
    return f


class FeatureStore:
    """`get(row)` returns cached features or computes and stores them (atomic write)."""

    def __init__(self, extractor: FeatureExtractor, root: Path):
        self.extractor = extractor
        self.root = root
        self._sha: dict[Path, str] = {}

    def _sha_of(self, path: Path) -> str:
        if path not in self._sha:
            from emoweb.media import file_sha256

            self._sha[path] = file_sha256(path)
        return self._sha[path]

    def get(self, path: Path) -> ClipFeatures:
        # an image has no audio, so its features are the same with or without ASR: one entry serves both
        with_text = self.extractor.transcribe or path.suffix.lower() in IMAGE_SUFFIXES
        namespace = self.extractor.backbones.name + ("" if with_text else "-noasr")
        target = _key_path(self.root, namespace, self._sha_of(path))
        if target.is_file():
            return _from_record(torch.load(target, weights_only=False))
        feats = self.extractor(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".tmp")
        os.close(fd)
        try:
            torch.save(_to_record(feats), tmp)
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return _from_record(_to_record(feats))

    def encode_rows(self, rows: Iterable[Row], desc: str = "features") -> tuple[list[tuple[Row, ClipFeatures]], list[str]]:
        """Features for every row with a file; returns (pairs, skipped reasons)."""
        out, skipped = [], []
        rows = list(rows)
        for row in tqdm(rows, desc=desc, unit="clip"):
            if row.path is None:
                skipped.append("text-only row (no media)")
                continue
            if not row.path.is_file():  # a manifest naming a file that is not there: skip it, say so
                skipped.append(f"{row.path.name}: file not found ({row.path})")
                continue
            try:
                out.append((row, self.get(row.path)))
            except (EmoWebError, OSError) as exc:
                skipped.append(f"{row.path.name}: {exc}")
        return out, skipped
