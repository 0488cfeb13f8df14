"""Clips in: an upload stored in a profile with every model's answer, and stored clips answered again.

Invariants:
- Media files live at `<data_dir>/media/<profile id>/<sha256><suffix>`: generated, never a
  user-supplied path. A file is written to a temp name in that folder and renamed into place
  inside the database transaction that records it; any failure leaves no row and no file (what a
  killed process leaves goes at the next start: `ServiceContext.remove_interrupted_writes`).
- Every clip is decoded and encoded once: ingest stores, per backbone profile and model, the
  cache keys (`<model>.fused`, `<model>.audio`, `<model>.visual`) and the base logits
  (`<model>.logits`, over the profile's label set), and apart from them (never a cache key) each model's
  own decision per sense (`clip_senses`), which the headline's face-against-voice rule reads. Re-uploads
  and predictions on stored clips work from those; the same content in another profile with the same label
  set is not encoded again.
"""
from __future__ import annotations

import errno
import hashlib
import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from emoweb.errors import EmoWebError, MediaError
from emoweb.pipeline.media import display_name, file_sha256  # display_name: uploaded names may hold newlines
from emoweb.safetext import clean
from emoweb.services import cachearrays, tempfiles
from emoweb.services.context import Progress, ServiceContext, clip_info
from emoweb.services.predictions import Predictions, answers
from emoweb.services.records import ClipResult
from emoweb.services.store import CaregiverRepository
from models.cache import logits_from_probs
from storage.schema import Clip, Profile

_SUFFIX = re.compile(r"\.[a-z0-9]{1,10}")
_NO_SPACE = {errno.ENOSPC: "disk full", errno.EDQUOT: "disk quota exceeded", errno.EFBIG: "file size limit reached"}


def safe_suffix(name: str) -> str:
    """The file's extension when it is a plain one ('.mp4'), else none: the stored name is ours."""
    suffix = Path(name).suffix.lower()
    return suffix if _SUFFIX.fullmatch(suffix) else ""


def _align(base: Any, labels: Sequence[str], label_set: Sequence[str]) -> np.ndarray:
    """A model's base logits (a tensor [C]) re-ordered to the profile's label set; a label the model has
    no column for gets the row mean (it can win only through the cache)."""
    values = base.detach().float().cpu().reshape(-1)
    index = {label: i for i, label in enumerate(labels)}
    mean = float(values.mean()) if values.numel() else 0.0
    return np.asarray([float(values[index[label]]) if label in index else mean for label in label_set], np.float32)


Senses = dict[str, dict[str, dict[str, float]]]  # {model: {sense: {label: p}}}: `Prediction.sense_decisions()`


def _known(senses: Senses, predictions: dict) -> Senses | None:
    """Stored per-sense decisions as `ClipResult.senses`: None (not known, rather than "none") when a model
    decided but none are stored, as for a clip stored before they were kept."""
    return senses if senses or not any(p.decided for p in predictions.values()) else None


class _AlreadyStored(Exception):
    """Raised inside an ingest transaction when a concurrent upload stored the same content first."""

    def __init__(self, clip: Clip):
        self.clip = clip


