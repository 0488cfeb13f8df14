"""`python -m emoweb bench generalise`: every model on every corpus's validation split, side by side.

Why: a recipe chosen on one corpus's validation speakers did not hold on other speakers and corpora
(issue 21). This bench scores the shipped checkpoints (with their calibration) on the validation split
of each shared corpus: speech (RAVDESS, CREMA-D, TESS), faces (web photos, FER2013), composites of
validation speech and validation web photos of the same label (the fused path; `emoweb.learning.pairs`),
partial-expression clips of the validation people of the web photos (their expression in part of the frames) and,
when the readers know them, text (MELD dev, GoEmotions valid). Per model and corpus: accuracy, UAR,
weighted F1, and ECE with and without the card's calibration; per modality path where the row has more
than one; the FER backbone's own answer on the face sets. Speech is encoded without ASR: the acted
corpora's sentences carry no emotion. Recipes are compared on the mean over corpora, never on one.
"""
from __future__ import annotations

import torch

from emoweb.config import SHARED_DATA, Settings
from emoweb.learning.evaluation import BACKBONE_REPORT, NO_DECISION, backbone_label, composite_items
from emoweb.learning.manifests import read_manifest
from emoweb.learning.metrics import classification_report, ece_floor, expected_calibration_error
from emoweb.learning.pairs import partial_expression_samples
from emoweb.learning.studies import acted_speech_store
from emoweb.learning.training import Sample, predict_samples, reports
from emoweb.pipeline.inference import Predictor, reads_an_input
from models import LABEL7

SPEECH = {"RAVDESS": "speech/ravdess/manifest.csv", "CREMA-D": "speech/cremad/manifest.csv", "TESS": "speech/tess/manifest.csv"}
FACES = {"web photos": "faces/facial_expressions/manifest.csv", "FER2013": "faces/fer2013/manifest.csv"}
TEXT = {"MELD": "text/meld/dev_sent_emo.csv", "GoEmotions": "text/goemotions_ekman/valid.tsv"}
COMPOSITE_SPEECH = ("RAVDESS", "CREMA-D")  # validation speakers x validation web photos
COMPOSITE_FACES = "web photos"
PARTIAL_CORPUS = "partial expression"  # 16-frame clips of validation people: neutral, their expression in 3-8 frames, neutral


def corpus_items(store: FeatureStore, manifest: str, split: str | None = "val") -> list:
    """(row, features) of a shared corpus's rows with a LABEL7 label, of `split` (None: every row); [] when
    the corpus is absent. `manifest`: relative to the shared data folder."""
    path = SHARED_DATA / manifest
    if not path.is_file():
        return []
    rows = [r for r in read_manifest(path) if (split is None or r.split == split) and r.label in LABEL7]
    return store.encode_rows(rows, desc=f"features {manifest.split('/')[1]}")[0]


def score(model, items: list, dims: dict[str, int]) -> dict:
    """The model's fused report with ECE (calibrated and raw), and each modality path's report. A row the
    model reads nothing of (Foal-Net on a text) counts as `NO_DECISION`, an error, as in `eval`, not as the
    argmax of its uniform guess; ECE is over the rows it answered (`answered`: their share)."""
    samples = [Sample(r, f, "val") for r, f in items]
    labels = list(LABEL7)
    outs = predict_samples(model, samples, dims, labels)
    logits = torch.cat([o.logits for o in outs])
    truth = [s.row.label for s in samples]
    raw = torch.cat([o.raw_logits if o.raw_logits is not None else o.logits for o in outs])  # before the card's calibration
    batch_of = [o for o in outs for _ in range(o.probs.shape[0])]
    answered = torch.tensor([reads_an_input(s.features, o) for s, o in zip(samples, batch_of)])
    report = classification_report(truth, [labels[int(i)] if a else NO_DECISION for i, a in zip(logits.argmax(-1), answered)], labels)
    report["answered"] = float(answered.float().mean())
    target = torch.tensor([labels.index(t) for t in truth])[answered]
    for name, scores in (("ece", logits), ("ece_uncalibrated", raw)):
        probs = scores[answered].softmax(-1)
        report[name] = expected_calibration_error(probs.max(-1).values.tolist(), (probs.argmax(-1) == target).tolist())
    report["ece_floor"] = ece_floor(logits[answered].softmax(-1).max(-1).values.tolist())  # what a calibrated model shows at this n
    # each sense alone, where rows have more than one (composites); otherwise the answer is that sense's
    several = any(sum(s.features.modalities.values()) > 1 for s in samples)
    paths = {m: r for m, r in reports(samples, outs, labels).items() if m in ("audio", "visual")} if several else {}
    return {"fused": report, "paths": paths}


