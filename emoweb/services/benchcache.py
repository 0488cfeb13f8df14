"""`bench cache`: rebuilding a profile's few-shot cache from stored features vs. re-encoding its clips.

Synthetic labelled clips (embeddings of the model's width, clustered by label, some modalities
missing) are written through the real storage layer into a temporary SQLite file; then the real
`CaregiverService.rebuild_cache` runs on them. "cold" is the first rebuild of a new service (as after
an app start: features and leave-one-out affinities from the memo file the last run left, checked
against the database); "first" the same without a memo file (as after an upgrade or a deleted clip:
features read from the database, affinities computed); "warm" the next ones (from memory, checked
against the database). One correction and one new clip are timed end
to end. Re-encoding costs N x the per-clip extraction time (measured on a real composite clip with
`measure_encode`, else the given estimate).
"""
from __future__ import annotations

import dataclasses
import hashlib
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from emoweb.config import get_settings
from models import LABEL7

MODALITIES = ("fused", "audio", "visual")


def model_dim(model: str = "emoasst", profile: str = "embedded") -> int:
    """Width of the model's cache keys on a backbone profile (EmoAsst: the text encoder's)."""
    from models import registry
    from models.backbones import PROFILES

    return int(registry.build(model, PROFILES[profile].dims).config.text_dim)


def _populate(service, profile: str, n: int, dim: int, model: str, seed: int, start: int = 0) -> None:
    """Labelled clips start..start+n-1 with stored features, in one transaction through the Repository."""
    from emoweb.services.store import CaregiverRepository

    rng = np.random.default_rng(seed)
    labels = list(LABEL7)
    centroids = {m: rng.standard_normal((len(labels), dim)).astype(np.float32) for m in MODALITIES}
    text = centroids["fused"] + 3.0 * rng.standard_normal((len(labels), dim)).astype(np.float32)  # noisy zero-shot weights
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    if start:  # more clips of the same clusters, drawn apart from the first ones
        rng = np.random.default_rng([seed, start])
    y = rng.integers(0, len(labels), n)
    prof = service.get_profile(profile)
    with service.ctx.sessions() as session, session.begin():
        repo = CaregiverRepository(session)
        for i in range(n):
            sha = hashlib.sha256(f"{seed}/{profile}/{start + i}".encode()).hexdigest()
            clip, _ = repo.add_clip(prof.id, sha, f"media/{prof.id}/{sha}.mp4", "video", "upload", f"clip{start + i}.mp4", 3.0)
            feats = {}
            for m in MODALITIES:
                if m != "fused" and rng.random() < 0.1:
                    continue  # a clip without audio (or without a face)
                v = centroids[m][y[i]] + 4.0 * rng.standard_normal(dim).astype(np.float32)
                feats[f"{model}.{m}"] = v / np.linalg.norm(v)
            feats[f"{model}.logits"] = (100 * text @ feats[f"{model}.fused"]).astype(np.float32)
            repo.put_features(clip.id, service.backbone, feats)
            repo.add_correction(clip.id, labels[y[i]], annotator="bench")


def measure_encode_seconds() -> float | None:
    """Per-clip feature extraction on a real composite clip (warm backbones), or None without the data."""
    from emoweb.config import SHARED_DATA
    from emoweb.learning import composite
    from emoweb.pipeline.features import FeatureExtractor

    face = SHARED_DATA / "faces/facial_expressions/joy/Aaron_Sorkin_0002.jpg"
    speech = SHARED_DATA / "speech/ravdess/Actor_01/03-01-03-01-01-01-01.flac"
    if not (face.is_file() and speech.is_file()):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        clip = composite.render(face, speech, Path(tmp) / "bench.mp4")
        extractor = FeatureExtractor()
        extractor(clip)  # load the backbones
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            extractor(clip)
            times.append(time.perf_counter() - t0)
    return float(np.median(times))


