"""Caregiver subcommands: profiles, ingest, labels, the queue, cache rebuilds, label files, lessons, deletion.

`--profile` names a caregiver profile (a child or a setting), by name or id; the backbone set
comes from EMOWEB_PROFILE (`--backbones` in predict/eval/train). Every command prints one line per result (or JSON with --json)
and a one-line error with a non-zero exit status for unknown ids, profiles or bad input.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from emoweb.cli import (add_device, add_json, answer_text, clip_paths, command, emit, model_answer, model_name, note_lines,
                        settings_from, skipped_line)
from emoweb.errors import EmoWebError, UnknownLabelError

FAST = "under a second or two (storage only, no models)"


def _action(sub: Any, name: str, what: str) -> argparse.ArgumentParser:
    """A command's action (`profile create`, `clip delete`) whose own --help says what it does: argparse shows
    `help` only in the command's list of actions."""
    return sub.add_parser(name, help=what, description=what[:1].upper() + what[1:] + ".")


def _service(args: argparse.Namespace):
    """The command's service: from `cli.main`'s `make_service` when given, else a `CaregiverService`."""
    make = getattr(args, "make_service", None)
    if make is None:
        from emoweb.services import CaregiverService as make
    return make(settings_from(args))


# -- profile ----------------------------------------------------------------------------------


def _profile_args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True)
    create = _action(sub, "create", "a new profile (a child or a setting)")
    create.add_argument("name")
    create.add_argument("--labels", default="", help="comma-separated label set (default: the seven emotions)")
    create.add_argument("--owner", default=None, help="whose profile it is, as the web app's login names them (default: shared)")
    add_json(create)
    lst = _action(sub, "list", "all profiles")
    lst.add_argument("--owner", default=None, help="only this owner's profiles (default: every profile)")
    add_json(lst)
    delete = _action(sub, "delete", "delete a profile with its clips, media files, labels and caches")
    delete.add_argument("name", help="profile name or id")
    _add_yes(delete)
    add_json(delete)


@command("profile", "caregiver profiles: create, list, delete",
         prints="one line per profile (id, name, labels), or what a deletion removed", takes=FAST)(_profile_args)
def _profile(args: argparse.Namespace) -> int:
    service = _service(args)
    if args.action == "create":
        labels = [x.strip() for x in args.labels.split(",") if x.strip()] or None
        if args.labels.strip() and labels is None:
            raise EmoWebError(f"--labels {args.labels!r} names no label: give comma-separated labels, or leave it out for the seven emotions")
        info = service.create_profile(args.name, labels, args.owner)
        emit(info.to_dict(), args.json, lambda d: f"profile {d['id']} {d['name']!r}: labels {', '.join(d['labels'])}")
    elif args.action == "list":
        rows = [p.to_dict() for p in service.list_profiles(args.owner)]
        emit(rows, args.json, lambda r: "\n".join(f"{d['id']:>4}  {d['name']}  ({', '.join(d['labels'])})" for d in r) or "no profiles")
    else:
        info = service.get_profile(args.name)
        what = f"profile {info.name!r} with its {len(service.list_clips(info.id))} clip(s), labels and caches"
        if not args.yes and not _confirmed(what):
            print(f"nothing deleted: profile {info.name!r} kept")
            return 1
        result = service.delete_profile(info.id)
        emit(result, args.json, lambda d: f"deleted profile {d['profile']!r}: {d['clips']} clip(s), {d['files_removed']} media file(s)")
    return 0


def _add_yes(p: argparse.ArgumentParser) -> None:
    p.add_argument("--yes", action="store_true",
                   help="confirm without being asked (needed when stdin is not a terminal): it cannot be undone")


def _confirmed(what: str) -> bool:
    """A person's yes at the terminal to deleting `what`; with no terminal to ask at, the command is refused
    (--yes confirms in advance), so a script never deletes a child's clips by a missing word."""
    if not sys.stdin.isatty():
        raise EmoWebError(f"deleting {what} cannot be undone: add --yes to confirm (no terminal to ask at)")
    try:
        answer = input(f"delete {what}? It cannot be undone. [y/N] ")
    except EOFError:  # Ctrl-D: no answer is no
        answer = ""
    return answer.strip().lower() in ("y", "yes")


# -- ingest -----------------------------------------------------------------------------------


def _ingest_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="+", metavar="PATH", help="clip file(s) or folder(s) (a folder's own clips; subfolders are not searched)")
    p.add_argument("--profile", required=True, help="caregiver profile name or id")
    p.add_argument("--source", default="upload", choices=("upload", "record", "import"),
                   help="how the clip came in, stored with it (default upload)")
    add_device(p)
    add_json(p)


