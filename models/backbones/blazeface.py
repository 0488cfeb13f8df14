"""MediaPipe's BlazeFace short-range face detector, rebuilt in torch (weights: `convert_blazeface`).

Why our own module: mediapipe cannot be a runtime dependency (it pins numpy < 2), and OpenCV's Haar
cascade misses many faces a person sees at once. The network is the published short-range graph
(128x128 RGB in [-1, 1], 16 BlazeBlocks, SSD heads on the 16x16 and 8x8 grids, 896 anchors); the
decoding follows MediaPipe's face_detection_short_range graph: letterboxed input, offsets in input
pixels around fixed-size anchors, sigmoid scores over 0.5, weighted non-maximum suppression at IoU 0.3.
Each detection has 6 keypoints: the two eyes, nose tip, mouth centre and the two ear tragions.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

INPUT_SIZE = 128
DEFAULT_WEIGHTS = Path(__file__).resolve().parents[1] / "weights" / "blazeface_short_range.safetensors"
# (in channels, out channels, stride) of the 16 BlazeBlocks, as in the tflite graph
BLOCKS = (
    (24, 24, 1), (24, 28, 1), (28, 32, 2), (32, 36, 1), (36, 42, 1), (42, 48, 2), (48, 56, 1), (56, 64, 1),
    (64, 72, 1), (72, 80, 1), (80, 88, 1), (88, 96, 2), (96, 96, 1), (96, 96, 1), (96, 96, 1), (96, 96, 1),
)
HEAD8_BLOCK = 10  # the 16x16 heads read this block's output (88 channels)
ANCHOR_STRIDES = (8, 16, 16, 16)  # SSD layers; layers of one stride share a grid (2 anchors each)
MIN_SCORE = 0.5
NMS_IOU = 0.3
KEYPOINTS = ("right_eye", "left_eye", "nose_tip", "mouth", "right_ear", "left_ear")  # the subject's left/right


class BlazeBlock(nn.Module):
    """Depthwise 3x3 + pointwise 1x1, residual (max-pooled when strided, zero channels appended), ReLU."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.stride, self.extra = stride, cout - cin
        self.dw = nn.Conv2d(cin, cin, 3, stride, padding=1 if stride == 1 else 0, groups=cin)
        self.pw = nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # TFLite 'SAME' with stride 2 on an even side pads only bottom/right
        y = self.pw(self.dw(F.pad(x, (0, 1, 0, 1)) if self.stride == 2 else x))
        skip = F.max_pool2d(x, 2) if self.stride == 2 else x
        if self.extra:
            skip = F.pad(skip, (0, 0, 0, 0, 0, self.extra))
        return F.relu(y + skip)


