"""Issue 9, "bad inputs": every awkward upload through the real ingest service, end to end.

One CaregiverService (all four models, real weights, a fresh SQLite data dir) ingests the whole
corpus of `badinputs.build_corpus`. Each case must give its expected outcome - a stored result
whose notes say what was missing, or exactly one readable error line - within its time bound,
and leave no temp file and no half-written rows. The count table is printed at the end of the
run (terminal summary), also without `-s`.
"""
from __future__ import annotations

import dataclasses
import math
import re
import sqlite3
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from badinputs import Case, build_corpus
from emoweb.errors import EmoWebError
from emoweb.pipeline.media import display_name
from emoweb.safetext import clean
from emoweb.services import CaregiverService, cachearrays
from models import registry

pytestmark = pytest.mark.slow

PROFILE = "bad-inputs"
TABLES = ("clips", "clip_features", "clip_senses", "predictions")
TRACEBACK = re.compile(r"Traceback|File \"|line \d+, in |^\s*at ", re.M)


@dataclasses.dataclass
class Outcome:
    """What one case did: its status for the count table and what was wrong, if anything."""

    case: Case
    status: str  # "result" | "error" | "crash" | "hang"
    seconds: float
    detail: str  # the error line, or the result's notes
    problems: list[str] = dataclasses.field(default_factory=list)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> list[Case]:
    return build_corpus(tmp_path_factory.mktemp("bad_inputs_corpus"))


@pytest.fixture(scope="module")
def service(extractor, tmp_path_factory: pytest.TempPathFactory) -> CaregiverService:
    """All shipped models on the session's backbones, a fresh data dir: loaded once for the corpus."""
    from emoweb.pipeline.inference import Predictor

    data = tmp_path_factory.mktemp("bad_inputs_data")
    settings = dataclasses.replace(extractor.settings, data_dir=data, database_url="", profile="embedded")
    svc = CaregiverService(settings, Predictor(settings), models="all")
    missing = sorted(set(registry.MODELS) - set(svc.predictor.model_names("all")))
    assert not missing, f"no shipped checkpoint for {missing}: the test needs every model's real weights"
    svc.create_profile(PROFILE)
    yield svc
    svc.close()


def bounded(fn: Callable[[], Any], limit_s: float) -> tuple[Any, BaseException | None, bool, float]:
    """Run `fn` in a daemon thread for at most `limit_s`: (value, exception, timed out, seconds).

    A hang must fail the case, not the whole run: the stuck thread is abandoned."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - classified by the caller
            box["error"] = exc

    t0 = time.perf_counter()
    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(limit_s)
    return box.get("value"), box.get("error"), worker.is_alive(), time.perf_counter() - t0


def row_counts(db: Path) -> dict[str, int]:
    with sqlite3.connect(db) as con:
        return {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}


def check_error(case: Case, exc: BaseException) -> list[str]:
    """One readable line that names the problem and the file; never a traceback."""
    message = str(exc)
    problems = []
    if not isinstance(exc, EmoWebError):
        problems.append(f"not an EmoWebError: {type(exc).__name__}")
    if not message or message != message.strip() or len(message.splitlines()) != 1:
        problems.append(f"not exactly one line: {message!r}")
    if TRACEBACK.search(message):
        problems.append(f"traceback text in the message: {message!r}")
    if case.outcome == "error" and not re.search(case.expect, message, re.I):
        problems.append(f"does not name the problem (/{case.expect}/): {message!r}")
    if display_name(case.path) not in message:
        problems.append(f"does not name the file: {message!r}")
    return problems


def check_result(case: Case, result: Any, models: set[str], data_dir: Path) -> list[str]:
    """A new stored clip whose notes say what was missing, with every model's answer."""
    problems = []
    feats = result.outputs.features if result.outputs is not None else None
    if not result.new or feats is None:
        return [f"not a fresh decode (new={result.new}): the corpus has two cases with the same content"]
    used = feats.modalities
    problems += [f"{m} should be reported missing" for m in sorted(case.missing) if used[m]]
    problems += [f"{m} should have been used" for m in sorted(case.present) if not used[m]]
    if case.expect and not any(re.search(case.expect, w, re.I) for w in feats.warnings):
        problems.append(f"no note matches /{case.expect}/: {feats.warnings}")
    if not case.expect and feats.warnings:
        problems.append(f"nothing was missing, yet notes: {feats.warnings}")
    if case.frame_hw is not None and (feats.frames is None or tuple(feats.frames.shape[1:3]) != case.frame_hw):
        problems.append(f"frames {None if feats.frames is None else feats.frames.shape} are not {case.frame_hw}")
    if case.duration_s is not None and abs(feats.duration - case.duration_s) > 0.1:
        problems.append(f"duration {feats.duration} s, expected {case.duration_s} s")
    if case.distinct_frames:
        pixels = {f.tobytes() for f in feats.frames} if feats.frames is not None else set()
        if min(len(set(feats.frame_times)), len(pixels)) < case.distinct_frames:
            problems.append(f"{len(set(feats.frame_times))} distinct times, {len(pixels)} distinct frames: "
                            f"expected {case.distinct_frames} ({feats.frame_times})")
    if case.transcript and not re.search(case.transcript, feats.transcript, re.I):
        problems.append(f"transcript {feats.transcript!r} does not match /{case.transcript}/")
    if case.language and feats.language != case.language:
        problems.append(f"language {feats.language!r}, expected {case.language!r}")
    if set(result.predictions) != models:
        problems.append(f"answers from {sorted(result.predictions)}, expected {sorted(models)}")
    for name, p in result.predictions.items():
        if not all(math.isfinite(v) for v in p.probs.values()) or abs(sum(p.probs.values()) - 1) > 1e-3:
            problems.append(f"{name}: probabilities are not a distribution: {p.probs}")
    if not any(used.values()):  # nothing to go on: no model may pass a guess off as an answer
        problems += [f"{name}: decided with no input: {p.label} {p.probs}" for name, p in result.predictions.items()
                     if p.decided or p.label is not None or max(p.probs.values()) - min(p.probs.values()) > 1e-4]
    else:
        problems += [f"{name}: no decision although {sorted(m for m, v in used.items() if v)} was used"
                     for name, p in result.predictions.items() if not p.decided or p.label is None]
    if result.clip.original_name != clean(case.path.name):  # bytes that are not UTF-8 stored as U+FFFD
        problems.append(f"original name stored as {result.clip.original_name!r}")
    if not (data_dir / result.clip.media_path).is_file():
        problems.append(f"stored media missing: {result.clip.media_path}")
    return problems