@command("ingest", "store clips in a profile (media + features once) with every model's answer",
         prints="one line per clip: its id, whether it was new, the one answer (the models' vote, how sure in words, as the "
                "Predict and Label tabs word it) and each model's label and probability, with the models that used the "
                "profile's labelled clips (its cache) and the clip's notes under it",
         takes="2-10 s to load the models, then about 1 s per 4-s clip (5 s per 60-s clip) on a 2-CPU machine")(_ingest_args)
def _ingest(args: argparse.Namespace) -> int:
    paths, skipped = clip_paths(args.paths)  # before the service loads: a folder without clips fails at once
    service = _service(args)
    service.get_profile(args.profile)  # an unknown profile fails before any decoding
    results, failed = [], 0
    try:
        for path in paths:
            try:
                result = service.ingest(path, args.profile, args.source)
                row = {"path": str(path), **result.to_dict(), "headline": service.headline(result).to_dict(),
                       "notes": result.clip.notes}  # stored with the clip: the same when it was already stored
            except EmoWebError as exc:
                if len(paths) == 1:
                    raise
                failed += 1
                row = {"path": str(path), "error": str(exc)}
            results.append(row)
            if not args.json:  # each clip's line as soon as it is stored, not all of them at the end
                print("\n".join(_ingested_lines(row)), flush=True)
    except KeyboardInterrupt:
        stored = sum("error" not in r for r in results)
        print(f"stopped after {len(results)} of {len(paths)} clip(s): {stored} stored and kept (ingest the rest again: "
              "stored clips are recognised)", file=sys.stderr)
        raise
    if args.json:
        emit(results, True)
    elif skipped:
        print(skipped_line(skipped))
    return 1 if failed else 0


def _ingested_lines(r: dict) -> list[str]:
    """One ingested clip's lines (`_ingest`'s row): its id, whether new, the one answer and each model's, the
    models that used the profile's labelled clips, its notes; or its error."""
    from emoweb.pipeline.media import display_name  # a name's undecodable bytes shown escaped, not printed raw

    given = display_name(r["path"])
    if "error" in r:
        return [f"{given}: error: {r['error']}"]
    c = r["clip"]
    sure = set(r["headline"].get("confident", []))
    answers = ", ".join(model_answer(m, p["label"] if p["decided"] else None, p["probs"], m in sure, p.get("why_not", ""))
                        for m, p in r["predictions"].items())
    stored = "new" if r["new"] else "already stored" + ("" if c["original_name"] == given else f" as {c['original_name']!r}")
    adapted = [model_name(m) for m, p in r["predictions"].items() if p["cache_snapshot"] is not None]
    return [f"clip {c['id']} ({stored}): {given}: {answer_text(r['headline'])}; {answers}",
            *([f"  with the profile's labelled clips: {', '.join(adapted)}"] if adapted else []), *note_lines(r["notes"])]


# -- label / undo / queue ---------------------------------------------------------------------


def _label_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("clip_id", metavar="CLIP_ID")
    p.add_argument("label", metavar="LABEL")
    p.add_argument("--profile", required=True, help="caregiver profile name or id (the clip must be in it)")
    p.add_argument("--note", default="", help="a note kept with the label (what happened, who was there)")
    p.add_argument("--annotator", default="", help="who labelled it (kept in the label history)")
    p.add_argument("--allow-new-label", action="store_true", help="add LABEL to the profile's label set if it is new")
    add_json(p)


@command("label", "record a caregiver's label for a clip",
         prints="the clip, its new label and the label it replaces (`undo` brings that back)", takes=FAST)(_label_args)
def _label(args: argparse.Namespace) -> int:
    service = _service(args)
    try:
        c = service.record_correction(args.clip_id, args.label, args.annotator, args.note, args.allow_new_label, args.profile)
    except UnknownLabelError as exc:
        raise EmoWebError(f"{exc}; to add it, allow a new label explicitly (--allow-new-label)") from None
    emit(c.to_dict(), args.json, lambda d: f"clip {d['clip_id']} already labelled {d['label']!r}: nothing recorded"
         if d["unchanged"] else f"clip {d['clip_id']} labelled {d['label']!r}"
         + (f" (replaces {d['replaced']!r}; `undo {d['clip_id']} --profile {service.get_profile(args.profile).id}` brings it back)"
            if d["replaced"] else ""))
    return 0