class BlazeFaceShortRange(nn.Module):
    """[B, 3, 128, 128] RGB in [-1, 1] -> (raw scores [B, 896], raw regressors [B, 896, 16])."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 24, 5, 2)
        self.blocks = nn.ModuleList(BlazeBlock(*b) for b in BLOCKS)
        self.cls8, self.reg8 = nn.Conv2d(88, 2, 1), nn.Conv2d(88, 32, 1)
        self.cls16, self.reg16 = nn.Conv2d(96, 6, 1), nn.Conv2d(96, 96, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.relu(self.stem(F.pad(x, (1, 2, 1, 2))))  # 'SAME' 5x5 stride 2 on 128
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i == HEAD8_BLOCK:
                x8 = x

        def flat(t: torch.Tensor, width: int) -> torch.Tensor:  # NCHW -> [B, H*W*anchors, width] (tflite order)
            return t.permute(0, 2, 3, 1).reshape(t.shape[0], -1, width)

        scores = torch.cat([flat(self.cls8(x8), 1), flat(self.cls16(x), 1)], 1)[..., 0]
        boxes = torch.cat([flat(self.reg8(x8), 16), flat(self.reg16(x), 16)], 1)
        return scores, boxes


def ssd_anchors(size: int = INPUT_SIZE, strides: tuple[int, ...] = ANCHOR_STRIDES) -> torch.Tensor:
    """Anchor centres [896, 2] (x, y in 0-1), in the network's output order: grid by grid, row-major,
    2 anchors per SSD layer per cell (consecutive layers of one stride share a grid)."""
    out, i = [], 0
    while i < len(strides):
        j = i
        while j < len(strides) and strides[j] == strides[i]:
            j += 1
        cells = size // strides[i]
        ys, xs = torch.meshgrid(torch.arange(cells), torch.arange(cells), indexing="ij")
        centres = (torch.stack([xs, ys], -1).reshape(-1, 1, 2).float() + 0.5) / cells
        out.append(centres.expand(-1, 2 * (j - i), 2).reshape(-1, 2))
        i = j
    return torch.cat(out)


@dataclass
class Detection:
    """One face in image pixels: box (x0, y0, x1, y1), keypoints [6, 2] (x, y; see KEYPOINTS), score 0-1."""

    box: tuple[float, float, float, float]
    keypoints: np.ndarray
    score: float


def letterbox(image: np.ndarray, size: int = INPUT_SIZE) -> tuple[np.ndarray, float, float, float]:
    """RGB uint8 [H, W, 3] -> ([size, size, 3] float32 in [-1, 1], scale, pad_x, pad_y) keeping the aspect ratio
    (black bars, as MediaPipe's letterboxed image-to-tensor). A point maps back as (p * size - pad) / scale."""
    h, w = image.shape[:2]
    scale = size / max(h, w)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    resized = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    px, py = (size - nw) // 2, (size - nh) // 2
    canvas = np.zeros((size, size, 3), np.float32)
    canvas[py : py + nh, px : px + nw] = resized
    return canvas / 127.5 - 1.0, scale, float(px), float(py)


def decode(scores: torch.Tensor, regress: torch.Tensor, anchors: torch.Tensor, size: int = INPUT_SIZE
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One image's raw outputs [896], [896, 16] -> (scores 0-1 [896], boxes x0y0x1y1 [896, 4], keypoints
    [896, 6, 2]), all in 0-1 input coordinates."""
    prob = torch.sigmoid(scores.clamp(-100, 100))
    r = regress / size
    centre = r[:, :2] + anchors
    half = r[:, 2:4] / 2
    boxes = torch.cat([centre - half, centre + half], 1)
    keypoints = r[:, 4:].reshape(-1, 6, 2) + anchors[:, None, :]
    return prob, boxes, keypoints


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of box a [4] with each of boxes b [K, 4] (x0, y0, x1, y1)."""
    lt, rb = torch.maximum(a[:2], b[:, :2]), torch.minimum(a[2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(1)
    area = lambda t: (t[..., 2] - t[..., 0]).clamp(min=0) * (t[..., 3] - t[..., 1]).clamp(min=0)  # noqa: E731
    return inter / (area(a) + area(b) - inter).clamp(min=1e-9)


def weighted_nms(prob: torch.Tensor, boxes: torch.Tensor, keypoints: torch.Tensor, min_score: float = MIN_SCORE,
                 iou: float = NMS_IOU) -> list[tuple[float, torch.Tensor, torch.Tensor]]:
    """MediaPipe's weighted suppression: the best remaining candidate absorbs every candidate overlapping it
    by more than `iou`; box and keypoints become the score-weighted mean of the group, the score the best's."""
    keep = prob >= min_score
    prob, boxes, keypoints = prob[keep], boxes[keep], keypoints[keep]
    order = prob.argsort(descending=True)
    prob, boxes, keypoints = prob[order], boxes[order], keypoints[order]
    out = []
    while prob.numel():
        group = box_iou(boxes[0], boxes) > iou
        group[0] = True
        w = prob[group][:, None]
        out.append((float(prob[0]), (boxes[group] * w).sum(0) / w.sum(), (keypoints[group] * w[..., None]).sum(0) / w.sum()))
        prob, boxes, keypoints = prob[~group], boxes[~group], keypoints[~group]
    return out


class BlazeFaceDetector:
    """Images in, faces out. `detector(images)` -> one list of Detection per image (best first)."""

    def __init__(self, model: BlazeFaceShortRange, device: str = "cpu"):
        self.model, self.device = model.to(device).eval(), device
        self.anchors = ssd_anchors().to(device)

    @torch.no_grad()
    def raw(self, batch: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, 128, 128, 3] float32 in [-1, 1] (NHWC, as the tflite input) -> raw (scores, regressors)."""
        return self.model(torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2).to(self.device))

    def __call__(self, images: list[np.ndarray] | np.ndarray, min_score: float = MIN_SCORE) -> list[list[Detection]]:
        if len(images) == 0:
            return []
        boxed = [letterbox(im) for im in images]
        scores, regress = self.raw(np.stack([b[0] for b in boxed]))
        results = []
        for (_, scale, px, py), s, r in zip(boxed, scores, regress):
            found = weighted_nms(*decode(s, r, self.anchors), min_score=min_score)
            back = lambda p: (p.cpu().numpy().reshape(-1, 2) * INPUT_SIZE - (px, py)) / scale  # noqa: E731
            results.append([Detection(tuple(float(v) for v in back(box).reshape(-1)), back(kp), score)  # type: ignore[arg-type]
                            for score, box, kp in found])
        return results


def load_blazeface(path: str | Path = DEFAULT_WEIGHTS, device: str = "cpu") -> BlazeFaceDetector:
    """The detector with the converted weights (float16 in the file, float32 in memory)."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: regenerate it with `python -m models.backbones.convert_blazeface`")
    model = BlazeFaceShortRange()
    model.load_state_dict({k: v.float() for k, v in load_file(str(path)).items()})
    return BlazeFaceDetector(model, device)
