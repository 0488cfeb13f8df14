"""Classification metrics with the emotion-recognition names used correctly, and a Markdown comparison table.

Naming (papers and reference code mix these up, Foal-Net's code swaps them):
  WA (weighted accuracy) = plain accuracy = correct / n.
  UA (unweighted accuracy) = UAR = mean per-class recall over the classes present in y_true.
On imbalanced data (most real clips are "neutral") the two differ a lot, so both are reported.
Plain numpy, so the CLI, services and tests need no torch; sklearn is only used by the tests.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

NO_DECISION = "no decision"  # a model that reads none of a row's inputs (Foal-Net on a text): an error, not a guess


def classification_report(y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str]) -> dict:
    """Accuracy (WA), UAR (UA), weighted F1, per-class recall and the confusion matrix over ``labels``.

    Returns a JSON-able dict: ``n``, ``accuracy``, ``uar``, ``weighted_f1``, ``per_class_recall``
    {label: recall, or None when the label has no true examples}, ``support`` {label: count},
    ``confusion`` (rows = true, columns = predicted, in ``labels`` order), ``labels`` and
    ``n_pred_outside_labels`` (predictions of a label outside the set: counted as errors, not
    in the matrix, the same as sklearn with ``labels=``). True labels must all be in ``labels``.
    With n = 0 the scores are None.
    """
    labels = list(labels)
    if len(y_true) != len(y_pred):
        raise ValueError(f"{len(y_true)} true labels but {len(y_pred)} predictions")
    if len(set(labels)) != len(labels):
        raise ValueError("duplicate names in labels")
    index = {name: i for i, name in enumerate(labels)}
    unknown = sorted({t for t in y_true if t not in index})
    if unknown:
        raise ValueError(f"true labels {unknown} are not in the label set {labels}")
    c, n = len(labels), len(y_true)
    t = np.array([index[x] for x in y_true], dtype=np.int64)
    p = np.array([index.get(x, -1) for x in y_pred], dtype=np.int64)
    inside = p >= 0
    confusion = np.zeros((c, c), dtype=np.int64)
    np.add.at(confusion, (t[inside], p[inside]), 1)
    support = np.bincount(t, minlength=c)
    tp = np.diag(confusion).astype(np.float64)
    predicted = confusion.sum(axis=0).astype(np.float64)
    present = support > 0
    recall = np.divide(tp, support, out=np.zeros(c), where=present)
    precision = np.divide(tp, predicted, out=np.zeros(c), where=predicted > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros(c), where=denom > 0)
    report = {
        "n": n,
        "labels": labels,
        "accuracy": float(tp.sum() / n) if n else None,
        "uar": float(recall[present].mean()) if n else None,
        "weighted_f1": float((f1 * support).sum() / support.sum()) if n else None,
        "per_class_recall": {name: (float(recall[i]) if present[i] else None) for i, name in enumerate(labels)},
        "support": {name: int(support[i]) for i, name in enumerate(labels)},
        "confusion": confusion.tolist(),
        "n_pred_outside_labels": int((~inside).sum()),
    }
    return report


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def comparison_table(reports: Mapping[str, Mapping], per_class: bool = False) -> str:
    """Markdown table, one row per model: n, accuracy (WA), UAR (UA), weighted F1 in percent.

    ``per_class=True`` adds one recall column per label (labels of the first report). The best
    value of each score column is bold, so the table reads at a glance in the UI and the README.
    """
    names = list(reports)
    if not names:
        return ""
    cols = [("Accuracy (WA) %", "accuracy"), ("UAR (UA) %", "uar"), ("Weighted F1 %", "weighted_f1")]
    header = ["Model", "n"] + [title for title, _ in cols]
    class_labels = list(reports[names[0]].get("labels", [])) if per_class else []
    header += [f"R({lab}) %" for lab in class_labels]
    best = {key: max((r.get(key) for r in reports.values() if r.get(key) is not None), default=None) for _, key in cols}
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for name in names:
        r = reports[name]
        cells = [str(name), str(r.get("n", "-"))]
        for _, key in cols:
            v = r.get(key)
            text = _pct(v)
            cells.append(f"**{text}**" if v is not None and len(names) > 1 and v == best[key] else text)
        recalls = r.get("per_class_recall", {})
        cells += [_pct(recalls.get(lab)) for lab in class_labels]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def expected_calibration_error(confidence: Sequence[float], correct: Sequence[bool], bins: int = 15) -> float | None:
    """ECE (Guo et al., 2017): over `bins` equal-width confidence bins, the row-weighted mean gap between
    mean confidence and accuracy. 0 = a model right exactly as often as it says; None with no rows."""
    conf, hit = np.asarray(confidence, dtype=np.float64), np.asarray(correct, dtype=np.float64)
    if not conf.size:
        return None
    which = np.minimum((conf * bins).astype(np.int64), bins - 1)
    total = 0.0
    for b in range(bins):
        rows = which == b
        if rows.any():
            total += rows.sum() * abs(conf[rows].mean() - hit[rows].mean())
    return float(total / conf.size)


ECE_FLOOR_DRAWS = 200


def ece_floor(confidence: Sequence[float], bins: int = 15, draws: int = ECE_FLOOR_DRAWS, seed: int = 0) -> dict | None:
    """The ECE a perfectly calibrated model would show on these rows: each row right with exactly its stated
    `confidence`, drawn `draws` times (seeded); {"mean", "p95"} of those ECEs, None with no rows.

    Why: binned ECE is biased upwards on few rows (each bin's accuracy is a noisy estimate; Kumar et al.,
    NeurIPS 2019; Roelofs et al., AISTATS 2022). With 240 rows and 15 bins a calibrated model shows ~5-7 %,
    so an ECE there says "miscalibrated" only when it lies above the floor's 95th percentile."""
    conf = np.asarray(confidence, dtype=np.float64)
    if not conf.size:
        return None
    rng = np.random.default_rng(seed)
    sims = [expected_calibration_error(conf, rng.random(conf.size) < conf, bins) for _ in range(draws)]
    return {"mean": float(np.mean(sims)), "p95": float(np.percentile(sims, 95))}


def selective_threshold(confidence: Sequence[float], correct: Sequence[bool], target: float) -> tuple[float, float]:
    """(threshold, coverage): the lowest confidence threshold at which the answers at or above it are
    right at least `target` of the time, and the share of rows it keeps. Below the threshold an answer
    is "not sure". (1.0, 0.0) when no threshold reaches the target."""
    conf, hit = np.asarray(confidence, dtype=np.float64), np.asarray(correct, dtype=np.float64)
    order = np.argsort(-conf)
    accuracy = np.cumsum(hit[order]) / np.arange(1, conf.size + 1)
    reach = np.nonzero(accuracy >= target)[0]
    if not reach.size:
        return 1.0, 0.0
    k = int(reach.max())
    return float(conf[order][k]), float((k + 1) / conf.size)