def _undo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("clip_id", metavar="CLIP_ID")
    p.add_argument("--profile", required=True, help="caregiver profile name or id (the clip must be in it), as for `label`")
    p.add_argument("--annotator", default="", help="who withdraws it (kept in the label history)")
    add_json(p)


@command("undo", "withdraw a clip's latest label", prints="the label withdrawn and the clip's label now", takes=FAST)(_undo_args)
def _undo(args: argparse.Namespace) -> int:
    r = _service(args).undo_last_correction(args.clip_id, args.annotator, args.profile)
    emit(r, args.json, lambda d: f"clip {d['clip_id']}: withdrew {d['undone']!r}; current label: {d['current'] or 'none'}")
    return 0


def _queue_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", required=True, help="caregiver profile name or id")
    p.add_argument("--limit", type=int, default=None, help="at most this many clips, from the top of the queue (default: all)")
    add_json(p)


@command("queue", "a profile's clips in labelling order (unlabelled, disagreeing, least sure first)",
         prints="one line per clip: id, label, margin (how far the least sure model's answer is ahead of its second "
                "choice, 0-1: small is unsure), DISAGREE when the models name different labels, FACE≠VOICE (what each "
                "says) when the models agree but the face and the voice point to different labels, each model's top label",
         takes=FAST)(_queue_args)
def _queue(args: argparse.Namespace) -> int:
    if args.limit is not None and args.limit < 1:
        raise EmoWebError(f"--limit {args.limit}: give 1 or more clips (or leave it out for all)")
    rows = [e.to_dict() for e in _service(args).labelling_queue(args.profile, args.limit)]

    def text(r: list) -> str:
        lines = []
        for e in r:
            margin = "-" if e["margin"] is None else f"{e['margin']:.2f}"
            tops = ", ".join(f"{model_name(m)}: {lab}" for m, lab in e["top_labels"].items()) or "no prediction"
            flag = "DISAGREE " if e["models_differ"] else f"FACE≠VOICE ({e['senses']}) " if e["senses"] else ""
            lines.append(f"{e['clip_id']:>6}  {e['label'] or '(unlabelled)':<14} margin {margin:<5} {flag}{tops}  {e['original_name']}")
        return "\n".join(lines) or "no clips"

    emit(rows, args.json, text)
    return 0


# -- cache ------------------------------------------------------------------------------------


def _cache_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=("rebuild", "show"))
    p.add_argument("--profile", required=True, help="caregiver profile name or id")
    p.add_argument("--retune", action="store_true", help="choose alpha/beta by cross-validation even if the last ones still fit")
    add_json(p)


SNAPSHOT_USE = {"adapter": "fitted adapter", "cache": "cache votes", "careful": "careful cache", "off": "off: the model alone"}


def _snapshot_use(snapshot: dict) -> str:
    """What a snapshot does, for `cache show`: 'in use: fitted adapter', 'in use: off: the model alone' (the
    latest rebuild kept everything off), 'in use: empty' (rebuilt before any label), or 'old' for one no longer in use."""
    from emoweb.services.modelinfo import holds_clips

    if not snapshot["active"]:
        return "old"
    if not holds_clips([snapshot]):
        return "in use: empty (no clips)"  # nothing to vote with: not a "careful cache"
    method = snapshot["hyper"].get("method") or ("cache" if snapshot["hyper"].get("active") else "off")
    return f"in use: {SNAPSHOT_USE.get(method, method)}"


@command("cache", "rebuild a profile's few-shot caches from stored features, or show its snapshots",
         prints="per model what the rebuild did in words (with leave-one-out accuracy before -> after when measured), "
         "clips per label and what is still to label before it can be measured; or the snapshots",
         takes="a few seconds (stored features, no re-encoding; about 1 s for 1,000 clips once loaded)")(_cache_args)
def _cache(args: argparse.Namespace) -> int:
    from emoweb.services.modelinfo import changes_text, holds_clips, minute_text, per_label_text

    service = _service(args)
    if args.action == "show":
        snaps, changes = service.snapshots(args.profile), service.labels_since_rebuild(args.profile)
        emit(snaps, args.json, lambda r: "\n".join(
            [f"{s['id']:>5} {model_name(s['model']):<11} {_snapshot_use(s):<26} {minute_text(s['built_at'])}  {per_label_text(s['n_per_label'])}"
             for s in r] or ["no cache snapshots"]) + "\n" + changes_text(changes, holds_clips(r)))
        return 0
    results = {m: r.to_dict() for m, r in service.rebuild_cache(args.profile, tune=True if args.retune else "auto").items()}

    def text(r: dict) -> str:
        from emoweb.services import cachebuild

        lines = [  # the outcome says what happened and its numbers; the second line what it was built from
            f"{model_name(m)}: {d['outcome']}\n  {d['n']} labelled clip(s): {per_label_text(d['n_per_label'])}"
            + ("" if d["judged"] or not d["n"] else f"; to measure it, label {cachebuild.still_needed(d['n_per_label'])}")
            + (f"; {d['skipped']} labelled clip(s) without stored features" if d["skipped"] else "")
            + f"; {d['seconds']:.3f} s; snapshot {d['snapshot_id']} (--json: its settings)"
            for m, d in r.items()
        ]
        return "\n".join(lines) or "no model has stored features in this profile yet"

    emit(results, args.json, text)
    return 0