def _timed(fn) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def _median(runs: list[tuple[float, Any]]) -> tuple[float, Any]:
    """The median of timed runs and that run's result (its phases are the ones shown)."""
    return sorted(runs, key=lambda run: run[0])[len(runs) // 2]


def bench_cache(
    sizes: tuple[int, ...] = (100, 1_000, 10_000),
    encode_seconds: float | None = None,
    measure_encode: bool = False,
    model: str = "emoasst",
    repeats: int = 3,
    seed: int = 0,
) -> dict[str, Any]:
    """Per size: cold and warm rebuild times from stored features (medians of `repeats` fresh services,
    and of max(5, repeats) warm runs), forced tuning, one correction and one new clip end to end, and
    the re-encoding cost."""
    from emoweb.services import CaregiverService

    import torch

    dim = model_dim(model)
    measured = measure_encode_seconds() if measure_encode else None
    per_clip = measured if measured is not None else (encode_seconds if encode_seconds is not None else 1.0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        settings = dataclasses.replace(get_settings(), data_dir=Path(tmp), database_url="")
        memo = Path(tmp) / "memo"
        for n in sizes:
            name = f"bench{n}"
            setup = CaregiverService(settings)
            setup.create_profile(name)
            insert, _ = _timed(lambda: _populate(setup, name, n, dim, model, seed))
            setup.rebuild_cache(name, tune=True)  # the profile's first cache: alpha/beta by cross-validation
            setup.close()
            first_runs, cold_runs = [], []
            for runs, keep_memo in ((first_runs, False), (cold_runs, True)):
                for _ in range(repeats):  # as after an app start: a new service, nothing in memory
                    if not keep_memo:
                        shutil.rmtree(memo, ignore_errors=True)
                    service = CaregiverService(settings)
                    runs.append(_timed(lambda: service.rebuild_cache(name)[model]))
                    service.close()  # writes the memo file, as a running app does in the background
            service = CaregiverService(settings)
            service.rebuild_cache(name)
            warm_runs = [_timed(lambda: service.rebuild_cache(name)[model]) for _ in range(max(5, repeats))]
            tuned_runs = [_timed(lambda: service.rebuild_cache(name, tune=True)[model]) for _ in range(repeats)]
            clip_id = service.list_clips(name)[n // 2].id
            correction, _ = _timed(lambda: (
                service.record_correction(clip_id, LABEL7[(n // 2 + 1) % len(LABEL7)], annotator="bench"),
                service.rebuild_cache(name),
            ))
            new_clip, _ = _timed(lambda: (_populate(service, name, 1, dim, model, seed, start=n), service.rebuild_cache(name)))
            deletion, _ = _timed(lambda: (service.delete_clip(clip_id), service.rebuild_cache(name)))
            service.close()
            (first_s, first), (cold_s, cold) = _median(first_runs), _median(cold_runs)
            (rebuild, warm), (tuned_s, tuned) = _median(warm_runs), _median(tuned_runs)
            rows.append({
                "n": n, "dim": dim, "first_s": round(first_s, 4), "cold_s": round(cold_s, 4), "rebuild_s": round(rebuild, 4),
                "rebuild_tuning_s": round(tuned_s, 4),
                "phases_first_s": first.timings, "phases_cold_s": cold.timings, "phases_s": warm.timings,
                "phases_tuning_s": tuned.timings, "tuning": warm.tuning,
                "correction_end_to_end_s": round(correction, 4), "new_clip_end_to_end_s": round(new_clip, 4),
                "deletion_end_to_end_s": round(deletion, 4),
                "insert_s": round(insert, 2), "reencode_s": round(n * per_clip, 1),
                "speedup_cold": round(n * per_clip / cold_s), "speedup": round(n * per_clip / rebuild),
                "alpha": warm.alpha, "beta": warm.beta, "scored": warm.scored,
                "loo_before": warm.before, "loo_after": warm.after,
                "db_mb": round(sum(f.stat().st_size for f in Path(tmp).glob("emoweb.sqlite3*")) / 2**20, 1),  # with the WAL
                "memo_mb": round(sum(f.stat().st_size for f in memo.glob("*.memo")) / 2**20, 1),
            })
    return {
        "model": model, "dim": dim, "torch_threads": torch.get_num_threads(),
        "encode_s_per_clip": round(per_clip, 3),
        "encode_source": "measured (median of 3, warm backbones, composite clip)" if measured is not None else "estimate",
        "repeats": repeats, "rows": rows,
    }


PHASES = ("load", "assemble", "build", "tune", "loo", "adapter", "save", "commit")  # as `ModelRebuild.timings`


def text(result: dict[str, Any]) -> str:
    repeats = result.get("repeats", 3)
    lines = [
        f"cache rebuild from stored features ({result['model']}, D={result['dim']}, {result['torch_threads']} torch thread(s)); "
        f"re-encoding at {result['encode_s_per_clip']} s/clip ({result['encode_source']})",
        f"cold: first rebuild of a new service (features and leave-one-out affinities from the memo file on disk), median of {repeats}; "
        f"no file: the same without a memo file (features read from the database, affinities computed), median of {repeats}; "
        f"warm: the same service again (both from memory), median of {max(5, repeats)}; all checked against the database; "
        "alpha/beta reused from the last snapshot in both (re-tuned below 200 clips)",
        "+tuning: cross-validation forced (warm); 1 correction: record_correction + rebuild; "
        "1 new clip: its features and label stored + rebuild; 1 deletion: delete_clip (rebuilds the caches that held it) "
        "+ rebuild; speed-up: re-encoding / cold rebuild",
        f"{'clips':>7} {'no file':>8} {'cold':>8} {'warm':>8} {'+tuning':>8} {'1 correction':>13} {'1 new clip':>11} {'1 deletion':>11} {'re-encode':>10} "
        f"{'speed-up':>9}  LOO before->after (scored)",
    ]
    for r in result["rows"]:
        lines.append(
            f"{r['n']:>7} {r['first_s']:>7.3f}s {r['cold_s']:>7.3f}s {r['rebuild_s']:>7.3f}s {r['rebuild_tuning_s']:>7.3f}s "
            f"{r['correction_end_to_end_s']:>12.3f}s {r['new_clip_end_to_end_s']:>10.3f}s {r['deletion_end_to_end_s']:>10.3f}s {r['reencode_s']:>9.0f}s "
            f"{r['speedup_cold']:>8}x  {r['loo_before']:.3f} -> {r['loo_after']:.3f} ({r['scored']} of {r['n']})"
        )
    lines.append("phases (s) of the median no-file, cold and warm runs: " + ", ".join(PHASES) + " (load and commit: shared by all models)")
    lines.append(f"{'clips':>7} {'run':>5} " + " ".join(f"{p:>{max(7, len(p))}}" for p in PHASES))
    for r in result["rows"]:
        for run, phases in (("nofile", r["phases_first_s"]), ("cold", r["phases_cold_s"]), ("warm", r["phases_s"])):
            lines.append(f"{r['n']:>7} {run:>5} " + " ".join(f"{phases.get(p, 0):>{max(7, len(p))}.3f}" for p in PHASES))
    return "\n".join(lines)
