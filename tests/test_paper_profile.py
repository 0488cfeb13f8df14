"""The `paper` profile end to end on random weights (no EMOWEB_PAPER_* sources): real architectures, real shapes.

CLIP ViT-B/32, wav2vec 2.0 base (first 9 layers), WavLM base, BERT base and ResNet18 are built with random
initialisation (model hubs are unreachable here); Whisper is the real one. One 2-s clip, one extraction.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from conftest import TORCH_THREADS, ffmpeg

pytestmark = pytest.mark.slow

SECONDS = 2.0
PAPER_ENV = ("CLIP", "WAV2VEC2", "WAVLM", "BERT", "RESNET18")


@pytest.fixture(scope="module")
def paper_backbones():
    import torch

    from models.backbones import PaperBackbones

    torch.set_num_threads(TORCH_THREADS)
    with pytest.MonkeyPatch.context() as mp:
        for name in PAPER_ENV:
            mp.delenv(f"EMOWEB_PAPER_{name}", raising=False)
        backbones = PaperBackbones("cpu", 1, TORCH_THREADS)  # not the process-wide one: freed after the module
    yield backbones
    del backbones


@pytest.fixture(scope="module")
def paper_features(composite_clip: Path, tmp_path_factory, paper_backbones):
    from emoweb.config import get_settings
    from emoweb.pipeline.features import FeatureExtractor

    clip = tmp_path_factory.mktemp("paper") / "two_seconds.mp4"
    ffmpeg("-i", composite_clip, "-t", SECONDS, "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac", clip)
    settings = dataclasses.replace(get_settings(), profile="paper", device="cpu", threads=TORCH_THREADS)
    return FeatureExtractor(settings, paper_backbones)(clip)


def test_marked_untrained(paper_features) -> None:
    assert paper_features.profile == "paper"
    assert paper_features.untrained_weights is True
    assert paper_features.to_summary()["untrained_weights"] is True


def test_audio_shapes(paper_features) -> None:
    tokens = paper_features.audio_tokens
    assert set(tokens) >= {"audio", "wavlm", "clip_mel"}
    frames = paper_features.duration / 0.02  # wav2vec 2.0 / WavLM: one frame per 20 ms (conv stack's edge aside)
    assert abs(paper_features.duration - SECONDS) < 0.1
    for key in ("audio", "wavlm"):
        assert tokens[key].ndim == 2 and tokens[key].shape[1] == 768, (key, tokens[key].shape)
        assert abs(tokens[key].shape[0] - frames) <= 2, (key, tokens[key].shape)
    assert tokens["clip_mel"].ndim == 2 and tokens["clip_mel"].shape[1] == 512  # one CLIP image per 2-s mel segment
    assert 1 <= tokens["clip_mel"].shape[0] <= 2


def test_visual_shapes(paper_features) -> None:
    n = len(paper_features.frame_times)
    assert n == 16
    assert tuple(paper_features.visual_features.shape) == (n, 512)  # CLIP image tower
    maps = paper_features.visual_maps
    assert set(maps) >= {"block2", "block4"}
    assert maps["block2"].shape[:2] == (n, 128) and maps["block4"].shape[:2] == (n, 512)  # ResNet18 layer2 / layer4
    assert maps["block2"].shape[-1] > maps["block4"].shape[-1]


def test_text_shapes(paper_features) -> None:
    """Whisper is real in both profiles, so there is a transcript to embed (CLIP text 512, BERT tokens 768)."""
    assert paper_features.transcript
    assert tuple(paper_features.text_embedding.shape) == (512,)
    assert paper_features.text_tokens.ndim == 2 and paper_features.text_tokens.shape[1] == 768


def test_all_finite(paper_features) -> None:
    import torch

    tensors = [paper_features.visual_features, paper_features.text_embedding, paper_features.text_tokens]
    tensors += list(paper_features.audio_tokens.values()) + list(paper_features.visual_maps.values())
    assert all(torch.isfinite(t).all() for t in tensors)


@pytest.mark.parametrize("name", ["emoasst", "merclip", "sem_mbt", "foalnet"])
def test_every_model_runs_on_paper_features(name, paper_features, paper_backbones) -> None:
    """Each registered model, randomly initialised at the paper profile's widths, on real paper-profile features."""
    import torch

    from emoweb.pipeline.batching import to_input
    from models import LABEL7, registry

    if name not in registry.available():
        pytest.skip(f"{name} has not landed")
    model = registry.build(name, paper_backbones.dims).eval()
    model.attach_text_encoder(lambda texts: paper_backbones.text(texts).embedding, paper_backbones.text_encoder)
    with torch.no_grad():
        out = model(to_input([paper_features], paper_backbones.dims), list(LABEL7))
    assert out.probs.shape == (1, len(LABEL7)) and torch.isfinite(out.probs).all()
    assert abs(float(out.probs.sum()) - 1.0) < 1e-4
    assert out.embedding.shape[0] == 1 and torch.isfinite(out.embedding).all()