# -- label files ------------------------------------------------------------------------------


def _os_reason(exc: OSError, writing: bool = False) -> str:
    """Why a file could not be read or written, in words ("file not found"), not an exception's class name."""
    words = {FileNotFoundError: "its folder does not exist" if writing else "file not found", IsADirectoryError: "it is a folder",
             PermissionError: "permission denied", NotADirectoryError: "a folder on its path is a file"}
    return next((w for cls, w in words.items() if isinstance(exc, cls)), exc.strerror or exc.__class__.__name__)


def _write_whole(target: Path, write: Callable[[Path], object]) -> None:
    """`write` fills a hidden part file beside `target`, which is then renamed onto it: never a half-written
    file where one was asked for, and an existing one is kept until the new one is whole. Errors: one line."""
    part = target.with_name(f".{target.name}.part")
    try:
        write(part)
        os.replace(part, target)
    except OSError as exc:
        with contextlib.suppress(OSError):
            part.unlink()
        raise EmoWebError(f"cannot write {target}: {_os_reason(exc, writing=True)}") from None


def _check_writable(target: Path) -> None:
    """Refuse, in `_write_whole`'s words (`_os_reason`), a target that could not be written: a folder, or its
    folder missing or a file."""
    fault = (IsADirectoryError() if target.is_dir() else None if target.parent.is_dir()
             else NotADirectoryError() if target.parent.exists() else FileNotFoundError())
    if fault is not None:
        raise EmoWebError(f"cannot write {target}: {_os_reason(fault, writing=True)}")


def _labels_args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True)
    for action, where in (("export", "stdout"), ("import", "stdin")):
        a = _action(sub, action, f"{action} a profile's labels (default: {where})")
        a.add_argument("file", nargs="?", default=None, metavar="FILE", help=f"default: {where}")
        a.add_argument("--profile", required=True, help="caregiver profile name or id")
        a.add_argument("--format", choices=("csv", "json"), default=None, help="default: from FILE's suffix, else csv")
        if action == "import":
            a.add_argument("--annotator", default=None, help="record this annotator instead of the file's")
            a.add_argument("--allow-new-labels", action="store_true", help="add labels missing from the profile's set")
            add_json(a)


@command("labels", "export or import a profile's labels (CSV or JSON, matched by clip sha256)",
         prints="export: the label file, or with FILE the line saying where it was written; import: counts imported, "
                "unchanged, unmatched, refused (exit status 1 when a row was refused, or no row matched a clip of the profile)",
         takes=FAST)(_labels_args)
def _labels(args: argparse.Namespace) -> int:
    fmt = args.format or ("json" if args.file and args.file.lower().endswith(".json") else "csv")
    service = _service(args)
    if args.action == "export":
        text = service.export_labels(args.profile, fmt)
        if not args.file or args.file == "-":
            sys.stdout.write(text)
            return 0
        from emoweb.services import labelfiles

        _write_whole(Path(args.file), lambda part: part.write_text(text, encoding="utf-8"))
        print(f"{len(labelfiles.parse(text, fmt))} label(s) of profile {args.profile!r} written to {args.file} ({fmt.upper()})")
        return 0
    try:  # bytes: the service reads them as UTF-8, an invalid byte becoming U+FFFD
        data = sys.stdin.buffer.read() if not args.file or args.file == "-" else Path(args.file).read_bytes()
    except OSError as exc:
        raise EmoWebError(f"cannot read {args.file}: {_os_reason(exc)}") from None
    report = service.import_labels(args.profile, data, fmt, args.annotator, args.allow_new_labels)
    none_matched = bool(report.unmatched) and not (report.imported or report.unchanged or report.refused)
    emit(report.to_dict(), args.json, lambda d: "\n".join(
        [f"imported {d['imported']}, unchanged {d['unchanged']}, unmatched {len(d['unmatched'])}, refused {len(d['refused'])}"]
        + [f"unmatched: {u}" for u in d["unmatched"]] + [f"refused: {r}" for r in d["refused"]]
        + ([f"none of the file's clips is in profile {args.profile!r}: is it the right profile? "
            f"(`clip list --profile {args.profile}` lists its clips)"] if none_matched else [])
    ))
    return 1 if report.refused or none_matched else 0  # as `ingest`: a file with a refused row is not a success


