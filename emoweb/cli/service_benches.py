"""The caregiver services' benchmarks (`python -m emoweb bench cache|lesson`): the few-shot cache
rebuild and the lesson clip export, registered in `bench`'s registry without importing torch.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from emoweb.cli.bench import bench, machine, render_bench_clip
from emoweb.errors import EmoWebError


# --- cache ----------------------------------------------------------------------------------------------


def _fmt_cache(result: dict) -> str:
    from emoweb.services.benchcache import text

    return text(result)


@bench("cache", "few-shot cache rebuild from stored features (100/1,000/10,000 clips) vs re-encoding; one correction", _fmt_cache)
def bench_cache(args: argparse.Namespace) -> dict:
    import torch

    from emoweb.services.benchcache import bench_cache as run

    torch.set_num_threads(args.threads)
    result = run(repeats=min(args.repeat, 3), measure_encode=True)
    result["machine"] = machine("cpu", args.threads)
    return result


# --- lesson clips ---------------------------------------------------------------------------------------


def _fmt_lesson(result: dict) -> str:
    lines = [f"bench lesson: {result['clip_seconds']:.1f}-s composite clip, {result['machine']['threads']} thread(s), "
             f"{result['repeat']} warm runs; machine: {result['machine']['cpu']} ({result['machine']['cpu_count']} logical CPUs)",
             f"{'lesson':<34}{'video s':>9}{'timeline s':>12}{'render s':>10}{'total s':>9}{'cold s':>9}"]
    for name, r in result["runs"].items():
        lines.append(f"{name:<34}{r['lesson_seconds']:>9.2f}{r['timeline_s']:>12.3f}{r['render_s']:>10.3f}{r['total_s']:>9.3f}{r['cold_s']:>9.3f}")
    return "\n".join(lines)


PHONE_SIZE = (1080, 1920)  # a phone's portrait video, as it is shown


def phone_clip(clip: Path, out: Path) -> Path:
    """`clip` as a phone writes a portrait video: padded to PHONE_SIZE, stored sideways (1920x1080 pixels)
    with a 90-degree display rotation. FFmpeg from imageio-ffmpeg (PyAV cannot write the rotation)."""
    import subprocess

    import imageio_ffmpeg

    w, h = PHONE_SIZE
    stored = out.with_name(f"stored-{out.name}")
    for argv in (["-i", str(clip), "-vf", f"scale={w}:{h}:force_original_aspect_ratio=decrease,pad={w}:{h}:-1:-1,transpose=1",
                  "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "copy", str(stored)],
                 ["-display_rotation:v:0", "90", "-i", str(stored), "-c", "copy", str(out)]):
        done = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", *argv], capture_output=True, text=True)
        if done.returncode:
            raise EmoWebError(f"cannot build the phone benchmark clip: {done.stderr.strip().splitlines()[-1:]}")
    return out


@bench("lesson", "lesson clip export (timeline + moviepy H.264/AAC render) of a --seconds composite clip, "
                 "and of the same clip as a phone's portrait video", _fmt_lesson)
def bench_lesson(args: argparse.Namespace) -> dict:
    """Warm median seconds (after one cold run) to choose the stretch and write the lesson: the default
    3-s stretch, the whole clip as the stretch, the whole clip slowed down 2x, and the whole clip as a
    phone's portrait video (`phone_clip`: full-HD pixels stored sideways, the lesson's frame capped)."""
    import torch

    from emoweb.services import lessons

    if args.threads < 1 or args.repeat < 1:
        raise EmoWebError("--threads and --repeat must be at least 1")
    torch.set_num_threads(args.threads)
    runs: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="emoweb-bench-") as tmp:
        clip = render_bench_clip(args.seconds, Path(tmp) / f"bench_{args.seconds:g}s.mp4")
        phone = phone_clip(clip, Path(tmp) / "phone.mp4")
        cases = {f"{lessons.STRETCH_SECONDS:g}-s stretch": (clip, lessons.STRETCH_SECONDS, 1.0),
                 "whole clip": (clip, args.seconds, 1.0), "whole clip, slowed 2x": (clip, args.seconds, 2.0),
                 f"phone portrait {PHONE_SIZE[0]}x{PHONE_SIZE[1]}, whole clip": (phone, args.seconds, 1.0)}
        for name, (source, stretch, slow) in cases.items():
            walls = []
            for _ in range(args.repeat + 1):
                t0 = time.perf_counter()
                chosen = lessons.choose(*lessons.timeline(source), seconds=stretch)
                t1 = time.perf_counter()
                lesson = lessons.render([lessons.Part(source, "joy", "joy", chosen)], Path(tmp) / "lesson.mp4", slow)
                walls.append((t1 - t0, time.perf_counter() - t1))
            warm = walls[1:]
            runs[name] = {"lesson_seconds": lesson.duration, "cold_s": round(sum(walls[0]), 3),
                          "timeline_s": round(statistics.median(w[0] for w in warm), 3),
                          "render_s": round(statistics.median(w[1] for w in warm), 3),
                          "total_s": round(statistics.median(sum(w) for w in warm), 3)}
    return {"clip_seconds": args.seconds, "repeat": args.repeat, "runs": runs, "machine": machine("cpu", args.threads)}