def generalise(settings: Settings, models: str = "all") -> dict:
    """{corpus: {"n", model: {"fused": report, "paths": {...}}, BACKBONE_REPORT: report}} + per-model means.
    `models`: comma-separated names or 'all' (the shipped checkpoints, with their calibration)."""
    predictor = Predictor(settings)
    bb = predictor.backbones
    loaded = {n: predictor.model(n) for n in predictor.required_models(models)}
    store = acted_speech_store(predictor, settings)
    corpora = {name: corpus_items(store, path) for name, path in {**SPEECH, **FACES, **TEXT}.items()}
    speech = [item for name in COMPOSITE_SPEECH for item in corpora.get(name, [])]
    corpora["composites"] = composite_items(speech + corpora.get(COMPOSITE_FACES, [])) if speech else []
    faces = [Sample(r, f, "val") for r, f in corpora.get(COMPOSITE_FACES, [])]
    corpora[PARTIAL_CORPUS] = [(s.row, s.features) for s in partial_expression_samples(faces, variants=1)]
    result: dict = {"corpora": {}, "backbones": bb.name}
    for name, items in corpora.items():
        if not items:
            continue
        entry: dict = {"n": len(items)}
        for model_name, (model, _) in loaded.items():
            entry[model_name] = score(model, items, bb.dims)
        if name in FACES:
            entry[BACKBONE_REPORT] = classification_report([r.label for r, _ in items], [backbone_label(f) for _, f in items], list(LABEL7))
        result["corpora"][name] = entry
    # every model has a voice or face path; the partial-expression clips are built from the web photos already counted
    sensed = [c for name, c in result["corpora"].items() if name not in TEXT and name != PARTIAL_CORPUS]
    result["mean"] = {n: {k: sum(c[n]["fused"][k] for c in sensed) / len(sensed) for k in ("accuracy", "uar", "weighted_f1", "ece")}
                      for n in loaded} if sensed else {}
    return result


def pct(v: float | None) -> str:
    """A share as a percentage with one decimal; '-' where there is none (no row of that kind)."""
    return "-" if v is None else f"{100 * v:.1f}"


def floor_text(floor: dict | None) -> str:
    """`metrics.ece_floor` as "mean / 95th percentile" in percent; '-' without one (an older result)."""
    return "-" if not floor else f"{pct(floor['mean'])} / {pct(floor['p95'])}"


def generalise_text(r: dict) -> str:
    """Markdown: one table per corpus (fused and per-path accuracy / UAR / weighted F1 / ECE), then the means."""
    lines = []
    for corpus, entry in r["corpora"].items():
        lines += [f"### {corpus} (validation, n = {entry['n']})", "",
                  "| model | path | accuracy | UAR | weighted F1 | ECE | a calibrated model's ECE here (mean / 95%) | ECE before calibration |",
                  "|---|---|---:|---:|---:|---:|---:|---:|"]
        for model, scores in entry.items():
            if model == "n":
                continue
            if model == BACKBONE_REPORT:
                lines.append(f"| FER backbone | its own output | {pct(scores['accuracy'])} | {pct(scores['uar'])} | {pct(scores['weighted_f1'])} | | | |")
                continue
            f = scores["fused"]
            share = f.get("answered", 1.0)
            path = "answer" if share == 1.0 else "no answer: reads none of these inputs" if share == 0 else f"answer ({pct(share)} % of rows)"
            lines.append(f"| {model} | {path} | {pct(f['accuracy'])} | {pct(f['uar'])} | {pct(f['weighted_f1'])} | {pct(f['ece'])} | "
                         f"{floor_text(f.get('ece_floor'))} | {pct(f['ece_uncalibrated'])} |")
            for path, p in scores["paths"].items():
                lines.append(f"| {model} | {path} alone | {pct(p['accuracy'])} | {pct(p['uar'])} | {pct(p['weighted_f1'])} | | | |")
        lines.append("")
    lines += ["### Mean over the voice, face and composite corpora", "", "| model | accuracy | UAR | weighted F1 | ECE |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {n} | {pct(m['accuracy'])} | {pct(m['uar'])} | {pct(m['weighted_f1'])} | {pct(m['ece'])} |" for n, m in r["mean"].items()]
    return "\n".join(lines)
