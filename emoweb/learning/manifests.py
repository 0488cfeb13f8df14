"""Dataset manifests shared by train and eval for every model.

A CSV with `path,label` and optional `text`, `speaker`, `split`; paths relative to the CSV. The
shared data's own manifests work as they are: `label7` stands in for `label`, `actor` or the face
photo's person name for `speaker`. A row's modality follows from its file: video = audio+visual,
audio file = audio only, image = visual only, no path but `text` = text only.

The two shared text corpora are read as they are published, as text-only rows (path None), with the
split taken from the file name (train -> 'train'; dev / valid -> 'val'):
- MELD (`*_sent_emo.csv`: Utterance, Emotion, Dialogue_ID): the speaker is the dialogue
  ("meld_dialogue12"), so a dev split by speaker keeps each conversation on one side. The published
  text is valid UTF-8 with curly quotes, which the text encoder reads as it reads straight ones, so
  it is kept as it is.
- GoEmotions Ekman (`*.tsv`: text, comma-separated label ids, id; `labels.txt` beside it names the
  ids): only the rows with exactly one label are kept (39,555 of 43,410 in train, 4,946 of 5,426 in
  valid), since a row has one label here; the speaker is the comment id.
"""
from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path

from emoweb.errors import EmoWebError
from emoweb.pipeline.media import IMAGE_SUFFIXES
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
    silent: bool = False  # a video without sound (a built partial-expression clip): its modality is "visual"
    built_from: str = ""  # a built clip: the `manifest` of the photos it was made from (its corpus when balancing)

    @property
    def corpus(self) -> str:
        """The corpus a built clip was made from (where `train --built-clips corpus` balances it), else its manifest."""
        return self.built_from or self.manifest

    @property
    def modality(self) -> str:
        if self.path is None:
            return "text"
        if self.silent:
            return "visual"
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


MELD_COLUMNS = {"Utterance", "Emotion", "Dialogue_ID"}
GOEMOTIONS_COLUMNS = ["text", "label", "id"]
_SPLIT_WORDS = {"train": "train", "dev": "val", "valid": "val", "val": "val", "test": "test"}


def _split_from_name(path: Path) -> str:
    """'train' / 'val' / 'test' from the file name's first word (`train_sent_emo.csv`, `valid.tsv`); '' if none."""
    return _SPLIT_WORDS.get(re.split(r"[_.\-]", path.name.lower())[0], "")


def _text_row(path: Path, text: str, label: str, speaker: str) -> Row:
    return Row(path=None, label=label, text=text.strip(), speaker=speaker, split=_split_from_name(path),
               source=path.name, manifest=f"{path.parent.name}/{path.name}")


def _read_goemotions(path: Path, text: str) -> list[Row]:
    labels_file = path.parent / "labels.txt"
    if not labels_file.is_file():
        raise EmoWebError(f"{path.name}: GoEmotions labels.txt not found beside it ({labels_file})")
    names = [line.strip() for line in decode(labels_file.read_bytes()).splitlines() if line.strip()]
    rows = []
    for n, raw in enumerate(csv.DictReader(io.StringIO(text, newline=""), delimiter="\t", quoting=csv.QUOTE_NONE), start=2):
        ids = [i.strip() for i in (raw["label"] or "").split(",") if i.strip()]
        if len(ids) != 1:  # several labels (or none): not a one-label row
            continue
        if not ids[0].isdigit() or int(ids[0]) >= len(names):
            raise EmoWebError(f"{path.name} line {n}: label id {ids[0]!r} is not one of the {len(names)} in labels.txt")
        rows.append(_text_row(path, raw["text"] or "", names[int(ids[0])], raw["id"] or ""))
    return rows


def read_manifest(path: str | Path) -> list[Row]:
    """Rows of one manifest (a CSV as above, MELD's CSV or a GoEmotions TSV); a clear error for a missing
    file or a missing label column."""
    path = Path(path)
    if not path.is_file():
        raise EmoWebError(f"manifest not found: {path}")
    text = decode(path.read_bytes())  # an invalid byte becomes U+FFFD
    if path.suffix.lower() == ".tsv" and text.split("\n", 1)[0].strip().split("\t") == GOEMOTIONS_COLUMNS:
        return _read_goemotions(path, text)
    with io.StringIO(text, newline="") as fh:
        reader = csv.DictReader(fh)
        fields = set(reader.fieldnames or [])
        if MELD_COLUMNS <= fields:
            return [_text_row(path, raw["Utterance"] or "", (raw["Emotion"] or "").strip(), f"meld_dialogue{raw['Dialogue_ID']}")
                    for raw in reader]
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