class Ingest:
    """Media -> stored features and answers: uploads, and stored clips answered from their features."""

    def __init__(self, ctx: ServiceContext):
        self.ctx = ctx
        self.predictions = ctx.once(Predictions)

    def ingest(self, prof: Profile, path: Path, source: str, original_name: str | None, progress: Progress | None,
               explain: bool) -> ClipResult:
        """See `CaregiverService.ingest` (which has refused a file that is no media: `uploads.check_upload`)."""
        sha = file_sha256(path)
        name = clean(original_name if original_name is not None else path.name)
        existing = self.ctx.repo.find_clip(prof.id, sha)
        if existing is not None:
            return self.known(prof, existing, explain, progress)
        try:
            return self._ingest_new(prof, path, sha, source, name, progress)
        except _AlreadyStored as raced:
            return self.known(prof, raced.clip, explain, progress)

    def known(self, prof: Profile, clip: Clip, explain: bool = False, progress: Progress | None = None) -> ClipResult:
        """A stored clip's answers from its stored features (`explain`: its media run through the models
        once more for the full outputs, storing nothing new)."""
        stored = self.ctx.repo.get_features(clip.id, self.ctx.backbone)
        if not any(cachearrays.split_name(n)[1] == cachearrays.LOGITS for n in stored):
            return self._encode_stored(prof, clip, progress)  # stored under another backbone profile only
        predictions = self.predictions.score(prof, stored, clip.id)
        self.predictions.record(clip.id, predictions)
        senses = self.ctx.repo.get_senses(clip.id, self.ctx.backbone)
        outputs = None
        if explain:
            outputs = self._compute(prof, self.ctx.stored_media(clip), None, progress)[3]
            self.predictions.apply_to_outputs(outputs, predictions, prof)
        return ClipResult(clip_info(clip), False, predictions, outputs, _known(senses, predictions))

    def _compute(self, prof: Profile, path: Path, sha: str | None, progress: Progress | None = None):
        """Decode + backbones once, every model once: (arrays to store, kind, duration, Prediction)."""
        names = self.ctx.model_names()
        predictor = self.ctx.predictor
        feats = predictor.extractor(path, progress)
        if sha is not None and feats.sha256 != sha:
            raise MediaError(f"{display_name(path)} changed while it was being read: upload it again")
        result = predictor.run_models(feats, names, progress=progress, labels=list(prof.label_set))
        arrays: dict[str, np.ndarray] = {}
        for model, out in result.outputs.items():
            arrays[f"{model}.{cachearrays.FUSED}"] = out.embedding[0].detach().float().cpu().numpy()
            for modality, z in out.modality_embeddings.items():
                if feats.modalities.get(modality, True) and bool(z[0].any()):  # a zero row: the clip lacks it
                    arrays[f"{model}.{modality}"] = z[0].detach().float().cpu().numpy()
            base = out.logits if out.logits is not None else logits_from_probs(out.probs)
            arrays[cachearrays.logits_name(model)] = _align(base[0], out.labels, prof.label_set)
        return arrays, feats.kind, feats.duration, result

    def _reusable(self, prof: Profile, sha: str) -> tuple[dict[str, np.ndarray], Senses, str, float | None, list[str]] | None:
        """Stored arrays, per-sense decisions, kind, duration and notes of the same content in another profile
        with the same label set: no re-encoding."""
        repo = self.ctx.repo
        for other in repo.clips_by_sha(sha):
            if other.profile_id == prof.id:
                continue
            other_labels = repo.get_profile(other.profile_id).label_set
            stored = repo.get_features(other.id, self.ctx.backbone)
            logits = [a for n, a in stored.items() if cachearrays.split_name(n)[1] == cachearrays.LOGITS]
            if logits and all(a.size == len(prof.label_set) for a in logits) and other_labels[: len(prof.label_set)] == list(prof.label_set):
                return stored, repo.get_senses(other.id, self.ctx.backbone), other.kind, other.duration, list(other.notes)
        return None

    def _store(self, repo: CaregiverRepository, clip_id: int, arrays: dict[str, np.ndarray], senses: Senses,
               predictions: dict) -> None:
        """A clip's features and per-sense decisions under this backbone profile and its answers, in the
        caller's transaction."""
        repo.put_features(clip_id, self.ctx.backbone, arrays)
        repo.put_senses(clip_id, self.ctx.backbone, senses)
        for model, p in answers(predictions):
            repo.add_prediction(clip_id, model, p.probs, self.predictions.version(p))

    def _ingest_new(self, prof: Profile, path: Path, sha: str, source: str, name: str, progress: Progress | None) -> ClipResult:
        ctx = self.ctx
        reused = self._reusable(prof, sha)
        outputs = None
        if reused is None:
            arrays, kind, duration, outputs = self._compute(prof, path, sha, progress)  # bad media fails here: nothing written
            senses, notes = outputs.sense_decisions(), list(outputs.features.warnings)
        else:
            arrays, senses, kind, duration, notes = reused
        predictions = self.predictions.score(prof, arrays)
        if outputs is not None:
            self.predictions.apply_to_outputs(outputs, predictions, prof)
        relative = f"media/{prof.id}/{sha}{safe_suffix(name) or safe_suffix(path.name)}"
        final = ctx.media_file(relative)
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=tempfiles.temp_prefix(tempfiles.INGEST), suffix=".part")
        placed = False
        try:
            digest = hashlib.sha256()
            with os.fdopen(fd, "wb") as dst, open(path, "rb") as src:
                while block := src.read(1 << 20):
                    digest.update(block)
                    dst.write(block)
                dst.flush()
                os.fsync(dst.fileno())
            if digest.hexdigest() != sha:
                raise MediaError(f"{display_name(path)} changed while it was being read: upload it again")
            ctx.pause("ingest.written")
            with ctx.sessions() as session, session.begin():  # every row of the clip, or none
                repo = CaregiverRepository(session)
                clip, new = repo.add_clip(prof.id, sha, relative, kind, source, name, duration, notes)
                if not new:
                    raise _AlreadyStored(clip)
                self._store(repo, clip.id, arrays, senses, predictions)
                info = clip_info(clip)
                os.replace(tmp, final)  # last step before the commit
                placed = True
                ctx.pause("ingest.commit")
        except BaseException as exc:
            if placed:
                final.unlink(missing_ok=True)
            if isinstance(exc, OSError) and exc.errno in _NO_SPACE:
                raise EmoWebError(ctx.no_space_message(_NO_SPACE[exc.errno])) from None
            raise
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return ClipResult(info, True, predictions, outputs, _known(senses, predictions))  # reused from an old clip: None

    def _encode_stored(self, prof: Profile, clip: Clip, progress: Progress | None = None) -> ClipResult:
        """Features for this backbone profile from the clip's stored media (first use of a profile)."""
        arrays, _, _, outputs = self._compute(prof, self.ctx.stored_media(clip), None, progress)
        senses = outputs.sense_decisions()
        predictions = self.predictions.score(prof, arrays, clip.id)
        self.predictions.apply_to_outputs(outputs, predictions, prof)
        with self.ctx.sessions() as session, session.begin():
            self._store(CaregiverRepository(session), clip.id, arrays, senses, predictions)
        return ClipResult(clip_info(clip), False, predictions, outputs, senses)