# -- lesson -----------------------------------------------------------------------------------


def _lesson_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("clip_ids", metavar="CLIP_ID", nargs="*",
                   help="one clip: its lesson; several: a lesson set; none: a set of --label clips, or one clip per label")
    p.add_argument("--profile", required=True, help="caregiver profile name or id (the clips must be in it)")
    p.add_argument("--label", default=None, help="with no CLIP_ID: a set of the clips labelled this")
    p.add_argument("--slow", type=float, default=1.0, help="slow-down factor, 1 (real time) to 4")
    p.add_argument("--seconds", type=float, default=None, help="length of the stretch that shows the word (default 3)")
    p.add_argument("-o", "--output", type=Path, default=None, help="also copy the lesson to this file")
    add_json(p)


@command("lesson", "export a lesson video (the labelled emotion named on screen), stored with the profile",
         prints="the lesson file, its length and how its stretch was chosen",
         takes="about 2-5 s for a 10-s clip (2-CPU machine), plus a few seconds to load the models")(_lesson_args)
def _lesson(args: argparse.Namespace) -> int:
    if args.clip_ids and args.label is not None:  # --label chooses the clips itself: both would ignore one
        raise EmoWebError("give CLIP_IDs or --label, not both (--label makes a set of the profile's clips with that label)")
    if args.output is not None:  # before the minutes of rendering, not after them
        _check_writable(args.output)
    service = _service(args)
    length = {} if args.seconds is None else {"seconds": args.seconds}
    if len(args.clip_ids) == 1 and args.label is None:
        lesson = service.export_lesson(args.clip_ids[0], args.profile, args.slow, **length)
    else:
        lesson = service.export_lesson_set(args.profile, args.clip_ids or None, args.label, args.slow, **length)
    result = lesson.to_dict()
    if args.output is not None:
        _write_whole(args.output, lambda part: shutil.copyfile(lesson.path, part))
        result["copied_to"] = str(args.output)
    emit(result, args.json, lambda d: "\n".join([f"lesson {d.get('copied_to', d['path'])} ({d['duration']:.1f} s, stretch chosen by {', '.join(d['chosen_by'])})", *d["notes"]]))
    return 0


# -- clip -------------------------------------------------------------------------------------


def _clip_args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True)
    delete = _action(sub, "delete", "delete a clip: media, features, predictions, labels (caches rebuilt without it)")
    delete.add_argument("clip_id", metavar="CLIP_ID")
    delete.add_argument("--profile", required=True,
                        help="caregiver profile name or id (the clip must be in it: a deletion cannot be undone)")
    _add_yes(delete)
    add_json(delete)
    lst = _action(sub, "list", "a profile's clips")
    lst.add_argument("--profile", required=True, help="caregiver profile name or id")
    add_json(lst)


@command("clip", "list or delete clips", prints="one line per clip (id, kind, sha256, name), or what a deletion removed",
         takes=FAST + "; a deletion also rebuilds the profile's caches (seconds)")(_clip_args)
def _clip(args: argparse.Namespace) -> int:
    service = _service(args)
    if args.action == "list":
        rows = [c.to_dict() for c in service.list_clips(args.profile)]
        emit(rows, args.json, lambda r: "\n".join(f"{c['id']:>6}  {c['kind']:<6} {c['sha256'][:12]}  {c['original_name']}" for c in r) or "no clips")
        return 0
    clip = service.get_clip(args.clip_id, args.profile)
    what = f"clip {clip.id} ({clip.original_name!r}) of profile {service.get_profile(args.profile).name!r}, with its labels and lessons"
    if not args.yes and not _confirmed(what):
        print(f"nothing deleted: clip {clip.id} kept")
        return 1
    result = service.delete_clip(clip.id, args.profile)
    emit(result, args.json, lambda d: f"deleted clip {d['clip_id']} of {d['profile']!r}"
         + (f" and {d['lessons']} lesson(s) made from it" if d["lessons"] else "")
         + (f"; cache rebuilt without it ({', '.join(map(model_name, d['rebuilt']))})" if d["rebuilt"] else ""))
    return 0
