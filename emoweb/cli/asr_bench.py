"""`python -m emoweb bench asr`: how well the app's transcript matches what the acted corpora's actors read.

The acted speech corpora give each clip's sentence (the manifest's `text`), so the transcript the app
shows (`FeatureExtractor`, ASR on) can be scored by word error rate, per corpus, next to the seconds the
ASR stage and the whole extraction take per clip. The clips are a seeded draw of `--clips` per corpus
from `--split`, the same on every run and in any code version, so two versions compare on one list.
"""
from __future__ import annotations

import argparse
import random
import statistics
from pathlib import Path

from emoweb.cli.bench import bench, bench_settings, machine
from emoweb.errors import EmoWebError

SEED = 0  # the clip draw
SHOWN_ERRORS = 3  # wrong transcripts printed per corpus


def _transform():
    """Lower case, no punctuation, words split on white space: only the words are scored."""
    import jiwer

    return jiwer.Compose([jiwer.ToLowerCase(), jiwer.RemovePunctuation(), jiwer.RemoveMultipleSpaces(), jiwer.Strip(),
                          jiwer.ReduceToListOfListOfWords()])


def word_error_rate(references: list[str], hypotheses: list[str]) -> float:
    """Corpus word error rate: (substituted + deleted + inserted words) / reference words, summed over
    all pairs, case and punctuation ignored ("o'clock" reads "oclock" on both sides; a digit is not its
    word). An empty hypothesis counts every reference word as deleted. Raises EmoWebError for no pairs,
    unequal lists or an empty reference (no words to score against)."""
    try:
        import jiwer
    except ImportError as exc:
        raise EmoWebError("the word error rate needs jiwer: pip install -r requirements-dev.txt") from exc
    if not references or len(references) != len(hypotheses):
        raise EmoWebError(f"word error rate: {len(references)} references for {len(hypotheses)} transcripts")
    t = _transform()
    if any(not t(r)[0] for r in references):
        raise EmoWebError("word error rate: a reference sentence has no words")
    return float(jiwer.wer(references, hypotheses, reference_transform=t, hypothesis_transform=t))


def draw_clips(manifest: Path, split: str, n: int) -> list[tuple[Path, str]]:
    """`n` (path, sentence) pairs of `split` drawn with SEED (all of them when the split has fewer).
    Raises EmoWebError when the split has no clip with a sentence."""
    from emoweb.learning.manifests import read_manifest

    rows = [(r.path, r.text) for r in read_manifest(manifest) if r.split == split and r.path is not None and r.text]
    if not rows:
        raise EmoWebError(f"{manifest} has no {split!r} clip with a sentence in its text column")
    return random.Random(SEED).sample(rows, min(n, len(rows)))


def score_corpus(extract, clips: list[tuple[Path, str]]) -> dict:
    """Transcribe each clip with `extract` (a FeatureExtractor) and score it: WER, mean seconds per clip
    of the ASR stage, the audio-encoder stage and the whole extraction, and every transcript."""
    rows = []
    for path, sentence in clips:
        feats = extract(path)
        rows.append({"clip": path.name, "reference": sentence, "transcript": feats.transcript,
                     "asr_s": feats.timings.get("asr", 0.0), "audio_encoder_s": feats.timings.get("audio_encoder", 0.0),
                     "total_s": feats.timings["total"]})
    mean = statistics.fmean
    return {
        "n": len(rows),
        "wer": word_error_rate([r["reference"] for r in rows], [r["transcript"] for r in rows]),
        "empty": sum(not r["transcript"].strip() for r in rows),
        "asr_s": mean(r["asr_s"] for r in rows),
        "audio_encoder_s": mean(r["audio_encoder_s"] for r in rows),
        "total_s": mean(r["total_s"] for r in rows),
        "clips": rows,
    }


def _asr_text(r: dict) -> str:
    m = r["machine"]
    lines = [f"bench asr: the app's transcript vs the manifest sentence, {r['clips']} seeded {r['split']} clips per corpus, "
             f"device {m['device']}, {m['threads']} thread(s), ASR beam {r['asr_beam']}; machine: {m['cpu']} "
             f"({m['cpu_count']} logical CPUs)", "",
             f"{'corpus':<10}{'clips':>6}{'WER %':>8}{'empty':>7}{'asr s/clip':>12}{'audio enc s':>13}{'total s/clip':>14}"]
    for name, c in r["corpora"].items():
        lines.append(f"{name:<10}{c['n']:>6}{100 * c['wer']:>8.1f}{c['empty']:>7}{c['asr_s']:>12.3f}"
                     f"{c['audio_encoder_s']:>13.3f}{c['total_s']:>14.3f}")
    for name, c in r["corpora"].items():
        wrong = [x for x in c["clips"] if word_error_rate([x["reference"]], [x["transcript"]]) > 0][:SHOWN_ERRORS]
        lines += [f"  {name} {x['clip']}: {x['reference']!r} -> {x['transcript']!r}" for x in wrong]
    return "\n".join(lines)


@bench("asr", "word error rate of the app's transcript on --clips seeded clips of each acted corpus (--corpora, "
              "--split), with seconds per clip of the ASR stage", _asr_text)
def bench_asr(args: argparse.Namespace) -> dict:
    from emoweb.config import SHARED_DATA
    from emoweb.pipeline.features import FeatureExtractor
    from models.backbones import resolve_device

    if args.clips < 1:
        raise EmoWebError("--clips must be at least 1")
    settings = bench_settings(args)
    corpora = [c.strip() for c in args.corpora.split(",") if c.strip()]
    if not corpora:
        raise EmoWebError("--corpora names no corpus")
    draws = {}
    for name in corpora:
        manifest = SHARED_DATA / "speech" / name / "manifest.csv"
        if not manifest.is_file():
            raise EmoWebError(f"{name} manifest not found at {manifest} (the shared data folder is needed)")
        draws[name] = draw_clips(manifest, args.split, args.clips)
    extract = FeatureExtractor(settings)
    extract(next(iter(draws.values()))[0][0])  # loads the models: not timed with the clips
    return {"clips": args.clips, "split": args.split, "seed": SEED, "asr_beam": settings.asr_beam,
            "machine": machine(resolve_device(settings.device), args.threads),
            "corpora": {name: score_corpus(extract, clips) for name, clips in draws.items()}}
