"""`bench cache`: rebuilding a profile's few-shot cache from stored features vs. re-encoding its clips.

Synthetic labelled clips (embeddings of the model's width, clustered by label, some modalities
missing) are written through the real storage layer into a temporary SQLite file; then the real
`CaregiverService.rebuild_cache` runs on them, and one correction end to end
(`record_correction` + `rebuild_cache`) is timed. Re-encoding costs N x the per-clip extraction
time (measured on a real composite clip with `measure_encode`, else the given estimate).
"""
from __future__ import annotations

import dataclasses
import hashlib
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


def _populate(service, profile: str, n: int, dim: int, model: str, seed: int) -> None:
    """n labelled clips with stored features, in one transaction through the Repository."""
    from emoweb.services.store import CaregiverRepository

    rng = np.random.default_rng(seed)
    labels = list(LABEL7)
    centroids = {m: rng.standard_normal((len(labels), dim)).astype(np.float32) for m in MODALITIES}
    text = centroids["fused"] + 3.0 * rng.standard_normal((len(labels), dim)).astype(np.float32)  # noisy zero-shot weights
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    y = rng.integers(0, len(labels), n)
    prof = service.get_profile(profile)
    with service._sessions() as session, session.begin():
        repo = CaregiverRepository(session)
        for i in range(n):
            sha = hashlib.sha256(f"{seed}/{profile}/{i}".encode()).hexdigest()
            clip, _ = repo.add_clip(prof.id, sha, f"media/{prof.id}/{sha}.mp4", "video", "upload", f"clip{i}.mp4", 3.0)
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
    from emoweb import composite
    from emoweb.config import SHARED_DATA
    from emoweb.features import FeatureExtractor

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


def bench_cache(
    sizes: tuple[int, ...] = (100, 1_000, 10_000),
    encode_seconds: float | None = None,
    measure_encode: bool = False,
    model: str = "emoasst",
    repeats: int = 3,
    seed: int = 0,
) -> dict[str, Any]:
    """Rebuild times from stored features per size, one correction end to end, and the re-encoding cost."""
    from emoweb.services import CaregiverService

    import torch

    dim = model_dim(model)
    measured = measure_encode_seconds() if measure_encode else None
    per_clip = measured if measured is not None else (encode_seconds if encode_seconds is not None else 1.0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        settings = dataclasses.replace(get_settings(), data_dir=Path(tmp), database_url="")
        service = CaregiverService(settings)
        for n in sizes:
            name = f"bench{n}"
            service.create_profile(name)
            t0 = time.perf_counter()
            _populate(service, name, n, dim, model, seed)
            insert = time.perf_counter() - t0
            tuned_runs, auto_runs, tuned, auto = [], [], None, None
            for _ in range(repeats):
                t0 = time.perf_counter()
                tuned = service.rebuild_cache(name, tune=True)[model]  # alpha/beta by cross-validation
                tuned_runs.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                auto = service.rebuild_cache(name)[model]  # the default: reuses them while still valid
                auto_runs.append(time.perf_counter() - t0)
            clip_id = service.list_clips(name)[n // 2].id
            t0 = time.perf_counter()
            service.record_correction(clip_id, LABEL7[(n // 2 + 1) % len(LABEL7)], annotator="bench")
            result = service.rebuild_cache(name)[model]
            correction = time.perf_counter() - t0
            rebuild = float(np.median(auto_runs))
            rows.append({
                "n": n, "dim": dim, "rebuild_s": round(rebuild, 4), "rebuild_tuning_s": round(float(np.median(tuned_runs)), 4),
                "phases_s": auto.timings, "phases_tuning_s": tuned.timings, "tuning": auto.tuning,
                "correction_end_to_end_s": round(correction, 4), "insert_s": round(insert, 2),
                "reencode_s": round(n * per_clip, 1), "speedup": round(n * per_clip / rebuild),
                "alpha": result.alpha, "beta": result.beta,
                "loo_before": result.before, "loo_after": result.after,
                "db_mb": round((Path(tmp) / "emoweb.sqlite3").stat().st_size / 2**20, 1),
            })
        service.close()
    return {
        "model": model, "dim": dim, "torch_threads": torch.get_num_threads(),
        "encode_s_per_clip": round(per_clip, 3),
        "encode_source": "measured (median of 3, warm backbones, composite clip)" if measured is not None else "estimate",
        "rows": rows,
    }


def text(result: dict[str, Any]) -> str:
    lines = [
        f"cache rebuild from stored features ({result['model']}, D={result['dim']}, {result['torch_threads']} torch thread(s)); "
        f"re-encoding at {result['encode_s_per_clip']} s/clip ({result['encode_source']})",
        "rebuild: the default (alpha/beta reused while the labelled set changed < 10%, tuned below 200 clips); "
        "+tuning: cross-validation forced; phases of the default: load, assemble, tune, loo (<= 500 rows), save",
        f"{'clips':>7} {'rebuild':>9} {'+tuning':>9} {'load':>7} {'asm':>7} {'tune':>7} {'loo':>7} {'save':>7} "
        f"{'1 correction':>13} {'re-encode':>10} {'speed-up':>9}  LOO before->after",
    ]
    for r in result["rows"]:
        p = r["phases_s"]
        lines.append(
            f"{r['n']:>7} {r['rebuild_s']:>8.3f}s {r['rebuild_tuning_s']:>8.3f}s {p.get('load', 0):>6.3f}s "
            f"{p.get('assemble', 0):>6.3f}s {p.get('tune', 0):>6.3f}s {p.get('loo', 0):>6.3f}s {p.get('save', 0):>6.3f}s "
            f"{r['correction_end_to_end_s']:>12.3f}s {r['reencode_s']:>9.0f}s {r['speedup']:>8}x  "
            f"{r['loo_before']:.3f} -> {r['loo_after']:.3f}"
        )
    return "\n".join(lines)