def orphans(db: Path, data_dir: Path) -> list[str]:
    """Half-written state: a clip without its media file, features or every model's prediction (none
    for a clip with nothing to recognise), a media file no clip points at, or a leftover temp file."""
    found = []
    with sqlite3.connect(db) as con:
        rows = con.execute(
            "SELECT c.id, c.media_path, (SELECT count(*) FROM clip_features f WHERE f.clip_id = c.id),"
            " (SELECT count(DISTINCT model) FROM predictions p WHERE p.clip_id = c.id) FROM clips c"
        ).fetchall()
        names: dict[int, list[str]] = {}
        for clip_id, name in con.execute("SELECT clip_id, name FROM clip_features"):
            names.setdefault(clip_id, []).append(cachearrays.split_name(name)[1])
        dangling = con.execute(
            "SELECT (SELECT count(*) FROM clip_features WHERE clip_id NOT IN (SELECT id FROM clips))"
            " + (SELECT count(*) FROM predictions WHERE clip_id NOT IN (SELECT id FROM clips))"
        ).fetchone()[0]
    if dangling:
        found.append(f"{dangling} feature/prediction rows without a clip")
    for clip_id, media_path, n_features, n_models in rows:
        if not (data_dir / media_path).is_file():
            found.append(f"clip {clip_id}: no media file")
        expected = len(registry.MODELS) if cachearrays.has_modality(names.get(clip_id, [])) else 0
        if n_features == 0 or n_models != expected:
            found.append(f"clip {clip_id}: {n_features} features, predictions from {n_models} models")
    referenced = {data_dir / r[1] for r in rows}
    for path in (data_dir / "media").rglob("*"):
        if path.is_file() and path not in referenced:
            found.append(f"unreferenced file {path.relative_to(data_dir)}")
    return found


def count_table(outcomes: list[Outcome], leaks: list[str], half_written: list[str]) -> list[str]:
    by = Counter(o.status for o in outcomes)
    wrong = sum(bool(o.problems) for o in outcomes)
    slowest = max(outcomes, key=lambda o: o.seconds)
    lines = [
        f"bad inputs: {len(outcomes)} cases - {by['result']} results, {by['error']} clear errors, "
        f"{by['crash']} crashes, {by['hang']} hangs, {len(leaks)} leaks, {len(half_written)} half-written, "
        f"{wrong} wrong (slowest: {slowest.case.name} {slowest.seconds:.1f} s)"
    ]
    for o in outcomes:
        flag = "FAIL " if o.problems else "ok   "
        lines.append(f"  {flag}{o.case.name:28} {o.status:6} {o.seconds:6.2f} s  {o.detail}"[:220])
        lines += [f"       - {p}" for p in o.problems]
    return lines


