"""Models compared on a labelled set: a profile's labelled clips, or a manifest of the shared data (or
an uploaded one) capped to a stratified sample. What the Compare tab calls (the UI only calls
services); the scoring itself is `emoweb.learning`'s, shared with `python -m emoweb eval`.

The learning modules import torch and the models: they are imported on first use, so building the
app (or a command that never compares) does not load them.
"""
from __future__ import annotations

import csv
import random
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from emoweb.config import SHARED_DATA, Settings
from emoweb.errors import EmoWebError
from emoweb.services.records import QueueEntry

MAX_SERVER_MANIFESTS = 20  # the dropdown lists at most this many (the shared folder holds a few corpora)


def server_manifests(root: Path = SHARED_DATA) -> dict[str, Path]:
    """Manifests under `root` (the shared data folder) that the evaluator can read: name shown (the
    path relative to `root`) -> path. An unreadable one is left out rather than offered and refused."""
    found: dict[str, Path] = {}
    if not root.is_dir():
        return found
    from emoweb.learning.manifests import read_manifest

    for path in sorted(root.glob("**/manifest*.csv"))[:MAX_SERVER_MANIFESTS]:
        try:
            read_manifest(path)
        except (EmoWebError, OSError, KeyError, ValueError, csv.Error):
            continue
        found[str(path.relative_to(root))] = path
    return found


def _inside(path: Path, roots: Sequence[Path]) -> bool:
    resolved = path.resolve()
    return any(resolved.is_relative_to(r.resolve()) for r in roots)


def _stratified(rows: list, max_rows: int) -> list:
    """At most `max_rows` rows, round robin over the labels (as balanced as the data allows), seeded:
    the same manifest gives the same sample each time."""
    if len(rows) <= max_rows:
        return rows
    rng = random.Random(0)
    by_label: dict[str, list] = {}
    for r in rows:
        by_label.setdefault(r.label, []).append(r)
    pools = [rng.sample(by_label[lab], len(by_label[lab])) for lab in sorted(by_label)]
    picked: list = []
    while len(picked) < max_rows:
        for pool in pools:
            if pool and len(picked) < max_rows:
                picked.append(pool.pop())
    return picked


def capped_rows(settings: Settings, source: Path, split: str, max_rows: int, uploaded: bool) -> tuple[list, int]:
    """(At most `max_rows` rows of `split` of the manifest `source` (every row when `split` is ''),
    stratified by label and seeded; the number of rows in `source`). An uploaded manifest's paths are
    absolute or relative to the shared data folder. Every path must lie in the shared data folder,
    or, in a shared (single-family) deployment, also the data dir (it holds every owner's media):
    else EmoWebError, as for no row of `split`."""
    from emoweb.learning.manifests import read_manifest

    rows = read_manifest(source)
    if uploaded:
        rows = [replace(r, path=SHARED_DATA / r.path.relative_to(source.parent))
                if r.path is not None and r.path.is_relative_to(source.parent) else r for r in rows]
    roots = [Path(settings.data_dir), SHARED_DATA] if settings.shared else [SHARED_DATA]
    outside = [r for r in rows if r.path is not None and not _inside(r.path, roots)]
    if outside:
        where = "the data dir and the shared data folder" if settings.shared else "the shared data folder"
        raise EmoWebError(f"{len(outside)} manifest row(s) point outside {where} "
                          f"(first: {outside[0].path.name!r}); refused")
    total = len(rows)
    if split:
        rows = [r for r in rows if r.split == split]
    if not rows:
        raise EmoWebError(f"no rows with split {split!r} in the manifest")
    return _stratified(rows, max_rows), total


def write_manifest(rows: Sequence, out: Path) -> Path:
    """`rows` (of `capped_rows`) as a manifest CSV at `out` with absolute paths; a row without a split
    is written as 'eval'. Returns `out`."""
    with open(out, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "text", "speaker", "split"])
        for r in rows:
            w.writerow(["" if r.path is None else str(r.path.resolve()), r.label, r.text, r.speaker, r.split or "eval"])
    return out


def stored_answer_reports(entries: Sequence[QueueEntry], labels: Sequence[str]) -> dict[str, dict]:
    """{model: classification report} of each model's latest stored answer against the current label, over
    every labelled clip of `entries` (no clip is encoded again): a clip a model gave no answer for counts as
    NO_DECISION, an error, as in `eval` (the table's n then matches the clips counted above it)."""
    from emoweb.learning.metrics import NO_DECISION, classification_report

    models = sorted({m for e in entries for m in e.top_labels})
    return {m: classification_report([e.label for e in entries], [e.top_labels.get(m) or NO_DECISION for e in entries], labels)
            for m in models}


def evaluate_all(settings: Settings, manifest: Path) -> dict:
    """Every available model on every row of `manifest` (written by `write_manifest`: its rows are the split),
    without a few-shot cache: `emoweb.learning.evaluation.evaluate_manifest`'s result (reports, n,
    skipped, profile, measured_at)."""
    from emoweb.learning.evaluation import evaluate_manifest

    return evaluate_manifest(settings, str(manifest), "all", split="", cache_k=0)


def comparison_table(reports: Mapping[str, Mapping]) -> str:
    """The markdown table of `reports` (one row per model: n, accuracy, UAR, weighted F1), as `eval` prints it."""
    from emoweb.learning.metrics import comparison_table as table

    return table(reports)
