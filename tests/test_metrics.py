"""Metrics: agree with sklearn on random labels; UAR and accuracy named and computed correctly."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix, f1_score, recall_score

from emoweb.learning.metrics import classification_report, comparison_table

LABELS = ["anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise"]


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
@pytest.mark.parametrize("seed", range(5))
def test_matches_sklearn_on_random_labels(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(20, 300))
    present = LABELS[: 5 + seed % 3]  # some seeds leave classes out of y_true
    y_true = list(rng.choice(present, size=n, p=rng.dirichlet(np.ones(len(present)))))
    y_pred = list(rng.choice(LABELS, size=n))
    r = classification_report(y_true, y_pred, LABELS)
    assert r["n"] == n
    assert r["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    expected_f1 = f1_score(y_true, y_pred, labels=LABELS, average="weighted", zero_division=0)
    assert r["weighted_f1"] == pytest.approx(expected_f1)
    assert r["uar"] == pytest.approx(balanced_accuracy_score(y_true, y_pred))
    assert r["uar"] == pytest.approx(recall_score(y_true, y_pred, labels=sorted(set(y_true)), average="macro"))
    assert r["confusion"] == confusion_matrix(y_true, y_pred, labels=LABELS).tolist()
    per = recall_score(y_true, y_pred, labels=LABELS, average=None, zero_division=0)
    for lab, rec in zip(LABELS, per):
        if lab in y_true:
            assert r["per_class_recall"][lab] == pytest.approx(rec)
        else:
            assert r["per_class_recall"][lab] is None


def test_hand_made_imbalanced_example() -> None:
    # 8 neutral, 2 joy; the model says "neutral" for all but one joy clip
    y_true = ["neutral"] * 8 + ["joy"] * 2
    y_pred = ["neutral"] * 8 + ["joy", "neutral"]
    r = classification_report(y_true, y_pred, ["joy", "neutral", "sadness"])
    # WA = accuracy = 9 / 10 = 0.9; UA = UAR = mean(recall joy 1/2, recall neutral 8/8) = 0.75
    assert r["accuracy"] == pytest.approx(0.9)
    assert r["uar"] == pytest.approx(0.75)
    assert r["per_class_recall"] == {"joy": 0.5, "neutral": 1.0, "sadness": None}
    assert r["support"] == {"joy": 2, "neutral": 8, "sadness": 0}
    assert r["confusion"] == [[1, 1, 0], [0, 8, 0], [0, 0, 0]]
    # F1 joy: P = 1, R = 0.5 -> 2/3; F1 neutral: P = 8/9, R = 1 -> 16/17; weighted (2 * 2/3 + 8 * 16/17) / 10
    assert r["weighted_f1"] == pytest.approx((2 * 2 / 3 + 8 * 16 / 17) / 10)


def test_prediction_outside_labels_counts_as_error() -> None:
    r = classification_report(["joy", "joy"], ["joy", "wobbly"], ["joy", "neutral"])
    assert r["accuracy"] == 0.5 and r["uar"] == 0.5 and r["n_pred_outside_labels"] == 1
    assert r["confusion"] == [[1, 0], [0, 0]]
    with pytest.raises(ValueError):
        classification_report(["wobbly"], ["joy"], ["joy"])
    with pytest.raises(ValueError):
        classification_report(["joy"], [], ["joy"])
    empty = classification_report([], [], ["joy"])
    assert empty["n"] == 0 and empty["accuracy"] is None


def test_comparison_table() -> None:
    a = classification_report(["joy", "neutral"], ["joy", "joy"], ["joy", "neutral"])
    b = classification_report(["joy", "neutral"], ["joy", "neutral"], ["joy", "neutral"])
    table = comparison_table({"EmoAsst": a, "MER-CLIP": b}, per_class=True)
    lines = table.splitlines()
    assert lines[0] == "| Model | n | Accuracy (WA) % | UAR (UA) % | Weighted F1 % | R(joy) % | R(neutral) % |"
    assert lines[1].startswith("|---|")
    assert lines[2].startswith("| EmoAsst | 2 | 50.0 | 50.0 |")
    assert lines[3].startswith("| MER-CLIP | 2 | **100.0** | **100.0** | **100.0** | 100.0 | 100.0 |")
    assert len(lines) == 4
    assert comparison_table({}) == ""
