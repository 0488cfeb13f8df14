"""`python -m emoweb ...`: one entry point for inspect, predict, train, eval, storage and benchmarks.

Every command prints a readable one-line error and exits non-zero on bad input; `--json` gives
machine-readable output. Subcommands register themselves in `COMMANDS` (name -> (setup, run)).
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Callable

from emoweb.errors import EmoWebError

Setup = Callable[[argparse.ArgumentParser], None]
Run = Callable[[argparse.Namespace], int]
COMMANDS: dict[str, tuple[str, Setup, Run]] = {}


def command(name: str, help: str):
    """Register `setup` (adds arguments) and returns a decorator for the runner."""

    def wrap(setup: Setup):
        def deco(run: Run) -> Run:
            COMMANDS[name] = (help, setup, run)
            return run

        return deco

    return wrap


def emit(obj, as_json: bool, text: Callable[[dict], str] | None = None) -> None:
    if as_json or text is None:
        print(json.dumps(obj, indent=2, default=str))
    else:
        print(text(obj))


def _inspect_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("path")
    p.add_argument("--json", action="store_true")


@command("inspect", "decode a clip and print its shared features (shapes, transcript, timings)")(_inspect_args)
def _inspect(args: argparse.Namespace) -> int:
    from emoweb.features import FeatureExtractor

    summary = FeatureExtractor()(args.path).to_summary()

    def text(s: dict) -> str:
        lines = [
            f"{s['source']}: {s['kind']}, {s['duration']} s, profile {s['profile']} on {s['device']}",
            f"frames {s['frames']['count']}, faces found {s['faces']['found']}",
            f"transcript ({s['transcript']['language']}): {s['transcript']['text']!r}",
            "timings: " + ", ".join(f"{k} {v:.3f}s" for k, v in s["timings"].items()),
        ]
        return "\n".join(lines + [f"note: {w}" for w in s["warnings"]])

    emit(summary, args.json, text)
    return 0


def build_parser() -> argparse.ArgumentParser:
    _load_command_modules()
    parser = argparse.ArgumentParser(prog="python -m emoweb", description="EmoWeb: emotion recognition in short clips")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, setup, run) in sorted(COMMANDS.items()):
        p = sub.add_parser(name, help=help_text)
        setup(p)
        p.set_defaults(run=run)
    return parser


def _load_command_modules() -> None:
    """Modules that register more subcommands (imported lazily so `--help` stays fast)."""
    import importlib

    for module in ("emoweb.bench", "emoweb.commands", "emoweb.studies", "emoweb.caregiver_commands"):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except EmoWebError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
