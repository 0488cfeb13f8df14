"""`python -m emoweb ...`: one entry point for inspect, predict, train, eval, storage and benchmarks.

Every command prints a readable one-line error and exits non-zero on bad input; `--json` gives
machine-readable output. Subcommands register themselves in `COMMANDS` (name -> (help, setup, run))
from the modules of this package: `model_commands` (encode, train, eval, predict), `caregiver_commands`,
`bench`, `service_benches` and `study_benches`, `cards`. Command modules import torch, gradio and the
models only inside their runners, so `--help` and a mistyped command answer in about a second; the
shared options (`--json`, `--device`, `--models`, `--backbones`) are added by the `add_*` helpers so
they read the same everywhere.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable

from emoweb.errors import EmoWebError

Setup = Callable[[argparse.ArgumentParser], None]
Run = Callable[[argparse.Namespace], int]
COMMANDS: dict[str, tuple[str, str, Setup, Run]] = {}  # name -> (help, description, setup, run)
DEVICES = ("auto", "cpu", "cuda")


def command(name: str, help: str, prints: str, takes: str):
    """Register `setup` (adds arguments) and return a decorator for the runner. `prints` and `takes`
    (what the command prints, how long it takes) go into the subcommand's `--help`."""

    def wrap(setup: Setup):
        def deco(run: Run) -> Run:
            COMMANDS[name] = (help, f"{help[0].upper()}{help[1:]}. Prints {prints}. Takes {takes}.", setup, run)
            return run

        return deco

    return wrap


def emit(obj, as_json: bool, text: Callable[[dict], str] | None = None) -> None:
    if as_json or text is None:
        print(json.dumps(obj, indent=2, default=str))
    else:
        print(text(obj))


def clip_paths(args: list[str]) -> tuple[list[Path], list[str]]:
    """The clips named on a command line: files as given, folders as their clips (`media.folder_clips`), and
    what the folders hold that is not a clip. Raises EmoWebError for a folder without any clip."""
    from emoweb.pipeline.media import folder_clips

    paths, skipped = [], []
    for arg in map(Path, args):
        clips, others = folder_clips(arg) if arg.is_dir() else ([arg], [])
        if arg.is_dir() and not clips:
            raise EmoWebError(f"no clips in folder {arg}" + (f" (not clips: {', '.join(others)}; subfolders are not searched)"
                                                                 if others else " (it is empty)"))
        paths += clips
        skipped += others
    return paths, skipped


def skipped_line(skipped: list[str]) -> str:
    """What the folders held besides clips, in one line (callers print it only when there is some)."""
    return f"skipped, not clips: {', '.join(skipped)} (subfolders are not searched)"


def answer_text(head: dict) -> str:
    """The one answer (a `Headline.to_dict()`) in words: 'joy, not sure: <why>', or 'no answer: <why>'."""
    return f"{head['label']}, {head['confidence']}: {head['reason']}" if head["label"] else f"no answer: {head['reason']}"


def model_name(model: str) -> str:
    """The name a person reads for registry model `model` ("sem_mbt" -> "MER-SEM-MBT"), as the app shows it."""
    from emoweb.services.modelinfo import display_name

    return display_name(model)


def model_answer(model: str, label: str | None, probs: dict[str, float], confident: bool = False, why_not: str = "") -> str:
    """One model's answer in a clip's line: 'EmoAsst -> joy (0.81, confident)', or 'Foal-Net -> no decision (...)'
    with why (`why_not`; by default: the clip holds none of what the model reads, Foal-Net on a text)."""
    if not label:
        from emoweb.services.records import NOTHING_READ

        return f"{model_name(model)} -> no decision ({why_not or NOTHING_READ})"
    return f"{model_name(model)} -> {label} ({max(probs.values()):.2f}{', confident' if confident else ''})"


def note_lines(notes: list[str]) -> list[str]:
    """A clip's notes (warnings), indented under its line: a 90-s clip cut to 60 s, no sound, no face."""
    return [f"  note: {n}" for n in notes]


def add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON instead of text")


def add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", choices=DEVICES, default=None,
                   help="where backbones and models run (default: EMOWEB_DEVICE, else auto = cuda when present)")


def _check_models(spec: str) -> None:
    """`--models` checked before the backbones and models load (~10 s): EmoWebError naming the unknown ones."""
    from models import named_models

    if spec != "all":
        try:
            named_models(spec)
        except ValueError as exc:
            raise EmoWebError(str(exc)) from None


def add_models(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", default="all", metavar="NAMES",
                   help="comma-separated models (emoasst, merclip, sem_mbt, foalnet) or 'all' (default: every "
                   "model with a checkpoint for the backbone set)")


