"""Dataset manifests shared by train and eval for every model.

A CSV with `path,label` and optional `text`, `speaker`, `split`; paths relative to the CSV. The
shared data's own manifests work as they are: `label7` stands in for `label`, `actor` or the face
photo's person name for `speaker`. A row's modality follows from its file: video = audio+visual,
audio file = audio only, image = visual only, no path but `text` = text only.
"""
from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path

from emoweb.errors import EmoWebError
from emoweb.media import IMAGE_SUFFIXES
from emoweb.safetext import decode

AUDIO_SUFFIXES = {".wav", ".flac", ".mp3", ".m4a", ".ogg", ".opus", ".aac"}


@dataclass(frozen=True)
class Row:
    path: Path | None
    label: str
    text: str
    speaker: str
    split: str
    source: str  # manifest file name; part of the dev-split hash, so it stays the bare name
    manifest: str  # "folder/file name" of the manifest: tells two `manifest.csv` apart in cards

    @property
    def modality(self) -> str:
        if self.path is None:
            return "text"
        suffix = self.path.suffix.lower()
        if suffix in IMAGE_SUFFIXES:
            return "visual"
        return "audio" if suffix in AUDIO_SUFFIXES else "audiovisual"


def _speaker(row: dict) -> str:
    if row.get("speaker"):
        return row["speaker"]
    if row.get("identity"):  # FER2013: a group of exact and near-duplicate photos
        return row["identity"]
    if row.get("actor"):
        return f"actor{int(row['actor']):02d}"
    if row.get("source_name"):  # face photos: "Aaron_Eckhart_0001.jpg" -> identity "Aaron_Eckhart"
        return re.sub(r"_\d+$", "", Path(row["source_name"]).stem)
    return ""


def read_manifest(path: str | Path) -> list[Row]:
    """Rows of one manifest; a clear error for a missing file or a missing label column."""
    path = Path(path)
    if not path.is_file():
        raise EmoWebError(f"manifest not found: {path}")
    with io.StringIO(decode(path.read_bytes()), newline="") as fh:  # an invalid byte becomes U+FFFD
        reader = csv.DictReader(fh)
        fields = set(reader.fieldnames or [])
        label_col = "label" if "label" in fields else "label7" if "label7" in fields else None
        if label_col is None:
            raise EmoWebError(f"manifest {path.name} has no 'label' column")
        rows = []
        for raw in reader:
            rel = (raw.get("path") or "").strip()
            rows.append(
                Row(
                    path=(path.parent / rel) if rel else None,
                    label=raw[label_col].strip(),
                    text=(raw.get("text") or "").strip(),
                    speaker=_speaker(raw),
                    split=(raw.get("split") or "").strip(),
                    source=path.name,
                    manifest=f"{path.parent.name}/{path.name}",
                )
            )
    return rows


def read_manifests(spec: str) -> list[Row]:
    """Comma-separated manifest paths, concatenated."""
    return [row for part in spec.split(",") if part.strip() for row in read_manifest(part.strip())]