class _Summary:
    """Shows the count table in the terminal summary of a normal run (not only with `-s`)."""

    def __init__(self, lines: list[str]):
        self.lines = lines

    def pytest_terminal_summary(self, terminalreporter) -> None:
        terminalreporter.write_sep("-", "issue 9: bad inputs through the ingest service")
        for line in self.lines:
            terminalreporter.write_line(line)


def test_every_bad_input_gives_a_result_or_one_clear_error(
    service: CaregiverService,
    corpus: list[Case],
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
    record_property: Callable[[str, object], None],
) -> None:
    # The system temp dir is shared with other jobs on this machine: point this process's temp dir
    # (Python's tempfile and C libraries reading TMPDIR) at a private, empty folder, so a leak is ours.
    private_tmp = tmp_path_factory.mktemp("bad_inputs_tmp")
    monkeypatch.setenv("TMPDIR", str(private_tmp))
    monkeypatch.setattr(tempfile, "tempdir", str(private_tmp))
    assert tempfile.gettempdir() == str(private_tmp)

    db = service.data_dir / "emoweb.sqlite3"
    models = set(service.predictor.model_names("all"))
    outcomes: list[Outcome] = []
    top_labels: dict[str, dict[str, str | None]] = {}  # case -> model -> label, for `same_as`
    for case in corpus:
        before = row_counts(db)
        result, exc, hung, seconds = bounded(lambda: service.ingest(case.path, PROFILE), case.limit_s)
        after = row_counts(db)
        if hung:
            outcomes.append(Outcome(case, "hang", seconds, f"still running after {case.limit_s:.0f} s", ["hang"]))
            continue
        if exc is not None:
            crashed = not isinstance(exc, EmoWebError)
            problems = check_error(case, exc)
            if case.outcome != "error":
                problems.append("expected a result")
            if after != before:
                problems.append(f"rows changed by a failed ingest: {before} -> {after}")
            line = (f"{type(exc).__name__}: {exc}" if crashed else str(exc)).splitlines() or [""]
            outcomes.append(Outcome(case, "crash" if crashed else "error", seconds, line[0], problems))
            continue
        problems = check_result(case, result, models, service.data_dir)
        top_labels[case.name] = {name: p.label for name, p in result.predictions.items()}
        if case.same_as and top_labels[case.name] != top_labels.get(case.same_as):
            problems.append(f"answers {top_labels[case.name]} differ from {case.same_as}'s {top_labels.get(case.same_as)}")
        if case.outcome != "result":
            problems.append("expected an error")
        answers = sum(p.decided for p in result.predictions.values())  # none stored for a clip with no input
        if after["clips"] != before["clips"] + 1 or after["predictions"] != before["predictions"] + answers:
            problems.append(f"rows: {before} -> {after}, expected one clip and {answers} predictions")
        feats = result.outputs.features if result.outputs is not None else None
        notes = "; ".join(feats.warnings) if feats is not None and feats.warnings else "(complete)"
        outcomes.append(Outcome(case, "result", seconds, f"{result.clip.kind}: {notes}", problems))

    data = service.data_dir
    leaks = [str(p.relative_to(data)) for p in data.rglob("*") if p.name.endswith(".part") or p.name.startswith(".ingest-")]
    leaks += [f"temp dir: {p.name}" for p in private_tmp.iterdir()]
    half_written = orphans(db, service.data_dir)
    with sqlite3.connect(db) as con:
        integrity = con.execute("PRAGMA integrity_check").fetchone()[0]
        foreign = con.execute("PRAGMA foreign_key_check").fetchall()
    if integrity != "ok" or foreign:
        half_written.append(f"integrity_check: {integrity}; foreign_key_check: {foreign}")

    lines = count_table(outcomes, leaks, half_written)
    lines += [f"  leak: {x}" for x in leaks] + [f"  half-written: {x}" for x in half_written]
    table = "\n".join(lines)
    print("\n" + table)
    record_property("bad_inputs", lines[0])
    request.config.pluginmanager.register(_Summary(lines), "emoweb-bad-inputs-summary")

    assert {c.outcome for c in corpus} == {"result", "error"} and len(corpus) >= 25, "corpus incomplete"
    assert not any(o.problems for o in outcomes) and not leaks and not half_written, table
