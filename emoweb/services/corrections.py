"""A caregiver's labels: corrections (append-only, with undo), the labelling queue, and label files.

Storage only: no media, no models, no torch.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import replace
from typing import Any

from emoweb.errors import EmoWebError, UnknownLabelError
from emoweb.safetext import clean, decode, name, name_key
from emoweb.services import labelfiles
from emoweb.services.context import ServiceContext
from emoweb.services.headline import sense_conflict
from emoweb.services.modelinfo import in_model_order
from emoweb.services.records import CorrectionInfo, ImportReport, QueueEntry
from emoweb.services.store import CaregiverRepository
from storage.schema import Clip, Correction, Profile

_SHA256 = re.compile(r"[0-9a-f]{64}")


def known_label(label: str, label_set: list[str]) -> str:
    """`label` spelt as the label set spells it when they differ only in case or Unicode form ("Neutral", "JOY",
    a decomposed "ü"), else as given: a caregiver's capital letter must not be refused, nor become a second
    "Neutral" beside "neutral"."""
    label = name(label)
    same = [known for known in label_set if name_key(known) == name_key(label)]
    return label if label in label_set or not same else same[0]


# everyday words for the seven emotions, for "did you mean": a caregiver types "happy", the label is joy
EVERYDAY_WORDS = {"happy": "joy", "happiness": "joy", "glad": "joy", "angry": "anger", "mad": "anger", "cross": "anger",
                  "sad": "sadness", "unhappy": "sadness", "scared": "fear", "afraid": "fear", "frightened": "fear",
                  "surprised": "surprise", "disgusted": "disgust"}


def meant_label(label: str, label_set: list[str]) -> str | None:
    """The profile's label that `label` most likely means: its everyday word ("happy" -> joy) or a near
    spelling ("angr" -> anger); None when none is close."""
    word = name_key(label)
    keys = {name_key(known): known for known in label_set}
    if EVERYDAY_WORDS.get(word) in keys:
        return keys[EVERYDAY_WORDS[word]]
    close = difflib.get_close_matches(word, list(keys), n=1, cutoff=0.75)
    return keys[close[0]] if close else None


def comma_in(label: str) -> str | None:
    """The one line for a label holding a comma (a label set is written and typed as "calm, upset": "a,b"
    would read as two labels and could never be typed back); None when it has none."""
    return f"a label cannot hold a comma: {label!r} (label sets are listed with commas)" if "," in label else None


def not_in_label_set(label: str, prof: Profile) -> str:
    """The one line for a label the profile does not have, naming the ones it has (and the one it most
    likely means, before anyone adds it as a new label beside it)."""
    meant = meant_label(label, list(prof.label_set))
    return (f"label {label!r} is not in the label set of profile {prof.name!r} ({', '.join(prof.label_set)})"
            + (f"; did you mean {meant!r}?" if meant else ""))


def correction_info(c: Correction) -> CorrectionInfo:
    return CorrectionInfo(c.id, c.clip_id, c.label, c.annotator, c.note, c.created, undoes=c.undoes_id)


class Corrections:
    """Labels of one service's database; profiles and clips come resolved (`ServiceContext`)."""

    def __init__(self, ctx: ServiceContext):
        self.ctx = ctx

    def record(self, clip: Clip, prof: Profile, label: str, annotator: str, note: str, allow_new_label: bool) -> CorrectionInfo:
        """See `CaregiverService.record_correction`."""
        label, annotator, note = (clean(x or "") for x in (label, annotator, note))
        label = known_label(label.strip(), list(prof.label_set))
        if label and label not in prof.label_set and not allow_new_label:
            raise UnknownLabelError(not_in_label_set(label, prof))
        if label not in prof.label_set and comma_in(label):
            raise EmoWebError(comma_in(label))
        was = self.ctx.repo.current_label(clip.id)
        if was is not None and was == label and not note.strip():  # a second tap on the same label: nothing to undo later
            return replace(correction_info(self.ctx.repo.current_corrections(prof.id)[clip.id]), unchanged=True)
        info = correction_info(self.ctx.repo.add_correction(clip.id, label, annotator, note, allow_new_label))
        return replace(info, replaced=was if was != info.label else None)

    def undo(self, clip: Clip, annotator: str) -> dict[str, Any]:
        """Withdraw the clip's current label; the one before it (or none) is current again."""
        undo = self.ctx.repo.undo_last_correction(clip.id, clean(annotator or ""))
        return {"clip_id": clip.id, "undone": undo.label, "current": self.ctx.repo.current_label(clip.id)}

    def history(self, clip: Clip) -> list[CorrectionInfo]:
        return [correction_info(c) for c in self.ctx.repo.corrections(clip.id)]

    def queue(self, prof: Profile, limit: int | None) -> list[QueueEntry]:
        """Unlabelled first; then clips the models disagree on, or whose face and voice point to different
        labels (the headline's rule, `sense_conflict`: the answer shown for them is "not sure"); then the
        least sure (smallest margin)."""
        senses = self.ctx.repo.senses_of_profile(prof.id, self.ctx.backbone)
        differ = {clip_id: said for clip_id, by_model in senses.items() if (said := sense_conflict(by_model))}
        return [
            QueueEntry(i.clip.id, i.clip.original_name, i.clip.created, i.label, in_model_order(i.top_labels), i.margin, i.disagree,
                       differ.get(i.clip.id), len(set(i.top_labels.values())) > 1)
            for i in self.ctx.repo.labelling_queue(prof.id, limit, differ)
        ]

    def export(self, prof: Profile, fmt: str) -> str:
        """See `CaregiverService.export_labels`."""
        current = self.ctx.repo.current_corrections(prof.id)
        clips = self.ctx.repo.clips_by_ids(current)
        rows = [
            {"sha256": clips[cid].sha256, "original_name": clips[cid].original_name, "label": c.label,
             "annotator": c.annotator, "note": c.note, "created": c.created.isoformat()}
            for cid, c in sorted(current.items())
        ]
        return labelfiles.render(prof.name, prof.label_set, rows, fmt)

    def import_file(self, prof: Profile, text: str | bytes, fmt: str, annotator: str | None, allow_new_labels: bool) -> ImportReport:
        """See `CaregiverService.import_labels`."""
        rows = labelfiles.parse(decode(text) if isinstance(text, bytes) else text, fmt)
        annotator = clean(annotator or "")
        clips = {c.sha256: c for c in self.ctx.repo.list_clips(prof.id)}
        current = {cid: (c.label, c.note) for cid, c in self.ctx.repo.current_corrections(prof.id).items()}
        label_set = list(prof.label_set)
        given: dict[str, str] = {}  # sha256 -> where in the file its row was
        imported = unchanged = 0
        unmatched: list[str] = []
        refused: list[str] = []
        with self.ctx.sessions() as session, session.begin():
            repo = CaregiverRepository(session)
            for where, row in rows:
                sha = row.get("sha256", "").strip().lower()
                label = known_label(row.get("label", "").strip(), label_set)
                if not _SHA256.fullmatch(sha):
                    refused.append(f"{where}: not a sha256: {sha[:80]!r}")
                    continue
                clip = clips.get(sha)
                if clip is None:
                    unmatched.append(f"{sha} {row.get('original_name', '')}".strip())
                    continue
                if not label:
                    refused.append(f"{where}: empty label")
                    continue
                if sha in given:  # a second row for the clip: which one the caregiver meant is not ours to guess
                    refused.append(f"{where}: {clip.original_name} has a row already ({given[sha]}); its first row is kept")
                    continue
                given[sha] = where
                note = clean(row.get("note", ""))
                was_label, was_note = current.get(clip.id, (None, ""))
                if was_label == label and (not note.strip() or note == was_note):  # a new note is kept, as `label --note`
                    unchanged += 1
                    continue
                if label not in label_set and comma_in(label):
                    refused.append(f"{where}: {comma_in(label)}")
                    continue
                if label not in label_set and not allow_new_labels:
                    meant = meant_label(label, label_set)
                    refused.append(f"{where}: label {label!r} is not in the label set of {prof.name!r}"
                                   + (f" (did you mean {meant!r}?)" if meant else ""))
                    continue
                repo.add_correction(clip.id, label, annotator or row.get("annotator", ""), note, allow_new_label=allow_new_labels)
                if label not in label_set:
                    label_set.append(label)
                current[clip.id] = (label, note)
                imported += 1
        return ImportReport(imported, unchanged, unmatched, refused)
