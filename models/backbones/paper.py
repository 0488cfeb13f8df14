"""The `paper` profile's encoders, as published: CLIP ViT-B/32, wav2vec 2.0 base, WavLM base, BERT, ResNet18.

Weights come from a local directory or hub id when given (`EMOWEB_PAPER_WEIGHTS`-style sources passed
in); with none, each is built with random weights of the same shapes so tests can run every model on
it, and every result is marked "untrained weights".
"""
from __future__ import annotations

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
import torchvision
from transformers import AutoModel, Wav2Vec2Config, Wav2Vec2Model, WavLMConfig, WavLMModel

CLIP_MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
CLIP_STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
EMOASST_WAV2VEC_LAYERS = 9  # EmoAsst keeps the first 9 transformer layers of wav2vec 2.0 base


def _images(crops: np.ndarray, size: int, mean: torch.Tensor, std: torch.Tensor, device: str) -> torch.Tensor:
    x = torch.from_numpy(crops).permute(0, 3, 1, 2).float().div(255)
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return ((x - mean) / std).to(device)


class ClipTowers(torch.nn.Module):
    """open_clip ViT-B/32: image tower for frames and log-mel images, text tower for transcripts/labels."""

    dim = 512

    def __init__(self, pretrained: str | None = None):
        super().__init__()
        self.model = open_clip.create_model("ViT-B-32", pretrained=pretrained).eval().requires_grad_(False)
        self.tokenizer = open_clip.get_tokenizer("ViT-B-32")

    @torch.no_grad()
    def images(self, crops: np.ndarray) -> torch.Tensor:
        """[N, H, W, 3] uint8 -> [N, 512] L2-normalised (CLIP statistics, not ImageNet's)."""
        device = next(self.model.parameters()).device
        return F.normalize(self.model.encode_image(_images(crops, 224, CLIP_MEAN, CLIP_STD, str(device))), dim=-1)

    @torch.no_grad()
    def texts(self, texts: list[str]) -> torch.Tensor:
        device = next(self.model.parameters()).device
        return F.normalize(self.model.encode_text(self.tokenizer(texts).to(device)), dim=-1)

    def mel_images(self, log_mel: np.ndarray, segment_frames: int = 200) -> np.ndarray:
        """MER-CLIP's audio path: 2-s log-mel segments rendered as 3-channel images."""
        segs = [log_mel[:, i : i + segment_frames] for i in range(0, max(1, log_mel.shape[1]), segment_frames)]
        out = []
        for s in segs:
            s = np.pad(s, ((0, 0), (0, segment_frames - s.shape[1]))) if s.shape[1] < segment_frames else s
            lo, hi = float(s.min()), float(s.max())
            img = ((s - lo) / (hi - lo + 1e-6) * 255).astype(np.uint8)[::-1]
            out.append(np.repeat(img[:, :, None], 3, axis=2))
        return np.stack(out)


def load_wav2vec2(source: str | None, layers: int = EMOASST_WAV2VEC_LAYERS) -> Wav2Vec2Model:
    model = AutoModel.from_pretrained(source) if source else Wav2Vec2Model(Wav2Vec2Config())
    model.encoder.layers = model.encoder.layers[:layers]
    return model.eval().requires_grad_(False)


def load_wavlm(source: str | None) -> WavLMModel:
    model = AutoModel.from_pretrained(source) if source else WavLMModel(WavLMConfig())
    return model.eval().requires_grad_(False)


@torch.no_grad()
def speech_tokens(model: torch.nn.Module, audio: np.ndarray) -> torch.Tensor:
    """[S] 16 kHz -> [T, 768] last hidden states (one frame per 20 ms), zero-mean/unit-var input."""
    device = next(model.parameters()).device
    x = torch.from_numpy(audio).float()
    x = ((x - x.mean()) / (x.std() + 1e-7)).unsqueeze(0).to(device)
    return model(x).last_hidden_state[0]


class ResNet18Maps(torch.nn.Module):
    """ResNet18 trunk exposing layer2 / layer4 maps (MER-SEM-MBT's visual CNN)."""

    def __init__(self, weights_path: str | None = None):
        super().__init__()
        net = torchvision.models.resnet18(weights=None)
        if weights_path:
            net.load_state_dict(torch.load(weights_path, map_location="cpu"))
        self.net = net.eval().requires_grad_(False)

    @torch.no_grad()
    def forward(self, crops: np.ndarray) -> dict[str, torch.Tensor]:
        n = self.net
        x = _images(crops, 112, IMAGENET_MEAN, IMAGENET_STD, str(next(n.parameters()).device))
        x = n.maxpool(n.relu(n.bn1(n.conv1(x))))
        l2 = n.layer2(n.layer1(x))
        l4 = n.layer4(n.layer3(l2))
        return {"block2": l2, "block4": l4}
