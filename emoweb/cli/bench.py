"""`python -m emoweb bench WHAT`: benchmarks, one subcommand with a registry of what to measure.

`extract`: per-stage time of the shared feature pipeline (decode, faces, visual, ASR, audio encoder,
text, total) on a composite clip of a given length, cold (model load + first run) and warm (median of
`--repeat` runs), with the machine described. More benches register with `@bench("name")` (`service_benches`,
`study_benches`).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

from emoweb.cli import add_backbones, add_device, add_json, add_models, command, emit, settings_from
from emoweb.errors import EmoWebError

BenchFn = Callable[[argparse.Namespace], dict]
Formatter = Callable[[dict], str]
BENCHES: dict[str, tuple[str, BenchFn, Formatter]] = {}

STAGES = ("decode", "faces", "visual", "asr", "audio_encoder", "text", "total")
BENCH_FACE = "faces/facial_expressions/joy/Aaron_Sorkin_0002.jpg"
BENCH_SPEECH = "speech/ravdess/Actor_01/03-01-03-01-01-01-01.flac"  # "Kids are talking by the door"


def bench(name: str, help: str, text: Formatter):
    """Register a benchmark: `fn(args) -> result dict`, printed by `text(result)`, or as JSON with --json."""

    def deco(fn: BenchFn) -> BenchFn:
        BENCHES[name] = (help, fn, text)
        return fn

    return deco


def _bench_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("what", choices=sorted(BENCHES), help="; ".join(f"{k}: {h}" for k, (h, _, _) in sorted(BENCHES.items())))
    p.add_argument("--seconds", type=float, default=4.0, help="length of the composite test clip (default 4)")
    add_backbones(p)
    add_device(p)
    p.add_argument("--threads", type=int, default=None, help="torch / CTranslate2 CPU threads (default: EMOWEB_THREADS, else 2)")
    p.add_argument("--repeat", type=int, default=5, help="warm runs after the cold one (default 5)")
    p.add_argument("--split", default="val", help="kshot, asr: the speakers scored (default val; kshot: dev = the speakers to choose a recipe on)")
    p.add_argument("--speakers", type=int, default=None, help="kshot: only the first N speakers of each corpus")
    p.add_argument("--ks", default="1,2,4", help="kshot: clips per label in the cache, comma-separated (default 1,2,4; "
                   "capped at each label's clips of the speaker minus one, so one is always scored)")
    p.add_argument("--corpora", default="ravdess,cremad", help="kshot, asr: speech corpora in the shared data (default ravdess,cremad)")
    p.add_argument("--clips", type=int, default=40, help="asr: clips per corpus, a seeded draw (default 40)")
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="loco: the folds' checkpoints (default: loco beside the feature cache; a finished fold is reused)")
    add_models(p)
    add_json(p)


@command("bench", "benchmarks: extract, models, cache, faces, lesson, asr, kshot, crossval, baseline, generalise, loco (python -m emoweb bench -h)",
         prints="the measured numbers as the README's tables, with the machine they were measured on",
         takes="extract, models, faces, lesson, cache: 10 s to 2 min; asr: about 2-4 min; kshot and baseline: about 5-20 min; "
         "crossval: 20-45 min; generalise: 2-5 min; loco: 8-35 min per model and corpus left out (2-CPU machine, features cached)")(_bench_args)
def _bench(args: argparse.Namespace) -> int:
    if args.threads is None:  # the machine's setting, as every other command follows it
        args.threads = settings_from(None).threads or 2
    _, fn, text = BENCHES[args.what]
    emit(fn(args), args.json, text)
    return 0


# --- machine --------------------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: str, threads: int) -> dict:
    """What the numbers were measured on."""
    import ctranslate2
    import torch

    info = {
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "torch": torch.__version__,
        "ctranslate2": ctranslate2.__version__,
        "device": device,
        "python": platform.python_version(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(default)"),
    }
    try:
        import faster_whisper

        info["faster_whisper"] = faster_whisper.__version__
    except (ImportError, AttributeError):
        pass
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


# --- extract --------------------------------------------------------------------------------------------


def render_bench_clip(seconds: float, out: Path) -> Path:
    """A composite clip of `seconds`: the smiling face + the RAVDESS sentence, looped to length if needed."""
    import numpy as np

    from emoweb.config import SHARED_DATA
    from emoweb.learning import composite
    from emoweb.pipeline import media

    face, speech = SHARED_DATA / BENCH_FACE, SHARED_DATA / BENCH_SPEECH
    if not SHARED_DATA.is_dir():
        raise EmoWebError(f"shared data folder {SHARED_DATA} is absent: the benchmark clip is built from it")
    for p in (face, speech):
        if not p.is_file():
            raise EmoWebError(f"benchmark input missing from the shared data: {p.relative_to(SHARED_DATA)}")
    if seconds <= 0:
        raise EmoWebError("--seconds must be positive")
    audio = media.decode(speech).audio
    need = int(round(seconds * media.SAMPLE_RATE))
    audio = np.tile(audio, -(-need // audio.size))[:need]
    looped = out.with_suffix(".wav")
    _write_wav(looped, audio)
    return composite.render(face, looped, out, seconds)


def _write_wav(path: Path, audio) -> None:
    import wave

    import numpy as np

    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16_000)
        w.writeframes(pcm.tobytes())


def _fmt_table(result: dict) -> str:
    m, cold, warm = result["machine"], result["cold"], result["warm_median"]
    lines = [
        f"bench extract: {result['clip_seconds']:.1f}-s composite clip, profile {result['profile']}, "
        f"device {m['device']}, {m['threads']} thread(s), ASR beam {result['asr_beam']}, {result['repeat']} warm runs",
        f"machine: {m['cpu']} ({m['cpu_count']} logical CPUs{', GPU ' + m['gpu'] if 'gpu' in m else ''}); "
        f"torch {m['torch']}, ctranslate2 {m['ctranslate2']}, OMP_WAIT_POLICY {m['omp_wait_policy']}",
        f"transcript: {result['transcript']!r}",
        "",
        f"{'stage':<14}{'cold s':>10}{'warm median s':>16}{'warm min s':>12}",
    ]
    for s in STAGES:
        lines.append(f"{s:<14}{cold.get(s, 0.0):>10.3f}{warm.get(s, 0.0):>16.3f}{result['warm_min'].get(s, 0.0):>12.3f}")
    lines += [
        "",
        f"cold: backbones created in {result['setup_s']:.3f} s, first extraction (incl. lazy model loads) "
        f"{result['cold_wall_s']:.3f} s wall",
        f"warm: {statistics.median(result['warm_wall_s']):.3f} s wall per clip (median)",
    ]
    return "\n".join(lines)


def bench_settings(args: argparse.Namespace):
    """Checked settings for a timed run: the device must exist, threads are applied to torch."""
    import torch

    settings = settings_from(args)
    if settings.device == "cuda" and not torch.cuda.is_available():
        raise EmoWebError("--device cuda: no CUDA device is available on this machine")
    if args.threads < 1 or args.repeat < 1:
        raise EmoWebError("--threads and --repeat must be at least 1")
    torch.set_num_threads(args.threads)
    return dataclasses.replace(settings, threads=args.threads)


@bench("extract", "per-stage time of the shared feature pipeline on a composite clip", _fmt_table)
def bench_extract(args: argparse.Namespace) -> dict:
    from emoweb.pipeline.features import FeatureExtractor
    from models.backbones import resolve_device

    settings = bench_settings(args)
    with tempfile.TemporaryDirectory(prefix="emoweb-bench-") as tmp:
        clip = render_bench_clip(args.seconds, Path(tmp) / f"bench_{args.seconds:g}s.mp4")
        t0 = time.perf_counter()
        extractor = FeatureExtractor(settings)
        setup = time.perf_counter() - t0
        t0 = time.perf_counter()
        first = extractor(clip)
        cold_wall = time.perf_counter() - t0
        runs, walls = [], []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            feats = extractor(clip)
            walls.append(time.perf_counter() - t0)
            runs.append(feats.timings)
    device = resolve_device(settings.device)
    return {
        "clip_seconds": first.duration,
        "profile": extractor.backbones.name,
        "asr_beam": settings.asr_beam,
        "repeat": args.repeat,
        "transcript": feats.transcript,
        "machine": machine(device, args.threads),
        "setup_s": round(setup, 4),
        "cold_wall_s": round(cold_wall, 4),
        "cold": {k: round(v, 4) for k, v in first.timings.items()},
        "warm_median": {s: round(statistics.median(r.get(s, 0.0) for r in runs), 4) for s in STAGES},
        "warm_min": {s: round(min(r.get(s, 0.0) for r in runs), 4) for s in STAGES},
        "warm_wall_s": [round(w, 4) for w in walls],
        "warnings": first.warnings,
    }


# --- models ---------------------------------------------------------------------------------------------


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _fmt_models(result: dict) -> str:
    m = result["machine"]
    lines = [
        f"bench models: {result['clip_seconds']:.1f}-s composite clip, profile {result['profile']}, device {m['device']}, "
        f"{m['threads']} thread(s), {result['repeat']} warm runs; machine: {m['cpu']}",
        f"models: {', '.join(result['models'])}; cold start (load backbones + models, first clip) {result['cold_s']:.3f} s",
        "",
        f"{'stage / model':<16}{'warm median s':>14}",
    ]
    lines += [f"{k:<16}{v:>14.4f}" for k, v in result["warm_stages"].items()]
    lines += [f"{k:<16}{v:>14.4f}" for k, v in result["warm_models"].items()]
    lines += [
        "",
        f"end to end per clip, warm median: all models {result['all_s']:.3f} s, emoasst only {result['emoasst_s']:.3f} s "
        f"-> ratio {result['ratio']:.3f}",
        f"after decoding (features minus decode + models): {result['after_decode_s']:.3f} s",
        f"peak RSS {result['peak_rss_mb']:.0f} MB",
    ]
    return "\n".join(lines)


@bench("models", "per-stage and per-model latency, --models all vs emoasst, peak memory", _fmt_models)
def bench_models(args: argparse.Namespace) -> dict:
    from emoweb.pipeline.inference import Predictor
    from models.backbones import resolve_device

    settings = bench_settings(args)
    with tempfile.TemporaryDirectory(prefix="emoweb-bench-") as tmp:
        clip = render_bench_clip(args.seconds, Path(tmp) / f"bench_{args.seconds:g}s.mp4")
        t0 = time.perf_counter()
        predictor = Predictor(settings)
        names = predictor.model_names("all")
        if not names:
            raise EmoWebError("no trained model is available for this profile")
        first = predictor.predict(clip, "all")
        cold = time.perf_counter() - t0
        walls: dict[str, list[float]] = {"all": [], "emoasst": []}
        stages, per_model, after = [], [], []
        for _ in range(args.repeat):
            for spec in ("all", "emoasst"):  # interleaved so both see the same machine load
                t0 = time.perf_counter()
                pred = predictor.predict(clip, spec)
                walls[spec].append(time.perf_counter() - t0)
                if spec == "all":
                    stages.append(pred.features.timings)
                    per_model.append(pred.latency)
                    after.append(pred.features.timings["total"] - pred.features.timings.get("decode", 0) + sum(pred.latency.values()))
    med = statistics.median
    return {
        "clip_seconds": first.features.duration,
        "profile": predictor.backbones.name,
        "models": names,
        "repeat": args.repeat,
        "machine": machine(resolve_device(settings.device), args.threads),
        "cold_s": round(cold, 4),
        "warm_stages": {s: round(med(r.get(s, 0.0) for r in stages), 4) for s in STAGES},
        "warm_models": {n: round(med(r[n] for r in per_model), 4) for n in names},
        "all_s": round(med(walls["all"]), 4),
        "emoasst_s": round(med(walls["emoasst"]), 4),
        "ratio": round(med(walls["all"]) / med(walls["emoasst"]), 4),
        "after_decode_s": round(med(after), 4),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
    }


# --- faces ----------------------------------------------------------------------------------------------

FACES_MANIFEST = "faces/facial_expressions/manifest.csv"


def _fmt_faces(result: dict) -> str:
    lines = [f"{result['n']} {result['split']} face photos ({result['manifest']}), {result['machine']['threads']} thread(s)"]
    for name, r in result["detectors"].items():
        lines.append(f"{name:<10} recall {100 * r['recall']:5.1f}% ({r['found']}/{result['n']})  "
                     f"{r['ms_mean']:6.1f} ms/image (median {r['ms_median']:.1f})")
    lines.append(f"photos only Haar finds: {result['haar_only']}; only BlazeFace finds: {result['blazeface_only']}")
    return "\n".join(lines)


@bench("faces", "face detection recall and ms per image, Haar vs BlazeFace, on the shared validation face photos", _fmt_faces)
def bench_faces(args: argparse.Namespace) -> dict:
    """Recall = a face box on a photo that has a face (every photo of the set has one). Both detectors get
    the same decoded RGB images, each warmed up on the first photo before timing."""
    import numpy as np
    import torch
    from PIL import Image, ImageOps

    from emoweb.config import SHARED_DATA
    from emoweb.learning.manifests import read_manifest
    from emoweb.pipeline import faces, haar

    torch.set_num_threads(args.threads)
    rows = [r for r in read_manifest(SHARED_DATA / FACES_MANIFEST) if r.split == "val" and r.path is not None]
    images = []
    for row in rows:
        with Image.open(row.path) as im:
            images.append(np.asarray(ImageOps.exif_transpose(im).convert("RGB")))
    runs = {"haar": lambda im: haar.detect_box(im) is not None, "blazeface": lambda im: bool(faces.detect([im])[0])}
    found: dict[str, list[bool]] = {}
    result: dict = {"manifest": FACES_MANIFEST, "split": "val", "n": len(images), "detectors": {}}
    for name, run in runs.items():
        run(images[0])
        times, hits = [], []
        for im in images:
            t0 = time.perf_counter()
            hits.append(run(im))
            times.append(1000 * (time.perf_counter() - t0))
        found[name] = hits
        result["detectors"][name] = {"recall": sum(hits) / max(1, len(hits)), "found": sum(hits),
                                     "ms_mean": statistics.fmean(times), "ms_median": statistics.median(times)}
    result["haar_only"] = sum(h and not b for h, b in zip(found["haar"], found["blazeface"]))
    result["blazeface_only"] = sum(b and not h for h, b in zip(found["haar"], found["blazeface"]))
    result["machine"] = machine("cpu", args.threads)
    return result