CHILD_PROFILE_HINT = "a child's profile goes to ingest, label and the other caregiver commands"  # not to --backbones


class _Deprecated(argparse.Action):
    """An old option spelling that still works: stores like `new` and prints a one-line note on stderr."""

    def __init__(self, option_strings, dest, new: str, **kwargs):
        self.new = new
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"note: {option_string} is deprecated for the backbone set; use {self.new} "
              f"({CHILD_PROFILE_HINT})", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_backbones(p: argparse.ArgumentParser) -> None:
    """`--backbones NAME`; the old `--profile NAME` still works, with a deprecation note."""
    p.add_argument("--backbones", default=None, metavar="NAME",
                   help="backbone set: embedded or paper (default: EMOWEB_PROFILE, else embedded)")
    p.add_argument("--profile", dest="backbones", action=_Deprecated, new="--backbones", metavar="NAME", help=argparse.SUPPRESS)


def settings_from(args: argparse.Namespace | None):
    """The settings with the command's `--backbones` / `--device` overrides (when it has them)."""
    from dataclasses import replace

    from emoweb.config import get_settings

    from emoweb.config import BACKBONE_SETS

    overrides = {"profile": getattr(args, "backbones", None), "device": getattr(args, "device", None)}
    settings = replace(get_settings(), **{k: v for k, v in overrides.items() if v})
    if settings.profile not in BACKBONE_SETS:  # checked before anything loads (a child's name given by mistake)
        raise EmoWebError(f"unknown backbone set {settings.profile!r} (choose {' or '.join(BACKBONE_SETS)}; {CHILD_PROFILE_HINT})")
    if settings.device != "auto" and settings.device != "cpu":  # a GPU asked for: checked before anything loads
        from models.backbones import resolve_device

        try:
            resolve_device(settings.device)
        except RuntimeError as exc:
            raise EmoWebError(str(exc)) from None
    return settings


def _inspect_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("path")
    add_backbones(p)
    add_device(p)
    add_json(p)


@command("inspect", "decode a clip and print its shared features (shapes, transcript, timings)",
         prints="the clip's kind, duration, frames, faces found, transcript and per-stage timings",
         takes="about 1 s for a 4-s clip once the backbones are loaded, plus 2-10 s to load them")(_inspect_args)
def _inspect(args: argparse.Namespace) -> int:
    from emoweb.pipeline.media import check_media

    check_media(args.path)  # a file that is no media answers before torch and the backbones load
    from emoweb.pipeline.features import FeatureExtractor

    summary = FeatureExtractor(settings_from(args))(args.path).to_summary()

    def text(s: dict) -> str:
        lines = [
            f"{s['source']}: {s['kind']}, {s['duration']} s, backbones {s['profile']} on {s['device']}",
            f"frames {s['frames']['count']}, faces found {s['faces']['found']}",
            f"transcript ({s['transcript']['language']}): {s['transcript']['text']!r}" if s["transcript"]["text"] else "transcript: none",
            "timings: " + ", ".join(f"{k} {v:.3f}s" for k, v in s["timings"].items()),
        ]
        return "\n".join(lines + [f"note: {w}" for w in s["warnings"]])

    emit(summary, args.json, text)
    return 0


def build_parser() -> argparse.ArgumentParser:
    _load_command_modules()
    parser = argparse.ArgumentParser(
        prog="python -m emoweb", description="EmoWeb: emotion recognition in short clips",
        epilog="Each command's --help says what it prints and how long it takes.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, description, setup, run) in sorted(COMMANDS.items()):
        p = sub.add_parser(name, help=help_text, description=description)
        setup(p)
        p.set_defaults(run=run)
    return parser


def _load_command_modules() -> None:
    """Modules that register more subcommands (imported lazily so `--help` stays fast)."""
    import importlib

    for module in ("emoweb.cli.bench", "emoweb.cli.service_benches", "emoweb.cli.asr_bench", "emoweb.cli.model_commands",
                   "emoweb.cli.study_benches", "emoweb.cli.caregiver_commands", "emoweb.cli.cards"):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise


def main(argv: list[str] | None = None, make_service: Callable[[Any], Any] | None = None) -> int:
    """Run one command; its exit status. `make_service(settings)`: builds the caregiver service the
    caregiver commands use (default `CaregiverService`), for code that runs the CLI with its own."""
    args = build_parser().parse_args(argv)
    args.make_service = make_service
    try:
        if isinstance(getattr(args, "models", None), str):
            _check_models(args.models)
        return args.run(args)
    except EmoWebError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader stopped early (`| head`): nothing more to say, and no traceback at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as exc:  # the machine's side (a data folder that is a file, no permission, a full disk): one line
        where = f": {exc.filename}" if exc.filename else ""
        print(f"error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2
